//! Passthrough with the agent's sends in the kernel: the message program
//! `agentguard_splice_send` (agentguard-ebpf's `splice.rs`) attached to
//! `AGENT_SOCKETS`, where sockops puts each agent socket that reaches the
//! proxy while this is on. Until the proxy opens the direct way the agent's
//! sends go to the proxy's socket as usual, counted
//! ([`Spliced::passed`]); once it has ([`Spliced::open_direct`]), they go
//! straight into the upstream socket named in `SPLICE_UPSTREAM`, in the
//! agent's own `sendmsg`. The upstream's answers are copied by the proxy
//! (relay/kernel.rs says why).
//!
//! [`Splicer::splice`] names a connection's upstream socket; the
//! [`Spliced`] it returns takes the connection's gate and count out when
//! dropped (the kernel drops a socket from a sockhash when it closes).
//! Connections the proxy handles otherwise leave `AGENT_SOCKETS` once
//! decided ([`Splicer::untrack`]).

use std::{
    os::fd::BorrowedFd,
    sync::{Mutex, MutexGuard},
};

use agentguard_common::PeerKey;
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, SockHash},
    programs::SkMsg,
};
use thiserror::Error;

use super::map_failure::MapFailure;

/// Which relay passthrough connections take (`--passthrough-relay`, the
/// config key `passthrough_relay`, `AGENTGUARD_PASSTHROUGH_RELAY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PassthroughRelay {
    /// Copy both ways through the proxy's own buffers. The default: it
    /// puts nothing of agentguard's on the agent's sockets.
    #[default]
    Userspace,
    /// The agent's sends go straight into the upstream socket in the
    /// kernel once its first flight is through; the upstream's answers are
    /// copied by the proxy. User space only where the kernel refuses.
    /// Known limit (README, Passthrough): a non-blocking agent that fills
    /// the upstream socket's send buffer gets `EAGAIN` with no writability
    /// event to come back on.
    Kernel,
    /// Connections to an address agentguard's resolver gave the agent for
    /// a passthrough name go straight to it, not through the proxy; the
    /// kernel checks the first send's ClientHello names that host, tracks
    /// the connection, and reports it for the audit record (`direct.rs`).
    /// Anything else that reaches the proxy is relayed in user space.
    Direct,
}

const PROGRAM: &str = "agentguard_splice_send";
const AGENT_SOCKETS_MAP: &str = "AGENT_SOCKETS";
const UPSTREAMS_MAP: &str = "SPLICE_UPSTREAM";
const PASSED_MAP: &str = "SPLICE_PASSED";
const GATE_MAP: &str = "SPLICE_GATE";
const ON_MAP: &str = "SPLICE_ON";

#[derive(Debug, Error)]
pub enum SpliceError {
    #[error("relaying in user space (--passthrough-relay userspace, the default)")]
    Off,
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {PROGRAM} is missing from the object")]
    MissingProgram,
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF program {PROGRAM}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("the kernel refused the upstream socket: {0}")]
    Insert(#[source] aya::maps::MapError),
    #[error("the agent's socket is not in the kernel's maps (full, or closed already)")]
    NotTracked,
}

/// The maps, with the message program attached.
pub struct Splicer {
    // Each insert or remove is one syscall and needs &mut.
    /// Agent sockets sockops put in, by [`PeerKey`]; only removed here.
    agent_sockets: Mutex<SockHash<MapData, PeerKey>>,
    /// Agent socket's key → the upstream socket its sends go out of.
    upstreams: Mutex<SockHash<MapData, PeerKey>>,
    /// Agent socket's key → bytes it sent the usual way (the kernel's).
    passed: Mutex<HashMap<MapData, PeerKey, u64>>,
    /// Agent socket's key → the count at which its direct way is open.
    gate: Mutex<HashMap<MapData, PeerKey, u64>>,
}

/// Takes map `name` out of `ebpf` as a `T`.
impl MapFailure for SpliceError {
    fn missing(name: &'static str) -> Self {
        Self::MissingMap(name)
    }

    fn failed(name: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map { name, source }
    }
}

