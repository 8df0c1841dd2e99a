//! Talking to the running daemon's admin socket.

use std::{
    io,
    path::{Path, PathBuf},
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::net::UnixStream;

#[derive(Debug, Error)]
pub enum AdminError {
    #[error(
        "agentguard is not running (nothing answers on {path}: {source}); start it with `agentguard run`"
    )]
    NotRunning { path: PathBuf, source: io::Error },
    #[error("admin request {route} failed: {source}")]
    Http { route: String, source: hyper::Error },
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error("admin API answered {status} for {route}: {message}")]
    Status {
        route: String,
        status: StatusCode,
        message: String,
    },
    #[error("admin API sent an unreadable answer for {route}: {source}")]
    Decode {
        route: String,
        source: serde_json::Error,
    },
}

pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// Connects to the admin socket and sends one GET; the caller reads the
    /// answer.
    async fn send_get(
        &self,
        route: &str,
        accept: &'static str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, AdminError> {
        self.send(hyper::Method::GET, route, accept).await
    }

    async fn send(
        &self,
        method: hyper::Method,
        route: &str,
        accept: &'static str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, AdminError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| AdminError::NotRunning {
                    path: self.socket.clone(),
                    source,
                })?;
        let http_err = |source| AdminError::Http {
            route: route.to_owned(),
            source,
        };
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_err)?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(route)
            .header("host", "agentguard")
            .header("accept", accept)
            .body(Empty::<Bytes>::new())?;
        sender.send_request(req).await.map_err(http_err)
    }

    /// GETs an SSE `route` and calls `on_data` with each event's `data`
    /// (and its `event` name, if any) until the stream ends or `on_data`
    /// returns `false`.
    pub async fn stream(
        &self,
        route: &str,
        mut on_data: impl FnMut(Option<&str>, &str) -> bool,
    ) -> Result<(), AdminError> {
        let http_err = |source| AdminError::Http {
            route: route.to_owned(),
            source,
        };
        let resp = self.send_get(route, "text/event-stream").await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(http_err)?.to_bytes();
            return Err(AdminError::Status {
                route: route.to_owned(),
                status,
                message: error_message(&bytes),
            });
        }
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(http_err)?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.push_str(&String::from_utf8_lossy(data));
            // Events end with a blank line (the SSE spec's dispatch).
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let mut name = None;
                let mut payload = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        payload.push(v);
                    }
                }
                if !payload.is_empty() && !on_data(name.as_deref(), &payload.join("\n")) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// GETs `route` and decodes the JSON answer. Non-2xx answers become
    /// [`AdminError::Status`] carrying the daemon's error message.
    pub async fn get<T: DeserializeOwned>(&self, route: &str) -> Result<T, AdminError> {
        self.json(hyper::Method::GET, route).await
    }

    /// POSTs (no body) to `route`, an action such as a key rotation.
    pub async fn post<T: DeserializeOwned>(&self, route: &str) -> Result<T, AdminError> {
        self.json(hyper::Method::POST, route).await
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        route: &str,
    ) -> Result<T, AdminError> {
        let http_err = |source| AdminError::Http {
            route: route.to_owned(),
            source,
        };
        let resp = self.send(method, route, "application/json").await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        if !status.is_success() {
            return Err(AdminError::Status {
                route: route.to_owned(),
                status,
                message: error_message(&body),
            });
        }
        serde_json::from_slice(&body).map_err(|source| AdminError::Decode {
            route: route.to_owned(),
            source,
        })
    }
}

/// The daemon's `{"error": ...}` message, or the body as it is.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}
