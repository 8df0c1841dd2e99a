//! Deciding a request on its body, for the tools that need it: a JSON-RPC
//! body (`protocol = "mcp"` or `"jsonrpc"`) decided message by message, or
//! a JSON body a `when` condition reads.
//!
//! In order: the body is read whole up to the bound (a longer one is
//! refused, never forwarded unchecked); a JSON-RPC body must be JSON, is
//! parsed strictly, and its MCP headers must agree with it; each message is
//! decided, held to one credential per request, and counted against its
//! rate; the denied members are answered here as JSON-RPC errors with their
//! ids and the rest is forwarded ([`crate::mcp::BodyPlan`]). The upstream's
//! answer then goes through [`response`]: list results filtered to what the
//! agent may use, the local errors merged in.
//!
//! The parsed call stays on the [`CallPlan`], for steps that bind to it.

mod response;

use std::{borrow::Cow, sync::Arc};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Bytes,
    header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue},
};
use serde_json::Value;

use super::{
    ConnMeta,
    aws::{AgentBody, AwsFacts},
    body,
    plan::{Caller, Noted, Pending, Target, settle},
    record::Outcome,
};
use crate::{
    audit::{Decision as Recorded, RpcCall},
    live::LiveState,
    mcp::{self, BodyPlan, ListFilter, MemberOutcome, MessageKind, TargetKind},
    policy::{
        AgentPolicy, Allowed, ArgumentsRecord, BodyNeed, Decision, Mode, RequestFacts,
        RequestInput, arguments_digest, one_credential,
    },
    proxy::{
        ProxyContext,
        refusal::Refusal,
        respond::{self, DECISION_DENY, Render},
        upstream::ProxyBody,
    },
};

/// A JSON-RPC body as decided: the parsed messages, each one's decision,
/// and what goes upstream.
pub struct CallPlan<'p> {
    pub body: mcp::Body,
    /// One per message, in order; counted against rates.
    pub decisions: Vec<Decision<'p>>,
    pub plan: BodyPlan,
}

