//! Passthrough's direct way (`--passthrough-relay direct`): a connection
//! the policy would relay untouched goes straight to its upstream, and the
//! kernel makes the checks the proxy makes on the relay's way.
//!
//! - connect4/6 ([`connect`]): a TCP connect of an agent to an address
//!   agentguard's resolver gave that agent for a passthrough name, on a
//!   port that name may be reached on ([`DIRECT_WAYS`], written by the
//!   daemon, each way ending with its DNS answer's TTL), is not redirected.
//!   Who connects where is kept on the socket ([`DIRECT_CONN`]), as for a
//!   redirected connection.
//! - sockops ([`established`]): once connected, the socket goes under the
//!   message program ([`DIRECT_SOCKETS`]).
//! - the message program ([`check_send`]) reads the first send: a TLS
//!   ClientHello whose server name is the way's name opens the connection
//!   (tracked in [`DIRECT_OPEN`] and reported, or refused if neither can
//!   be done); anything else refuses it, and none of its sends ever goes.
//!   The daemon writes the connection's audit event from the report and
//!   takes the socket out of [`DIRECT_SOCKETS`], so that later sends pay
//!   for no program.
//! - the egress check ([`egress`]): until a direct-way connection is open,
//!   no packet of it carries data (data of a TCP Fast Open connect, or
//!   anything else that reached the socket without the message program,
//!   is dropped and refuses the connection), and every packet of it goes
//!   to the address it connected to.
//!
//! The daemon closes open ones (revocation, stop) through sock_diag, by
//! what [`DIRECT_OPEN`] holds; sockops forgets them as they close. No way
//! is taken, no connection opens and no packet of an open one goes
//! without the daemon's lease ([`DIRECT_LEASE`]), which it renews while it
//! runs.

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{
    AF_INET, CONFIG_DIRECT_PASSTHROUGH, DIRECT_NAME_MAX, DirectConn, DirectEvent, DirectKey,
    DirectSocket, DirectWay, MAX_DIRECT_WAYS, MAX_TRACKED_CONNECTIONS, ProxyConfig, direct_refusal,
    direct_state, event_kind, ip6_words_to_bytes, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, bpf_sock, sk_action},
    btf_maps::SkStorage,
    helpers::generated::{
        bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_msg_pull_data,
        bpf_sk_fullsock, bpf_sk_storage_get,
    },
    macros::{btf_map, map, sk_msg},
    maps::{Array, HashMap, SockHash},
    programs::{SkBuffContext, SkMsgContext, SockAddrContext, SockOpsContext},
};

use crate::{
    events::{SocketFacts, reserve},
    maps::AGENT_DNS,
    redirect::{cookie, write_record},
    shares, sk_msg,
};

/// Sockets waiting for their first send at once: as many as the agents'
/// shares of kernel records hold (each waiting socket counts in its
/// agent's), so that one agent cannot take another's place. Past it
/// sockops cannot put one under the message program, and that connection
/// is refused.
const MAX_DIRECT_SOCKETS: u32 = MAX_TRACKED_CONNECTIONS;

/// (agent, address, port) → the passthrough name the address stands for.
/// Written by the daemon from its resolver's answers; read by connect4/6
/// and the message program. Pinned, so that old and new programs agree
/// while a restarted daemon swaps its links; a restarted daemon clears it.
#[map]
pub static DIRECT_WAYS: HashMap<DirectKey, DirectWay> =
    HashMap::with_max_entries(MAX_DIRECT_WAYS, 0);

/// Socket → its direct-way state. Made by connect4/6; read by sockops, the
/// message program and the egress check. Socket-local storage, like
/// SOCKET_RECORDS: it lives and dies with the socket. Pinned.
#[btf_map]
pub static DIRECT_CONN: SkStorage<DirectConn> = SkStorage::new();

/// Socket cookie → direct-way socket waiting for its first send: the
/// sockets [`agentguard_direct_send`] runs on. Written by sockops; the
/// daemon removes each once it has its report, and the kernel when the
/// socket closes.
#[map]
pub static DIRECT_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_DIRECT_SOCKETS, 0);

