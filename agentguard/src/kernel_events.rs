//! Refusals (and, if enabled, redirects) the kernel programs report through
//! their ring buffer, turned into records with the same identity fields as
//! the proxy's: agent, cgroup, pid, uid, comm, exe.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use agentguard_common::{AF_INET, KernelEvent, event_kind};
use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::live::Live;

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
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// "ipv4" or "ipv6".
    pub family: &'static str,
    /// IPPROTO_* and SOCK_* numbers of the socket.
    pub protocol: u16,
    pub sock_type: u16,
    /// The destination asked for; `None` for socket creation.
    pub destination: Option<SocketAddr>,
}

pub type OnKernelEvent = Arc<dyn Fn(KernelEventRecord) + Send + Sync>;

/// Reads the ring buffer until the task is dropped.
pub async fn run(ring: RingBuf<MapData>, live: Arc<Live>, on_event: OnKernelEvent) {
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
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<KernelEvent>() {
                continue;
            }
            // SAFETY: the kernel program writes whole `KernelEvent`s (repr(C),
            // any bit pattern valid); read_unaligned copes with the ring
            // buffer's 8-byte record alignment either way.
            let event: KernelEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<KernelEvent>()) };
            on_event(resolve(&event, &live));
        }
        guard.clear_ready();
    }
}

fn resolve(event: &KernelEvent, live: &Live) -> KernelEventRecord {
    let state = live.load();
    let found = state.agents.locate(event.cgroup_id);
    let comm_end = event
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(event.comm.len());
    let destination = (event.dst_port != 0 || event.dst_ip != [0; 16]).then(|| {
        let v6 = Ipv6Addr::from(event.dst_ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, event.dst_port)
    });
    KernelEventRecord {
        kind: kind_name(event.kind),
        refused: event.kind < event_kind::TCP_REDIRECTED,
        agent: found.as_ref().map(|(agent, _)| agent.to_string()),
        cgroup: found.map(|(_, path)| path),
        cgroup_id: event.cgroup_id,
        pid: event.tgid,
        tid: event.pid,
        uid: event.uid,
        gid: event.gid,
        comm: String::from_utf8_lossy(&event.comm[..comm_end]).into_owned(),
        exe: std::fs::read_link(format!("/proc/{}/exe", event.tgid))
            .ok()
            .map(|p| p.display().to_string()),
        family: if event.family == AF_INET {
            "ipv4"
        } else {
            "ipv6"
        },
        protocol: event.protocol,
        sock_type: event.sock_type,
        destination,
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
        event_kind::TCP_REDIRECTED => "tcp-redirected",
        event_kind::DNS_REDIRECTED => "dns-redirected",
        _ => "unknown",
    }
}
