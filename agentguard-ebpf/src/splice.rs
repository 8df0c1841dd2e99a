//! Passthrough with the agent's sends in the kernel: sockops puts each
//! agent socket that reaches the proxy in [`AGENT_SOCKETS`] (only while
//! the daemon has this on, [`SPLICE_ON`]), whose message program
//! [`agentguard_splice_send`] runs on each of its `sendmsg` calls. Until
//! the proxy opens the direct way, the data goes to the proxy's socket as
//! usual (counted in [`SPLICE_PASSED`]), and the proxy copies it on; once
//! the proxy has opened it, the program pushes the data straight into the
//! upstream socket ([`SPLICE_UPSTREAM`]) in the agent's own system call:
//! no loopback TCP to the proxy, no copy through user space, no worker.
//!
//! The proxy opens it only when all that went the usual way has entered
//! the upstream socket, and the gate ([`SPLICE_GATE`]) holds the count it
//! saw then: a send the usual way since keeps the direct way shut, so no
//! byte ever overtakes an earlier one, whatever the client does.
//!
//! The upstream's answers still pass through the proxy: the kernel offers
//! a verdict only where data is received, and a stream verdict's redirect
//! to another socket waits for the psock's backlog worker (a kworker),
//! which measured slower than the proxy's own copy (docs/benchmarks.md).
//!
//! The maps live here rather than in `maps.rs`: nothing else uses them.
//! They are not pinned, but the pinned sockops program keeps them (and
//! [`SPLICE_ON`]) alive after the daemon exits; what they hold then is
//! harmless, since the upstream sockets died with the daemon and a socket
//! leaves a sockhash as it closes.

use agentguard_common::PeerKey;
use aya_ebpf::{
    bindings::{BPF_ANY, sk_action},
    macros::{map, sk_msg},
    maps::{Array, HashMap, LruHashMap, SockHash},
    programs::{SkMsgContext, SockOpsContext},
};

use crate::{shares, sk_msg};

/// Agent sockets (and upstream sockets) these maps hold at once. Past it
/// sockops leaves a socket out, or the proxy's insert fails, and that
/// connection is relayed in user space only.
const MAX_SPLICED_SOCKETS: u32 = 65_536;

/// Agent sockets connected to the proxy, under their [`PeerKey`], while
/// [`SPLICE_ON`] says so: the sockets [`agentguard_splice_send`] runs on.
/// Written by sockops; the daemon removes the ones it handles itself once
/// it has decided, and the kernel removes a socket when it closes.
#[map]
pub static AGENT_SOCKETS: SockHash<PeerKey> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Agent socket's [`PeerKey`] → the upstream socket its sends go out of,
/// once [`SPLICE_GATE`] lets them. Written by the daemon only.
#[map]
pub static SPLICE_UPSTREAM: SockHash<PeerKey> = SockHash::with_max_entries(MAX_SPLICED_SOCKETS, 0);

/// Agent socket's [`PeerKey`] → bytes its sends took the usual way (to the
/// proxy's socket). Made (zero) by sockops when the socket is tracked,
/// only added to by the program, removed when the socket closes or the
/// daemon is done with it. LRU, so that entries nobody removed (a daemon
/// killed mid-connection) cannot fill it for good; an evicted count only
/// shuts the direct way.
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
/// [`AGENT_SOCKETS`], if the daemon splices, with a fresh count of zero.
/// A socket without a count never goes the direct way, so one that cannot
/// get both (a full map) is left out and simply relayed; nothing here can
/// refuse a connection.
pub fn track_agent_socket(ctx: &SockOpsContext, mut key: PeerKey) {
    if SPLICE_ON.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    // A gate left under this address by an earlier connection is not this
    // one's.
    let _ = SPLICE_GATE.remove(key);
    if SPLICE_PASSED.insert(key, 0, u64::from(BPF_ANY)).is_err() {
        return;
    }
    // SAFETY: the context pointer the kernel passed to this sockops program.
    let ops = unsafe { &mut *ctx.ops };
    if AGENT_SOCKETS
        .update(&mut key, ops, u64::from(BPF_ANY))
        .is_err()
    {
        let _ = SPLICE_PASSED.remove(key);
    }
}

/// Forgets a closed agent socket's count and gate (the socket itself left
/// [`AGENT_SOCKETS`] as it closed).
pub fn forget_agent_socket(key: PeerKey) {
    if SPLICE_ON.get(0).copied().unwrap_or(0) == 0 {
        return;
    }
    let _ = SPLICE_PASSED.remove(key);
    let _ = SPLICE_GATE.remove(key);
}

/// Runs on each `sendmsg` of an agent socket in [`AGENT_SOCKETS`]: the
/// direct way when the gate is open, the usual way (counted) otherwise.
/// A socket whose count is gone (evicted, or taken by the daemon) only
/// ever goes the usual way: a count is never made here, so a send can
/// never go direct on a count that missed bytes.
#[sk_msg]
pub fn agentguard_splice_send(ctx: SkMsgContext) -> u32 {
    let Some(mut key) = msg_peer_key(&ctx) else {
        return sk_action::SK_PASS;
    };
    let Some(passed) = SPLICE_PASSED.get_ptr_mut(key) else {
        return sk_action::SK_PASS;
    };
    // SAFETY: pointers from successful lookups in this program.
    if let Some(gate) = SPLICE_GATE.get_ptr(key)
        && unsafe { *gate == *passed }
        && SPLICE_UPSTREAM.redirect_msg(&ctx, &mut key, 0) == i64::from(sk_action::SK_PASS)
    {
        return sk_action::SK_PASS;
    }
    // Without a redirect set, SK_PASS sends the data on to the proxy; the
    // count moving past the gate keeps the direct way shut from now on.
    shares::add(passed, u64::from(ctx.size()));
    sk_action::SK_PASS
}

/// The sending socket's [`PeerKey`], built exactly as sockops built it.
fn msg_peer_key(ctx: &SkMsgContext) -> Option<PeerKey> {
    let local = sk_msg::local(ctx)?;
    Some(PeerKey::new(local.netns, local.ip, local.port))
}
