//! Closing one TCP connection of this host that the daemon holds no
//! descriptor of: an agent's connection that does not pass through the
//! daemon's own sockets, aborted when the agent is revoked or stopped.
//!
//! The daemon cannot `shutdown()` a socket it has no fd of, so this asks the
//! kernel: a `SOCK_DESTROY` request on a `NETLINK_SOCK_DIAG` socket names
//! the socket by its 4-tuple and its cookie, and the kernel aborts it
//! (`tcp_abort`): its owner's next call fails with ECONNABORTED and the
//! peer gets an RST. This is what `ss -K` does.
//!
//! It needs CAP_NET_ADMIN in the user namespace that owns the socket's
//! network namespace, and a kernel built with CONFIG_INET_DIAG_DESTROY;
//! without either the kernel refuses ([`SockDiagError::NotPermitted`],
//! [`SockDiagError::Unsupported`]). A netlink socket looks sockets up in the
//! network namespace it was created in, so a [`SockDiag`] is opened once per
//! namespace.
//!
//! Two kernel facts shape the exchange:
//!
//! - The lookup by 4-tuple (`inet_diag_find_one_icsk`, net/ipv4/inet_diag.c)
//!   also matches a listener on the local address, or a later connection
//!   that reuses the tuple. Only the cookie check (`sock_diag_check_cookie`,
//!   net/core/sock_diag.c) keeps those alive, so a request always carries
//!   a real cookie, never the all-ones "don't check" value.
//! - The lookup only matches a socket bound to a device (SO_BINDTODEVICE,
//!   which any process may set on its own socket, or an IPv6 link-local
//!   connection) if the request names that device. An agent could thus hide
//!   a connection from a request that names none, so when that finds
//!   nothing, the socket's device is looked up in a dump of the sockets
//!   with its ports (which reports each socket's device and cookie) and the
//!   request is made again with it.

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    libc,
    sys::{
        socket::{
            self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, sockopt,
        },
        time::{TimeVal, TimeValLike},
    },
};
use thiserror::Error;

/// How long to wait for the kernel's answer. The kernel answers inside our
/// send(), so the answer is normally queued before recv() is called; this
/// only bounds a lost one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Large enough for any datagram of a dump: the kernel fills at most
/// max(NLMSG_GOODSIZE, the largest buffer we have read with), both at most
/// 32 KiB (netlink_dump, net/netlink/af_netlink.c).
const RECEIVE_BUFFER: usize = 32 * 1024;

// linux/sock_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
// linux/netlink.h
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
// linux/inet_diag.h
const INET_DIAG_NOCOOKIE: u32 = !0;
/// Every TCP state. The lookup of one socket does not filter by state; the
/// dump does, and the socket may be in any.
const ALL_STATES: u32 = !0;
/// SO_COOKIE (asm-generic/socket.h; the same on every architecture but
/// sparc, which agentguard does not build for). The libc crate does not
/// export it for Linux.
const SO_COOKIE: libc::c_int = 57;

#[derive(Debug, Error)]
pub enum SockDiagError {
    #[error("failed to open a NETLINK_SOCK_DIAG socket: {source}")]
    Open { source: io::Error },
    #[error(
        "cannot name a socket by local address {local} and remote address {remote}: they are of different families"
    )]
    MixedFamilies {
        local: SocketAddr,
        remote: SocketAddr,
    },
    #[error("refusing to destroy {id}: that cookie would tell the kernel not to check the cookie")]
    NoCookie { id: TcpSocketId },
    #[error("failed to send a sock_diag request for {id}: {source}")]
    Send { id: TcpSocketId, source: io::Error },
    #[error("failed to read the kernel's answer about {id}: {source}")]
    Receive { id: TcpSocketId, source: io::Error },
    #[error("no answer from the kernel about {id} within {ANSWER_TIMEOUT:?}")]
    Timeout { id: TcpSocketId },
    #[error("malformed netlink answer about {id}: {reason}")]
    Malformed {
        id: TcpSocketId,
        reason: &'static str,
    },
    #[error(
        "the kernel cannot destroy sockets (EOPNOTSUPP): it was built without CONFIG_INET_DIAG_DESTROY"
    )]
    Unsupported,
    #[error("destroying {id} needs CAP_NET_ADMIN in its network namespace (EPERM)")]
    NotPermitted { id: TcpSocketId },
    #[error("the kernel refused to destroy {id}: {errno}")]
    Refused { id: TcpSocketId, errno: Errno },
    #[error("the kernel refused to list the sockets that might be {id}: {errno}")]
    Dump { id: TcpSocketId, errno: Errno },
}

