//! The proxy's part of a spliced passthrough connection. The kernel moves
//! the bytes ([`crate::ebpf::Splicer`]); the proxy still owns both sockets
//! and does what the kernel does not: it notices when a side ends its
//! stream, passes the half-close on once every byte that came before it
//! has been sent on, and closes both when both are done or either fails.
//!
//! "Sent on" is measured, not guessed: the verdict program counts the
//! bytes it hands from one socket to the other, and a socket's own
//! counters (TCP_INFO's bytes acked plus what is still in its send queue)
//! say how many it has taken to send. The kernel hands segments over
//! through a work queue, so a FIN passed on the moment it arrives could
//! overtake the data ahead of it.

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _},
    sync::Arc,
    time::Duration,
};

use agentguard_common::PeerKey;
use nix::{libc, sys::socket::Shutdown};
use thiserror::Error;
use tokio::{
    io::Interest,
    net::TcpStream,
    time::{Instant, sleep},
};

use crate::{
    ebpf::{SpliceError, Spliced, Splicer, kick},
    metrics::Metrics,
};

/// How long the proxy keeps looking for a moment to open the agent's
/// direct way (everything it sent so far arrived upstream). A connection
/// that never offers one, such as a client streaming from its first byte,
/// stays spliced through the proxy's socket, which is just as correct.
const DIRECT_WINDOW: Duration = Duration::from_secs(2);

/// Longest a half-close waits for the data ahead of it to leave while none
/// moves: the receiving side has stopped reading. Then the connection is
/// closed rather than held for ever.
const DRAIN_STALL: Duration = Duration::from_secs(30);

/// How often a half-close looks whether the data ahead of it has left.
/// Only while a side is closing; a transfer itself is never polled.
const DRAIN_POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Error)]
enum CarryError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0} bytes still queued in the kernel for {1:?} with none moving")]
    Stalled(u64, Duration),
    #[error("the receiving side closed with {0} bytes still queued for it")]
    PeerGone(u64),
}

/// A spliced pair, with what each socket had taken to send before it was
/// spliced (nothing but the handshake's accounting): the baseline of
/// [`queued_or_sent`].
pub struct Pair {
    spliced: Spliced,
    base: [u64; 2],
}

/// Splices the agent's socket to the upstream's. The sockets' send
/// counters are read first, so that only what the kernel sends from here
/// on is compared with what it handed over.
///
/// `agent`: the key of the agent's own socket (the far end of `inbound`),
/// whose sends [`run`] later lets go straight out of `upstream`.
pub fn splice(
    splicer: &Arc<Splicer>,
    inbound: &TcpStream,
    upstream: &TcpStream,
    agent: PeerKey,
) -> Result<Pair, SpliceError> {
    for socket in [inbound, upstream] {
        untouched(socket).map_err(SpliceError::Counters)?;
    }
    let base = [
        queued_or_sent(inbound).map_err(SpliceError::Counters)?,
        queued_or_sent(upstream).map_err(SpliceError::Counters)?,
    ];
    let spliced = splicer.splice(inbound.as_fd(), upstream.as_fd(), agent)?;
    Ok(Pair { spliced, base })
}

/// Runs a spliced pair to its end; returns the bytes moved up (agent to
/// upstream) and down.
pub async fn run(
    inbound: &TcpStream,
    upstream: &TcpStream,
    pair: &Pair,
    metrics: &Metrics,
) -> io::Result<(u64, u64)> {
    // What arrived before the splice (the peeked ClientHello) moves now.
    kick(inbound)?;
    kick(upstream)?;
    let up = async {
        carry(inbound, upstream, pair.base[1], || pair.spliced.sent(0))
            .await
            .map_err(|e| io::Error::other(format!("agent to upstream: {e}")))
    };
    let down = async {
        carry(upstream, inbound, pair.base[0], || pair.spliced.sent(1))
            .await
            .map_err(|e| io::Error::other(format!("upstream to agent: {e}")))
    };
    let both = async { tokio::try_join!(up, down) };
    tokio::pin!(both);
    // The direct way is looked for beside the transfer, never waited for.
    tokio::select! {
        ends = &mut both => return ends,
        opened = open_direct(upstream, pair) => if opened {
            metrics.observe_passthrough_direct();
        }
    }
    let (up, down) = both.await?;
    // What entered the upstream socket beyond what the verdict handed it
    // came the direct way.
    metrics.observe_passthrough_direct_bytes(up.saturating_sub(pair.spliced.sent(0)));
    Ok((up, down))
}

