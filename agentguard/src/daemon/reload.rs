//! Loading a policy set into a [`LiveState`]: validating it as a whole
//! (policy files, then every secret it names), guarding new agents' cgroups
//! in the kernel and giving each agent its resolver. At start and on every
//! reload the same path runs, so a policy the daemon would refuse at start
//! is refused at reload too, and the running one stays.
//!
//! A reload reads only settled files: a policy written in place (not by
//! rename) passes through prefixes that may be valid TOML (an `[agent]`
//! with no tools yet), and loading one would deny the agent's requests
//! until the next change. A file changed within [`SETTLE`] is read later,
//! and a read during which any file changed is thrown away.
//!
//! A reload never detaches programs from a cgroup, even one no policy names
//! any more: processes may still live there, and the proxy already refuses
//! connections from cgroups it does not know (fail closed). Detaching is
//! `agentguard detach`'s job alone.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tracing::{debug, info, warn};

use super::units;
use crate::{
    audit::{AuditSink, Event},
    cgroup::{Cgroup, CgroupError, CgroupRoot},
    containers::{Attached, ContainerInfo, ContainersError, Created},
    credentials::{CredentialErrors, CredentialStore, TokenFetcher},
    dns::Resolvers,
    ebpf::{EbpfError, Kernel},
    identity::{AgentTable, GuardedAgent},
    live::{Live, LiveState},
    netns::{NetnsId, NetnsListeners},
    policy::{self, NetnsSource, PolicyErrors},
    revoke::{self, Revocations},
};

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("invalid policy:\n{0}")]
    Policy(#[from] PolicyErrors),
    #[error("policy names unusable credentials:\n{0}")]
    Credentials(#[from] CredentialErrors),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error("agent {agent:?}: {source}")]
    Netns {
        agent: String,
        source: crate::netns::NetnsError,
    },
    #[error(
        "agentguard itself runs in cgroup {daemon}, inside agent {agent:?}'s cgroup {agent_cgroup}: its own connections would be redirected to itself; run it outside every agent cgroup"
    )]
    DaemonInsideAgent {
        daemon: String,
        agent: String,
        agent_cgroup: String,
    },
    #[error(
        "policy files were still changing after {0:?}; not loaded (replace files atomically: write a temporary file, then rename it)"
    )]
    Unsettled(Duration),
    #[error("{file}: agent {agent:?}: {reason}")]
    UnixSocket {
        file: String,
        agent: String,
        reason: String,
    },
}

/// Why `agentguard oci-hook` could not guard a container.
#[derive(Debug, Error)]
pub enum ContainerError {
    #[error("no agent {0:?} in the policy")]
    UnknownAgent(String),
    #[error(
        "agent {0:?}: its policy must say netns = \"cgroup\" for containers started with the hook"
    )]
    NotByCgroup(String),
    #[error("agent {0:?} is not guarded")]
    NotGuarded(String),
    #[error("process {pid}: {source}")]
    Process { pid: u32, source: std::io::Error },
    #[error(
        "process {pid} is in cgroup {cgroup}, not in agent {agent:?}'s cgroup {agent_cgroup} or below it (start the container with --cgroup-parent)"
    )]
    Elsewhere {
        pid: u32,
        cgroup: String,
        agent: String,
        agent_cgroup: String,
    },
    #[error(transparent)]
    Guard(#[from] ReloadError),
    #[error(transparent)]
    Facts(#[from] ContainersError),
    #[error(
        "container {id} ({name}) is selected by agents {first:?} and {second:?}; a container may be one agent only"
    )]
    Ambiguous {
        id: String,
        name: String,
        first: String,
        second: String,
    },
    #[error(
        "container {id}: its process {pid} is in cgroup {cgroup}, which {why}; agentguard will not attach an agent there"
    )]
    Cgroup {
        id: String,
        pid: u32,
        cgroup: String,
        why: String,
    },
    #[error(transparent)]
    Open(#[from] CgroupError),
}