/// Socket cookie → open direct-way connection: what the daemon needs to
/// close it. Written by the message program, removed by sockops when the
/// socket closes; each entry counts against its agent's share of kernel
/// records while it lasts. Pinned: a restarted daemon can still close
/// connections opened before it started.
#[map]
pub static DIRECT_OPEN: HashMap<u64, DirectSocket> =
    HashMap::with_max_entries(MAX_TRACKED_CONNECTIONS, 0);

/// Until when (`CLOCK_MONOTONIC` ns) the running daemon vouches for the
/// direct way: it renews this every second, a few seconds ahead, from
/// just before it sends agents to its proxy. No way is taken, no
/// connection opens and no packet of an open one goes past it, so a
/// daemon that dies without its clean stop (which turns the way off)
/// leaves the ways it opened usable for seconds, not for their DNS
/// answers' TTL: from then on every connect goes to the proxy's port,
/// where nobody answers, and open connections stall until a daemon starts
/// again. Not pinned: a new daemon's programs start with no lease (zero)
/// until it starts its own, and the old programs still attached while it
/// swaps the links see theirs run out.
#[map]
pub static DIRECT_LEASE: Array<u64> = Array::with_max_entries(1, 0);

/// Largest part of a first send the ClientHello is read from: the server
/// name must come within it (a hello with post-quantum key shares is about
/// 1.8 KiB).
const HELLO_READ_MAX: u32 = 4096;
/// Extensions read before the server name; past it, the hello is refused.
const MAX_EXTENSIONS: usize = 48;
const TLS_HANDSHAKE: u8 = 0x16;
const TLS_MAJOR_VERSION: u8 = 0x03;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXTENSION_SERVER_NAME: u16 = 0;
const SERVER_NAME_HOST: u8 = 0;

/// include/uapi/linux/bpf.h: BPF_SOCK_OPS_STATE_CB_FLAG.
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 1 << 2;

/// Whether the daemon has the direct way on (the configured flag, whatever
/// the port).
fn direct_way_on() -> bool {
    crate::redirect::proxy_config_any()
        .is_some_and(|cfg| cfg.flags & CONFIG_DIRECT_PASSTHROUGH != 0)
}

/// connect4/6, for TCP: `true` when the socket takes the direct way, left
/// as it is; `false` sends it to the proxy as usual (direct way off, no
/// way for this address, or no room for the socket's state).
pub fn connect(ctx: &SockAddrContext, cfg: &ProxyConfig, facts: &SocketFacts) -> bool {
    if cfg.flags & CONFIG_DIRECT_PASSTHROUGH == 0 || !lease_held() {
        return false;
    }
    // Never to the proxy's own listener (a passthrough name answered with
    // it): the proxy's way refuses that.
    if facts.dst_port == cfg.port && (facts.dst_ip == v4_mapped(cfg.ip4) || facts.dst_ip == cfg.ip6)
    {
        return false;
    }
    // SAFETY: no arguments; returns the caller's cgroup v2 id.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: plain read of a u16 value; the map is only updated whole.
    let Some(agent_port) = (unsafe { AGENT_DNS.get(cgroup_id) }).copied() else {
        return false;
    };
    let Some(way) = find_way(agent_port, facts) else {
        return false;
    };
    // SAFETY: the helper reads the socket behind the context and creates
    // zeroed storage for it if there is none.
    let slot = unsafe { DIRECT_CONN.get_or_insert_ptr_mut(ctx, None) };
    if slot.is_null() {
        return false;
    }
    // From the connect on, the socket holds a place in the kernel's tables
    // (the message program's sockhash, then DIRECT_OPEN): within its
    // agent's share of records, so that one agent's idle sockets cannot
    // take the places others need. Past it, the proxy's way (which refuses
    // the connect on the same share).
    // SAFETY: as above.
    if unsafe { (*slot).charged } == 0 {
        match shares::usage(cgroup_id) {
            Some(usage) if shares::record_allowed(usage, cgroup_id) => {
                // SAFETY: a live map value.
                shares::add(unsafe { &raw mut (*usage).records_added }, 1);
            }
            _ => return false,
        }
    }
    // SAFETY: a non-null pointer to this socket's storage, of this type,
    // written in place (see write_record).
    unsafe {
        write_record(&raw mut (*slot).record, facts, cgroup_id, cookie(ctx));
        (*slot).way = way;
        (*slot).state = direct_state::WAITING;
        (*slot).first_seq = 0;
        (*slot).charged = 1;
    }
    true
}

