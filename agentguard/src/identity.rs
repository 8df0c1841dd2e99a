//! Who opened a connection: the kernel's record resolved to an agent, a cgroup
//! path and a process.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use agentguard_common::{AF_INET, ConnRecord};
use serde::Serialize;
use thiserror::Error;

use crate::{
    audit::Event,
    cgroup::{Cgroup, CgroupRoot},
    containers::ContainerInfo,
};

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cgroup id {0} belongs to no guarded agent")]
    UnknownCgroup(u64),
}

/// The identity of the process behind one connection.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub agent: Arc<str>,
    /// cgroup path relative to the cgroup v2 mount.
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Thread-group id: the pid as user space knows it.
    pub pid: u32,
    /// Kernel id of the thread that called connect().
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// Family of the agent's socket: "ipv6" for a v6 socket even when it
    /// dialled a v4-mapped address.
    pub socket_family: &'static str,
    /// `/proc/<pid>/exe`, read when the connection was accepted; `None` if the
    /// process had already exited. Informational: never used for decisions,
    /// since a pid can be reused.
    pub exe: Option<PathBuf>,
    /// The container the process runs in, when the daemon attached it
    /// to the agent by `[agent.containers]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Arc<ContainerInfo>>,
}

impl Identity {
    /// `event` with the fields the kernel and /proc tell about the process.
    /// (Here rather than in `audit`, which knows nothing of identities: the
    /// record is below everything that writes to it.)
    pub fn stamp(&self, mut event: Event) -> Event {
        event.agent = Some(self.agent.clone());
        event.cgroup_path = Some(self.cgroup.as_str().into());
        event.cgroup_id = Some(self.cgroup_id);
        event.pid = Some(self.pid);
        event.uid = Some(self.uid);
        event.gid = Some(self.gid);
        event.comm = Some(self.comm.as_str().into());
        event.exe = self.exe.as_ref().map(|p| p.display().to_string().into());
        if let Some(c) = &self.container {
            event.container_id = Some(c.id.clone());
            event.container_name = c.name.clone();
            event.container_image = c.image.clone();
        }
        event
    }
}

/// One guarded agent.
#[derive(Debug, Clone)]
pub struct GuardedAgent {
    pub name: Arc<str>,
    pub cgroup: Cgroup,
    /// Set for a container's cgroup the agent was attached to (see
    /// `containers`); `None` for the agent's own cgroup.
    pub container: Option<Arc<ContainerInfo>>,
}

/// Maps cgroup ids to agents. Sub-cgroups of an agent's cgroup belong to that
/// agent (the kernel hooks run for them too); they are found on first sight
/// and cached.
pub struct AgentTable {
    root: CgroupRoot,
    agents: Vec<GuardedAgent>,
    by_cgroup: Mutex<HashMap<u64, Option<(usize, PathBuf)>>>,
}

impl AgentTable {
    pub fn new(root: CgroupRoot, agents: Vec<GuardedAgent>) -> Self {
        let by_cgroup = agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.cgroup.id, Some((i, a.cgroup.path.clone()))))
            .collect();
        Self {
            root,
            agents,
            by_cgroup: Mutex::new(by_cgroup),
        }
    }

    pub fn agents(&self) -> &[GuardedAgent] {
        &self.agents
    }

    /// The agent's own cgroup (not one of its containers').
    pub fn get(&self, name: &str) -> Option<&GuardedAgent> {
        self.agents
            .iter()
            .find(|a| &*a.name == name && a.container.is_none())
    }

    /// The containers attached to agent `name`.
    pub fn containers_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a GuardedAgent> {
        self.agents
            .iter()
            .filter(move |a| &*a.name == name && a.container.is_some())
    }

    pub fn root(&self) -> &CgroupRoot {
        &self.root
    }

    /// The agent owning `cgroup_id`, and the cgroup's path relative to the
    /// cgroup v2 mount.
    pub fn locate(&self, cgroup_id: u64) -> Option<(Arc<str>, String)> {
        let (index, path) = self.lookup(cgroup_id)?;
        Some((
            self.agents[index].name.clone(),
            self.root.relative(&path).display().to_string(),
        ))
    }

    /// The container attached to an agent whose cgroup is `cgroup_id` (or
    /// above it), if it is one.
    pub fn container_of(&self, cgroup_id: u64) -> Option<Arc<ContainerInfo>> {
        let (index, _) = self.lookup(cgroup_id)?;
        self.agents[index].container.clone()
    }

    pub fn resolve(&self, record: &ConnRecord) -> Result<Identity, IdentityError> {
        let (index, path) = self
            .lookup(record.cgroup_id)
            .ok_or(IdentityError::UnknownCgroup(record.cgroup_id))?;
        let agent = &self.agents[index];
        Ok(Identity {
            agent: agent.name.clone(),
            cgroup: self.root.relative(&path).display().to_string(),
            cgroup_id: record.cgroup_id,
            pid: record.tgid,
            tid: record.pid,
            uid: record.uid,
            gid: record.gid,
            comm: comm_str(&record.comm),
            socket_family: if record.family == AF_INET {
                "ipv4"
            } else {
                "ipv6"
            },
            exe: std::fs::read_link(format!("/proc/{}/exe", record.tgid)).ok(),
            container: agent.container.clone(),
        })
    }

    fn lookup(&self, cgroup_id: u64) -> Option<(usize, PathBuf)> {
        let mut cache = self.by_cgroup.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(&cgroup_id) {
            return hit.clone();
        }
        let found = self
            .agents
            .iter()
            .enumerate()
            .find_map(|(i, a)| a.cgroup.find_descendant(cgroup_id).map(|path| (i, path)));
        // Bound the cache: ids of unknown cgroups could otherwise grow it.
        if cache.len() < 65_536 {
            cache.insert(cgroup_id, found.clone());
        }
        found
    }
}

