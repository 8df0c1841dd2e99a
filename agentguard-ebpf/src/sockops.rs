//! sockops: once an agent's connection to the proxy is established, its local
//! port exists; re-key the connect-time record by (network namespace, local
//! ip, local port), which is the listener's namespace and the peer address
//! the proxy sees on accept().
//!
//! ACTIVE_ESTABLISHED runs before the proxy's accept() can return the
//! connection (measured on this kernel), so the entry is always there in time.
//!
//! The proxy removes the entry when it accepts. One it never accepts (it was
//! killed with the connection in its queue) would otherwise outlive the
//! connection, and a local process outside every agent cgroup that binds
//! the same address and port could then dial the proxy and pass for that
//! agent. So the entry also goes when the socket is torn down: state
//! callbacks are asked for on each socket that gets one. Not when the agent
//! closed first, though: a client that writes its request and closes at
//! once reaches TCP_CLOSE (through FIN_WAIT2 and TIME_WAIT) within a fraction
//! of a second, possibly before a busy proxy accepts; that record is still
//! wanted. Each record is stamped with the time it started waiting, and
//! the daemon forgets those the proxy has not taken for
//! `--kernel-record-max-wait` (a connection whose handshake the proxy's
//! side never completed, its accept queue full, is never accepted); a
//! restarted daemon clears whatever records remain.

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{AF_INET, AF_INET6, ConnRecord, PeerKey, ip6_words_to_bytes, v4_mapped};
use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_sk_storage_delete,
        bpf_sk_storage_get,
    },
    programs::SockOpsContext,
};

use crate::{
    direct,
    maps::{PEER_RECORDS, SOCKET_RECORDS},
    shares, splice,
};

/// include/uapi/linux/bpf.h: BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB. This callback
/// is always invoked; it needs no cb_flags opt-in.
const BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: u32 = 4;
/// BPF_SOCK_OPS_STATE_CB: a TCP state change (args[0] old, args[1] new), on
/// sockets that set BPF_SOCK_OPS_STATE_CB_FLAG.
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 1 << 2;
/// BPF_TCP_* states (include/uapi/linux/bpf.h). CLOSE: the socket is done
/// (after FIN exchange, RST or timeout).
const BPF_TCP_FIN_WAIT1: u32 = 4;
const BPF_TCP_FIN_WAIT2: u32 = 5;
const BPF_TCP_TIME_WAIT: u32 = 6;
const BPF_TCP_CLOSE: u32 = 7;
const BPF_TCP_CLOSING: u32 = 11;

pub struct Skip;

pub fn try_sockops(ctx: &SockOpsContext) -> Result<u32, Skip> {
    let fields = read_fields(ctx);
    match fields.op {
        // A direct-way passthrough socket has no proxy record to re-key.
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB if direct::established(ctx, fields.sk) => Ok(0),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx, &fields),
        BPF_SOCK_OPS_STATE_CB if fields.new_state == BPF_TCP_CLOSE => {
            direct::closed(ctx, fields.sk);
            socket_closed(ctx, &fields)
        }
        _ => Ok(0),
    }
}

/// A socket reached TCP_CLOSE. Not inlined, as [`established`].
#[inline(never)]
fn socket_closed(ctx: &SockOpsContext, fields: &Fields) -> Result<u32, Skip> {
    // Whoever closed first: the splice's count and gate go with the
    // socket (before the address can be reused).
    splice::forget_agent_socket(peer_key(ctx, fields)?);
    if agent_closed_first(fields.old_state) {
        return Ok(0);
    }
    closed(ctx, fields)
}