/// Reads the body of `req`, decides it, and forwards what is allowed.
pub(super) async fn decide(
    req: Request<ProxyBody>,
    pending: Pending<'_>,
    caller: &Caller<'_>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    state: &Arc<LiveState>,
    out: &mut Outcome,
) -> Result<Response<ProxyBody>, Refusal> {
    let Pending {
        agent,
        need,
        authority,
        host,
        path,
    } = pending;
    let (max, rpc) = match need {
        BodyNeed::JsonRpc { max } => (max, true),
        BodyNeed::Json { max } => (max, false),
        BodyNeed::None => unreachable!("planned for a body"),
    };
    if rpc {
        // Until the ids are read, an error goes with a null id, which MCP
        // clients still match to the request they sent.
        out.render = Render::JsonRpc {
            ids: Vec::new(),
            batch: false,
        };
    }
    let (mut parts, body) = req.into_parts();
    let limit = ctx.limits.options().client_timeout;
    let bytes = body::read_bounded(body, max, &parts.headers, limit, |max| {
        Refusal::BodyTooLarge { max }
    })
    .await?;
    let json_type = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| mcp::is_json_content_type(v.as_bytes()));
    let target = Target {
        authority,
        host: host.clone(),
        path: path.clone(),
        upgrade: None,
        method_param: super::overrides::has_method_param(parts.uri.query()),
        aws_facts: parts.extensions.get::<AwsFacts>().cloned(),
    };
    let facts = RequestFacts {
        method: &parts.method,
        host: &host,
        port: meta.dst.port(),
        path: &path,
        aws_action: target.aws_facts.as_ref().and_then(|f| f.action.as_deref()),
    };
    let mut noted = noted_so_far(out);

    if !rpc {
        let parsed = match json_type && !bytes.is_empty() {
            true => Some(mcp::parse_strict_json(&bytes).map_err(Refusal::BodyJson)?),
            false => None,
        };
        let decision = agent
            .decider(input(facts, &parts, parsed.as_ref(), caller))
            .decide()
            .admit(caller.limiter, caller.now_ms());
        let forward = settle(decision, agent, meta, &mut noted, target);
        out.note(noted);
        let body = agent_body(&parts, bytes);
        let req = Request::from_parts(parts, body);
        return super::forward(req, forward?, meta, ctx, state, out).await;
    }

    if !json_type {
        return Err(Refusal::NotJson);
    }
    let message_body = mcp::Body::parse(&bytes).map_err(Refusal::JsonRpc)?;
    out.render = Render::JsonRpc {
        ids: message_body
            .messages()
            .iter()
            .filter(|m| m.kind == MessageKind::Request)
            .filter_map(|m| m.id.clone())
            .collect(),
        batch: message_body.is_batch(),
    };
    record_calls(out, &message_body);
    mcp::check_headers(&parts.headers, &message_body).map_err(Refusal::HeaderMismatch)?;

    let call = plan_call(agent, facts, &parts, message_body, caller);
    let CallPlan {
        body: message_body,
        decisions,
        plan,
    } = call;
    let agent_name = agent.name.as_str();
    out.event_mut().rpc_calls = Some(RpcCall::column(&records(agent, &message_body, &decisions)));
    let audit = agent.mode == Mode::Audit;
    let first_denied = decisions.iter().find_map(|d| match d {
        Decision::Deny(denied) => Some(denied.clone()),
        Decision::Allow(_) => None,
    });
    let first_allowed = decisions.iter().find_map(|d| match d {
        Decision::Allow(a) => Some(a.clone()),
        Decision::Deny(_) => None,
    });
    // The body goes upstream whole: if any member must wait for a person,
    // the request does (the first such member's approval says how long).
    let approval = decisions.iter().find_map(|d| match d {
        Decision::Allow(a) => a.approval,
        Decision::Deny(_) => None,
    });
    let first_allowed = first_allowed.map(|a| Allowed { approval, ..a });

    let Some(forwarded) = plan.forward.clone() else {
        // Every member denied (enforce mode): answered here.
        let denied = first_denied.expect("a body with nothing forwarded has a denial");
        noted.tool = denied.tool.as_deref().map(Into::into);
        out.note(noted);
        return Ok(answer_locally(&message_body, &plan, denied, out));
    };
    let overall = match (&first_denied, first_allowed) {
        // Audit mode lets denials through, without any credential.
        (Some(denied), _) if audit => Decision::Deny(denied.clone()),
        (_, Some(allowed)) => Decision::Allow(allowed),
        (Some(denied), None) => Decision::Deny(denied.clone()),
        (None, None) => unreachable!("every message is decided"),
    };
    let forward = settle(overall, agent, meta, &mut noted, target);
    if let (Some(denied), false) = (&first_denied, audit)
        && let Some((_, _, reason)) = &mut noted.verdict
    {
        let n = decisions.iter().filter(|d| !d.is_allow()).count();
        *reason = format!(
            "{reason}; {n} of {} batch members denied, first: {}",
            decisions.len(),
            denied.reason
        )
        .into();
    }
    out.note(noted);
    let forward = forward?;

    // The answer is read to filter lists and merge errors: uncompressed.
    parts
        .headers
        .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let sent = match forwarded {
        mcp::Forward::Original => bytes,
        mcp::Forward::Rewritten(b) => Bytes::from(b),
    };
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(sent.len()));
    let lists = list_ids(&message_body);
    let filter = match audit || lists.is_empty() {
        true => None,
        false => ListFilter::for_body(
            &message_body,
            visible(
                state,
                &agent.name,
                &parts.method,
                &host,
                meta.dst.port(),
                &path,
            ),
        ),
    };
    let body = agent_body(&parts, sent);
    let req = Request::from_parts(parts, body);
    let resp = super::forward(req, forward, meta, ctx, state, out).await?;
    response::finish(resp, filter, &plan, lists, agent_name).await
}

/// Readies a GET on an MCP endpoint whose event stream is filtered
/// ([`filter_resumed`]): the answer must come uncompressed to be read.
pub(super) fn prepare_resumed<B>(req: &mut Request<B>) {
    req.headers_mut()
        .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
}

/// The answer to a GET on an MCP endpoint: an event stream resumed with
/// `Last-Event-ID` may replay a list response of an earlier POST, which is
/// filtered to the names visible to a POST at this endpoint (where the
/// list was asked for).
pub(super) async fn filter_resumed(
    resp: Response<ProxyBody>,
    state: &Arc<LiveState>,
    meta: &ConnMeta,
    host: &str,
    path: &str,
) -> Result<Response<ProxyBody>, Refusal> {
    let agent = &meta.identity.agent;
    let filter = ListFilter::for_resumed_stream(visible(
        state,
        agent,
        &Method::POST,
        host,
        meta.dst.port(),
        path,
    ));
    let nothing_local = BodyPlan {
        forward: None,
        local: Vec::new(),
        batch: false,
    };
    response::finish(resp, Some(filter), &nothing_local, Vec::new(), agent).await
}

