//! Plain-old-data types shared by agentguard's kernel programs and its daemon.
//!
//! Every type is `#[repr(C)]` with explicit widths and explicit padding, because
//! the kernel side writes them into BPF maps and the user side reads the same
//! bytes back: any implicit padding would be uninitialised memory in the map key
//! (and a lookup that never matches).
#![no_std]

/// Linux address family numbers, as the kernel reports them in `bpf_sock_addr`
/// and `bpf_sock_ops`.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Number of live connections the LRU maps are sized for. The issue asks for at
/// least 64k; an LRU map evicts the oldest entry when full, so a burst beyond
/// this loses attribution for the oldest pending connection, which the proxy
/// then refuses (fail closed) rather than relays.
pub const MAX_TRACKED_CONNECTIONS: u32 = 65_536;

/// Size of the kernel → daemon event ring buffer (a power of two). Each
/// agent gets a share of it (`ProxyConfig::event_bytes_per_agent`).
pub const KERNEL_EVENTS_BYTES: u32 = 1024 * 1024;

/// Length of a task's `comm` (TASK_COMM_LEN in the kernel).
pub const COMM_LEN: usize = 16;

/// Maps an IPv4 address (network byte order bytes) into the IPv4-mapped IPv6
/// form `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2). Keys and records always hold 16
/// bytes so one map serves both families.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Turns the four 32-bit words of `bpf_sock_addr.user_ip6` or
/// `bpf_sock_ops.local_ip6` (each in network byte order) into address bytes.
#[inline(always)]
pub const fn ip6_words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// The inverse of [`ip6_words_to_bytes`].
#[inline(always)]
pub const fn ip6_bytes_to_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// Whether `ip` is an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
#[inline(always)]
pub fn is_v4_mapped(ip: &[u8; 16]) -> bool {
    ip[0] == 0
        && ip[1] == 0
        && ip[2] == 0
        && ip[3] == 0
        && ip[4] == 0
        && ip[5] == 0
        && ip[6] == 0
        && ip[7] == 0
        && ip[8] == 0
        && ip[9] == 0
        && ip[10] == 0xff
        && ip[11] == 0xff
}

/// What the kernel learned about one redirected connection at `connect()` time.
///
/// Written by `connect4`/`connect6` under the socket cookie, moved by `sockops`
/// under the connection's local address, read (and removed) by the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// Original destination address; IPv4 is stored IPv4-mapped.
    pub orig_ip: [u8; 16],
    /// Original destination port, host byte order.
    pub orig_port: u16,
    /// Address family the application connected with (`AF_INET`/`AF_INET6`).
    /// A v6 socket dialling `::ffff:a.b.c.d` reports `AF_INET6`.
    pub family: u16,
    /// Thread-group id (what user space calls the pid).
    pub tgid: u32,
    /// Kernel task id of the calling thread.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Since when the record waits for the proxy: whole seconds of the
    /// boot-time clock (`CLOCK_BOOTTIME`, `bpf_ktime_get_boot_ns`), stamped
    /// by `sockops` as the record enters `PEER_RECORDS`; 0 before. The
    /// daemon forgets records that waited too long (`--kernel-record-max-wait`).
    /// Took the place of padding, so the layout is the same as before.
    pub waiting_since_s: u32,
    /// cgroup v2 id (the cgroup directory's inode number) of the caller.
    pub cgroup_id: u64,
    /// Socket cookie of the agent's socket, unique for the boot.
    pub cookie: u64,
    /// `comm` of the calling task, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Key of the peer map: the agent socket's network namespace and local
/// address as the proxy sees them on `accept()` (the listener's namespace
/// and the peer address of the accepted connection).
///
/// The namespace is part of the key because agents in containers each
/// have their own loopback: two of them may connect from the same
/// `127.0.0.1:<port>` at once, and only the namespace tells them apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Cookie of the socket's network namespace (`bpf_get_netns_cookie`,
    /// `SO_NETNS_COOKIE`), unique for the boot.
    pub netns: u64,
    /// Local address of the agent's socket; IPv4 is stored IPv4-mapped.
    pub ip: [u8; 16],
    /// Local port, host byte order.
    pub port: u16,
    pub _pad: [u8; 6],
}

impl PeerKey {
    pub const fn new(netns: u64, ip: [u8; 16], port: u16) -> Self {
        Self {
            netns,
            ip,
            port,
            _pad: [0; 6],
        }
    }
}

