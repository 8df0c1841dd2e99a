//! The daemon's recent connection decisions, kept in memory for the admin API
//! (`agentguard connections`). The tamper-evident audit store replaces this as
//! the system of record in a later issue; this log is bounded and volatile.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;

use crate::identity::Identity;

/// How many recent decisions the log keeps.
pub const CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// TLS terminated (or plain HTTP read) and each request proxied.
    Intercept,
    /// Bytes relayed untouched to the original destination.
    Passthrough,
    /// Closed without a byte sent upstream.
    Refuse,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionEntry {
    /// Monotonic id within this daemon's lifetime.
    pub id: u64,
    /// RFC 3339, millisecond precision.
    pub time: String,
    pub peer: SocketAddr,
    /// `None` when the kernel had no record (the connection was refused).
    pub identity: Option<Identity>,
    pub original_dst: Option<SocketAddr>,
    pub decision: Decision,
    pub reason: String,
    pub policy_version: String,
}

#[derive(Default)]
pub struct ConnLog {
    next_id: AtomicU64,
    entries: Mutex<VecDeque<ConnectionEntry>>,
}

impl ConnLog {
    pub fn push(
        &self,
        peer: SocketAddr,
        identity: Option<Identity>,
        original_dst: Option<SocketAddr>,
        decision: Decision,
        reason: impl Into<String>,
        policy_version: &str,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = ConnectionEntry {
            id,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            peer,
            identity,
            original_dst,
            decision,
            reason: reason.into(),
            policy_version: policy_version.to_owned(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
        id
    }

    pub fn snapshot(&self) -> Vec<ConnectionEntry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().cloned().collect()
    }

    pub fn total(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_entries() {
        let log = ConnLog::default();
        let peer = "127.0.0.1:1".parse().unwrap();
        for _ in 0..CAPACITY + 5 {
            log.push(peer, None, None, Decision::Refuse, "test", "v");
        }
        let snap = log.snapshot();
        assert_eq!(snap.len(), CAPACITY);
        assert_eq!(snap[0].id, 6);
        assert_eq!(log.total(), (CAPACITY + 5) as u64);
    }
}
