//! The kernel's half of a revocation: a per-cgroup "revoked" flag in a
//! pinned map, which makes every connect, datagram and bind of the agent's
//! cgroup fail with EPERM at once, whether the daemon runs or not.
//!
//! [`set_revoked`] is the one place the flag is set. The map and its
//! programs come with the kernel work (`Kernel::set_revoked(cgroup_id,
//! revoked)`); until they are merged this function has nothing to set, and
//! the proxy alone refuses a revoked agent (its connections are closed
//! before a byte is read, see `proxy::connection`), so the behaviour holds
//! end to end, one step later than the kernel would.

use std::sync::Mutex;

use crate::ebpf::{EbpfError, Kernel};

/// Marks (or clears) `cgroup_id` as revoked in the kernel.
pub fn set_revoked(kernel: &Mutex<Kernel>, cgroup_id: u64, revoked: bool) -> Result<(), EbpfError> {
    // With the kernel work merged, this is:
    //   kernel.lock().unwrap_or_else(|p| p.into_inner()).set_revoked(cgroup_id, revoked)
    let _ = (kernel, cgroup_id, revoked);
    Ok(())
}