/// The connection no longer holds a place: off its agent's share. Once.
#[inline(always)]
fn uncharge(conn: *mut DirectConn) {
    // SAFETY: live storage of a socket (checked by the callers).
    let (charged, cgroup_id) = unsafe { ((*conn).charged, (*conn).record.cgroup_id) };
    if charged == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*conn).charged = 0 };
    if let Some(usage) = shares::usage(cgroup_id) {
        // SAFETY: a live map value.
        shares::add(unsafe { &raw mut (*usage).records_dropped }, 1);
    }
}

/// Refuses the connection for good: none of its sends or data segments
/// go from now on.
#[inline(always)]
fn refuse(conn: *mut DirectConn) {
    // SAFETY: live storage of a socket (checked by the callers).
    unsafe { (*conn).state = direct_state::REFUSED };
    uncharge(conn);
}

/// The way for this destination, port-specific first, if one is open.
fn find_way(agent_port: u16, facts: &SocketFacts) -> Option<DirectKey> {
    let mut key = DirectKey {
        agent_port,
        dst_port: facts.dst_port,
        _pad: 0,
        ip: facts.dst_ip,
    };
    let way = match DIRECT_WAYS.get_ptr(key) {
        Some(way) => way,
        None => {
            key.dst_port = 0;
            DIRECT_WAYS.get_ptr(key)?
        }
    };
    way_open(way).then_some(key)
}

/// A connect redirected after all (to the proxy, the resolver: an earlier
/// connect of this socket, or an agentguard program earlier in this one,
/// chose the direct way) carries no direct-way state, or the egress check
/// would judge its packets by it. Called by connect4/6 once decided, not
/// within the decision: the verifier's stack limit counts the deepest
/// chain of calls.
#[inline(never)]
pub fn forget_connect(ctx: &SockAddrContext) {
    if !direct_way_on() {
        return;
    }
    // SAFETY: the helper reads the socket behind the context; null when
    // it has no storage.
    let slot = unsafe { DIRECT_CONN.get_ptr_mut(ctx) };
    if slot.is_null() {
        return;
    }
    uncharge(slot);
    // SAFETY: `sk` is a field sock_addr programs may read: the socket the
    // storage belongs to.
    let sk = unsafe { read_volatile(addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk)) };
    // SAFETY: as above; a failed delete leaves it refused, never open.
    if unsafe { DIRECT_CONN.delete(sk) }.is_err() {
        // SAFETY: as above.
        unsafe { (*slot).state = direct_state::REFUSED };
    }
}

/// Whether the (full) socket took the direct way: the setsockopt check
/// refuses it an upper-layer protocol (kTLS would have the message program
/// read the plaintext while the ciphertext goes out).
pub fn took_the_way(sk: *mut bpf_sock) -> bool {
    !sk.is_null() && !conn_of(sk).is_null()
}

/// The direct-way state of a full socket, or null.
#[inline(always)]
fn conn_of(sk: *mut bpf_sock) -> *mut DirectConn {
    let map = core::ptr::from_ref(&DIRECT_CONN).cast_mut().cast();
    // SAFETY: `sk` is a full socket the kernel passed in (checked by the
    // callers); the helper returns its storage in DIRECT_CONN, or null.
    unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast()
}

