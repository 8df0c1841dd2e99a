//! Daemon configuration: names and defaults, parsing helpers, one validation
//! step, and a one-line summary logged at start. `layers` decides which of
//! flag, environment, config file and default gives each value.

pub mod layers;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use thiserror::Error;

use crate::{
    audit::{AuditConfig, WriterConfig},
    ebpf::{KernelOptions, UnixGuard},
};

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
/// The longest an audit event waits before its batch is committed: after a
/// `kill -9`, at most about this much of the record is missing.
pub const DEFAULT_AUDIT_FLUSH_INTERVAL: &str = "200ms";
/// An audit batch is committed as soon as it holds this many events.
pub const DEFAULT_AUDIT_BATCH_MAX: usize = 1024;
/// Audit events queued before the proxy waits for the writer.
pub const DEFAULT_AUDIT_QUEUE: usize = 4096;
/// ...or once the queued events hold this many bytes.
pub const DEFAULT_AUDIT_QUEUE_BYTES: &str = "16M";
/// A signed checkpoint every this many events...
pub const DEFAULT_AUDIT_CHECKPOINT_EVERY: u64 = 1000;
/// ...or this often, whichever comes first.
pub const DEFAULT_AUDIT_CHECKPOINT_INTERVAL: &str = "60s";

/// The JWKS for request-bound tokens is served here, over HTTPS (loopback:
/// tool servers on this host read it; serve it further with a reverse proxy
/// or publish `agentguard token jwks`). `off` disables it.
pub const DEFAULT_JWKS_LISTEN: &str = "127.0.0.1:9477";
/// Request bodies for JWT-bound tools are read whole to hash them, up to this.
pub const DEFAULT_JWT_MAX_BODY: &str = "1M";

/// Request-bound token settings of `agentguard run`.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// `sub` is `spiffe://<trust_domain>/agent/<name>`.
    pub trust_domain: String,
    pub jwks_listen: Option<SocketAddr>,
    pub max_body: usize,
    /// What the request-bound token key is (the first, and each
    /// rotation's); None keeps an existing key's, and makes a new one EdDSA.
    pub algorithm: Option<crate::token::SigningAlgorithm>,
    pub jwks_tls: JwksTlsOptions,
}

/// How the JWKS endpoint proves who it is. Tool servers take their keys
/// from it: a key swapped on the way would let anyone mint tokens they
/// accept, so it is HTTPS unless the operator asks for plain HTTP on
/// loopback.
#[derive(Debug, Clone, Default)]
pub struct JwksTlsOptions {
    /// The operator's certificate chain and key (PEM), instead of a leaf
    /// from agentguard's CA.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// Names (DNS or IP) the CA's leaf is for, beside `localhost` and the
    /// listen address.
    pub names: Vec<String>,
    /// Plain HTTP (loopback only).
    pub plain_http: bool,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{flag}: path must be absolute, got {path}")]
    NotAbsolute { flag: &'static str, path: PathBuf },
    #[error("{flag}: {value:?} is not a duration (like 200ms, 60s, 90d)")]
    Duration { flag: &'static str, value: String },
    #[error("{flag}: {value:?} is longer than {max}")]
    DurationTooLong {
        flag: &'static str,
        value: String,
        max: &'static str,
    },
    #[error("{flag}: {value:?} is shorter than {min}")]
    DurationTooShort {
        flag: &'static str,
        value: String,
        min: &'static str,
    },
    #[error("{flag}: {value:?} is not a size (like 500000000, 512M, 10G)")]
    Size { flag: &'static str, value: String },
    #[error("{flag}: must be at least 1")]
    Zero { flag: &'static str },
    #[error("--trust-domain: {0:?} must be a DNS-like name (a-z, 0-9, '-', '.')")]
    TrustDomain(String),
    #[error("--token-algorithm: {0}")]
    TokenAlgorithm(String),
    #[error("--jwks-listen: {0:?} is neither an address (127.0.0.1:9477) nor \"off\"")]
    JwksListen(String),
    #[error(
        "--jwks-plain-http: the JWKS listens on {0}, which is not loopback: tool servers elsewhere would take keys anyone on the path could swap; serve it over HTTPS"
    )]
    JwksPlainHttp(SocketAddr),
    #[error(transparent)]
    Otlp(#[from] crate::audit::otlp::OtlpError),
    #[error(transparent)]
    Anchor(#[from] crate::audit::anchor::AnchorError),
    #[error("{flag} needs {needs} too")]
    Needs {
        flag: &'static str,
        needs: &'static str,
    },
    #[error("{flag}: {value} must be between 1 and {max}")]
    OutOfRange {
        flag: &'static str,
        value: u64,
        max: u64,
    },
}

/// Parses a human duration (`200ms`, `60s`, `90d`) for `flag`.
pub fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|_| ConfigError::Duration {
        flag,
        value: value.to_owned(),
    })
}

/// Parses a size in bytes with an optional K, M, G or T suffix (powers of
/// 1024; `KiB`, `MB` and the like read the same) for `flag`.
pub fn parse_size(flag: &'static str, value: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::Size {
        flag,
        value: value.to_owned(),
    };
    let v = value.trim();
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = v[digits.len()..].to_ascii_uppercase();
    let shift = match unit.trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(err()),
    };
    let n: u64 = digits.trim().parse().map_err(|_| err())?;
    n.checked_mul(1 << shift).filter(|&b| b > 0).ok_or_else(err)
}