/// Where the kernel sends redirected connections. One entry (index 0) in the
/// `PROXY_CONFIG` array, written by the daemon at start.
///
/// An all-zero entry (daemon never configured the map) makes the kernel refuse
/// every guarded connect: fail closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// IPv4 listener address as network-byte-order bytes (127.0.0.1).
    pub ip4: [u8; 4],
    /// IPv6 listener address (::1).
    pub ip6: [u8; 16],
    /// Listener port, host byte order. Zero means "not configured".
    pub port: u16,
    pub _pad: u16,
    /// tgid of the running daemon: its own sockets are never redirected, even
    /// if an operator placed it inside a guarded cgroup (loop guard).
    pub daemon_tgid: u32,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Most records one agent (cgroup) may have waiting in `PEER_RECORDS`
    /// for the proxy; past it its connects get EPERM. 0: no limit.
    pub records_per_agent: u32,
    /// Most ring-buffer bytes one agent's (cgroup's) events may hold
    /// unread; past it its events are dropped and counted as its own
    /// losses. 0: no limit.
    pub event_bytes_per_agent: u32,
}

/// `ProxyConfig::flags`: also report every redirect (not only refusals)
/// through the event ring buffer.
pub const CONFIG_REPORT_REDIRECTS: u32 = 1;

/// `ProxyConfig::flags`: a TCP connect to an address that `DIRECT_WAYS`
/// holds for the agent is left to go straight to it (the direct way of
/// passthrough), its first send checked in the kernel; without it every
/// TCP connect goes to the proxy.
pub const CONFIG_DIRECT_PASSTHROUGH: u32 = 2;

/// The destination a socket was redirected away from. Kept for the socket's
/// lifetime so that `getpeername()` and `recvmsg()` can show the agent the
/// peer it asked for (transparency).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// IPv4 is stored IPv4-mapped.
    pub ip: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}

/// Kinds of [`KernelEvent`].
pub mod event_kind {
    /// A UDP datagram or connect to a port other than 53 (QUIC included).
    pub const UDP_DENIED: u32 = 1;
    /// A raw socket (SOCK_RAW) creation.
    pub const RAW_SOCKET_DENIED: u32 = 2;
    /// An ICMP/ICMPv6 ("ping") socket creation.
    pub const ICMP_SOCKET_DENIED: u32 = 3;
    /// A stream/datagram protocol the proxy cannot see (SCTP, ...).
    pub const TRANSPORT_DENIED: u32 = 4;
    /// A guarded process dialled the proxy's own port.
    pub const DIRECT_PROXY_DENIED: u32 = 5;
    /// DNS from a cgroup with no resolver assigned (e.g. a sub-cgroup).
    pub const DNS_UNROUTABLE: u32 = 6;
    /// No room to record the connection (map full): refused.
    pub const RECORD_FAILED: u32 = 7;
    /// A `connect()` to a Unix socket the agent's policy does not list
    /// (carried by a [`UnixEvent`](super::UnixEvent)).
    pub const UNIX_CONNECT_DENIED: u32 = 8;
    /// A datagram sent to a Unix socket address the agent's policy does not
    /// list (carried by a [`UnixEvent`](super::UnixEvent)).
    pub const UNIX_SENDMSG_DENIED: u32 = 9;
    /// A packet leaving an agent's socket for an address off the loopback
    /// (a routing header or IP source route pointing past the redirect, or
    /// a reply on a socket the agent accepted): dropped.
    pub const EGRESS_DENIED: u32 = 10;
    /// A socket option that would route packets past the redirect (IPv6
    /// routing header, IPv4 options such as source routes).
    pub const SOCKOPT_DENIED: u32 = 11;
    /// An agent process asked for access to a process outside its cgroup:
    /// ptrace, its memory (`process_vm_*`, `/proc/<pid>/mem`), its
    /// descriptors (`pidfd_getfd`), and every other check the kernel makes
    /// through `ptrace_may_access` (carried by a
    /// [`ProcessEvent`](super::ProcessEvent)).
    pub const PROCESS_ACCESS_DENIED: u32 = 12;
    /// Any connect, datagram or bind of an agent whose cgroup is revoked
    /// (`REVOKED`): refused at once, whatever the policy says.
    pub const AGENT_REVOKED: u32 = 13;
    /// A bind() to an address and port the agent's `listen` does not list
    /// (the destination fields carry the local address asked for).
    pub const BIND_DENIED: u32 = 14;
    /// A TCP connect refused because the agent already has its share of
    /// connections waiting for the proxy (`records_per_agent`).
    pub const RECORD_SHARE_EXCEEDED: u32 = 15;
    /// A TCP connect sent to the proxy (only with CONFIG_REPORT_REDIRECTS).
    pub const TCP_REDIRECTED: u32 = 16;
    /// A DNS query sent to agentguard's resolver (only with
    /// CONFIG_REPORT_REDIRECTS).
    pub const DNS_REDIRECTED: u32 = 17;
    /// A direct-way passthrough connection whose first send carried a
    /// ClientHello for the way's name: open (carried by a
    /// [`DirectEvent`](super::DirectEvent)).
    pub const DIRECT_OPENED: u32 = 18;
    /// A direct-way passthrough connection refused in the kernel (carried
    /// by a [`DirectEvent`](super::DirectEvent), whose `reason` is one of
    /// [`direct_refusal`](super::direct_refusal)).
    pub const DIRECT_REFUSED: u32 = 19;
}

