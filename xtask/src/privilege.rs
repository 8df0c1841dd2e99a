//! Refuse to start unless running as root.
//!
//! Setup installs packages and mounts bpffs, and agentguard loads eBPF programs and
//! creates cgroups: all of that needs CAP_BPF/CAP_SYS_ADMIN. Failing up front with
//! the fix is clearer than an EPERM half way through a build or a test run.

use std::fs;

use anyhow::{Context, Result, bail};

pub fn ensure_root(subcommand: &str) -> Result<()> {
    // /proc/self/status instead of geteuid(2): it needs no libc dependency.
    let status =
        fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    let euid = effective_uid(&status).context("no parsable Uid line in /proc/self/status")?;
    if euid != 0 {
        bail!(
            "cargo xtask {subcommand} must run as root (eBPF and cgroups need \
             CAP_BPF/CAP_SYS_ADMIN): try sudo -E cargo xtask {subcommand}"
        );
    }
    Ok(())
}

/// The `Uid:` line lists the real, effective, saved and filesystem uids, in that
/// order (proc(5)); privilege checks in the kernel use the effective one.
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::effective_uid;

    #[test]
    fn reads_the_effective_uid_not_the_real_one() {
        let status = "Name:\tcat\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
    }

    #[test]
    fn missing_uid_line_is_none() {
        assert_eq!(effective_uid("Name:\tcat\n"), None);
    }
}
