//! Agents that are systemd services (`[agent] systemd_unit`).
//!
//! systemd creates a unit's cgroup when the unit starts and removes it when
//! it stops, so the cgroup to guard changes with every restart. Two paths
//! keep it guarded:
//!
//! - the unit's `ExecStartPre=+agentguard attach --agent NAME` asks the
//!   daemon to guard the cgroup it runs in, and the unit's main process
//!   starts only once that succeeded (it fails the start otherwise): no
//!   process of the unit other than that gate runs unguarded;
//! - the daemon's watcher looks for the units' cgroups every second and
//!   guards a new one, and forgets one that is gone (a daemon started after
//!   its agents, a unit without the gate). A new cgroup in which only the
//!   gate runs, or nothing yet, is the gate's to guard ([`NewCgroups`]):
//!   the watcher guarding it first made the gate's own request to the
//!   daemon fail, at random, in one restart out of many.
//!
//! The gate is what closes the window; the watcher only notices a unit that
//! started without it, and says so.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use thiserror::Error;
use tracing::warn;

use crate::{
    cgroup::{Cgroup, CgroupError, CgroupRoot},
    policy::AgentPolicy,
};

#[derive(Debug, Error)]
pub enum UnitError {
    #[error("no agent named {0:?} in the running policy")]
    UnknownAgent(String),
    #[error(
        "agent {0:?} is not a systemd service (its policy has no systemd_unit): start it with `agentguard exec`"
    )]
    NotAUnit(String),
    #[error("failed to read the cgroup of process {pid}: {source}")]
    ProcCgroup { pid: u32, source: std::io::Error },
    #[error(
        "process {pid} runs in cgroup {actual}, not in {unit}'s cgroup /{expected}: `agentguard attach --agent {agent}` must run from the unit itself (ExecStartPre=+)"
    )]
    WrongCgroup {
        pid: u32,
        agent: String,
        unit: String,
        actual: String,
        expected: String,
    },
    #[error("agent {0:?}: its unit's cgroup was not guarded; see the daemon's log")]
    NotGuarded(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// The unit's cgroup if the unit is running (its directory exists).
pub fn open(root: &CgroupRoot, agent: &AgentPolicy) -> Result<Option<Cgroup>, CgroupError> {
    match Cgroup::open(&root.path_of(&agent.cgroup)) {
        Ok(cgroup) => Ok(Some(cgroup)),
        Err(CgroupError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The cgroup v2 path of process `pid` (`/system.slice/x.service`).
pub fn cgroup_of(pid: u32) -> Result<String, UnitError> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|source| UnitError::ProcCgroup { pid, source })?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned())
}

/// Checks that `pid` runs in `agent`'s unit cgroup: the gate may guard only
/// the cgroup it is in, and only as the agent whose unit that is.
pub fn check_gate(agent: &AgentPolicy, pid: u32) -> Result<(), UnitError> {
    let unit = agent
        .systemd_unit
        .as_ref()
        .ok_or_else(|| UnitError::NotAUnit(agent.name.clone()))?;
    let actual = cgroup_of(pid)?;
    if actual.trim_start_matches('/') != agent.cgroup.as_str() {
        return Err(UnitError::WrongCgroup {
            pid,
            agent: agent.name.clone(),
            unit: unit.to_string(),
            actual,
            expected: agent.cgroup.to_string(),
        });
    }
    Ok(())
}

/// Warns if processes other than agentguard's own (the gate, or `exec`
/// before it execs the agent) ran in a unit's cgroup before it was first
/// guarded: sockets they opened then were never redirected.
pub fn warn_if_started_unguarded(agent: &AgentPolicy, cgroup: &Cgroup) {
    let own = exe_of(&"self");
    let others: Vec<u32> = procs(&cgroup.path)
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| {
            let exe = exe_of(pid);
            exe.is_none() || exe != own
        })
        .collect();
    if !others.is_empty() {
        warn!(
            agent = %agent.name,
            unit = %agent.systemd_unit.as_ref().map(|u| u.to_string()).unwrap_or_default(),
            pids = ?others,
            "the unit's processes ran before agentguard guarded its cgroup: sockets they opened before now are not redirected; restart the unit, and give it ExecStartPre=+agentguard attach --agent NAME so this cannot happen"
        );
    }
}

