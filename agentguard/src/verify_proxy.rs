//! `agentguard verify-proxy`: a reverse proxy in front of a tool server (in
//! any language) that lets through only requests whose agentguard token
//! verifies and is bound to them, and, in front of an MCP server
//! (`--resource`), behaves as the MCP authorization spec asks of a
//! protected resource.
//!
//! Per request: the PRM document if that is what was asked for
//! (`resource`), else the token is checked in two steps (`agentguard-verify`'s
//! `check_head` before the body, `finish` with it), the request is rewritten
//! for the tool (`forward`) and sent with a time limit on the tool's answer,
//! and the decision is logged and, beside a daemon, reported (`report`).

mod forward;
mod report;
mod resource;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use agentguard_verify::{HeadChecked, RequestBinding, Verifier, VerifyError, bearer_token};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, Response, StatusCode, Uri,
    body::{Body as _, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{client::legacy::Client, rt::TokioExecutor, rt::TokioIo};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{
    admin::report::VerifyReport,
    token::serve::{Body, full, server},
};

pub use report::Reporter;
pub use resource::ResourceFront;

/// How long verify-proxy waits, on clients and on the tool. Its clients are
/// not authenticated until their token is checked, so none may hold a
/// connection or a buffer open for as long as it likes; and a tool that
/// never answers must not hold the client for ever either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTimeouts {
    /// For the whole TLS handshake.
    pub tls_handshake: Duration,
    /// For a request head (on HTTP/1.1 also the idle time between
    /// requests); HTTP/2 connections are pinged at this interval and closed
    /// if the client does not answer.
    pub header_read: Duration,
    /// For the whole request body, which must be read to check its hash.
    pub body_read: Duration,
    /// For the tool's response head (`504` after it). The body then flows
    /// as the tool sends it: a stream (SSE) is not cut off.
    pub upstream_response: Duration,
}

/// The tool's response head must come within this unless configured.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ProxyTimeouts {
    /// The agents' proxy's values for the client side (`proxy/listener.rs`,
    /// `proxy/http.rs`).
    fn default() -> Self {
        Self {
            tls_handshake: crate::token::serve::TLS_HANDSHAKE_TIMEOUT,
            header_read: crate::token::serve::HEADER_READ_TIMEOUT,
            body_read: Duration::from_secs(30),
            upstream_response: DEFAULT_UPSTREAM_TIMEOUT,
        }
    }
}

/// How `agentguard verify-proxy` runs.
pub struct VerifyProxy {
    pub verifier: Arc<Verifier>,
    /// The tool server: `http(s)://host:port`, optionally with a path prefix.
    pub upstream: Uri,
    /// The scheme clients used to reach this proxy, for `htu` when no origin
    /// is configured: `https` when it terminates TLS itself or sits behind
    /// a TLS terminator.
    pub public_scheme: String,
    /// Larger request bodies are refused (413): the body must be read whole
    /// to check its hash.
    pub max_body: usize,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// CA certificates trusted for the upstream beside the system roots.
    pub upstream_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Records each decision in a daemon's audit record, if given.
    pub reporter: Option<Arc<Reporter>>,
    pub timeouts: ProxyTimeouts,
    /// The MCP resource-server front (`--resource`).
    pub resource: Option<ResourceFront>,
    /// The tool's own `Authorization` value, sent instead of the agent's
    /// token (which is never sent on).
    pub upstream_authorization: Option<HeaderValue>,
}

