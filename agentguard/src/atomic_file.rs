//! Writing a file whole: under a temporary name beside it, with its final
//! mode from the first byte (a key is never briefly readable by others),
//! flushed to disk, then moved into place and the folder flushed too, so
//! that after a crash or a power cut the file is either the old one or the
//! new one, complete, never half of either. The CA (`ca`), the token
//! signing keys (`token::keys`) and the audit signing key
//! (`audit::signing`) are all written through here.

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("failed to {action} {path}: {source}")]
pub struct WriteError {
    /// What was being done: `write`, `replace`, `create`, `sync`, `remove`.
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl WriteError {
    fn new(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self {
            action,
            path,
            source,
        }
    }
}

/// Writes `contents` to `path` with exactly `mode`, replacing any file
/// there, so that readers (and the next start after a crash) see the old
/// file or the new one.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let (dir, name) = split(path)?;
    Written::new(dir, name, contents, mode)?.rename_to(path)?;
    sync_dir(dir)
}

/// A complete file, flushed to disk under a temporary name in its folder,
/// not yet in place. Dropped without being placed, it is removed.
pub struct Written {
    tmp: PathBuf,
}

/// Tells temporary files of concurrent writers in this process apart.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Written {
    /// Writes `contents` to a new temporary file beside `<dir>/<name>`.
    pub fn new(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<Self, WriteError> {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        // A leftover from a crashed run with the same pid would block
        // create_new.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(WriteError::new("remove", &tmp)(e));
            }
            _ => {}
        }
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)?;
            // open() applies the umask; set the mode exactly.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.write_all(contents)?;
            file.sync_all()
        })();
        match written {
            Ok(()) => Ok(Self { tmp }),
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                Err(WriteError::new("write", &tmp)(source))
            }
        }
    }

    /// Moves the file to `path`, replacing what is there.
    pub fn rename_to(self, path: &Path) -> Result<(), WriteError> {
        fs::rename(&self.tmp, path).map_err(WriteError::new("replace", path))
        // On success the temporary name is gone; Drop's removal finds
        // nothing.
    }

    /// Puts the file at `path` too, only if nothing is there: a hard link,
    /// unlike a rename, fails if the target exists, so a file another
    /// process created meanwhile is never overwritten.
    pub fn link_to(&self, path: &Path) -> Result<(), WriteError> {
        fs::hard_link(&self.tmp, path).map_err(WriteError::new("create", path))
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Makes renames and links in `dir` survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(WriteError::new("sync", dir))
}

fn split(path: &Path) -> Result<(&Path, &str), WriteError> {
    let invalid = || WriteError {
        action: "write",
        path: path.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a path to a file"),
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(invalid)?;
    let dir = match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(invalid()),
    };
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replace_writes_whole_files_with_their_mode_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        replace(&path, b"first", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        replace(&path, b"second", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
        assert_eq!(names(dir.path()), ["signing.key"]);
    }

    #[test]
    fn linking_never_overwrites_and_unplaced_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        fs::write(&path, b"someone else's").unwrap();
        let written = Written::new(dir.path(), "ca.key", b"ours", 0o600).unwrap();
        let err = written.link_to(&path).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(err.action, "create");
        drop(written);
        assert_eq!(fs::read(&path).unwrap(), b"someone else's");
        assert_eq!(names(dir.path()), ["ca.key"]);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = replace(&dir.path().join("absent/signing.key"), b"x", 0o600).unwrap_err();
        assert_eq!(err.action, "write");
        assert!(err.to_string().contains("absent"), "{err}");
    }
}
