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

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd},
    sync::{Arc, Mutex},
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockHash},
    programs::SkSkb,
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
const SOCKETS_MAP: &str = "SPLICE";
const SENT_MAP: &str = "SPLICE_BYTES";

/// `SO_COOKIE` (asm-generic/socket.h; the libc crate does not name it).
const SO_COOKIE: libc::c_int = 57;

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
    #[error("socket cookie: {0}")]
    Cookie(#[source] io::Error),
    #[error("socket counters: {0}")]
    Counters(#[source] io::Error),
    #[error("the kernel refused the socket pair: {0}")]
    Insert(#[source] aya::maps::MapError),
}

/// The sockhash and its byte counters, with the verdict program attached.
pub struct Splicer {
    // SockHash::insert and HashMap::insert need &mut; each is one syscall.
    sockets: Mutex<SockHash<MapData, u64>>,
    sent: Mutex<HashMap<MapData, u64, u64>>,
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
        let sockets: SockHash<MapData, u64> = ebpf
            .take_map(SOCKETS_MAP)
            .ok_or(SpliceError::MissingMap(SOCKETS_MAP))?
            .try_into()
            .map_err(|source| SpliceError::Map {
                name: SOCKETS_MAP,
                source,
            })?;
        let sent: HashMap<MapData, u64, u64> = ebpf
            .take_map(SENT_MAP)
            .ok_or(SpliceError::MissingMap(SENT_MAP))?
            .try_into()
            .map_err(|source| SpliceError::Map {
                name: SENT_MAP,
                source,
            })?;
        let program: &mut SkSkb = ebpf
            .program_mut(PROGRAM)
            .ok_or(SpliceError::MissingProgram)?
            .try_into()?;
        program.load()?;
        // Before any socket enters the map: a socket inserted without a
        // verdict program would simply keep its data for the proxy.
        program.attach(sockets.fd())?;
        Ok(Self {
            sockets: Mutex::new(sockets),
            sent: Mutex::new(sent),
        })
    }

    /// Splices `a` and `b`: from now on what either receives is sent out
    /// of the other by the kernel. Data already queued on either moves at
    /// the next arrival, or at [`kick`]. On error nothing stays in the maps.
    pub fn splice(self: &Arc<Self>, a: BorrowedFd, b: BorrowedFd) -> Result<Spliced, SpliceError> {
        let cookies = [
            cookie(a).map_err(SpliceError::Cookie)?,
            cookie(b).map_err(SpliceError::Cookie)?,
        ];
        let spliced = Spliced {
            splicer: self.clone(),
            cookies,
        };
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
}

impl Drop for Spliced {
    fn drop(&mut self) {
        // Missing entries are fine: a closed socket left the map already,
        // and a failed splice() may have inserted only some.
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
