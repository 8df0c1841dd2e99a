//! lsm_cgroup/ptrace_access_check: an agent process reaches no process
//! outside its own cgroup.
//!
//! Without it, an agent could ptrace any process of its uid that runs
//! outside every agent cgroup and make it connect for it (a bypass with no
//! record), or act inside another agent and use its credentials. The kernel
//! asks this one hook (security_ptrace_access_check, from
//! __ptrace_may_access) before PTRACE_ATTACH and PTRACE_SEIZE, before
//! process_vm_readv/writev and /proc/<pid>/mem (mm_access), before
//! pidfd_getfd, and before every other look into another process: its
//! /proc/<pid>/environ, maps, fd links, kcmp, perf_event_open. A process of
//! the same thread group never reaches the hook.
//!
//! Attached as BPF_LSM_CGROUP to each agent's cgroup, it runs only for
//! callers in that cgroup (or below it) and keys on the caller's exact
//! cgroup: the target must be in that same cgroup. An agent may still
//! trace its own children, which run beside it.
//!
//! The programs are built without CO-RE, so the target's cgroup is read
//! with bpf_probe_read_kernel at offsets the daemon found in the running
//! kernel's BTF (`TASK_LAYOUT`): task->cgroups->dfl_cgrp->kn->id. The hook
//! runs under task_lock(target), which keeps task->cgroups alive.

use agentguard_common::{COMM_LEN, NO_OFFSET, ProcessEvent, TaskLayout, event_kind};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::LsmContext,
};

use crate::{events::output, maps::TASK_LAYOUT};

/// BPF_LSM_CGROUP verdicts: 1 lets the access proceed, 0 refuses it
/// (EPERM from ptrace, process_vm_* and pidfd_getfd; EACCES from opening
/// /proc/<pid>/mem).
const LSM_ALLOW: i32 = 1;
const LSM_DENY: i32 = 0;

/// include/linux/ptrace.h: the check is a probe the kernel itself does not
/// audit (/proc/<pid>/stat deciding which fields to show): refused all the
/// same, but not recorded, or `ps` would write an event per process.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// Why the target could not be read: refuse (fail closed).
struct Unreadable;

pub fn check(ctx: &LsmContext) -> i32 {
    // LSM_HOOK(int, 0, ptrace_access_check, struct task_struct *child,
    //          unsigned int mode)
    let target: *const u8 = ctx.arg(0);
    let mode: u32 = ctx.arg(1);
    // SAFETY: no arguments; returns the caller's cgroup v2 id.
    let caller_cgroup = unsafe { bpf_get_current_cgroup_id() };
    let Some(layout) = TASK_LAYOUT.get(0).filter(|l| l.ready == 1) else {
        return LSM_DENY;
    };
    // 0 (no cgroup has it) when unreadable: refused.
    let target_cgroup = cgroup_id_of(target, layout).unwrap_or(0);
    if target_cgroup != 0 && target_cgroup == caller_cgroup {
        return LSM_ALLOW;
    }
    if mode & PTRACE_MODE_NOAUDIT == 0 {
        report(target, mode, caller_cgroup, target_cgroup, layout);
    }
    LSM_DENY
}

/// task->cgroups->dfl_cgrp->kn->id.
fn cgroup_id_of(task: *const u8, layout: &TaskLayout) -> Result<u64, Unreadable> {
    let css_set = read_ptr(task, layout.task_cgroups)?;
    let cgroup = read_ptr(css_set, layout.css_set_dfl_cgrp)?;
    let kn = read_ptr(cgroup, layout.cgroup_kn)?;
    read::<u64>(kn, layout.kernfs_node_id)
}

fn read_ptr(base: *const u8, offset: u32) -> Result<*const u8, Unreadable> {
    let p = read::<u64>(base, offset)? as *const u8;
    if p.is_null() { Err(Unreadable) } else { Ok(p) }
}

fn read<T>(base: *const u8, offset: u32) -> Result<T, Unreadable> {
    if base.is_null() || offset == NO_OFFSET {
        return Err(Unreadable);
    }
    // SAFETY: bpf_probe_read_kernel faults safely; a wrong address reads
    // an error, never memory of ours.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .map_err(|_| Unreadable)
}

/// The system call the caller is in: tells ptrace from process_vm_writev
/// from pidfd_getfd in the record, since all of them ask the same hook.
fn current_syscall(layout: &TaskLayout) -> u32 {
    // SAFETY: the helpers take the current task, which the kernel passes
    // as a trusted pointer, and return its saved user registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    read::<u64>(regs, layout.regs_syscall).map_or(NO_OFFSET, |nr| nr as u32)
}

fn report(
    target: *const u8,
    mode: u32,
    cgroup_id: u64,
    target_cgroup_id: u64,
    layout: &TaskLayout,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    output(
        cgroup_id,
        &ProcessEvent {
            kind: event_kind::PROCESS_ACCESS_DENIED,
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            mode,
            cgroup_id,
            target_tgid: read::<u32>(target, layout.task_tgid).unwrap_or(0),
            syscall: current_syscall(layout),
            target_cgroup_id,
            comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
            target_comm: read::<[u8; COMM_LEN]>(target, layout.task_comm).unwrap_or([0; COMM_LEN]),
        },
    );
}
