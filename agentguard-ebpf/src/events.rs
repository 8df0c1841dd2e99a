//! Telling the daemon what the kernel refused (and, if asked, redirected).

use agentguard_common::{COMM_LEN, KernelEvent, STAT_EVENTS_LOST, ring_cost};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::bpf_get_current_cgroup_id,
};
use aya_ebpf::maps::ring_buf::RingBufEntry;

use crate::{
    maps::{EVENT_STATS, KERNEL_EVENTS},
    shares,
};

/// What a program knows about the socket an event is about.
pub struct SocketFacts {
    pub family: u16,
    pub protocol: u16,
    pub sock_type: u16,
    pub dst_ip: [u8; 16],
    pub dst_port: u16,
}

/// Who an event is about.
struct Caller {
    tgid: u32,
    pid: u32,
    uid: u32,
    gid: u32,
    cgroup_id: u64,
    comm: [u8; COMM_LEN],
}

/// The task making the call: hooks that run in the caller's context
/// (connect, sendmsg, socket creation, setsockopt).
fn current() -> Caller {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Caller {
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: no arguments; returns the caller's cgroup v2 id.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    }
}

/// Queues one event about the current task. A full ring buffer never
/// changes the verdict; the loss is counted so the daemon can report it.
pub fn emit(kind: u32, facts: &SocketFacts) {
    submit(kind, facts, current());
}

/// Queues one event about a packet of a socket in cgroup `cgroup_id`
/// owned by `uid`. Packets also leave from softirq context (TCP
/// retransmits, timers), where the current task is whoever was
/// interrupted: its pid and name are kept only if it is in the socket's
/// cgroup, else left zero rather than blaming a bystander.
pub fn emit_for_packet(kind: u32, facts: &SocketFacts, cgroup_id: u64, uid: u32) {
    let mut caller = current();
    if caller.cgroup_id != cgroup_id {
        caller = Caller {
            tgid: 0,
            pid: 0,
            uid,
            gid: 0,
            cgroup_id,
            comm: [0; COMM_LEN],
        };
    }
    submit(kind, facts, caller);
}

/// Queues one record of any of the ring buffer's types for the agent
/// (cgroup) `cgroup_id`, within that agent's share of the ring. A full
/// share or ring never changes the verdict; the loss is counted, for the
/// agent and in all, so the daemon can report it.
///
/// The record is passed by reference: the verifier allows 512 bytes of
/// stack over the whole call chain, and a copy per frame adds up.
#[inline(always)]
pub fn output<T: Copy + 'static>(cgroup_id: u64, record: &T) {
    let Some(mut entry) = reserve::<T>(cgroup_id) else {
        return;
    };
    // SAFETY: the entry is reserved room for one T; the record is a T.
    unsafe { entry.as_mut_ptr().copy_from_nonoverlapping(record, 1) };
    entry.submit(0);
}

/// Room for one record of type `T` for the agent (cgroup) `cgroup_id`,
/// within its share, charged to it; `None` (the loss counted) if there is
/// none. For records too large to build on the stack: the caller fills
/// the entry in place and submits it.
#[inline(always)]
pub fn reserve<T: 'static>(cgroup_id: u64) -> Option<RingBufEntry<T>> {
    let cost = ring_cost(size_of::<T>());
    let usage = shares::usage(cgroup_id);
    if let Some(usage) = usage
        && !shares::event_allowed(usage, cgroup_id, cost)
    {
        lost(usage);
        return None;
    }
    let Some(entry) = KERNEL_EVENTS.reserve::<T>(0) else {
        match usage {
            Some(usage) => lost(usage),
            None => count_lost(),
        }
        return None;
    };
    if let Some(usage) = usage {
        // SAFETY: a live map value.
        shares::add(unsafe { &raw mut (*usage).event_bytes }, cost);
    }
    Some(entry)
}

/// One event the agent's share had no room for.
fn lost(usage: *mut agentguard_common::AgentUsage) {
    // SAFETY: a live map value.
    shares::add(unsafe { &raw mut (*usage).events_lost }, 1);
    count_lost();
}

fn count_lost() {
    if let Some(lost) = EVENT_STATS.get_ptr_mut(STAT_EVENTS_LOST) {
        // SAFETY: per-CPU slot. A packet program in softirq could
        // interrupt a socket program on this CPU mid-increment and one of
        // two counts be lost, never the counter's leaving zero.
        unsafe { *lost += 1 };
    }
}

fn submit(kind: u32, facts: &SocketFacts, caller: Caller) {
    output(
        caller.cgroup_id,
        &KernelEvent {
            kind,
            family: facts.family,
            protocol: facts.protocol,
            tgid: caller.tgid,
            pid: caller.pid,
            uid: caller.uid,
            gid: caller.gid,
            cgroup_id: caller.cgroup_id,
            dst_ip: facts.dst_ip,
            dst_port: facts.dst_port,
            sock_type: facts.sock_type,
            _pad: 0,
            comm: caller.comm,
        },
    );
}