/// Why `agentguard attach` could not guard a unit.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error(transparent)]
    Unit(#[from] units::UnitError),
    #[error(transparent)]
    Guard(#[from] ReloadError),
}

pub struct Reloader {
    pub policies_dir: PathBuf,
    pub root: CgroupRoot,
    pub kernel: Arc<Mutex<Kernel>>,
    pub fetcher: Arc<dyn TokenFetcher>,
    /// Where accepted and rejected reloads are recorded.
    pub audit: Option<AuditSink>,
    /// Per-agent resolvers; each guarded cgroup's port goes into the kernel.
    pub resolvers: Arc<Resolvers>,
    /// The revoked agents: the kernel's revoked marks follow their
    /// cgroups at every load.
    pub revocations: Arc<Revocations>,
    /// The proxy's listeners in agents' network namespaces.
    pub netns: Arc<NetnsListeners>,
    /// Containers attached to agents by `[agent.containers]`, until their
    /// cgroup goes.
    pub containers: Mutex<Vec<Attached>>,
    /// Where they are saved for a restarted daemon (`None`: not saved).
    pub containers_file: Option<PathBuf>,
    /// One reload at a time: SIGHUP and a file change may race, and the
    /// later snapshot must not be overtaken by the earlier one.
    pub serial: Mutex<()>,
    /// The units' new cgroups left to their gates.
    pub new_unit_cgroups: units::NewCgroups,
    /// Passthrough's direct way, if on: its ways close when the policy
    /// changes.
    pub direct: Option<Arc<crate::proxy::direct::Direct>>,
}

/// Every allowed Unix socket path must sit in directories only root can
/// change (see [`policy::UnixSocketAddr::check_directories`]). Checked at
/// each load, as the filesystem may have changed since the last; a path
/// that fails loses its kernel entries at once, even though the policy in
/// force (which listed it) stays.
fn check_unix_sockets(
    policy: &policy::PolicySet,
    kernel: &Mutex<Kernel>,
) -> Result<(), ReloadError> {
    let mut failures = Vec::new();
    for agent in &policy.agents {
        for addr in &agent.unix_sockets {
            if let Err(reason) = addr.check_directories() {
                failures.push((agent, addr, reason));
            }
        }
    }
    let Some((agent, _, reason)) = failures.first() else {
        return Ok(());
    };
    let unsafe_addresses: Vec<Vec<u8>> = failures.iter().map(|(_, a, _)| a.sun_path()).collect();
    let revoked = kernel
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .revoke_unix_addresses(&unsafe_addresses);
    let outcome = match revoked {
        Ok(()) => "agents may no longer reach it".to_owned(),
        Err(e) => format!("and revoking it in the kernel failed: {e}"),
    };
    Err(ReloadError::UnixSocket {
        file: agent.source.display().to_string(),
        agent: agent.name.clone(),
        reason: format!("{reason} ({outcome})"),
    })
}

/// The kernel's allow-list entries: (agent cgroup id, address) for every
/// socket each guarded agent may reach.
fn unix_allow_keys(
    policy: &policy::PolicySet,
    guarded: &[GuardedAgent],
) -> Vec<agentguard_common::UnixKey> {
    let mut keys = Vec::new();
    for guard in guarded {
        let Some(agent) = policy.agent(&guard.name) else {
            continue;
        };
        // Parsing bounds every address to sun_path's length.
        keys.extend(
            agent.unix_sockets.iter().filter_map(|addr| {
                agentguard_common::UnixKey::new(guard.cgroup.id, &addr.sun_path())
            }),
        );
    }
    keys
}

/// The kernel's listen allow-list: (agent cgroup id, address, port) for
/// every `listen` entry of each guarded agent.
fn listen_allow_keys(
    policy: &policy::PolicySet,
    guarded: &[GuardedAgent],
) -> Vec<agentguard_common::ListenKey> {
    use agentguard_common::ListenKey;
    let mut keys = Vec::new();
    for guard in guarded {
        let Some(agent) = policy.agent(&guard.name) else {
            continue;
        };
        keys.extend(agent.listen.iter().map(|l| match l.kernel_ip() {
            Some(ip) => ListenKey::exact(guard.cgroup.id, ip, l.port),
            None => ListenKey::any_address(guard.cgroup.id, l.port),
        }));
    }
    keys
}

impl Reloader {
    /// Builds a complete state from the policies folder. `current` is the
    /// state in force (None at start), whose guarded cgroups need no new
    /// links.
    pub fn build(&self, current: Option<&LiveState>) -> Result<LiveState, ReloadError> {
        let policy = policy::load_path(&self.policies_dir)?;
        self.apply(policy, current)
    }

    /// [`Reloader::build`] from files that have settled: none changed in
    /// the last [`SETTLE`], and none while they were read. Waits (this
    /// runs on the blocking pool) up to [`SETTLE_MAX_WAIT`].
    fn build_settled(&self, current: &LiveState) -> Result<LiveState, ReloadError> {
        let dir = &self.policies_dir;
        let started = Instant::now();
        let mut seen = fingerprint(dir);
        let mut seen_since = Instant::now();
        loop {
            // Settled when every file is older than SETTLE, or (mtimes
            // from a skewed clock) when nothing changed while we watched.
            if settled(&seen, SystemTime::now()) || seen_since.elapsed() >= SETTLE {
                let policy = policy::load_path(dir)?;
                if fingerprint(dir) == seen {
                    return self.apply(policy, Some(current));
                }
                info!("a policy file changed while it was read; reading it again once it settles");
            }
            if started.elapsed() >= SETTLE_MAX_WAIT {
                return Err(ReloadError::Unsettled(SETTLE_MAX_WAIT));
            }
            std::thread::sleep(SETTLE_POLL);
            let now = fingerprint(dir);
            if now != seen {
                seen = now;
                seen_since = Instant::now();
            }
        }
    }

    /// Guards and resolves for a loaded policy: the part of a build with
    /// effects in the kernel, run only on a policy that will be used.
    fn apply(
        &self,
        policy: policy::PolicySet,
        current: Option<&LiveState>,
    ) -> Result<LiveState, ReloadError> {
        let policy = Arc::new(policy);
        let credentials = Arc::new(CredentialStore::load(&policy, self.fetcher.clone())?);
        check_unix_sockets(&policy, &self.kernel)?;
        self.guard(policy, credentials, current, None)
    }

    /// Guards every agent's cgroup and makes the state. An agent that is a
    /// systemd unit not running now has no cgroup: it is guarded when its
    /// unit starts (see `units`).
    ///
    /// `gate` names the agent whose unit's gate (`agentguard attach`)
    /// asks: its new cgroup is guarded now. Any other unit's new cgroup in
    /// which only a gate (or systemd, starting it) runs, or nothing yet,
    /// is left to that gate ([`units::NewCgroups`]): guarded first, the
    /// gate could no longer reach the daemon, and the unit would fail to
    /// start.
    fn guard(
        &self,
        policy: Arc<policy::PolicySet>,
        credentials: Arc<CredentialStore>,
        current: Option<&LiveState>,
        gate: Option<&str>,
    ) -> Result<LiveState, ReloadError> {
        let own_cgroup = own_cgroup(&self.root);
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        let mut guarded = Vec::new();
        let mut served = Vec::new();
        for agent in &policy.agents {
            let cgroup = if agent.systemd_unit.is_some() {
                match units::open(&self.root, agent)? {
                    Some(cgroup) => cgroup,
                    None => {
                        info!(agent = %agent.name, cgroup = %agent.cgroup, "agent's unit is not running; it is guarded when it starts");
                        continue;
                    }
                }
            } else {
                self.root.ensure(&agent.cgroup)?
            };
            if let Some(own) = &own_cgroup
                && own.starts_with(&cgroup.path)
            {
                return Err(ReloadError::DaemonInsideAgent {
                    daemon: own.display().to_string(),
                    agent: agent.name.clone(),
                    agent_cgroup: cgroup.path.display().to_string(),
                });
            }
            let already =
                current.is_some_and(|s| s.agents.agents().iter().any(|a| a.cgroup.id == cgroup.id));
            if !already
                && agent.systemd_unit.is_some()
                && gate != Some(agent.name.as_str())
                && self.new_unit_cgroups.left_to_gate(&cgroup)
            {
                debug!(agent = %agent.name, cgroup = %cgroup.path.display(), "unit starting; its gate (agentguard attach) guards it");
                continue;
            }
            if !already {
                let first_time = agent.systemd_unit.is_some() && !kernel.has_links(cgroup.id);
                kernel.guard(&cgroup)?;
                if first_time {
                    units::warn_if_started_unguarded(agent, &cgroup);
                }
                info!(agent = %agent.name, cgroup = %cgroup.path.display(), cgroup_id = cgroup.id, "agent guarded");
            }
            let port = self.resolvers.ensure(&agent.name)?;
            kernel.set_agent_dns(cgroup.id, port)?;
            self.listen_in_netns(agent, &cgroup.path, &mut served)?;
            guarded.push(GuardedAgent {
                name: agent.name.as_str().into(),
                cgroup,
                container: None,
            });
        }
        self.guard_containers(&policy, &mut kernel, &mut guarded, &mut served)?;
        if let Some(previous) = current {
            forget_gone(&mut kernel, previous.agents.agents(), &guarded);
        }
        // Cgroups no agent names keep their programs (see the module docs),
        // but lose their resolver: their DNS is refused in the kernel.
        let keep: Vec<u64> = guarded.iter().map(|a| a.cgroup.id).collect();
        kernel.retain_agent_dns(&keep)?;
        kernel.set_unix_allow(&unix_allow_keys(&policy, &guarded))?;
        kernel.set_listen_allow(&listen_allow_keys(&policy, &guarded))?;
        // Read under the kernel lock, which a revoke's or restore's own
        // update waits for: whichever runs last sees the other's change.
        let plan = revoke::kernel::sync(&mut kernel, &guarded, &self.revocations)?;
        if !plan.mark.is_empty() || !plan.clear.is_empty() {
            info!(marked = ?plan.mark, cleared = ?plan.clear, "revoked marks in the kernel updated");
        }
        if !kernel.shares_fit(guarded.len()) {
            warn!(
                agents = guarded.len(),
                "the agents' kernel shares (--kernel-agent-records, --kernel-agent-event-bytes) add up to more than the kernel's tables hold: one agent's flood can still crowd out another's"
            );
        }
        let names: Vec<&str> = policy.agents.iter().map(|a| a.name.as_str()).collect();
        self.resolvers.retain(&names);
        self.netns.retain(&served);
        self.resolvers.retain_netns(&served);
        Ok(LiveState {
            policy,
            agents: Arc::new(AgentTable::new(self.root.clone(), guarded)),
            credentials,
        })
    }

    /// Opens the proxy's and the agent's resolver's listeners in each
    /// network namespace the agent lives in (its policy's `netns`), adding
    /// the namespaces served to `served`. A declared namespace that cannot
    /// be served is an error (the agent's connections there would reach
    /// nothing, or someone else); one found from the cgroup's processes
    /// that vanished meanwhile is skipped.
    fn listen_in_netns(
        &self,
        agent: &policy::AgentPolicy,
        cgroup: &Path,
        served: &mut Vec<NetnsId>,
    ) -> Result<(), ReloadError> {
        let netns_err = |source| ReloadError::Netns {
            agent: agent.name.clone(),
            source,
        };
        let (paths, declared) = match &agent.netns {
            None => return Ok(()),
            Some(NetnsSource::Path(path)) => (vec![path.clone()], true),
            Some(NetnsSource::Cgroup) => (
                crate::netns::of_cgroup(cgroup)
                    .into_iter()
                    .map(|(path, _)| path)
                    .collect(),
                false,
            ),
        };
        for path in paths {
            let netns = match self.netns.ensure(&path) {
                Ok(Some(netns)) => netns,
                Ok(None) => continue,
                Err(crate::netns::NetnsError::Open { .. }) if !declared => continue,
                Err(e) => return Err(netns_err(e)),
            };
            self.resolvers.ensure_in(&agent.name, &netns)?;
            served.push(netns.id);
        }
        Ok(())
    }

    /// Follows the processes of agents whose policy says `netns =
    /// "cgroup"`: a namespace one of them entered since the last look gets
    /// the listeners, one none lives in any more loses them. Until then,
    /// such a process's connections reach nothing and fail (closed).
    pub fn refresh_netns(&self, live: &Live) -> Result<(), ReloadError> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let current = live.load();
        if !current.policy.agents.iter().any(|a| a.netns.is_some()) {
            return Ok(());
        }
        let (mut served, mut failed) = (Vec::new(), None);
        for agent in &current.policy.agents {
            let Some(guarded) = current.agents.get(&agent.name) else {
                continue;
            };
            // One agent's failure does not keep the others' new
            // namespaces unserved.
            if let Err(e) = self.listen_in_netns(agent, &guarded.cgroup.path, &mut served) {
                failed.get_or_insert(e);
            }
        }
        // Nothing is closed after a failure: what failed may be passing.
        if let Some(e) = failed {
            return Err(e);
        }
        served.extend(self.attached().iter().filter_map(|c| c.netns));
        self.netns.retain(&served);
        self.resolvers.retain_netns(&served);
        Ok(())
    }

    /// Follows the agents' systemd units: guards a unit's cgroup systemd
    /// made since the last look, and forgets one it removed. Cheap when
    /// nothing changed (a stat per unit, and a look at the processes of a
    /// new cgroup left to its gate). Returns whether anything did.
    pub fn refresh_units(&self, live: &Live) -> Result<bool, ReloadError> {
        self.refresh_units_for(live, None)
    }

    /// [`Self::refresh_units`], for the gate of unit `gate` if given.
    fn refresh_units_for(&self, live: &Live, gate: Option<&str>) -> Result<bool, ReloadError> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let current = live.load();
        // A new cgroup left to its gate is no change yet: guarding would
        // leave it as it is, and it may stay so a while.
        let mut changed = false;
        let mut present = Vec::new();
        for agent in current
            .policy
            .agents
            .iter()
            .filter(|a| a.systemd_unit.is_some())
        {
            let guarded = current.agents.get(&agent.name).map(|g| g.cgroup.id);
            let on_disk = units::open(&self.root, agent).ok().flatten();
            present.extend(on_disk.as_ref().map(|c| c.id));
            let to_guard = on_disk
                .filter(|c| {
                    Some(c.id) == guarded
                        || gate == Some(agent.name.as_str())
                        || !self.new_unit_cgroups.left_to_gate(c)
                })
                .map(|c| c.id);
            changed |= to_guard != guarded;
        }
        self.new_unit_cgroups.retain(&present);
        if !changed {
            return Ok(false);
        }
        // The old cgroups of restarted or stopped units lose their pins in
        // `guard` (`forget_gone`).
        let state = self.guard(
            current.policy.clone(),
            current.credentials.clone(),
            Some(&current),
            gate,
        )?;
        live.swap_agents(state);
        Ok(true)
    }

    /// `agentguard attach` from a unit's `ExecStartPre=+`: guards the unit's
    /// cgroup, which process `pid` (the gate) must be in, before the unit's
    /// main process starts. The cgroup is the gate's, read by the daemon
    /// from /proc, never a path the caller names.
    pub fn attach(&self, live: &Live, agent: &str, pid: u32) -> Result<(), AttachError> {
        let state = live.load();
        let policy = state
            .policy
            .agent(agent)
            .ok_or_else(|| units::UnitError::UnknownAgent(agent.to_owned()))?;
        units::check_gate(policy, pid)?;
        self.refresh_units_for(live, Some(agent))?;
        let path = self.root.path_of(&policy.cgroup);
        let guarded = live
            .load()
            .agents
            .get(agent)
            .is_some_and(|g| g.cgroup.path == path && units::still_there(&path, g.cgroup.id));
        if !guarded {
            return Err(units::UnitError::NotGuarded(agent.to_owned()).into());
        }
        info!(agent, pid, cgroup = %path.display(), "unit guarded before its start (ExecStartPre)");
        Ok(())
    }

    /// `agentguard oci-hook` at a container's creation: process `pid` (the
    /// container's first, before its program runs) must be in agent
    /// `agent`'s cgroup or below it, where the kernel programs already
    /// apply; its network namespace gets the proxy's and the resolver's
    /// listeners now, before the container's program can connect.
    pub fn attach_container(
        &self,
        live: &Live,
        agent: &str,
        pid: u32,
    ) -> Result<(), ContainerError> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let state = live.load();
        let policy = state
            .policy
            .agent(agent)
            .ok_or_else(|| ContainerError::UnknownAgent(agent.to_owned()))?;
        if policy.netns != Some(NetnsSource::Cgroup) {
            return Err(ContainerError::NotByCgroup(agent.to_owned()));
        }
        let guarded = state
            .agents
            .get(agent)
            .ok_or_else(|| ContainerError::NotGuarded(agent.to_owned()))?;
        let proc_err = |source| ContainerError::Process { pid, source };
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(proc_err)?;
        let rel = crate::procfs::cgroup_v2_path(&text).unwrap_or_default();
        let cgroup = self.root.mount().join(rel.trim_start_matches('/'));
        // Compared by path, then pinned by the namespace file the daemon
        // opens below: the process cannot change cgroup or namespace
        // unseen in between (it is the runtime's, not yet the agent's).
        if !cgroup.starts_with(&guarded.cgroup.path) || rel.contains("/../") {
            return Err(ContainerError::Elsewhere {
                pid,
                cgroup: cgroup.display().to_string(),
                agent: agent.to_owned(),
                agent_cgroup: guarded.cgroup.path.display().to_string(),
            });
        }
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let netns = self
            .netns
            .ensure(&path)
            .map_err(|source| ReloadError::Netns {
                agent: agent.to_owned(),
                source,
            })?;
        if let Some(netns) = netns {
            self.resolvers
                .ensure_in(agent, &netns)
                .map_err(ReloadError::from)?;
            info!(agent, pid, netns = %netns.id, "container's network namespace guarded before its start");
        }
        Ok(())
    }

    /// Saves the attached containers for a restarted daemon. A failure
    /// is logged: those containers stay served by this daemon.
    fn save_containers(&self) {
        let Some(path) = &self.containers_file else {
            return;
        };
        if let Err(e) = crate::containers::save(path, &self.attached()) {
            warn!(error = %e, "a restarted daemon would not serve the attached containers");
        }
    }

    /// At start, after the first build: the containers a previous daemon
    /// attached that still run (same cgroup, agent still selecting) get
    /// their listeners again, from a process still in their cgroup, and
    /// join the agent table. Their programs stayed pinned throughout, so
    /// they were never unguarded, only refused meanwhile.
    pub fn readopt_containers(&self, live: &Live) -> Result<(), ReloadError> {
        let Some(path) = &self.containers_file else {
            return Ok(());
        };
        let saved = crate::containers::load(path);
        if saved.is_empty() {
            return Ok(());
        }
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let current = live.load();
        for saved in saved {
            if current.policy.agent(&saved.agent).is_none()
                || !units::still_there(&saved.cgroup, saved.cgroup_id)
            {
                continue;
            }
            let pid = fs::read_to_string(saved.cgroup.join("cgroup.procs"))
                .ok()
                .and_then(|procs| procs.lines().find_map(|l| l.trim().parse::<u32>().ok()));
            let netns = match pid {
                Some(pid) => self
                    .netns
                    .ensure(Path::new(&format!("/proc/{pid}/ns/net")))
                    .map_err(|source| ReloadError::Netns {
                        agent: saved.agent.clone(),
                        source,
                    })?,
                None => None,
            };
            if let Some(netns) = &netns {
                self.resolvers.ensure_in(&saved.agent, netns)?;
            }
            info!(agent = %saved.agent, container = %saved.info.id, name = ?saved.info.name, "container attached by the previous daemon served again");
            self.containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Attached {
                    agent: saved.agent,
                    info: Arc::new(saved.info),
                    cgroup: Cgroup {
                        path: saved.cgroup,
                        id: saved.cgroup_id,
                    },
                    netns: netns.as_ref().map(|n| n.id),
                });
        }
        let state = self.guard(
            current.policy.clone(),
            current.credentials.clone(),
            Some(&current),
            None,
        )?;
        live.swap_agents(state);
        self.save_containers();
        Ok(())
    }

    /// The containers attached now.
    fn attached(&self) -> Vec<Attached> {
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Part of [`Reloader::guard`]: every attached container whose agent
    /// the policy still has joins the guarded cgroups (its programs, its
    /// resolver port, its listeners kept). One whose cgroup is gone is left
    /// for [`Reloader::refresh_containers`]. A container whose agent left
    /// the policy keeps its programs (see the module docs): the proxy
    /// refuses its connections, as it does any cgroup it does not know.
    fn guard_containers(
        &self,
        policy: &policy::PolicySet,
        kernel: &mut Kernel,
        guarded: &mut Vec<GuardedAgent>,
        served: &mut Vec<NetnsId>,
    ) -> Result<(), ReloadError> {
        for c in self.attached() {
            if policy.agent(&c.agent).is_none() || !units::still_there(&c.cgroup.path, c.cgroup.id)
            {
                continue;
            }
            if !kernel.has_links(c.cgroup.id) && !self.under_an_agent(policy, &c.cgroup.path) {
                kernel.guard(&c.cgroup)?;
            }
            kernel.set_agent_dns(c.cgroup.id, self.resolvers.ensure(&c.agent)?)?;
            served.extend(c.netns);
            guarded.push(GuardedAgent {
                name: c.agent.as_str().into(),
                cgroup: c.cgroup.clone(),
                container: Some(c.info.clone()),
            });
        }
        Ok(())
    }

    /// Whether `path` is an agent's cgroup or below one: the agent's
    /// programs already run there (a container started with
    /// `--cgroup-parent`).
    fn under_an_agent(&self, policy: &policy::PolicySet, path: &Path) -> bool {
        policy
            .agents
            .iter()
            .any(|a| path.starts_with(self.root.path_of(&a.cgroup)))
    }

    /// `agentguard oci-hook` at a container's creation, before its program
    /// runs: if a policy's `[agent.containers]` selects it, its cgroup gets
    /// the agent's programs and resolver, and its network namespace the
    /// proxy's and resolver's listeners. `Ok(None)`: no policy selects it,
    /// and nothing was changed. Any error fails the container's start.
    pub fn container_created(
        &self,
        live: &Live,
        created: &Created,
    ) -> Result<Option<(String, Arc<ContainerInfo>)>, ContainerError> {
        // Read before the lock: asking a pod's CRI may take up to its time
        // limit, which must not hold up reloads and other containers.
        // What it says does not depend on the policy; an error counts only
        // if a policy selects containers.
        let facts = crate::containers::facts(created);
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let current = live.load();
        if !current.policy.agents.iter().any(|a| a.containers.is_some()) {
            return Ok(None);
        }
        let facts = facts?;
        let mut selected = current
            .policy
            .agents
            .iter()
            .filter(|a| a.containers.as_ref().is_some_and(|sel| sel.matches(&facts)));
        let Some(agent) = selected.next() else {
            return Ok(None);
        };
        let info = Arc::new(ContainerInfo {
            runtime: facts
                .runtime
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            id: created.id.clone(),
            name: facts.display_name(),
            image: facts.image.clone(),
        });
        if let Some(other) = selected.next() {
            return Err(ContainerError::Ambiguous {
                id: created.id.clone(),
                name: info.name.clone().unwrap_or_default(),
                first: agent.name.clone(),
                second: other.name.clone(),
            });
        }
        let pid = created.pid;
        let proc_err = |source| ContainerError::Process { pid, source };
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(proc_err)?;
        let rel = crate::procfs::cgroup_v2_path(&text).unwrap_or_default();
        let path = self.root.mount().join(rel.trim_start_matches('/'));
        let refuse = |why: &str| ContainerError::Cgroup {
            id: created.id.clone(),
            pid,
            cgroup: path.display().to_string(),
            why: why.to_owned(),
        };
        if rel.trim_matches('/').is_empty() || rel.contains("/../") {
            return Err(refuse("is the root cgroup"));
        }
        if own_cgroup(&self.root).is_some_and(|own| own.starts_with(&path)) {
            return Err(refuse("holds agentguard itself"));
        }
        if let Some(other) = current
            .policy
            .agents
            .iter()
            .find(|a| a.name != agent.name && path.starts_with(self.root.path_of(&a.cgroup)))
        {
            return Err(refuse(&format!(
                "is inside agent {:?}'s cgroup",
                other.name
            )));
        }
        let cgroup = Cgroup::open(&path)?;
        let netns_err = |source| ReloadError::Netns {
            agent: agent.name.clone(),
            source,
        };
        // The listeners first: once the programs are attached, the
        // container's connects go to them.
        let netns = self
            .netns
            .ensure(Path::new(&format!("/proc/{pid}/ns/net")))
            .map_err(netns_err)?;
        if let Some(netns) = &netns {
            self.resolvers
                .ensure_in(&agent.name, netns)
                .map_err(ReloadError::from)?;
        }
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Attached {
                agent: agent.name.clone(),
                info: info.clone(),
                cgroup: cgroup.clone(),
                netns: netns.as_ref().map(|n| n.id),
            });
        // The programs, the resolver port and the agent table, as for a
        // reload; on failure the container is forgotten (its start fails).
        let state = self.guard(
            current.policy.clone(),
            current.credentials.clone(),
            Some(&current),
            None,
        );
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                self.containers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|c| c.cgroup.id != cgroup.id);
                return Err(e.into());
            }
        };
        live.swap_agents(state);
        self.save_containers();
        info!(agent = %agent.name, container = %created.id, name = ?info.name, image = ?info.image, pid, cgroup = %path.display(), cgroup_id = cgroup.id, "container attached before its start");
        Ok(Some((agent.name.clone(), info)))
    }

    /// Forgets attached containers whose cgroup is gone (the container
    /// ended; the kernel detached its programs with the cgroup): their
    /// pins, their listeners and their place in the agent table. Called
    /// once a second, and by the hook's poststop stage.
    pub fn refresh_containers(&self, live: &Live) -> Result<usize, ReloadError> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<Attached> = {
            let mut containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
            let (gone, kept) = containers
                .drain(..)
                .partition(|c| !units::still_there(&c.cgroup.path, c.cgroup.id));
            *containers = kept;
            gone
        };
        if gone.is_empty() {
            return Ok(0);
        }
        self.save_containers();
        {
            let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
            for c in &gone {
                let links = kernel.forget(c.cgroup.id)?;
                info!(agent = %c.agent, container = %c.info.id, name = ?c.info.name, links, "container ended; agentguard detached from it");
            }
        }
        let current = live.load();
        let state = self.guard(
            current.policy.clone(),
            current.credentials.clone(),
            Some(&current),
            None,
        )?;
        live.swap_agents(state);
        Ok(gone.len())
    }

    /// Reloads into `live` if the policy changed; on any error the running
    /// policy stays and the error is kept for `agentguard status`.
    pub fn reload(&self, live: &Live, trigger: &str) {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let current = live.load();
        match self.build_settled(&current) {
            Ok(state) if state.policy.version == current.policy.version => {
                info!(trigger, version = %state.policy.version, "policy unchanged");
                let v = state.policy.version.clone();
                live.accept(state, trigger);
                self.record(super::audit::reload_event(trigger, Ok((&v, &v))));
            }
            Ok(state) => {
                info!(trigger, from = %current.policy.version, to = %state.policy.version, "policy reloaded");
                let to = state.policy.version.clone();
                live.accept(state, trigger);
                if let Some(direct) = &self.direct {
                    direct.close_ways();
                }
                self.record(super::audit::reload_event(
                    trigger,
                    Ok((&current.policy.version, &to)),
                ));
            }
            Err(e) => {
                warn!(trigger, error = %e, version = %current.policy.version, "policy reload rejected; the running policy stays");
                let error = e.to_string();
                live.reject(trigger, error.clone());
                self.record(super::audit::reload_event(
                    trigger,
                    Err((&current.policy.version, &error)),
                ));
            }
        }
    }

    /// After a revoke or restore: the kernel's revoked marks, made to
    /// match the saved revocations for the agents in force. Waits for a
    /// reload under way, so that its agents' cgroups are the ones marked.
    /// Blocking: call it off the runtime's workers.
    pub fn sync_revoked(&self, live: &Live) -> Result<(), EbpfError> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let state = live.load();
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        revoke::kernel::sync(&mut kernel, state.agents.agents(), &self.revocations).map(drop)
    }

    /// Reloads run on the blocking pool, where waiting on the runtime for
    /// room in the audit queue is allowed.
    fn record(&self, event: Event) {
        let Some(sink) = &self.audit else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.block_on(sink.record(event)),
            Err(_) => sink.record_detached(event),
        }
    }
}

