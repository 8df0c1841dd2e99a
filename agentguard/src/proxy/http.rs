//! Serving one intercepted connection as HTTP (hyper; HTTP/1.1 or HTTP/2 by
//! ALPN or preface) and deciding each request against the agent's policy:
//! default deny, credentials injected only where a tool binds them, bodies
//! streamed both ways. Each request is planned first (`plan`: from its head,
//! the caller and the policy), then the plan is carried out here; a request
//! whose decision needs its body (a JSON-RPC call, a condition on the body)
//! is read, bounded, and decided by `call`.

mod agent_body;
mod approval;
mod aws;
mod body;
mod call;
mod checks;
mod forward;
mod hop;
mod idle;
mod jwt;
mod overrides;
pub(crate) mod plan;
mod record;
mod redaction;

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
    tcp_state::AgentSocket,
    upstream::{ProxyBody, boxed, deadline},
};
use crate::{
    audit::{Decision, Event, Kind},
    credentials::{Placement, Requester, find_placeholders, place_secret},
    identity::Identity,
    live::LiveState,
    policy::{AgentIdentity, Injection, SecretSource},
};
use aws::AgentBody;
use jwt::JwtSpec;
use plan::{Action, Caller, Forward};
use record::{INTENT_HEADER, Outcome, redacted_query};

/// How often a waiting HTTP/1 request's connection is asked whether its
/// agent has gone.
const AGENT_LEFT_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// What the proxy knows about an intercepted connection before its first
/// request.
pub struct ConnMeta {
    pub identity: Identity,
    /// The agent's end of the connection.
    pub peer: SocketAddr,
    pub dst: SocketAddr,
    /// The SNI of the agent's ClientHello; `None` for plain HTTP.
    pub sni: Option<String>,
    /// The network namespace upstream connections leave from.
    pub dial: crate::netns::Dial,
    /// The agent's place for this connection (`limits::Held`), kept by
    /// every request's future (they hold the meta) and by a WebSocket
    /// tunnel, which outlives the HTTP connection, until it closes.
    pub place: Arc<Held>,
    /// The agent's socket, asked whether an HTTP/1 agent closed its side
    /// while a request of it waited (for approval, for the audit store);
    /// `None` where there is none (tests).
    pub agent_socket: Option<AgentSocket>,
    /// Whom `exec --on-behalf-of` said the connecting process acts for,
    /// looked up once, when the connection was accepted: every request of
    /// the connection is that person's, however long it waits (a pid
    /// looked up again later could be another process's by then).
    pub on_behalf_of: Option<String>,
}

impl ConnMeta {
    /// The agent's socket where it may be asked whether the agent left:
    /// HTTP/1 only. An HTTP/2 connection is shared by many requests, and
    /// its agent cancels a request by resetting its stream, which ends
    /// the request's future (and its streams can outlive the socket's
    /// descriptor, `AgentSocket`).
    fn askable_socket(&self, version: hyper::Version) -> Option<AgentSocket> {
        self.agent_socket
            .filter(|_| version < hyper::Version::HTTP_2)
    }

    /// Whether an HTTP/1 agent has closed its side of the connection
    /// (hyper does not say: half-closes are kept, see [`serve`]). Always
    /// `false` for HTTP/2.
    fn agent_left(&self, version: hyper::Version) -> bool {
        self.askable_socket(version)
            .is_some_and(AgentSocket::agent_finished)
    }

    /// Returns once [`ConnMeta::agent_left`], asked every
    /// [`AGENT_LEFT_CHECK`]; never for HTTP/2.
    async fn until_agent_leaves(&self, version: hyper::Version) {
        let Some(socket) = self.askable_socket(version) else {
            return std::future::pending().await;
        };
        let mut every = tokio::time::interval(AGENT_LEFT_CHECK);
        loop {
            every.tick().await;
            if socket.agent_finished() {
                return;
            }
        }
    }

