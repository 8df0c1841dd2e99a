//! What the kernel tells this process about itself under `/proc/self`: its
//! mounts (`mountinfo`, proc(5)) and its cgroup (`cgroup`, cgroup(7)),
//! each parsed in this one place.

use std::{fs, io, path::PathBuf};

const MOUNTINFO: &str = "/proc/self/mountinfo";
const CGROUP: &str = "/proc/self/cgroup";

/// One line of mountinfo, the fields agentguard looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted, with mountinfo's octal escapes decoded.
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// This process's mounts.
pub fn mounts() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&fs::read_to_string(MOUNTINFO)?))
}

/// The first mount of filesystem type `fstype`, if any.
pub fn find_mount(fstype: &str) -> io::Result<Option<Mount>> {
    Ok(first_of(&fs::read_to_string(MOUNTINFO)?, fstype))
}

fn first_of(info: &str, fstype: &str) -> Option<Mount> {
    parse_mountinfo(info)
        .into_iter()
        .find(|m| m.fstype == fstype)
}

/// `<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] -
/// <fstype> <source> <super opts>`; lines that do not parse are skipped.
pub fn parse_mountinfo(info: &str) -> Vec<Mount> {
    info.lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let fstype = rest.split_whitespace().next()?;
            let mount_point = fields.split_whitespace().nth(4)?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// This process's cgroup v2 path, relative to the cgroup v2 mount and
/// starting with `/` (`None` if the process is in none, as on a v1-only
/// host).
pub fn own_cgroup() -> io::Result<Option<String>> {
    Ok(cgroup_v2_path(&fs::read_to_string(CGROUP)?).map(str::to_owned))
}

/// The path on the `0::<path>` line, cgroup v2's.
pub fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                octal
                    .iter()
                    .fold(0u8, |v, d| v.wrapping_mul(8) + (d - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_mount_points_and_types() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw
not a mountinfo line
50 23 0:40 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw
";
        let mounts = parse_mountinfo(info);
        assert_eq!(
            mounts
                .iter()
                .map(|m| (m.mount_point.to_str().unwrap(), m.fstype.as_str()))
                .collect::<Vec<_>>(),
            [
                ("/sys/fs/cgroup", "tmpfs"),
                ("/sys/fs/cgroup/unified", "cgroup2"),
                ("/mnt/my cgroup", "cgroup2"),
            ]
        );
    }

    #[test]
    fn finds_the_v2_mount_in_a_hybrid_layout() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw
";
        let mount = first_of(info, "cgroup2").unwrap();
        assert_eq!(mount.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn no_v2_mount_is_reported() {
        let info = "40 31 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert!(first_of(info, "cgroup2").is_none());
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape(r"/mnt/my\040cgroup"), "/mnt/my cgroup");
        assert_eq!(unescape(r"/back\134slash"), "/back\\slash");
        assert_eq!(unescape("/plain"), "/plain");
        // Not three octal digits: kept as it is.
        assert_eq!(unescape(r"/a\09"), r"/a\09");
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }

    #[test]
    fn the_v2_line_names_the_cgroup() {
        let text = "12:cpu,cpuacct:/user.slice\n1:name=systemd:/init.scope\n0::/agentguard/bot\n";
        assert_eq!(cgroup_v2_path(text), Some("/agentguard/bot"));
        assert_eq!(cgroup_v2_path("12:cpu:/x\n"), None);
    }
}
