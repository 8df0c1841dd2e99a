//! Serving the admin API on a unix socket.

use std::{
    convert::Infallible,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use http_body_util::{BodyExt as _, Full, combinators::UnsyncBoxBody};
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
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tracing::{debug, warn};

use super::{AgentView, StatusView, stream};
use crate::{
    audit::{AuditSink, otlp::OtlpStats},
    ca::LeafCache,
    connlog::{ConnLog, RequestLog},
    credentials::placeholder_for,
    live::Live,
    metrics::{self, Metrics, Snapshot},
};

pub(super) type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("another agentguard daemon is answering on {0}; stop it first")]
    AlreadyRunning(PathBuf),
    #[error("failed to prepare admin socket {path}: {source}")]
    Prepare { path: PathBuf, source: io::Error },
    #[error("failed to bind admin socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
}

/// What `/metrics` renders: the registry plus the counters kept elsewhere.
pub struct MetricsSource {
    pub metrics: Arc<Metrics>,
    pub audit: AuditSink,
    pub leaves: Arc<LeafCache>,
    /// For the CAs' expiry.
    pub ca: Arc<crate::ca::CaStore>,
    pub otlp: Option<Arc<OtlpStats>>,
    /// For map occupancy and lost kernel events; `None` in unit tests.
    pub kernel: Option<Arc<std::sync::Mutex<crate::ebpf::Kernel>>>,
}

impl MetricsSource {
    pub fn render(&self) -> String {
        let (leaf_hits, leaf_misses) = self.leaves.counts();
        let (kernel_maps, kernel_events_lost) = match &self.kernel {
            Some(kernel) => {
                let kernel = kernel.lock().unwrap_or_else(|p| p.into_inner());
                (kernel.map_occupancy(), kernel.events_lost())
            }
            None => (Vec::new(), 0),
        };
        self.metrics.render(&Snapshot {
            kernel_maps,
            kernel_events_lost,
            audit: Some(self.audit.status()),
            leaf_hits,
            leaf_misses,
            ca_expiry: self
                .ca
                .current()
                .expiries()
                .into_iter()
                .map(|(role, at)| (role.as_str(), at))
                .collect(),
            otlp: self.otlp.as_ref().map(|o| o.snapshot()),
        })
    }

    fn response<B>(&self, req: &Request<B>) -> Response<AdminBody> {
        let accept = req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let (body, content_type) = metrics::negotiate(self.render(), accept);
        Response::builder()
            .header(CONTENT_TYPE, content_type)
            .body(full(body.into_bytes()))
            .unwrap_or_else(|_| Response::new(full(Vec::new())))
    }
}

