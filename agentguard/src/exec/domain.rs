//! A Landlock domain of the agent's own, the belt for a kernel that cannot
//! run the process-access program (no usable BPF LSM).
//!
//! Landlock confines ptrace to a domain: a process inside one may reach,
//! through every check the kernel makes with `ptrace_may_access`, only
//! processes in the same domain or one nested in it. That is
//! `PTRACE_ATTACH`/`PTRACE_SEIZE`, `process_vm_readv`/`writev`,
//! `pidfd_getfd` and opening `/proc/<pid>/mem` — the last is an `open()`
//! of a path that no seccomp filter can judge. The agent's own children
//! inherit the domain, so a debugger still traces what it starts.
//!
//! Creating a domain needs a ruleset that handles at least one access
//! right. This one handles only making block devices, and allows it
//! nowhere: that already needs CAP_MKNOD, which exec drops, so files,
//! sockets and programs stay exactly as the rest of exec leaves them.

use landlock::{
    AccessFs, CompatLevel, Compatible as _, Ruleset, RulesetAttr as _, RulesetCreatedAttr as _,
    RulesetStatus,
};

/// Whether this process now runs in a domain of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Entered,
    /// The kernel has no Landlock (not built in, or not in `lsm=`).
    Unavailable,
}

/// Puts this thread (and so the program it execs, and every child) into a
/// new Landlock domain. `no_new_privs`: whether to set it, as Landlock
/// requires unless the caller keeps CAP_SYS_ADMIN.
pub fn enter(no_new_privs: bool) -> Result<Domain, String> {
    let created = Ruleset::default()
        // Ptrace scoping came with Landlock itself (Linux 5.13, ABI 1), as
        // did this access right: a kernel with Landlock has all of it, one
        // without has none, and the caller then falls back to seccomp.
        .set_compatibility(CompatLevel::SoftRequirement)
        .handle_access(AccessFs::MakeBlock)
        .and_then(|r| r.create())
        .map_err(|e| e.to_string())?;
    let status = created
        .no_new_privs(no_new_privs)
        .restrict_self()
        .map_err(|e| e.to_string())?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(Domain::Entered),
        RulesetStatus::NotEnforced => Ok(Domain::Unavailable),
        // One access right, requested soft: either all of it or none.
        RulesetStatus::PartiallyEnforced => Err("Landlock enforced the domain only in part".into()),
    }
}
