//! Every map the kernel programs use. Maps are pinned by the daemon under its
//! bpffs directory, so they outlive a daemon restart together with the links.

use agentguard_common::{ConnRecord, MAX_TRACKED_CONNECTIONS, PeerKey, ProxyConfig};
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap},
};

/// Where to redirect (proxy listener) and whose sockets to leave alone (the
/// daemon's tgid). Written by the daemon at start; read by connect4/connect6.
#[map]
pub static PROXY_CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

/// Socket cookie → record of a connect() just redirected. Written by
/// connect4/connect6; read and removed by sockops once the handshake is done
/// (the local port exists only then).
#[map]
pub static SOCKET_RECORDS: LruHashMap<u64, ConnRecord> =
    LruHashMap::with_max_entries(MAX_TRACKED_CONNECTIONS, 0);

/// Agent socket's local (ip, port) → record. Written by sockops on
/// ACTIVE_ESTABLISHED; read and removed by the proxy, which finds the entry by
/// the peer address of the connection it accepted.
#[map]
pub static PEER_RECORDS: LruHashMap<PeerKey, ConnRecord> =
    LruHashMap::with_max_entries(MAX_TRACKED_CONNECTIONS, 0);
