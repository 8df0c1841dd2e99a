//! `agentguard oci-hook`: an OCI runtime hook that guards a container
//! before the container's program runs.
//!
//! The runtime gives the hook the container's state on stdin (OCI runtime
//! spec, "State"): its id, first process's pid, bundle and annotations.
//! At `createRuntime` the container's process exists, in its cgroup and
//! network namespace, but its program has not started (the runtime starts
//! it only after every createRuntime, createContainer and startContainer
//! hook succeeded). Two ways:
//!
//! - selection by policy (the default): the hook reports the container
//!   (`POST /v1/containers/created`); the daemon reads its name, image and
//!   annotations, and if an `[agent.containers]` selects it, attaches the
//!   agent's programs to the container's own cgroup and opens the
//!   listeners in its namespace before answering. A container no policy
//!   selects starts untouched.
//! - a named agent (`--agent`, or for Podman the annotation
//!   `io.agentguard.agent`, which hooks added by `oci-runtime` ignore):
//!   the daemon checks that the process is in the agent's cgroup (or below
//!   it: `--cgroup-parent`), where the kernel programs already apply, and
//!   opens the listeners.
//!
//! Any failure exits non-zero, which makes the runtime fail the
//! container's start: the container never runs with its connections going
//! nowhere or elsewhere. One exception, for Kubernetes: a pod of a
//! namespace named with `--exempt-namespace` (agentguard's own) starts
//! untouched while the daemon is not running, or the daemon's own pod,
//! started by the same runc, could never start.
//!
//! At `poststop` (state `stopped`) the hook has the daemon forget
//! containers whose cgroup is gone, without waiting for its
//! once-a-second look.

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
    containers::{CreatedView, RuntimeSource},
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
    #[serde(default)]
    status: String,
    #[serde(default)]
    bundle: String,
    pid: Option<u32>,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

const RETRY: Duration = Duration::from_millis(250);

/// What the hook is told on its command line.
pub struct HookOptions<'a> {
    pub agent: Option<&'a str>,
    pub wait: &'a str,
    pub from: Option<&'a RuntimeSource>,
    /// Kubernetes namespaces whose pods start untouched while the daemon
    /// is not running (only with `RuntimeSource::Cri`).
    pub exempt_namespaces: &'a [String],
}

/// The namespace containerd names in the state, if the pod's is exempt.
fn exempt_namespace<'s>(state: &'s State, opts: &HookOptions<'_>) -> Option<&'s str> {
    if !matches!(opts.from, Some(RuntimeSource::Cri(_))) {
        return None;
    }
    let ns = state
        .annotations
        .get(crate::containers::cri::SANDBOX_NAMESPACE)?;
    opts.exempt_namespaces.contains(ns).then_some(ns.as_str())
}

pub fn run(admin_socket: &Path, opts: &HookOptions<'_>) -> Result<ExitCode, OciHookError> {
    let (agent, from) = (opts.agent, opts.from);
    let wait = parse_duration("--wait", opts.wait)?;
    let mut text = String::new();
    std::io::stdin()
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(OciHookError::Stdin)?;
    let state: State = serde_json::from_str(&text).map_err(OciHookError::State)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OciHookError::Runtime)?;
    let client = AdminClient::new(admin_socket);
    if state.status == "stopped" {
        // Nothing depends on it: the daemon's own look finds the ended
        // container within a second anyway.
        if let Err(e) = runtime.block_on(client.post::<serde_json::Value>("/v1/containers/ended")) {
            eprintln!("agentguard: container {}: {e}", state.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pid = state.pid.filter(|p| *p > 0).ok_or(OciHookError::NoPid)?;
    let deadline = Instant::now() + wait;
    // Retries while the daemon is not (yet) answering, up to --wait.
    let call = |route: &str| {
        loop {
            match runtime.block_on(client.post::<serde_json::Value>(route)) {
                Err(AdminError::NotRunning { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(RETRY);
                }
                other => break other,
            }
        }
    };
    // The annotation names an agent only where whoever may set it is root
    // on the host anyway (Podman). For Docker's containers and pods,
    // selection alone decides: a pod's author is not root on the node,
    // and runtimes can pass pod annotations through.
    let named = match from {
        None => state.annotations.get(AGENT_ANNOTATION),
        Some(_) => None,
    };
    let agent = match agent {
        Some(a) => a.to_owned(),
        None => match named {
            Some(a) => a.clone(),
            None => {
                let mut route = format!(
                    "/v1/containers/created?id={}&pid={pid}&bundle={}",
                    crate::percent::encode(&state.id),
                    crate::percent::encode(&state.bundle)
                );
                if let Some(from) = from {
                    let (key, path) = match from {
                        RuntimeSource::Docker(p) => ("docker_root", p),
                        RuntimeSource::Cri(p) => ("cri_socket", p),
                    };
                    route.push_str(&format!(
                        "&{key}={}",
                        crate::percent::encode(&path.to_string_lossy())
                    ));
                }
                let answer = match call(&route) {
                    Err(AdminError::NotRunning { .. })
                        if exempt_namespace(&state, opts).is_some() =>
                    {
                        eprintln!(
                            "agentguard: not running; container {} of exempt namespace {} starts unguarded",
                            state.id,
                            exempt_namespace(&state, opts).unwrap_or_default()
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    other => other?,
                };
                let view: CreatedView =
                    serde_json::from_value(answer).map_err(OciHookError::State)?;
                if let (Some(agent), Some(c)) = (view.agent, view.container) {
                    eprintln!(
                        "agentguard: container {} ({}, image {}) attached to agent {agent} before its start",
                        c.id,
                        c.name.as_deref().unwrap_or("unnamed"),
                        c.image.as_deref().unwrap_or("unknown"),
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
        },
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
    let view: AgentView = serde_json::from_value(call(&route)?).map_err(OciHookError::State)?;
    // The runtime shows the hook's stderr when it fails; say what
    // happened when it did not, too.
    eprintln!(
        "agentguard: container {} (pid {pid}) guarded as agent {agent} (cgroup {})",
        state.id, view.cgroup_path
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a pod's container (the hook told the CRI's socket) whose
    /// containerd-written namespace is listed is exempt.
    #[test]
    fn only_a_listed_namespaces_pods_are_exempt() {
        let state = |ns: Option<&str>| State {
            id: "c".into(),
            status: "creating".into(),
            bundle: "/b".into(),
            pid: Some(1),
            annotations: ns
                .map(|ns| {
                    [(
                        crate::containers::cri::SANDBOX_NAMESPACE.to_owned(),
                        ns.to_owned(),
                    )]
                    .into()
                })
                .unwrap_or_default(),
        };
        let exempt = ["agentguard-system".to_owned()];
        let cri = RuntimeSource::Cri("/run/containerd/containerd.sock".into());
        let docker = RuntimeSource::Docker("/var/lib/docker".into());
        let opts = |from| HookOptions {
            agent: None,
            wait: "0s",
            from,
            exempt_namespaces: &exempt,
        };
        let own = state(Some("agentguard-system"));
        assert_eq!(
            exempt_namespace(&own, &opts(Some(&cri))),
            Some("agentguard-system")
        );
        assert_eq!(
            exempt_namespace(&state(Some("agents")), &opts(Some(&cri))),
            None
        );
        assert_eq!(exempt_namespace(&state(None), &opts(Some(&cri))), None);
        // Not a pod's: the annotation is then anyone's to write.
        assert_eq!(exempt_namespace(&own, &opts(Some(&docker))), None);
        assert_eq!(exempt_namespace(&own, &opts(None)), None);
    }
}
