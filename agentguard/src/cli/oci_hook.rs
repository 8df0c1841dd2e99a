//! `agentguard oci-hook`: an OCI runtime hook (stage `createRuntime`) that
//! guards a container's network namespace before the container's program
//! runs.
//!
//! The runtime gives the hook the container's state on stdin (OCI runtime
//! spec, "State"): its first process's pid, and its annotations. The hook
//! asks the daemon to open the proxy's and the agent's resolver's
//! listeners in that process's network namespace; the daemon checks that
//! the process is in the agent's cgroup (or below it: `--cgroup-parent`),
//! where the kernel programs already apply. Any failure exits non-zero,
//! which makes the runtime fail the container's start: the container never
//! runs with its connections going nowhere or elsewhere.

use std::{
    io::Read as _,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use serde::Deserialize;
use thiserror::Error;

use crate::{
    admin::{AdminClient, AdminError, AgentView},
    config::parse_duration,
};

/// The annotation naming the agent, when `--agent` does not.
pub const AGENT_ANNOTATION: &str = "io.agentguard.agent";

#[derive(Debug, Error)]
pub enum OciHookError {
    #[error("failed to read the container state from stdin: {0}")]
    Stdin(std::io::Error),
    #[error("the container state on stdin is not valid: {0}")]
    State(serde_json::Error),
    #[error("the container state has no pid (is the hook's stage createRuntime or prestart?)")]
    NoPid,
    #[error("no agent: pass --agent, or annotate the container with {AGENT_ANNOTATION}=NAME")]
    NoAgent,
    #[error("agent {0:?}: the name may only use a-z, 0-9, '-' and '_'")]
    BadName(String),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// What the hook reads of the OCI state.
#[derive(Debug, Deserialize)]
struct State {
    #[serde(default)]
    id: String,
    pid: Option<u32>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

const RETRY: Duration = Duration::from_millis(250);

pub fn run(admin_socket: &Path, agent: Option<&str>, wait: &str) -> Result<ExitCode, OciHookError> {
    let wait = parse_duration("--wait", wait)?;
    let mut text = String::new();
    std::io::stdin()
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(OciHookError::Stdin)?;
    let state: State = serde_json::from_str(&text).map_err(OciHookError::State)?;
    let pid = state.pid.filter(|p| *p > 0).ok_or(OciHookError::NoPid)?;
    let agent = match agent {
        Some(a) => a.to_owned(),
        None => state
            .annotations
            .get(AGENT_ANNOTATION)
            .cloned()
            .ok_or(OciHookError::NoAgent)?,
    };
    // The name goes into a URL path.
    if agent.is_empty()
        || !agent
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(OciHookError::BadName(agent));
    }
    let route = format!("/v1/agents/{agent}/container?pid={pid}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OciHookError::Runtime)?;
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
    // The runtime shows the hook's stderr when it fails; say what
    // happened when it did not, too.
    eprintln!(
        "agentguard: container {} (pid {pid}) guarded as agent {agent} (cgroup {})",
        state.id, view.cgroup_path
    );
    Ok(ExitCode::SUCCESS)
}