impl VerifyProxy {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let client: Client<_, Body> = Client::builder(TokioExecutor::new())
            .build(forward::https_connector(&self.upstream_ca));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (this, client) = (self.clone(), client.clone());
            tokio::spawn(async move {
                let (tls, timeouts) = (this.tls.clone(), this.timeouts);
                let service = service_fn(move |req| {
                    let (this, client) = (this.clone(), client.clone());
                    async move { Ok::<_, Infallible>(this.handle(req, peer, &client).await) }
                });
                let builder = server(timeouts.header_read);
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                            Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => warn!(%peer, "TLS handshake timed out"),
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

    /// Answers one request, then reports the decision to the daemon's audit
    /// record if there is one.
    async fn handle<C>(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        client: &Client<C, Body>,
    ) -> Response<Body>
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        // The metadata is public: a client without a token reads it to
        // learn where tokens come from.
        if let Some(front) = &self.resource
            && let Some(r) = front.answer(req.method(), req.uri().path())
        {
            return r;
        }
        let Some(reporter) = &self.reporter else {
            return self.decide(req, peer, client).await.0;
        };
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let host = authority(&req);
        let (response, outcome) = self.decide(req, peer, client).await;
        reporter.report(VerifyReport {
            audience: self.verifier.config().audience.clone(),
            allowed: outcome.verified.is_some(),
            status: response.status().as_u16(),
            method,
            host,
            path,
            reason: outcome.reason,
            sub: outcome.verified.as_ref().map(|(sub, _)| sub.clone()),
            jti: outcome.verified.map(|(_, jti)| jti),
            peer: peer.ip().to_string(),
        });
        response
    }

    /// The answer to a refused token: 401/403 with a challenge (pointing to
    /// the resource metadata when there is some), or 503 without one when
    /// the keys or the replay store cannot be had.
    fn refuse(&self, e: VerifyError, peer: SocketAddr, target: &str) -> (Response<Body>, Outcome) {
        if !e.is_about_the_token() {
            // Not the client's fault, and the JWKS's location or the replay
            // store's address are no business of an unauthenticated client:
            // the detail goes to the log and the audit record only.
            warn!(%peer, target, decision = "refuse", reason = %e, "cannot verify tokens");
            let what = match e {
                VerifyError::ReplayStore(_) => {
                    "the replay cache (which makes each token single-use)"
                }
                _ => "the keys to verify the token with",
            };
            let r = full(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{what} cannot be reached; the request was refused; try again later\n"),
            );
            return (r, Outcome::refused(e.to_string()));
        }
        info!(%peer, target, decision = "refuse", reason = %e, "token refused");
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let body = serde_json::json!({ "error": e.to_string() }).to_string();
        let mut r = full(status, "application/json", body);
        let metadata = self.resource.as_ref().map(ResourceFront::metadata_url);
        let scope = self.verifier.config().scope.as_deref();
        if let Some(challenge) = e.challenge(scope, metadata)
            && let Ok(v) = HeaderValue::from_str(&challenge.to_string())
        {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        (r, Outcome::refused(e.to_string()))
    }

    async fn decide<C>(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        client: &Client<C, Body>,
    ) -> (Response<Body>, Outcome)
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        let method = req.method().clone();
        let target = req.uri().path_and_query().map(|p| p.to_string());
        let target = target.unwrap_or_else(|| "/".into());
        let token = match bearer_token(req.headers()) {
            Ok(Some(t)) => t.to_owned(),
            Ok(None) => return self.refuse(VerifyError::MissingToken, peer, &target),
            Err(reason) => return self.refuse(VerifyError::InvalidToken(reason), peer, &target),
        };
        let authority = authority(&req);
        let (mut parts, body) = req.into_parts();
        let mut binding = RequestBinding {
            method: parts.method.to_string(),
            scheme: self.public_scheme.clone(),
            authority,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            // Known once the body is read.
            body_hash: String::new(),
        };
        // All that can be checked without the body is checked before it is
        // read: a client without a valid, unused token bound to this method
        // and URI is refused without making the proxy wait for or buffer a
        // body.
        let checked: HeadChecked = match self.verifier.check_head(&token, &binding).await {
            Ok(c) => c,
            Err(e) => return self.refuse(e, peer, &target),
        };
        let body = match self.read_body(&parts, body).await {
            Ok(b) => b,
            Err(refused) => return refused,
        };
        binding.body_hash = agentguard_verify::body_hash(&body);
        let claims = match self.verifier.finish(checked, &binding).await {
            Ok(c) => c,
            Err(e) => return self.refuse(e, peer, &target),
        };
        info!(%peer, %method, target, decision = "allow", sub = %claims.sub, jti = %claims.jti, "token verified");
        let outcome = Outcome {
            verified: Some((claims.sub.clone(), claims.jti.clone())),
            reason: String::new(),
        };
        if let Err(e) = forward::upstream_head(
            &mut parts,
            &self.upstream,
            &target,
            self.upstream_authorization.as_ref(),
        ) {
            return (full(StatusCode::BAD_GATEWAY, "text/plain", e), outcome);
        }
        let req = Request::from_parts(parts, Full::new(body).map_err(|n| match n {}).boxed());
        let limit = self.timeouts.upstream_response;
        let response = match tokio::time::timeout(limit, client.request(req)).await {
            Ok(Ok(resp)) => resp.map(|b| b.boxed()),
            Ok(Err(e)) => {
                warn!(error = %e, "upstream failed");
                full(StatusCode::BAD_GATEWAY, "text/plain", "upstream failed\n")
            }
            Err(_) => {
                warn!(%peer, target, limit = ?limit, "the tool did not answer in time");
                full(
                    StatusCode::GATEWAY_TIMEOUT,
                    "text/plain",
                    format!("the tool did not answer within {}s\n", limit.as_secs_f32()),
                )
            }
        };
        (response, outcome)
    }

    /// The whole body, at most `max_body` bytes, within the body timeout.
    async fn read_body(
        &self,
        parts: &hyper::http::request::Parts,
        body: Incoming,
    ) -> Result<hyper::body::Bytes, (Response<Body>, Outcome)> {
        let max = self.max_body as u64;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if body.size_hint().upper().is_some_and(|n| n > max) || declared.is_some_and(|n| n > max) {
            return Err((too_large(self.max_body), Outcome::too_large()));
        }
        let read = Limited::new(body, self.max_body).collect();
        match tokio::time::timeout(self.timeouts.body_read, read).await {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                Err((too_large(self.max_body), Outcome::too_large()))
            }
            Ok(Err(e)) => {
                let reason = format!("failed to read the request body: {e}");
                let r = full(StatusCode::BAD_REQUEST, "text/plain", format!("{reason}\n"));
                Err((r, Outcome::refused(reason)))
            }
            // A token is for one call, quickly made; and a client that
            // trickles its body must not hold a buffer for ever.
            Err(_) => {
                let reason = format!(
                    "request body not received within {}s",
                    self.timeouts.body_read.as_secs_f32()
                );
                let body = serde_json::json!({ "error": reason }).to_string();
                let r = full(StatusCode::REQUEST_TIMEOUT, "application/json", body);
                Err((r, Outcome::refused(reason)))
            }
        }
    }
}

/// The request's authority: from the URI (HTTP/2, absolute-form) or `Host`.
fn authority<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// What [`VerifyProxy::decide`] established about a request.
struct Outcome {
    /// (`sub`, `jti`) of a token that verified and bound.
    verified: Option<(String, String)>,
    /// Why it was refused.
    reason: String,
}

impl Outcome {
    fn refused(reason: String) -> Self {
        Self {
            verified: None,
            reason,
        }
    }

    fn too_large() -> Self {
        Self::refused("request body too large to check its hash".into())
    }
}

fn too_large(max: usize) -> Response<Body> {
    let body = serde_json::json!({
        "error": format!("request body larger than {max} bytes; it must be read whole to check the token's request hash")
    });
    full(
        StatusCode::PAYLOAD_TOO_LARGE,
        "application/json",
        body.to_string(),
    )
}

#[cfg(test)]
mod tests;
