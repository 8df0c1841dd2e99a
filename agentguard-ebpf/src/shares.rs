//! Each agent's share of the kernel's shared tables: the records waiting
//! for the proxy (`PEER_RECORDS`) and the event ring buffer. One agent's
//! flood cannot push out another's pending connection records or crowd
//! its refusals out of the ring: past its own share, its connects get
//! EPERM and its events are dropped and counted as its own losses.
//!
//! The kernel counts what each agent (cgroup) adds (`AGENT_USAGE`), the
//! daemon what it took back (`AGENT_RELEASED`); each counter has one
//! writer, and what is in use is the difference.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agentguard_common::{AgentReleased, AgentUsage};

use crate::{
    maps::{AGENT_RELEASED, AGENT_USAGE},
    redirect::proxy_config_any,
};

/// The agent's counters, created (zeroed) on its first use. `None` only if
/// the table of agents is full.
#[inline(always)]
pub fn usage(cgroup_id: u64) -> Option<*mut AgentUsage> {
    if let Some(p) = AGENT_USAGE.get_ptr_mut(cgroup_id) {
        return Some(p);
    }
    // BPF_NOEXIST: a concurrent first use on another CPU wins; either way
    // the entry exists afterwards.
    let _ = AGENT_USAGE.insert(cgroup_id, AgentUsage::default(), 1);
    AGENT_USAGE.get_ptr_mut(cgroup_id)
}

#[inline(always)]
fn released(cgroup_id: u64) -> AgentReleased {
    // SAFETY: plain copy of a value the daemon updates whole.
    unsafe { AGENT_RELEASED.get(cgroup_id) }
        .copied()
        .unwrap_or_default()
}

/// Adds `n` to one counter, atomically: programs on other CPUs update the
/// same agent's counters, and a lost update would shrink or grow its share
/// for good. core's AtomicU64 has no fetch_add on the bpf target (it has
/// no compare-and-swap), but the BPF instruction set has an atomic add
/// (BPF_ATOMIC | BPF_ADD), which this intrinsic becomes when its result is
/// unused.
#[inline(always)]
pub fn add(counter: *mut u64, n: u64) {
    // SAFETY: `counter` points into a live map value, 8-aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Whether the agent may have one more record waiting for the proxy.
#[inline(always)]
pub fn record_allowed(usage: *mut AgentUsage, cgroup_id: u64) -> bool {
    let limit = proxy_config_any().map_or(0, |c| c.records_per_agent);
    if limit == 0 {
        return true;
    }
    // SAFETY: a live map value; torn reads are impossible for aligned u64.
    let (added, dropped) = unsafe { ((*usage).records_added, (*usage).records_dropped) };
    let waiting = added
        .saturating_sub(dropped)
        .saturating_sub(released(cgroup_id).records_taken);
    waiting < u64::from(limit)
}

/// Whether `cost` more ring bytes fit in the agent's share.
#[inline(always)]
pub fn event_allowed(usage: *mut AgentUsage, cgroup_id: u64, cost: u64) -> bool {
    let limit = proxy_config_any().map_or(0, |c| c.event_bytes_per_agent);
    if limit == 0 {
        return true;
    }
    // SAFETY: as above.
    let queued = unsafe { (*usage).event_bytes };
    let unread = queued.saturating_sub(released(cgroup_id).event_bytes_read);
    unread + cost <= u64::from(limit)
}
