//! cgroup/sock_create: an allow-list of the sockets an agent may create.
//! Only TCP (and MPTCP) and UDP sockets, whose connects and datagrams the
//! other hooks redirect or refuse, are allowed. Raw, ICMP ("ping"), SCTP and
//! any other inet socket would bypass those address hooks (an unconnected
//! SCTP or raw sendmsg fires no sendmsg hook), so they are refused here.
//! (The hook runs for AF_INET and AF_INET6; AF_PACKET needs CAP_NET_RAW,
//! which agents must not hold.)

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{AF_INET, AF_INET6, event_kind};
use aya_ebpf::programs::SockContext;

use crate::{
    ALLOW, DENY,
    events::{SocketFacts, emit},
    redirect::{Transport, transport},
};

const SOCK_RAW: u16 = 3;
const IPPROTO_ICMP: u16 = 1;
const IPPROTO_ICMPV6: u16 = 58;

pub fn check(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: `sk` is the context pointer the kernel passed in; family, type
    // and protocol are readable in sock_create programs.
    let (family, ty, proto) = unsafe {
        (
            read_volatile(addr_of!((*sk).family)) as u16,
            read_volatile(addr_of!((*sk).type_)) as u16,
            read_volatile(addr_of!((*sk).protocol)) as u16,
        )
    };
    let facts = SocketFacts {
        family,
        protocol: proto,
        sock_type: ty,
        dst_ip: [0; 16],
        dst_port: 0,
    };
    if family != AF_INET && family != AF_INET6 {
        return ALLOW;
    }
    if ty == SOCK_RAW {
        emit(event_kind::RAW_SOCKET_DENIED, &facts);
        return DENY;
    }
    let icmp = (family == AF_INET && proto == IPPROTO_ICMP)
        || (family == AF_INET6 && proto == IPPROTO_ICMPV6);
    if icmp {
        emit(event_kind::ICMP_SOCKET_DENIED, &facts);
        return DENY;
    }
    // socket(AF_INET, SOCK_STREAM, 0) reaches this hook with the protocol
    // already resolved to IPPROTO_TCP (inet_create fills it in first).
    if transport(ty, proto) == Transport::Other {
        emit(event_kind::TRANSPORT_DENIED, &facts);
        return DENY;
    }
    ALLOW
}
