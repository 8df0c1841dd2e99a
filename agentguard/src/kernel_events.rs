//! Refusals (and, if enabled, redirects) the kernel programs report through
//! their ring buffer, turned into records with the same identity fields as
//! the proxy's: agent, cgroup, pid, uid, comm, exe.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use agentguard_common::{
    AF_INET, DirectEvent, KernelEvent, NO_OFFSET, ProcessEvent, UnixEvent, UnixKey, event_kind,
    ring_cost,
};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::{
    audit::{AuditSink, Event},
    ebpf::{KernelEvents, Shares},
    live::Live,
};

/// One kernel event, resolved.
#[derive(Debug, Clone, Serialize)]
pub struct KernelEventRecord {
    /// e.g. "udp-denied", "raw-socket-denied".
    pub kind: &'static str,
    /// Whether the kernel refused the operation (EPERM).
    pub refused: bool,
    /// `None` if the cgroup belongs to no agent in the running policy.
    pub agent: Option<String>,
    /// cgroup path relative to the cgroup v2 mount, if known.
    pub cgroup: Option<String>,
    /// The caller's cgroup is below its agent's, not the agent's own: the
    /// kernel keys DNS and Unix-socket decisions by the exact cgroup, so
    /// such callers are refused.
    pub below_agent_cgroup: bool,
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// "ipv4", "ipv6" or "unix".
    pub family: &'static str,
    /// IPPROTO_* and SOCK_* numbers of the socket.
    pub protocol: u16,
    pub sock_type: u16,
    /// The destination asked for; `None` for socket creation.
    pub destination: Option<SocketAddr>,
    /// The Unix socket asked for: a path, or `@name` for an abstract name
    /// (bytes that are not UTF-8 are replaced).
    pub unix_path: Option<String>,
    /// The socket option refused (`sockopt-denied`), e.g. "IPV6_RTHDR".
    pub socket_option: Option<String>,
    /// The process an agent asked for (`process-access-denied`).
    pub target: Option<ProcessTarget>,
    /// The container the caller runs in, when a policy selected it.
    pub container: Option<std::sync::Arc<crate::containers::ContainerInfo>>,
}

/// The other process of a `process-access-denied` event.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessTarget {
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// Its agent, if it runs in (or below) one's cgroup.
    pub agent: Option<String>,
    pub cgroup: Option<String>,
    /// What was asked: "attach" (ptrace, memory, descriptors) or "read"
    /// (/proc/<pid> files that show its state), from PTRACE_MODE_*.
    pub access: &'static str,
    /// The caller's system call, e.g. "ptrace", "process_vm_writev",
    /// "pidfd_getfd", "openat" (/proc/<pid>/mem); `None` if unknown.
    pub syscall: Option<String>,
}

/// Reads the ring buffer until the task is dropped, recording each event
/// as `to_event` makes it. When the audit queue is full this waits for
/// room, leaving records in the ring buffer: an agent that floods refusals
/// fills that fixed-size buffer, where the kernel counts what it cannot
/// queue (`kernel_events_lost`), instead of the daemon's memory.
/// Reports of passthrough's direct way go to `direct` (its connection
/// events are written there), waiting while its queue is full.
pub async fn run(
    events: KernelEvents,
    live: Arc<Live>,
    sink: AuditSink,
    to_event: fn(KernelEventRecord) -> Event,
    direct: Option<tokio::sync::mpsc::Sender<DirectEvent>>,
) {
    let KernelEvents { ring, shares } = events;
    // SAFETY: the RingBuf owns its map fd; it stays open and is the same fd
    // for as long as the AsyncFd owns the RingBuf.
    let registered =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            // Without the reader, refusals still happen; only their records
            // are missing, which the lost counter cannot show. Say it loudly.
            let (_, error) = e.into_parts();
            warn!(%error, "cannot read kernel events; refusals in the kernel will not be recorded");
            return;
        }
    };
    info!("reading kernel events");
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "kernel event ring buffer failed");
                return;
            }
        };
        let mut read = Released::default();
        loop {
            // The item borrows the ring: decode copies what it needs first.
            let record = match guard.get_inner_mut().next() {
                Some(item) => {
                    let record = match direct_report(&item) {
                        Some(report) => Decoded::Direct(report),
                        None => Decoded::Kernel(decode(&item, &live)),
                    };
                    if let Some(cgroup_id) = owner(&item) {
                        read.add(cgroup_id, ring_cost(item.len()));
                    }
                    record
                }
                None => break,
            };
            // Room goes back to each agent every RELEASE_EVERY records and
            // when the ring is drained: at most that many records' room is
            // held back while the audit queue makes the reader wait.
            if read.count >= RELEASE_EVERY {
                read.flush(&shares);
            }
            match record {
                Decoded::Kernel(Some(record)) => sink.record(to_event(record)).await,
                Decoded::Kernel(None) => {}
                // The connection's event is the direct way's to write.
                Decoded::Direct(report) => {
                    if let Some(direct) = &direct {
                        let _ = direct.send(report).await;
                    }
                }
            }
        }
        read.flush(&shares);
        guard.clear_ready();
    }
}

