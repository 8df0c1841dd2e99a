//! cgroup/getpeername4|6 and cgroup/recvmsg4|6: a redirected socket reports
//! the peer the agent asked for, not the proxy or resolver it really talks
//! to, so clients that check their peer keep working unmodified.

use core::ptr::{addr_of_mut, write_volatile};

use agentguard_common::ip6_bytes_to_words;
use aya_ebpf::programs::SockAddrContext;

use agentguard_common::OrigDst;

use crate::{connect::port_to_ctx, maps::CONN_ORIG};

/// The destination the socket was redirected away from, if it was.
fn orig(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: the helper reads the socket behind the context; a non-null
    // result points at this socket's storage, of this type.
    unsafe {
        let p = CONN_ORIG.get_ptr_mut(ctx);
        if p.is_null() { None } else { Some(*p) }
    }
}

/// Rewrites the reported peer of an IPv4 socket. Always allows: these hooks
/// only change what the agent is told.
pub fn rewrite_peer4(ctx: &SockAddrContext) {
    let Some(orig) = orig(ctx) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: getpeername4/recvmsg4 programs may rewrite user_ip4 and
    // user_port with 4-byte stores.
    unsafe {
        write_volatile(
            addr_of_mut!((*sa).user_ip4),
            u32::from_ne_bytes([orig.ip[12], orig.ip[13], orig.ip[14], orig.ip[15]]),
        );
        write_volatile(addr_of_mut!((*sa).user_port), port_to_ctx(orig.port));
    }
}

pub fn rewrite_peer6(ctx: &SockAddrContext) {
    let Some(orig) = orig(ctx) else {
        return;
    };
    let words = ip6_bytes_to_words(orig.ip);
    let sa = ctx.sock_addr;
    // SAFETY: getpeername6/recvmsg6 programs may rewrite user_ip6[i] and
    // user_port with 4-byte stores.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), words[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), words[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), words[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), words[3]);
        write_volatile(addr_of_mut!((*sa).user_port), port_to_ctx(orig.port));
    }
}