/// A request's query parameters, by name (the last of repeated ones).
pub(super) fn query_params<B>(req: &Request<B>) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// `--metrics-listen`: `GET /metrics` only, over TCP. It shows counts and
/// agent names, no secrets, so it may be bound beyond root's reach; other
/// paths get 404.
pub async fn serve_metrics_tcp(listener: TcpListener, source: Arc<MetricsSource>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let source = source.clone();
                async move {
                    Ok::<_, Infallible>(if req.uri().path() == "/metrics" {
                        source.response(&req)
                    } else {
                        error(StatusCode::NOT_FOUND, "only /metrics is served here")
                    })
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Everything the admin API reports on.
pub struct AdminState {
    pub live: Arc<Live>,
    pub audit: AuditSink,
    pub metrics: Arc<MetricsSource>,
    pub log: Arc<ConnLog>,
    pub requests: Arc<RequestLog>,
    pub proxy_port: u16,
    pub ca_cert: PathBuf,
    pub ca_bundle: PathBuf,
    /// The CA that signs; `POST /v1/ca/{rotate,activate,cancel}` steps
    /// through a rotation.
    pub ca: Arc<crate::ca::CaStore>,
    /// For the kernel's counters (lost ring-buffer records).
    pub kernel: Arc<std::sync::Mutex<crate::ebpf::Kernel>>,
    /// Signs request-bound and identity tokens; `POST /v1/token/rotate`
    /// rotates both keys.
    pub minter: Arc<crate::token::Minter>,
    /// `POST /v1/on-behalf-of?pid=N&who=BASE64URL` from `agentguard exec`.
    pub on_behalf_of: Arc<crate::token::OnBehalfOf>,
    /// Approvals and revocations (see `super::oversight`).
    pub oversight: Arc<crate::oversight::Oversight>,
    /// Where the web view answers, if it is on.
    pub web_url: Option<String>,
    /// `POST /v1/agents/{name}/attach?pid=N`: guards the systemd unit
    /// cgroup of process N as agent `name` (blocking: it attaches
    /// programs). `None`: refused.
    pub attach: Option<Attach>,
    /// `POST /v1/agents/{name}/container?pid=N`: opens the listeners in
    /// the network namespace of container process N, which must be in
    /// agent `name`'s cgroup (`agentguard oci-hook`). `None`: refused.
    pub container: Option<Attach>,
    /// `POST /v1/containers/created?id=ID&pid=N&bundle=PATH` from the OCI
    /// hook: attaches the container if a policy selects it (blocking).
    /// `None`: refused.
    pub created: Option<ContainerCreated>,
    /// `POST /v1/containers/ended` from the hook's poststop stage:
    /// forgets containers whose cgroup is gone (blocking).
    pub ended: Option<Arc<dyn Fn() -> Result<usize, String> + Send + Sync>>,
}

/// Attaches a created container if a policy selects it.
pub type ContainerCreated = Arc<
    dyn Fn(&crate::containers::Created) -> Result<crate::containers::CreatedView, String>
        + Send
        + Sync,
>;

/// Guards agent `name`'s unit cgroup, which process `pid` must be in.
pub type Attach = Arc<dyn Fn(&str, u32) -> Result<(), String> + Send + Sync>;

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
            // Who is calling, for the record of what they do.
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        if let Some(name) = attach_target(&req, "/attach") {
                            return Ok::<_, Infallible>(attach(state, name, &req).await);
                        }
                        if let Some(name) = attach_target(&req, "/container") {
                            return Ok::<_, Infallible>(container(state, name, &req).await);
                        }
                        if req.method() == Method::POST
                            && req.uri().path().starts_with("/v1/containers/")
                        {
                            return Ok::<_, Infallible>(container_event(state, &req).await);
                        }
                        if let Some(resp) = super::ca::route(&state, &req, uid).await {
                            return Ok::<_, Infallible>(resp);
                        }
                        Ok::<_, Infallible>(
                            match super::oversight::route(&state, &req, uid).await {
                                Some(resp) => resp,
                                None => route(&state, &req),
                            },
                        )
                    }
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

/// The agent of a `POST /v1/agents/{name}{action}`.
fn attach_target(req: &Request<Incoming>, action: &str) -> Option<String> {
    let name = req
        .uri()
        .path()
        .strip_prefix("/v1/agents/")?
        .strip_suffix(action)?;
    (req.method() == Method::POST).then(|| name.to_owned())
}

/// The `?pid=N` of a request.
fn pid_param(req: &Request<Incoming>) -> Option<u32> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("pid="))
        .and_then(|p| p.parse::<u32>().ok())
}

/// Guards the network namespace of a container's first process (the OCI
/// hook), off the runtime's threads: it enters the namespace.
async fn container(
    state: Arc<AdminState>,
    name: String,
    req: &Request<Incoming>,
) -> Response<AdminBody> {
    let (Some(pid), Some(container)) = (pid_param(req), state.container.clone()) else {
        return error(StatusCode::BAD_REQUEST, "expected ?pid=N");
    };
    let agent = name.clone();
    match tokio::task::spawn_blocking(move || container(&agent, pid)).await {
        Ok(Ok(())) => match agent_view(&state, &name) {
            Some(view) => json(StatusCode::OK, &view),
            None => error(StatusCode::NOT_FOUND, "agent disappeared"),
        },
        Ok(Err(e)) => error(StatusCode::CONFLICT, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// One query parameter, percent-decoded.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query().unwrap_or("").split('&').find_map(|p| {
        let value = p.strip_prefix(name)?.strip_prefix('=')?;
        String::from_utf8(crate::percent::decode(value.as_bytes())).ok()
    })
}

