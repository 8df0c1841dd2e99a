//! Telling the daemon what the kernel refused (and, if asked, redirected).

use agentguard_common::{COMM_LEN, KernelEvent, STAT_EVENTS_LOST};
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::bpf_get_current_cgroup_id,
};

use crate::maps::{EVENT_STATS, KERNEL_EVENTS};

/// What a program knows about the socket an event is about.
pub struct SocketFacts {
    pub family: u16,
    pub protocol: u16,
    pub sock_type: u16,
    pub dst_ip: [u8; 16],
    pub dst_port: u16,
}

/// Queues one event. A full ring buffer never changes the verdict; the loss
/// is counted so the daemon can report it.
pub fn emit(kind: u32, facts: &SocketFacts) {
    let Some(mut entry) = KERNEL_EVENTS.reserve::<KernelEvent>(0) else {
        if let Some(lost) = EVENT_STATS.get_ptr_mut(STAT_EVENTS_LOST) {
            // SAFETY: per-CPU slot; programs on this CPU do not run
            // concurrently with each other.
            unsafe { *lost += 1 };
        }
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    entry.write(KernelEvent {
        kind,
        family: facts.family,
        protocol: facts.protocol,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        // SAFETY: no arguments; returns the caller's cgroup v2 id.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        dst_ip: facts.dst_ip,
        dst_port: facts.dst_port,
        sock_type: facts.sock_type,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    });
    entry.submit(0);
}