/// sockops, ACTIVE_ESTABLISHED: a direct-way socket goes under the
/// message program (one that cannot is refused: its sends could not be
/// checked). `false`: not a direct-way socket.
#[inline(never)]
pub fn established(ctx: &SockOpsContext, sk: *mut bpf_sock) -> bool {
    if sk.is_null() {
        return false;
    }
    let conn = conn_of(sk);
    if conn.is_null() {
        return false;
    }
    // SAFETY: non-null storage of this socket, of this type.
    if unsafe { (*conn).state } != direct_state::WAITING {
        // Refused already (it went to the proxy after all: no record of
        // the direct way's to act on).
        return false;
    }
    // SAFETY: the helper only reads the socket behind the context.
    let mut cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the context pointer the kernel passed to this sockops program;
    // snd_nxt is a 4-byte field sock_ops programs may read. Once connected
    // it is the sequence number of the first data byte.
    let first_seq = unsafe { read_volatile(addr_of!((*ctx.ops).snd_nxt)) };
    // SAFETY: as above.
    unsafe { (*conn).first_seq = first_seq };
    // SAFETY: the context pointer the kernel passed to this sockops program.
    let ops = unsafe { &mut *ctx.ops };
    // The close callback forgets the open connection; without it an entry
    // of DIRECT_OPEN would outlive its socket.
    if ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG).is_err()
        || DIRECT_SOCKETS
            .update(&mut cookie, ops, u64::from(BPF_ANY))
            .is_err()
    {
        refuse_unchecked(conn);
    }
    true
}

/// A direct-way socket whose sends cannot be checked is refused (and its
/// sends dropped by the egress check). Reported without its addresses:
/// reading them here would take the stack the verifier allows sockops.
#[inline(never)]
fn refuse_unchecked(conn: *mut DirectConn) {
    refuse(conn);
    let socket = DirectSocket {
        netns: 0,
        // SAFETY: as above.
        cgroup_id: unsafe { (*conn).record.cgroup_id },
        local_ip: [0; 16],
        remote_ip: [0; 16],
        local_port: 0,
        remote_port: 0,
        family: 0,
        _pad: 0,
    };
    report(
        conn,
        &socket,
        event_kind::DIRECT_REFUSED,
        direct_refusal::UNCHECKED,
        core::ptr::null(),
    );
}

/// sockops, a socket reached TCP_CLOSE: an open direct-way connection is
/// forgotten, and the socket leaves its agent's share.
pub fn closed(ctx: &SockOpsContext, sk: *mut bpf_sock) {
    if sk.is_null() {
        return;
    }
    let conn = conn_of(sk);
    if conn.is_null() {
        return;
    }
    // SAFETY: the helper only reads the socket behind the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = DIRECT_OPEN.remove(cookie);
    refuse(conn);
}

/// Runs on each `sendmsg` of a direct-way socket until the daemon takes
/// it out of [`DIRECT_SOCKETS`]: the first decides, the rest follow.
#[sk_msg]
pub fn agentguard_direct_send(ctx: SkMsgContext) -> u32 {
    check_send(&ctx)
}

fn check_send(ctx: &SkMsgContext) -> u32 {
    // SAFETY: `msg` is the context pointer the kernel passed in; `sk` is
    // a field sk_msg programs may read (a full socket, never null here).
    let sk = unsafe { read_volatile(addr_of!((*ctx.msg).__bindgen_anon_3.sk)) };
    if sk.is_null() {
        return sk_action::SK_DROP;
    }
    let conn = conn_of(sk);
    if conn.is_null() {
        // Only direct-way sockets are put here: this cannot be one.
        return sk_action::SK_DROP;
    }
    // SAFETY: non-null storage of this socket, of this type.
    match unsafe { (*conn).state } {
        // Open (the daemon has not taken it out of here yet): the rest of
        // its sends go, as the egress check lets them.
        direct_state::OPEN | direct_state::VERIFIED => sk_action::SK_PASS,
        direct_state::WAITING => first_send(ctx, conn),
        _ => sk_action::SK_DROP,
    }
}

