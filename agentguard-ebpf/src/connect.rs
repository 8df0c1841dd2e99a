//! cgroup/connect4 and cgroup/connect6: record who connects where, then point
//! the socket at the proxy.
//!
//! The local port does not exist yet at connect() time, so the record is keyed
//! by the socket cookie here and re-keyed by sockops once the handshake is done.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use agentguard_common::{
    AF_INET, AF_INET6, ConnRecord, ProxyConfig, ip6_bytes_to_words, ip6_words_to_bytes,
    is_v4_mapped, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    programs::SockAddrContext,
};

use crate::{
    ALLOW, DENY,
    maps::{PROXY_CONFIG, SOCKET_RECORDS},
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
// MPTCP sockets fire connect4 too and fall back to plain TCP against the proxy.
const IPPROTO_MPTCP: u32 = 262;

/// Any error here means "refuse": the entry points map `Err` to DENY.
pub struct Refuse;

pub fn try_connect4(ctx: &SockAddrContext) -> Result<i32, Refuse> {
    let sa = ctx.sock_addr;
    if let Some(verdict) = non_tcp_verdict(sa) {
        return Ok(verdict);
    }
    let cfg = proxy_config()?;
    if is_daemon(cfg) {
        return Ok(ALLOW);
    }
    // SAFETY: `sa` is the context pointer the kernel passed to this program;
    // the verifier allows 4-byte reads of user_ip4 and user_port.
    let (dst4, port) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    let dst = v4_mapped(dst4.to_ne_bytes());
    let proxy = v4_mapped(cfg.ip4);
    if !record(ctx, cfg, AF_INET, dst, port_from_ctx(port), proxy)? {
        return Ok(ALLOW);
    }
    // SAFETY: connect4 programs may rewrite user_ip4 and user_port with
    // 4-byte stores; that is the redirect.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(cfg.ip4));
        write_volatile(addr_of_mut!((*sa).user_port), port_to_ctx(cfg.port));
    }
    Ok(ALLOW)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Result<i32, Refuse> {
    let sa = ctx.sock_addr;
    if let Some(verdict) = non_tcp_verdict(sa) {
        return Ok(verdict);
    }
    let cfg = proxy_config()?;
    if is_daemon(cfg) {
        return Ok(ALLOW);
    }
    // SAFETY: context pointer from the kernel; 4-byte reads of user_ip6[i] and
    // user_port are allowed in connect6.
    let (words, port) = unsafe {
        (
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ],
            read_volatile(addr_of!((*sa).user_port)),
        )
    };
    let dst = ip6_words_to_bytes(words);
    // A v6 socket dialling ::ffff:a.b.c.d talks IPv4 on the wire: send it to
    // the IPv4 listener in the same mapped form, so the socket stays valid.
    let proxy = if is_v4_mapped(&dst) {
        v4_mapped(cfg.ip4)
    } else {
        cfg.ip6
    };
    if !record(ctx, cfg, AF_INET6, dst, port_from_ctx(port), proxy)? {
        return Ok(ALLOW);
    }
    let new = ip6_bytes_to_words(proxy);
    // SAFETY: connect6 programs may rewrite user_ip6[i] and user_port with
    // 4-byte stores.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), new[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), new[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), new[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), new[3]);
        write_volatile(addr_of_mut!((*sa).user_port), port_to_ctx(cfg.port));
    }
    Ok(ALLOW)
}

/// TCP (and MPTCP) is redirected; UDP is left to the UDP hooks (a later
/// issue); any other transport a guarded process tries (SCTP, ...) is refused,
/// because the proxy could not see it.
fn non_tcp_verdict(sa: *mut bpf_sock_addr) -> Option<i32> {
    // SAFETY: context pointer from the kernel; type and protocol are readable.
    let (ty, proto) = unsafe {
        (
            read_volatile(addr_of!((*sa).type_)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    match (ty, proto) {
        (SOCK_STREAM, IPPROTO_TCP | IPPROTO_MPTCP) => None,
        (SOCK_DGRAM, IPPROTO_UDP) => Some(ALLOW),
        _ => Some(DENY),
    }
}

/// An unconfigured map (port 0) means no daemon ever set up the redirect:
/// refuse rather than let the connection out.
fn proxy_config() -> Result<&'static ProxyConfig, Refuse> {
    match PROXY_CONFIG.get(0) {
        Some(cfg) if cfg.port != 0 => Ok(cfg),
        _ => Err(Refuse),
    }
}

/// The daemon's own upstream connections must never loop back into itself.
fn is_daemon(cfg: &ProxyConfig) -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.daemon_tgid
}

/// Stores the record for this socket. Returns whether the caller should
/// rewrite the destination to the proxy.
fn record(
    ctx: &SockAddrContext,
    cfg: &ProxyConfig,
    family: u16,
    dst: [u8; 16],
    dst_port: u16,
    proxy: [u8; 16],
) -> Result<bool, Refuse> {
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if dst == proxy && dst_port == cfg.port {
        // Either an agentguard program earlier in this same connect() already
        // redirected the socket (old and new daemon overlap for an instant
        // while a restarted daemon swaps its links), or the agent dials the
        // proxy port itself, which would let it pick its own "original
        // destination": refuse that.
        return if SOCKET_RECORDS.get_ptr(cookie).is_some() {
            Ok(false)
        } else {
            Err(Refuse)
        };
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let record = ConnRecord {
        orig_ip: dst,
        orig_port: dst_port,
        family,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        // SAFETY: no arguments; returns the caller's cgroup v2 id.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        cookie,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // Without a record the proxy could not attribute the connection; refuse
    // now instead of redirecting a connection the proxy will drop anyway.
    SOCKET_RECORDS
        .insert(cookie, record, 0)
        .map_err(|_| Refuse)?;
    Ok(true)
}

/// user_port holds the port in network byte order in its low 16 bits.
fn port_from_ctx(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

fn port_to_ctx(port: u16) -> u32 {
    port.to_be() as u32
}
