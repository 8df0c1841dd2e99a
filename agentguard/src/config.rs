//! Daemon configuration: names and defaults, parsing helpers, one validation
//! step, and a one-line summary logged at start.

use std::path::PathBuf;

use thiserror::Error;

/// Policies folder: one TOML file per agent.
pub const DEFAULT_POLICIES_DIR: &str = "/etc/agentguard/policies";
/// Daemon state (lock file now; CA and keys in later issues). Mode 0700.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/agentguard";
/// Admin API (HTTP over a unix socket, mode 0600).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/agentguard/agentguard.sock";
/// Where kernel programs' links and maps are pinned, so they outlive the
/// daemon (fail closed) and a restarted daemon adopts them.
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/agentguard";
/// The proxy listener's port on 127.0.0.1 and ::1. A privileged port (< 1024)
/// on purpose: while the daemon is down, the kernel still sends agents'
/// connections to this port, and only root may bind it, so no local user can
/// stand in for the proxy.
pub const DEFAULT_PROXY_PORT: u16 = 977;
/// Connections to an original destination that does not answer give up after
/// this long, so a dead upstream cannot pin proxy resources.
pub const UPSTREAM_CONNECT_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{flag}: path must be absolute, got {path}")]
    NotAbsolute { flag: &'static str, path: PathBuf },
}

/// Effective configuration of `agentguard run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub policies_dir: PathBuf,
    pub state_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub bpf_dir: PathBuf,
    /// 0 asks the kernel for a free port (tests); the chosen port is then
    /// written to the kernel's redirect map like any other.
    pub proxy_port: u16,
    /// Extra CA certificates (PEM) trusted for upstreams, beside the system
    /// roots: private CAs, and tests.
    pub upstream_ca: Option<PathBuf>,
}

impl RunConfig {
    /// Paths are made absolute first so that the running daemon does not
    /// depend on the directory it was started from.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        self.policies_dir = absolute(self.policies_dir);
        self.state_dir = absolute(self.state_dir);
        self.admin_socket = absolute(self.admin_socket);
        self.upstream_ca = self.upstream_ca.map(absolute);
        if !self.bpf_dir.is_absolute() {
            return Err(ConfigError::NotAbsolute {
                flag: "--bpf-dir",
                path: self.bpf_dir,
            });
        }
        Ok(self)
    }
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

impl std::fmt::Display for RunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "policies={} state_dir={} admin_socket={} bpf_dir={} proxy_port={} upstream_ca={}",
            self.policies_dir.display(),
            self.state_dir.display(),
            self.admin_socket.display(),
            self.bpf_dir.display(),
            self.proxy_port,
            self.upstream_ca
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string())
        )
    }
}
