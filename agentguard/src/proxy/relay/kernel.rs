//! The proxy's part of a passthrough connection whose agent sends go
//! straight upstream in the kernel ([`crate::ebpf::Splicer`]).
//!
//! Agent to upstream: the proxy copies what reaches its socket (the
//! ClientHello it peeked at, and whatever the agent sent before the direct
//! way opened). Once it has copied the first flight it compares that with
//! what the agent's socket sent the usual way (the kernel's count); when
//! they agree, every byte sent so far is in the upstream socket, and it
//! opens the direct way at that count ([`FIRST_FLIGHT`] says why only
//! then). From then on the agent's `sendmsg` pushes
//! into the upstream socket itself and only the agent's FIN still reaches
//! the proxy, which passes it on: the pushes before it were done in the
//! agent's own calls, so nothing can still be on its way.
//!
//! Upstream to agent: copied by the proxy. The kernel could redirect what
//! the upstream socket receives (a stream verdict), but a redirect to
//! another socket waits for the psock's backlog worker, a kworker; with
//! every answer a wake-up of it, that measured slower than this copy
//! (docs/benchmarks.md), and the half-close then needed byte counts from
//! both sockets.

use std::{io, os::fd::AsRawFd as _};

use agentguard_common::PeerKey;
use nix::{libc, sys::socket::Shutdown};
use tokio::net::TcpStream;

use crate::{
    ebpf::{SpliceError, Spliced, Splicer},
    metrics::Metrics,
};

/// The most the agent may have sent before the direct way opens: one TLS
/// record, its ClientHello. The way is tried once, when that first flight
/// has been copied. The kernel's count of what the agent sent the usual
/// way is only exact while none of the agent's sends failed to queue: such
/// a send leaves its verdict standing (tcp_bpf), and the agent's next send
/// then goes without one, uncounted, so a count that matches later could
/// be missing bytes still on their way. A fresh connection's first flight
/// normally fits its socket's empty buffer; a client that keeps sending
/// past it (not a TLS client waiting for the server) stays on the usual
/// way, every byte copied in order. Should uncounted bytes still turn up
/// once the way is open, the connection is cut rather than carried out of
/// order ([`Gate::arriving`]).
const FIRST_FLIGHT: u64 = 16 * 1024 + 5;

/// The buffer every copy on a worker thread reads into. A connection
/// keeps bytes of its own only while its receiver cannot take them all,
/// so an idle connection holds no buffer (measured: 64 KiB buffers per
/// direction made an idle spliced connection cost 150 KiB resident).
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SCRATCH]);
}

/// Names `upstream` as where the agent's socket (under `agent` in the
/// kernel's maps, the far end of the accepted socket) may send straight
/// to, once [`run`] opens the way.
pub fn splice(
    splicer: &std::sync::Arc<Splicer>,
    upstream: &TcpStream,
    agent: PeerKey,
) -> Result<Spliced, SpliceError> {
    use std::os::fd::AsFd as _;
    splicer.splice(upstream.as_fd(), agent)
}

/// Runs the connection to its end: both sides closed (a half-close is
/// passed on), or either failed. Returns the bytes moved up (agent to
/// upstream, both ways counted) and down.
pub async fn run(
    inbound: &TcpStream,
    upstream: &TcpStream,
    spliced: &Spliced,
    metrics: &Metrics,
) -> io::Result<(u64, u64)> {
    let up = async {
        copy_up(inbound, upstream, spliced, metrics)
            .await
            .map_err(|e| io::Error::other(format!("agent to upstream: {e}")))
    };
    let down = async {
        let copied = copy(upstream, inbound, &mut ()).await;
        copied
            .and_then(|n| shutdown(inbound).map(|()| n))
            .map_err(|e| io::Error::other(format!("upstream to agent: {e}")))
    };
    tokio::try_join!(up, down)
}

/// Copies agent to upstream until the agent's FIN, opening the direct way
/// once the first flight is through ([`Gate`]); then half-closes the
/// upstream. Returns the bytes the upstream socket took, copied or sent
/// the direct way.
async fn copy_up(
    inbound: &TcpStream,
    upstream: &TcpStream,
    spliced: &Spliced,
    metrics: &Metrics,
) -> io::Result<u64> {
    let mut gate = Gate {
        spliced,
        metrics,
        tried: false,
        open_at: None,
        tally: DirectTally::start(upstream)?,
    };
    copy(inbound, upstream, &mut gate).await?;
    // Read after the agent's FIN (its direct pushes were done in its own
    // calls before it) and before ours, which TCP counts.
    let took = gate.tally.count(metrics)?;
    shutdown(upstream)?;
    Ok(took)
}

/// Counts the bytes the agent sent the direct way: everything the
/// upstream socket took but what the proxy wrote to it. Counted once,
/// whichever way the connection ends: at the agent's FIN
/// ([`DirectTally::count`]), or when the relay is dropped before it (an
/// error, the idle limit, a revocation, a daemon stop; see [`Gate`]'s
/// `drop`), while the upstream socket is still open.
struct DirectTally<'a> {
    upstream: &'a TcpStream,
    /// What the upstream socket counted before a byte was sent (its SYN).
    base: u64,
    /// Bytes the proxy wrote to the upstream socket.
    written: u64,
    counted: bool,
}