/// One record of the kernel → daemon ring buffer: a refusal (always) or a
/// redirect (if enabled), with the identity of the caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEvent {
    /// One of [`event_kind`].
    pub kind: u32,
    pub family: u16,
    /// IPPROTO_* of the socket.
    pub protocol: u16,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Destination asked for (zero for socket creation); IPv4 mapped.
    pub dst_ip: [u8; 16],
    pub dst_port: u16,
    /// SOCK_* type of the socket.
    pub sock_type: u16,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// `sizeof(sockaddr_un.sun_path)` (UNIX_PATH_MAX in the kernel).
pub const UNIX_PATH_MAX: usize = 108;

/// Capacity of the Unix-socket allow-list map, over all agents.
pub const MAX_UNIX_ALLOW_ENTRIES: u32 = 4096;

/// A Unix socket address as the kernel programs compare it: key of the
/// per-agent allow-list map.
///
/// `path` holds exactly `len` bytes of `sun_path`, zero-filled after them.
/// A filesystem name stops at its first NUL (as the kernel reads it); an
/// abstract name (`path[0] == 0`, Linux `unix(7)`) is all of the address's
/// bytes, so `len` tells `@a` from `@a\0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixKey {
    /// cgroup v2 id of the agent the entry belongs to.
    pub cgroup_id: u64,
    pub len: u32,
    pub _pad: u32,
    pub path: [u8; UNIX_PATH_MAX],
    pub _pad2: [u8; 4],
}

impl UnixKey {
    pub const fn empty(cgroup_id: u64) -> Self {
        Self {
            cgroup_id,
            len: 0,
            _pad: 0,
            path: [0; UNIX_PATH_MAX],
            _pad2: [0; 4],
        }
    }

    /// The key for `sun_path` bytes as the kernel programs build it (no
    /// terminating NUL; NUL first for an abstract name); `None` if longer
    /// than `sun_path`.
    pub fn new(cgroup_id: u64, sun_path: &[u8]) -> Option<Self> {
        let mut key = Self::empty(cgroup_id);
        key.path
            .get_mut(..sun_path.len())?
            .copy_from_slice(sun_path);
        key.len = sun_path.len() as u32;
        Some(key)
    }

    /// The address bytes the key holds.
    pub fn sun_path(&self) -> &[u8] {
        let len = (self.len as usize).min(UNIX_PATH_MAX);
        &self.path[..len]
    }
}

/// A Unix-socket refusal, in the same ring buffer as [`KernelEvent`]. Both
/// start with `kind`, which tells the reader which of the two it holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixEvent {
    /// [`event_kind::UNIX_CONNECT_DENIED`] or
    /// [`event_kind::UNIX_SENDMSG_DENIED`].
    pub kind: u32,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// SOCK_* type of the socket (1 stream, 2 datagram, 5 seqpacket), or 0
    /// if unknown.
    pub sock_type: u32,
    pub comm: [u8; COMM_LEN],
    /// The address asked for; `key.cgroup_id` is the caller's cgroup.
    pub key: UnixKey,
}

/// Capacity of the listen allow-list map, over all agents.
pub const MAX_LISTEN_ALLOW_ENTRIES: u32 = 4096;

