//! A Kubernetes pod's namespace, name and labels, from the node's CRI
//! runtime (containerd's CRI plugin), for a container it is starting.
//!
//! The hook comes from `agentguard oci-runtime --cri-socket`, containerd's
//! runc for its CRI containers: the report says the container is a pod's
//! and where the CRI answers. The container's bundle (`config.json`,
//! written by containerd) carries containerd's own annotations: whether
//! it is a pod's sandbox (the pause container, never an agent) or one of
//! its containers, the sandbox's id, and the container's name and image.
//! Pod labels are only in the CRI's record of the sandbox, so the daemon
//! asks `PodSandboxStatus` for them, and takes the namespace and pod name
//! from the same answer; annotations that name another namespace or pod
//! than the CRI does fail the container's start.
//!
//! The sandbox is ready and known to the CRI before the kubelet creates a
//! pod's containers, and containerd answers `PodSandboxStatus` while it
//! starts one (it holds no lock on the sandbox then).
//!
//! The client is the one call, written out: gRPC over HTTP/2 with prior
//! knowledge on the Unix socket (hyper), the three messages in prost with
//! the CRI's field numbers (`runtime.v1`, api.proto). A generated client
//! would bring protoc into the daemon's build and tonic's stack into the
//! daemon for one request.

use std::{
    collections::BTreeMap,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::Path,
    time::Duration,
};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full, Limited};
use thiserror::Error;

use super::Created;

/// containerd's annotations on a CRI container (pkg/cri/annotations).
pub(super) const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// The whole call: the runtime answers from memory in milliseconds; a
/// CRI that does not answer must not hold the container's start for long
/// (the daemon asks before it takes its container lock).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A sandbox's status is a few KiB; a larger answer is not one.
const MAX_ANSWER: usize = 1 << 20;
const METHOD: &str = "/runtime.v1.RuntimeService/PodSandboxStatus";

/// A failed question to the CRI, or an answer that does not fit.
#[derive(Debug, Error)]
#[error("the CRI at {socket}: {kind}")]
pub struct CriError {
    socket: String,
    kind: CriErrorKind,
}