/// The first send: a ClientHello for the way's name opens the connection.
fn first_send(ctx: &SkMsgContext, conn: *mut DirectConn) -> u32 {
    // SAFETY: live storage of this socket (checked by the caller).
    let (cookie, cgroup_id, way_key) =
        unsafe { ((*conn).record.cookie, (*conn).record.cgroup_id, (*conn).way) };
    // Never `None`: connect4/6 give only IPv4 and IPv6 sockets a way.
    let Some(mut socket) = msg_socket(ctx) else {
        refuse(conn);
        return sk_action::SK_DROP;
    };
    socket.cgroup_id = cgroup_id;
    let way = DIRECT_WAYS.get_ptr(way_key);
    let verdict = match way {
        // No way opens while no daemon runs to record it and close it.
        _ if crate::redirect::proxy_config().is_err() || !lease_held() => {
            Err(direct_refusal::DAEMON_STOPPED)
        }
        Some(way) if way_open(way) => hello_matches(ctx, way).and_then(|()| open(cookie, &socket)),
        _ => Err(direct_refusal::WAY_GONE),
    };
    let way = way.unwrap_or_default();
    match verdict {
        Ok(()) => {
            if report(conn, &socket, event_kind::DIRECT_OPENED, 0, way) {
                // SAFETY: as above.
                unsafe { (*conn).state = direct_state::OPEN };
                return sk_action::SK_PASS;
            }
            // Unreported, it is not open: undone, and refused unreported.
            let _ = DIRECT_OPEN.remove(cookie);
            refuse(conn);
            sk_action::SK_DROP
        }
        Err(reason) => {
            refuse(conn);
            report(conn, &socket, event_kind::DIRECT_REFUSED, reason, way);
            sk_action::SK_DROP
        }
    }
}

/// Whether the daemon's lease on the direct way ([`DIRECT_LEASE`]) runs.
#[inline(always)]
fn lease_held() -> bool {
    DIRECT_LEASE.get(0).is_some_and(|until| before(*until))
}

/// Whether the way has not expired (the DNS answer's TTL).
fn way_open(way: *const DirectWay) -> bool {
    // SAFETY: a pointer from a successful lookup in this program.
    before(unsafe { (*way).expires_ns })
}

/// Whether `deadline_ns` (`CLOCK_MONOTONIC`, as the daemon writes its
/// deadlines) is still ahead.
#[inline(always)]
fn before(deadline_ns: u64) -> bool {
    // SAFETY: the helper takes no arguments.
    deadline_ns > unsafe { bpf_ktime_get_ns() }
}

/// Tracks the connection as open (its place in the agent's share was
/// taken at the connect).
fn open(cookie: u64, socket: &DirectSocket) -> Result<(), u32> {
    DIRECT_OPEN
        .insert(cookie, *socket, u64::from(BPF_ANY))
        .map_err(|_| direct_refusal::NO_ROOM)?;
    // Checked after the insert: the daemon marks a revoked agent, then
    // closes what DIRECT_OPEN holds of it, so either it sees this entry
    // or this sees the mark. (The sender is the agent's own process.)
    if crate::revoke::revoked() {
        let _ = DIRECT_OPEN.remove(cookie);
        return Err(direct_refusal::REVOKED);
    }
    Ok(())
}

/// Whether the send starts with a TLS record holding a ClientHello whose
/// server name is the way's name (ASCII case aside); else why not. Not
/// inlined, nor is [`msg_socket`]: their frames and the report's would
/// not fit the verifier's 512 bytes together.
#[inline(never)]
fn hello_matches(ctx: &SkMsgContext, way: *const DirectWay) -> Result<(), u32> {
    let size = ctx.size();
    let want = if size < HELLO_READ_MAX {
        size
    } else {
        HELLO_READ_MAX
    };
    // The data may be spread over pages; pulled into one, it can be read
    // in place.
    // SAFETY: the context pointer the kernel passed in; start 0 and end
    // within the message.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, want, 0) } != 0 {
        return Err(direct_refusal::NOT_A_HELLO);
    }
    let hello = MsgBytes {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    names_way(&hello, way)
}

/// Whether the first data segment on the wire (its payload from
/// `payload`) is a ClientHello for the way's name, as the message program
/// found the first send to be: nothing queued before that send by another
/// way (a sender blocked in the plain `sendmsg` since before the socket
/// came under the program, with the data corked) goes ahead of it.
#[inline(never)]
fn wire_hello_matches(ctx: &SkBuffContext, payload: u32, way: *const DirectWay) -> bool {
    let hello = SkbBytes {
        ctx,
        start: payload as usize,
    };
    names_way(&hello, way).is_ok()
}

