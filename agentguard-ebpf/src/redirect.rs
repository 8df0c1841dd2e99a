//! Decisions shared by the connect and sendmsg hooks: where a guarded
//! socket's traffic goes, and what is remembered about it.

use agentguard_common::{ConnRecord, OrigDst, ProxyConfig, event_kind};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    programs::SockAddrContext,
};

use crate::{
    events::{SocketFacts, emit},
    maps::{AGENT_DNS, CONN_ORIG, PROXY_CONFIG, SOCKET_RECORDS},
    shares,
};

pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;
// MPTCP sockets fire connect4 too and fall back to plain TCP against the proxy.
pub const IPPROTO_MPTCP: u16 = 262;
pub const DNS_PORT: u16 = 53;

/// Any error means "refuse": the entry points map `Err` to DENY.
pub struct Refuse;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Other,
}

pub fn transport(sock_type: u16, protocol: u16) -> Transport {
    match (sock_type, protocol) {
        (SOCK_STREAM, IPPROTO_TCP | IPPROTO_MPTCP) => Transport::Tcp,
        (SOCK_DGRAM, IPPROTO_UDP) => Transport::Udp,
        _ => Transport::Other,
    }
}

/// An unconfigured map (port 0) means no daemon ever set up the redirect, or
/// the daemon stopped: refuse rather than let traffic out.
pub fn proxy_config() -> Result<&'static ProxyConfig, Refuse> {
    match PROXY_CONFIG.get(0) {
        Some(cfg) if cfg.port != 0 => Ok(cfg),
        _ => Err(Refuse),
    }
}

/// The configuration whatever the port (the shares hold while the daemon
/// is down too).
pub fn proxy_config_any() -> Option<&'static ProxyConfig> {
    PROXY_CONFIG.get(0)
}

pub fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper only reads the socket behind the context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Where a redirected socket goes instead.
pub struct Target {
    pub ip: [u8; 16],
    pub port: u16,
}

/// TCP to anything but DNS: the proxy. Records who connects where, under
/// the socket cookie, for sockops to re-key. Returns `None` when the socket
/// already points at the proxy because an agentguard program earlier in this
/// same connect() redirected it (old and new daemon overlap for an instant
/// while a restarted daemon swaps its links).
pub fn tcp_to_proxy(
    ctx: &SockAddrContext,
    cfg: &ProxyConfig,
    facts: &SocketFacts,
    proxy_ip: [u8; 16],
) -> Result<Option<Target>, Refuse> {
    let cookie = cookie(ctx);
    if facts.dst_ip == proxy_ip && facts.dst_port == cfg.port {
        // SAFETY: the helper reads the socket behind the context.
        if !unsafe { SOCKET_RECORDS.get_ptr_mut(ctx) }.is_null() {
            return Ok(None);
        }
        // The agent dials the proxy port itself, which would let it pick
        // its own "original destination".
        emit(event_kind::DIRECT_PROXY_DENIED, facts);
        return Err(Refuse);
    }
    // SAFETY: no arguments; returns the caller's cgroup v2 id.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // Past its share of records waiting for the proxy, the agent's connect
    // fails here, before it could take room another agent needs.
    match shares::usage(cgroup_id) {
        Some(usage) if shares::record_allowed(usage, cgroup_id) => {}
        Some(usage) => {
            // SAFETY: a live map value.
            shares::add(unsafe { &raw mut (*usage).records_refused }, 1);
            emit(event_kind::RECORD_SHARE_EXCEEDED, facts);
            return Err(Refuse);
        }
        None => {
            emit(event_kind::RECORD_FAILED, facts);
            return Err(Refuse);
        }
    }
    // Without a record the proxy could not attribute the connection; refuse
    // now instead of redirecting a connection the proxy will drop anyway.
    // SAFETY: the helper reads the socket behind the context and creates
    // zeroed storage for it if there is none.
    let slot = unsafe { SOCKET_RECORDS.get_or_insert_ptr_mut(ctx, None) };
    if slot.is_null() {
        emit(event_kind::RECORD_FAILED, facts);
        return Err(Refuse);
    }
    // SAFETY: a non-null pointer to this socket's storage, of this type.
    unsafe { write_record(slot, facts, cgroup_id, cookie) };
    remember_orig(ctx, facts);
    if cfg.flags & agentguard_common::CONFIG_REPORT_REDIRECTS != 0 {
        emit(event_kind::TCP_REDIRECTED, facts);
    }
    Ok(Some(Target {
        ip: proxy_ip,
        port: cfg.port,
    }))
}

/// Writes who connects where into `slot`, in place: a record on the stack
/// would cost stack space, which the verifier limits to 512 bytes over the
/// whole call chain.
///
/// # Safety
/// `slot` must point to live storage of a [`ConnRecord`].
#[inline(always)]
pub unsafe fn write_record(
    slot: *mut ConnRecord,
    facts: &SocketFacts,
    cgroup_id: u64,
    cookie: u64,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: the caller's promise. Field by field: a whole record built
    // first would take stack room of its own.
    unsafe {
        (*slot).orig_ip = facts.dst_ip;
        (*slot).orig_port = facts.dst_port;
        (*slot).family = facts.family;
        (*slot).tgid = (pid_tgid >> 32) as u32;
        (*slot).pid = pid_tgid as u32;
        (*slot).uid = uid_gid as u32;
        (*slot).gid = (uid_gid >> 32) as u32;
        // Stamped by sockops once the connection is established.
        (*slot).waiting_since_s = 0;
        (*slot).cgroup_id = cgroup_id;
        (*slot).cookie = cookie;
        (*slot).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}

/// DNS (UDP or TCP to port 53), whatever server the agent named: its
/// agent's resolver in the daemon. The resolver's port identifies the agent.
pub fn dns_to_resolver(
    ctx: &SockAddrContext,
    cfg: &ProxyConfig,
    facts: &SocketFacts,
    resolver_ip: [u8; 16],
) -> Result<Target, Refuse> {
    // SAFETY: no arguments; returns the caller's cgroup v2 id.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: plain read of a u16 value; the map is only updated whole.
    let Some(port) = (unsafe { AGENT_DNS.get(cgroup_id) }).copied() else {
        emit(event_kind::DNS_UNROUTABLE, facts);
        return Err(Refuse);
    };
    remember_orig(ctx, facts);
    if cfg.flags & agentguard_common::CONFIG_REPORT_REDIRECTS != 0 {
        emit(event_kind::DNS_REDIRECTED, facts);
    }
    Ok(Target {
        ip: resolver_ip,
        port,
    })
}

/// Keeps the original destination for getpeername/recvmsg. Losing it (map
/// full) only costs transparency, never containment.
fn remember_orig(ctx: &SockAddrContext, facts: &SocketFacts) {
    // SAFETY: as for SOCKET_RECORDS above.
    let slot = unsafe { CONN_ORIG.get_or_insert_ptr_mut(ctx, None) };
    if !slot.is_null() {
        // SAFETY: a non-null pointer to this socket's storage, of this type.
        unsafe {
            *slot = OrigDst {
                ip: facts.dst_ip,
                port: facts.dst_port,
                family: facts.family,
            }
        };
    }
}
