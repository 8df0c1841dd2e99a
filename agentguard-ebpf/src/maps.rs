//! Every map the kernel programs use. Maps are pinned by the daemon under its
//! bpffs directory, so they outlive a daemon restart together with the links.

use agentguard_common::{
    AgentReleased, AgentUsage, ConnRecord, KERNEL_EVENTS_BYTES, ListenKey,
    MAX_LISTEN_ALLOW_ENTRIES, MAX_TRACKED_CONNECTIONS, MAX_UNIX_ALLOW_ENTRIES, OrigDst, PeerKey,
    ProxyConfig, TaskLayout, UnixKey,
};
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};

/// Where to redirect (proxy listener) and whose sockets to leave alone (the
/// daemon's tgid). Written by the daemon at start; read by every program.
#[map]
pub static PROXY_CONFIG: Array<ProxyConfig> = Array::with_max_entries(1, 0);

/// Socket → record of a connect() just redirected. Written by
/// connect4/connect6; read and removed by sockops once the handshake is done
/// (the local port exists only then). Socket-local storage: it lives and
/// dies with the agent's socket and counts against the agent's own memory,
/// so no agent's flood of connects can push out another agent's record (a
/// shared LRU map would).
#[btf_map]
pub static SOCKET_RECORDS: SkStorage<ConnRecord> = SkStorage::new();

/// Agent socket's local (ip, port) → record. Written by sockops on
/// ACTIVE_ESTABLISHED; read and removed by the proxy, which finds the entry by
/// the peer address of the connection it accepted. Not an LRU: a full map
/// refuses the newest connection rather than evict another agent's, and
/// each agent's entries are held to its share (AGENT_USAGE).
#[map]
pub static PEER_RECORDS: HashMap<PeerKey, ConnRecord> =
    HashMap::with_max_entries(MAX_TRACKED_CONNECTIONS, 0);

/// Socket → destination it was redirected away from. Written by connect4/6
/// and sendmsg4/6; read by getpeername4/6 and recvmsg4/6 so the agent sees
/// the peer it asked for. Socket-local storage, like SOCKET_RECORDS.
#[btf_map]
pub static CONN_ORIG: SkStorage<OrigDst> = SkStorage::new();

/// Agent cgroup id → port of that agent's DNS resolver (UDP and TCP, on the
/// proxy's addresses). Written by the daemon for every guarded cgroup; read
/// when a guarded process sends DNS. The port tells the resolver whose query
/// it is, so DNS needs no per-packet record.
#[map]
pub static AGENT_DNS: HashMap<u64, u16> = HashMap::with_max_entries(4096, 0);

/// (agent cgroup id, Unix socket address) pairs the agent may connect or
/// send to. Written by the daemon from each agent's `unix_sockets`; read by
/// the connect_unix and sendmsg_unix programs. Anything absent is refused.
#[map]
pub static UNIX_ALLOW: HashMap<UnixKey, u8> = HashMap::with_max_entries(MAX_UNIX_ALLOW_ENTRIES, 0);

/// Refusals (and, if enabled, redirects) for the daemon to turn into audit
/// events. Written by every program; read by the daemon.
#[map]
pub static KERNEL_EVENTS: RingBuf = RingBuf::with_byte_size(KERNEL_EVENTS_BYTES, 0);

/// Counters, per CPU; index STAT_EVENTS_LOST counts ring-buffer records
/// dropped because the buffer was full. Written here; read by the daemon.
#[map]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Where the process-access program finds a task's cgroup, tgid and comm
/// (offsets from the running kernel's BTF). Written by the daemon before it
/// attaches the program; read by it on every check.
#[map]
pub static TASK_LAYOUT: Array<TaskLayout> = Array::with_max_entries(1, 0);

/// (agent cgroup id, address, port) an agent may bind. Written by the
/// daemon from each agent's `listen`; read by bind4 and bind6. Anything
/// absent (but port 0) is refused.
#[map]
pub static LISTEN_ALLOW: HashMap<ListenKey, u8> =
    HashMap::with_max_entries(MAX_LISTEN_ALLOW_ENTRIES, 0);

/// Agent cgroup ids that are revoked: every connect, datagram and bind of
/// theirs (and of cgroups below) is refused. Written by the daemon; read by
/// connect4/6, sendmsg4/6 and bind4/6. Pinned, so a revocation survives the
/// daemon's restart.
#[map]
pub static REVOKED: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// Agent cgroup id → what it uses of PEER_RECORDS and KERNEL_EVENTS.
/// Written by the programs only (atomic adds); read by them and the daemon.
#[map]
pub static AGENT_USAGE: HashMap<u64, AgentUsage> = HashMap::with_max_entries(4096, 0);

/// Agent cgroup id → what the daemon took back of its share (records it
/// took, event bytes it read). Written by the daemon only; read by the
/// programs.
#[map]
pub static AGENT_RELEASED: HashMap<u64, AgentReleased> = HashMap::with_max_entries(4096, 0);
