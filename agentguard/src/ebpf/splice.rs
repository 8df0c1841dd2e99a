//! Splicing a passthrough connection's two sockets in the kernel: the
//! stream verdict program `agentguard_splice` (agentguard-ebpf's
//! `splice.rs`) attached to the `SPLICE` sockhash sends what either socket
//! receives out of the other, so the proxy copies no byte.
//!
//! [`Splicer::splice`] puts a pair in the map; the [`Spliced`] it returns
//! takes them out again when dropped (the kernel also drops a socket from
//! the map when it closes). [`Spliced::sent`] says how many bytes the
//! kernel has handed from one socket to the other: the relay compares it
//! with what the other socket has sent before passing a half-close on.
//!
//! The agent's sends can skip the hop to the proxy altogether: with the
//! splice on, sockops puts each agent socket that reaches the proxy in
//! `AGENT_SOCKETS`, whose message program `agentguard_splice_send` pushes
//! what the agent sends straight into the upstream socket once the proxy
//! has opened that way ([`Spliced::open_direct`]), and counts what it sends
//! the usual way until then ([`Spliced::passed`]). Connections the proxy
//! handles itself leave `AGENT_SOCKETS` at once ([`Splicer::untrack`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd},
    sync::{Arc, Mutex},
};

use agentguard_common::PeerKey;
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, SockHash},
    programs::{SkMsg, SkSkb},
};
use nix::libc;
use thiserror::Error;

/// Which relay passthrough connections take (`--passthrough-relay`, the
/// config key `passthrough_relay`, `AGENTGUARD_PASSTHROUGH_RELAY`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PassthroughRelay {
    /// Copy through the proxy's own buffers. The default: on the 6.18
    /// kernel measured (docs/benchmarks.md) the splice was slower, since
    /// every redirected segment waits for the psock's backlog worker.
    #[default]
    Userspace,
    /// Splice in the kernel where it allows (user space where it refuses).
    Kernel,
}

const PROGRAM: &str = "agentguard_splice";
const SEND_PROGRAM: &str = "agentguard_splice_send";
const SOCKETS_MAP: &str = "SPLICE";
const SENT_MAP: &str = "SPLICE_BYTES";
const AGENT_SOCKETS_MAP: &str = "AGENT_SOCKETS";
const UPSTREAMS_MAP: &str = "SPLICE_UPSTREAM";
const PASSED_MAP: &str = "SPLICE_PASSED";
const GATE_MAP: &str = "SPLICE_GATE";
const ON_MAP: &str = "SPLICE_ON";

/// `SO_COOKIE` (asm-generic/socket.h; the libc crate does not name it).
const SO_COOKIE: libc::c_int = 57;