/// The audit store's settings, as given on the command line.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub flush_interval: Duration,
    pub batch_max: usize,
    pub queue: usize,
    pub queue_bytes: u64,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    /// `None`: keep every event.
    pub retention: Option<Duration>,
    /// `None`: no size limit.
    pub max_bytes: Option<u64>,
    /// `--audit-signing-key`; `None`: `<state-dir>/audit-key/signing.key`.
    pub signing_key: Option<PathBuf>,
    /// `--audit-anchor-dir` and `--audit-anchor-command`.
    pub anchors: crate::audit::anchor::AnchorConfig,
}

impl AuditOptions {
    pub fn to_config(&self) -> AuditConfig {
        AuditConfig {
            writer: WriterConfig {
                flush_interval: self.flush_interval,
                batch_max: self.batch_max,
                checkpoint_every: self.checkpoint_every,
                checkpoint_interval: self.checkpoint_interval,
                retention: self.retention,
                max_bytes: self.max_bytes,
            },
            queue: self.queue,
            queue_bytes: usize::try_from(self.queue_bytes).unwrap_or(usize::MAX),
            signing_key: self.signing_key.clone(),
            anchors: self.anchors.clone(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (flag, n) in [
            ("--audit-batch-max", self.batch_max as u64),
            ("--audit-queue", self.queue as u64),
            ("--audit-checkpoint-every", self.checkpoint_every),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { flag });
            }
        }
        Ok(())
    }
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
    pub audit: AuditOptions,
    /// Also serve `/metrics` on this TCP address (off by default: the admin
    /// socket serves it to root).
    pub metrics_listen: Option<SocketAddr>,
    /// Export audit records to an OpenTelemetry collector (OTLP/HTTP):
    /// flags and `OTEL_EXPORTER_OTLP_*`, resolved.
    pub otlp: Option<crate::audit::otlp::OtlpConfig>,
    /// Where allowed DNS queries go; empty: /etc/resolv.conf's nameservers.
    pub dns_upstreams: Vec<SocketAddr>,
    /// Record kernel redirects as well as refusals.
    pub report_kernel_redirects: bool,
    /// Whether a kernel without the Unix-socket hooks stops start-up.
    pub unix_guard: UnixGuard,
    /// Whether a kernel without the BPF LSM stops start-up, and the
    /// per-agent shares of the kernel's maps.
    pub kernel: KernelOptions,
    pub tokens: TokenOptions,
    /// `--web-listen` and the other `--web-*` flags; `None`: no web view.
    pub web: Option<crate::web::WebOptions>,
    /// Time limits and per-agent caps.
    pub limits: crate::proxy::limits::LimitOptions,
}

