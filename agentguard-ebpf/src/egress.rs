//! cgroup_skb/egress: the backstop behind the address hooks. Every packet
//! an agent's socket may legitimately send goes over the loopback device
//! to a loopback address: TCP to the proxy, DNS to its resolver, replies to
//! them. Any other packet got past the redirect some other way and is
//! dropped (the sender gets EPERM), then reported:
//!
//! - an IPv6 routing header (setsockopt or a per-datagram cmsg; RFC 8754
//!   segment routing needs no privilege) or an IPv4 source route sends the
//!   packet to the first hop it names, not to the address the connect or
//!   sendmsg hook rewrote;
//! - an interface chosen by the agent (SO_BINDTODEVICE, IP_UNICAST_IF, or
//!   per datagram IP_PKTINFO / IPV6_PKTINFO, all unprivileged) sends a
//!   packet still addressed to 127.0.0.1 out of that interface, to
//!   whatever neighbour answers for it;
//! - a socket the agent accepted from another host answers that host
//!   directly, without a connect.
//!
//! A direct-way passthrough socket (`direct.rs`) is the exception: its
//! packets go to the upstream it connected to, wherever that is, once
//! the kernel has checked its first send; before that, none may carry data.
//!
//! It runs per packet, so it only reads the fixed IP header, the socket's
//! direct-way state if it has one (and the ports for the report).

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{AF_INET, AF_INET6, event_kind, v4_mapped};
use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{bpf_get_socket_uid, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};

use crate::{
    direct::{self, Egress, TcpHeaders},
    events::{SocketFacts, emit_for_packet},
};

/// cgroup_skb verdicts.
const PASS: i32 = 1;
const DROP: i32 = 0;

/// The loopback device is the first one in every network namespace
/// (net/core/dev.c gives `lo` ifindex 1: LOOPBACK_IFINDEX).
const LOOPBACK_IFINDEX: u32 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HEADER_LEN: usize = 40;

pub fn check(ctx: &SkBuffContext) -> i32 {
    // SAFETY: `skb` is the context pointer the kernel passed in; ifindex (the
    // device the packet leaves by, set before this hook runs) is a readable
    // 4-byte field of __sk_buff.
    let ifindex = unsafe { read_volatile(addr_of!((*ctx.skb.skb).ifindex)) };
    let Some(dst) = destination(ctx) else {
        // Whatever cannot be read is not known to be loopback: drop.
        return DROP;
    };
    // A direct-way passthrough socket is judged by its own state: its
    // packets leave for its upstream, wherever that is.
    match direct::egress(ctx, &dst.ip, || tcp_headers(ctx, &dst)) {
        Egress::Pass => return PASS,
        Egress::Hold => return DROP,
        Egress::Drop => {
            report(ctx, &dst);
            return DROP;
        }
        Egress::NotDirect => {}
    }
    if dst.loopback && ifindex == LOOPBACK_IFINDEX {
        return PASS;
    }
    report(ctx, &dst);
    DROP
}

/// What every packet is judged on. The protocol and port are read only
/// for a packet that is dropped, to report it: the rest pass with two
/// loads.
struct Destination {
    loopback: bool,
    family: u16,
    /// Where the header holds the (next) protocol number.
    protocol_offset: usize,
    /// IPv4 mapped.
    ip: [u8; 16],
    /// Where the transport header would start without extension headers.
    transport_offset: usize,
}

fn destination(ctx: &SkBuffContext) -> Option<Destination> {
    // cgroup_skb programs see the packet from its network header.
    let first: u8 = ctx.load(0).ok()?;
    match first >> 4 {
        4 => {
            let daddr: [u8; 4] = ctx.load(16).ok()?;
            Some(Destination {
                loopback: daddr[0] == 127,
                family: AF_INET,
                protocol_offset: 9,
                ip: v4_mapped(daddr),
                transport_offset: usize::from(first & 0x0f) * 4,
            })
        }
        6 => {
            let daddr: [u8; 16] = ctx.load(24).ok()?;
            Some(Destination {
                loopback: is_ip6_loopback(&daddr),
                family: AF_INET6,
                protocol_offset: 6,
                ip: daddr,
                // With extension headers (a routing header) the transport
                // header is further on, and the next header is not TCP or
                // UDP: the port stays 0.
                transport_offset: IPV6_HEADER_LEN,
            })
        }
        _ => None,
    }
}

/// `::1` only. A v4-mapped address never goes on the wire as IPv6 (the
/// kernel sends IPv4), so an IPv6 packet for `::ffff:127.x` was steered
/// there by the agent and is routed like any non-local address.
fn is_ip6_loopback(ip: &[u8; 16]) -> bool {
    let mut v6_loopback = [0u8; 16];
    v6_loopback[15] = 1;
    *ip == v6_loopback
}

/// The packet's TCP headers as the direct way judges them; `None` if it
/// is not TCP right after the fixed IP header (IPv6 extension headers
/// included).
fn tcp_headers(ctx: &SkBuffContext, dst: &Destination) -> Option<TcpHeaders> {
    let protocol: u8 = ctx.load(dst.protocol_offset).ok()?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let seq: [u8; 4] = ctx.load(dst.transport_offset + 4).ok()?;
    // Data offset: the high nibble of byte 12, in 32-bit words; the flags
    // in byte 13.
    let [offset, flags]: [u8; 2] = ctx.load(dst.transport_offset + 12).ok()?;
    Some(TcpHeaders {
        len: (dst.transport_offset + usize::from(offset >> 4) * 4) as u32,
        seq: u32::from_be_bytes(seq),
        flags,
    })
}

fn dst_port(ctx: &SkBuffContext, protocol: u8, transport_offset: usize) -> u16 {
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return 0;
    }
    ctx.load::<[u8; 2]>(transport_offset + 2)
        .map(u16::from_be_bytes)
        .unwrap_or(0)
}

fn report(ctx: &SkBuffContext, dst: &Destination) {
    let protocol: u8 = ctx.load(dst.protocol_offset).unwrap_or(0);
    let facts = SocketFacts {
        family: dst.family,
        protocol: u16::from(protocol),
        sock_type: 0,
        dst_ip: dst.ip,
        dst_port: dst_port(ctx, protocol, dst.transport_offset),
    };
    let skb = ctx.as_ptr().cast();
    // SAFETY: both helpers only read the socket buffer the kernel passed.
    let (cgroup_id, uid) = unsafe { (bpf_skb_cgroup_id(skb), bpf_get_socket_uid(skb)) };
    emit_for_packet(event_kind::EGRESS_DENIED, &facts, cgroup_id, uid);
}
