//! Serving one intercepted connection as HTTP (hyper; HTTP/1.1 or HTTP/2 by
//! ALPN or preface) and deciding each request against the agent's policy:
//! default deny, credentials injected only where a tool binds them, bodies
//! streamed both ways.

mod checks;
mod forward;
mod hop;
mod jwt;
mod record;

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
use tracing::{Instrument as _, debug, warn};

use super::{
    ProxyContext,
    refusal::Refusal,
    respond,
    upstream::{ProxyBody, describe_failure},
};
use crate::{
    audit::{Decision, Event, Kind},
    credentials::{find_placeholders, inject},
    identity::Identity,
    live::LiveState,
    policy::{Injection, Mode, RequestFacts, SecretSource, Verdict, normalize_path},
};
use record::{INTENT_HEADER, Outcome, redacted_query};

/// What the proxy knows about an intercepted connection before its first
/// request.
pub struct ConnMeta {
    pub identity: Identity,
    /// The agent's end of the connection.
    pub peer: SocketAddr,
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

/// How long a client may take to send a request head (and, on HTTP/1.1,
/// may stay idle between requests); HTTP/2 connections are pinged at this
/// interval and closed if the client does not answer.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
            let mut outcome = Outcome::new(
                &meta,
                &req,
                &state.policy.version,
                ctx.audit.clone(),
                ctx.requests.clone(),
            );
            let resp = handle(req, &meta, &ctx, &state, &mut outcome).await;
            Ok::<_, Infallible>(outcome.attach(resp))
        }
        .instrument(span.clone())
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper applies no header-read timeout: a client that
    // never finishes its request head (or idles between requests) would
    // hold the connection for ever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(HEADER_READ_TIMEOUT));
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        debug!(error = %e, "http connection ended with error");
    }
}