    fn scheme(&self) -> Scheme {
        if self.sni.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

/// Serves HTTP on `io` until the agent closes it, or leaves it with no
/// request in flight for the client timeout (`idle`).
pub async fn serve<IO>(io: IO, meta: ConnMeta, ctx: Arc<ProxyContext>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Who is calling is fixed for the connection: its kernel identity, and
    // whom it acts for (`ConnMeta::on_behalf_of`).
    let caller = Arc::new(AgentIdentity::from(&meta.identity));
    let template = Arc::new(Outcome::template(&meta));
    let meta = Arc::new(meta);
    let span = tracing::Span::current();
    let client_timeout = ctx.limits.options().client_timeout;
    let activity = idle::Activity::default();
    let service = service_fn({
        let activity = activity.clone();
        move |req: Request<Incoming>| {
            let (meta, ctx, caller, template) =
                (meta.clone(), ctx.clone(), caller.clone(), template.clone());
            let busy = activity.begin();
            // HTTP/2: hyper runs each stream's future as a task of its own,
            // outside the connection's span, so the future carries it.
            // HTTP/1: hyper polls the request's future within the
            // connection's, whose span is entered already; a second enter
            // and exit per poll, and a clone and close of the span per
            // request, would only cost (measured: ~1,000 of ~152,000
            // instructions per keep-alive request, about the count's
            // run-to-run spread).
            let request_span = if req.version() >= hyper::Version::HTTP_2 {
                span.clone()
            } else {
                tracing::Span::none()
            };
            // Boxed: the request's future holds every await of the handler
            // and runs to kilobytes; hyper moves the future it is given
            // (into its dispatcher, between its states), and a move of the
            // unboxed one was a memcpy of all of it, twice per request
            // (measured: 6% of the full path's instructions). Boxed, hyper
            // moves a pointer and the future is allocated once. The box is
            // allocated before the future is made and the future written
            // into it (`Box::write`), and the span wraps the box, not the
            // future: `Box::pin(fut.instrument(span))` built the future on
            // the stack and copied all of it four times on its way into
            // the box (measured: ~22k instructions a request).
            Box::into_pin(Box::write(Box::new_uninit(), async move {
                // Each request reads the policy in force when it arrives: a
                // reload applies to open connections from their next request.
                let state = ctx.live.load();
                let mut outcome = Outcome::new(
                    &template,
                    &req,
                    &state.policy.version,
                    ctx.audit.clone(),
                    ctx.requests.clone(),
                );
                // In flight until the response body ends: the agent's cap.
                let slot = ctx.limits.request(&meta.identity.agent, &state.policy);
                let resp = match slot {
                    Ok(slot) => {
                        let resp = handle(req, &meta, &caller, &ctx, &state, &mut outcome).await;
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
            }))
            .instrument(request_span)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper applies no header-read timeout: a client that
    // never finishes its request head would hold the connection for ever.
    // Half-close kept: an agent that sends its whole request and then shuts
    // its side (or closes) is served as the upstream would serve it, unless
    // the request has to wait (for a person, or for the audit store), and
    // its agent is gone by then (`ConnMeta::agent_left`). Without it hyper
    // takes the end of the agent's stream for an abandoned request and
    // drops it mid-flight, forwarded or not depending on timing.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(client_timeout)
        .half_close(true);
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
    identity: &AgentIdentity,
    ctx: &ProxyContext,
    state: &Arc<LiveState>,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    // The intent is recorded (Outcome::new read it) and goes no further.
    req.headers_mut().remove(INTENT_HEADER);
    let on_behalf_of = meta.on_behalf_of.as_deref();
    if out.event().on_behalf_of.is_none() {
        out.event_mut().on_behalf_of = on_behalf_of.map(str::to_owned);
    }
    let intent = out.event().intent.clone();
    let caller = Caller {
        identity,
        on_behalf_of,
        intent: intent.as_deref(),
        now: std::time::SystemTime::now(),
        limiter: &ctx.limiter,
    };
    // What an AWS SDK signed for (and a signed body, which holds a Query
    // protocol request's action), read before the decision.
    if let Some(render) = aws::render(&req) {
        out.render = render;
    }
    let mut req = match aws::read(req, ctx.limits.options().client_timeout).await {
        Ok(req) => req,
        Err(refusal) => return out.refuse(refusal),
    };
    let plan = plan::plan(&req, meta, &state.policy, &*ctx.resolvers, &caller);
    out.note(plan.noted);
    // A revocation closes the agent's connections; one that lands while
    // this request was read is refused here. (A request held for approval
    // is refused by the revocation itself, see `approval`.)
    let revoked = ctx.revocations.revoked(&meta.identity.agent);
    let forwarded = match (plan.action, revoked) {
        (_, Some(revoked)) => Err(Refusal::Revoked {
            agent: meta.identity.agent.to_string(),
            reason: revoked.reason,
        }),
        (Action::Refuse(refusal), None) => Err(refusal),
        (Action::Forward(plan), None) if plan.resumed_lists => {
            let (host, path) = (plan.host.clone(), plan.path.clone());
            call::prepare_resumed(&mut req);
            match forward(req, plan, meta, ctx, state, out).await {
                Ok(resp) => call::filter_resumed(resp, state, meta, &host, &path).await,
                Err(refusal) => Err(refusal),
            }
        }
        (Action::Forward(plan), None) => forward(req, plan, meta, ctx, state, out).await,
        (Action::Decide(pending), None) => {
            let req = req.map(AgentBody::into_proxy_body);
            call::decide(req, pending, &caller, meta, ctx, state, out).await
        }
    };
    forwarded.unwrap_or_else(|refusal| out.refuse(refusal))
}

/// Carries out a plan to forward: the credential fetched and injected (or a
/// token minted for the request), the request sent upstream, the response
/// readied for the agent. What can still go wrong is a [`Refusal`].
async fn forward(
    req: Request<AgentBody>,
    plan: Forward<'_>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    state: &LiveState,
    out: &mut Outcome,
) -> Result<Response<ProxyBody>, Refusal> {
    // Nothing goes upstream before a person approves it, whichever way
    // the request was decided (on its head or on its body).
    let mut req = match plan.approval {
        Some(policy) => approval::hold(req, &plan, policy, meta, ctx, out).await?,
        None => req,
    };
    // Nothing goes upstream (nor to a credential's token endpoint) while
    // the record cannot be kept: the agent waits until the audit store
    // commits again. Every forwarding path, head- or body-decided, passes
    // here.
    if !ctx.audit.is_committing() {
        let waiting = Instant::now();
        ctx.audit.committing().await;
        // Retried meanwhile, or given up: a request that waited long (a
        // failing store, not a commit that ran a little long) goes only if
        // its agent still waits for the answer. The agent's version: read
        // before `forward::prepare` may rewrite it for the upstream.
        if waiting.elapsed() >= AGENT_LEFT_CHECK && meta.agent_left(req.version()) {
            return Err(Refusal::AgentLeft);
        }
    }
    let agent = &meta.identity.agent;
    let Forward {
        authority,
        host,
        path,
        upgrade,
        credential,
        // Carried out by the caller, on the answer.
        resumed_lists: _,
        allow_overrides,
        aws,
        // Held for above.
        approval: _,
        timeouts,
    } = plan;
    let timeouts = ctx.limits.upstream(timeouts.as_ref());
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The upstream hears the protocol the agent spoke (as reverse proxies
    // do): an HTTP/1.1 request goes over a pooled HTTP/1.1 connection,
    // which costs less per request than an HTTP/2 stream (measured in the
    // commit that made this) and keeps HTTP/1.1's own framing.
    let agent_http1 = parts.version < hyper::Version::HTTP_2;
    let stripped = overrides::strip(&mut parts.headers, allow_overrides);
    if !stripped.is_empty() {
        debug!(headers = ?stripped, "override headers stripped");
    }

    let mut jwt = None;
    if let Some(credential) = credential
        && let SecretSource::Jwt(j) = &credential.source
    {
        // Minted once the upstream's request head is final (below).
        jwt = Some(JwtSpec {
            audience: &j.audience,
            scope: &j.scope,
            ttl: j.ttl,
            inject: &credential.inject,
        });
    }
    let mut aws_creds = None;
    if let (Some(credential), Some(_)) = (credential, &aws) {
        match state
            .credentials
            .aws_credentials(agent, &credential.id)
            .await
        {
            Ok(c) => aws_creds = Some(c),
            Err(e) => {
                warn!(credential = %credential.id, error = %e, "aws credentials unavailable");
                let refusal = Refusal::credential_failed(credential.id.clone(), e);
                record_credential_failure(ctx, meta, out, &credential.id, &host, &refusal).await;
                return Err(refusal);
            }
        }
        // Signed again below, once the upstream's head is final.
        aws::strip_agent_signature(&mut parts);
    }
    if let Some(credential) = credential.filter(|_| jwt.is_none() && aws.is_none()) {
        let on_behalf_of = || meta.on_behalf_of.clone();
        let requester = Requester {
            agent,
            kernel: Some((&meta.identity.cgroup, meta.identity.uid)),
            on_behalf_of: &on_behalf_of,
            issuer: &*ctx.minter,
        };
        let secret = match state
            .credentials
            .secret_for(&requester, &credential.id)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                warn!(credential = %credential.id, error = %e, "credential unavailable");
                let refusal = Refusal::credential_failed(credential.id.clone(), e);
                record_credential_failure(ctx, meta, out, &credential.id, &host, &refusal).await;
                return Err(refusal);
            }
        };
        // In place of the agent's placeholders, wherever its SDK put them;
        // else where the policy says.
        let placement = place_secret(&credential.id, &credential.inject, &secret, &mut parts)
            .map_err(|e| Refusal::CredentialInjection {
                id: credential.id.clone(),
                source: Box::new(e),
            })?;
        // The URI now carries the secret if it went into the query: the
        // record keeps the agent's query with that parameter redacted. (A
        // rewritten placeholder is recorded as the agent sent it: the
        // placeholder, never the secret.)
        if placement == Placement::Injected
            && let Injection::Query { param } = &credential.inject
        {
            let query = out
                .event()
                .path
                .as_deref()
                .and_then(|p| p.split_once('?'))
                .map(|(_, q)| q.to_owned())
                .unwrap_or_default();
            out.event_mut().path = Some(format!("{path}?{}", redacted_query(&query, param)));
        }
    }
    // A minted token replaces whatever the agent sent in its header (the
    // credential's placeholder, for SDKs that insist on a key): gone before
    // the check below, as it will be once the token is put there.
    if let Some(JwtSpec {
        inject: Injection::Header { name, .. },
        ..
    }) = &jwt
    {
        parts.headers.remove(name);
    }
    // A placeholder left anywhere after injection is one the policy does not
    // bind here: it must not leave the machine.
    if let Some((location, id)) = find_placeholders(&parts).into_iter().next() {
        return Err(Refusal::Placeholder { id, location });
    }
    forward::prepare(&mut parts, &authority, meta.scheme(), &path, upgrade)
        .map_err(Refusal::BadRequest)?;
    if let (Some(scope), Some(creds)) = (&aws, &aws_creds) {
        let read = match &body {
            AgentBody::Read(bytes) => Some(bytes),
            AgentBody::Live(_) => None,
        };
        aws::resign(&mut parts, scope, read, creds)?;
    }
    let mut minted = None;
    let mut body_failure = None;
    let body = match (jwt, body) {
        (None, AgentBody::Live(body)) => {
            let (watched, failure) = agent_body::watch(body);
            body_failure = Some(failure);
            watched.boxed()
        }
        (None, AgentBody::Read(bytes)) => http_body_util::Full::new(bytes)
            .map_err(|n| match n {})
            .boxed(),
        (Some(_), AgentBody::Read(_)) => {
            return Err(Refusal::BadRequest(
                "a JWT-bound tool does not take AWS-signed requests".into(),
            ));
        }
        (Some(spec), AgentBody::Live(body)) => {
            let bound = jwt::bind(&mut parts, body, &spec, meta, ctx).await?;
            out.event_mut().token_jti = Some(bound.jti.clone());
            out.event_mut().on_behalf_of = bound.on_behalf_of.clone();
            minted = Some(bound.redact);
            http_body_util::Full::new(bound.body)
                .map_err(|n| match n {})
                .boxed()
        }
    };
    // Every response to an agent that holds secrets is searched for them;
    // the token went upstream only, and an echo of it is cut like any (its
    // signature: see jwt::redacted_part).
    let redactor = state.credentials.redactor(agent, minted.as_slice());
    if redactor.is_some() {
        // Only what can be searched comes back: no compression, whatever
        // the agent asked for.
        redaction::prepare(&mut parts.headers);
    }
    let upstream_req = Request::from_parts(parts, out.count_request_body(body));
    let origin = ctx
        .upstreams
        .origin(agent, &host, meta.dst, upgrade || agent_http1, &meta.dial);
    let sent = Instant::now();
    let client_timeout = ctx.limits.options().client_timeout;
    let mut resp = deadline::send(&origin, upstream_req, timeouts, client_timeout)
        .await
        .map_err(|e| {
            // The agent's malformed body is the agent's fault, whatever
            // the upstream made of it.
            if let Some(reason) = body_failure.as_ref().and_then(|f| f.get()) {
                return Refusal::BodyUnreadable(reason.clone());
            }
            let refusal = e.into_refusal();
            warn!(reason = %refusal, "upstream failed");
            refusal
        })?;
    ctx.metrics.observe_upstream_latency(sent.elapsed());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(r) = &redactor {
            redaction::upgraded(&mut resp, r)?;
        }
        if let Some(agent_side) = agent_upgrade {
            let upstream_side = hyper::upgrade::on(&mut resp);
            // The tunnel outlives the connection's task: it ends with a
            // revocation too, and keeps the connection's place until it
            // closes.
            let (revocations, agent) = (ctx.revocations.clone(), agent.clone());
            let place = meta.place.clone();
            let tunnel = async move {
                revocations
                    .until_revoked(
                        &agent,
                        std::pin::pin!(forward::tunnel(agent_side, upstream_side, redactor)),
                    )
                    .await;
                drop(place)
            };
            tokio::spawn(tunnel.in_current_span());
        }
        return Ok(resp.map(boxed));
    }
    // Once the head is in, the body flows as long as it makes progress.
    let resp = resp.map(|b| deadline::idle_limited(b, timeouts.body_idle));
    let mut resp = forward::finish(resp, redactor).await?;
    if out.decision() == Some(Decision::WouldDeny) {
        respond::mark_would_deny(&mut resp);
    }
    Ok(resp)
}

/// The record of a credential that could not be had (its id, never a
/// value), beside the request's own event.
async fn record_credential_failure(
    ctx: &ProxyContext,
    meta: &ConnMeta,
    out: &Outcome,
    credential: &str,
    host: &str,
    refusal: &Refusal,
) {
    let mut failure = meta
        .identity
        .stamp(Event::new(Kind::CredentialFailure))
        .with_decision(Decision::Refuse, refusal.to_string());
    failure.credential_id = Some(credential.to_owned());
    failure.tool = out.event().tool.clone();
    failure.host = Some(host.into());
    failure.policy_version = out.event().policy_version.clone();
    ctx.audit.record(failure).await;
}