/// One TCP socket of this host, as its own side sees it.
///
/// The addresses must be in the form of the socket's own family: an
/// AF_INET6 socket that talks IPv4 has v4-mapped addresses
/// (`[::ffff:127.0.0.1]:80`, as its `local_addr()` returns them), and they
/// are sent as AF_INET6. (The plain IPv4 form finds an unbound socket of
/// that kind too, since the kernel looks a v4-mapped pair up in the IPv4
/// table, but not one bound to a device: the dump that finds the device
/// lists one family only.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpSocketId {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The socket's cookie: what [`socket_cookie`] returns for it, and
    /// eBPF's `bpf_get_socket_cookie`.
    pub cookie: u64,
}

impl fmt::Display for TcpSocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TCP socket {} -> {} (cookie {})",
            self.local, self.remote, self.cookie
        )
    }
}

/// What became of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// The kernel aborted it.
    Closed,
    /// The kernel has no such socket: it was closed already. Either nothing
    /// holds the tuple (ENOENT) or what holds it has another cookie
    /// (ESTALE): a later connection reusing the tuple, or a listener on the
    /// local address, neither of which is the socket meant.
    Gone,
}

/// A NETLINK_SOCK_DIAG socket of the network namespace it was opened in.
pub struct SockDiag {
    /// One request and its answer at a time, so that no caller reads
    /// another's answer.
    exchange: Mutex<Exchange>,
}

struct Exchange {
    fd: OwnedFd,
    /// The last sequence number used. An answer that arrives after its
    /// request timed out is told apart from the current one by it.
    seq: u32,
    /// RECEIVE_BUFFER bytes, kept for every answer.
    buf: Vec<u8>,
}

impl SockDiag {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SockDiagError> {
        let open = || -> nix::Result<OwnedFd> {
            let fd = socket::socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkSockDiag,
            )?;
            // Connected to the kernel (port 0), the socket refuses datagrams
            // from any other netlink socket (netlink_getsockbyportid), so a
            // local process cannot forge the ack that says a socket was
            // closed.
            socket::connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
            socket::setsockopt(
                &fd,
                sockopt::ReceiveTimeout,
                &TimeVal::milliseconds(ANSWER_TIMEOUT.as_millis() as i64),
            )?;
            Ok(fd)
        };
        let fd = open().map_err(|errno| SockDiagError::Open {
            source: errno.into(),
        })?;
        Ok(Self {
            exchange: Mutex::new(Exchange {
                fd,
                seq: 0,
                buf: vec![0; RECEIVE_BUFFER],
            }),
        })
    }

    /// Aborts the TCP socket with this local and remote address and this
    /// cookie.
    pub fn destroy_tcp(&self, id: &TcpSocketId) -> Result<Destroyed, SockDiagError> {
        let mut req = InetDiagReqV2::tcp(id)?;
        // A panic while the lock was held leaves nothing half-done: the fd
        // and the counter are valid whatever happened, and a stray answer is
        // skipped by its sequence number.
        let mut exchange = self.exchange.lock().unwrap_or_else(PoisonError::into_inner);
        match exchange.destroy(id, &req)? {
            Destroyed::Closed => return Ok(Destroyed::Closed),
            Destroyed::Gone => {}
        }
        match exchange.find_device(id, &req)? {
            Some(ifindex) => {
                req.id.ifindex = ifindex;
                exchange.destroy(id, &req)
            }
            None => Ok(Destroyed::Gone),
        }
    }
}

impl Exchange {
    fn destroy(
        &mut self,
        id: &TcpSocketId,
        req: &InetDiagReqV2,
    ) -> Result<Destroyed, SockDiagError> {
        let seq = self.send(id, SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, req)?;
        let errno = self.receive(id, seq, |header, payload| {
            if header.kind != NLMSG_ERROR {
                return Err("the answer to SOCK_DESTROY is not an ack");
            }
            Ok(Some(nlmsgerr_errno(payload)?))
        })?;
        match errno {
            None => Ok(Destroyed::Closed),
            Some(Errno::ENOENT | Errno::ESTALE) => Ok(Destroyed::Gone),
            Some(Errno::EOPNOTSUPP) => Err(SockDiagError::Unsupported),
            Some(Errno::EPERM) => Err(SockDiagError::NotPermitted { id: *id }),
            Some(errno) => Err(SockDiagError::Refused { id: *id, errno }),
        }
    }