/// Decides each message of `body`: one credential per request, then each
/// allowed call counted against its rate; denied members become JSON-RPC
/// errors (in audit mode they are forwarded and recorded as would-deny).
fn plan_call<'p>(
    agent: &'p AgentPolicy,
    facts: RequestFacts<'_>,
    parts: &hyper::http::request::Parts,
    body: mcp::Body,
    caller: &Caller<'_>,
) -> CallPlan<'p> {
    // Conditions on `request.body` see the body as parsed: one message as
    // received, a batch as the array of its members.
    let whole: Cow<'_, Value> = match &body {
        mcp::Body::Single(m) => Cow::Borrowed(&m.raw),
        mcp::Body::Batch(ms) => {
            Cow::Owned(Value::Array(ms.iter().map(|m| m.raw.clone()).collect()))
        }
    };
    let decider = agent.decider(input(facts, parts, Some(&whole), caller));
    let mut decisions: Vec<Decision<'p>> = body
        .messages()
        .iter()
        .map(|m| decider.decide_message(m))
        .collect();
    one_credential(&mut decisions);
    let now_ms = caller.now_ms();
    let decisions: Vec<Decision<'p>> = decisions
        .into_iter()
        .map(|d| d.admit(caller.limiter, now_ms))
        .collect();
    let agent_name = agent.name.as_str();
    let audit = agent.mode == Mode::Audit;
    let outcomes: Vec<MemberOutcome> = decisions
        .iter()
        .map(|d| match d {
            Decision::Deny(denied) if !audit => {
                let refusal = Refusal::from_denied(denied.clone());
                let (code, message, data) = respond::json_rpc_error(&refusal, agent_name);
                MemberOutcome::Refuse {
                    code,
                    message,
                    data: Some(data),
                }
            }
            _ => MemberOutcome::Forward,
        })
        .collect();
    let plan = BodyPlan::new(&body, &outcomes);
    drop(decider);
    drop(whole);
    CallPlan {
        body,
        decisions,
        plan,
    }
}

/// Every member was denied: the errors, an array for a batch; `202` with
/// no body when only notifications and responses were (MCP's answer to
/// those); `429` with `Retry-After` if a rate was the reason.
fn answer_locally(
    body: &mcp::Body,
    plan: &BodyPlan,
    first: crate::policy::Denied,
    out: &mut Outcome,
) -> Response<ProxyBody> {
    let refusal = Refusal::from_denied(first);
    if !body.is_batch() && plan.local_body().is_some() {
        return out.refuse(refusal);
    }
    let n = body.messages().len();
    let reason = match n {
        1 => refusal.to_string(),
        n => format!("all {n} batch members denied, first: {refusal}"),
    };
    out.decide(refusal.decision(), refusal.rule(), reason);
    let Some(errors) = plan.local_body() else {
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::ACCEPTED;
        resp.headers_mut().insert(
            respond::DECISION_HEADER,
            HeaderValue::from_static(DECISION_DENY),
        );
        return resp;
    };
    let retry = plan
        .local
        .iter()
        .filter_map(|e| e["error"]["data"]["retryAfterMs"].as_u64())
        .max();
    let status = match retry {
        Some(_) => StatusCode::TOO_MANY_REQUESTS,
        None => StatusCode::OK,
    };
    let mut resp = respond::json_response(status, errors, DECISION_DENY);
    if let Some(ms) = retry {
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            HeaderValue::from(ms.div_ceil(1000).max(1)),
        );
    }
    resp
}

fn input<'a>(
    facts: RequestFacts<'a>,
    parts: &'a hyper::http::request::Parts,
    json_body: Option<&'a Value>,
    caller: &'a Caller<'_>,
) -> RequestInput<'a> {
    RequestInput {
        facts,
        query: parts.uri.query(),
        headers: Some(&parts.headers),
        json_body,
        identity: caller.identity,
        on_behalf_of: caller.on_behalf_of,
        intent: caller.intent,
        now: caller.now,
    }
}

/// What planning noted so far, to settle the decision on top of.
fn noted_so_far(out: &Outcome) -> Noted {
    Noted {
        host: out.event().host.clone(),
        path: out.event().path.clone(),
        bare_path: out.bare_path.clone(),
        ..Noted::default()
    }
}

