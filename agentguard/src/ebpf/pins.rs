//! What the daemon leaves in bpffs, and how a restarted daemon finds it:
//!
//! ```text
//! <pin dir>/maps-v4/<MAP NAME>            (one file per map in MAPS)
//! <pin dir>/links/cg<cgroup id>-<program>-<link id>
//! ```
//!
//! cgroup bpf_links detach when their last fd closes, so a crashed daemon
//! would leave agents connecting directly (fail open). Pinned links stay
//! attached: with the daemon gone, agents' connections go to a port nobody
//! serves and are refused (fail closed). A restarted daemon reuses the
//! pinned maps, so records of connections made meanwhile are not lost,
//! attaches fresh programs and only then unpins the old links.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};

use super::{EbpfError, hooks::HOOKS};

pub const MAPS: [&str; 16] = [
    "PROXY_CONFIG",
    "SOCKET_RECORDS",
    "PEER_RECORDS",
    "CONN_ORIG",
    "AGENT_DNS",
    "UNIX_ALLOW",
    "KERNEL_EVENTS",
    "EVENT_STATS",
    "TASK_LAYOUT",
    "LISTEN_ALLOW",
    "REVOKED",
    "AGENT_USAGE",
    "AGENT_RELEASED",
    "DIRECT_WAYS",
    "DIRECT_CONN",
    "DIRECT_OPEN",
];

/// Ends the name of a link pinned only until it is handed to aya (see
/// [`super::sockopt_link`]).
pub const SCRATCH_SUFFIX: &str = "-scratch";

/// Pinned maps live in a directory named for their layout: a daemon whose
/// map definitions changed starts fresh maps instead of adopting ones it
/// cannot read.
pub const MAPS_DIR: &str = "maps-v4";

/// The pin directory's layout.
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Creates the directories (0700) if they are missing.
    pub fn prepare(root: &Path) -> Result<Self, EbpfError> {
        let dir = Self {
            root: root.to_owned(),
        };
        for sub in [dir.maps(), dir.links()] {
            create_private_dir(&sub)?;
        }
        Ok(dir)
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join(MAPS_DIR)
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// The pins of the links attached to cgroup `cgroup_id` by an earlier
    /// guard(), for [`PinDir::replace`]. A scratch pin left by a daemon
    /// that died in the instant between pinning a sockopt link and renaming
    /// it is an extra copy of a program that is attached anyway: it goes
    /// now, and its name is free again.
    pub fn previous_links(&self, cgroup_id: u64) -> Result<Vec<PathBuf>, EbpfError> {
        let mut previous = Vec::new();
        for path in pinned_links(&self.links(), Some(cgroup_id))? {
            if path.to_string_lossy().ends_with(SCRATCH_SUFFIX) {
                unpin(&path)?;
            } else {
                previous.push(path);
            }
        }
        Ok(previous)
    }

    /// Whether links are pinned for cgroup `cgroup_id`: it was guarded
    /// before (by this daemon or an earlier one).
    pub fn has_links(&self, cgroup_id: u64) -> bool {
        pinned_links(&self.links(), Some(cgroup_id)).is_ok_and(|l| !l.is_empty())
    }

    /// The cgroups that have links pinned.
    pub fn pinned_cgroups(&self) -> Result<BTreeSet<u64>, EbpfError> {
        Ok(pinned_links(&self.links(), None)?
            .iter()
            .filter_map(|p| link_cgroup_id(p))
            .collect())
    }

    /// Unpins the links of a cgroup that no longer exists (see
    /// [`super::Kernel::forget`]). Returns how many were removed.
    pub fn forget(&self, cgroup_id: u64) -> Result<usize, EbpfError> {
        let links = pinned_links(&self.links(), Some(cgroup_id))?;
        for path in &links {
            unpin(path)?;
        }
        Ok(links.len())
    }

    /// Pins every new link of cgroup `cgroup_id`, then unpins `previous`:
    /// there is no instant without the programs attached.
    pub fn replace(
        &self,
        cgroup_id: u64,
        new_links: Vec<(&'static str, FdLink)>,
        previous: Vec<PathBuf>,
    ) -> Result<(), EbpfError> {
        for (name, link) in new_links {
            let link_id = link
                .info()
                .map_err(|source| EbpfError::Link { name, source })?
                .id();
            let path = self.links().join(format!("cg{cgroup_id}-{name}-{link_id}"));
            link.pin(&path)
                .map_err(|source| EbpfError::Pin { path, source })?;
        }
        for path in previous {
            unpin(&path)?;
        }
        Ok(())
    }
}

/// Removes every pinned link and map of a pin directory: the programs detach
/// from all cgroups and agents connect directly again. Used by
/// `agentguard detach` (an explicit uninstall) and by tests.
pub fn detach_all(pin_dir: &Path) -> Result<usize, EbpfError> {
    let mut removed = 0;
    for path in pinned_links(&pin_dir.join("links"), None)? {
        unpin(&path)?;
        removed += 1;
    }
    let _ = fs::remove_dir(pin_dir.join("links"));
    // The maps of this layout and of any earlier one (`maps-v2`, ...),
    // which a daemon of this version no longer adopts.
    let map_dirs = fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("maps-v"));
    for dir in map_dirs {
        for entry in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(EbpfError::Unpin { path, source }),
            }
        }
        let _ = fs::remove_dir(dir.path());
    }
    let _ = fs::remove_dir(pin_dir);
    Ok(removed)
}

fn create_private_dir(dir: &Path) -> Result<(), EbpfError> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| EbpfError::PinDir {
            path: dir.to_owned(),
            source,
        })
}

/// Pinned link files, all or those of one cgroup, named
/// `cg<cgroup id>-<program>-<link id>`.
fn pinned_links(links_dir: &Path, cgroup_id: Option<u64>) -> Result<Vec<PathBuf>, EbpfError> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(EbpfError::PinDir {
                path: links_dir.to_owned(),
                source,
            });
        }
    };
    let mut links: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| match (link_cgroup_id(p), cgroup_id) {
            (Some(id), Some(want)) => id == want,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .collect();
    links.sort();
    Ok(links)
}

fn link_cgroup_id(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("cg")?;
    let (id, program) = rest.split_once('-')?;
    HOOKS
        .iter()
        .any(|h| program.starts_with(h.program))
        .then(|| id.parse().ok())
        .flatten()
}

/// Unpinning drops the last reference to the link: the program detaches.
fn unpin(path: &Path) -> Result<(), EbpfError> {
    let link = PinnedLink::from_pin(path).map_err(|source| EbpfError::Link {
        name: "pinned",
        source,
    })?;
    link.unpin().map_err(|source| EbpfError::Unpin {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_carry_their_cgroup() {
        assert_eq!(
            link_cgroup_id(Path::new("/x/links/cg1234-agentguard_connect4-77")),
            Some(1234)
        );
        assert_eq!(
            link_cgroup_id(Path::new("/x/links/cgabc-agentguard_connect4-1")),
            None
        );
        assert_eq!(link_cgroup_id(Path::new("/x/links/cg12-other-1")), None);
        assert_eq!(link_cgroup_id(Path::new("/x/links/README")), None);
        // A scratch pin is found like any link of its cgroup.
        assert_eq!(
            link_cgroup_id(Path::new(&format!(
                "/x/links/cg77-agentguard_setsockopt{SCRATCH_SUFFIX}"
            ))),
            Some(77)
        );
    }
}
