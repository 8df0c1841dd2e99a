//! The daemon's JWKS endpoint, over HTTPS: tool servers fetch the keys that
//! check agentguard's tokens from it, and a key swapped on the way would let
//! anyone mint tokens they accept. Also the TLS file helpers verify-proxy
//! shares.

use std::{convert::Infallible, path::Path, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tracing::warn;

use super::Minter;

pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// Where the JWKS is served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// How a client gets to wait for a request head (and between requests).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client gets for the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the JWKS endpoint speaks TLS.
pub enum JwksTls {
    /// Plain HTTP (only when the operator asks for it, on loopback).
    Off,
    /// HTTPS with this acceptor (agentguard's CA's leaf, or the
    /// operator's certificate).
    On(tokio_rustls::TlsAcceptor),
}

/// A server connection builder that gives up on a slow client. Without a
/// timer hyper applies no header-read timeout: a client that never
/// finishes its request head (or idles between requests) would hold the
/// connection for ever. As the agents' proxy does (`proxy/http.rs`).
pub(crate) fn server(header_read: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_read));
    builder
}

pub(crate) fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Serves `GET /.well-known/jwks.json` (the current and still-valid retired
/// public keys) and 404 for anything else.
pub async fn serve_jwks(listener: TcpListener, minter: Arc<Minter>, tls: JwksTls) {
    let tls = match tls {
        JwksTls::On(acceptor) => Some(acceptor),
        JwksTls::Off => None,
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "jwks accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (minter, tls) = (minter.clone(), tls.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let minter = minter.clone();
                async move {
                    let resp = if req.uri().path() == JWKS_PATH {
                        let body = serde_json::to_vec(&minter.jwks()).unwrap_or_default();
                        let mut r = full(StatusCode::OK, "application/jwk-set+json", body);
                        r.headers_mut().insert(
                            header::CACHE_CONTROL,
                            HeaderValue::from_static("max-age=60"),
                        );
                        r
                    } else {
                        full(StatusCode::NOT_FOUND, "text/plain", "not found\n")
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = server(HEADER_READ_TIMEOUT);
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => {
                            let _ = builder.serve_connection(TokioIo::new(s), service).await;
                        }
                        Ok(Err(e)) => warn!(%peer, error = %e, "jwks TLS handshake failed"),
                        Err(_) => warn!(%peer, "jwks TLS handshake timed out"),
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// The certificates in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// A TLS acceptor from a PEM certificate chain and PKCS#8/SEC1 key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = read_certs(cert)?;
    let pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