/// Opens the agent's direct way to the upstream socket at the first moment
/// everything it sent the usual way (to `inbound`) has entered `upstream`,
/// so that a byte sent directly can never overtake one sent before it.
/// Looks with growing pauses for [`DIRECT_WINDOW`]. Failing to open it only
/// leaves the connection on the usual way. Says whether it opened.
async fn open_direct(upstream: &TcpStream, pair: &Pair) -> bool {
    let start = Instant::now();
    let mut pause = DRAIN_POLL;
    while start.elapsed() < DIRECT_WINDOW {
        let passed = pair.spliced.passed();
        let handed = pair.spliced.sent(0);
        let Ok(entered) = queued_or_sent(upstream) else {
            return false;
        };
        if handed == passed && entered.saturating_sub(pair.base[1]) >= handed {
            if let Err(e) = pair.spliced.open_direct(passed) {
                tracing::debug!(error = %e, "agent's direct way to the upstream not opened");
                return false;
            }
            // A send the usual way between the count and the gate keeps
            // the gate shut: then look again.
            if pair.spliced.passed() == passed {
                tracing::debug!(bytes = passed, "agent's sends go straight to the upstream");
                return true;
            }
        }
        sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(64));
    }
    false
}

/// Waits for `from` to end its stream, then for what the kernel handed
/// from it to have entered `to`'s send queue, then half-closes `to`.
/// An error on either ends the connection (the caller drops both).
async fn carry(
    from: &TcpStream,
    to: &TcpStream,
    to_base: u64,
    handed: impl Fn() -> u64,
) -> Result<u64, CarryError> {
    loop {
        let ready = from.ready(Interest::READABLE).await?;
        if ready.is_read_closed() {
            break;
        }
        // Woken by data the verdict has already taken: forget this
        // readiness so the next wait is for the next event.
        let _ = from.try_io(Interest::READABLE, || {
            Err::<(), _>(io::ErrorKind::WouldBlock.into())
        });
    }
    if let Some(e) = from.take_error()? {
        return Err(e.into());
    }
    let mut last = None;
    let mut moved = Instant::now();
    loop {
        // Every byte `from` received (all but the FIN, which TCP counts
        // as one) has been through the verdict once `handed` has reached
        // it: `from` was never read but by the verdict ([`untouched`]).
        let arrived = received(from)?.saturating_sub(1);
        let total = handed();
        let entered = queued_or_sent(to)?.saturating_sub(to_base);
        if total >= arrived && entered >= total {
            tracing::debug!(bytes = entered, "end of stream passed on");
            nix::sys::socket::shutdown(to.as_raw_fd(), Shutdown::Write).map_err(io::Error::from)?;
            // What entered `to`: the verdict's bytes and, agent to
            // upstream, those the agent sent the direct way.
            return Ok(entered);
        }
        if closed(to)? {
            return Err(CarryError::PeerGone(arrived.saturating_sub(entered)));
        }
        if last != Some((total, entered)) {
            last = Some((total, entered));
            moved = Instant::now();
        } else if moved.elapsed() > DRAIN_STALL {
            return Err(CarryError::Stalled(
                arrived.saturating_sub(entered),
                DRAIN_STALL,
            ));
        }
        sleep(DRAIN_POLL).await;
    }
}

/// Checks that nothing was ever read from `fd` (the sniffer only peeks),
/// so that the verdict will see every byte it received: what it received
/// (TCP_INFO) is all still queued (FIONREAD, which tells the queue's
/// length only until the socket is in the sockhash). A byte arriving
/// between the two reads also fails it, and the connection is then relayed
/// in user space: never a splice whose counts would not add up.
fn untouched(fd: impl AsFd) -> io::Result<()> {
    let received = received(fd.as_fd())?;
    let queued = unread(fd.as_fd())?;
    if received != queued {
        return Err(io::Error::other(format!(
            "{received} bytes received, {queued} still queued"
        )));
    }
    Ok(())
}

/// Data bytes `fd` has received, plus one for a FIN.
fn received(fd: impl AsFd) -> io::Result<u64> {
    Ok(tcp_info(fd.as_fd())?.tcpi_bytes_received)
}

/// Bytes in `fd`'s receive queue, the FIN not counted. Only before the
/// socket enters the sockhash: tcp_bpf answers FIONREAD with its own
/// queue's length, not TCP's.
fn unread(fd: impl AsFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Bytes `fd` has taken to send since it connected: acknowledged by the
/// peer, plus still in its send queue (SIOCOUTQ). Read in that order, so
/// that an acknowledgment between the two reads can only make the sum
/// smaller, never larger than the truth.
fn queued_or_sent(fd: impl AsFd) -> io::Result<u64> {
    let info = tcp_info(fd.as_fd())?;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked + u64::try_from(queued).unwrap_or(0))
}

/// Whether `fd`'s connection is gone (reset, or closed both ways).
fn closed(fd: impl AsFd) -> io::Result<bool> {
    /// TCP_CLOSE in the kernel's tcp_states.h.
    const TCP_CLOSE: u8 = 7;
    Ok(tcp_info(fd.as_fd())?.tcpi_state == TCP_CLOSE)
}

fn tcp_info(fd: std::os::fd::BorrowedFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info and len are valid for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}