/// The OCI hook's reports: a container created (attach it if selected),
/// or ended (forget those whose cgroup is gone). Off the runtime's
/// threads: attaching enters namespaces and takes system calls.
async fn container_event(state: Arc<AdminState>, req: &Request<Incoming>) -> Response<AdminBody> {
    match req.uri().path() {
        "/v1/containers/created" => {
            let (Some(id), Some(pid), Some(bundle), Some(created)) = (
                query_param(req, "id"),
                pid_param(req),
                query_param(req, "bundle"),
                state.created.clone(),
            ) else {
                return error(StatusCode::BAD_REQUEST, "expected ?id=ID&pid=N&bundle=PATH");
            };
            use crate::containers::RuntimeSource;
            let source = match (
                query_param(req, "docker_root"),
                query_param(req, "cri_socket"),
            ) {
                (Some(_), Some(_)) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "docker_root and cri_socket name two runtimes; give one",
                    );
                }
                (Some(root), None) => Some(RuntimeSource::Docker(root.into())),
                (None, Some(socket)) => Some(RuntimeSource::Cri(socket.into())),
                (None, None) => None,
            };
            let report = crate::containers::Created {
                id,
                pid,
                bundle: bundle.into(),
                source,
            };
            match tokio::task::spawn_blocking(move || created(&report)).await {
                Ok(Ok(view)) => json(StatusCode::OK, &view),
                Ok(Err(e)) => error(StatusCode::CONFLICT, &e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        "/v1/containers/ended" => {
            let Some(ended) = state.ended.clone() else {
                return error(StatusCode::NOT_FOUND, "no such route");
            };
            match tokio::task::spawn_blocking(move || ended()).await {
                Ok(Ok(n)) => json(StatusCode::OK, &serde_json::json!({ "detached": n })),
                Ok(Err(e)) => error(StatusCode::CONFLICT, &e),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    }
}

/// Guards the unit cgroup of the calling gate (`agentguard attach`), off
/// the runtime's threads: attaching programs takes system calls.
async fn attach(
    state: Arc<AdminState>,
    name: String,
    req: &Request<Incoming>,
) -> Response<AdminBody> {
    let (Some(pid), Some(attach)) = (pid_param(req), state.attach.clone()) else {
        return error(StatusCode::BAD_REQUEST, "expected ?pid=N");
    };
    let agent = name.clone();
    let outcome = tokio::task::spawn_blocking(move || attach(&agent, pid)).await;
    match outcome {
        Ok(Ok(())) => match agent_view(&state, &name) {
            Some(view) => json(StatusCode::OK, &view),
            None => error(StatusCode::NOT_FOUND, "agent disappeared"),
        },
        Ok(Err(e)) => error(StatusCode::CONFLICT, &e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn register_on_behalf_of(state: &AdminState, query: &str) -> Result<(), String> {
    use base64::Engine as _;
    let mut pid = None;
    let mut who = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("pid", v)) => pid = v.parse::<u32>().ok(),
            Some(("who", v)) => {
                who = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
            }
            _ => {}
        }
    }
    let (Some(pid), Some(who)) = (pid, who) else {
        return Err("expected ?pid=N&who=BASE64URL".into());
    };
    state.on_behalf_of.register(pid, &who)
}

fn route(state: &AdminState, req: &Request<Incoming>) -> Response<AdminBody> {
    // New token signing keys (request-bound and identity), the old ones kept
    // in the JWKS until their tokens have expired.
    if req.method() == Method::POST && req.uri().path() == "/v1/token/rotate" {
        return match state.minter.rotate() {
            Ok(()) => {
                let (kid, identity_kid) = (state.minter.kid(), state.minter.identity_kid());
                tracing::info!(kid = %kid, identity_kid = %identity_kid, "token signing keys rotated");
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "kid": kid, "identity_kid": identity_kid }),
                )
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
    }
    if req.method() == Method::POST && req.uri().path() == "/v1/on-behalf-of" {
        return match register_on_behalf_of(state, req.uri().query().unwrap_or("")) {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "registered": true })),
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        };
    }
    // A verify-proxy beside the daemon records its decisions here.
    if req.method() == Method::POST && req.uri().path() == super::report::REPORT_ROUTE {
        return match super::report::VerifyReport::from_query(req.uri().query().unwrap_or("")) {
            Ok(report) => {
                let policy = state.live.load().policy.clone();
                state
                    .audit
                    .record_detached(report.into_event(|name| policy.agent(name).is_some()));
                json(StatusCode::OK, &serde_json::json!({ "recorded": true }))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        };
    }
    if req.method() != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported");
    }
    let path = req.uri().path();
    match path {
        "/v1/status" => json(StatusCode::OK, &status(state)),
        "/metrics" => state.metrics.response(req),
        "/v1/audit/stream" => match stream::parse(req.uri().query()) {
            Ok((filter, backlog)) => Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .header("cache-control", "no-cache")
                .body(stream::open(&state.audit, filter, backlog).boxed_unsync())
                .unwrap_or_else(|_| Response::new(full(Vec::new()))),
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        },
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
    // One lock, released before the view is built.
    let (kernel_events_lost, unix_sockets_guarded, processes_guarded) = {
        let kernel = state.kernel.lock().unwrap_or_else(|p| p.into_inner());
        (
            kernel.events_lost(),
            kernel.unix_sockets_guarded(),
            kernel.processes_guarded(),
        )
    };
    StatusView {
        pid: std::process::id(),
        proxy_port: state.proxy_port,
        policy_version: live.policy.version.to_string(),
        last_reload: state.live.last_reload(),
        // Every agent of the policy: one whose systemd unit is not
        // running is listed as not guarded.
        agents: live
            .policy
            .agents
            .iter()
            .filter_map(|a| agent_view(state, &a.name))
            .collect(),
        connections_total: state.log.total(),
        requests_total: state.requests.total(),
        audit: Some(state.audit.status()),
        kernel_events_lost,
        unix_sockets_guarded,
        web: state.web_url.clone(),
        processes_guarded,
        ca: state.ca.current().describe(),
    }
}