#[derive(Debug, Error)]
pub enum CriErrorKind {
    #[error("{0}")]
    Socket(String),
    #[error("did not answer {METHOD} in {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("{0}")]
    Call(String),
    #[error("refused {METHOD} (gRPC status {code}: {message})")]
    Status { code: String, message: String },
    #[error("answered {METHOD} with what is not a PodSandboxStatusResponse: {0}")]
    Answer(String),
    #[error("says of sandbox {sandbox}: {why}")]
    Sandbox { sandbox: String, why: String },
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CriError {
    fn new(socket: &Path, kind: CriErrorKind) -> Self {
        Self {
            socket: socket.display().to_string(),
            kind,
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxStatusRequest {
    #[prost(string, tag = "1")]
    pod_sandbox_id: String,
    #[prost(bool, tag = "2")]
    verbose: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxStatusResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<PodSandboxStatus>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxStatus {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "2")]
    metadata: Option<PodSandboxMetadata>,
    /// 0: SANDBOX_READY, 1: SANDBOX_NOTREADY.
    #[prost(int32, tag = "3")]
    state: i32,
    #[prost(btree_map = "string, string", tag = "7")]
    labels: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    uid: String,
    #[prost(string, tag = "3")]
    namespace: String,
}

const SANDBOX_READY: i32 = 0;

/// What the CRI and containerd say of a pod's container.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PodFacts {
    pub namespace: String,
    pub pod: String,
    pub labels: BTreeMap<String, String>,
    /// The container's name in its pod, and its image as the kubelet gave it.
    pub name: Option<String>,
    pub image: Option<String>,
}

/// What the pod's container is, from its annotations and the CRI. `None`:
/// the pod's sandbox (pause) container, which is no agent and starts
/// untouched. Anything missing, unreachable or inconsistent is an error.
///
/// The annotations are containerd's: `config.json` is root's alone (read
/// by [`super::read_record`]), and containerd sets its own
/// `io.kubernetes.cri.*` keys after any it passes through from a pod.
pub(super) fn facts(
    created: &Created,
    socket: &Path,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<PodFacts>, super::ContainersError> {
    let refuse = |why: String| super::ContainersError::Record {
        id: created.id.clone(),
        path: created.bundle.join("config.json"),
        why,
    };
    check_bundle(created).map_err(refuse)?;
    let get = |key: &str| {
        annotations.get(key).ok_or_else(|| {
            refuse(format!(
                "has no annotation {key} (is it a container containerd's CRI created?)"
            ))
        })
    };
    match get(CONTAINER_TYPE)?.as_str() {
        "sandbox" => return Ok(None),
        "container" => {}
        other => {
            return Err(refuse(format!(
                "names an unknown container type {other:?} ({CONTAINER_TYPE})"
            )));
        }
    }
    let sandbox = get(SANDBOX_ID)?;
    let (namespace, pod) = (get(SANDBOX_NAMESPACE)?, get(SANDBOX_NAME)?);
    let cri_err = |source| super::ContainersError::Cri {
        id: created.id.clone(),
        source: Box::new(source),
    };
    let status = pod_sandbox_status(socket, sandbox).map_err(cri_err)?;
    let labels = verify(sandbox, namespace, pod, status)
        .map_err(|kind| cri_err(CriError::new(socket, kind)))?;
    Ok(Some(PodFacts {
        namespace: namespace.clone(),
        pod: pod.clone(),
        labels,
        name: annotations.get(CONTAINER_NAME).cloned(),
        image: annotations.get(IMAGE_NAME).cloned(),
    }))
}

/// containerd keeps a task's bundle in a folder named after the container
/// (`<state>/io.containerd.runtime.v2.task/<namespace>/<id>`), so a report
/// cannot have the daemon read another container's configuration.
fn check_bundle(created: &Created) -> Result<(), String> {
    let bundle = &created.bundle;
    let clean = bundle.is_absolute()
        && bundle.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
    let named = bundle.file_name().and_then(|n| n.to_str()) == Some(created.id.as_str());
    if clean && named && !created.id.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "is not in a bundle named after the container ({}: …/<namespace>/{})",
            bundle.display(),
            created.id
        ))
    }
}

/// The pod's labels, if the CRI's status is of the sandbox the
/// annotations name, ready, and of the same namespace and name.
fn verify(
    sandbox: &str,
    namespace: &str,
    pod: &str,
    status: PodSandboxStatus,
) -> Result<BTreeMap<String, String>, CriErrorKind> {
    let bad = |why: String| CriErrorKind::Sandbox {
        sandbox: sandbox.to_owned(),
        why,
    };
    if status.id != sandbox {
        return Err(bad(format!("the answer is of sandbox {:?}", status.id)));
    }
    if status.state != SANDBOX_READY {
        return Err(bad("it is not ready".into()));
    }
    let meta = status.metadata.unwrap_or_default();
    if (meta.namespace.as_str(), meta.name.as_str()) != (namespace, pod) {
        return Err(bad(format!(
            "it is pod {}/{}; the container's annotations say {namespace}/{pod}",
            meta.namespace, meta.name
        )));
    }
    if namespace.is_empty() || pod.is_empty() {
        return Err(bad("it has no namespace or name".into()));
    }
    Ok(status.labels)
}

/// `PodSandboxStatus` of one sandbox, bounded by [`CALL_TIMEOUT`]. From a
/// blocking thread of the daemon's runtime, or from no runtime at all.
fn pod_sandbox_status(socket: &Path, sandbox: &str) -> Result<PodSandboxStatus, CriError> {
    let call = async {
        tokio::time::timeout(CALL_TIMEOUT, unary(socket, sandbox))
            .await
            .unwrap_or(Err(CriErrorKind::Timeout))
    };
    let answer = match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(call),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriErrorKind::Runtime)
            .and_then(|rt| rt.block_on(call)),
    };
    answer.map_err(|kind| CriError::new(socket, kind))
}

