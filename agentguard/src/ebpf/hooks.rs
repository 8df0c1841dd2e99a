//! The kernel hooks the daemon needs and how each kind of program is loaded
//! and attached to an agent's cgroup. One attach helper serves every hook;
//! the only difference between them is the program type aya wants.

use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, LsmCgroup, Program, ProgramError, SockOps,
        links::{FdLink, LinkError},
    },
};

use super::{EbpfError, SCRATCH_SUFFIX, btf::Btf, layout, sockopt_link};

/// How a program attaches to a cgroup.
#[derive(Clone, Copy)]
pub enum Kind {
    SockAddr,
    Sock,
    SockOps,
    Sockopt,
    SkbEgress,
    /// BPF_LSM_CGROUP, on the LSM hook named after the section's slash.
    LsmCgroup,
}

/// One kernel hook the daemon needs. Every one is required: running without
/// any of them would leave a way around the proxy. The Unix-socket hooks
/// (Linux 6.7) and the process-access hook (BPF LSM) are the exceptions,
/// and only when the operator says so ([`super::UnixGuard::Optional`],
/// [`super::ProcessGuard::Optional`]).
pub struct Hook {
    pub program: &'static str,
    pub hook: &'static str,
    pub kind: Kind,
}

/// The hooks that guard Unix sockets.
pub const UNIX_HOOKS: [&str; 2] = ["cgroup/connect_unix", "cgroup/sendmsg_unix"];

/// The hook that keeps agents from other processes.
pub const PROCESS_HOOK: &str = "lsm_cgroup/ptrace_access_check";

pub const HOOKS: [Hook; 17] = [
    Hook {
        program: "agentguard_connect4",
        hook: "cgroup/connect4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_connect6",
        hook: "cgroup/connect6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_bind4",
        hook: "cgroup/bind4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_bind6",
        hook: "cgroup/bind6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sendmsg4",
        hook: "cgroup/sendmsg4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sendmsg6",
        hook: "cgroup/sendmsg6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_recvmsg4",
        hook: "cgroup/recvmsg4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_recvmsg6",
        hook: "cgroup/recvmsg6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_getpeername4",
        hook: "cgroup/getpeername4",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_getpeername6",
        hook: "cgroup/getpeername6",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sock_create",
        hook: "cgroup/sock_create",
        kind: Kind::Sock,
    },
    Hook {
        program: "agentguard_sockops",
        hook: "sockops",
        kind: Kind::SockOps,
    },
    Hook {
        program: "agentguard_setsockopt",
        hook: "cgroup/setsockopt",
        kind: Kind::Sockopt,
    },
    Hook {
        program: "agentguard_egress",
        hook: "cgroup_skb/egress",
        kind: Kind::SkbEgress,
    },
    Hook {
        program: "agentguard_connect_unix",
        hook: "cgroup/connect_unix",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_sendmsg_unix",
        hook: "cgroup/sendmsg_unix",
        kind: Kind::SockAddr,
    },
    Hook {
        program: "agentguard_ptrace",
        hook: PROCESS_HOOK,
        kind: Kind::LsmCgroup,
    },
];

/// Test hook: a comma-separated list of hooks (e.g. `cgroup/sendmsg4`) to
/// treat as unsupported by the kernel, so the start-up probe's refusal can
/// be exercised on a kernel that has them all. It can only make the daemon
/// refuse to start, never weaken it.
pub const UNSUPPORTED_HOOKS_ENV: &str = "AGENTGUARD_TEST_UNSUPPORTED_HOOKS";

/// The hooks [`UNSUPPORTED_HOOKS_ENV`] names.
pub fn forced_unsupported() -> Vec<String> {
    std::env::var(UNSUPPORTED_HOOKS_ENV)
        .unwrap_or_default()
        .split(',')
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect()
}

/// With bpf_link (kernel >= 5.7, which aya uses), the kernel refuses any
/// attach flag (EINVAL) and always attaches as BPF_F_ALLOW_MULTI
/// (kernel/bpf/cgroup.c, cgroup_bpf_link_attach): other tools' programs on the
/// same cgroup keep running, and old and new links can overlap during a
/// restart. `Single` is aya's name for "flags = 0".
const LINK_ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// What loading needs to know about the running kernel.
pub struct LoadContext<'a> {
    /// Hooks [`UNSUPPORTED_HOOKS_ENV`] names.
    pub forced: &'a [String],
    /// The kernel's BTF, read by agentguard for the layout checks...
    pub btf: &'a Btf,
    /// ...and by aya, which finds LSM hooks in it.
    pub aya_btf: &'a aya::Btf,
    /// Whether the BPF LSM runs (`Err` says why not).
    pub bpf_lsm: &'a Result<(), String>,
    /// The offsets the process-access program reads with.
    pub task_layout: &'a Result<agentguard_common::TaskLayout, String>,
}

