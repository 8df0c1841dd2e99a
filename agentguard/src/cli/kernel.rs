//! The kernel flags of `agentguard run`: what the daemon may start
//! without, how the kernel's shared maps are split between agents, and
//! whether the kernel splices passthrough connections.

use clap::Args;

use crate::{
    config::{ConfigError, parse_size},
    ebpf::{DEFAULT_RECORDS_PER_AGENT, KernelOptions, PassthroughRelay, ProcessGuard},
};

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
    /// Most connections one agent may have waiting for the proxy in the
    /// kernel's shared table; past it its connects fail with EPERM rather
    /// than take room another agent needs.
    #[arg(long, default_value_t = DEFAULT_RECORDS_PER_AGENT, value_parser = clap::value_parser!(u32).range(1..))]
    kernel_agent_records: u32,
    /// Most bytes of the kernel's event ring one agent's unread events may
    /// take (e.g. 64K); past it they are dropped and counted as its own
    /// losses, so its flood cannot hide another agent's refusals.
    #[arg(long, default_value = "64K", value_name = "SIZE")]
    kernel_agent_event_bytes: String,
    /// How passthrough connections are relayed: `userspace` copies both
    /// ways through the proxy; `kernel` has the agent's sends go straight
    /// into the upstream socket once its ClientHello is through (agent
    /// sockets in a sockhash with an sk_msg program) and copies the
    /// answers, falling back to `userspace` where the kernel refuses
    /// (README, Passthrough).
    #[arg(long, value_enum, default_value_t = PassthroughRelay::Userspace)]
    passthrough_relay: PassthroughRelay,
}

impl KernelRunArgs {
    pub fn options(&self) -> Result<KernelOptions, ConfigError> {
        let bytes = parse_size("--kernel-agent-event-bytes", &self.kernel_agent_event_bytes)?;
        let ring = u64::from(agentguard_common::KERNEL_EVENTS_BYTES);
        if bytes == 0 || bytes > ring {
            return Err(ConfigError::OutOfRange {
                flag: "--kernel-agent-event-bytes",
                value: bytes,
                max: ring,
            });
        }
        Ok(KernelOptions {
            processes: if self.allow_unguarded_processes {
                ProcessGuard::Optional
            } else {
                ProcessGuard::Required
            },
            records_per_agent: self.kernel_agent_records,
            event_bytes_per_agent: bytes as u32,
            passthrough_relay: self.passthrough_relay,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kernel: KernelRunArgs,
    }

    fn relay(argv: &[&str]) -> Result<PassthroughRelay, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("agentguard").chain(argv.iter().copied()))?;
        Ok(cli.kernel.options().unwrap().passthrough_relay)
    }

    #[test]
    fn passthrough_is_relayed_in_user_space_unless_the_splice_is_asked_for() {
        assert_eq!(relay(&[]).unwrap(), PassthroughRelay::Userspace);
        assert_eq!(
            relay(&["--passthrough-relay", "kernel"]).unwrap(),
            PassthroughRelay::Kernel
        );
        assert_eq!(
            relay(&["--passthrough-relay", "userspace"]).unwrap(),
            PassthroughRelay::Userspace
        );
        assert!(relay(&["--passthrough-relay", "splice"]).is_err());
    }
}
