//! cgroup v2: finding the mount, creating agent cgroups, joining one, and
//! mapping the kernel's cgroup ids back to paths.
//!
//! A cgroup v2 id (what `bpf_get_current_cgroup_id()` returns) is the inode
//! number of the cgroup's directory.

use std::{
    collections::HashSet,
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::{policy::CgroupRelPath, procfs};

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
        let mount = procfs::find_mount("cgroup2").map_err(CgroupError::MountInfo)?;
        mount
            .map(|m| Self {
                mount: m.mount_point,
            })
            .ok_or(CgroupError::NoCgroup2)
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

    /// The id of every cgroup under the mount (a cgroup's id is its
    /// directory's inode number, never reused), or `None` if the walk did
    /// not see the whole tree: a directory it could not read, or more than
    /// [`MAX_CGROUPS`]. A cgroup removed during the walk is simply absent.
    pub fn all_ids(&self) -> Option<HashSet<u64>> {
        let mut ids = HashSet::new();
        let mut stack = vec![self.mount.clone()];
        while let Some(dir) = stack.pop() {
            if ids.len() >= MAX_CGROUPS {
                return None;
            }
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            let meta = match fs::metadata(&dir) {
                Ok(meta) => meta,
                Err(e) if gone(&e) => continue,
                Err(_) => return None,
            };
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if gone(&e) => continue,
                Err(_) => return None,
            };
            ids.insert(meta.ino());
            for entry in entries {
                let entry = entry.ok()?;
                if entry.file_type().ok()?.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Some(ids)
    }
}

/// More cgroups than any host has: a walk past this is not trusted to end.
const MAX_CGROUPS: usize = 1_000_000;

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
        let actual = procfs::own_cgroup().map_err(join_err)?.unwrap_or_default();
        let expected = Path::new("/").join(root.relative(&self.path));
        if Path::new(&actual) != expected {
            return Err(CgroupError::JoinMismatch { expected, actual });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk finds every directory of the tree once, the top included,
    /// by its inode number (a cgroup's id); files are not cgroups.
    #[test]
    fn every_directory_of_the_tree_is_found_by_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().to_owned();
        for sub in ["a/b/c", "a/d", "e"] {
            fs::create_dir_all(top.join(sub)).unwrap();
        }
        fs::write(top.join("a/cgroup.procs"), "").unwrap();
        let ino = |p: &str| fs::metadata(top.join(p)).unwrap().ino();
        let expected: HashSet<u64> = ["", "a", "a/b", "a/b/c", "a/d", "e"]
            .into_iter()
            .map(ino)
            .collect();
        let root = CgroupRoot { mount: top.clone() };
        assert_eq!(root.all_ids(), Some(expected));
    }
}