/// The event's quick view of the call: its JSON-RPC method and what it
/// names (a batch's, in order, joined by `,`).
fn record_calls(out: &mut Outcome, body: &mcp::Body) {
    let join = |parts: Vec<&str>| (!parts.is_empty()).then(|| parts.join(","));
    out.event_mut().rpc_method = join(
        body.messages()
            .iter()
            .filter_map(|m| m.method.as_deref())
            .collect(),
    );
    out.event_mut().mcp_target = join(
        body.messages()
            .iter()
            .filter_map(|m| m.target.as_ref().map(|t| t.name.as_str()))
            .collect(),
    );
}

/// Each message as the record keeps it: arguments only where the deciding
/// (or closest) tool records them, else their SHA-256.
fn records(agent: &AgentPolicy, body: &mcp::Body, decisions: &[Decision<'_>]) -> Vec<RpcCall> {
    let audit = agent.mode == Mode::Audit;
    body.messages()
        .iter()
        .zip(decisions)
        .map(|(m, d)| {
            let mut call = RpcCall {
                id: m.id.clone(),
                method: m.method.clone(),
                target_kind: m.target.as_ref().map(|t| t.kind.as_str().to_owned()),
                target: m.target.as_ref().map(|t| t.name.clone()),
                decision: Recorded::Allow,
                tool: None,
                rule: None,
                reason: None,
                session: false,
                arguments: None,
                arguments_sha256: None,
            };
            let arguments = match d {
                Decision::Allow(a) => {
                    call.tool = Some(a.tool.name.clone());
                    let info = a.call.as_ref();
                    call.session = info.is_some_and(|c| c.session);
                    info.map(|c| c.arguments.clone())
                }
                Decision::Deny(denied) => {
                    call.decision = if audit {
                        Recorded::WouldDeny
                    } else {
                        Recorded::Deny
                    };
                    call.tool = denied.tool.clone();
                    call.rule = Some(denied.rule.as_str().to_owned());
                    call.reason = Some(denied.reason.clone());
                    let recorded = denied
                        .tool
                        .as_deref()
                        .and_then(|t| agent.tools.iter().find(|x| x.name == t))
                        .is_some_and(|t| t.calls.record_arguments);
                    m.arguments().map(|args| match recorded {
                        true => ArgumentsRecord::Full(args.clone()),
                        false => ArgumentsRecord::Digest(arguments_digest(args)),
                    })
                }
            };
            match arguments {
                Some(ArgumentsRecord::Full(v)) => call.arguments = Some(v),
                Some(ArgumentsRecord::Digest(h)) => call.arguments_sha256 = Some(h),
                Some(ArgumentsRecord::None) | None => {}
            }
            call
        })
        .collect()
}

/// The ids of the body's list requests (`tools/list`, ...).
fn list_ids(body: &mcp::Body) -> Vec<Value> {
    body.messages()
        .iter()
        .filter(|m| m.kind == MessageKind::Request)
        .filter(|m| {
            m.method
                .as_deref()
                .is_some_and(|method| mcp::ListKind::for_method(method).is_some())
        })
        .filter_map(|m| m.id.clone())
        .collect()
}

/// Whether the agent may use an MCP tool, prompt or resource by name at
/// this endpoint, under the policy the request was decided by: owned, for
/// a response body that outlives the request.
fn visible(
    state: &Arc<LiveState>,
    agent: &str,
    method: &Method,
    host: &str,
    port: u16,
    path: &str,
) -> impl Fn(TargetKind, &str) -> bool + Send + Sync + 'static {
    let (state, agent) = (state.clone(), agent.to_owned());
    let (method, host, path) = (method.clone(), host.to_owned(), path.to_owned());
    move |kind, name| {
        state.policy.agent(&agent).is_some_and(|a| {
            let facts = RequestFacts {
                method: &method,
                host: &host,
                port,
                path: &path,
                aws_action: None,
            };
            a.mcp_name_visible(facts, kind, name)
        })
    }
}

/// The body read here, as `forward` takes it: whole for an AWS request
/// (re-signing hashes a signed payload), streamed from memory otherwise.
fn agent_body(parts: &hyper::http::request::Parts, bytes: Bytes) -> AgentBody {
    if parts.extensions.get::<AwsFacts>().is_some() {
        AgentBody::Read(bytes)
    } else {
        AgentBody::Live(full(bytes))
    }
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|n| match n {}).boxed()
}
