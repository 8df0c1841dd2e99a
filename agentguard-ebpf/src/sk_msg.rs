//! What a message program reads of the socket it runs on: its network
//! namespace and local address, as the splice program keys its maps and
//! the direct way names a connection. One reader, so both read the same
//! fields the same way.

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{AF_INET, AF_INET6, ip6_words_to_bytes, v4_mapped};
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, programs::SkMsgContext,
};

/// The sending socket's end of the connection.
pub struct Local {
    pub netns: u64,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// An IPv4 address v4-mapped.
    pub ip: [u8; 16],
    /// Host byte order, as `sk_msg_md` gives it (and `bpf_sock_ops`).
    pub port: u16,
}

/// The local end of the socket behind `ctx`; `None` for a family other
/// than IPv4 and IPv6.
#[inline(always)]
pub fn local(ctx: &SkMsgContext) -> Option<Local> {
    let msg = ctx.msg;
    // SAFETY: `msg` is the context pointer the kernel passed in; these are
    // 4-byte reads of fields sk_msg programs may read, each at a constant
    // offset (see sockops.rs on why volatile).
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(addr_of!((*msg).family)),
            read_volatile(addr_of!((*msg).local_ip4)),
            [
                read_volatile(addr_of!((*msg).local_ip6[0])),
                read_volatile(addr_of!((*msg).local_ip6[1])),
                read_volatile(addr_of!((*msg).local_ip6[2])),
                read_volatile(addr_of!((*msg).local_ip6[3])),
            ],
            read_volatile(addr_of!((*msg).local_port)),
        )
    };
    let family = family as u16;
    let ip = match family {
        AF_INET => v4_mapped(ip4.to_ne_bytes()),
        AF_INET6 => ip6_words_to_bytes(ip6),
        _ => return None,
    };
    // SAFETY: the helper only reads the socket behind the context (Linux
    // 5.15+ for sk_msg).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Some(Local {
        netns,
        family,
        ip,
        port: port as u16,
    })
}