/// Where a hello is read from, byte by byte.
trait Hello {
    /// The byte at `at`, if within the message and the part read.
    fn byte(&self, at: usize) -> Option<u8>;

    #[inline(always)]
    fn u16(&self, at: usize) -> Option<usize> {
        Some(usize::from(self.byte(at)?) << 8 | usize::from(self.byte(at + 1)?))
    }

    #[inline(always)]
    fn u24(&self, at: usize) -> Option<usize> {
        Some(usize::from(self.byte(at)?) << 16 | self.u16(at + 1)?)
    }
}

/// A message's bytes the program may read: `[start, end)`.
struct MsgBytes {
    start: usize,
    end: usize,
}

impl Hello for MsgBytes {
    /// The bound before the add keeps the offset one the verifier can
    /// follow.
    #[inline(always)]
    fn byte(&self, at: usize) -> Option<u8> {
        if at >= HELLO_READ_MAX as usize {
            return None;
        }
        let p = self.start + at;
        if p + 1 > self.end {
            return None;
        }
        // SAFETY: `p` is within [start, end), the message's data.
        Some(unsafe { *(p as *const u8) })
    }
}

/// A packet's payload, from `start` (its bytes may be in pages: read
/// through the helper).
struct SkbBytes<'a> {
    ctx: &'a SkBuffContext,
    start: usize,
}

impl Hello for SkbBytes<'_> {
    #[inline(always)]
    fn byte(&self, at: usize) -> Option<u8> {
        if at >= HELLO_READ_MAX as usize {
            return None;
        }
        self.ctx.load::<u8>(self.start + at).ok()
    }
}

/// Whether `hello` is a ClientHello whose one server name is the way's.
fn names_way(hello: &impl Hello, way: *const DirectWay) -> Result<(), u32> {
    let (name_at, name_len) = server_name(hello)?;
    // SAFETY: a pointer from a successful lookup in this program.
    let (len, name) = unsafe { ((*way).name_len as usize, &(*way).name) };
    if name_len != len || len > DIRECT_NAME_MAX {
        return Err(direct_refusal::OTHER_NAME);
    }
    for i in 0..DIRECT_NAME_MAX {
        if i >= len {
            break;
        }
        let got = hello.byte(name_at + i).ok_or(direct_refusal::NOT_A_HELLO)?;
        let expected = *name.get(i).ok_or(direct_refusal::OTHER_NAME)?;
        if got.to_ascii_lowercase() != expected {
            return Err(direct_refusal::OTHER_NAME);
        }
    }
    Ok(())
}

/// Where the ClientHello's host name starts and how long it is. Every
/// length is checked against the record's and the handshake's, so that no
/// name is read from outside the hello the server will parse; the
/// extensions must end where the hello does, hold one server_name
/// extension only, and that one exactly one host name (servers and SNI
/// routers differ on which of several they take).
fn server_name(b: &impl Hello) -> Result<(usize, usize), u32> {
    const BAD: u32 = direct_refusal::NOT_A_HELLO;
    // Record header: type, version, length.
    if b.byte(0).ok_or(BAD)? != TLS_HANDSHAKE || b.byte(1).ok_or(BAD)? != TLS_MAJOR_VERSION {
        return Err(BAD);
    }
    let record_end = 5 + b.u16(3).ok_or(BAD)?;
    // Handshake header: type, length; then version and random.
    if b.byte(5).ok_or(BAD)? != HANDSHAKE_CLIENT_HELLO {
        return Err(BAD);
    }
    let hello_end = 9 + b.u24(6).ok_or(BAD)?;
    if hello_end > record_end {
        // A hello over several records: not read.
        return Err(BAD);
    }
    let mut at = 9 + 2 + 32;
    let session_id = usize::from(b.byte(at).ok_or(BAD)?);
    if session_id > 32 {
        return Err(BAD);
    }
    at += 1 + session_id;
    let suites = b.u16(at).ok_or(BAD)?;
    at += 2 + suites;
    let compression = usize::from(b.byte(at).ok_or(BAD)?);
    at += 1 + compression;
    let extensions_end = at + 2 + b.u16(at).ok_or(BAD)?;
    at += 2;
    if extensions_end != hello_end {
        return Err(BAD);
    }
    let mut found = None;
    for _ in 0..MAX_EXTENSIONS {
        if at == extensions_end {
            return found.ok_or(direct_refusal::NO_SNI);
        }
        if at + 4 > extensions_end {
            return Err(BAD);
        }
        let kind = b.u16(at).ok_or(BAD)?;
        let len = b.u16(at + 2).ok_or(BAD)?;
        at += 4;
        if at + len > extensions_end {
            return Err(BAD);
        }
        if kind == usize::from(EXTENSION_SERVER_NAME) {
            if found.is_some() {
                return Err(BAD);
            }
            // server_name_list: its length, then one (type, length, name).
            let list = b.u16(at).ok_or(BAD)?;
            let name_len = b.u16(at + 3).ok_or(BAD)?;
            if list + 2 != len
                || b.byte(at + 2).ok_or(BAD)? != SERVER_NAME_HOST
                || name_len == 0
                || name_len + 3 != list
            {
                return Err(BAD);
            }
            found = Some((at + 5, name_len));
        }
        at += len;
    }
    // More extensions than are read.
    Err(BAD)
}