/// One ring record, copied out of the ring.
enum Decoded {
    /// A refusal or redirect; `None` if it could not be read.
    Kernel(Option<KernelEventRecord>),
    /// A report of passthrough's direct way.
    Direct(DirectEvent),
}

/// Records read between two writes of what goes back to the agents.
const RELEASE_EVERY: usize = 64;

/// Ring bytes read since the last flush, by agent (cgroup).
#[derive(Default)]
struct Released {
    bytes: Vec<(u64, u64)>,
    count: usize,
}

impl Released {
    fn add(&mut self, cgroup_id: u64, bytes: u64) {
        self.count += 1;
        match self.bytes.iter_mut().find(|(id, _)| *id == cgroup_id) {
            Some((_, b)) => *b += bytes,
            None => self.bytes.push((cgroup_id, bytes)),
        }
    }

    fn flush(&mut self, shares: &Shares) {
        for (cgroup_id, bytes) in self.bytes.drain(..) {
            shares.release(cgroup_id, 0, bytes);
        }
        self.count = 0;
    }
}

/// The cgroup whose share a record was charged to (see
/// agentguard-ebpf/src/events.rs: the caller's, or the socket's).
fn owner(item: &[u8]) -> Option<u64> {
    let kind = u32::from_ne_bytes(item.get(..4)?.try_into().ok()?);
    Some(match kind {
        event_kind::DIRECT_OPENED | event_kind::DIRECT_REFUSED => {
            read_record::<DirectEvent>(item)?.record.cgroup_id
        }
        event_kind::UNIX_CONNECT_DENIED | event_kind::UNIX_SENDMSG_DENIED => {
            read_record::<UnixEvent>(item)?.key.cgroup_id
        }
        event_kind::PROCESS_ACCESS_DENIED => read_record::<ProcessEvent>(item)?.cgroup_id,
        _ => read_record::<KernelEvent>(item)?.cgroup_id,
    })
}

/// A report of passthrough's direct way, if the record is one.
fn direct_report(item: &[u8]) -> Option<DirectEvent> {
    let kind = u32::from_ne_bytes(item.get(..4)?.try_into().ok()?);
    match kind {
        event_kind::DIRECT_OPENED | event_kind::DIRECT_REFUSED => read_record(item),
        _ => None,
    }
}

/// Both record types open with their `kind`, which says which one it is.
fn decode(item: &[u8], live: &Live) -> Option<KernelEventRecord> {
    let kind = u32::from_ne_bytes(item.get(..4)?.try_into().ok()?);
    match kind {
        event_kind::UNIX_CONNECT_DENIED | event_kind::UNIX_SENDMSG_DENIED => {
            Some(resolve_unix(&read_record::<UnixEvent>(item)?, live))
        }
        event_kind::PROCESS_ACCESS_DENIED => {
            Some(resolve_process(&read_record::<ProcessEvent>(item)?, live))
        }
        _ => Some(resolve(&read_record::<KernelEvent>(item)?, live)),
    }
}

/// A whole `T` from a ring-buffer record, or `None` if it is too short.
fn read_record<T: aya::Pod>(item: &[u8]) -> Option<T> {
    (item.len() >= size_of::<T>()).then(|| {
        // SAFETY: `item` holds at least size_of::<T>() bytes; T is Pod (any
        // bit pattern valid); read_unaligned copes with the ring buffer's
        // 8-byte record alignment either way.
        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) }
    })
}