// Not inlined: its frame and the direct way's are each within the
// verifier's 512 bytes, but not both in one.
#[inline(never)]
fn established(ctx: &SockOpsContext, fields: &Fields) -> Result<u32, Skip> {
    if fields.sk.is_null() {
        return Ok(0);
    }
    let records = core::ptr::from_ref(&SOCKET_RECORDS).cast_mut().cast();
    // SAFETY: `sk` is this callback's full socket (checked non-null); the
    // helper returns its storage in SOCKET_RECORDS, or null.
    let ptr = unsafe { bpf_sk_storage_get(records, fields.sk.cast(), core::ptr::null_mut(), 0) }
        .cast::<ConnRecord>();
    if ptr.is_null() {
        // Not one of ours (e.g. UDP-less loopback traffic the hook let through).
        return Ok(0);
    }
    // SAFETY: non-null storage of this socket, of this type.
    let mut record = unsafe { *ptr };
    // SAFETY: the helper takes no arguments (any program type, Linux 5.8+).
    let now_ns = unsafe { bpf_ktime_get_boot_ns() };
    record.waiting_since_s = (now_ns / 1_000_000_000) as u32;
    // SAFETY: as above; the record is no longer needed on the socket.
    let _ = unsafe { bpf_sk_storage_delete(records, fields.sk.cast()) };
    let key = peer_key(ctx, fields)?;
    // Held to the agent's share here too (connects made at once may all
    // pass connect4's check); without a record the proxy refuses the
    // connection, which is the agent's own.
    let Some(usage) = shares::usage(record.cgroup_id) else {
        return Err(Skip);
    };
    if !shares::record_allowed(usage, record.cgroup_id) {
        // SAFETY: a live map value.
        shares::add(unsafe { &raw mut (*usage).records_refused }, 1);
        return Err(Skip);
    }
    // An entry still under this address belongs to a connection that
    // ended before the proxy took it: it goes, and off its agent's share.
    if let Some(old) = PEER_RECORDS.get_ptr(key) {
        // SAFETY: the pointer came from a successful lookup in this program.
        let old_cgroup = unsafe { (*old).cgroup_id };
        if PEER_RECORDS.remove(key).is_ok() {
            dropped(old_cgroup);
        }
    }
    PEER_RECORDS.insert(key, record, 0).map_err(|_| Skip)?;
    // SAFETY: a live map value.
    shares::add(unsafe { &raw mut (*usage).records_added }, 1);
    // Without the close callback a record the proxy never takes would stay;
    // refuse to leave one that cannot be cleaned up.
    if ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG).is_err() {
        if PEER_RECORDS.remove(key).is_ok() {
            dropped(record.cgroup_id);
        }
        return Err(Skip);
    }
    splice::track_agent_socket(ctx, key);
    Ok(0)
}

/// A record the kernel removed before the proxy took it: no longer part
/// of its agent's share.
fn dropped(cgroup_id: u64) {
    if let Some(usage) = shares::usage(cgroup_id) {
        // SAFETY: a live map value.
        shares::add(unsafe { &raw mut (*usage).records_dropped }, 1);
    }
}

/// States a socket passes through when its own side closed first.
fn agent_closed_first(old_state: u32) -> bool {
    matches!(
        old_state,
        BPF_TCP_FIN_WAIT1 | BPF_TCP_FIN_WAIT2 | BPF_TCP_CLOSING | BPF_TCP_TIME_WAIT
    )
}

/// The socket is gone: its entry goes too, unless the address already
/// belongs to a newer connection (then the entry is that one's).
fn closed(ctx: &SockOpsContext, fields: &Fields) -> Result<u32, Skip> {
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = peer_key(ctx, fields)?;
    let ours = match PEER_RECORDS.get_ptr(key) {
        // SAFETY: the pointer came from a successful lookup in this program.
        Some(ptr) => unsafe { ((*ptr).cookie == cookie).then_some((*ptr).cgroup_id) },
        None => None,
    };
    // Only a successful removal counts: the proxy may have taken it first.
    if let Some(cgroup_id) = ours
        && PEER_RECORDS.remove(key).is_ok()
    {
        dropped(cgroup_id);
    }
    Ok(0)
}

/// The socket's network namespace and local address: what the proxy
/// learns on accept() from its listener's namespace and the peer address.
fn peer_key(ctx: &SockOpsContext, fields: &Fields) -> Result<PeerKey, Skip> {
    let local_ip = match fields.family as u16 {
        AF_INET => v4_mapped(fields.local_ip4.to_ne_bytes()),
        AF_INET6 => ip6_words_to_bytes(fields.local_ip6),
        _ => return Err(Skip),
    };
    // local_port is host byte order in bpf_sock_ops (remote_port is not).
    // SAFETY: the helper only reads the socket behind the context (Linux
    // 5.15+ for sock_ops).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    Ok(PeerKey::new(netns, local_ip, fields.local_port as u16))
}

struct Fields {
    op: u32,
    /// args[0] and args[1]: the old and new state, for BPF_SOCK_OPS_STATE_CB.
    old_state: u32,
    new_state: u32,
    family: u32,
    local_ip4: u32,
    local_ip6: [u32; 4],
    local_port: u32,
    /// The full socket of this callback, or null.
    sk: *mut bpf_sock,
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
            op: read_volatile(addr_of!((*ops).op)),
            old_state: read_volatile(addr_of!((*ops).__bindgen_anon_1.args[0])),
            new_state: read_volatile(addr_of!((*ops).__bindgen_anon_1.args[1])),
            family: read_volatile(addr_of!((*ops).family)),
            local_ip4: read_volatile(addr_of!((*ops).local_ip4)),
            local_ip6: [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ],
            local_port: read_volatile(addr_of!((*ops).local_port)),
            sk: read_volatile(addr_of!((*ops).__bindgen_anon_2.sk)),
        }
    }
}
