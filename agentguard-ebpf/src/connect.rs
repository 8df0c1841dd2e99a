//! cgroup/connect4 and cgroup/connect6: TCP goes to the proxy, DNS to the
//! agent's resolver, any other UDP connect and any other transport is
//! refused (EPERM) and reported.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use agentguard_common::{
    AF_INET, AF_INET6, event_kind, ip6_bytes_to_words, ip6_words_to_bytes, is_v4_mapped, v4_mapped,
};
use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};

use crate::{
    ALLOW,
    events::{SocketFacts, emit},
    redirect::{
        DNS_PORT, Refuse, Target, Transport, dns_to_resolver, proxy_config, tcp_to_proxy, transport,
    },
};

pub fn try_connect4(ctx: &SockAddrContext) -> Result<i32, Refuse> {
    let sa = ctx.sock_addr;
    let facts = facts4(sa);
    // Checked here, not in decide(): the verifier limits the stack of the
    // whole call chain, and decide's is the deepest.
    crate::revoke::check(&facts)?;
    let target = decide(ctx, &facts, v4_mapped(cfg_ip4()?))?;
    if let Some(target) = target {
        crate::direct::forget_connect(ctx);
        // SAFETY: connect4 programs may rewrite user_ip4 and user_port with
        // 4-byte stores; that is the redirect.
        unsafe {
            write_volatile(
                addr_of_mut!((*sa).user_ip4),
                u32::from_ne_bytes([target.ip[12], target.ip[13], target.ip[14], target.ip[15]]),
            );
            write_volatile(addr_of_mut!((*sa).user_port), port_to_ctx(target.port));
        }
    }
    Ok(ALLOW)
}

pub fn try_connect6(ctx: &SockAddrContext) -> Result<i32, Refuse> {
    let sa = ctx.sock_addr;
    let facts = facts6(sa);
    crate::revoke::check(&facts)?;
    let cfg = proxy_config()?;
    // A v6 socket dialling ::ffff:a.b.c.d talks IPv4 on the wire: send it to
    // the IPv4 listener in the same mapped form, so the socket stays valid.
    let local = if is_v4_mapped(&facts.dst_ip) {
        v4_mapped(cfg.ip4)
    } else {
        cfg.ip6
    };
    if let Some(target) = decide(ctx, &facts, local)? {
        crate::direct::forget_connect(ctx);
        write_ip6(sa, target);
    }
    Ok(ALLOW)
}

/// `None`: leave the socket as it is. Not inlined: the callers' frames and
/// the deepest chain below it (the direct way's, the proxy's record) fit
/// the verifier's 512 bytes only apart.
#[inline(never)]
fn decide(
    ctx: &SockAddrContext,
    facts: &SocketFacts,
    local: [u8; 16],
) -> Result<Option<Target>, Refuse> {
    let kind = transport(facts.sock_type, facts.protocol);
    if kind == Transport::Other {
        emit(event_kind::TRANSPORT_DENIED, facts);
        return Err(Refuse);
    }
    // No exemption by pid: the daemon runs outside every agent cgroup (it
    // refuses to start inside one), and a pid-based exemption could be
    // inherited by an agent process that gets a dead daemon's pid reused.
    let cfg = proxy_config()?;
    match kind {
        _ if facts.dst_port == DNS_PORT => dns_to_resolver(ctx, cfg, facts, local).map(Some),
        // A passthrough address the agent may reach directly: left as it
        // is, its first send checked by the kernel (direct.rs).
        Transport::Tcp if crate::direct::connect(ctx, cfg, facts) => Ok(None),
        Transport::Tcp => tcp_to_proxy(ctx, cfg, facts, local),
        // Connected UDP to anything but DNS (QUIC included): refused, so
        // clients fall back to TCP, which the proxy sees.
        _ => {
            emit(event_kind::UDP_DENIED, facts);
            Err(Refuse)
        }
    }
}

fn cfg_ip4() -> Result<[u8; 4], Refuse> {
    Ok(proxy_config()?.ip4)
}

pub fn facts4(sa: *mut bpf_sock_addr) -> SocketFacts {
    // SAFETY: `sa` is the context pointer the kernel passed to this program;
    // 4-byte reads of these fields are allowed in sock_addr programs.
    let (ip, port, ty, proto) = unsafe {
        (
            read_volatile(addr_of!((*sa).user_ip4)),
            read_volatile(addr_of!((*sa).user_port)),
            read_volatile(addr_of!((*sa).type_)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    SocketFacts {
        family: AF_INET,
        protocol: proto as u16,
        sock_type: ty as u16,
        dst_ip: v4_mapped(ip.to_ne_bytes()),
        dst_port: port_from_ctx(port),
    }
}

pub fn facts6(sa: *mut bpf_sock_addr) -> SocketFacts {
    // SAFETY: as in facts4; user_ip6[i] are 4-byte readable.
    let (words, port, ty, proto) = unsafe {
        (
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ],
            read_volatile(addr_of!((*sa).user_port)),
            read_volatile(addr_of!((*sa).type_)),
            read_volatile(addr_of!((*sa).protocol)),
        )
    };
    SocketFacts {
        family: AF_INET6,
        protocol: proto as u16,
        sock_type: ty as u16,
        dst_ip: ip6_words_to_bytes(words),
        dst_port: port_from_ctx(port),
    }
}

pub fn write_ip6(sa: *mut bpf_sock_addr, target: Target) {
    let new = ip6_bytes_to_words(target.ip);
    // SAFETY: connect6/sendmsg6 programs may rewrite user_ip6[i] and
    // user_port with 4-byte stores.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), new[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), new[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), new[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), new[3]);
        write_volatile(addr_of_mut!((*sa).user_port), port_to_ctx(target.port));
    }
}

/// user_port holds the port in network byte order in its low 16 bits.
pub fn port_from_ctx(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

pub fn port_to_ctx(port: u16) -> u32 {
    port.to_be() as u32
}
