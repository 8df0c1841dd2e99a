//! `agentguard exec`: start a program inside an agent's cgroup.
//!
//! The process joins the cgroup *before* exec: the kernel hooks follow the
//! cgroup a socket was created in, so a socket opened before joining would
//! escape the redirect.

use std::{
    convert::Infallible,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use thiserror::Error;

use crate::{
    admin::{AdminClient, AdminError, AgentView},
    cgroup::{Cgroup, CgroupError, CgroupRoot},
    preflight::{self, PreflightError},
};

#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("{0}")]
    Admin(#[from] AdminError),
    #[error("unknown agent {0:?}: not in the running daemon's policy")]
    UnknownAgent(String),
    #[error("agent {0:?} is known but its cgroup is not guarded; refusing to start it unguarded")]
    NotGuarded(String),
    #[error(
        "agent {agent:?}: cgroup {path} is not the one the daemon guards (id {actual}, daemon says {expected})"
    )]
    CgroupMismatch {
        agent: String,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("no command given: agentguard exec --agent NAME -- CMD [ARGS...]")]
    NoCommand,
    #[error("failed to execute {cmd:?}: {source}")]
    Exec {
        cmd: OsString,
        source: std::io::Error,
    },
}

/// Variables through which common runtimes and tools take their trusted CA
/// bundle. Each is pointed at the bundle of system roots plus the agentguard
/// CA, so unmodified clients trust intercepted connections and still every
/// public CA.
const CA_BUNDLE_VARS: [&str; 10] = [
    "SSL_CERT_FILE",       // OpenSSL (Python ssl/urllib, Ruby, curl with OpenSSL), Go
    "REQUESTS_CA_BUNDLE",  // Python requests
    "CURL_CA_BUNDLE",      // curl
    "NODE_EXTRA_CA_CERTS", // Node.js (fetch, https)
    "GIT_SSL_CAINFO",      // git over HTTPS
    "PIP_CERT",            // pip
    "AWS_CA_BUNDLE",       // AWS CLI and SDKs
    "CARGO_HTTP_CAINFO",   // cargo
    "DENO_CERT",           // Deno
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", // gRPC core (Python, Ruby, C++)
];

/// Joins `agent`'s cgroup and replaces this process with `cmd`. Returns only
/// on failure.
pub fn exec(admin_socket: &Path, agent: &str, cmd: &[OsString]) -> Result<Infallible, ExecError> {
    preflight::require_root("exec")?;
    let (program, args) = cmd.split_first().ok_or(ExecError::NoCommand)?;
    let view = fetch_agent(admin_socket, agent)?;
    if !view.guarded {
        return Err(ExecError::NotGuarded(agent.to_owned()));
    }
    let cgroup = Cgroup::open(Path::new(&view.cgroup_path))?;
    if cgroup.id != view.cgroup_id {
        return Err(ExecError::CgroupMismatch {
            agent: agent.to_owned(),
            path: cgroup.path,
            expected: view.cgroup_id,
            actual: cgroup.id,
        });
    }
    let root = CgroupRoot::discover()?;
    cgroup.join_self(&root)?;
    let mut command = Command::new(program);
    command.args(args);
    for var in CA_BUNDLE_VARS {
        command.env(var, &view.ca_bundle);
    }
    for (var, placeholder) in &view.placeholders {
        command.env(var, placeholder);
    }
    let source = command.exec();
    Err(ExecError::Exec {
        cmd: program.clone(),
        source,
    })
}

fn fetch_agent(admin_socket: &Path, agent: &str) -> Result<AgentView, ExecError> {
    // The name goes into a URL path: only names a policy could define.
    if !agent
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        || agent.is_empty()
    {
        return Err(ExecError::UnknownAgent(agent.to_owned()));
    }
    // A current-thread runtime starts no worker threads, and it is dropped
    // before exec.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ExecError::Runtime)?;
    let client = AdminClient::new(admin_socket);
    let result = runtime.block_on(client.get::<AgentView>(&format!("/v1/agents/{agent}")));
    match result {
        Ok(view) => Ok(view),
        Err(AdminError::Status { status, .. }) if status == hyper::StatusCode::NOT_FOUND => {
            Err(ExecError::UnknownAgent(agent.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}
