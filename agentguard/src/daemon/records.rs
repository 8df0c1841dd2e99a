//! Forgetting the kernel's connection records the proxy never took.
//!
//! The kernel keeps a connection's record until the proxy accepts the
//! connection, or until the agent's socket goes while the proxy could not
//! have it yet. One case escapes both: a connection whose handshake the
//! agent's side completed and the proxy's did not (the listener's accept
//! queue full, its last ACK lost), then closed by the agent. The proxy
//! never accepts it, and its record would count against the agent's share
//! until the daemon restarts. The kernel stamps each record with when it
//! started waiting; this task forgets those older than
//! `--kernel-record-max-wait`, a few times per that period, and records
//! each as a refused connection (rule `kernel-record-expired`).

use std::{sync::Arc, time::Duration};

use nix::time::{ClockId, clock_gettime};
use tracing::warn;

use crate::proxy::ProxyContext;

/// Checks per `max_wait`: a record goes once it has waited `max_wait`, at
/// most a quarter of it (and a second, what the stamps count in) later.
const CHECKS_PER_WAIT: u32 = 4;

/// Runs until the daemon stops.
pub async fn expire(ctx: Arc<ProxyContext>, max_wait: Duration) {
    let period = (max_wait / CHECKS_PER_WAIT).max(Duration::from_millis(250));
    let wait_s = u32::try_from(max_wait.as_secs()).unwrap_or(u32::MAX);
    loop {
        tokio::time::sleep(period).await;
        let now_s = match boot_seconds() {
            Ok(now) => now,
            Err(e) => {
                warn!(error = %e, "kernel records not checked for age: the boot-time clock could not be read");
                continue;
            }
        };
        // A record stamped with second `s` started waiting before `s + 1`:
        // with `s < now_s - wait_s` it has waited longer than `wait_s`.
        let cutoff = now_s.saturating_sub(wait_s);
        let walk = {
            let ctx = ctx.clone();
            tokio::task::spawn_blocking(move || ctx.peers.expire(cutoff))
        };
        let Ok(forgotten) = walk.await else {
            continue;
        };
        ctx.metrics
            .observe_kernel_records_expired(forgotten.len() as u64);
        // Each is a connection refused: logged, audited and listed like
        // any other.
        for (key, record) in &forgotten {
            crate::proxy::record_forgotten(&ctx, key, record, max_wait).await;
        }
    }
}

/// Whole seconds of the host's `CLOCK_BOOTTIME`, the clock of the
/// kernel's stamps (`bpf_ktime_get_boot_ns`, which no time namespace
/// shifts): this process's clock less its time namespace's offset.
fn boot_seconds() -> std::io::Result<u32> {
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME)?;
    let offsets = match std::fs::read_to_string("/proc/self/timens_offsets") {
        Ok(text) => text,
        // A kernel without time namespaces: no offset.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let offset = boottime_offset(&offsets)?;
    Ok(u32::try_from(now.tv_sec() - offset).unwrap_or(0))
}

/// The `boottime` line of `/proc/PID/timens_offsets` ("boottime <secs>
/// <nanosecs>"), in whole seconds; 0 if absent.
fn boottime_offset(offsets: &str) -> std::io::Result<i64> {
    let Some(line) = offsets.lines().find(|l| l.starts_with("boottime")) else {
        return Ok(0);
    };
    line.split_whitespace()
        .nth(1)
        .and_then(|secs| secs.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unreadable time namespace offset {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's stamps and this clock agree: a stamp just taken from
    /// `/proc/uptime` (the same boot-time clock, in the test's own time
    /// namespace, the host's) is within a second.
    #[test]
    fn boot_seconds_is_the_clock_of_proc_uptime() {
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let now = boot_seconds().unwrap();
        assert!((f64::from(now) - uptime).abs() <= 1.0, "{now} vs {uptime}");
    }

    /// Inside a time namespace the host's boot time is the namespace's
    /// less its offset.
    #[test]
    fn a_time_namespace_offset_is_taken_off() {
        let linux = "monotonic           0         0\nboottime         3600         0\n";
        assert_eq!(boottime_offset(linux).unwrap(), 3600);
        assert_eq!(boottime_offset("boottime -20 500\n").unwrap(), -20);
        assert_eq!(boottime_offset("").unwrap(), 0);
        assert!(boottime_offset("boottime soon\n").is_err());
    }
}
