//! The local proxy that every redirected connection reaches.
//!
//! In data-flow order: `listener` binds 127.0.0.1 and ::1 and accepts;
//! `connection` attributes each connection through the kernel's record,
//! has `sniff` read its first message and `decide` plan it (intercept, pass
//! through or refuse) before any handshake, records the outcome once and
//! carries the plan out; `http` serves an intercepted connection, planning
//! each request before forwarding it through `upstream`; `relay` carries
//! passthrough bytes. Every refusal is a type in `refusal`, written for
//! the agent by `respond`. `limits` bounds what one agent may hold and for
//! how long.

mod connection;
pub(crate) mod decide;
pub mod direct;
pub(crate) mod http;
pub mod limits;
mod listener;
mod refusal;
mod relay;
mod respond;
pub(crate) mod sniff;
pub(crate) mod tcp_state;
pub mod upstream;

use std::sync::Arc;

pub use connection::record_forgotten;
pub use listener::{BindError, Listeners, accept_loop, bind_std};
use tokio_rustls::TlsAcceptor;

use crate::{
    audit::AuditSink,
    connlog::{ConnLog, RequestLog},
    ebpf::PeerRecords,
    live::Live,
    metrics::Metrics,
    proxy::upstream::Upstreams,
};

/// What every connection task needs, shared.
pub struct ProxyContext {
    pub peers: PeerRecords,
    /// Splices passthrough connections in the kernel; `None`: relay them
    /// in user space.
    pub splice: Option<Arc<crate::ebpf::Splicer>>,
    /// Policy, agents and credentials in force; swapped on reload.
    pub live: Arc<Live>,
    /// The system of record: every connection and request decision.
    pub audit: AuditSink,
    pub metrics: Arc<Metrics>,
    /// Recent decisions, in memory, for `agentguard connections` and
    /// `requests`.
    pub log: Arc<ConnLog>,
    pub requests: Arc<RequestLog>,
    /// Terminates agents' TLS with leaves minted by the local CA.
    pub tls: TlsAcceptor,
    pub upstreams: Arc<Upstreams>,
    /// The per-agent resolvers, whose answers bind names to addresses where
    /// no certificate can (passthrough, plain HTTP).
    pub resolvers: Arc<crate::dns::Resolvers>,
    /// The proxy's own listen port: a record pointing there would make the
    /// proxy dial itself.
    pub proxy_port: u16,
    /// Mints request-bound tokens for `jwt` credentials.
    pub minter: Arc<crate::token::Minter>,
    /// Whom agents started by `exec --on-behalf-of` act for.
    pub on_behalf_of: Arc<crate::token::OnBehalfOf>,
    /// Request bodies of JWT-bound tools are read whole up to this size.
    pub jwt_max_body: usize,
    /// Revoked agents, and the signal that closes their connections.
    pub revocations: Arc<crate::revoke::Revocations>,
    /// Requests held for a person's approval.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Time limits, and what each agent may hold at once.
    pub limits: Arc<limits::Limits>,
    /// Counts calls against tools' rates; survives policy reloads.
    pub limiter: Arc<crate::policy::RateLimiter>,
}
