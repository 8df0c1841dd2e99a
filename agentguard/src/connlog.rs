//! The daemon's recent decisions (connections, and HTTP requests), kept in
//! memory for the admin API (`agentguard connections`, `agentguard
//! requests`): quick views of this run. The system of record is the audit
//! store ([`crate::audit`]), which every decision here also reaches; these
//! logs are bounded and volatile.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use serde::Serialize;

use crate::identity::Identity;

/// How many recent entries each log keeps.
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
    /// Shared with the policy it names.
    pub policy_version: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestDecision {
    Allow,
    Deny,
    /// Denied by the policy but let through: the agent's mode is "audit".
    WouldDeny,
    /// Refused by agentguard itself (malformed, misdirected, placeholder
    /// misuse, credential unavailable, upstream unverifiable).
    Refuse,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestEntry {
    pub id: u64,
    pub time: String,
    /// Shared with the connection's events.
    pub agent: Arc<str>,
    pub pid: u32,
    pub method: Arc<str>,
    pub host: Arc<str>,
    /// Normalised path; the query is left out (it may carry a credential).
    pub path: String,
    pub tool: Option<Arc<str>>,
    pub decision: RequestDecision,
    pub reason: Arc<str>,
    /// Id of the credential injected, never its value.
    pub credential: Option<String>,
    /// Upstream's status, or agentguard's own for refusals.
    pub status: u16,
    /// Shared with the policy it names.
    pub policy_version: Arc<str>,
}

/// A bounded, most-recent-first-evicted log.
pub struct BoundedLog<T> {
    next_id: AtomicU64,
    entries: Mutex<VecDeque<T>>,
}

impl<T> Default for BoundedLog<T> {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(0),
            entries: Mutex::new(VecDeque::new()),
        }
    }
}

impl<T: Clone> BoundedLog<T> {
    /// Appends the entry `make` builds from a fresh id and timestamp.
    pub fn push_with(&self, make: impl FnOnce(u64, String) -> T) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let entry = make(id, time);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() == CAPACITY {
            entries.pop_front();
        }
        entries.push_back(entry);
        id
    }

    pub fn snapshot(&self) -> Vec<T> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.iter().cloned().collect()
    }

    pub fn total(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }
}

pub type ConnLog = BoundedLog<ConnectionEntry>;
pub type RequestLog = BoundedLog<RequestEntry>;

impl ConnLog {
    pub fn push(
        &self,
        peer: SocketAddr,
        identity: Option<Identity>,
        original_dst: Option<SocketAddr>,
        decision: Decision,
        reason: impl Into<String>,
        policy_version: &Arc<str>,
    ) -> u64 {
        self.push_with(|id, time| ConnectionEntry {
            id,
            time,
            peer,
            identity,
            original_dst,
            decision,
            reason: reason.into(),
            policy_version: policy_version.clone(),
        })
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
            log.push(peer, None, None, Decision::Refuse, "test", &Arc::from("v"));
        }
        let snap = log.snapshot();
        assert_eq!(snap.len(), CAPACITY);
        assert_eq!(snap[0].id, 6);
        assert_eq!(log.total(), (CAPACITY + 5) as u64);
    }
}