/// Unpins the links of the cgroups guarded until now that the new state
/// no longer holds because they are gone (a unit restarted or stopped, a
/// container ended): the kernel detached their programs as each cgroup
/// went, and only the pins were left. Done here, where every new state is
/// made, so that whichever noticed first (the unit watcher, a unit's
/// gate, a policy reload) leaves no pin behind; a reload that came
/// between a unit's restart and the watcher's next look used to swap the
/// old cgroup out with its pins left in bpffs for good. A failure is
/// logged, not returned: a stale pin holds nothing attached, and the new
/// state must not wait on it.
fn forget_gone(kernel: &mut Kernel, previous: &[GuardedAgent], kept: &[GuardedAgent]) {
    for old in gone_cgroups(previous, kept, units::still_there) {
        match kernel.forget(old.cgroup.id) {
            Ok(0) => {}
            Ok(links) => {
                info!(agent = %old.name, cgroup_id = old.cgroup.id, links, "agent's cgroup is gone; its pins are removed");
            }
            Err(e) => {
                warn!(agent = %old.name, cgroup_id = old.cgroup.id, error = %e, "agent's cgroup is gone but its pins could not be removed");
            }
        }
    }
}

/// At start, before any agent is guarded: unpins the links of cgroups that
/// went while no daemon was running (a unit stopped, a container ended, an
/// agent's cgroup removed), which no new state would ever compare with. A
/// cgroup's id is never reused, so one absent from the tree now is gone
/// for good and its links hold nothing attached. Nothing is removed unless
/// the whole tree was seen: a cgroup merely out of view keeps its pins,
/// which are what keeps its programs attached.
pub fn forget_gone_while_stopped(kernel: &mut Kernel, root: &CgroupRoot) {
    let pinned = match kernel.pinned_cgroups() {
        Ok(pinned) if !pinned.is_empty() => pinned,
        Ok(_) => return,
        Err(e) => {
            warn!(error = %e, "could not list the pinned links; those of cgroups gone while agentguard was stopped stay");
            return;
        }
    };
    let Some(present) = root.all_ids() else {
        warn!(mount = %root.mount().display(), "could not read the whole cgroup tree; the pins of cgroups gone while agentguard was stopped stay");
        return;
    };
    for id in pinned.into_iter().filter(|id| !present.contains(id)) {
        match kernel.forget(id) {
            Ok(links) => {
                info!(
                    cgroup_id = id,
                    links, "cgroup gone while agentguard was stopped; its pins are removed"
                );
            }
            Err(e) => {
                warn!(cgroup_id = id, error = %e, "cgroup gone while agentguard was stopped, but its pins could not be removed");
            }
        }
    }
}

