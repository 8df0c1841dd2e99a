//! Who holds a local TCP port: for the daemon's start-up error when one of
//! its own listeners is taken. An agent holding it (it bound the port while
//! the daemon was down, or before its cgroup was first guarded) could
//! receive what others send to agentguard, so the daemon must name it and
//! not start.
//!
//! Read from /proc: the listening socket's inode in /proc/net/tcp and tcp6,
//! the process whose descriptor is that socket, and its cgroup.

use std::{fs, path::Path};

use crate::policy::PolicySet;

/// A process listening on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 path, from the root (`/agentguard/support-bot`).
    pub cgroup: String,
    /// The agent whose cgroup that is (or is above it), if any.
    pub agent: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}) in cgroup {}",
            self.pid, self.comm, self.cgroup
        )?;
        if let Some(agent) = &self.agent {
            write!(f, ", agent {agent:?}'s")?;
        }
        Ok(())
    }
}

/// TCP_LISTEN in /proc/net/tcp's `st` column.
const LISTEN: &str = "0A";

/// The first process found listening on TCP `port` (any address).
pub fn tcp_listener(port: u16, policy: &PolicySet) -> Option<Holder> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| {
                inodes
                    .iter()
                    .any(|i| target.as_os_str() == format!("socket:[{i}]").as_str())
            })
        });
        if holds {
            return Some(describe(pid, &entry.path(), policy));
        }
    }
    None
}

fn listening_inodes(port: u16) -> Vec<String> {
    let want = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(st), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if *st == LISTEN && local.rsplit_once(':').is_some_and(|(_, p)| p == want) {
                inodes.push((*inode).to_owned());
            }
        }
    }
    inodes
}

fn describe(pid: u32, proc_dir: &Path, policy: &PolicySet) -> Holder {
    let comm = fs::read_to_string(proc_dir.join("comm"))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default();
    let cgroup = fs::read_to_string(proc_dir.join("cgroup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        })
        .unwrap_or_default();
    let agent = policy
        .agents
        .iter()
        .find(|a| {
            let own = format!("/{}", a.cgroup);
            cgroup == own || cgroup.starts_with(&format!("{own}/"))
        })
        .map(|a| a.name.clone());
    Holder {
        pid,
        comm,
        cgroup,
        agent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let policy = PolicySet {
            agents: Vec::new(),
            version: "".into(),
        };
        let holder = tcp_listener(port, &policy).expect("the test's own listener");
        assert_eq!(holder.pid, std::process::id());
        assert_eq!(holder.agent, None);
        drop(listener);
        assert_eq!(tcp_listener(port, &policy), None);
    }
}
