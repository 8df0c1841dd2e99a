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
//! The maps live here rather than in `maps.rs`: nothing else uses them,
//! and they are never pinned (the sockets die with the daemon anyway).

use aya_ebpf::{
    EbpfContext as _,
    bindings::sk_action,
    helpers::bpf_get_socket_cookie,
    macros::{map, stream_verdict},
    maps::{HashMap, SockHash},
    programs::SkBuffContext,
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
