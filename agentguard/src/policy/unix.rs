//! `[agent] unix_sockets`: the Unix sockets an agent may connect or send
//! to. Everything else is refused in the kernel.
//!
//! The kernel compares the address the agent passes, byte for byte, so an
//! entry must be written the way agents dial it: an absolute path, or
//! `@name` for a name in the abstract namespace (unix(7)).

use std::{fmt, os::unix::fs::MetadataExt as _, path::Path};

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

    /// A path is only as safe as its directories: whoever may rename or
    /// create entries on the way can put a symlink to any other socket under
    /// the allowed name. So every directory on the way must be root's and
    /// writable by nobody else; above the socket's own directory a sticky
    /// one (/tmp) is enough, as only root may rename root's entries there.
    pub fn check_directories(&self) -> Result<(), String> {
        if self.is_abstract() {
            return Ok(());
        }
        let parent = Path::new(&self.text)
            .parent()
            .ok_or_else(|| format!("{}: has no directory", self.text))?;
        let real = parent.canonicalize().map_err(|e| {
            format!(
                "unix socket {}: directory {}: {e}",
                self.text,
                parent.display()
            )
        })?;
        for (depth, dir) in real.ancestors().enumerate() {
            let meta = std::fs::metadata(dir).map_err(|e| {
                format!(
                    "unix socket {}: directory {}: {e}",
                    self.text,
                    dir.display()
                )
            })?;
            let mode = meta.mode();
            let sticky_ok = depth > 0 && mode & STICKY != 0;
            if meta.uid() != 0 || (mode & WRITABLE_BY_OTHERS != 0 && !sticky_ok) {
                return Err(format!(
                    "unix socket {}: directory {} (owner uid {}, mode {:o}) can be changed by users other than root, who could put a link to any socket there; allow only sockets in root's directories",
                    self.text,
                    dir.display(),
                    meta.uid(),
                    mode & 0o7777
                ));
            }
        }
        Ok(())
    }
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

    #[test]
    fn directories_others_can_change_are_refused() {
        // Unit tests may run unprivileged; ownership is checked against uid
        // 0, so this case only holds as root. The directory rules themselves
        // are exercised by the privileged end-to-end test.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("tool.sock");
        let entry = UnixSocketAddr::parse(sock.to_str().unwrap()).unwrap();
        let owned_by_root = std::fs::metadata(dir.path()).unwrap().uid() == 0;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(entry.check_directories().is_ok(), owned_by_root);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = entry.check_directories().unwrap_err();
        assert!(err.contains("other than root"), "{err}");
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