/// An address and port an agent may bind (its policy's `listen`): key of
/// the `LISTEN_ALLOW` map. `any == 1` with an all-zero `ip` stands for
/// every local address; otherwise `ip` is the exact address (IPv4 mapped).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// cgroup v2 id of the agent the entry belongs to.
    pub cgroup_id: u64,
    pub ip: [u8; 16],
    /// Host byte order; never 0 (an ephemeral port needs no entry).
    pub port: u16,
    pub any: u8,
    pub _pad: [u8; 5],
}

impl ListenKey {
    pub const fn exact(cgroup_id: u64, ip: [u8; 16], port: u16) -> Self {
        Self {
            cgroup_id,
            ip,
            port,
            any: 0,
            _pad: [0; 5],
        }
    }

    pub const fn any_address(cgroup_id: u64, port: u16) -> Self {
        Self {
            cgroup_id,
            ip: [0; 16],
            port,
            any: 1,
            _pad: [0; 5],
        }
    }
}

/// How deep below the cgroup v2 root the kernel programs look for a
/// revoked ancestor of the caller's cgroup.
pub const MAX_CGROUP_LEVELS: i32 = 16;

/// Where the process-access program finds, in the kernel's own structs,
/// what it reads with bpf_probe_read_kernel: byte offsets from the running
/// kernel's BTF, written by the daemon into `TASK_LAYOUT` before it attaches
/// the program (the programs are built without CO-RE). Until `ready` is set
/// the program refuses every access it is asked about.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskLayout {
    /// `task_struct.cgroups` (`struct css_set *`).
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp` (`struct cgroup *`, the cgroup v2 one).
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn` (`struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64: the cgroup id).
    pub kernfs_node_id: u32,
    /// `task_struct.tgid` (`pid_t`).
    pub task_tgid: u32,
    /// `task_struct.comm` (`char[16]`).
    pub task_comm: u32,
    /// `pt_regs.orig_ax` (x86_64) or `pt_regs.syscallno` (arm64): the
    /// system call being made; [`NO_OFFSET`] where the kernel has neither.
    pub regs_syscall: u32,
    /// 1 once the daemon has written the offsets.
    pub ready: u32,
}

/// A [`TaskLayout`] field the running kernel does not have.
pub const NO_OFFSET: u32 = u32::MAX;

/// A refused access to another process, in the same ring buffer as
/// [`KernelEvent`] (`kind` first, as in every record there).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// [`event_kind::PROCESS_ACCESS_DENIED`].
    pub kind: u32,
    /// The caller.
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// `PTRACE_MODE_*` bits of the check (include/linux/ptrace.h).
    pub mode: u32,
    pub cgroup_id: u64,
    /// The process asked for.
    pub target_tgid: u32,
    /// The caller's system call number, or [`NO_OFFSET`] if unknown.
    pub syscall: u32,
    pub target_cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub target_comm: [u8; COMM_LEN],
}

/// What one agent (cgroup) uses of the kernel's shared tables, as the
/// kernel programs count it (only they write it; the counters only grow).
/// Value of `AGENT_USAGE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentUsage {
    /// `PEER_RECORDS` entries added for this agent...
    pub records_added: u64,
    /// ...and removed by the kernel itself (the connection ended before
    /// the proxy took it).
    pub records_dropped: u64,
    /// Connects refused because the agent had its share of records.
    pub records_refused: u64,
    /// Ring-buffer bytes queued for this agent's events ([`ring_cost`]).
    pub event_bytes: u64,
    /// Events not queued: its share of the ring, or the ring, was full.
    pub events_lost: u64,
}

/// What the daemon has given back of an agent's share: value of
/// `AGENT_RELEASED`, written by the daemon only (the counters only grow).
/// An agent's records waiting are `records_added - records_dropped -
/// records_taken`; its unread event bytes `event_bytes - event_bytes_read`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentReleased {
    /// `PEER_RECORDS` entries of this agent the daemon removed (taken by
    /// the proxy, or cleared at start).
    pub records_taken: u64,
    /// Ring-buffer bytes of this agent's events the daemon has read.
    pub event_bytes_read: u64,
}

/// Longest name a direct way holds: a DNS name is at most 253 characters
/// (255 octets on the wire), and an SNI host name is a DNS name.
pub const DIRECT_NAME_MAX: usize = 256;

