//! The kernel's half of a revocation: a per-cgroup "revoked" flag in a
//! pinned map (`REVOKED`), which makes every connect, datagram and bind of
//! the agent's cgroup (and the cgroups below it) fail with EPERM at once,
//! whether the daemon runs or not.
//!
//! The flags are not set one by one but made to match: the saved list of
//! revoked agents is the truth, and [`plan`] computes, from it and the
//! agents' cgroups in force, which cgroup ids to mark and which marks to
//! clear. The daemon applies that plan at start and at every reload (so a
//! reload that moves a revoked agent's cgroup moves its mark, and a mark
//! left by a crash between a restore's save and its kernel update goes),
//! and after every revoke and restore.

use std::collections::BTreeSet;

use crate::{
    ebpf::{EbpfError, Kernel},
    identity::GuardedAgent,
};

use super::Revocations;

/// The changes that make the kernel's marks match the revoked agents.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Cgroup ids of revoked agents, not yet marked.
    pub mark: Vec<u64>,
    /// Marked cgroup ids that are no revoked agent's (restored, or an old
    /// cgroup of an agent a reload moved).
    pub clear: Vec<u64>,
}

/// What to mark and clear, given the agents in force, the saved
/// revocations and the ids the kernel has marked now.
pub fn plan(agents: &[GuardedAgent], revocations: &Revocations, marked: &[u64]) -> Plan {
    let want: BTreeSet<u64> = agents
        .iter()
        .filter(|a| revocations.revoked(&a.name).is_some())
        .map(|a| a.cgroup.id)
        .collect();
    let have: BTreeSet<u64> = marked.iter().copied().collect();
    Plan {
        mark: want.difference(&have).copied().collect(),
        clear: have.difference(&want).copied().collect(),
    }
}

/// Makes `kernel`'s marks match `revocations` for `agents`. Marks are set
/// before any is cleared; the first failure stops and is returned.
pub fn sync(
    kernel: &mut Kernel,
    agents: &[GuardedAgent],
    revocations: &Revocations,
) -> Result<Plan, EbpfError> {
    let plan = plan(agents, revocations, &kernel.revoked());
    for id in &plan.mark {
        kernel.set_revoked(*id, true)?;
    }
    for id in &plan.clear {
        kernel.set_revoked(*id, false)?;
    }
    Ok(plan)
}
