//! `[agent] unix_sockets`: the Unix sockets an agent may connect or send
//! to. Everything else is refused in the kernel.
//!
//! The kernel compares the address the agent passes, byte for byte, so an
//! entry must be written the way agents dial it: an absolute path, or
//! `@name` for a name in the abstract namespace (unix(7)).

use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use agentguard_common::UNIX_PATH_MAX;

/// S_ISVTX: in a sticky directory only an entry's owner may rename or
/// remove it.
const STICKY: u32 = 0o1000;
/// Group- or other-writable.
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// One allowed Unix socket address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnixSocketAddr {
    text: String,
}

impl UnixSocketAddr {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.contains('\0') {
            return Err(format!("{raw:?}: must not contain NUL"));
        }
        if let Some(name) = raw.strip_prefix('@') {
            if name.is_empty() {
                return Err("\"@\": an abstract socket needs a name after @".into());
            }
        } else {
            let Some(rest) = raw.strip_prefix('/') else {
                return Err(format!(
                    "{raw:?}: write an absolute path, or @name for an abstract socket"
                ));
            };
            // Split by hand: Path::components() hides `.` and `//`.
            let canonical = rest
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | ".."));
            if !canonical {
                return Err(format!(
                    "{raw:?}: agents dial the path as written, so write it without `.`, `..`, `//` or a trailing `/`"
                ));
            }
        }
        let this = Self {
            text: raw.to_owned(),
        };
        if this.sun_path().len() > UNIX_PATH_MAX {
            return Err(format!(
                "{raw:?}: longer than a Unix socket address can be ({UNIX_PATH_MAX} bytes)"
            ));
        }
        Ok(this)
    }

    /// The bytes of `sockaddr_un.sun_path` as the kernel programs compare
    /// them: the path without a terminating NUL, or NUL and the abstract name.
    pub fn sun_path(&self) -> Vec<u8> {
        match self.text.strip_prefix('@') {
            Some(name) => [&[0u8][..], name.as_bytes()].concat(),
            None => self.text.as_bytes().to_vec(),
        }
    }

    pub fn is_abstract(&self) -> bool {
        self.text.starts_with('@')
    }

    /// A path is only as safe as the directories the kernel walks to
    /// resolve it: whoever may create or rename entries in one of them can
    /// put a link to any other socket under the allowed name. So every such
    /// directory, those that symlinks on the way lead through included, must
    /// be root's and writable by nobody else; except for the socket's own
    /// directory, a sticky one (/tmp) is enough, as only root may rename
    /// root's entries there. Checked in this (the daemon's) mount namespace.
    pub fn check_directories(&self) -> Result<(), String> {
        if self.is_abstract() {
            return Ok(());
        }
        check_resolution(Path::new(&self.text), 0)
            .map_err(|reason| format!("unix socket {}: {reason}", self.text))
    }
}

/// Symlinks followed before giving up (the kernel's own limit is 40).
const MAX_LINKS: usize = 40;

/// Checks each directory resolving `path` passes through, following
/// symlinks (each link's target is checked the same way). `path` is
/// absolute.
fn check_resolution(path: &Path, links: usize) -> Result<(), String> {
    if links > MAX_LINKS {
        return Err("too many levels of symbolic links".into());
    }
    let mut walked = PathBuf::from("/");
    let components: Vec<_> = path.components().skip(1).collect();
    for (i, component) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        // The directory this entry lives in, as the kernel reaches it.
        let dir = walked
            .canonicalize()
            .map_err(|e| format!("directory {}: {e}", walked.display()))?;
        check_directory(&dir, last)?;
        walked.push(component);
        match std::fs::symlink_metadata(&walked) {
            Ok(meta) if meta.file_type().is_symlink() => {
                // A sticky directory protects only root's own entries.
                if meta.uid() != 0 {
                    return Err(format!(
                        "link {} (owner uid {}) can be re-pointed by its owner; allow only paths through root's links",
                        walked.display(),
                        meta.uid()
                    ));
                }
                let target = std::fs::read_link(&walked)
                    .map_err(|e| format!("{}: {e}", walked.display()))?;
                check_resolution(&dir.join(target), links + 1)?;
            }
            Ok(_) => {}
            // The socket need not exist yet: its directory was checked.
            Err(e) if last && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", walked.display())),
        }
    }
    Ok(())
}

/// `holds_socket`: the directory the socket itself is in, where a sticky
/// bit is not enough (anyone may create the name while it does not exist).
fn check_directory(dir: &Path, holds_socket: bool) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("directory {}: {e}", dir.display()))?;
    let mode = meta.mode();
    let sticky_ok = !holds_socket && mode & STICKY != 0;
    if meta.uid() != 0 || (mode & WRITABLE_BY_OTHERS != 0 && !sticky_ok) {
        return Err(format!(
            "directory {} (owner uid {}, mode {:o}) can be changed by users other than root, who could put a link to any socket there; allow only sockets in root's directories",
            dir.display(),
            meta.uid(),
            mode & 0o7777
        ));
    }
    Ok(())
}