    /// The device the socket is bound to, from a dump of the sockets with
    /// its ports; None if there is no socket with its addresses and cookie.
    fn find_device(
        &mut self,
        id: &TcpSocketId,
        req: &InetDiagReqV2,
    ) -> Result<Option<u32>, SockDiagError> {
        // The dump skips sockets whose ports differ from a nonzero sport
        // and dport in the request (inet_diag_dump_icsk); addresses and
        // cookie are ours to compare.
        let seq = self.send(id, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, req)?;
        let mut found = None;
        let end = self.receive(id, seq, |header, payload| match header.kind {
            SOCK_DIAG_BY_FAMILY => {
                let socket = dumped_id(payload).ok_or("inet_diag_msg shorter than its struct")?;
                if socket.same_socket(&req.id) {
                    found = Some(socket.ifindex);
                }
                Ok(None)
            }
            // The dump's status, in the same int as an ack's.
            NLMSG_DONE | NLMSG_ERROR => Ok(Some(nlmsgerr_errno(payload)?)),
            _ => Err("unexpected message type in a sock_diag dump"),
        })?;
        match end {
            None => Ok(found),
            Some(errno) => Err(SockDiagError::Dump { id: *id, errno }),
        }
    }

    /// Sends one request and returns its sequence number.
    fn send(
        &mut self,
        id: &TcpSocketId,
        kind: u16,
        flags: u16,
        req: &InetDiagReqV2,
    ) -> Result<u32, SockDiagError> {
        self.seq = self.seq.wrapping_add(1);
        let message = encode_request(kind, flags, self.seq, req);
        loop {
            match socket::send(self.fd.as_raw_fd(), &message, MsgFlags::empty()) {
                Ok(_) => return Ok(self.seq),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(SockDiagError::Send {
                        id: *id,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Reads answers to request `seq`, each message to `on_message`, until
    /// it returns Some. Messages of other sequence numbers are answers to
    /// requests that timed out, and skipped.
    fn receive<T>(
        &mut self,
        id: &TcpSocketId,
        seq: u32,
        mut on_message: impl FnMut(&NlMsgHdr, &[u8]) -> Result<Option<T>, &'static str>,
    ) -> Result<T, SockDiagError> {
        let malformed = |reason| SockDiagError::Malformed { id: *id, reason };
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(SockDiagError::Timeout { id: *id });
            }
            // MSG_TRUNC: the datagram's real length, so that a truncated one
            // is an error rather than silently cut messages.
            let n = match socket::recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(SockDiagError::Timeout { id: *id }),
                Err(e) => {
                    return Err(SockDiagError::Receive {
                        id: *id,
                        source: e.into(),
                    });
                }
            };
            let datagram = self
                .buf
                .get(..n)
                .ok_or_else(|| malformed("datagram larger than the receive buffer"))?;
            for message in Messages(datagram) {
                let (header, payload) = message.map_err(malformed)?;
                if header.seq != seq {
                    continue;
                }
                if let Some(done) = on_message(&header, payload).map_err(malformed)? {
                    return Ok(done);
                }
            }
        }
    }
}

/// The netlink messages in one datagram, each as its header and payload.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(NlMsgHdr, &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.0);
        let Some(header) = NlMsgHdr::decode(rest) else {
            return Some(Err("message shorter than struct nlmsghdr"));
        };
        let len = header.len as usize;
        if len < NlMsgHdr::SIZE || len > rest.len() {
            return Some(Err("message length out of bounds"));
        }
        // NLMSG_ALIGN: messages in one datagram start on 4-byte boundaries.
        self.0 = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some(Ok((header, &rest[NlMsgHdr::SIZE..len])))
    }
}

/// The errno of an NLMSG_ERROR or NLMSG_DONE payload (None for success):
/// its first field, an int holding 0 or a negated errno.
fn nlmsgerr_errno(payload: &[u8]) -> Result<Option<Errno>, &'static str> {
    let error = payload
        .first_chunk::<4>()
        .ok_or("answer shorter than its error code")?;
    match i32::from_ne_bytes(*error) {
        0 => Ok(None),
        e @ i32::MIN..0 => Ok(Some(Errno::from_raw(-e))),
        _ => Err("positive error code"),
    }
}

/// The socket's cookie (SO_COOKIE): the number the kernel checks in
/// [`TcpSocketId::cookie`]. Reading it assigns one if the socket had none.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is open for the call (it is borrowed), and `cookie` and
    // `len` are live locals; the kernel writes at most `len` bytes, the
    // size of `cookie`, and the length it wrote to `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    Errno::result(rc)?;
    if len as usize != size_of::<u64>() {
        return Err(io::Error::other(format!(
            "SO_COOKIE gave {len} bytes, not 8"
        )));
    }
    Ok(cookie)
}

// The kernel's structures, each encoded field by field in the order of its
// #[repr(C)] layout, which the size assertions tie to the kernel headers.
// Netlink headers, the interface and the cookie words are in host byte
// order; ports and addresses in network byte order, as on the wire.

/// `struct nlmsghdr` (linux/netlink.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    /// The sender's port id; the kernel fills it in for ours.
    pid: u32,
}

