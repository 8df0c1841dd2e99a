//! The seccomp filters `agentguard exec` installs: no new user or mount
//! namespaces and no mounts; and only the socket families the kernel
//! programs see.
//!
//! Without it an unprivileged agent can `unshare -Urm`, become root of a
//! user namespace of its own and bind-mount any socket it can open (ssh-agent,
//! the session bus) over a path its policy allows: the kernel's Unix-socket
//! check compares the address as written, and the path then resolves in the
//! agent's mount namespace. It is also how an agent would regain
//! CAP_SYS_ADMIN and CAP_NET_RAW (in a namespace of its own) after exec
//! dropped them.
//!
//! The cgroup programs only see IPv4, IPv6 and Unix sockets. Any other
//! family reaches its peers without them: AF_VSOCK, for one, talks to the
//! hypervisor host and needs no privilege. So `socket()` of any other
//! family but NETLINK_ROUTE (which glibc uses to list interfaces; other
//! netlink protocols such as NETLINK_USERSOCK carry messages between
//! unrelated processes) fails with EAFNOSUPPORT, as if the kernel had no
//! such family; and io_uring, which can create sockets without `socket()`
//! (IORING_OP_SOCKET), is ENOSYS, so runtimes fall back to plain system
//! calls.
//!
//! Where the kernel cannot keep an agent from other processes (no BPF LSM,
//! daemon started with `--allow-unguarded-processes`) and has no Landlock
//! for exec's domain (`domain.rs`) either, a third filter refuses the main ways into another process: PTRACE_ATTACH and
//! PTRACE_SEIZE (PTRACE_TRACEME still lets a debugger start its own
//! child), process_vm_readv/writev and pidfd_getfd. /proc/<pid>/mem is an
//! open() of a path, which a filter cannot see: only the BPF LSM or
//! Landlock closes it.
//!
//! On x86_64, seccompiler's filters check the architecture but not the x32
//! bit of the system call number: on a kernel built with x32 support, the
//! x32 `socket` or `unshare` would pass them. A first filter refuses every
//! x32 call (EPERM; agents are x86_64 programs).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Namespace flags that `clone` and `unshare` may not carry.
const REFUSED_CLONE_FLAGS: [u64; 2] = [
    nix::libc::CLONE_NEWUSER as u64,
    nix::libc::CLONE_NEWNS as u64,
];

/// Refused outright: joining other namespaces and every way to mount.
const REFUSED_SYSCALLS: [nix::libc::c_long; 11] = [
    nix::libc::SYS_setns,
    nix::libc::SYS_mount,
    nix::libc::SYS_umount2,
    nix::libc::SYS_pivot_root,
    nix::libc::SYS_move_mount,
    nix::libc::SYS_open_tree,
    nix::libc::SYS_fsopen,
    nix::libc::SYS_fsconfig,
    nix::libc::SYS_fsmount,
    nix::libc::SYS_fspick,
    nix::libc::SYS_mount_setattr,
];

/// The socket families an agent may create (include/linux/socket.h).
const ALLOWED_FAMILIES: [i32; 4] = [
    nix::libc::AF_UNIX,
    nix::libc::AF_INET,
    nix::libc::AF_INET6,
    nix::libc::AF_NETLINK,
];

