//! The fixture most intercepting tests share: a fresh test CA, a TLS
//! upstream on 127.0.0.3 with a leaf from it, and a daemon that trusts that
//! CA for upstreams.

use std::path::Path;

use super::{Daemon, TestCa, TlsUpstream, daemon::DaemonBuilder};

/// Where the fixture's upstream listens.
pub const UPSTREAM_IP: &str = "127.0.0.3";

pub struct Setup {
    /// Scratch space the test may use (the CA's files live here).
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub upstream: TlsUpstream,
    pub daemon: Daemon,
}

type PolicyFn = Box<dyn FnOnce(&Path, &TlsUpstream) -> String>;

/// How to make a [`Setup`]; [`SetupBuilder::start`] makes it.
#[must_use]
pub struct SetupBuilder {
    upstream_name: String,
    agents: Vec<String>,
    policy: PolicyFn,
    run_args: Vec<String>,
}

impl Setup {
    /// A fixture whose upstream answers to `upstream_name` (a DNS name or
    /// an IP literal) with a leaf for it.
    pub fn builder(upstream_name: &str) -> SetupBuilder {
        SetupBuilder {
            upstream_name: upstream_name.to_owned(),
            agents: Vec::new(),
            policy: Box::new(|_, _| String::new()),
            run_args: Vec::new(),
        }
    }
}

impl SetupBuilder {
    /// The agents the daemon guards.
    pub fn agents(mut self, agents: &[&str]) -> Self {
        self.agents = agents.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Every agent's policy after its name and cgroup (see
    /// [`DaemonBuilder::policy`]).
    pub fn policy(self, extra: &str) -> Self {
        let extra = extra.to_owned();
        self.policy_from(move |_, _| extra)
    }

    /// The policy, made once the scratch folder and the upstream exist
    /// (for secret files, and the upstream's port).
    pub fn policy_from(
        mut self,
        make: impl FnOnce(&Path, &TlsUpstream) -> String + 'static,
    ) -> Self {
        self.policy = Box::new(make);
        self
    }

    /// More `agentguard run` arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.run_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn start(self) -> Setup {
        super::require_root();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("agentguard test upstream CA", dir.path());
        let upstream = TlsUpstream::start(UPSTREAM_IP, &self.upstream_name, &ca);
        let policy = (self.policy)(dir.path(), &upstream);
        let agents: Vec<&str> = self.agents.iter().map(String::as_str).collect();
        let run_args: Vec<&str> = self.run_args.iter().map(String::as_str).collect();
        let daemon: DaemonBuilder = Daemon::builder(&agents)
            .policy(&policy)
            .upstream_ca(&ca.pem_path)
            .args(&run_args);
        Setup {
            daemon: daemon.start(),
            dir,
            ca,
            upstream,
        }
    }
}
