//! cgroup v2: finding the mount, creating agent cgroups, joining one, and
//! mapping the kernel's cgroup ids back to paths.
//!
//! A cgroup v2 id (what `bpf_get_current_cgroup_id()` returns) is the inode
//! number of the cgroup's directory.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::policy::CgroupRelPath;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); agentguard needs cgroup v2"
    )]
    NoCgroup2,
    #[error("failed to read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
    #[error("failed to create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path} does not exist")]
    Missing { path: PathBuf },
    #[error("failed to stat cgroup {path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to join cgroup {path}: {source}")]
    Join {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("joined cgroup {expected} but /proc/self/cgroup says {actual:?}")]
    JoinMismatch { expected: PathBuf, actual: String },
}

/// The cgroup v2 mount point.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    mount: PathBuf,
}

/// One cgroup directory and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: u64,
}

impl CgroupRoot {
    /// Finds the cgroup v2 mount from `/proc/self/mountinfo`: it is
    /// `/sys/fs/cgroup` on unified hosts but `/sys/fs/cgroup/unified` on
    /// hybrid ones, so it is never assumed.
    pub fn discover() -> Result<Self, CgroupError> {
        let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
        Self::from_mountinfo(&info).ok_or(CgroupError::NoCgroup2)
    }

    fn from_mountinfo(info: &str) -> Option<Self> {
        info.lines().find_map(|line| {
            // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ..."
            let (fields, rest) = line.split_once(" - ")?;
            let fstype = rest.split_whitespace().next()?;
            let mount = fields.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| Self {
                mount: PathBuf::from(unescape_mountinfo(mount)),
            })
        })
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    pub fn path_of(&self, rel: &CgroupRelPath) -> PathBuf {
        self.mount.join(rel.as_str())
    }

    /// Creates the cgroup (and parents) if absent.
    pub fn ensure(&self, rel: &CgroupRelPath) -> Result<Cgroup, CgroupError> {
        let path = self.path_of(rel);
        fs::create_dir_all(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        Cgroup::open(&path)
    }

    /// Path of a cgroup relative to the mount, e.g. `agentguard/a/child`.
    pub fn relative<'a>(&self, path: &'a Path) -> &'a Path {
        path.strip_prefix(&self.mount).unwrap_or(path)
    }
}

impl Cgroup {
    pub fn open(path: &Path) -> Result<Self, CgroupError> {
        let meta = fs::metadata(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CgroupError::Missing {
                    path: path.to_owned(),
                }
            } else {
                CgroupError::Stat {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Ok(Self {
            path: path.to_owned(),
            id: meta.ino(),
        })
    }

    /// Finds the descendant of this cgroup (itself included) with the given
    /// id. Agents may create sub-cgroups only if given the rights, so subtrees
    /// are small; the walk is bounded anyway.
    pub fn find_descendant(&self, id: u64) -> Option<PathBuf> {
        const MAX_VISITED: usize = 10_000;
        let mut stack = vec![self.path.clone()];
        let mut visited = 0;
        while let Some(dir) = stack.pop() {
            visited += 1;
            if visited > MAX_VISITED {
                return None;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            if meta.ino() == id {
                return Some(dir);
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        None
    }

    /// Moves the calling process into this cgroup. Called before exec, so
    /// that every socket the new program creates belongs to the cgroup (hooks
    /// follow the socket's cgroup, fixed at socket creation).
    pub fn join_self(&self, root: &CgroupRoot) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        let join_err = |source| CgroupError::Join {
            path: self.path.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(join_err)?;
        // One write(2) of our pid: the kernel moves the whole thread group.
        f.write_all(std::process::id().to_string().as_bytes())
            .map_err(join_err)?;

        // Check where we landed: "0::<path>" is the v2 line.
        let own = fs::read_to_string("/proc/self/cgroup").map_err(join_err)?;
        let actual = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or_default()
            .to_owned();
        let expected = Path::new("/").join(root.relative(&self.path));
        if Path::new(&actual) != expected {
            return Err(CgroupError::JoinMismatch { expected, actual });
        }
        Ok(())
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
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
    fn finds_the_v2_mount_in_a_hybrid_layout() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw
";
        let root = CgroupRoot::from_mountinfo(info).unwrap();
        assert_eq!(root.mount(), Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn no_v2_mount_is_reported() {
        let info = "40 31 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert!(CgroupRoot::from_mountinfo(info).is_none());
    }

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/my\040cgroup"), "/mnt/my cgroup");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