/// Installed whatever the flags, first: x32 calls (which the others do
/// not see), and sockets the kernel programs cannot see.
pub fn socket_filters() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let e = |e: seccompiler::BackendError| e.to_string();
    let cond = |arg, op, value: i32| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value as u64).map_err(e)
    };
    // socket(family, type, protocol). Two rules, either refuses: the
    // family is none of the allowed ones; or it is netlink with another
    // protocol than NETLINK_ROUTE.
    let not_allowed = ALLOWED_FAMILIES
        .iter()
        .map(|&family| cond(0, SeccompCmpOp::Ne, family))
        .collect::<Result<Vec<_>, _>>()?;
    let other_netlink = vec![
        cond(0, SeccompCmpOp::Eq, nix::libc::AF_NETLINK)?,
        cond(2, SeccompCmpOp::Ne, nix::libc::NETLINK_ROUTE)?,
    ];
    let families = SeccompFilter::new(
        BTreeMap::from([(
            nix::libc::SYS_socket,
            vec![
                SeccompRule::new(not_allowed).map_err(e)?,
                SeccompRule::new(other_netlink).map_err(e)?,
            ],
        )]),
        SeccompAction::Allow,
        SeccompAction::Errno(nix::libc::EAFNOSUPPORT as u32),
        arch,
    )
    .map_err(e)?;
    let io_uring = SeccompFilter::new(
        BTreeMap::from([(nix::libc::SYS_io_uring_setup, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(nix::libc::ENOSYS as u32),
        arch,
    )
    .map_err(e)?;
    let mut filters = x32_filter();
    for f in [families, io_uring] {
        filters.push(BpfProgram::try_from(f).map_err(e)?);
    }
    Ok(filters)
}

/// `__X32_SYSCALL_BIT` (arch/x86/include/uapi/asm/unistd.h).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Refuses every x32 system call: a hand-written filter, because
/// seccompiler cannot compare the call number itself. Its architecture
/// check (AUDIT_ARCH_X86_64 covers x32 too) is done by the filters after
/// it, which kill i386 calls.
#[cfg(target_arch = "x86_64")]
fn x32_filter() -> Vec<BpfProgram> {
    use nix::libc::{BPF_ABS, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, EPERM};
    use seccompiler::sock_filter;
    // struct seccomp_data: `nr` is the first field.
    const NR_OFFSET: u32 = 0;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![vec![
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, NR_OFFSET),
        op(BPF_JMP | BPF_JGE | BPF_K, 0, 1, X32_SYSCALL_BIT),
        op(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ERRNO | EPERM as u32),
        op(BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW),
    ]]
}

/// Other architectures have no second ABI to close.
#[cfg(not(target_arch = "x86_64"))]
fn x32_filter() -> Vec<BpfProgram> {
    Vec::new()
}

/// The namespace filters, in the order they are installed. Two, because
/// they answer differently: EPERM for what is refused, ENOSYS for clone3,
/// whose flags live in memory a filter cannot read; glibc and others then
/// fall back to clone, whose flags it can.
pub fn filters() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let e = |e: seccompiler::BackendError| e.to_string();
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in [nix::libc::SYS_clone, nix::libc::SYS_unshare] {
        // clone(flags, ...) and unshare(flags): the flags are argument 0.
        let rules = REFUSED_CLONE_FLAGS
            .iter()
            .map(|&flag| {
                let has_flag = SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .map_err(e)?;
                SeccompRule::new(vec![has_flag]).map_err(e)
            })
            .collect::<Result<_, _>>()?;
        refused.insert(syscall, rules);
    }
    for syscall in REFUSED_SYSCALLS {
        // An empty rule list matches every call.
        refused.insert(syscall, Vec::new());
    }
    let eperm = SeccompFilter::new(
        refused,
        SeccompAction::Allow,
        SeccompAction::Errno(nix::libc::EPERM as u32),
        arch,
    )
    .map_err(e)?;
    let enosys = SeccompFilter::new(
        BTreeMap::from([(nix::libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(nix::libc::ENOSYS as u32),
        arch,
    )
    .map_err(e)?;
    [eperm, enosys]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(e))
        .collect()
}

/// ptrace requests that take hold of a running process
/// (include/uapi/linux/ptrace.h).
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;

/// Refused outright when the kernel does not guard processes: reading and
/// writing another process's memory, and taking its descriptors.
const PROCESS_SYSCALLS: [nix::libc::c_long; 3] = [
    nix::libc::SYS_process_vm_readv,
    nix::libc::SYS_process_vm_writev,
    nix::libc::SYS_pidfd_getfd,
];

/// The filter for agents on a kernel without the process-access program:
/// EPERM, as that program would answer.
pub fn process_filters() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let e = |e: seccompiler::BackendError| e.to_string();
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // ptrace(request, pid, ...): the request is argument 0.
    let requests = [PTRACE_ATTACH, PTRACE_SEIZE]
        .iter()
        .map(|&request| {
            let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, request)
                .map_err(e)?;
            SeccompRule::new(vec![cond]).map_err(e)
        })
        .collect::<Result<_, _>>()?;
    refused.insert(nix::libc::SYS_ptrace, requests);
    for syscall in PROCESS_SYSCALLS {
        refused.insert(syscall, Vec::new());
    }
    let filter = SeccompFilter::new(
        refused,
        SeccompAction::Allow,
        SeccompAction::Errno(nix::libc::EPERM as u32),
        arch,
    )
    .map_err(e)?;
    Ok(vec![BpfProgram::try_from(filter).map_err(e)?])
}

/// Installs `filters` on this thread (exec keeps them, and every child
/// inherits them). Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install(filters: Vec<BpfProgram>) -> Result<(), String> {
    for filter in filters {
        seccompiler::apply_filter(&filter).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_machine() {
        assert_eq!(filters().unwrap().len(), 2);
        let sockets = socket_filters().unwrap();
        assert_eq!(
            sockets.len(),
            if cfg!(target_arch = "x86_64") { 3 } else { 2 }
        );
        assert_eq!(process_filters().unwrap().len(), 1);
        for filters in [filters().unwrap(), sockets, process_filters().unwrap()] {
            assert!(filters.iter().all(|f| !f.is_empty()));
        }
    }
}