fn comm_text(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn exe_of(tgid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{tgid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

/// `@name` for an abstract address, else the path; unambiguous whatever
/// the agent put in it: control characters, `\\` and bytes that are not
/// UTF-8 are escaped (`\\xNN`), and a path that itself starts with `@`
/// (relative) is shown as `./@...`.
pub fn unix_path_text(key: &UnixKey) -> String {
    match key.sun_path().split_first() {
        Some((0, name)) => format!("@{}", escape(name)),
        Some((b'@', _)) => format!("./{}", escape(key.sun_path())),
        _ => escape(key.sun_path()),
    }
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                for b in c.to_string().bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Who did it, as both record types carry it.
struct Caller<'a> {
    kind: u32,
    cgroup_id: u64,
    tgid: u32,
    pid: u32,
    uid: u32,
    gid: u32,
    comm: &'a [u8],
}

/// A record with the caller's identity resolved and no socket details yet.
fn identity(caller: Caller<'_>, live: &Live) -> KernelEventRecord {
    let state = live.load();
    let found = state.agents.locate(caller.cgroup_id);
    let below_agent_cgroup = found.is_some()
        && !state
            .agents
            .agents()
            .iter()
            .any(|a| a.cgroup.id == caller.cgroup_id);
    let container = state.agents.container_of(caller.cgroup_id);
    KernelEventRecord {
        container,
        kind: kind_name(caller.kind),
        refused: caller.kind < event_kind::TCP_REDIRECTED,
        agent: found.as_ref().map(|(agent, _)| agent.to_string()),
        cgroup: found.map(|(_, path)| path),
        below_agent_cgroup,
        cgroup_id: caller.cgroup_id,
        pid: caller.tgid,
        tid: caller.pid,
        uid: caller.uid,
        gid: caller.gid,
        comm: comm_text(caller.comm),
        exe: exe_of(caller.tgid),
        family: "",
        protocol: 0,
        sock_type: 0,
        destination: None,
        unix_path: None,
        socket_option: None,
        target: None,
    }
}

/// include/linux/ptrace.h: PTRACE_MODE_ATTACH.
const PTRACE_MODE_ATTACH: u32 = 0x02;

fn resolve_process(event: &ProcessEvent, live: &Live) -> KernelEventRecord {
    let caller = Caller {
        kind: event.kind,
        cgroup_id: event.cgroup_id,
        tgid: event.tgid,
        pid: event.pid,
        uid: event.uid,
        gid: event.gid,
        comm: &event.comm,
    };
    let found = live.load().agents.locate(event.target_cgroup_id);
    let target = ProcessTarget {
        pid: event.target_tgid,
        comm: comm_text(&event.target_comm),
        cgroup_id: event.target_cgroup_id,
        agent: found.as_ref().map(|(agent, _)| agent.to_string()),
        cgroup: found.map(|(_, path)| path),
        access: if event.mode & PTRACE_MODE_ATTACH != 0 {
            "attach"
        } else {
            "read"
        },
        syscall: (event.syscall != NO_OFFSET).then(|| syscall_name(event.syscall)),
    };
    KernelEventRecord {
        family: "process",
        target: Some(target),
        ..identity(caller, live)
    }
}

/// The system calls that reach the process-access check, by name; others
/// by number.
fn syscall_name(nr: u32) -> String {
    use nix::libc;
    let names: &[(libc::c_long, &str)] = &[
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
        (libc::SYS_process_vm_writev, "process_vm_writev"),
        (libc::SYS_pidfd_getfd, "pidfd_getfd"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_openat2, "openat2"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_open, "open"),
        (libc::SYS_readlinkat, "readlinkat"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_readlink, "readlink"),
        (libc::SYS_kcmp, "kcmp"),
        (libc::SYS_perf_event_open, "perf_event_open"),
        (libc::SYS_process_madvise, "process_madvise"),
        (libc::SYS_get_robust_list, "get_robust_list"),
        (libc::SYS_read, "read"),
        (libc::SYS_pread64, "pread64"),
        (libc::SYS_getdents64, "getdents64"),
        (libc::SYS_statx, "statx"),
        (libc::SYS_newfstatat, "newfstatat"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == i64::from(nr))
        .map_or_else(|| format!("syscall {nr}"), |(_, name)| (*name).to_owned())
}

fn resolve_unix(event: &UnixEvent, live: &Live) -> KernelEventRecord {
    let caller = Caller {
        kind: event.kind,
        cgroup_id: event.key.cgroup_id,
        tgid: event.tgid,
        pid: event.pid,
        uid: event.uid,
        gid: event.gid,
        comm: &event.comm,
    };
    KernelEventRecord {
        family: "unix",
        sock_type: event.sock_type as u16,
        unix_path: Some(unix_path_text(&event.key)),
        ..identity(caller, live)
    }
}

fn resolve(event: &KernelEvent, live: &Live) -> KernelEventRecord {
    let caller = Caller {
        kind: event.kind,
        cgroup_id: event.cgroup_id,
        tgid: event.tgid,
        pid: event.pid,
        uid: event.uid,
        gid: event.gid,
        comm: &event.comm,
    };
    if event.kind == event_kind::SOCKOPT_DENIED {
        // The record carries the option's level where the protocol goes
        // and its number where the port goes.
        return KernelEventRecord {
            family: if event.protocol == IPPROTO_IPV6 {
                "ipv6"
            } else {
                "ipv4"
            },
            socket_option: Some(socket_option_name(event.protocol, event.dst_port)),
            ..identity(caller, live)
        };
    }
    let destination = (event.dst_port != 0 || event.dst_ip != [0; 16]).then(|| {
        let v6 = Ipv6Addr::from(event.dst_ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, event.dst_port)
    });
    KernelEventRecord {
        family: if event.family == AF_INET {
            "ipv4"
        } else {
            "ipv6"
        },
        protocol: event.protocol,
        sock_type: event.sock_type,
        destination,
        ..identity(caller, live)
    }
}

const IPPROTO_IPV6: u16 = 41;

/// The names in include/uapi/linux/in.h and in6.h of the options the
/// setsockopt program refuses.
fn socket_option_name(level: u16, name: u16) -> String {
    match (level, name) {
        (1, 25) => "SO_BINDTODEVICE".to_owned(),
        (1, 62) => "SO_BINDTOIFINDEX".to_owned(),
        (0, 4) => "IP_OPTIONS".to_owned(),
        (0, 50) => "IP_UNICAST_IF".to_owned(),
        (IPPROTO_IPV6, 76) => "IPV6_UNICAST_IF".to_owned(),
        (IPPROTO_IPV6, 5) => "IPV6_2292RTHDR".to_owned(),
        (IPPROTO_IPV6, 6) => "IPV6_2292PKTOPTIONS".to_owned(),
        (IPPROTO_IPV6, 57) => "IPV6_RTHDR".to_owned(),
        _ => format!("level {level} option {name}"),
    }
}

pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        event_kind::UDP_DENIED => "udp-denied",
        event_kind::RAW_SOCKET_DENIED => "raw-socket-denied",
        event_kind::ICMP_SOCKET_DENIED => "icmp-socket-denied",
        event_kind::TRANSPORT_DENIED => "transport-denied",
        event_kind::DIRECT_PROXY_DENIED => "direct-proxy-denied",
        event_kind::DNS_UNROUTABLE => "dns-unroutable",
        event_kind::RECORD_FAILED => "record-failed",
        event_kind::UNIX_CONNECT_DENIED => "unix-connect-denied",
        event_kind::UNIX_SENDMSG_DENIED => "unix-sendmsg-denied",
        event_kind::EGRESS_DENIED => "egress-denied",
        event_kind::SOCKOPT_DENIED => "sockopt-denied",
        event_kind::PROCESS_ACCESS_DENIED => "process-access-denied",
        event_kind::AGENT_REVOKED => "agent-revoked",
        event_kind::BIND_DENIED => "bind-denied",
        event_kind::RECORD_SHARE_EXCEEDED => "connection-share-exceeded",
        event_kind::TCP_REDIRECTED => "tcp-redirected",
        event_kind::DNS_REDIRECTED => "dns-redirected",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::UnixSocketAddr;

    /// Keys made the way the daemon makes them for its allow-list, so the
    /// text an event shows is the entry that would have allowed it.
    fn key(entry: &str) -> UnixKey {
        UnixKey::new(1, &UnixSocketAddr::parse(entry).unwrap().sun_path()).unwrap()
    }

    #[test]
    fn unix_addresses_read_as_policies_write_them() {
        for entry in ["/run/docker.sock", "@dbus-session", "/run/ünïcode.sock"] {
            assert_eq!(unix_path_text(&key(entry)), entry);
        }
    }

    #[test]
    fn what_agents_put_in_addresses_cannot_pass_for_something_else() {
        let raw = |bytes: &[u8]| unix_path_text(&UnixKey::new(1, bytes).unwrap());
        assert_eq!(
            raw(b"@x"),
            "./@x",
            "a relative path is not an abstract name"
        );
        assert_eq!(raw(b"\0x\n"), "@x\\x0a");
        assert_eq!(raw(b"/a\\b"), "/a\\x5cb");
        assert_eq!(raw(b"/a\xffb"), "/a\\xffb");
        assert_eq!(raw(b""), "");
        assert!(UnixKey::new(1, &[b'a'; 109]).is_none());
    }
}