/// The cgroups of `previous` that are not among `kept` and no longer
/// exist (`exists(path, id)`). One that is not kept but still exists (its
/// agent left the policy) is not among them: its pins are what keeps its
/// programs attached (see the module docs).
fn gone_cgroups<'a>(
    previous: &'a [GuardedAgent],
    kept: &[GuardedAgent],
    exists: impl Fn(&Path, u64) -> bool,
) -> Vec<&'a GuardedAgent> {
    previous
        .iter()
        .filter(|old| !kept.iter().any(|k| k.cgroup.id == old.cgroup.id))
        .filter(|old| !exists(&old.cgroup.path, old.cgroup.id))
        .collect()
}

/// This process's cgroup v2 directory, from /proc/self/cgroup.
fn own_cgroup(root: &CgroupRoot) -> Option<PathBuf> {
    let path = crate::procfs::own_cgroup().ok()??;
    Some(root.mount().join(path.trim_start_matches('/')))
}

/// A policy file changed more recently than this is not read yet. Two
/// seconds: longer than the pauses of a tool writing a file in place, and
/// than the mtime resolution of filesystems that keep whole seconds.
pub const SETTLE: Duration = Duration::from_secs(2);
/// A reload gives up (the running policy stays) when files keep changing
/// this long.
const SETTLE_MAX_WAIT: Duration = Duration::from_secs(30);
const SETTLE_POLL: Duration = Duration::from_millis(250);