/// The original destination the agent asked for.
pub fn original_destination(record: &ConnRecord) -> SocketAddr {
    let v6 = Ipv6Addr::from(record.orig_ip);
    let ip = match v6.to_ipv4_mapped() {
        // Dial IPv4 for both v4 sockets and v6 sockets to ::ffff:a.b.c.d: the
        // wire protocol is IPv4 either way.
        Some(v4) => IpAddr::V4(v4),
        None if record.family == AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, record.orig_port)
}

fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use agentguard_common::{AF_INET6, v4_mapped};

    use super::*;

    fn record(ip: [u8; 16], family: u16) -> ConnRecord {
        ConnRecord {
            orig_ip: ip,
            orig_port: 8080,
            family,
            tgid: 1,
            pid: 1,
            uid: 0,
            gid: 0,
            waiting_since_s: 0,
            cgroup_id: 1,
            cookie: 1,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
        }
    }

    #[test]
    fn destinations_keep_their_family() {
        let v4 = record(v4_mapped([127, 0, 0, 2]), AF_INET);
        assert_eq!(original_destination(&v4), "127.0.0.2:8080".parse().unwrap());
        let mapped = record(v4_mapped([127, 0, 0, 2]), AF_INET6);
        assert_eq!(
            original_destination(&mapped),
            "127.0.0.2:8080".parse().unwrap()
        );
        let v6 = record(Ipv6Addr::LOCALHOST.octets(), AF_INET6);
        assert_eq!(original_destination(&v6), "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn events_are_stamped_with_who_the_kernel_saw() {
        let identity = Identity {
            agent: "bot".into(),
            cgroup: "agentguard/bot".into(),
            cgroup_id: 7,
            pid: 42,
            tid: 43,
            uid: 1000,
            gid: 1001,
            comm: "curl".into(),
            socket_family: "ipv4",
            exe: Some("/usr/bin/curl".into()),
            container: Some(Arc::new(ContainerInfo {
                runtime: "podman".into(),
                id: "3ff7".into(),
                name: Some("dev-1".into()),
                image: Some("localhost/agent:latest".into()),
            })),
        };
        let e = identity.stamp(Event::new(crate::audit::Kind::Request));
        assert_eq!(e.agent.as_deref(), Some("bot"));
        assert_eq!(e.cgroup_path.as_deref(), Some("agentguard/bot"));
        assert_eq!(e.cgroup_id, Some(7));
        assert_eq!((e.pid, e.uid, e.gid), (Some(42), Some(1000), Some(1001)));
        assert_eq!(e.comm.as_deref(), Some("curl"));
        assert_eq!(e.exe.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(e.container_id.as_deref(), Some("3ff7"));
        assert_eq!(e.container_name.as_deref(), Some("dev-1"));
        assert_eq!(e.container_image.as_deref(), Some("localhost/agent:latest"));
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_str(b"curl\0\0\0"), "curl");
        assert_eq!(comm_str(b"exactly16bytes!!"), "exactly16bytes!!");
    }
}
