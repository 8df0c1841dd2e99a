//! Checks made before the daemon touches the kernel, each with an error that
//! says what is missing and how to get it.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error(
        "agentguard {command} must run as root (it loads eBPF programs and manages cgroups); try: sudo agentguard {command}"
    )]
    NotRoot { command: &'static str },
    #[error(
        "the running kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); agentguard needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "failed to mount bpffs at {path}: {source}; agentguard pins its programs there so that agents stay guarded while it restarts"
    )]
    MountBpffs { path: String, source: nix::Error },
    #[error("failed to read /proc/self/mountinfo: {0}")]
    MountInfo(std::io::Error),
}

pub fn require_root(command: &'static str) -> Result<(), PreflightError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(PreflightError::NotRoot { command })
    }
}

/// CO-RE and the loader's relocations need the kernel's BTF.
pub fn require_btf() -> Result<(), PreflightError> {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf)
    }
}

/// Makes sure a bpf filesystem is mounted at `/sys/fs/bpf`, mounting one if
/// not (many hosts mount it at boot; some, like these VMs, do not).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), PreflightError> {
    const BPFFS: &str = "/sys/fs/bpf";
    if !pin_dir.starts_with(BPFFS) {
        // A custom pin location is the operator's to mount.
        return Ok(());
    }
    let mounted = crate::procfs::mounts()
        .map_err(PreflightError::MountInfo)?
        .iter()
        .any(|m| m.mount_point == Path::new(BPFFS) && m.fstype == "bpf");
    if mounted {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| PreflightError::MountBpffs {
        path: BPFFS.into(),
        source,
    })
}
