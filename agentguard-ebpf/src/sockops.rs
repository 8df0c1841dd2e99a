//! sockops: once an agent's connection to the proxy is established, its local
//! port exists; re-key the connect-time record by (local ip, local port), which
//! is the peer address the proxy sees on accept().
//!
//! ACTIVE_ESTABLISHED runs before the proxy's accept() can return the
//! connection (measured on this kernel), so the entry is always there in time.

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{AF_INET, AF_INET6, PeerKey, ip6_words_to_bytes, v4_mapped};
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, programs::SockOpsContext,
};

use crate::maps::{PEER_RECORDS, SOCKET_RECORDS};

/// include/uapi/linux/bpf.h: BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB. This callback
/// is always invoked; it needs no cb_flags opt-in.
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;

pub struct Skip;

pub fn try_sockops(ctx: &SockOpsContext) -> Result<u32, Skip> {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return Ok(0);
    }
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Copy the record out before touching the map again: an LRU entry may be
    // reused under us once removed.
    let record = match SOCKET_RECORDS.get_ptr(cookie) {
        // SAFETY: the pointer came from a successful lookup in this program.
        Some(ptr) => unsafe { *ptr },
        // Not one of ours (e.g. UDP-less loopback traffic the hook let through).
        None => return Ok(0),
    };
    let fields = read_fields(ctx);
    let local_ip = match fields.family as u16 {
        AF_INET => v4_mapped(fields.local_ip4.to_ne_bytes()),
        AF_INET6 => ip6_words_to_bytes(fields.local_ip6),
        _ => return Err(Skip),
    };
    // local_port is host byte order in bpf_sock_ops (remote_port is not).
    let key = PeerKey::new(local_ip, fields.local_port as u16);
    PEER_RECORDS.insert(key, record, 0).map_err(|_| Skip)?;
    let _ = SOCKET_RECORDS.remove(cookie);
    Ok(0)
}

struct Fields {
    family: u32,
    local_ip4: u32,
    local_ip6: [u32; 4],
    local_port: u32,
}

/// Reads every context field this program needs, unconditionally and with
/// volatile loads. The verifier only accepts context loads at a constant
/// offset from the context register; left to itself, LLVM computes
/// `ctx + offset` once and dereferences it inside a branch, which the
/// verifier refuses ("dereference of modified ctx ptr").
fn read_fields(ctx: &SockOpsContext) -> Fields {
    let ops = ctx.ops;
    // SAFETY: `ops` is the context pointer the kernel passed in; these are
    // 4-byte reads of fields sock_ops programs may read.
    unsafe {
        Fields {
            family: read_volatile(addr_of!((*ops).family)),
            local_ip4: read_volatile(addr_of!((*ops).local_ip4)),
            local_ip6: [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ],
            local_port: read_volatile(addr_of!((*ops).local_port)),
        }
    }
}