impl Splicer {
    /// With `relay` [`PassthroughRelay::Kernel`]: takes the maps out of
    /// `ebpf`, loads the message program, attaches it to `AGENT_SOCKETS`
    /// and only then tells sockops to put agent sockets there. Any failure
    /// leaves passthrough to the user-space relay; the caller says so.
    pub(super) fn attach(ebpf: &mut Ebpf, relay: PassthroughRelay) -> Result<Self, SpliceError> {
        if relay != PassthroughRelay::Kernel {
            return Err(SpliceError::Off);
        }
        let agent_sockets: SockHash<MapData, PeerKey> =
            SpliceError::take_map(ebpf, AGENT_SOCKETS_MAP)?;
        let upstreams: SockHash<MapData, PeerKey> = SpliceError::take_map(ebpf, UPSTREAMS_MAP)?;
        let passed: HashMap<MapData, PeerKey, u64> = SpliceError::take_map(ebpf, PASSED_MAP)?;
        let gate: HashMap<MapData, PeerKey, u64> = SpliceError::take_map(ebpf, GATE_MAP)?;
        let mut on: Array<MapData, u32> = SpliceError::take_map(ebpf, ON_MAP)?;
        let program: &mut SkMsg = ebpf
            .program_mut(PROGRAM)
            .ok_or(SpliceError::MissingProgram)?
            .try_into()?;
        program.load()?;
        // A socket takes the map's programs when it goes in: attached
        // before sockops is told to put agent sockets there.
        program.attach(agent_sockets.fd())?;
        on.set(0, 1, 0).map_err(|source| SpliceError::Map {
            name: ON_MAP,
            source,
        })?;
        Ok(Self {
            agent_sockets: Mutex::new(agent_sockets),
            upstreams: Mutex::new(upstreams),
            passed: Mutex::new(passed),
            gate: Mutex::new(gate),
        })
    }

    /// Names `upstream` as where the agent socket under `agent` may later
    /// send straight to ([`Spliced::open_direct`]); until then its sends go
    /// on the usual way. On error nothing stays in the maps.
    pub fn splice(
        self: &std::sync::Arc<Self>,
        upstream: BorrowedFd,
        agent: PeerKey,
    ) -> Result<Spliced, SpliceError> {
        // Sockops gives a socket its count when it tracks it; without one
        // its sends can never go the direct way.
        if lock(&self.passed).get(&agent, 0).is_err() {
            return Err(SpliceError::NotTracked);
        }
        let spliced = Spliced {
            splicer: self.clone(),
            agent,
        };
        lock(&self.upstreams)
            .insert(agent, upstream, 0)
            .map_err(SpliceError::Insert)?;
        Ok(spliced)
    }

    /// Takes the agent socket under `agent` out of `AGENT_SOCKETS`: its
    /// connection is not spliced, and its sends need not pass the message
    /// program. Missing is fine (sockops left it out, or it closed).
    pub fn untrack(&self, agent: &PeerKey) {
        let _ = lock(&self.agent_sockets).remove(agent);
        let _ = lock(&self.passed).remove(agent);
    }
}

/// A connection whose agent may send straight upstream; dropping it takes
/// its entries out of the maps.
pub struct Spliced {
    splicer: std::sync::Arc<Splicer>,
    agent: PeerKey,
}

impl Spliced {
    /// Bytes the agent's socket has sent the usual way (to the proxy's
    /// socket). Only the kernel adds to it, and only while the direct way
    /// is shut. `None` once the socket has closed (or its count was
    /// evicted): its sends then only go the usual way.
    pub fn passed(&self) -> Option<u64> {
        lock(&self.splicer.passed).get(&self.agent, 0).ok()
    }

    /// Opens the agent's direct way for as long as [`Self::passed`] stays
    /// at `passed`. The caller has seen every byte counted there enter the
    /// upstream socket; a send the usual way since (or racing this) leaves
    /// the way shut, so nothing overtakes it.
    pub fn open_direct(&self, passed: u64) -> Result<(), SpliceError> {
        lock(&self.splicer.gate)
            .insert(self.agent, passed, 0)
            .map_err(SpliceError::Insert)
    }

    /// Shuts the agent's direct way (if open): its sends take the usual
    /// way again, to the proxy's socket.
    pub fn shut_direct(&self) {
        let _ = lock(&self.splicer.gate).remove(&self.agent);
    }
}

impl Drop for Spliced {
    fn drop(&mut self) {
        // The gate first: the proxy's socket the agent's sends then reach
        // is being closed. The sockets leave their sockhashes by
        // themselves as they close (the proxy closes the upstream's at
        // once), so only the plain maps are cleaned.
        self.shut_direct();
        let _ = lock(&self.splicer.passed).remove(&self.agent);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