/// `struct inet_diag_sockid` (linux/inet_diag.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InetDiagSockId {
    /// `__be16`.
    sport: [u8; 2],
    /// `__be16`.
    dport: [u8; 2],
    /// `__be32[4]`: an IPv6 address's 16 bytes in order, or an IPv4
    /// address in the first four and zeros.
    src: [u8; 16],
    dst: [u8; 16],
    /// The device the socket is bound to; 0 matches an unbound socket.
    ifindex: u32,
    /// Low 32 bits first (sock_diag_check_cookie).
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2` (linux/inet_diag.h).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

const _: () = assert!(size_of::<NlMsgHdr>() == 16);
const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);

/// Reads fixed-size fields in order.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (field, rest) = self.0.split_first_chunk::<N>().expect("length checked");
        self.0 = rest;
        *field
    }
    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.take())
    }
}

impl NlMsgHdr {
    const SIZE: usize = size_of::<Self>();

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.len.to_ne_bytes());
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        out.extend_from_slice(&self.pid.to_ne_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut f = Fields(bytes.get(..Self::SIZE)?);
        Some(Self {
            len: f.u32(),
            kind: u16::from_ne_bytes(f.take()),
            flags: u16::from_ne_bytes(f.take()),
            seq: f.u32(),
            pid: f.u32(),
        })
    }
}

impl InetDiagSockId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sport);
        out.extend_from_slice(&self.dport);
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.ifindex.to_ne_bytes());
        out.extend_from_slice(&self.cookie[0].to_ne_bytes());
        out.extend_from_slice(&self.cookie[1].to_ne_bytes());
    }

    fn decode(f: &mut Fields<'_>) -> Self {
        Self {
            sport: f.take(),
            dport: f.take(),
            src: f.take(),
            dst: f.take(),
            ifindex: f.u32(),
            cookie: [f.u32(), f.u32()],
        }
    }

    /// Whether both name the same socket, whatever the device.
    fn same_socket(&self, other: &Self) -> bool {
        Self {
            ifindex: other.ifindex,
            ..*self
        } == *other
    }
}

impl InetDiagReqV2 {
    /// The request that names `id` (unbound, until a dump says otherwise).
    fn tcp(id: &TcpSocketId) -> Result<Self, SockDiagError> {
        let cookie = [id.cookie as u32, (id.cookie >> 32) as u32];
        if cookie == [INET_DIAG_NOCOOKIE; 2] {
            return Err(SockDiagError::NoCookie { id: *id });
        }
        let (family, src, dst) = match (id.local.ip(), id.remote.ip()) {
            (IpAddr::V4(l), IpAddr::V4(r)) => (libc::AF_INET, v4_words(l), v4_words(r)),
            (IpAddr::V6(l), IpAddr::V6(r)) => (libc::AF_INET6, l.octets(), r.octets()),
            _ => {
                return Err(SockDiagError::MixedFamilies {
                    local: id.local,
                    remote: id.remote,
                });
            }
        };
        Ok(Self {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: ALL_STATES,
            id: InetDiagSockId {
                sport: id.local.port().to_be_bytes(),
                dport: id.remote.port().to_be_bytes(),
                src,
                dst,
                ifindex: 0,
                cookie,
            },
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, self.protocol, self.ext, self.pad]);
        out.extend_from_slice(&self.states.to_ne_bytes());
        self.id.encode(out);
    }
}

/// The id of one socket of a dump: `struct inet_diag_msg` (linux/inet_diag.h)
/// is four u8 fields, the id, and five u32 fields.
fn dumped_id(payload: &[u8]) -> Option<InetDiagSockId> {
    const ID_OFFSET: usize = 4;
    const SIZE: usize = ID_OFFSET + size_of::<InetDiagSockId>() + 5 * 4;
    let payload = payload.get(..SIZE)?;
    Some(InetDiagSockId::decode(&mut Fields(&payload[ID_OFFSET..])))
}

/// One netlink message: a header and the request.
fn encode_request(kind: u16, flags: u16, seq: u32, req: &InetDiagReqV2) -> Vec<u8> {
    let len = NlMsgHdr::SIZE + size_of::<InetDiagReqV2>();
    let mut out = Vec::with_capacity(len);
    NlMsgHdr {
        len: len as u32,
        kind,
        flags,
        seq,
        pid: 0,
    }
    .encode(&mut out);
    req.encode(&mut out);
    out
}

/// An IPv4 address as `__be32[4]`: in the first word.
fn v4_words(ip: Ipv4Addr) -> [u8; 16] {
    let mut words = [0; 16];
    words[..4].copy_from_slice(&ip.octets());
    words
}

#[cfg(test)]
mod tests;
