//! Revocation: an agent whose cgroup the daemon marked in `REVOKED` gets
//! EPERM for every connect, datagram and bind at once, whatever its policy
//! says, until the mark is cleared. The mark is a pinned map entry, so it
//! holds while the daemon is down and after it restarts.

use agentguard_common::{MAX_CGROUP_LEVELS, event_kind};
use aya_ebpf::helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};

use crate::{
    events::{SocketFacts, emit},
    maps::REVOKED,
};

/// Whether the caller's cgroup or any cgroup above it is revoked: a
/// process in a cgroup below its agent's is that agent's too.
pub fn revoked() -> bool {
    // SAFETY: no arguments; returns the caller's cgroup v2 id.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: plain read of a u8 value; the map is only updated whole.
    if unsafe { REVOKED.get(own) }.is_some() {
        return true;
    }
    let mut level = 0;
    while level < MAX_CGROUP_LEVELS {
        // SAFETY: takes a level, returns that ancestor's id (0 past the
        // caller's own level).
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == own {
            return false;
        }
        // SAFETY: as above.
        if unsafe { REVOKED.get(id) }.is_some() {
            return true;
        }
        level += 1;
    }
    false
}

/// Refuses (and reports) the operation if the caller's agent is revoked.
pub fn check(facts: &SocketFacts) -> Result<(), crate::redirect::Refuse> {
    if revoked() {
        emit(event_kind::AGENT_REVOKED, facts);
        return Err(crate::redirect::Refuse);
    }
    Ok(())
}
