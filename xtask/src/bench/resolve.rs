//! Name resolution for everything the bench runs: a private /etc/hosts
//! and /etc/resolv.conf in a mount namespace of its own (same pid, same
//! cgroup), so no lookup can leave loopback.
//!
//! Without it a client would ask the machine's nameserver (not on loopback)
//! about the bench names: oha looks the URL's host up even when it goes
//! through a proxy. Here /etc/hosts maps the bench names where a lookup is
//! wanted, and the only nameserver is 127.0.0.1: for an agent the kernel
//! sends that query to agentguard's resolver, and for anything else
//! nothing listens there.

use std::{fs, path::Path, process::Command};

use anyhow::Result;

use super::upstream::{HOST, JWT_HOST, UPSTREAM_IP};
use crate::cmd;

pub struct Resolution {
    hosts: std::path::PathBuf,
    resolv: std::path::PathBuf,
}

impl Resolution {
    /// The passthrough name is left out of /etc/hosts on purpose: the
    /// agent must look it up through agentguard's resolver.
    pub fn write(dir: &Path) -> Result<Self> {
        let hosts = dir.join("hosts");
        let resolv = dir.join("resolv.conf");
        fs::write(
            &hosts,
            format!("127.0.0.1 localhost\n::1 localhost\n{UPSTREAM_IP} {HOST} {JWT_HOST}\n"),
        )?;
        fs::write(
            &resolv,
            "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n",
        )?;
        Ok(Self { hosts, resolv })
    }

    /// `cmd`, run in a private mount namespace with these files bound over
    /// the machine's. The bind needs CAP_SYS_ADMIN, so it happens before
    /// `cmd` (which may be `agentguard exec`, dropping capabilities) runs;
    /// each step execs, so `cmd` keeps the pid this returns.
    pub fn wrap(&self, cmd: Command) -> Command {
        let mut c = cmd::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#)
            .arg(&self.hosts)
            .arg(&self.resolv)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    }
}
