//! The web view for auditors and approvers, served by the daemon on
//! `--web-listen` (off by default), over TLS only (the operator's
//! certificate, or a leaf from agentguard's CA), for the people in
//! `--web-users` (see [`users`]).
//!
//! Pages (one page, plain HTML and a little JavaScript, embedded in the
//! binary: nothing is fetched from anywhere else):
//! - events: the audit record, newest first, new events appearing live
//!   (Server-Sent Events from the store's committed stream), filtered by
//!   agent, decision, kind, tool, host, MCP tool, time and free text;
//! - event detail: identity, on-behalf-of, intent, policy version and rule,
//!   credential id, token jti, approval, and the event's place in the hash
//!   chain (its hash checked against its content, its links, the signed
//!   checkpoint that covers it);
//! - chain: the latest verification, the last signed checkpoint, a break
//!   and its first bad sequence number;
//! - agents: cgroup, mode, policy version, last reload, counts, open
//!   connections, held requests, revocation (revoke and restore here);
//! - approvals: the held requests (approve and deny here).
//!
//! Roles: `auditor` reads; `approver` also approves, denies, revokes and
//! restores. Every sign-in, failed or not, is an audit event (`login`);
//! approvals and revocations are recorded as the admin socket's are
//! (`crate::oversight`), naming the web user.
//!
//! Modules: `users` (the users file), `session` (cookies, CSRF), `limiter`
//! (sign-in rate limits), `server` (TLS, routing, authentication), `api`
//! (the JSON endpoints), `query` (filters), `live` (the event stream),
//! `chain` (verification), `assets` (the embedded page).

mod api;
mod assets;
mod chain;
mod limiter;
mod live;
mod query;
mod server;
mod session;
pub mod users;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use thiserror::Error;

pub use server::serve;
use users::Users;

use crate::{audit::AuditSink, live::Live, oversight::Oversight};

#[derive(Debug, Error)]
pub enum WebError {
    #[error(transparent)]
    Users(#[from] users::UsersError),
    #[error("--web-listen {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("web view TLS: {0}")]
    Tls(String),
}

/// `--web-*` flags, validated.
#[derive(Debug, Clone)]
pub struct WebOptions {
    pub listen: SocketAddr,
    pub users: PathBuf,
    /// The operator's certificate chain and key (PEM); without them, a leaf
    /// from agentguard's CA.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// Names (DNS or IP) the CA's leaf is for, beside `localhost` and the
    /// listen address.
    pub names: Vec<String>,
}

/// What the audit chain check reads.
#[derive(Debug, Clone)]
pub struct ChainSources {
    pub db: PathBuf,
    pub public_key: PathBuf,
    pub anchor_dir: Option<PathBuf>,
}

/// Everything the web view reads and acts on.
pub struct WebState {
    pub live: Arc<Live>,
    pub audit: AuditSink,
    pub oversight: Arc<Oversight>,
    users: Arc<Users>,
    sessions: session::Sessions,
    limiter: limiter::Limiter,
    chain: Arc<chain::ChainMonitor>,
}

impl WebState {
    pub fn new(
        users: Users,
        live: Arc<Live>,
        audit: AuditSink,
        oversight: Arc<Oversight>,
        chain: ChainSources,
    ) -> Self {
        Self {
            live,
            audit,
            oversight,
            users: Arc::new(users),
            sessions: session::Sessions::default(),
            limiter: limiter::Limiter::default(),
            chain: Arc::new(chain::ChainMonitor::new(
                chain.db,
                chain.public_key,
                chain.anchor_dir,
            )),
        }
    }
}
