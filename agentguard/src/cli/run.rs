//! The options of `agentguard run` (shared with `agentguard config show`),
//! and the daemon configuration they make.
//!
//! Every option here is also a key of the config file and an
//! `AGENTGUARD_*` variable (see `config::layers`): add a flag here and it is
//! configurable all three ways.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::Args;

use super::{audit, kernel, limits, token, web};
use crate::{
    config::{
        ConfigError, DEFAULT_BPF_DIR, DEFAULT_POLICIES_DIR, DEFAULT_PROXY_PORT, DEFAULT_STATE_DIR,
        RunConfig,
    },
    ebpf::UnixGuard,
};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Folder of policy files, one TOML file per agent.
    #[arg(long, default_value = DEFAULT_POLICIES_DIR)]
    pub policies: PathBuf,
    /// The daemon's state: CA, keys, audit store.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Port of the proxy on 127.0.0.1 and ::1 (0: any free port).
    #[arg(long, default_value_t = DEFAULT_PROXY_PORT)]
    pub proxy_port: u16,
    /// bpffs directory where programs and maps are pinned.
    #[arg(long, default_value = DEFAULT_BPF_DIR)]
    pub bpf_dir: PathBuf,
    /// Extra CA certificates (PEM) to trust for upstreams, beside the
    /// system roots.
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Resolvers that agents' allowed DNS queries are forwarded to
    /// (repeatable; default: the nameservers in /etc/resolv.conf).
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_upstream: Vec<SocketAddr>,
    /// Also record every redirect the kernel makes, not only refusals.
    #[arg(long)]
    pub report_kernel_redirects: bool,
    /// Start even if the kernel lacks the Unix-socket hooks (before
    /// Linux 6.7): agents can then reach any Unix socket. Without this
    /// flag such a kernel stops start-up.
    #[arg(long)]
    pub allow_unguarded_unix_sockets: bool,
    #[command(flatten)]
    pub kernel: kernel::KernelRunArgs,
    #[command(flatten)]
    pub audit: audit::AuditRunArgs,
    #[command(flatten)]
    pub tokens: token::TokenRunArgs,
    #[command(flatten)]
    pub web: web::WebRunArgs,
    /// Time limits and per-agent caps (boxed: clap keeps the run command's
    /// many flags on the stack).
    #[command(flatten)]
    pub limits: Box<limits::LimitRunArgs>,
}

impl RunArgs {
    /// The daemon's configuration, validated. `admin_socket` is the global
    /// `--admin-socket`, which the daemon binds.
    pub fn config(self, admin_socket: &Path) -> Result<RunConfig, ConfigError> {
        RunConfig {
            dns_upstreams: self.dns_upstream,
            report_kernel_redirects: self.report_kernel_redirects,
            unix_guard: if self.allow_unguarded_unix_sockets {
                UnixGuard::Optional
            } else {
                UnixGuard::Required
            },
            kernel: self.kernel.options()?,
            policies_dir: self.policies,
            state_dir: self.state_dir,
            admin_socket: admin_socket.to_owned(),
            bpf_dir: self.bpf_dir,
            proxy_port: self.proxy_port,
            upstream_ca: self.upstream_ca,
            audit: self.audit.options()?,
            metrics_listen: self.audit.metrics_listen,
            otlp: self.audit.otlp()?,
            tokens: self.tokens.options()?,
            web: self.web.options()?,
            limits: self.limits.options()?,
        }
        .validate()
    }
}