/// Capacity of `DIRECT_WAYS`, over all agents. The daemon stops adding
/// ways when it is full: connects to the addresses left out go to the
/// proxy, as without the direct way.
pub const MAX_DIRECT_WAYS: u32 = 16_384;

/// Key of `DIRECT_WAYS`: an address agentguard's resolver gave an agent
/// for a passthrough name, and the port that name may be reached on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DirectKey {
    /// The agent's resolver port (`AGENT_DNS`): what names the agent in
    /// the kernel, whichever of its cgroups connects.
    pub agent_port: u16,
    /// Destination port, host byte order; 0: any port.
    pub dst_port: u16,
    pub _pad: u32,
    /// IPv4 is stored IPv4-mapped.
    pub ip: [u8; 16],
}

/// Value of `DIRECT_WAYS`: the one passthrough name the address stands
/// for, and until when. Written by the daemon only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectWay {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`) after which the
    /// way is closed to new connects: the end of the DNS answer's TTL.
    pub expires_ns: u64,
    /// Bytes of `name` in use.
    pub name_len: u32,
    pub _pad: u32,
    /// Lower case, no trailing dot.
    pub name: [u8; DIRECT_NAME_MAX],
}

/// States of a direct-way connection ([`DirectConn::state`]).
pub mod direct_state {
    /// Connected (or connecting); nothing sent yet. Packets with data are
    /// dropped.
    pub const WAITING: u32 = 0;
    /// The first send was a ClientHello for the way's name: its bytes go
    /// once the first data segment on the wire is found to be that hello.
    pub const OPEN: u32 = 1;
    /// Refused: no send of it ever goes.
    pub const REFUSED: u32 = 2;
    /// Open, and its first data segment on the wire was that hello too
    /// (nothing queued before it by another way): every segment goes.
    pub const VERIFIED: u32 = 3;
}

/// Why the kernel refused a direct-way connection ([`DirectEvent::reason`]).
pub mod direct_refusal {
    /// The first send was not a whole TLS ClientHello record up to its
    /// server name (another protocol, a hello split over sends, or a
    /// malformed one).
    pub const NOT_A_HELLO: u32 = 1;
    /// A ClientHello without a server name.
    pub const NO_SNI: u32 = 2;
    /// A ClientHello for another name than the one the address was
    /// resolved for.
    pub const OTHER_NAME: u32 = 3;
    /// The way expired or was withdrawn between the connect and the hello.
    pub const WAY_GONE: u32 = 4;
    /// No room to track the connection (the agent's share of kernel
    /// records, or the table, is full), or none to report it.
    pub const NO_ROOM: u32 = 5;
    /// The socket could not be put under the message program (the
    /// sockhash is full): its sends could not be checked.
    pub const UNCHECKED: u32 = 6;
    /// The agent was revoked between the connect and the hello.
    pub const REVOKED: u32 = 7;
    /// The daemon stopped, or its lease on the direct way ran out (it
    /// died): no way opens while it is down.
    pub const DAEMON_STOPPED: u32 = 8;
}

/// Socket-local state of a direct-way connection (`DIRECT_CONN`), made by
/// connect4/6, moved on by sockops and the message program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectConn {
    /// Who connected where, as for a redirected connection.
    pub record: ConnRecord,
    /// The way it took (to find its name when the hello comes).
    pub way: DirectKey,
    /// One of [`direct_state`].
    pub state: u32,
    /// Sequence number of the connection's first data byte (the one after
    /// the SYN's), stamped by sockops once connected.
    pub first_seq: u32,
    /// 1 while the connection counts against its agent's share of kernel
    /// records (from the connect until it is refused or closes).
    pub charged: u32,
    pub _pad: u32,
}

/// A direct-way connection the kernel tracks while it is open
/// (`DIRECT_OPEN`, by socket cookie): what the daemon needs to close it
/// (revocation, stop) without a descriptor of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectSocket {
    /// Cookie of the socket's network namespace.
    pub netns: u64,
    /// cgroup of the task that connected.
    pub cgroup_id: u64,
    /// Local and remote address, as the socket has them; IPv4 mapped.
    pub local_ip: [u8; 16],
    pub remote_ip: [u8; 16],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// The socket's own family (`AF_INET` or `AF_INET6`).
    pub family: u16,
    pub _pad: u16,
}

