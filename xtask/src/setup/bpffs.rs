//! bpffs at /sys/fs/bpf, where agentguard pins its links and maps.
//!
//! Pinning is what keeps the cgroup programs attached while the daemon is down
//! (fail closed) and lets a restarted daemon adopt them; it needs a bpf
//! filesystem, which some systems do not mount by default.

use std::fs;

use anyhow::{Context, Result};

use crate::cmd;

const MOUNT_POINT: &str = "/sys/fs/bpf";

pub fn ensure() -> Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
    if is_bpf_mount(&mountinfo, MOUNT_POINT) {
        println!("setup: bpffs at {MOUNT_POINT} already present, skipping");
        return Ok(());
    }
    println!("setup: mounting bpffs at {MOUNT_POINT}");
    cmd::run(cmd::new("mount").args(["-t", "bpf", "bpf", MOUNT_POINT]))
}

/// A mountinfo line (proc(5)) is `id parent maj:min root MOUNT_POINT options
/// [optional fields...] - FSTYPE source super-options`; the optional fields vary
/// in number, so the filesystem type is found after the lone ` - ` separator.
/// Mount points are octal-escaped (`\040` for a space); `/sys/fs/bpf` has nothing
/// to escape, so comparing the raw field is exact.
fn is_bpf_mount(mountinfo: &str, mount_point: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((mount, fs)) = line.split_once(" - ") else {
            return false;
        };
        mount.split_whitespace().nth(4) == Some(mount_point)
            && fs.split_whitespace().next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::is_bpf_mount;

    const CGROUP2: &str = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
    const BPF: &str =
        "1062 24 0:52 / /sys/fs/bpf rw,relatime shared:5 master:1 - bpf bpf rw,mode=700";

    #[test]
    fn finds_bpf_with_optional_fields() {
        assert!(is_bpf_mount(&format!("{CGROUP2}\n{BPF}\n"), "/sys/fs/bpf"));
    }

    #[test]
    fn other_filesystems_at_the_mount_point_do_not_count() {
        let tmpfs = "30 24 0:27 / /sys/fs/bpf rw - tmpfs tmpfs rw";
        assert!(!is_bpf_mount(
            &format!("{CGROUP2}\n{tmpfs}\n"),
            "/sys/fs/bpf"
        ));
    }
}