/// Reports a direct-way connection opened or refused, with the way's name
/// (`way` may be null). `false`: no room to report it.
fn report(
    conn: *const DirectConn,
    socket: &DirectSocket,
    kind: u32,
    reason: u32,
    way: *const DirectWay,
) -> bool {
    // SAFETY: live storage of the socket (checked by the callers).
    let (cgroup_id, cookie) = unsafe { ((*conn).record.cgroup_id, (*conn).record.cookie) };
    let Some(mut entry) = reserve::<DirectEvent>(cgroup_id) else {
        return false;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: the entry is reserved room for one DirectEvent, written
    // field by field (the event is too large for the stack); `conn` and
    // `way` (when not null) are live map values of their types.
    unsafe {
        (*event).kind = kind;
        (*event).reason = reason;
        (*event).cookie = cookie;
        (*event).record = (*conn).record;
        (*event).socket = *socket;
        (*event)._pad = 0;
        (*event).name_len = 0;
        (*event).name = [0; DIRECT_NAME_MAX];
        if !way.is_null() {
            (*event).name_len = (*way).name_len;
            (*event).name = (*way).name;
        }
    }
    entry.submit(0);
    true
}

/// The sending socket's addresses; `None` for a family other than IPv4
/// and IPv6.
#[inline(never)]
fn msg_socket(ctx: &SkMsgContext) -> Option<DirectSocket> {
    let local = sk_msg::local(ctx)?;
    let msg = ctx.msg;
    // SAFETY: `msg` is the context pointer the kernel passed in; 4-byte
    // reads of fields sk_msg programs may read, at constant offsets (see
    // sockops.rs on why volatile).
    let (remote4, remote6, remote_port) = unsafe {
        (
            read_volatile(addr_of!((*msg).remote_ip4)),
            [
                read_volatile(addr_of!((*msg).remote_ip6[0])),
                read_volatile(addr_of!((*msg).remote_ip6[1])),
                read_volatile(addr_of!((*msg).remote_ip6[2])),
                read_volatile(addr_of!((*msg).remote_ip6[3])),
            ],
            read_volatile(addr_of!((*msg).remote_port)),
        )
    };
    let remote_ip = if local.family == AF_INET {
        v4_mapped(remote4.to_ne_bytes())
    } else {
        ip6_words_to_bytes(remote6)
    };
    Some(DirectSocket {
        netns: local.netns,
        cgroup_id: 0,
        local_ip: local.ip,
        remote_ip,
        local_port: local.port,
        remote_port: remote_port_of(remote_port),
        family: local.family,
        _pad: 0,
    })
}

/// sk_msg gives the remote port in network byte order: in the upper 16
/// bits on a little-endian machine since Linux 5.x (the kernel shifts it
/// there), in the lower ones before.
fn remote_port_of(field: u32) -> u16 {
    u16::from_be(if field & 0xffff == 0 {
        (field >> 16) as u16
    } else {
        field as u16
    })
}

/// The egress check's verdict on a packet.
pub enum Egress {
    /// Not a direct-way socket's: judged as any other.
    NotDirect,
    Pass,
    /// Held back while the daemon's lease has run out: dropped
    /// unreported (nobody would read the report, and TCP sends it again).
    Hold,
    /// Data before the connection was open (or after it was refused), or
    /// a packet for another address than the one it connected to.
    Drop,
}

/// What the egress check reads of a TCP packet's headers.
pub struct TcpHeaders {
    /// Bytes of the IP and TCP headers: where the payload starts.
    pub len: u32,
    /// Sequence number (host order).
    pub seq: u32,
    /// The TCP flags byte. (Not a bool: an `Option` of a struct with one
    /// keeps its tag in the bool's spare values, which the kernel's BTF
    /// check refuses for an enum's union.)
    pub flags: u8,
}

/// TCP flags: SYN.
const TCP_SYN: u8 = 0x02;

/// Judges a packet of a direct-way socket: `dst` its destination (IPv4
/// mapped); `headers` reads its TCP headers (`None` if they cannot be
/// read: an IPv6 extension header, not TCP), only for a connection whose
/// first data segment has not gone yet.
pub fn egress(
    ctx: &SkBuffContext,
    dst: &[u8; 16],
    headers: impl FnOnce() -> Option<TcpHeaders>,
) -> Egress {
    // Off, no socket takes the direct way: the packets of one that did
    // under an earlier daemon are judged as any other (off the loopback,
    // dropped).
    if !direct_way_on() {
        return Egress::NotDirect;
    }
    // SAFETY: `skb` is the context pointer the kernel passed in; `sk` is
    // a field cgroup_skb programs may read (null-checked below).
    let sk = unsafe { read_volatile(addr_of!((*ctx.skb.skb).__bindgen_anon_2.sk)) };
    if sk.is_null() {
        return Egress::NotDirect;
    }
    // SAFETY: the helper takes a socket pointer from the context and
    // returns the full socket, or null (a request or time-wait socket).
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return Egress::NotDirect;
    }
    let conn = conn_of(full);
    if conn.is_null() {
        return Egress::NotDirect;
    }
    // SAFETY: non-null storage of this socket, of this type.
    let (state, connected_to) = unsafe { ((*conn).state, (*conn).record.orig_ip) };
    if *dst != connected_to {
        return Egress::Drop;
    }
    // No daemon vouches for the way (it died): the connection's packets
    // go nowhere until one does, as a relayed connection died with the
    // proxy. TCP sends them again once a daemon starts.
    if !lease_held() {
        return Egress::Hold;
    }
    if state == direct_state::VERIFIED {
        return Egress::Pass;
    }
    first_segments(ctx, conn, state, headers())
}