/// A direct-way connection opened or refused in the kernel, in the same
/// ring buffer as [`KernelEvent`] (`kind` first, as in every record there).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectEvent {
    /// [`event_kind::DIRECT_OPENED`] or [`event_kind::DIRECT_REFUSED`].
    pub kind: u32,
    /// One of [`direct_refusal`]; 0 when opened.
    pub reason: u32,
    pub cookie: u64,
    pub record: ConnRecord,
    pub socket: DirectSocket,
    /// The way's name (what the SNI had to be).
    pub name_len: u32,
    pub _pad: u32,
    pub name: [u8; DIRECT_NAME_MAX],
}

/// Bytes a record of `size` bytes takes in a BPF ring buffer: an 8-byte
/// header, rounded up to 8 (kernel/bpf/ringbuf.c).
pub const fn ring_cost(size: usize) -> u64 {
    ((size + 8 + 7) & !7) as u64
}

/// Index in the `EVENT_STATS` per-CPU array: ring-buffer records lost
/// because the buffer was full (the refusal itself still happened).
pub const STAT_EVENTS_LOST: u32 = 0;

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is #[repr(C)], Copy, has explicit padding fields and no
    // pointers, so every bit pattern the kernel writes is a valid value.
    unsafe impl aya::Pod for super::ConnRecord {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProxyConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ListenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AgentUsage {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AgentReleased {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DirectKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DirectWay {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DirectSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DirectEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    // The layouts are an ABI between two compilers (bpf and host): pin them.
    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<ConnRecord>(), 16 + 2 + 2 + 4 * 5 + 8 + 8 + 16);
        assert_eq!(align_of::<ConnRecord>(), 8);
        assert_eq!(size_of::<PeerKey>(), 8 + 16 + 2 + 6);
        assert_eq!(align_of::<PeerKey>(), 8);
        assert_eq!(size_of::<ProxyConfig>(), 4 + 16 + 2 + 2 + 4 + 4 + 4 + 4);
        assert_eq!(size_of::<AgentUsage>(), 5 * 8);
        assert_eq!(size_of::<AgentReleased>(), 2 * 8);
        assert_eq!(ring_cost(size_of::<KernelEvent>()), 80);
        assert_eq!(size_of::<OrigDst>(), 20);
        assert_eq!(
            size_of::<KernelEvent>(),
            4 + 2 + 2 + 4 * 4 + 8 + 16 + 2 + 2 + 4 + 16
        );
        assert_eq!(align_of::<KernelEvent>(), 8);
        assert_eq!(size_of::<UnixKey>(), 8 + 4 + 4 + UNIX_PATH_MAX + 4);
        assert_eq!(size_of::<UnixEvent>(), 4 * 6 + COMM_LEN + 128);
        assert_eq!(align_of::<UnixEvent>(), 8);
        assert_eq!(size_of::<TaskLayout>(), 4 * 8);
        assert_eq!(size_of::<ListenKey>(), 8 + 16 + 2 + 1 + 5);
        assert_eq!(
            size_of::<ProcessEvent>(),
            4 * 6 + 8 + 4 + 4 + 8 + 2 * COMM_LEN
        );
        assert_eq!(align_of::<ProcessEvent>(), 8);
        assert_eq!(size_of::<DirectKey>(), 2 + 2 + 4 + 16);
        assert_eq!(size_of::<DirectWay>(), 8 + 4 + 4 + DIRECT_NAME_MAX);
        assert_eq!(size_of::<DirectConn>(), size_of::<ConnRecord>() + 24 + 16);
        assert_eq!(size_of::<DirectSocket>(), 8 + 8 + 16 + 16 + 2 * 4);
        assert_eq!(
            size_of::<DirectEvent>(),
            4 + 4 + 8 + size_of::<ConnRecord>() + size_of::<DirectSocket>() + 8 + DIRECT_NAME_MAX
        );
        assert_eq!(align_of::<DirectEvent>(), 8);
    }

    #[test]
    fn ip6_words_round_trip() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        assert_eq!(ip6_words_to_bytes(ip6_bytes_to_words(bytes)), bytes);
        assert!(is_v4_mapped(&v4_mapped([10, 0, 0, 1])));
        assert!(!is_v4_mapped(&bytes));
    }

    #[test]
    fn v4_mapped_follows_rfc4291() {
        assert_eq!(
            v4_mapped([127, 0, 0, 1]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
    }
}
