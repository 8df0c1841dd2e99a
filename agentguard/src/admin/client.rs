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

    /// GETs `route` and decodes the JSON answer. Non-2xx answers become
    /// [`AdminError::Status`] carrying the daemon's error message.
    pub async fn get<T: DeserializeOwned>(&self, route: &str) -> Result<T, AdminError> {
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
        let req = Request::get(route)
            .header("host", "agentguard")
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(AdminError::Status {
                route: route.to_owned(),
                status,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|source| AdminError::Decode {
            route: route.to_owned(),
            source,
        })
    }
}