/// Until the first data segment has gone, only packets without data
/// (handshake, ACKs, FIN, RST) go, and that segment only if the message
/// program opened the connection and the segment's payload is the hello
/// it checked. Any other data (TCP Fast Open's, queued before the socket
/// came under the program; bytes corked ahead of the hello) refuses the
/// connection for good: retransmitted, it would otherwise go once a later
/// send opened the way. Not inlined: the hello's parse has its own frame.
#[inline(never)]
fn first_segments(
    ctx: &SkBuffContext,
    conn: *mut DirectConn,
    state: u32,
    headers: Option<TcpHeaders>,
) -> Egress {
    let Some(headers) = headers else {
        refuse(conn);
        return Egress::Drop;
    };
    if ctx.len() <= headers.len {
        return Egress::Pass;
    }
    // SAFETY: live storage of the socket (checked by the caller).
    let (first_seq, way_key) = unsafe { ((*conn).first_seq, (*conn).way) };
    let verified = state == direct_state::OPEN
        && headers.flags & TCP_SYN == 0
        && headers.seq == first_seq
        && DIRECT_WAYS
            .get_ptr(way_key)
            .is_some_and(|way| wire_hello_matches(ctx, headers.len, way));
    if !verified {
        refuse(conn);
        return Egress::Drop;
    }
    // SAFETY: as above.
    unsafe { (*conn).state = direct_state::VERIFIED };
    Egress::Pass
}
