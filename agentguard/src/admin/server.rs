//! Serving the admin API on a unix socket.

use std::{
    convert::Infallible,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::{AgentView, StatusView};
use crate::{
    connlog::{ConnLog, RequestLog},
    credentials::placeholder_for,
    live::Live,
};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("another agentguard daemon is answering on {0}; stop it first")]
    AlreadyRunning(PathBuf),
    #[error("failed to prepare admin socket {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("failed to bind admin socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// Everything the admin API reports on.
pub struct AdminState {
    pub live: Arc<Live>,
    pub log: Arc<ConnLog>,
    pub requests: Arc<RequestLog>,
    pub proxy_port: u16,
    pub ca_cert: PathBuf,
    pub ca_bundle: PathBuf,
}

pub struct AdminServer {
    listener: UnixListener,
}

impl AdminServer {
    /// Binds the socket, refusing to take over one a live daemon answers on.
    pub async fn bind(path: &Path) -> Result<Self, ServeError> {
        let prepare = |source| ServeError::Prepare {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(prepare)?;
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::AlreadyRunning(path.to_owned()));
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(prepare(e)),
        }
        let listener = UnixListener::bind(path).map_err(|source| ServeError::Bind {
            path: path.to_owned(),
            source,
        })?;
        // Root only: the API can place processes into agent cgroups' view.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(prepare)?;
        Ok(Self { listener })
    }

    pub async fn serve(self, state: AdminState) {
        let state = Arc::new(state);
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&state, &req)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "admin connection ended");
                }
            });
        }
    }
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported");
    }
    let path = req.uri().path();
    match path {
        "/v1/status" => json(StatusCode::OK, &status(state)),
        "/v1/connections" => json(StatusCode::OK, &state.log.snapshot()),
        "/v1/requests" => json(StatusCode::OK, &state.requests.snapshot()),
        _ => match path.strip_prefix("/v1/agents/") {
            Some(name) => match agent_view(state, name) {
                Some(view) => json(StatusCode::OK, &view),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no agent named {name:?} in the running policy"),
                ),
            },
            None => error(StatusCode::NOT_FOUND, "no such route"),
        },
    }
}

fn status(state: &AdminState) -> StatusView {
    let live = state.live.load();
    StatusView {
        pid: std::process::id(),
        proxy_port: state.proxy_port,
        policy_version: live.policy.version.clone(),
        last_reload: state.live.last_reload(),
        agents: live
            .agents
            .agents()
            .iter()
            .filter_map(|a| agent_view(state, &a.name))
            .collect(),
        connections_total: state.log.total(),
        requests_total: state.requests.total(),
    }
}

fn agent_view(state: &AdminState, name: &str) -> Option<AgentView> {
    let live = state.live.load();
    let guarded = live.agents.get(name)?;
    let policy = live.policy.agent(name)?;
    Some(AgentView {
        name: name.to_owned(),
        cgroup: policy.cgroup.to_string(),
        cgroup_path: guarded.cgroup.path.display().to_string(),
        cgroup_id: guarded.cgroup.id,
        // The daemon only serves after every agent's programs are attached
        // and pinned; an agent it failed to guard stops start-up.
        guarded: true,
        policy_file: policy.source.display().to_string(),
        ca_cert: state.ca_cert.display().to_string(),
        ca_bundle: state.ca_bundle.display().to_string(),
        placeholders: policy
            .credentials
            .iter()
            .filter_map(|c| {
                let var = c.placeholder_env.clone()?;
                Some((var, placeholder_for(&c.id)))
            })
            .collect(),
    })
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}