async fn handle(
    mut req: Request<Incoming>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    state: &LiveState,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    // The intent is recorded (Outcome::new read it) and goes no further.
    req.headers_mut().remove(INTENT_HEADER);
    let agent = &meta.identity.agent;
    let authority = match checks::request_authority(&req) {
        Ok(a) => a,
        Err(reason) => return out.refuse(Refusal::BadRequest(reason)),
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    out.event.host = Some(host.clone());
    if let Err(reason) = checks::check_consistency(&host, authority.port_u16(), meta) {
        return out.refuse(Refusal::Misdirected(reason));
    }
    // Without TLS nothing proves the destination is the host the request
    // names: an agent could send "Host: allowed.example" to any address
    // (a cloud metadata endpoint, its own server). The destination must be
    // the host itself (an IP literal) or an address agentguard's resolver
    // gave this agent for that name.
    if meta.sni.is_none() {
        let literal = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == meta.dst.ip().to_canonical());
        if !literal && !ctx.resolvers.resolved_to(agent, &host, meta.dst.ip()) {
            return out.refuse(Refusal::Misdirected(format!(
                "plain HTTP to {}: host {host:?} was not resolved to that address by agentguard's resolver",
                meta.dst
            )));
        }
    }
    let path = match normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            out.event.path = Some(req.uri().path().to_owned());
            return out.refuse(Refusal::Path(e));
        }
    };
    out.bare_path = path.clone();
    out.event.path = Some(match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    });
    let Some(policy) = state.policy.agent(agent) else {
        return out.refuse(Refusal::UnknownAgent(agent.to_string()));
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
            out.event.tool = Some(tool.name.clone());
            out.decide(
                Decision::Allow,
                format!("tool:{}", tool.name),
                format!("allowed by tool {:?}", tool.name),
            );
            credential
        }
        Verdict::Deny { reason } if policy.mode == Mode::Enforce => {
            return out.refuse(Refusal::Denied { reason });
        }
        Verdict::Deny { reason } => {
            // Audit mode: recorded as a denial, forwarded without any
            // credential.
            out.decide(Decision::WouldDeny, "default-deny", reason);
            None
        }
    };

    let upgrade = hop::wants_upgrade(&req);
    // After a 101 the bytes are relayed with no further decision, so only
    // the upgrade browsers and SDKs use, WebSocket, is let through.
    if upgrade && !hop::upgrades_to_websocket(&req) {
        return out.refuse(Refusal::UpgradeRefused);
    }
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();

    let mut jwt = None;
    if let Some(credential) = credential {
        // A secret never crosses an unauthenticated connection: only TLS
        // upstreams, whose certificate is verified for the policy's host
        // before a byte of the request is sent, receive it.
        if meta.sni.is_none() {
            return out.refuse(Refusal::CredentialOverPlainHttp {
                tool: out.event.tool.clone().unwrap_or_default(),
                credential: credential.id.clone(),
            });
        }
        out.event.credential_id = Some(credential.id.clone());
        // An upstream's echo of the secret can only be redacted in a body
        // that is not compressed; the agent does not get to choose.
        parts.headers.insert(
            hyper::header::ACCEPT_ENCODING,
            hyper::header::HeaderValue::from_static("identity"),
        );
        if let SecretSource::Jwt(j) = &credential.source {
            // Minted once the upstream's request head is final (below).
            jwt = Some(jwt::JwtSpec {
                audience: &j.audience,
                scope: &j.scope,
                ttl: j.ttl,
                inject: &credential.inject,
            });
        }
    }
    if let Some(credential) = credential.filter(|_| jwt.is_none()) {
        let secret = match state.credentials.secret(agent, &credential.id).await {
            Ok(s) => s,
            Err(e) => {
                warn!(credential = %credential.id, error = %e, "credential unavailable");
                let refusal = Refusal::CredentialUnavailable {
                    id: credential.id.clone(),
                    source: e,
                };
                let reason = refusal.to_string();
                let mut failure = Event::new(Kind::CredentialFailure)
                    .with_identity(&meta.identity)
                    .with_decision(Decision::Refuse, reason.clone());
                failure.credential_id = Some(credential.id.clone());
                failure.tool = out.event.tool.clone();
                failure.host = Some(host.clone());
                failure.policy_version = out.event.policy_version.clone();
                ctx.audit.record(failure).await;
                return out.refuse(refusal);
            }
        };
        if let Err(e) = inject(&credential.inject, &secret, &mut parts) {
            return out.refuse(Refusal::CredentialInjection {
                id: credential.id.clone(),
                source: e,
            });
        }
        // The URI now carries the secret if it went into the query: the
        // record keeps the agent's query with that parameter redacted.
        if let Injection::Query { param } = &credential.inject {
            let query = out
                .event
                .path
                .as_deref()
                .and_then(|p| p.split_once('?'))
                .map(|(_, q)| q.to_owned())
                .unwrap_or_default();
            out.event.path = Some(format!("{path}?{}", redacted_query(&query, param)));
        }
    }
    // A placeholder left anywhere after injection is one the policy does not
    // bind here: it must not leave the machine.
    if let Some((location, id)) = find_placeholders(&parts).into_iter().next() {
        return out.refuse(Refusal::Placeholder { id, location });
    }
    if let Err(reason) = forward::prepare(&mut parts, &authority, meta.scheme(), &path, upgrade) {
        return out.refuse(Refusal::BadRequest(reason));
    }
    let mut minted = None;
    let body = match jwt {
        None => body.boxed(),
        Some(spec) => match jwt::bind(&mut parts, body, &spec, meta, ctx).await {
            Ok(bound) => {
                out.event.token_jti = Some(bound.jti.clone());
                out.event.on_behalf_of = bound.on_behalf_of.clone();
                minted = Some(bound.token);
                http_body_util::Full::new(bound.body)
                    .map_err(|n| match n {})
                    .boxed()
            }
            Err(refusal) => return out.refuse(refusal),
        },
    };
    let upstream_req = Request::from_parts(parts, out.count_request_body(body));
    let client = ctx.upstreams.client(agent, &host, meta.dst, upgrade);
    let sent = Instant::now();
    let mut resp = match client.request(upstream_req).await {
        Ok(resp) => resp,
        Err(e) => {
            let (certificate, reason) = describe_failure(&e);
            warn!(certificate, reason, "upstream failed");
            return out.refuse(if certificate {
                Refusal::UpstreamUnverified(reason)
            } else {
                Refusal::UpstreamFailed(reason)
            });
        }
    };
    ctx.metrics.observe_upstream_latency(sent.elapsed());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(agent_side) = agent_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(forward::tunnel(agent_side, upstream_side).in_current_span());
        }
        return resp.map(|b| b.boxed());
    }
    let mut secrets = state.credentials.known_secrets(agent);
    // The token went upstream only: an echo of it is cut like any secret.
    secrets.extend(minted);
    let mut resp = forward::finish(resp, &secrets).await;
    if out.decision() == Some(Decision::WouldDeny) {
        respond::mark_would_deny(&mut resp);
    }
    resp
}