/// How long an empty unit cgroup is left to a gate that has not come yet.
/// systemd forks the unit's first command into the cgroup moments after
/// making it; one still empty after this is a unit that runs without
/// processes (`RemainAfterExit=`), whose later commands (`ExecReload=`,
/// `ExecStop=`) are guarded like any.
const EMPTY_GRACE: Duration = Duration::from_secs(5);

/// What runs in a unit's cgroup, as far as guarding it goes.
enum Occupants {
    /// Nothing (yet).
    Nobody,
    /// The gate (`agentguard attach`: this binary, asked to attach), or
    /// systemd's own process setting up the unit's next command.
    Gate,
    /// Anything else, or a cgroup below (where processes could run that
    /// its own list does not show), or a list that cannot be read.
    Others,
}

/// Which of the units' new cgroups are left to their gates, remembering
/// when each was first seen empty.
///
/// A new cgroup in which nothing runs but the gate, or nothing yet
/// (systemd makes the cgroup before it forks the unit's first command
/// into it), is left to the gate: guarded before the gate asks, the gate
/// could not reach the daemon (the admin socket is no socket the agent's
/// policy lists) and the unit would fail to start. Nothing of the agent's
/// runs unguarded meanwhile: its commands start after the gate, which
/// exits only once the daemon has guarded the cgroup. A unit without a
/// gate runs something else, guarded at the watcher's next look, as when
/// the look comes after systemd's fork; one that stays empty past
/// [`EMPTY_GRACE`] is guarded then. Anything else fails closed: guarded at
/// once.
#[derive(Default)]
pub struct NewCgroups {
    empty_since: Mutex<HashMap<u64, Instant>>,
}

impl NewCgroups {
    /// Whether `cgroup` is left to its unit's gate to guard.
    pub fn left_to_gate(&self, cgroup: &Cgroup) -> bool {
        let mut empty_since = self.empty_since.lock().unwrap_or_else(|p| p.into_inner());
        match occupants(cgroup) {
            Occupants::Gate => true,
            Occupants::Others => {
                empty_since.remove(&cgroup.id);
                false
            }
            Occupants::Nobody => {
                let first = *empty_since.entry(cgroup.id).or_insert_with(Instant::now);
                first.elapsed() < EMPTY_GRACE
            }
        }
    }

    /// Forgets the cgroups other than `present` (the units' cgroups now).
    pub fn retain(&self, present: &[u64]) {
        self.empty_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| present.contains(id));
    }
}

fn occupants(cgroup: &Cgroup) -> Occupants {
    let own = exe_of(&"self");
    let has_children = fs::read_dir(&cgroup.path).map_or(true, |entries| {
        entries
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    });
    let Ok(pids) = procs(&cgroup.path) else {
        return Occupants::Others;
    };
    if has_children {
        return Occupants::Others;
    }
    let gate_only = pids.iter().all(|&pid| {
        match exe_of(&pid) {
            Some(exe) if Some(&exe) == own.as_ref() => is_gate(pid),
            Some(exe) => is_systemd_setup(&exe),
            // Gone since the list was read: it runs nothing.
            None => !Path::new(&format!("/proc/{pid}")).exists(),
        }
    });
    match (gate_only, pids.is_empty()) {
        (false, _) => Occupants::Others,
        (true, true) => Occupants::Nobody,
        (true, false) => Occupants::Gate,
    }
}

/// The processes directly in the cgroup at `path`.
fn procs(path: &Path) -> std::io::Result<Vec<u32>> {
    Ok(fs::read_to_string(path.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The executable process `pid` (a number, or `self`) runs, if readable.
fn exe_of(pid: &dyn std::fmt::Display) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// Whether process `pid` (running this binary) is `agentguard attach`.
fn is_gate(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let mut args = cmdline.split(|&b| b == 0).skip(1);
        args.any(|a| a == b"attach")
    })
}

/// systemd's process for a unit's command before it executes the command
/// (PID 1's binary, forked, or `systemd-executor` since systemd 255).
fn is_systemd_setup(exe: &Path) -> bool {
    exe.parent().and_then(Path::file_name) == Some("systemd".as_ref())
        && matches!(
            exe.file_name().and_then(|n| n.to_str()),
            Some("systemd" | "systemd-executor")
        )
}

/// Whether a cgroup directory is still there with the same id (a unit's
/// is removed when the unit stops; one made again has a new id).
pub fn still_there(path: &Path, id: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.ino() == id)
}
