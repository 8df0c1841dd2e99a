//! The admin API: HTTP/1.1 with JSON bodies over a unix socket (mode 0600, so
//! only root reaches it). `agentguard exec`, `status` and `connections` are
//! its clients.
//!
//! Routes:
//! - `GET /v1/status` → [`StatusView`]
//! - `GET /v1/agents/{name}` → [`AgentView`] (404 if unknown)
//! - `POST /v1/agents/{name}/attach?pid=N` → [`AgentView`]: guard the
//!   systemd unit cgroup process N runs in (`agentguard attach`)
//! - `GET /v1/connections` → recent connection decisions
//! - `GET /v1/requests` → recent HTTP request decisions
//! - `GET /v1/audit/stream?agent=&decision=&kind=&backlog=N` → committed
//!   audit records as Server-Sent Events (`agentguard audit tail`)
//! - `GET /metrics` → Prometheus (OpenMetrics) text
//! - `POST /v1/audit/verify-proxy?event=...` → a verify-proxy's decision
//!   ([`report`])
//! - approvals and revocations: see [`oversight`]

mod ca;
mod client;
mod oversight;
pub mod report;
pub mod server;
mod stream;

use serde::{Deserialize, Serialize};

pub use client::{AdminClient, AdminError};
pub use server::{AdminServer, MetricsSource, ServeError, serve_metrics_tcp};

/// One guarded agent, as `agentguard exec` needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentView {
    pub name: String,
    /// Relative to the cgroup v2 mount, as in the policy.
    pub cgroup: String,
    /// Absolute path of the cgroup directory.
    pub cgroup_path: String,
    pub cgroup_id: u64,
    /// Whether the kernel programs are attached (and pinned) on it.
    pub guarded: bool,
    /// The agent's systemd service, if it is one: its cgroup is the unit's,
    /// guarded while the unit runs.
    #[serde(default)]
    pub systemd_unit: Option<String>,
    /// Whether the kernel keeps its processes from every process outside
    /// its cgroup (BPF LSM). When false (or absent: an older daemon),
    /// `exec` installs a seccomp filter against the main ways instead.
    #[serde(default)]
    pub processes_guarded: bool,
    /// What the agent uses of the kernel's shared tables: connections
    /// waiting for the proxy, connects refused past its share, events lost.
    #[serde(default)]
    pub kernel: crate::ebpf::AgentKernelUsage,
    pub policy_file: String,
    /// The agentguard CA certificate (PEM).
    pub ca_cert: String,
    /// System roots plus the agentguard CA: what agents' TLS stacks trust.
    pub ca_bundle: String,
    /// (environment variable, placeholder value) pairs `exec` sets, so SDKs
    /// that insist on a key start; the proxy swaps in the real secret.
    pub placeholders: Vec<(String, String)>,
    /// Set while the agent is revoked (`agentguard revoke`).
    #[serde(default)]
    pub revoked: Option<crate::revoke::Revoked>,
    /// The containers attached to the agent by `[agent.containers]`.
    #[serde(default)]
    pub containers: Vec<crate::containers::ContainerView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub pid: u32,
    pub proxy_port: u16,
    pub policy_version: String,
    pub last_reload: crate::live::ReloadStatus,
    pub agents: Vec<AgentView>,
    pub connections_total: u64,
    pub requests_total: u64,
    /// Queue depth, events written, last signed checkpoint.
    #[serde(default)]
    pub audit: Option<crate::audit::AuditStatus>,
    /// Kernel event records dropped because the ring buffer was full (the
    /// refusals themselves still happened). Should stay 0.
    #[serde(default)]
    pub kernel_events_lost: u64,
    /// Whether agents' Unix-socket connects and sends are checked against
    /// their policy's `unix_sockets` (cgroup/connect_unix, sendmsg_unix). A
    /// daemon that cannot do so refuses to start, so a running one reports
    /// true.
    #[serde(default)]
    pub unix_sockets_guarded: bool,
    /// The web view's URL, when `--web-listen` is set.
    #[serde(default)]
    pub web: Option<String>,
    /// Whether agents are kept from every process outside their cgroup
    /// (lsm_cgroup/ptrace_access_check): false only on a kernel without
    /// the BPF LSM, started with `--allow-unguarded-processes`.
    #[serde(default)]
    pub processes_guarded: bool,
    /// The CAs agents are to trust: the one that signs, and a staged next
    /// one during a rotation.
    #[serde(default)]
    pub ca: Vec<crate::ca::CaInfo>,
}
