//! Carrying bytes between the agent and its original destination.
//!
//! [`prepare`] dials the upstream and, where the kernel allows, splices the
//! two sockets ([`kernel`]): the kernel then moves every byte and the
//! proxy only watches for the ends. Where it does not (splicing off, the
//! map full, a kernel without sockmap), [`Relay::run`] copies through a
//! user-space buffer as before. Which of the two a connection took is
//! [`Relay::path`], recorded in its audit event.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use agentguard_common::PeerKey;
use thiserror::Error;

use tokio::{
    io::copy_bidirectional,
    net::TcpStream,
    time::{Instant, timeout},
};
use tracing::{info, warn};

use super::limits::fds;
use crate::{config::UPSTREAM_CONNECT_TIMEOUT_SECS, ebpf::Splicer, metrics::Metrics, netns::Dial};

mod kernel;

/// Why a passthrough connection's upstream was not reached; said in the
/// connection's audit event.
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("no socket left in the proxy's descriptor budget")]
    NoSocket,
    #[error("upstream connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("upstream connect timed out after {UPSTREAM_CONNECT_TIMEOUT_SECS} s")]
    Timeout,
}

/// Which way a passthrough connection's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Spliced in the kernel: no byte passes through the proxy.
    Kernel,
    /// Copied through the proxy's own buffers.
    Userspace,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Kernel => "kernel",
            Path::Userspace => "userspace",
        }
    }
}

/// A passthrough connection with its upstream dialled, ready to run.
pub struct Relay {
    inbound: TcpStream,
    upstream: TcpStream,
    spliced: Option<kernel::Pair>,
    /// The upstream socket's place in the proxy's descriptor budget.
    _socket: fds::Socket,
}

/// Dials `dst` (from the namespace `dial` names) and, if `splicer` is
/// given, splices the agent's socket to it; `agent` is that socket's key
/// in the kernel's maps, for its sends to go straight out (see
/// [`kernel::splice`]).
/// An error when the upstream cannot be reached: the agent's connection is
/// then closed. The daemon's own sockets are outside every
/// guarded cgroup (and the kernel skips its tgid), so this connect goes out
/// directly.
pub async fn prepare(
    inbound: TcpStream,
    dst: SocketAddr,
    dial: &Dial,
    splicer: Option<&Arc<Splicer>>,
    agent: PeerKey,
) -> Result<Relay, RelayError> {
    // The upstream socket counts against the proxy's descriptor budget too.
    let socket = fds::take().ok_or(RelayError::NoSocket)?;
    let connect = timeout(
        Duration::from_secs(UPSTREAM_CONNECT_TIMEOUT_SECS),
        dial.connect(dst),
    )
    .await;
    let upstream = connect
        .map_err(|_| RelayError::Timeout)?
        .map_err(RelayError::Connect)?;
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let spliced = splicer.and_then(|s| match kernel::splice(s, &inbound, &upstream, agent) {
        Ok(spliced) => Some(spliced),
        Err(e) => {
            warn!(error = %e, "passthrough relayed in user space: the kernel refused the splice");
            None
        }
    });
    Ok(Relay {
        inbound,
        upstream,
        spliced,
        _socket: socket,
    })
}

impl Relay {
    pub fn path(&self) -> Path {
        if self.spliced.is_some() {
            Path::Kernel
        } else {
            Path::Userspace
        }
    }

    /// Carries bytes both ways until both sides have closed (a half-close
    /// is passed on), or either fails. Dropping the future closes both
    /// sockets, wherever it is.
    pub async fn run(self, metrics: &Metrics) {
        let start = Instant::now();
        let relay = self.path().as_str();
        let Self {
            mut inbound,
            mut upstream,
            spliced,
            _socket,
        } = self;
        let result = match spliced {
            Some(spliced) => kernel::run(&inbound, &upstream, &spliced, metrics).await,
            None => copy_bidirectional(&mut inbound, &mut upstream).await,
        };
        match result {
            Ok((up, down)) => {
                info!(relay, bytes_up = up, bytes_down = down, dur = ?start.elapsed(), "connection closed")
            }
            Err(e) => {
                info!(relay, error = %e, dur = ?start.elapsed(), "connection ended with error")
            }
        }
    }
}
