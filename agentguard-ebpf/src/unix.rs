//! cgroup/connect_unix and cgroup/sendmsg_unix (Linux 6.7+): an agent
//! reaches only the Unix sockets its policy lists.
//!
//! A Unix socket is a way out that never touches the network: the container
//! engine's socket runs containers outside the agent's cgroup, the session
//! bus starts services, ssh-agent signs for the user. connect_unix runs for
//! every connect (stream, seqpacket and datagram, io_uring's included);
//! sendmsg_unix for a datagram sent to an address (a connected socket's peer
//! was checked at connect).
//!
//! The allow-list is keyed by the caller's cgroup id, so a caller in a
//! cgroup with no entries (a sub-cgroup, or a process that was handed the
//! socket) is refused: fail closed.

use core::ptr::{addr_of, read_volatile};

use agentguard_common::{COMM_LEN, UNIX_PATH_MAX, UnixEvent, UnixKey, event_kind};
use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated::bpf_get_current_cgroup_id,
    },
    programs::SockAddrContext,
};

use crate::{ALLOW, DENY, events::output, maps::UNIX_ALLOW};

/// `offsetof(struct sockaddr_un, sun_path)`: the family is a u16 (UAPI).
const SUN_PATH_OFFSET: usize = 2;

/// The first fields of the kernel's `struct bpf_sock_addr_kern`
/// (include/linux/filter.h), which is what the context pointer really
/// points at. `bpf_sock_addr` exposes no field for a Unix address; the
/// kernel's own tests reach it through kfuncs, which this loader cannot
/// relocate, so the program reads the struct with bpf_probe_read_kernel
/// (allowed for CAP_PERFMON). Layout since 6.7, when `uaddrlen` was added
/// for these hooks: sk @0, uaddr @8, tmp_reg @16, t_ctx @24, uaddrlen @32.
/// The daemon checks these offsets against the running kernel's BTF before
/// loading the programs (agentguard/src/ebpf/layout.rs) and refuses to
/// start if they differ.
#[repr(C)]
struct SockAddrKern {
    sk: *const u8,
    uaddr: *const u8,
    tmp_reg: u64,
    t_ctx: *const u8,
    uaddrlen: u32,
}

#[derive(Clone, Copy)]
pub enum Op {
    Connect,
    SendMsg,
}

pub fn check(ctx: &SockAddrContext, op: Op) -> i32 {
    let kind = match op {
        Op::Connect => event_kind::UNIX_CONNECT_DENIED,
        Op::SendMsg => event_kind::UNIX_SENDMSG_DENIED,
    };
    // SAFETY: no arguments; returns the caller's cgroup v2 id.
    let mut key = UnixKey::empty(unsafe { bpf_get_current_cgroup_id() });
    let allowed = read_address(ctx, &mut key).is_ok()
        // SAFETY: plain read of a u8 value; the map is only updated whole.
        && unsafe { UNIX_ALLOW.get(key) }.is_some();
    if allowed {
        return ALLOW;
    }
    emit(kind, ctx, &key);
    DENY
}

/// Fills `key.path`/`key.len` with the address as the kernel will read it
/// (unix_mkname_bsd: a filesystem name ends at its first NUL within the
/// length; an abstract name is every byte of it).
fn read_address(ctx: &SockAddrContext, key: &mut UnixKey) -> Result<(), ()> {
    // SAFETY: bpf_probe_read_kernel faults safely; see SockAddrKern.
    let kern =
        unsafe { bpf_probe_read_kernel(ctx.as_ptr().cast::<SockAddrKern>()) }.map_err(|_| ())?;
    let n = kern.uaddrlen as usize;
    if n <= SUN_PATH_OFFSET || n > SUN_PATH_OFFSET + UNIX_PATH_MAX {
        // Unnamed or oversized: the kernel refuses these itself (EINVAL).
        return Err(());
    }
    let n = n - SUN_PATH_OFFSET;
    // The address is the kernel's copy in a sockaddr_storage (128 bytes),
    // so the whole sun_path is readable; bytes past the length are
    // cleared below.
    // SAFETY: bpf_probe_read_kernel faults safely into our own buffer.
    unsafe { bpf_probe_read_kernel_buf(kern.uaddr.wrapping_add(SUN_PATH_OFFSET), &mut key.path) }
        .map_err(|_| ())?;
    let mut len = n;
    if key.path[0] != 0 {
        let mut i = 0;
        while i < UNIX_PATH_MAX {
            if i < len && key.path[i] == 0 {
                len = i;
            }
            i += 1;
        }
    }
    let mut i = 0;
    while i < UNIX_PATH_MAX {
        if i >= len {
            key.path[i] = 0;
        }
        i += 1;
    }
    key.len = len as u32;
    Ok(())
}

fn emit(kind: u32, ctx: &SockAddrContext, key: &UnixKey) {
    // SAFETY: `type` is readable in every sock_addr program.
    let sock_type = unsafe { read_volatile(addr_of!((*ctx.sock_addr).type_)) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    output(
        key.cgroup_id,
        &UnixEvent {
            kind,
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            sock_type,
            comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
            key: *key,
        },
    );
}
