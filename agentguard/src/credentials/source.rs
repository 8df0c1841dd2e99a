//! Reading secrets from files and from the daemon's environment, with the
//! file's owner and mode checked.

use std::{
    ffi::OsString,
    fs,
    io::{self, Read as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::fcntl::OFlag;
use thiserror::Error;

use super::Secret;
use crate::policy::SecretRef;

/// Permission bits that would let someone other than the owner read or change
/// the secret.
const FORBIDDEN_BITS: u32 = 0o077;
/// Far more than any API key or client secret; stops a misconfigured path
/// (a log file, a disk image) from being read into memory and injected.
const MAX_SECRET_LEN: u64 = 64 * 1024;

/// Why a secret could not be read. Messages name the path or variable, never
/// the content.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("refusing to use {path}: it is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "refusing to use {path}: it is owned by uid {owner}, not by root \
         (this process's uid {euid})"
    )]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "refusing to use {path}: its mode {mode:04o} lets group or others read or change \
         the secret; if anyone else may have read it, rotate it, otherwise chmod 600 it"
    )]
    Insecure { path: PathBuf, mode: u32 },
    #[error("refusing to use {path}: it is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{path} is not valid UTF-8")]
    NotUtf8File { path: PathBuf },
    #[error("{path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("environment variable {var} is not set")]
    EnvUnset { var: String },
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUtf8 { var: String },
    #[error("environment variable {var} is empty")]
    EnvEmpty { var: String },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SourceError {
    let path = path.to_owned();
    move |source| SourceError::Io {
        action,
        path,
        source,
    }
}

pub(super) fn resolve(source: &SecretRef) -> Result<Secret, SourceError> {
    match source {
        SecretRef::File(path) => read_file(path),
        SecretRef::Env(var) => read_env(var),
    }
}

/// Reads a secret file: a regular file owned by this process's user (root, for
/// the daemon) with no group or other permission bits. Owner and mode are
/// checked on the open file, so what is checked is what is read even if the
/// path is swapped in between. One trailing newline (`\n` or `\r\n`, as
/// editors and `echo` leave) is dropped; nothing else is trimmed, since
/// spaces may be part of a secret.
pub(super) fn read_file(path: &Path) -> Result<Secret, SourceError> {
    // O_NONBLOCK: opening a FIFO put at the path would otherwise block the
    // (re)load until someone writes to it. It changes nothing for regular
    // files, which are all that is read.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("read", path))?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile {
            path: path.to_owned(),
        });
    }
    // Another user owning the file could chmod it or replace the secret. In
    // production the daemon runs as root, so this is "owned by root"; tests
    // run as whoever runs them.
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(SourceError::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & FORBIDDEN_BITS != 0 {
        return Err(SourceError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_SECRET_LEN {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
            limit: MAX_SECRET_LEN,
        });
    }
    let mut bytes = Vec::new();
    // The file may grow between fstat and read: the limit holds either way.
    file.take(MAX_SECRET_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > MAX_SECRET_LEN {
        return Err(SourceError::TooLarge {
            path: path.to_owned(),
            limit: MAX_SECRET_LEN,
        });
    }
    let mut text = String::from_utf8(bytes).map_err(|_| SourceError::NotUtf8File {
        path: path.to_owned(),
    })?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    if text.is_empty() {
        return Err(SourceError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(text))
}

/// Reads a secret from the daemon's environment, as is: must be set and
/// non-empty.
pub(super) fn read_env(var: &str) -> Result<Secret, SourceError> {
    env_value(var, std::env::var_os(var))
}

fn env_value(var: &str, value: Option<OsString>) -> Result<Secret, SourceError> {
    let value = value.ok_or_else(|| SourceError::EnvUnset {
        var: var.to_owned(),
    })?;
    let value = value.into_string().map_err(|_| SourceError::EnvNotUtf8 {
        var: var.to_owned(),
    })?;
    if value.is_empty() {
        return Err(SourceError::EnvEmpty {
            var: var.to_owned(),
        });
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn secret_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn good_file_is_read_and_one_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = secret_file(dir.path(), "a", "sk-abc\n", 0o600);
        assert_eq!(read_file(&p).unwrap().expose(), "sk-abc");
        let p = secret_file(dir.path(), "b", "sk-abc\r\n", 0o400);
        assert_eq!(read_file(&p).unwrap().expose(), "sk-abc");
        // Only one newline, and never spaces: they may belong to the secret.
        let p = secret_file(dir.path(), "c", " sk abc \n\n", 0o600);
        assert_eq!(read_file(&p).unwrap().expose(), " sk abc \n");
    }

    #[test]
    fn group_readable_file_is_refused_with_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = secret_file(dir.path(), "key", "sk-abc", 0o640);
        let err = read_file(&p).unwrap_err();
        assert!(matches!(err, SourceError::Insecure { mode: 0o640, .. }));
        let msg = err.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("0640"), "{msg}");
        assert!(!msg.contains("sk-abc"), "{msg}");
    }

    #[test]
    fn missing_empty_and_non_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = read_file(&missing).unwrap_err();
        assert!(matches!(err, SourceError::Io { action: "open", .. }));
        assert!(err.to_string().contains(&missing.display().to_string()));

        let empty = secret_file(dir.path(), "empty", "", 0o600);
        assert!(matches!(
            read_file(&empty),
            Err(SourceError::EmptyFile { .. })
        ));
        let newline = secret_file(dir.path(), "newline", "\n", 0o600);
        assert!(matches!(
            read_file(&newline),
            Err(SourceError::EmptyFile { .. })
        ));

        assert!(matches!(
            read_file(dir.path()),
            Err(SourceError::NotAFile { .. })
        ));
    }

    #[test]
    fn foreign_owner_is_refused() {
        // Only root can give a file away (`cargo xtask test` runs as root);
        // without root this fails rather than pass having proved nothing.
        assert!(
            nix::unistd::geteuid().is_root(),
            "chown to another user needs root: run `sudo -E cargo xtask test`"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = secret_file(dir.path(), "key", "sk-abc", 0o600);
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        assert!(matches!(
            read_file(&p),
            Err(SourceError::ForeignOwner { owner: 65534, .. })
        ));
    }

    #[test]
    fn env_must_be_set_and_non_empty() {
        // The logic is tested on given values: setting variables of the test
        // process is unsafe while other tests' threads may read them.
        assert_eq!(
            env_value("K", Some("sk-env".into())).unwrap().expose(),
            "sk-env"
        );
        assert!(matches!(
            env_value("K", Some("".into())),
            Err(SourceError::EnvEmpty { .. })
        ));
        let err = env_value("AGENTGUARD_TEST_UNSET", None).unwrap_err();
        assert!(matches!(err, SourceError::EnvUnset { .. }));
        assert!(err.to_string().contains("AGENTGUARD_TEST_UNSET"));

        // And once through the real environment, with variables that are
        // (PATH) and are not set.
        assert!(read_env("PATH").is_ok());
        assert!(matches!(
            read_env("AGENTGUARD_TEST_SURELY_UNSET_6f1c"),
            Err(SourceError::EnvUnset { .. })
        ));
    }
}
