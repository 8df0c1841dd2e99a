//! Where things are: the workspace, its target directory, and the tools setup installs.

use std::env;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask's manifest dir has a parent")
        .to_path_buf()
}

/// Cargo's target directory for the workspace, honouring `CARGO_TARGET_DIR` so that
/// `cargo xtask run` executes the binary cargo just built, not a stale one.
pub fn target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The directory `cargo install` and rustup put binaries in.
fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(home).join("bin"));
    }
    env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo").join("bin"))
}

/// The PATH every command xtask runs gets: the caller's, plus cargo's bin directory.
///
/// sudo usually replaces PATH with its `secure_path`, which drops `~/.cargo/bin`,
/// where rustup, cargo and bpf-linker live. The caller's entries come first so
/// their choice of tools wins.
pub fn tool_path() -> OsString {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(bin) = cargo_bin_dir()
        && !dirs.contains(&bin)
    {
        dirs.push(bin);
    }
    env::join_paths(dirs).expect("PATH entries come from PATH or CARGO_HOME")
}

/// Whether `name` is an executable file in one of the caller's own PATH entries.
pub fn on_caller_path(name: &str) -> bool {
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| {
        dir.join(name)
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
