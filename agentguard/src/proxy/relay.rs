//! Carrying bytes between the agent and its original destination.
//!
//! [`prepare`] dials the upstream and, with `--passthrough-relay kernel`
//! where the kernel allows, names the upstream socket as where the agent's
//! own sends go once [`Relay::run`] opens that way ([`kernel`]); the
//! upstream's answers are copied by the proxy. Otherwise (the default, the
//! map full, a kernel without sockmap) [`Relay::run`] copies both ways
//! through user-space buffers. Which of the two a connection took is
//! [`Relay::path`], recorded in its audit event. Either way a connection on
//! which no byte moves for the idle limit is closed ([`idle`]).

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, RawFd},
    sync::Arc,
    time::Duration,
};

use agentguard_common::PeerKey;
use thiserror::Error;

use tokio::{
    io::copy_bidirectional,
    net::TcpStream,
    time::{Instant, timeout},
};
use tracing::{info, warn};

use super::limits::fds;
use crate::{
    config::UPSTREAM_CONNECT_TIMEOUT_SECS,
    ebpf::{Spliced, Splicer},
    metrics::Metrics,
    netns::Dial,
};

mod idle;
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
    /// The agent's sends go straight into the upstream socket in the
    /// kernel (after what it sent before the way opened); the upstream's
    /// answers are copied by the proxy.
    Kernel,
    /// Copied through the proxy's own buffers.
    Userspace,
    /// Not through the proxy at all: the agent connected to the upstream
    /// itself, its first send checked in the kernel (`super::direct`).
    Direct,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Kernel => "kernel",
            Path::Userspace => "userspace",
            Path::Direct => "direct",
        }
    }
}

/// A passthrough connection with its upstream dialled, ready to run.
pub struct Relay {
    inbound: TcpStream,
    upstream: TcpStream,
    spliced: Option<Spliced>,
    /// The upstream socket's place in the proxy's descriptor budget.
    _socket: fds::Socket,
}

/// Dials `dst` (from the namespace `dial` names) and, if `splicer` is
/// given, names the upstream socket as where the agent's socket (`agent`,
/// its key in the kernel's maps) may send straight to ([`kernel`]).
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
    let spliced = splicer.and_then(|s| match kernel::splice(s, &upstream, agent) {
        Ok(spliced) => Some(spliced),
        Err(e) => {
            warn!(error = %e, "passthrough relayed in user space: the kernel refused the splice");
            s.untrack(&agent);
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
    /// is passed on), either fails, or no byte moved either way for
    /// `idle_limit`. Dropping the future closes both sockets, wherever it
    /// is.
    pub async fn run(self, metrics: &Metrics, idle_limit: Option<Duration>) {
        let start = Instant::now();
        let relay = self.path().as_str();
        let Self {
            mut inbound,
            mut upstream,
            spliced,
            _socket,
        } = self;
        // The watch reads the upstream socket by its descriptor, since the
        // copy holds the socket; `upstream` outlives both futures, so the
        // descriptor stays open (and stays this socket's) while they run.
        let upstream_fd: RawFd = upstream.as_raw_fd();
        let copied = async {
            match spliced {
                Some(spliced) => kernel::run(&inbound, &upstream, &spliced, metrics).await,
                None => copy_bidirectional(&mut inbound, &mut upstream).await,
            }
        };
        let ended = match idle_limit {
            None => Ended::Copied(copied.await),
            Some(limit) => tokio::select! {
                copied = copied => Ended::Copied(copied),
                quiet = idle::until_idle(upstream_fd, limit) => Ended::Idle(quiet),
            },
        };
        let dur = start.elapsed();
        match ended {
            Ended::Copied(Ok((up, down))) => {
                info!(
                    relay,
                    bytes_up = up,
                    bytes_down = down,
                    ?dur,
                    "connection closed"
                )
            }
            Ended::Copied(Err(e)) => {
                info!(relay, error = %e, ?dur, "connection ended with error")
            }
            Ended::Idle(Ok(quiet)) => {
                metrics.observe_passthrough_idle_closed();
                info!(
                    relay,
                    ?quiet,
                    ?dur,
                    "connection closed: no byte moved either way for the passthrough idle limit"
                )
            }
            // Fail closed: a limit that cannot be checked is not waived.
            Ended::Idle(Err(e)) => {
                warn!(relay, error = %e, ?dur, "connection closed: its idle time could not be read")
            }
        }
    }
}

/// How [`Relay::run`] ended.
enum Ended {
    /// The copy ended: the bytes moved up and down, or why it failed.
    Copied(io::Result<(u64, u64)>),
    /// The idle limit was reached (how long nothing had moved), or the
    /// idle time could not be read.
    Idle(io::Result<Duration>),
}