/// One policy file's name, size and modification time (seconds, ns).
pub type FileStamp = (PathBuf, u64, i64, i64);

/// Whether every file was last modified at least [`SETTLE`] before `now`.
fn settled(files: &[FileStamp], now: SystemTime) -> bool {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    files.iter().all(|(_, _, secs, nanos)| {
        let modified = Duration::new(
            u64::try_from(*secs).unwrap_or(0),
            u32::try_from(*nanos).unwrap_or(0),
        );
        now.checked_sub(modified).is_some_and(|age| age >= SETTLE)
    })
}

/// What identifies the folder's content cheaply: names, sizes and
/// modification times of the policy files. Polled to notice edits.
///
/// Symlinks are followed: a Kubernetes ConfigMap volume holds
/// `x.toml -> ..data/x.toml`, and an update swaps the `..data` link to a
/// new folder, leaving the `x.toml` link itself (its size and mtime, all a
/// `DirEntry`'s metadata sees) unchanged.
pub fn fingerprint(dir: &Path) -> Vec<FileStamp> {
    let mut out: Vec<FileStamp> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
            .filter_map(|e| {
                let m = fs::metadata(e.path()).ok()?;
                Some((e.path(), m.size(), m.mtime(), m.mtime_nsec()))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(age: Duration, now: SystemTime) -> FileStamp {
        let t = (now - age).duration_since(UNIX_EPOCH).unwrap();
        (
            PathBuf::from("a.toml"),
            1,
            t.as_secs() as i64,
            i64::from(t.subsec_nanos()),
        )
    }

    #[test]
    fn files_changed_in_the_last_moment_are_not_settled() {
        let now = SystemTime::now();
        assert!(settled(&[], now));
        assert!(settled(&[stamp(Duration::from_secs(3), now)], now));
        assert!(!settled(
            &[
                stamp(Duration::from_secs(3), now),
                stamp(Duration::from_millis(500), now)
            ],
            now
        ));
        // A file from the future (a skewed clock) is not settled by its
        // mtime; the reload then waits for it to stay unchanged instead.
        assert!(!settled(&[stamp(Duration::ZERO, now + SETTLE * 5)], now));
    }

    /// A ConfigMap volume as the kubelet writes it (its atomic writer):
    /// files in a timestamped folder, `..data` linking to it, and each key
    /// a link through `..data`. An update writes a new folder and swaps
    /// `..data`; the change must show in the fingerprint.
    #[test]
    fn a_configmap_update_changes_the_fingerprint() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let data = dir.path().join(name);
            fs::create_dir(&data).unwrap();
            fs::write(data.join("a.toml"), text).unwrap();
            symlink(name, dir.path().join("..data_tmp")).unwrap();
            fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
        };
        write("..2026_12_04_00_00_00.1", "[agent]\nname = \"a\"\n");
        symlink("..data/a.toml", dir.path().join("a.toml")).unwrap();
        let before = fingerprint(dir.path());
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0].1, 19, "the size is the file's, not the link's");
        write("..2026_12_04_00_00_01.2", "[agent]\nname = \"a2\"\n");
        assert_ne!(fingerprint(dir.path()), before);
    }

    fn guarded(name: &str, path: &str, id: u64) -> GuardedAgent {
        GuardedAgent {
            name: name.into(),
            cgroup: Cgroup {
                path: PathBuf::from(path),
                id,
            },
            container: None,
        }
    }

    /// Only a cgroup that the new state dropped and that no longer exists
    /// loses its pins: a unit's restarted cgroup (same path, a new id), a
    /// stopped unit's; never one kept, nor one still there whose agent
    /// left the policy (its pins keep its programs attached).
    #[test]
    fn only_dropped_cgroups_that_are_gone_are_forgotten() {
        let previous = [
            guarded("restarted", "/cg/restarted.service", 10),
            guarded("stopped", "/cg/stopped.service", 11),
            guarded("kept", "/cg/kept", 12),
            guarded("unnamed", "/cg/unnamed", 13),
        ];
        let kept = [
            guarded("restarted", "/cg/restarted.service", 20),
            guarded("kept", "/cg/kept", 12),
        ];
        // On disk: the restarted unit's new cgroup, the kept one and the
        // one whose agent left the policy.
        let on_disk = [20, 12, 13];
        let exists = |_: &Path, id: u64| on_disk.contains(&id);
        let gone: Vec<u64> = gone_cgroups(&previous, &kept, exists)
            .iter()
            .map(|g| g.cgroup.id)
            .collect();
        assert_eq!(gone, [10, 11]);
        // Nothing before (the first state): nothing to forget.
        assert!(gone_cgroups(&[], &kept, exists).is_empty());
    }
}
