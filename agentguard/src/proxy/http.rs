//! Serving one intercepted connection as HTTP (hyper; HTTP/1.1 or HTTP/2 by
//! ALPN or preface) and deciding each request against the agent's policy:
//! default deny, credentials injected only where a tool binds them, bodies
//! streamed both ways.

mod checks;
mod forward;
mod hop;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::BodyExt as _;
use hyper::{
    Request, Response, StatusCode, body::Incoming, http::uri::Scheme, service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::{Instrument as _, debug, info, warn};

use super::{
    ProxyContext,
    respond::{self, DECISION_DENY, DECISION_REFUSE, DECISION_WOULD_DENY},
    upstream::{ProxyBody, describe_failure},
};
use crate::{
    connlog::{RequestDecision, RequestEntry},
    credentials::{find_placeholders, inject},
    identity::Identity,
    live::LiveState,
    policy::{Mode, RequestFacts, Verdict, normalize_path},
};

/// What the proxy knows about an intercepted connection before its first
/// request.
pub struct ConnMeta {
    pub identity: Identity,
    pub dst: SocketAddr,
    /// The SNI of the agent's ClientHello; `None` for plain HTTP.
    pub sni: Option<String>,
}

impl ConnMeta {
    fn scheme(&self) -> Scheme {
        if self.sni.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

/// Serves HTTP on `io` until the agent closes it.
pub async fn serve<IO>(io: IO, meta: ConnMeta, ctx: Arc<ProxyContext>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let meta = Arc::new(meta);
    let span = tracing::Span::current();
    let service = service_fn(move |req| {
        let (meta, ctx) = (meta.clone(), ctx.clone());
        async move {
            // Each request reads the policy in force when it arrives: a
            // reload applies to open connections from their next request.
            let state = ctx.live.load();
            let mut outcome = Outcome::new(&meta, &req, &state);
            let resp = handle(req, &meta, &ctx, &state, &mut outcome).await;
            outcome.record(&ctx, resp.status().as_u16());
            Ok::<_, Infallible>(resp)
        }
        .instrument(span.clone())
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        debug!(error = %e, "http connection ended with error");
    }
}

/// The decision on one request, as it will be logged.
struct Outcome {
    agent: String,
    pid: u32,
    method: String,
    host: String,
    path: String,
    tool: Option<String>,
    decision: RequestDecision,
    reason: String,
    credential: Option<String>,
    policy_version: String,
    start: Instant,
}

impl Outcome {
    fn new(meta: &ConnMeta, req: &Request<Incoming>, state: &LiveState) -> Self {
        Self {
            agent: meta.identity.agent.to_string(),
            pid: meta.identity.pid,
            method: req.method().to_string(),
            host: String::new(),
            path: String::new(),
            tool: None,
            decision: RequestDecision::Refuse,
            reason: String::new(),
            credential: None,
            policy_version: state.policy.version.clone(),
            start: Instant::now(),
        }
    }

    fn record(self, ctx: &ProxyContext, status: u16) {
        info!(
            method = %self.method,
            host = %self.host,
            path = %self.path,
            tool = self.tool.as_deref(),
            decision = ?self.decision,
            credential = self.credential.as_deref(),
            status,
            dur = ?self.start.elapsed(),
            reason = %self.reason,
            "request"
        );
        ctx.requests.push_with(|id, time| RequestEntry {
            id,
            time,
            agent: self.agent,
            pid: self.pid,
            method: self.method,
            host: self.host,
            path: self.path,
            tool: self.tool,
            decision: self.decision,
            reason: self.reason,
            credential: self.credential,
            status,
            policy_version: self.policy_version,
        });
    }

    /// agentguard answers the agent itself.
    fn refuse(&mut self, status: StatusCode, reason: String) -> Response<ProxyBody> {
        let resp = respond::error(status, DECISION_REFUSE, &self.agent, None, &reason);
        self.decision = RequestDecision::Refuse;
        self.reason = reason;
        resp
    }
}

async fn handle(
    mut req: Request<Incoming>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    state: &LiveState,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    let agent = &meta.identity.agent;
    let authority = match checks::request_authority(&req) {
        Ok(a) => a,
        Err(reason) => return out.refuse(StatusCode::BAD_REQUEST, reason),
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    out.host = host.clone();
    if let Err(reason) = checks::check_consistency(&host, authority.port_u16(), meta) {
        return out.refuse(StatusCode::MISDIRECTED_REQUEST, reason);
    }
    let path = match normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            return out.refuse(
                StatusCode::BAD_REQUEST,
                format!("request path refused: {e}"),
            );
        }
    };
    out.path = path.clone();
    let Some(policy) = state.policy.agent(agent) else {
        return out.refuse(
            StatusCode::FORBIDDEN,
            format!("agent {agent:?} is no longer in the policy"),
        );
    };

    let method = req.method().clone();
    let verdict = policy.evaluate(RequestFacts {
        method: &method,
        host: &host,
        port: meta.dst.port(),
        path: &path,
    });
    let credential = match verdict {
        Verdict::Allow { tool, credential } => {
            out.tool = Some(tool.name.clone());
            out.decision = RequestDecision::Allow;
            out.reason = format!("allowed by tool {:?}", tool.name);
            credential
        }
        Verdict::Deny { reason } if policy.mode == Mode::Enforce => {
            out.decision = RequestDecision::Deny;
            out.reason = reason.clone();
            return respond::error(StatusCode::FORBIDDEN, DECISION_DENY, agent, None, &reason);
        }
        Verdict::Deny { reason } => {
            // Audit mode: recorded as a denial, forwarded without any
            // credential.
            out.decision = RequestDecision::WouldDeny;
            out.reason = reason;
            None
        }
    };

    let upgrade = hop::wants_upgrade(&req);
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    if let Some(credential) = credential {
        // A secret never crosses an unauthenticated connection: only TLS
        // upstreams, whose certificate is verified for the policy's host
        // before a byte of the request is sent, receive it.
        if meta.sni.is_none() {
            return out.refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "tool {:?} binds credential {:?}, which is only sent over TLS",
                    out.tool.as_deref().unwrap_or_default(),
                    credential.id
                ),
            );
        }
        let secret = match state.credentials.secret(agent, &credential.id).await {
            Ok(s) => s,
            Err(e) => {
                warn!(credential = %credential.id, error = %e, "credential unavailable");
                return out.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("credential {:?} is unavailable: {e}", credential.id),
                );
            }
        };
        if let Err(e) = inject(&credential.inject, &secret, &mut parts) {
            return out.refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not inject credential {:?}: {e}", credential.id),
            );
        }
        out.credential = Some(credential.id.clone());
    }
    // A placeholder left anywhere after injection is one the policy does not
    // bind here: it must not leave the machine.
    if let Some((location, id)) = find_placeholders(&parts).into_iter().next() {
        return out.refuse(
            StatusCode::FORBIDDEN,
            format!("placeholder for credential {id:?} in {location} is not bound to this request by the policy"),
        );
    }
    if let Err(reason) = forward::prepare(&mut parts, &authority, meta.scheme(), &path, upgrade) {
        return out.refuse(StatusCode::BAD_REQUEST, reason);
    }
    let upstream_req = Request::from_parts(parts, body.boxed());
    let client = ctx.upstreams.client(agent, &host, meta.dst, upgrade);
    let mut resp = match client.request(upstream_req).await {
        Ok(resp) => resp,
        Err(e) => {
            let (certificate, reason) = describe_failure(&e);
            warn!(certificate, reason, "upstream failed");
            return out.refuse(StatusCode::BAD_GATEWAY, reason);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(agent_side) = agent_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(forward::tunnel(agent_side, upstream_side).in_current_span());
        }
        return resp.map(|b| b.boxed());
    }
    let secrets = state.credentials.known_secrets(agent);
    let mut resp = forward::finish(resp, &secrets).await;
    if out.decision == RequestDecision::WouldDeny {
        resp.headers_mut().insert(
            respond::DECISION_HEADER,
            hyper::header::HeaderValue::from_static(DECISION_WOULD_DENY),
        );
    }
    resp
}
