//! Serving one intercepted connection as HTTP (hyper; HTTP/1.1 or HTTP/2 by
//! ALPN or preface) and deciding each request against the agent's policy:
//! default deny, credentials injected only where a tool binds them, bodies
//! streamed both ways. Each request is planned first (`plan`: pure, from
//! its head and the policy), then the plan is carried out here.

mod checks;
mod forward;
mod hop;
mod idle;
mod jwt;
pub(crate) mod plan;
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
    limits::Held,
    refusal::Refusal,
    respond,
    upstream::{ProxyBody, boxed, deadline},
};
use crate::{
    audit::{Decision, Event, Kind},
    credentials::{find_placeholders, inject},
    identity::Identity,
    live::LiveState,
    policy::{Injection, SecretSource},
};
use plan::{Action, Forward};
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

/// The agent's place for this connection (`limits::Held`), kept by every
/// request so that a WebSocket tunnel, which outlives the HTTP connection,
/// keeps it until the tunnel closes.
#[derive(Clone)]
struct ConnPlace {
    _held: Arc<Held>,
}

/// Serves HTTP on `io` until the agent closes it, or leaves it with no
/// request in flight for the client timeout (`idle`).
pub async fn serve<IO>(io: IO, meta: ConnMeta, ctx: Arc<ProxyContext>, held: Arc<Held>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let meta = Arc::new(meta);
    let span = tracing::Span::current();
    let client_timeout = ctx.limits.options().client_timeout;
    let activity = idle::Activity::default();
    let service = service_fn({
        let activity = activity.clone();
        move |mut req: Request<Incoming>| {
            let (meta, ctx) = (meta.clone(), ctx.clone());
            let busy = activity.begin();
            req.extensions_mut().insert(ConnPlace {
                _held: held.clone(),
            });
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
                // In flight until the response body ends: the agent's cap.
                let slot = ctx.limits.request(&meta.identity.agent, &state.policy);
                let resp = match slot {
                    Ok(slot) => {
                        let resp = handle(req, &meta, &ctx, &state, &mut outcome).await;
                        outcome
                            .attach(resp)
                            .map(|b| idle::Holding::new(b, (busy, Some(slot))))
                    }
                    Err(refusal) => {
                        let resp = outcome.refuse(refusal);
                        outcome
                            .attach(resp)
                            .map(|b| idle::Holding::new(b, (busy, None)))
                    }
                };
                Ok::<_, Infallible>(resp)
            }
            .instrument(span.clone())
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper applies no header-read timeout: a client that
    // never finishes its request head would hold the connection for ever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(client_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(client_timeout));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = match idle::until_idle(conn.as_mut(), &activity, client_timeout).await {
        Some(ended) => Some(ended),
        None => {
            // A request that raced the shutdown gets the time to finish.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(client_timeout, conn).await.ok()
        }
    };
    if let Some(Err(e)) = ended {
        debug!(error = %e, "http connection ended with error");
    }
}

/// Plans one request and carries the plan out.
async fn handle(
    mut req: Request<Incoming>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    state: &LiveState,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    // The intent is recorded (Outcome::new read it) and goes no further.
    req.headers_mut().remove(INTENT_HEADER);
    let plan = plan::plan(&req, meta, &state.policy, &*ctx.resolvers);
    out.note(plan.noted);
    let forwarded = match plan.action {
        Action::Refuse(refusal) => Err(refusal),
        Action::Forward(plan) => {
            // Nothing goes upstream while the record cannot be kept: the
            // agent waits until the audit store commits again.
            ctx.audit.committing().await;
            forward(req, plan, meta, ctx, state, out).await
        }
    };
    forwarded.unwrap_or_else(|refusal| out.refuse(refusal))
}

/// Carries out a plan to forward: the credential fetched and injected (or a
/// token minted for the request), the request sent upstream, the response
/// readied for the agent. What can still go wrong is a [`Refusal`].
async fn forward(
    mut req: Request<Incoming>,
    plan: Forward<'_>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    state: &LiveState,
    out: &mut Outcome,
) -> Result<Response<ProxyBody>, Refusal> {
    let agent = &meta.identity.agent;
    let Forward {
        authority,
        host,
        path,
        upgrade,
        credential,
        timeouts,
    } = plan;
    let timeouts = ctx.limits.upstream(timeouts.as_ref());
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let place = req.extensions_mut().remove::<ConnPlace>();
    let (mut parts, body) = req.into_parts();

    let mut jwt = None;
    if let Some(credential) = credential {
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
                    source: Box::new(e),
                };
                let mut failure = meta
                    .identity
                    .stamp(Event::new(Kind::CredentialFailure))
                    .with_decision(Decision::Refuse, refusal.to_string());
                failure.credential_id = Some(credential.id.clone());
                failure.tool = out.event.tool.clone();
                failure.host = Some(host.clone());
                failure.policy_version = out.event.policy_version.clone();
                ctx.audit.record(failure).await;
                return Err(refusal);
            }
        };
        inject(&credential.inject, &secret, &mut parts).map_err(|e| {
            Refusal::CredentialInjection {
                id: credential.id.clone(),
                source: Box::new(e),
            }
        })?;
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
        return Err(Refusal::Placeholder { id, location });
    }
    forward::prepare(&mut parts, &authority, meta.scheme(), &path, upgrade)
        .map_err(Refusal::BadRequest)?;
    let mut minted = None;
    let body = match jwt {
        None => boxed(body),
        Some(spec) => {
            let bound = jwt::bind(&mut parts, body, &spec, meta, ctx).await?;
            out.event.token_jti = Some(bound.jti.clone());
            out.event.on_behalf_of = bound.on_behalf_of.clone();
            minted = Some(bound.token);
            http_body_util::Full::new(bound.body)
                .map_err(|n| match n {})
                .boxed()
        }
    };
    let upstream_req = Request::from_parts(parts, out.count_request_body(body));
    let client = ctx.upstreams.client(agent, &host, meta.dst, upgrade);
    let sent = Instant::now();
    let client_timeout = ctx.limits.options().client_timeout;
    let mut resp = deadline::send(&client, upstream_req, timeouts, client_timeout)
        .await
        .map_err(|e| {
            let refusal = e.into_refusal();
            warn!(reason = %refusal, "upstream failed");
            refusal
        })?;
    ctx.metrics.observe_upstream_latency(sent.elapsed());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(agent_side) = agent_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            // The tunnel keeps the connection's place until it closes.
            let tunnel = forward::tunnel(agent_side, upstream_side);
            tokio::spawn(
                async move {
                    tunnel.await;
                    drop(place)
                }
                .in_current_span(),
            );
        }
        return Ok(resp.map(boxed));
    }
    // Once the head is in, the body flows as long as it makes progress.
    let resp = resp.map(|b| deadline::idle_limited(b, timeouts.body_idle));
    let mut secrets = state.credentials.known_secrets(agent);
    // The token went upstream only: an echo of it is cut like any secret.
    secrets.extend(minted);
    let mut resp = forward::finish(resp, &secrets).await;
    if out.decision() == Some(Decision::WouldDeny) {
        respond::mark_would_deny(&mut resp);
    }
    Ok(resp)
}
