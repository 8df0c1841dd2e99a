//! The kernel flags of `agentguard run`: what the daemon may start
//! without, how the kernel's shared maps are split between agents, and
//! whether the kernel splices passthrough connections.

use std::time::Duration;

use clap::Args;

use crate::{
    config::{ConfigError, parse_duration, parse_size},
    ebpf::{
        DEFAULT_RECORD_MAX_WAIT, DEFAULT_RECORDS_PER_AGENT, KernelOptions, MAX_RECORD_MAX_WAIT,
        PassthroughRelay, ProcessGuard,
    },
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
    /// How long a connection's record may wait in the kernel for the proxy
    /// to accept the connection; then it is forgotten and goes back to its
    /// agent's share, and the connection, should it still be accepted, is
    /// refused (whole seconds, at least 1s and at most 1d; 0s: records
    /// wait until the daemon restarts).
    #[arg(long, default_value = DEFAULT_RECORD_MAX_WAIT, value_name = "DURATION")]
    kernel_record_max_wait: String,
    /// Most bytes of the kernel's event ring one agent's unread events may
    /// take (e.g. 64K); past it they are dropped and counted as its own
    /// losses, so its flood cannot hide another agent's refusals.
    #[arg(long, default_value = "64K", value_name = "SIZE")]
    kernel_agent_event_bytes: String,
    /// How passthrough connections are relayed: `userspace` copies both
    /// ways through the proxy; `kernel` has the agent's sends go straight
    /// into the upstream socket once its ClientHello is through (agent
    /// sockets in a sockhash with an sk_msg program) and copies the
    /// answers, falling back to `userspace` where the kernel refuses;
    /// `direct` lets an agent connect to an address agentguard's resolver
    /// gave it for a passthrough name itself, not through the proxy, the
    /// kernel checking its first send is a ClientHello for that name
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
            record_max_wait: record_max_wait(&self.kernel_record_max_wait)?,
            event_bytes_per_agent: bytes as u32,
            passthrough_relay: self.passthrough_relay,
        })
    }
}

/// `--kernel-record-max-wait`: None for `0s`; rounded up to whole seconds,
/// what the kernel's stamps count in.
fn record_max_wait(value: &str) -> Result<Option<Duration>, ConfigError> {
    const FLAG: &str = "--kernel-record-max-wait";
    let wait = parse_duration(FLAG, value)?;
    if wait.is_zero() {
        return Ok(None);
    }
    if wait < Duration::from_secs(1) {
        return Err(ConfigError::DurationTooShort {
            flag: FLAG,
            value: value.to_owned(),
            min: "1s",
        });
    }
    if wait > MAX_RECORD_MAX_WAIT {
        return Err(ConfigError::DurationTooLong {
            flag: FLAG,
            value: value.to_owned(),
            max: "1d",
        });
    }
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Ok(Some(Duration::from_secs(whole)))
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
        assert_eq!(
            relay(&["--passthrough-relay", "direct"]).unwrap(),
            PassthroughRelay::Direct
        );
        assert!(relay(&["--passthrough-relay", "splice"]).is_err());
    }

    #[test]
    fn records_wait_a_minute_by_default_in_whole_seconds_or_without_limit() {
        let wait = |argv: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("agentguard").chain(argv.iter().copied()))
                    .unwrap();
            cli.kernel.options().map(|o| o.record_max_wait)
        };
        assert_eq!(wait(&[]).unwrap(), Some(Duration::from_secs(60)));
        assert_eq!(wait(&["--kernel-record-max-wait", "0s"]).unwrap(), None);
        assert_eq!(
            wait(&["--kernel-record-max-wait", "1500ms"]).unwrap(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            wait(&["--kernel-record-max-wait", "1d"]).unwrap(),
            Some(MAX_RECORD_MAX_WAIT)
        );
        for (value, message) in [
            (
                "500ms",
                "--kernel-record-max-wait: \"500ms\" is shorter than 1s",
            ),
            ("2d", "--kernel-record-max-wait: \"2d\" is longer than 1d"),
            (
                "soon",
                "--kernel-record-max-wait: \"soon\" is not a duration (like 200ms, 60s, 90d)",
            ),
        ] {
            let err = wait(&["--kernel-record-max-wait", value]).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }
}
