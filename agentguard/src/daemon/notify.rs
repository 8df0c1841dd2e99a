//! systemd's notify protocol (sd_notify(3)) for `Type=notify` units:
//! `READY=1` once every agent is guarded and the proxy listens, `STATUS=`
//! for `systemctl status`, `RELOADING=1` around a SIGHUP reload,
//! `STOPPING=1` on the way out, and `WATCHDOG=1` only while the proxy and
//! the audit writer are making progress.
//!
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sd_notify::NotifyState;
use tracing::{info, warn};

use crate::{audit::AuditSink, connlog::ConnLog, live::LiveState};

/// Sends notifications; remembers whether a send failed, to warn once.
#[derive(Default)]
pub struct Notifier {
    warned: AtomicBool,
}

impl Notifier {
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Before a reload systemd asked for (`systemctl reload` sends
    /// SIGHUP): `systemctl` waits for the `READY=1` that follows.
    pub fn reloading(&self) {
        // MONOTONIC_USEC tells systemd which reload this answers
        // (required by Type=notify-reload, harmless for Type=notify).
        let mut states = vec![
            NotifyState::Reloading,
            NotifyState::Status("reloading policy"),
        ];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        self.send(&states);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn stopping(&self, why: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(why)]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            warn!(error = %e, "could not notify systemd (NOTIFY_SOCKET); it may consider the service failed");
        }
    }
}

/// The one-line `STATUS=`: what `systemctl status agentguard` shows.
pub fn status_line(state: &LiveState) -> String {
    let version = &state.policy.version;
    format!(
        "guarding {} of {} agents; policy {}",
        state.agents.agents().len(),
        state.policy.agents.len(),
        &version[..version.len().min(12)]
    )
}

/// The counters whose movement shows the daemon at work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Connections waiting in the proxy listeners' accept queues.
    pub accept_backlog: u64,
    /// Connections the proxy has decided on.
    pub connections: u64,
    /// Audit events handed to the writer, and those it committed.
    pub audit_recorded: u64,
    pub audit_written: u64,
}

/// Why the daemon is not making progress: `None` if it is. Each check
/// compares with the previous one: work that was already waiting then and
/// has seen no progress since means a stuck task, not a busy one (the
/// checks are half a `WatchdogSec` apart, many audit flush intervals).
pub fn stalled(prev: &Progress, now: &Progress) -> Option<&'static str> {
    if prev.accept_backlog > 0 && now.accept_backlog > 0 && now.connections == prev.connections {
        return Some("the proxy accepted no connection while some were waiting");
    }
    if prev.audit_recorded > prev.audit_written && now.audit_written == prev.audit_written {
        return Some("the audit writer committed nothing while events were waiting");
    }
    None
}

/// What the watchdog reads.
pub struct Probe {
    pub proxy_port: u16,
    pub log: Arc<ConnLog>,
    pub audit: AuditSink,
    /// Events recorded through the sink (an observer counts them).
    pub recorded: Arc<AtomicU64>,
}

impl Probe {
    fn read(&self) -> Progress {
        Progress {
            accept_backlog: accept_backlog(self.proxy_port),
            connections: self.log.total(),
            audit_recorded: self.recorded.load(Ordering::Relaxed),
            audit_written: self.audit.status().events_written,
        }
    }
}

/// Pings systemd's watchdog every `interval` (half of `WatchdogSec`) while
/// the daemon makes progress. The task runs on the daemon's runtime, so a
/// runtime too blocked to run it stops the pings as well.
pub async fn watchdog(notifier: Arc<Notifier>, probe: Probe, interval: Duration) {
    info!(interval = ?interval, "systemd watchdog enabled");
    let mut prev = probe.read();
    let mut stalled_since: Option<&'static str> = None;
    loop {
        tokio::time::sleep(interval).await;
        let now = probe.read();
        match stalled(&prev, &now) {
            None => {
                if let Some(why) = stalled_since.take() {
                    info!(was = why, "progress again; watchdog pings resume");
                }
                notifier.send(&[NotifyState::Watchdog]);
            }
            Some(why) => {
                if stalled_since.replace(why).is_none() {
                    warn!(
                        reason = why,
                        "no progress: withholding the systemd watchdog ping, so systemd restarts the daemon if this lasts"
                    );
                }
            }
        }
        prev = now;
    }
}

/// Connections queued on the proxy's listening sockets (127.0.0.1 and
/// ::1, `port`), from /proc/net/tcp{,6}: for a socket in LISTEN state the
/// kernel reports its accept queue as `rx_queue` (tcp4_seq_show,
/// net/ipv4/tcp_ipv4.c).
fn accept_backlog(port: u16) -> u64 {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| listen_backlog(&table, port))
        .sum()
}

fn listen_backlog(table: &str, port: u16) -> u64 {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            let queues = fields.next()?;
            let local_port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let rx = u64::from_str_radix(queues.split_once(':')?.1, 16).ok()?;
            (state == LISTEN && local_port == port).then_some(rx)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_backlog_reads_the_listeners_rx_queue() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:03D1 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:03D1 0100007F:A000 01 00000000:00000009 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 00000000:0000 0A 00000000:00000007 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";
        // Port 977 (0x3D1): the listener's queue only, not the
        // established connection's receive queue, nor port 8080's.
        assert_eq!(listen_backlog(table, 977), 3);
        assert_eq!(listen_backlog(table, 8080), 7);
        assert_eq!(listen_backlog(table, 1), 0);
    }

    #[test]
    fn progress_is_judged_against_the_previous_check() {
        let idle = Progress::default();
        assert_eq!(stalled(&idle, &idle), None);
        // Events waiting at the last check, none committed since: stuck.
        let waiting = Progress {
            audit_recorded: 5,
            audit_written: 2,
            ..idle
        };
        assert!(stalled(&waiting, &waiting).unwrap().contains("audit"));
        // Committed since: progress.
        let wrote = Progress {
            audit_written: 3,
            ..waiting
        };
        assert_eq!(stalled(&waiting, &wrote), None);
        // New events since the last check only: not yet a stall.
        assert_eq!(stalled(&idle, &waiting), None);
        // A queue on the listener that is not being accepted from.
        let queued = Progress {
            accept_backlog: 4,
            connections: 10,
            ..idle
        };
        assert!(stalled(&queued, &queued).unwrap().contains("proxy"));
        let accepting = Progress {
            connections: 11,
            ..queued
        };
        assert_eq!(stalled(&queued, &accepting), None);
    }
}