#[derive(Debug, Error)]
pub enum SpliceError {
    #[error("relaying in user space (--passthrough-relay userspace, the default)")]
    Off,
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("socket cookie: {0}")]
    Cookie(#[source] io::Error),
    #[error("socket counters: {0}")]
    Counters(#[source] io::Error),
    #[error("the kernel refused the socket pair: {0}")]
    Insert(#[source] aya::maps::MapError),
}

/// The sockhashes and byte counters, with the verdict and message
/// programs attached.
pub struct Splicer {
    // SockHash::insert and HashMap::insert need &mut; each is one syscall.
    sockets: Mutex<SockHash<MapData, u64>>,
    sent: Mutex<HashMap<MapData, u64, u64>>,
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
fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, SpliceError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    ebpf.take_map(name)
        .ok_or(SpliceError::MissingMap(name))?
        .try_into()
        .map_err(|source| SpliceError::Map { name, source })
}

impl Splicer {
    /// With `relay` [`PassthroughRelay::Kernel`]: takes the maps out of
    /// `ebpf`, loads the verdict program and attaches it to the sockhash.
    /// Any failure leaves passthrough to the user-space relay; the caller
    /// says so.
    pub(super) fn attach(ebpf: &mut Ebpf, relay: PassthroughRelay) -> Result<Self, SpliceError> {
        if relay == PassthroughRelay::Userspace {
            return Err(SpliceError::Off);
        }
        let sockets: SockHash<MapData, u64> = take_map(ebpf, SOCKETS_MAP)?;
        let sent: HashMap<MapData, u64, u64> = take_map(ebpf, SENT_MAP)?;
        let agent_sockets: SockHash<MapData, PeerKey> = take_map(ebpf, AGENT_SOCKETS_MAP)?;
        let upstreams: SockHash<MapData, PeerKey> = take_map(ebpf, UPSTREAMS_MAP)?;
        let passed: HashMap<MapData, PeerKey, u64> = take_map(ebpf, PASSED_MAP)?;
        let gate: HashMap<MapData, PeerKey, u64> = take_map(ebpf, GATE_MAP)?;
        let mut on: Array<MapData, u32> = take_map(ebpf, ON_MAP)?;
        let program_error = |name| move |source| SpliceError::Program { name, source };
        let verdict: &mut SkSkb = ebpf
            .program_mut(PROGRAM)
            .ok_or(SpliceError::MissingProgram(PROGRAM))?
            .try_into()
            .map_err(program_error(PROGRAM))?;
        verdict.load().map_err(program_error(PROGRAM))?;
        // Before any socket enters the map: a socket inserted without a
        // verdict program would simply keep its data for the proxy.
        verdict
            .attach(sockets.fd())
            .map_err(program_error(PROGRAM))?;
        let send: &mut SkMsg = ebpf
            .program_mut(SEND_PROGRAM)
            .ok_or(SpliceError::MissingProgram(SEND_PROGRAM))?
            .try_into()
            .map_err(program_error(SEND_PROGRAM))?;
        send.load().map_err(program_error(SEND_PROGRAM))?;
        // A socket takes the map's programs when it goes in: attached
        // before sockops is told to put agent sockets there.
        send.attach(agent_sockets.fd())
            .map_err(program_error(SEND_PROGRAM))?;
        on.set(0, 1, 0).map_err(|source| SpliceError::Map {
            name: ON_MAP,
            source,
        })?;
        Ok(Self {
            sockets: Mutex::new(sockets),
            sent: Mutex::new(sent),
            agent_sockets: Mutex::new(agent_sockets),
            upstreams: Mutex::new(upstreams),
            passed: Mutex::new(passed),
            gate: Mutex::new(gate),
        })
    }

    /// Takes the agent socket under `agent` out of `AGENT_SOCKETS`: its
    /// connection is not spliced, and its sends need not pass the message
    /// program. Missing is fine (sockops left it out, or it closed).
    pub fn untrack(&self, agent: &PeerKey) {
        let _ = lock(&self.agent_sockets).remove(agent);
        let _ = lock(&self.passed).remove(agent);
    }

    /// Splices `a` and `b`: from now on what either receives is sent out
    /// of the other by the kernel. Data already queued on either moves at
    /// the next arrival, or at [`kick`]. `agent` is the key of the agent
    /// socket behind `a`: its sends may later go straight out of `b`
    /// ([`Spliced::open_direct`]). On error nothing stays in the maps.
    pub fn splice(
        self: &Arc<Self>,
        a: BorrowedFd,
        b: BorrowedFd,
        agent: PeerKey,
    ) -> Result<Spliced, SpliceError> {
        let cookies = [
            cookie(a).map_err(SpliceError::Cookie)?,
            cookie(b).map_err(SpliceError::Cookie)?,
        ];
        let spliced = Spliced {
            splicer: self.clone(),
            cookies,
            agent,
        };
        // Shut until the gate is written: the agent's sends go on the
        // usual way.
        lock(&self.upstreams)
            .insert(agent, b, 0)
            .map_err(SpliceError::Insert)?;
        {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            for c in cookies {
                sent.insert(c, 0, 0).map_err(SpliceError::Insert)?;
            }
        }
        let mut sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        // Each socket under its partner's cookie: the program looks its own
        // cookie up and finds where to send.
        sockets
            .insert(cookies[1], a, 0)
            .map_err(SpliceError::Insert)?;
        sockets
            .insert(cookies[0], b, 0)
            .map_err(SpliceError::Insert)?;
        Ok(spliced)
    }
}

/// A spliced pair; dropping it takes both out of the maps.
pub struct Spliced {
    splicer: Arc<Splicer>,
    /// The cookies of `a` and `b`, in [`Splicer::splice`]'s order.
    cookies: [u64; 2],
    /// The agent socket behind `a`.
    agent: PeerKey,
}

impl Spliced {
    /// Bytes the kernel has handed from socket `from` (0 for `a`, 1 for
    /// `b`) to its partner.
    pub fn sent(&self, from: usize) -> u64 {
        self.splicer
            .sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.cookies[from], 0)
            .unwrap_or(0)
    }

    /// Bytes the agent's socket has sent the usual way: to `a`, by TCP.
    /// Only the kernel adds to it, and only while the direct way is shut.
    pub fn passed(&self) -> u64 {
        lock(&self.splicer.passed).get(&self.agent, 0).unwrap_or(0)
    }

    /// Opens the agent's direct way to `b` for as long as [`Self::passed`]
    /// stays at `passed`. The caller has seen every byte counted there
    /// enter `b`; a send the usual way since (or still to come, if this
    /// races one) leaves the way shut, so nothing overtakes it.
    pub fn open_direct(&self, passed: u64) -> Result<(), SpliceError> {
        lock(&self.splicer.gate)
            .insert(self.agent, passed, 0)
            .map_err(SpliceError::Insert)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Spliced {
    fn drop(&mut self) {
        // Missing entries are fine: a closed socket left the map already,
        // and a failed splice() may have inserted only some.
        let _ = lock(&self.splicer.upstreams).remove(&self.agent);
        let _ = lock(&self.splicer.gate).remove(&self.agent);
        self.splicer.untrack(&self.agent);
        {
            let mut sockets = self
                .splicer
                .sockets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for c in self.cookies {
                let _ = sockets.remove(&c);
            }
        }
        let mut sent = self.splicer.sent.lock().unwrap_or_else(|p| p.into_inner());
        for c in self.cookies {
            let _ = sent.remove(&c);
        }
    }
}

/// The socket's cookie: the kernel's id for it, which the verdict program
/// also reads.
fn cookie(fd: BorrowedFd) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: value and len are valid for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Makes the kernel run the verdict over what already sits in `fd`'s
/// receive queue (the ClientHello the proxy peeked at, which arrived before
/// the socket was spliced). Setting SO_RCVLOWAT signals "data ready"
/// (tcp_set_rcvlowat → tcp_data_ready), which for a spliced socket is the
/// verdict's own reader.
pub fn kick(fd: impl AsFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: one is a valid c_int for the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