/// `--jwks-listen`: an address, or `off`.
pub fn parse_jwks_listen(value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| ConfigError::JwksListen(value.to_owned()))
}

impl RunConfig {
    /// Paths are made absolute first so that the running daemon does not
    /// depend on the directory it was started from.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        self.policies_dir = absolute(self.policies_dir);
        self.state_dir = absolute(self.state_dir);
        self.admin_socket = absolute(self.admin_socket);
        self.upstream_ca = self.upstream_ca.map(absolute);
        self.audit.signing_key = self.audit.signing_key.map(absolute);
        self.audit.anchors.dir = self.audit.anchors.dir.map(absolute);
        if let Some(web) = &mut self.web {
            web.users = absolute(std::mem::take(&mut web.users));
        }
        self.audit.validate()?;
        self.audit.anchors.validate()?;
        let td = &self.tokens.trust_domain;
        if td.is_empty()
            || !td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(ConfigError::TrustDomain(td.clone()));
        }
        if let Some(addr) = self.tokens.jwks_listen
            && self.tokens.jwks_tls.plain_http
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError::JwksPlainHttp(addr));
        }
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
            "policies={} state_dir={} admin_socket={} bpf_dir={} proxy_port={} upstream_ca={} \
             audit_flush={:?} audit_batch_max={} audit_queue={} audit_queue_bytes={} audit_checkpoint_every={} \
             audit_checkpoint_interval={:?} audit_retention={} audit_max_size={} \
             audit_signing_key={} audit_anchor_dir={} audit_anchor_command={} \
             metrics_listen={} otlp_endpoint={} trust_domain={} jwks_listen={} jwt_max_body={} token_algorithm={} \
             report_kernel_redirects={} unix_guard={:?} {} {} web_listen={}",
            self.policies_dir.display(),
            self.state_dir.display(),
            self.admin_socket.display(),
            self.bpf_dir.display(),
            self.proxy_port,
            self.upstream_ca
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string()),
            self.audit.flush_interval,
            self.audit.batch_max,
            self.audit.queue,
            self.audit.queue_bytes,
            self.audit.checkpoint_every,
            self.audit.checkpoint_interval,
            self.audit
                .retention
                .map_or("keep".into(), |d| humantime::format_duration(d).to_string()),
            self.audit
                .max_bytes
                .map_or("none".into(), |b| b.to_string()),
            self.audit.signing_key.as_ref().map_or_else(
                || "<state-dir>/audit-key/signing.key".into(),
                |p| p.display().to_string()
            ),
            self.audit
                .anchors
                .dir
                .as_ref()
                .map_or("off".into(), |p| p.display().to_string()),
            // The command may carry a credential for its target: not logged.
            if self.audit.anchors.command.is_some() {
                "set"
            } else {
                "off"
            },
            self.metrics_listen.map_or("off".into(), |a| a.to_string()),
            self.otlp
                .as_ref()
                .map_or_else(|| "off".into(), ToString::to_string),
            self.tokens.trust_domain,
            self.tokens
                .jwks_listen
                .map_or("off".into(), |a| a.to_string()),
            self.tokens.max_body,
            self.tokens
                .algorithm
                .map_or_else(|| "unset".to_owned(), |a| format!("{a:?}")),
            self.report_kernel_redirects,
            self.unix_guard,
            self.limits,
            self.kernel,
            self.web
                .as_ref()
                .map_or("off".into(), |w| w.listen.to_string()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("f", "1000").unwrap(), 1000);
        assert_eq!(parse_size("f", "512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("f", "10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("f", "2kb").unwrap(), 2048);
        assert!(parse_size("f", "0").is_err());
        assert!(parse_size("f", "12Q").is_err());
        assert!(parse_size("f", "lots").is_err());
    }
}