/// Loads one hook's program, after the checks that can refuse it first.
pub fn load(ebpf: &mut Ebpf, hook: &Hook, kernel: &LoadContext<'_>) -> Result<(), EbpfError> {
    if kernel.forced.iter().any(|f| f == hook.hook) {
        return Err(EbpfError::ForcedUnsupported(hook.hook));
    }
    let unsafe_here = |reason: String| EbpfError::Layout {
        hook: hook.hook,
        reason,
    };
    // Both Unix hooks read the same struct: one check serves them.
    if UNIX_HOOKS.contains(&hook.hook) {
        layout::check_sock_addr_kern(kernel.btf).map_err(unsafe_here)?;
    }
    if hook.hook == PROCESS_HOOK {
        kernel.bpf_lsm.clone().map_err(unsafe_here)?;
        kernel.task_layout.clone().map_err(unsafe_here)?;
    }
    let name = hook.program;
    let loaded = match hook.kind {
        Kind::SockAddr => program::<CgroupSockAddr>(ebpf, name)?.load(),
        Kind::Sock => program::<CgroupSock>(ebpf, name)?.load(),
        Kind::SockOps => program::<SockOps>(ebpf, name)?.load(),
        Kind::Sockopt => program::<CgroupSockopt>(ebpf, name)?.load(),
        Kind::SkbEgress => program::<CgroupSkb>(ebpf, name)?.load(),
        Kind::LsmCgroup => {
            let lsm_hook = hook.hook.split_once('/').map_or(hook.hook, |(_, h)| h);
            program::<LsmCgroup>(ebpf, name)?.load(lsm_hook, kernel.aya_btf)
        }
    };
    loaded.map_err(|source| EbpfError::Unsupported {
        hook: hook.hook,
        source,
    })
}

/// Why a program could not be turned into a link of its own.
enum AttachFailure {
    Program(ProgramError),
    Link(LinkError),
}

impl From<ProgramError> for AttachFailure {
    fn from(e: ProgramError) -> Self {
        Self::Program(e)
    }
}

impl From<LinkError> for AttachFailure {
    fn from(e: LinkError) -> Self {
        Self::Link(e)
    }
}

/// A program type aya attaches to a cgroup with a bpf_link it hands over,
/// so that the daemon can pin it.
trait CgroupLink {
    fn link(&mut self, cgroup: BorrowedFd<'_>) -> Result<FdLink, AttachFailure>;
}

/// The program types whose `attach` takes only the cgroup and the mode.
macro_rules! cgroup_link {
    ($($ty:ty),*) => {$(
        impl CgroupLink for $ty {
            fn link(&mut self, cgroup: BorrowedFd<'_>) -> Result<FdLink, AttachFailure> {
                let id = self.attach(cgroup, LINK_ATTACH_MODE)?;
                Ok(FdLink::try_from(self.take_link(id)?)?)
            }
        }
    )*};
}
cgroup_link!(CgroupSockAddr, CgroupSock, SockOps);

impl CgroupLink for LsmCgroup {
    fn link(&mut self, cgroup: BorrowedFd<'_>) -> Result<FdLink, AttachFailure> {
        let id = self.attach(cgroup)?;
        Ok(FdLink::from(self.take_link(id)?))
    }
}

impl CgroupLink for CgroupSkb {
    fn link(&mut self, cgroup: BorrowedFd<'_>) -> Result<FdLink, AttachFailure> {
        let id = self.attach(cgroup, CgroupSkbAttachType::Egress, LINK_ATTACH_MODE)?;
        Ok(FdLink::try_from(self.take_link(id)?)?)
    }
}

/// Attaches `hook`'s program to the cgroup open at `cgroup` and returns
/// the link, not yet pinned. `scratch_dir` is where the sockopt link is
/// pinned for a moment (see [`sockopt_link`]).
pub fn attach(
    ebpf: &mut Ebpf,
    hook: &Hook,
    cgroup: BorrowedFd<'_>,
    cgroup_id: u64,
    cgroup_path: &Path,
    scratch_dir: &Path,
) -> Result<FdLink, EbpfError> {
    let name = hook.program;
    // A `cg` link name, so that detach and the next guard() find it if the
    // daemon dies before it is renamed (bpffs reserves names with dots).
    let scratch = scratch_dir.join(format!("cg{cgroup_id}-{name}{SCRATCH_SUFFIX}"));
    let linked = match hook.kind {
        Kind::SockAddr => program::<CgroupSockAddr>(ebpf, name)?.link(cgroup),
        Kind::Sock => program::<CgroupSock>(ebpf, name)?.link(cgroup),
        Kind::SockOps => program::<SockOps>(ebpf, name)?.link(cgroup),
        Kind::SkbEgress => program::<CgroupSkb>(ebpf, name)?.link(cgroup),
        Kind::LsmCgroup => program::<LsmCgroup>(ebpf, name)?.link(cgroup),
        Kind::Sockopt => sockopt(program::<CgroupSockopt>(ebpf, name)?, cgroup, &scratch),
    };
    linked.map_err(|failure| match failure {
        AttachFailure::Program(source) => EbpfError::Attach {
            name,
            cgroup: cgroup_path.to_owned(),
            source,
        },
        AttachFailure::Link(source) => EbpfError::Link { name, source },
    })
}

fn sockopt(
    prog: &mut CgroupSockopt,
    cgroup: BorrowedFd<'_>,
    scratch: &Path,
) -> Result<FdLink, AttachFailure> {
    let prog_fd = prog.fd()?;
    sockopt_link::attach(
        prog_fd.as_fd(),
        cgroup,
        sockopt_link::BPF_CGROUP_SETSOCKOPT,
        scratch,
    )
    .map_err(|e| AttachFailure::Program(ProgramError::IOError(e)))
}

/// The program `name` as the type its hook needs.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| EbpfError::Program { name, source })
}
