//! cgroup/sendmsg4 and cgroup/sendmsg6 (unconnected UDP): DNS datagrams go
//! to the agent's resolver whatever server they name; every other datagram
//! (QUIC/HTTP3 included) is refused with EPERM, so clients fall back to TCP.

use core::ptr::{addr_of_mut, write_volatile};

use agentguard_common::{event_kind, is_v4_mapped, v4_mapped};
use aya_ebpf::programs::SockAddrContext;

use crate::{
    ALLOW,
    connect::{facts4, facts6, port_to_ctx, write_ip6},
    events::emit,
    redirect::{DNS_PORT, Refuse, dns_to_resolver, proxy_config},
};

pub fn try_sendmsg4(ctx: &SockAddrContext) -> Result<i32, Refuse> {
    let sa = ctx.sock_addr;
    let facts = facts4(sa);
    crate::revoke::check(&facts)?;
    let cfg = proxy_config()?;
    if facts.dst_port != DNS_PORT {
        emit(event_kind::UDP_DENIED, &facts);
        return Err(Refuse);
    }
    let target = dns_to_resolver(ctx, cfg, &facts, v4_mapped(cfg.ip4))?;
    // SAFETY: sendmsg4 programs may rewrite user_ip4 and user_port.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(cfg.ip4));
        write_volatile(addr_of_mut!((*sa).user_port), port_to_ctx(target.port));
    }
    Ok(ALLOW)
}

pub fn try_sendmsg6(ctx: &SockAddrContext) -> Result<i32, Refuse> {
    let sa = ctx.sock_addr;
    let facts = facts6(sa);
    crate::revoke::check(&facts)?;
    let cfg = proxy_config()?;
    if facts.dst_port != DNS_PORT {
        emit(event_kind::UDP_DENIED, &facts);
        return Err(Refuse);
    }
    let local = if is_v4_mapped(&facts.dst_ip) {
        v4_mapped(cfg.ip4)
    } else {
        cfg.ip6
    };
    let target = dns_to_resolver(ctx, cfg, &facts, local)?;
    write_ip6(sa, target);
    Ok(ALLOW)
}
