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
/// CRI that does not answer must not hold the container's start (and
/// the daemon's container lock) for long.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A sandbox's status is a few KiB; a larger answer is not one.
const MAX_ANSWER: usize = 1 << 20;
const METHOD: &str = "/runtime.v1.RuntimeService/PodSandboxStatus";

#[derive(Debug, Error)]
pub enum CriError {
    #[error("{socket}: {why}")]
    Socket { socket: String, why: String },
    #[error("the CRI at {socket} did not answer {METHOD} in {CALL_TIMEOUT:?}")]
    Timeout { socket: String },
    #[error("the CRI at {socket}: {why}")]
    Call { socket: String, why: String },
    #[error("the CRI at {socket} refused {METHOD} (gRPC status {code}: {message})")]
    Status {
        socket: String,
        code: String,
        message: String,
    },
    #[error(
        "the CRI at {socket} answered with a message that is not a PodSandboxStatusResponse: {why}"
    )]
    Answer { socket: String, why: String },
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
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
pub(super) fn facts(
    created: &Created,
    socket: &Path,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<PodFacts>, super::ContainersError> {
    let missing = |key: &str| super::ContainersError::Record {
        id: created.id.clone(),
        path: created.bundle.join("config.json"),
        why: format!("has no annotation {key} (is it a container the CRI created?)"),
    };
    let get = |key: &str| annotations.get(key).ok_or_else(|| missing(key));
    match get(CONTAINER_TYPE)?.as_str() {
        "sandbox" => return Ok(None),
        "container" => {}
        other => {
            return Err(super::ContainersError::Record {
                id: created.id.clone(),
                path: created.bundle.join("config.json"),
                why: format!("names an unknown container type {other:?} ({CONTAINER_TYPE})"),
            });
        }
    }
    let sandbox = get(SANDBOX_ID)?;
    let status = pod_sandbox_status(socket, sandbox).map_err(|e| super::ContainersError::Cri {
        id: created.id.clone(),
        source: Box::new(e),
    })?;
    let inconsistent = |why: String| super::ContainersError::Record {
        id: created.id.clone(),
        path: created.bundle.join("config.json"),
        why,
    };
    let meta = status.metadata.unwrap_or_default();
    if status.id != *sandbox {
        return Err(inconsistent(format!(
            "names sandbox {sandbox}; the CRI answered for {:?}",
            status.id
        )));
    }
    if status.state != SANDBOX_READY {
        return Err(inconsistent(format!(
            "names sandbox {sandbox}, which the CRI says is not ready"
        )));
    }
    for (key, cri) in [
        (SANDBOX_NAMESPACE, &meta.namespace),
        (SANDBOX_NAME, &meta.name),
    ] {
        if let Some(said) = annotations.get(key)
            && said != cri
        {
            return Err(inconsistent(format!(
                "says {key} = {said:?}; the CRI says {cri:?}"
            )));
        }
    }
    if meta.namespace.is_empty() || meta.name.is_empty() {
        return Err(inconsistent(format!(
            "names sandbox {sandbox}, which the CRI gives no namespace or name"
        )));
    }
    Ok(Some(PodFacts {
        namespace: meta.namespace,
        pod: meta.name,
        labels: status.labels,
        name: annotations.get(CONTAINER_NAME).cloned(),
        image: annotations.get(IMAGE_NAME).cloned(),
    }))
}

/// `PodSandboxStatus` of one sandbox, bounded by [`CALL_TIMEOUT`]. From a
/// blocking thread of the daemon's runtime, or from no runtime at all.
fn pod_sandbox_status(socket: &Path, sandbox: &str) -> Result<PodSandboxStatus, CriError> {
    let call = async {
        tokio::time::timeout(CALL_TIMEOUT, unary(socket, sandbox))
            .await
            .unwrap_or_else(|_| {
                Err(CriError::Timeout {
                    socket: socket.display().to_string(),
                })
            })
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(call),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?
            .block_on(call),
    }
}

/// The CRI's socket must be root's (the daemon's user's) and a socket:
/// whoever could put another there could answer for any pod.
fn check_socket(socket: &Path) -> Result<(), CriError> {
    let bad = |why: String| CriError::Socket {
        socket: socket.display().to_string(),
        why,
    };
    if !socket.is_absolute() {
        return Err(bad("is not an absolute path".into()));
    }
    let meta = std::fs::symlink_metadata(socket).map_err(|e| bad(e.to_string()))?;
    if !meta.file_type().is_socket() {
        return Err(bad("is not a socket".into()));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(bad(format!(
            "belongs to uid {}, not to agentguard's user",
            meta.uid()
        )));
    }
    Ok(())
}

async fn unary(socket: &Path, sandbox: &str) -> Result<PodSandboxStatus, CriError> {
    check_socket(socket)?;
    let name = || socket.display().to_string();
    let call_err = |why: String| CriError::Call {
        socket: name(),
        why,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| call_err(format!("failed to connect: {e}")))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| call_err(format!("HTTP/2 handshake failed: {e}")))?;
    let driver = tokio::spawn(conn);
    let request = PodSandboxStatusRequest {
        pod_sandbox_id: sandbox.to_owned(),
        verbose: false,
    };
    let req = hyper::Request::post(format!("http://localhost{METHOD}"))
        .header(hyper::header::CONTENT_TYPE, "application/grpc")
        .header(hyper::header::TE, "trailers")
        .body(Full::new(grpc_frame(&request)))
        .map_err(|e| call_err(e.to_string()))?;
    let answer = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| call_err(format!("request failed: {e}")))?;
        let (parts, body) = resp.into_parts();
        if parts.status != hyper::StatusCode::OK {
            return Err(call_err(format!("HTTP status {}", parts.status)));
        }
        // A refusal may come with the head alone ("trailers-only").
        grpc_status(&name(), &parts.headers)?;
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| call_err(format!("reading the answer: {e}")))?;
        let trailers = body.trailers().cloned().unwrap_or_default();
        let data = body.to_bytes();
        if !grpc_status(&name(), &trailers)? {
            return Err(call_err("the answer ended without a gRPC status".into()));
        }
        let message = grpc_message(data).map_err(|why| CriError::Answer {
            socket: name(),
            why,
        })?;
        let resp = <PodSandboxStatusResponse as prost::Message>::decode(message).map_err(|e| {
            CriError::Answer {
                socket: name(),
                why: e.to_string(),
            }
        })?;
        resp.status.ok_or_else(|| CriError::Answer {
            socket: name(),
            why: "it has no status".into(),
        })
    }
    .await;
    driver.abort();
    answer
}

/// A gRPC message on the wire: uncompressed (0), its length, itself.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message.encode_raw(&mut out);
    out.freeze()
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
fn grpc_status(socket: &str, headers: &hyper::HeaderMap) -> Result<bool, CriError> {
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
    Err(CriError::Status {
        socket: socket.to_owned(),
        code: code.to_owned(),
        message,
    })
}

#[cfg(test)]
mod tests;