fn agent_view(state: &AdminState, name: &str) -> Option<AgentView> {
    let live = state.live.load();
    let policy = live.policy.agent(name)?;
    let guarded = live.agents.get(name);
    let kernel = state.kernel.lock().unwrap_or_else(|p| p.into_inner());
    Some(AgentView {
        name: name.to_owned(),
        cgroup: policy.cgroup.to_string(),
        cgroup_path: guarded
            .map(|g| g.cgroup.path.display().to_string())
            .unwrap_or_default(),
        cgroup_id: guarded.map_or(0, |g| g.cgroup.id),
        // The daemon only serves after every agent's programs are attached
        // and pinned; an agent it failed to guard stops start-up. Only an
        // agent whose systemd unit is not running has no guarded cgroup.
        guarded: guarded.is_some(),
        systemd_unit: policy.systemd_unit.as_ref().map(|u| u.to_string()),
        processes_guarded: kernel.processes_guarded(),
        kernel: guarded
            .map(|g| kernel.agent_usage(g.cgroup.id))
            .unwrap_or_default(),
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
        revoked: state.oversight.revocations.revoked(name),
        containers: live
            .agents
            .containers_of(name)
            .filter_map(|g| {
                Some(crate::containers::ContainerView {
                    info: (**g.container.as_ref()?).clone(),
                    cgroup: live
                        .agents
                        .root()
                        .relative(&g.cgroup.path)
                        .display()
                        .to_string(),
                    cgroup_id: g.cgroup.id,
                })
            })
            .collect(),
    })
}

fn full(bytes: Vec<u8>) -> AdminBody {
    Full::new(Bytes::from(bytes)).boxed_unsync()
}

pub(super) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<AdminBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(full(bytes))
        .unwrap_or_else(|_| Response::new(full(Vec::new())))
}

pub(super) fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    json(status, &serde_json::json!({ "error": message }))
}
