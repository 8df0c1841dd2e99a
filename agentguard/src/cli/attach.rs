//! `agentguard attach --agent NAME`: the gate in an agent's systemd unit
//! (`ExecStartPre=+agentguard attach --agent NAME`).
//!
//! It runs in the unit's fresh cgroup before the unit's main process, asks
//! the daemon to guard that cgroup, and checks that the cgroup the daemon
//! guarded is the one it runs in. Only then does it exit 0 and systemd go
//! on to `ExecStart=`; any failure fails the unit's start, so the agent
//! never runs unguarded. While the daemon is not answering yet (starting,
//! restarting) it waits, up to `--wait`.
//!
//! It also leaves the agent's view (CA bundle, placeholders, cgroup id)
//! for `ExecStart=agentguard exec`, which runs in the guarded cgroup where
//! the kernel refuses new connections to the admin socket like any Unix
//! socket the policy does not list.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::{
    admin::{AdminClient, AdminError, AgentView},
    cgroup::CgroupRoot,
    config::parse_duration,
    preflight::{self, PreflightError},
};

#[derive(Debug, Error)]
pub enum AttachCliError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("failed to read this process's cgroup: {0}")]
    OwnCgroup(std::io::Error),
    #[error("agent {0:?}: the name may only use a-z, 0-9, '-' and '_'")]
    BadName(String),
    #[error(
        "agent {agent:?}: the daemon guards cgroup {guarded} (id {guarded_id}), but this unit runs in {own} (id {own_id}); not starting it"
    )]
    Mismatch {
        agent: String,
        guarded: String,
        guarded_id: u64,
        own: String,
        own_id: u64,
    },
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("failed to save the agent's view for `agentguard exec`: {0}")]
    SaveView(std::io::Error),
}

/// How often to ask again while the daemon is not answering.
const RETRY: Duration = Duration::from_millis(250);

pub fn run(admin_socket: &Path, agent: &str, wait: &str) -> Result<ExitCode, AttachCliError> {
    preflight::require_root("attach")?;
    let wait = parse_duration("--wait", wait)?;
    // The name goes into a URL path.
    if agent.is_empty()
        || !agent
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(AttachCliError::BadName(agent.to_owned()));
    }
    let route = format!("/v1/agents/{agent}/attach?pid={}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AttachCliError::Runtime)?;
    let client = AdminClient::new(admin_socket);
    let deadline = Instant::now() + wait;
    let view: AgentView = loop {
        match runtime.block_on(client.post::<AgentView>(&route)) {
            Err(AdminError::NotRunning { .. }) if Instant::now() < deadline => {
                std::thread::sleep(RETRY);
            }
            other => break other?,
        }
    };
    // Trust, but check: the cgroup guarded is the one this unit runs in.
    let own = std::fs::read_to_string("/proc/self/cgroup").map_err(AttachCliError::OwnCgroup)?;
    let own = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned();
    let root = CgroupRoot::discover()?;
    let own_id = std::fs::metadata(root.mount().join(own.trim_start_matches('/')))
        .map_err(AttachCliError::OwnCgroup)?
        .ino();
    if !view.guarded || own_id != view.cgroup_id {
        return Err(AttachCliError::Mismatch {
            agent: agent.to_owned(),
            guarded: view.cgroup_path,
            guarded_id: view.cgroup_id,
            own,
            own_id,
        });
    }
    crate::exec::save_unit_view(admin_socket, &view).map_err(AttachCliError::SaveView)?;
    println!(
        "agent {agent}: cgroup {} guarded (id {})",
        view.cgroup_path, view.cgroup_id
    );
    Ok(ExitCode::SUCCESS)
}
