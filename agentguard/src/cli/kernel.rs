//! The kernel flags of `agentguard run`: what the daemon may start
//! without, and how the kernel's shared maps are split between agents.

use clap::Args;

use crate::ebpf::{KernelOptions, ProcessGuard};

#[derive(Debug, Args)]
pub struct KernelRunArgs {
    /// Start even if the BPF LSM is not active (`lsm=...,bpf` at boot):
    /// agents can then ptrace, read and write the memory of, and take
    /// descriptors from other processes of their uid outside their cgroup,
    /// except that `agentguard exec` refuses the main system calls for
    /// that with a seccomp filter. Without this flag such a kernel stops
    /// start-up.
    #[arg(long)]
    allow_unguarded_processes: bool,
}

impl KernelRunArgs {
    pub fn options(&self) -> KernelOptions {
        KernelOptions {
            processes: if self.allow_unguarded_processes {
                ProcessGuard::Optional
            } else {
                ProcessGuard::Required
            },
        }
    }
}
