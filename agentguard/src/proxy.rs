//! The local proxy that every redirected connection reaches.
//!
//! `listener` binds 127.0.0.1 and ::1 and attributes each accepted connection
//! through the kernel's record; `relay` carries the bytes to the original
//! destination.

mod listener;
mod relay;

use std::sync::Arc;

pub use listener::{BindError, Listeners};

use crate::{connlog::ConnLog, ebpf::PeerRecords, identity::AgentTable};

/// What every connection task needs, shared.
pub struct ProxyContext {
    pub peers: PeerRecords,
    pub agents: Arc<AgentTable>,
    pub log: Arc<ConnLog>,
    pub policy_version: String,
    /// The proxy's own listen port: a record pointing there would make the
    /// proxy dial itself.
    pub proxy_port: u16,
}
