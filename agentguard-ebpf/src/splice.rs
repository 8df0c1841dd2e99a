//! Passthrough at kernel speed: once the proxy has decided a connection
//! passes through and has dialled the upstream, it puts both sockets in
//! [`SPLICE`], each under the *other* socket's cookie. This stream verdict
//! program then runs on every segment either socket receives and sends it
//! out of its partner, so the bytes never reach user space.
//!
//! The proxy still owns both sockets: it watches each for end of stream
//! and errors, propagates a half-close once what came before it has been
//! sent on ([`SPLICE_BYTES`] says how much that is), and closes both. A
//! closed socket leaves the map by itself.
//!
//! The agent's own sends skip a hop: sockops puts each agent socket that
//! reaches the proxy in [`AGENT_SOCKETS`] (only while the daemon has the
//! splice on, [`SPLICE_ON`]), whose message program
//! [`agentguard_splice_send`] runs on each of its `sendmsg` calls. Until
//! the proxy opens the direct way, the data goes to the proxy's socket as
//! usual (counted in [`SPLICE_PASSED`]); once it has, the program pushes it
//! straight into the upstream socket in the agent's own system call: no
//! loopback TCP to the proxy, no worker. The proxy opens it only when all
//! that went the usual way has reached the upstream socket, and the gate
//! ([`SPLICE_GATE`]) holds the count it saw then: a send that went the
//! usual way since keeps the direct way shut, so no byte ever overtakes an
//! earlier one. The other direction still goes through the stream verdict
//! (the kernel offers a verdict only on receive there).
//!
//! The maps live here rather than in `maps.rs`: nothing else uses them,
//! and they are never pinned (the sockets die with the daemon anyway).

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{AF_INET, AF_INET6, PeerKey, ip6_words_to_bytes, v4_mapped};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, BPF_NOEXIST, sk_action},
    helpers::{bpf_get_socket_cookie, generated::bpf_get_netns_cookie},
    macros::{map, sk_msg, stream_verdict},
    maps::{Array, HashMap, LruHashMap, SockHash},
    programs::{SkBuffContext, SkMsgContext, SockOpsContext},
};

use crate::shares;

/// Spliced sockets at once: two per connection. Past it the proxy's insert
/// fails and that connection is relayed in user space.
const MAX_SPLICED_SOCKETS: u32 = 65_536;

/// Socket cookie → the socket its data goes out of (its partner). Written
/// by the daemon only (insert when spliced; a closed socket is removed by
/// the kernel); read here.
#[map]
pub static SPLICE: SockHash<u64> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Socket cookie → bytes this program has handed to its partner. Created
/// (zero) by the daemon before the socket enters [`SPLICE`], removed by it
/// when the connection ends; only added to here. The daemon compares it
/// with what the partner has sent before passing on a half-close, so that
/// its FIN never overtakes data still queued in the kernel.
#[map]
pub static SPLICE_BYTES: HashMap<u64, u64> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Agent sockets connected to the proxy, under their [`PeerKey`], while
/// [`SPLICE_ON`] says so: the sockets [`agentguard_splice_send`] runs on.
/// Written by sockops; the daemon removes the ones it does not splice, and
/// the kernel removes a socket when it closes.
#[map]
pub static AGENT_SOCKETS: SockHash<PeerKey> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Agent socket's [`PeerKey`] → the upstream socket its sends go out of,
/// once [`SPLICE_GATE`] lets them. Written by the daemon only.
#[map]
pub static SPLICE_UPSTREAM: SockHash<PeerKey> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Agent socket's [`PeerKey`] → bytes its sends took the usual way (to the
/// proxy's socket). Only added to here; the daemon removes an entry when
/// its connection is done with it. LRU: an agent socket the daemon never
/// saw (it was stopped) cannot fill the map for good.
#[map]
pub static SPLICE_PASSED: LruHashMap<PeerKey, u64> =
    LruHashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Agent socket's [`PeerKey`] → the [`SPLICE_PASSED`] count at which the
