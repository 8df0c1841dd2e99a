//! cgroup/setsockopt: refuses the options that route packets past the
//! redirect, so the agent sees EPERM where it asked rather than a connect
//! that hangs while the egress backstop drops its packets.
//!
//! - IPv6 routing headers (`IPV6_RTHDR`, RFC 3542 §7; the RFC 2292 forms
//!   `IPV6_2292RTHDR` and `IPV6_2292PKTOPTIONS`, which can carry one): the
//!   connect6/sendmsg6 hooks rewrite the destination address, but the
//!   kernel sends the packet to the first segment of the routing header.
//!   Setting one needs no privilege (RFC 8754 type 4).
//! - IPv4 options (`IP_OPTIONS`): a loose or strict source route does the
//!   same for IPv4.
//! - An interface chosen for the socket (`SO_BINDTODEVICE`,
//!   `SO_BINDTOIFINDEX`, `IP_UNICAST_IF`, `IPV6_UNICAST_IF`; unprivileged):
//!   packets addressed to the proxy on 127.0.0.1 would leave by that
//!   interface instead of the loopback.
//!
//! - An upper-layer protocol (`TCP_ULP`, e.g. kTLS) on a socket that took
//!   passthrough's direct way: the kernel checks that connection's first
//!   send as the agent writes it, which with kTLS is not what goes out.
//!
//! Every other option passes untouched.

use core::ptr::{addr_of, read_volatile};

use agentguard_common::event_kind;
use aya_ebpf::programs::SockoptContext;

use crate::{
    ALLOW, DENY,
    events::{SocketFacts, emit},
};

/// include/uapi/linux/in.h and in6.h (SOL_IP = IPPROTO_IP, SOL_IPV6 =
/// IPPROTO_IPV6).
const SOL_SOCKET: i32 = 1;
const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const SO_BINDTODEVICE: i32 = 25;
const SO_BINDTOIFINDEX: i32 = 62;
const IP_OPTIONS: i32 = 4;
const IP_UNICAST_IF: i32 = 50;
const IPV6_UNICAST_IF: i32 = 76;
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_2292RTHDR: i32 = 5;
const IPV6_RTHDR: i32 = 57;
/// include/uapi/linux/tcp.h (SOL_TCP = IPPROTO_TCP).
const SOL_TCP: i32 = 6;
const TCP_ULP: i32 = 31;

pub fn check(ctx: &SockoptContext) -> i32 {
    let opt = ctx.sockopt;
    // SAFETY: `opt` is the context pointer the kernel passed in; level and
    // optname are readable 4-byte fields of bpf_sockopt.
    let (level, name) = unsafe {
        (
            read_volatile(addr_of!((*opt).level)),
            read_volatile(addr_of!((*opt).optname)),
        )
    };
    let refused = match level {
        SOL_SOCKET => matches!(name, SO_BINDTODEVICE | SO_BINDTOIFINDEX),
        SOL_IP => matches!(name, IP_OPTIONS | IP_UNICAST_IF),
        SOL_IPV6 => matches!(
            name,
            IPV6_RTHDR | IPV6_2292RTHDR | IPV6_2292PKTOPTIONS | IPV6_UNICAST_IF
        ),
        SOL_TCP if name == TCP_ULP => {
            // SAFETY: as above; `sk` is a field setsockopt programs may
            // read (the full socket, or null).
            let sk = unsafe { read_volatile(addr_of!((*opt).__bindgen_anon_1.sk)) };
            crate::direct::took_the_way(sk)
        }
        _ => false,
    };
    if !refused {
        return ALLOW;
    }
    // The level goes where the protocol goes, the option's number where the
    // port goes (KernelEvent documents this for SOCKOPT_DENIED).
    emit(
        event_kind::SOCKOPT_DENIED,
        &SocketFacts {
            family: 0,
            protocol: level as u16,
            sock_type: 0,
            dst_ip: [0; 16],
            dst_port: name as u16,
        },
    );
    DENY
}