/// The CRI's socket must be root's (the daemon's user's) and a socket:
/// whoever could put another there could answer for any pod.
fn check_socket(socket: &Path) -> Result<(), CriErrorKind> {
    let bad = |why: String| CriErrorKind::Socket(why);
    if !socket.is_absolute() {
        return Err(bad("the socket is not an absolute path".into()));
    }
    let meta = std::fs::symlink_metadata(socket).map_err(|e| bad(e.to_string()))?;
    if !meta.file_type().is_socket() {
        return Err(bad("is not a socket".into()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(bad(format!(
            "the socket belongs to uid {}, not to agentguard's user",
            meta.uid()
        )));
    }
    Ok(())
}

/// Aborts the HTTP/2 connection's task however the call ends (a time
/// limit drops the call's future midway).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn unary(socket: &Path, sandbox: &str) -> Result<PodSandboxStatus, CriErrorKind> {
    check_socket(socket)?;
    let call_err = CriErrorKind::Call;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| call_err(format!("failed to connect: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| call_err(format!("HTTP/2 handshake failed: {e}")))?;
    let _driver = AbortOnDrop(tokio::spawn(conn));
    let request = PodSandboxStatusRequest {
        pod_sandbox_id: sandbox.to_owned(),
        verbose: false,
    };
    let req = hyper::Request::post(format!("http://localhost{METHOD}"))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        // The server's side of the time limit (gRPC's "grpc-timeout").
        .header("grpc-timeout", format!("{}S", CALL_TIMEOUT.as_secs()))
        .body(Full::new(grpc_frame(&request).map_err(call_err)?))
        .map_err(|e| call_err(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| call_err(format!("request failed: {e}")))?;
    let (parts, body) = resp.into_parts();
    if parts.status != hyper::StatusCode::OK {
        return Err(call_err(format!("HTTP status {}", parts.status)));
    }
    let grpc = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        return Err(call_err("the answer is not gRPC (content-type)".into()));
    }
    // A status in the head is a "trailers-only" answer: no message
    // follows, so even an OK there answers nothing.
    if grpc_status(&parts.headers)? {
        return Err(CriErrorKind::Answer("a status with no message".into()));
    }
    let body = Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| call_err(format!("reading the answer: {e}")))?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    let data = body.to_bytes();
    if !grpc_status(&trailers)? {
        return Err(call_err("the answer ended without a gRPC status".into()));
    }
    let message = grpc_message(data).map_err(CriErrorKind::Answer)?;
    let resp = <PodSandboxStatusResponse as prost::Message>::decode(message)
        .map_err(|e| CriErrorKind::Answer(e.to_string()))?;
    resp.status
        .ok_or_else(|| CriErrorKind::Answer("it has no status".into()))
}

/// A gRPC message on the wire: uncompressed (0), its length, itself.
fn grpc_frame(message: &impl prost::Message) -> Result<Bytes, String> {
    let len = message.encoded_len();
    let len32 = u32::try_from(len).map_err(|_| format!("a {len}-byte message"))?;
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len32);
    message.encode_raw(&mut out);
    Ok(out.freeze())
}

/// The one message of a unary answer.
fn grpc_message(mut data: Bytes) -> Result<Bytes, String> {
    if data.len() < 5 {
        return Err(format!(
            "{} bytes, less than a gRPC frame's head",
            data.len()
        ));
    }
    let compressed = data.get_u8();
    let len = data.get_u32() as usize;
    if compressed != 0 {
        return Err("it is compressed, which was not asked for".into());
    }
    if data.len() != len {
        return Err(format!(
            "the frame says {len} bytes and {} follow",
            data.len()
        ));
    }
    Ok(data)
}

/// `Ok(true)`: `grpc-status: 0` is there; `Ok(false)`: no status here.
fn grpc_status(headers: &hyper::HeaderMap) -> Result<bool, CriErrorKind> {
    let Some(code) = headers.get("grpc-status") else {
        return Ok(false);
    };
    let code = code.to_str().unwrap_or("?");
    if code == "0" {
        return Ok(true);
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(|m| String::from_utf8_lossy(&crate::percent::decode(m.as_bytes())).into_owned())
        .unwrap_or_default();
    Err(CriErrorKind::Status {
        code: code.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests;