/// daemon found everything sent the usual way arrived upstream. Sends go
/// the direct way only while the count still equals it. Written by the
/// daemon only.
#[map]
pub static SPLICE_GATE: HashMap<PeerKey, u64> = HashMap::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Index 0 non-zero: the daemon splices passthrough connections, so agent
/// sockets go into [`AGENT_SOCKETS`]. Zero (the default) leaves every agent
/// socket as the kernel made it.
#[map]
pub static SPLICE_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Puts an agent socket that has just connected to the proxy in
/// [`AGENT_SOCKETS`], if the daemon splices. A socket that does not go in
/// is relayed as before; nothing here can refuse a connection.
pub fn track_agent_socket(ctx: &SockOpsContext, mut key: PeerKey) {
    if SPLICE_ON.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    // SAFETY: the context pointer the kernel passed to this sockops program.
    let ops = unsafe { &mut *ctx.ops };
    let _ = AGENT_SOCKETS.update(&mut key, ops, u64::from(BPF_ANY));
}

/// Runs on each `sendmsg` of an agent socket in [`AGENT_SOCKETS`]: the
/// direct way when the gate is open, the usual way (counted) otherwise.
#[sk_msg]
pub fn agentguard_splice_send(ctx: SkMsgContext) -> u32 {
    let Some(mut key) = msg_peer_key(&ctx) else {
        return sk_action::SK_PASS;
    };
    let passed = SPLICE_PASSED.get_ptr_mut(key);
    // SAFETY: pointers from successful lookups in this program.
    let count = passed.map_or(0, |p| unsafe { *p });
    if let Some(gate) = SPLICE_GATE.get_ptr(key)
        // SAFETY: as above.
        && unsafe { *gate } == count
        && SPLICE_UPSTREAM.redirect_msg(&ctx, &mut key, 0) == i64::from(sk_action::SK_PASS)
    {
        return sk_action::SK_PASS;
    }
    // Without a redirect set, SK_PASS sends the data on to the proxy.
    let size = u64::from(ctx.size());
    match passed {
        Some(p) => shares::add(p, size),
        None => {
            if SPLICE_PASSED
                .insert(key, size, u64::from(BPF_NOEXIST))
                .is_err()
                && let Some(p) = SPLICE_PASSED.get_ptr_mut(key)
            {
                shares::add(p, size);
            }
        }
    }
    sk_action::SK_PASS
}

/// The sending socket's [`PeerKey`], built exactly as sockops built it.
fn msg_peer_key(ctx: &SkMsgContext) -> Option<PeerKey> {
    let msg = ctx.msg;
    // SAFETY: `msg` is the context pointer the kernel passed in; these are
    // 4-byte reads of fields sk_msg programs may read, each at a constant
    // offset (see sockops.rs on why volatile).
    let (family, local_ip4, local_ip6, local_port) = unsafe {
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
    let ip = match family as u16 {
        AF_INET => v4_mapped(local_ip4.to_ne_bytes()),
        AF_INET6 => ip6_words_to_bytes(local_ip6),
        _ => return None,
    };
    // SAFETY: the helper only reads the socket behind the context (Linux
    // 5.15+ for sk_msg).
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // local_port is host byte order in sk_msg_md, as in bpf_sock_ops.
    Some(PeerKey::new(netns, ip, local_port as u16))
}

/// Sends every segment a spliced socket receives out of its partner. A
/// socket without a partner (being torn down) drops what it receives:
/// nothing is ever delivered to the proxy's own reads, so no byte reaches
/// the proxy unseen by this program or bypasses it.
#[stream_verdict]
pub fn agentguard_splice(ctx: SkBuffContext) -> u32 {
    // SAFETY: the helper takes the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let len = u64::from(ctx.len());
    if len == 0 {
        // A bare FIN. Redirected, it would reach the partner's send queue
        // as an empty send, which the kernel takes for a broken pipe and
        // reports as an error on the partner. The proxy passes half-closes
        // on itself.
        return sk_action::SK_DROP;
    }
    let verdict = SPLICE.redirect_skb(&ctx, cookie, 0);
    if verdict == i64::from(sk_action::SK_PASS)
        && let Some(sent) = SPLICE_BYTES.get_ptr_mut(cookie)
    {
        shares::add(sent, len);
    }
    verdict as u32
}