impl<'a> DirectTally<'a> {
    fn start(upstream: &'a TcpStream) -> io::Result<Self> {
        Ok(Self {
            upstream,
            base: queued_or_sent(upstream)?,
            written: 0,
            counted: false,
        })
    }

    /// Counts the direct bytes into `metrics`; returns all the upstream
    /// socket took.
    fn count(&mut self, metrics: &Metrics) -> io::Result<u64> {
        self.counted = true;
        let took = queued_or_sent(self.upstream)?.saturating_sub(self.base);
        metrics.observe_passthrough_direct_bytes(took.saturating_sub(self.written));
        Ok(took)
    }
}

/// Cut before the agent's FIN: the direct way is shut first, so that
/// nothing the agent still sends reaches the upstream socket uncounted
/// (it goes the usual way, to the proxy's socket, which is closing).
impl Drop for Gate<'_> {
    fn drop(&mut self) {
        if self.tally.counted {
            return;
        }
        self.spliced.shut_direct();
        if let Err(e) = self.tally.count(self.metrics) {
            tracing::debug!(error = %e, "the bytes sent the direct way could not be counted");
        }
    }
}

/// What a copy tells its watcher.
trait Watch {
    /// Bytes are about to be written on; an error cuts the connection
    /// before they are.
    fn arriving(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// `n` more bytes were written on.
    fn wrote(&mut self, _n: usize) {}

    /// Everything read so far (`total` bytes) has been written on.
    fn flushed(&mut self, _total: u64) {}
}

/// Upstream to agent: nothing to watch.
impl Watch for () {}

/// Agent to upstream: opens the direct way at the first flush, if the
/// kernel's count agrees with what was copied, and guards it after.
struct Gate<'a> {
    spliced: &'a Spliced,
    metrics: &'a Metrics,
    tried: bool,
    /// The count the gate opened at.
    open_at: Option<u64>,
    tally: DirectTally<'a>,
}

impl Watch for Gate<'_> {
    /// Once the way is open, only bytes the kernel counted may still come
    /// here (a send that raced the gate, or whose redirect failed: the
    /// count then moved past the gate, which shut it for good). Bytes
    /// arriving with the count still at the gate were never counted (see
    /// [`FIRST_FLIGHT`]): sends after them may have gone direct already,
    /// so they are not passed on out of order; the connection is cut.
    fn arriving(&mut self) -> io::Result<()> {
        match self.open_at {
            Some(open_at) if self.spliced.passed() == Some(open_at) => Err(io::Error::other(
                "bytes the kernel did not count arrived after the agent's direct way opened",
            )),
            _ => Ok(()),
        }
    }

    fn wrote(&mut self, n: usize) {
        self.tally.written += n as u64;
    }

    fn flushed(&mut self, total: u64) {
        // Only at the first flush: see FIRST_FLIGHT.
        if std::mem::replace(&mut self.tried, true)
            || total > FIRST_FLIGHT
            || self.spliced.passed() != Some(total)
        {
            return;
        }
        if let Err(e) = self.spliced.open_direct(total) {
            tracing::debug!(error = %e, "the agent's direct way was not opened");
            return;
        }
        // A send the usual way between the count and the gate leaves the
        // gate shut: it is copied here like any other.
        if self.spliced.passed() == Some(total) {
            self.open_at = Some(total);
            self.metrics.observe_passthrough_direct();
            tracing::debug!(bytes = total, "the agent's sends go straight upstream");
        }
    }
}

/// Copies `from` to `to` until `from`'s FIN, telling `watch` as it goes.
/// Returns the bytes copied; the caller passes the FIN on.
async fn copy(from: &TcpStream, to: &TcpStream, watch: &mut impl Watch) -> io::Result<u64> {
    let mut copied = 0;
    // What `to` could not take yet; empty (no allocation) most of the time.
    let mut pending = Vec::new();
    loop {
        if !pending.is_empty() {
            write_all(to, &pending, watch).await?;
            pending = Vec::new();
            watch.flushed(copied);
        }
        from.readable().await?;
        let read = SCRATCH_BUF.with_borrow_mut(|buf| -> io::Result<Option<usize>> {
            let n = match from.try_read(buf) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(0)),
                Err(e) => return Err(e),
            };
            watch.arriving()?;
            let written = match to.try_write(&buf[..n]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            watch.wrote(written);
            pending.extend_from_slice(&buf[written..n]);
            Ok(Some(n))
        })?;
        match read {
            None => break,
            Some(0) => {}
            Some(n) => {
                copied += n as u64;
                if pending.is_empty() {
                    watch.flushed(copied);
                }
            }
        }
    }
    write_all(to, &pending, watch).await?;
    if !pending.is_empty() {
        watch.flushed(copied);
    }
    Ok(copied)
}

async fn write_all(to: &TcpStream, mut bytes: &[u8], watch: &mut impl Watch) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(n) => {
                watch.wrote(n);
                bytes = &bytes[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn shutdown(to: &TcpStream) -> io::Result<()> {
    nix::sys::socket::shutdown(to.as_raw_fd(), Shutdown::Write).map_err(io::Error::from)
}

/// Bytes `fd` has taken to send since it connected: acknowledged by the
/// peer, plus still in its send queue (SIOCOUTQ).
fn queued_or_sent(fd: &TcpStream) -> io::Result<u64> {
    let info = crate::proxy::tcp_state::tcp_info(fd.as_raw_fd())?;
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked + u64::try_from(queued).unwrap_or(0))
}