impl fmt::Display for UnixSocketAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn paths_and_abstract_names_become_sun_path_bytes() {
        let p = UnixSocketAddr::parse("/run/tool.sock").unwrap();
        assert_eq!(p.sun_path(), b"/run/tool.sock");
        assert!(!p.is_abstract());
        let a = UnixSocketAddr::parse("@tool").unwrap();
        assert_eq!(a.sun_path(), b"\0tool");
        assert!(a.is_abstract());
        assert_eq!(a.to_string(), "@tool");
    }

    #[test]
    fn entries_must_be_written_as_agents_dial_them() {
        for bad in [
            "tool.sock",
            "./tool.sock",
            "/run/../tool.sock",
            "/run/./tool.sock",
            "/run//tool.sock",
            "/run/",
            "@",
            "/run/a\0b",
            "",
        ] {
            assert!(UnixSocketAddr::parse(bad).is_err(), "{bad:?} accepted");
        }
        let longest = format!("/{}", "a".repeat(UNIX_PATH_MAX - 1));
        assert!(UnixSocketAddr::parse(&longest).is_ok());
        assert!(UnixSocketAddr::parse(&format!("{longest}a")).is_err());
        assert!(UnixSocketAddr::parse(&format!("@{}", "a".repeat(UNIX_PATH_MAX - 1))).is_ok());
        assert!(UnixSocketAddr::parse(&format!("@{}", "a".repeat(UNIX_PATH_MAX))).is_err());
    }

    /// These need root: ownership is checked against uid 0 (unit tests run
    /// as root in `cargo xtask test`).
    #[test]
    fn every_directory_on_the_way_is_checked_links_included() {
        assert!(nix::unistd::geteuid().is_root(), "run as root");
        let base = tempfile::tempdir_in("/tmp").unwrap();
        let root = base.path();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let check = |p: &Path| {
            UnixSocketAddr::parse(p.to_str().unwrap())
                .unwrap()
                .check_directories()
        };
        mode(root, 0o755);
        let safe = root.join("safe");
        std::fs::create_dir(&safe).unwrap();
        assert_eq!(check(&safe.join("tool.sock")), Ok(()));

        // The socket's own directory may not be sticky; one above it may.
        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        mode(&open, 0o1777);
        let err = check(&open.join("tool.sock")).unwrap_err();
        assert!(err.contains("other than root"), "{err}");
        let below = open.join("below");
        std::fs::create_dir(&below).unwrap();
        assert_eq!(check(&below.join("tool.sock")), Ok(()));
        // Group-writable without the sticky bit is refused at any depth.
        mode(&open, 0o775);
        assert!(check(&below.join("tool.sock")).is_err());
        mode(&open, 0o1777);

        // A link on the way is followed: root's link to a safe directory
        // passes, even in a sticky one (no one else may replace it), ...
        std::os::unix::fs::symlink(&safe, open.join("to-safe")).unwrap();
        assert_eq!(check(&open.join("to-safe").join("tool.sock")), Ok(()));
        // ...another user's link there does not: its owner may re-point it.
        std::os::unix::fs::symlink(&safe, open.join("their-link")).unwrap();
        std::os::unix::fs::lchown(open.join("their-link"), Some(65534), None).unwrap();
        let err = check(&open.join("their-link").join("tool.sock")).unwrap_err();
        assert!(err.contains("re-pointed"), "{err}");
        // A link into a directory others can change is refused, and so is
        // a socket name that is itself a link into one.
        let theirs = root.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        std::os::unix::fs::symlink(&theirs, safe.join("to-theirs")).unwrap();
        assert!(check(&safe.join("to-theirs").join("tool.sock")).is_err());
        std::os::unix::fs::symlink(theirs.join("x.sock"), safe.join("link.sock")).unwrap();
        let err = check(&safe.join("link.sock")).unwrap_err();
        assert!(err.contains("uid 65534"), "{err}");
        // A loop ends.
        std::os::unix::fs::symlink(safe.join("loop"), safe.join("loop")).unwrap();
        assert!(check(&safe.join("loop").join("x.sock")).is_err());

        let missing = UnixSocketAddr::parse("/nonexistent-agentguard-dir/x.sock").unwrap();
        assert!(missing.check_directories().is_err());
        assert!(
            UnixSocketAddr::parse("@x")
                .unwrap()
                .check_directories()
                .is_ok()
        );
    }
}
