//! Holding a request for a person's approval: its body is read whole
//! (bounded), the request is hashed (method, URL, body: the `rh` of
//! request-bound tokens) and queued in [`crate::approvals`], and nothing is
//! sent upstream until an approver says yes. Meanwhile the agent's
//! connection simply has no answer yet: to its HTTP client, an ordinary
//! slow response. An agent that gives up withdraws its request. An HTTP/2
//! agent's cancel (`RST_STREAM`) drops it: its request's record says the
//! agent abandoned it, its approval event says `approval:withdrawn` (or
//! the verdict sent just before, `Held::on_abandoned`). An HTTP/1 agent
//! closing its side, which hyper does not report (the connection keeps
//! half-closes, `super::serve`), is seen in the socket's TCP state, asked
//! every second while it waits (`ConnMeta::agent_left`):
//! `approval:withdrawn`. Asked once more when an approval arrives: the
//! approval is recorded as given, and the request's own record says it
//! was withdrawn. A client that only shut its sending side looks the
//! same, and is refused too.
//!
//! Every outcome is an `approval` audit event here, where the whole request
//! is known; the request's own event carries the approval id, the hash and
//! the approver.

use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use tracing::info;

use super::{ConnMeta, aws::AgentBody, body as whole_body, plan::Forward, record::Outcome};
use crate::{
    approvals::{Binding, HeldRequest, MAX_HELD_BODY, Verdict},
    audit::{Decision, Event, Kind},
    policy::ApprovalPolicy,
    proxy::{ProxyContext, refusal::Refusal},
    token::RequestBinding,
};

/// Holds `req` until it is approved (then returns it, its body buffered,
/// to be forwarded exactly as hashed) or refused.
pub(super) async fn hold(
    req: Request<AgentBody>,
    forward: &Forward<'_>,
    policy: &ApprovalPolicy,
    meta: &ConnMeta,
    ctx: &ProxyContext,
    out: &mut Outcome,
) -> Result<Request<AgentBody>, Refusal> {
    let (parts, body) = req.into_parts();
    // A body already read (an AWS request's) stays one: it is re-signed.
    let (body, read) = match body {
        AgentBody::Read(bytes) if bytes.len() > MAX_HELD_BODY => {
            return Err(Refusal::ApprovalBodyTooLarge { max: MAX_HELD_BODY });
        }
        AgentBody::Read(bytes) => (bytes, true),
        AgentBody::Live(body) => {
            // Bounded in size and in time like every body read whole.
            let limit = ctx.limits.options().client_timeout;
            let bytes =
                whole_body::read_bounded(body, MAX_HELD_BODY, &parts.headers, limit, |max| {
                    Refusal::ApprovalBodyTooLarge { max }
                })
                .await?;
            (bytes, false)
        }
    };
    let scheme = meta.scheme();
    let url = match parts.uri.query() {
        Some(q) => format!("{scheme}://{}{}?{q}", forward.authority, forward.path),
        None => format!("{scheme}://{}{}", forward.authority, forward.path),
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| Refusal::BadRequest(format!("cannot rebuild the request URL: {e}")))?;
    let request_hash =
        RequestBinding::new(parts.method.as_str(), &uri, scheme.as_str(), &body).request_hash();
    out.event_mut().request_hash = Some(request_hash.clone());
    let identity = &meta.identity;
    let mut held = ctx
        .approvals
        .hold(HeldRequest {
            binding: Binding {
                agent: identity.agent.to_string(),
                pid: identity.pid,
                request_hash: request_hash.clone(),
            },
            exe: identity.exe.as_ref().map(|p| p.display().to_string()),
            uid: identity.uid,
            tool: out.event().tool.as_deref().unwrap_or_default().to_owned(),
            method: parts.method.to_string(),
            url: url.clone(),
            body: body.clone(),
            intent: out.event().intent.clone(),
            on_behalf_of: meta.on_behalf_of.clone(),
            timeout: policy.timeout,
        })
        .map_err(Refusal::ApprovalQueueFull)?;
    let id = held.id().to_owned();
    let record = approval_event(meta, out, &id, &request_hash);
    // Dropped mid-wait (an HTTP/2 agent's cancel): recorded all the same,
    // with a verdict the approver was told had landed.
    held.on_abandoned({
        let (sink, record, agent) = (ctx.audit.clone(), record.clone(), identity.agent.clone());
        move |verdict| {
            let withdrawn = verdict == Verdict::Withdrawn;
            if let Some(mut event) = Settled::of(verdict, &record, &agent).event {
                if withdrawn {
                    event.reason = Some(ABANDONED.into());
                }
                sink.record_detached(event);
            }
        }
    });
    out.event_mut().approval_id = Some(id.clone());
    info!(approval = %id, url = %url, "request held for approval");
    // A verdict first (`wait_unless`): a revocation closes the connection
    // after its verdict, and must not be read as the agent's withdrawal.
    let verdict = held
        .wait_unless(meta.until_agent_leaves(parts.version))
        .await;
    let Settled {
        event,
        actor,
        result,
    } = Settled::of(verdict, &record, &identity.agent);
    // Recorded even if the request is dropped while the store makes it
    // wait: the approver was told the verdict landed.
    if let Some(event) = event {
        ctx.audit.record_even_if_dropped(event).await;
    }
    out.event_mut().actor = actor;
    result?;
    // Approved within the last check's second of the agent's going: the
    // approval is recorded, the request is not forwarded.
    if meta.agent_left(parts.version) {
        return Err(Refusal::ApprovalWithdrawn { id });
    }
    // Exactly the bytes that were hashed and shown go upstream.
    let body = match read {
        true => AgentBody::Read(body),
        false => AgentBody::Live(Full::new(body).map_err(|never| match never {}).boxed()),
    };
    Ok(Request::from_parts(parts, body))
}

/// The reason of a request whose wait was dropped before a verdict: its
/// HTTP/2 agent cancelled it, or the daemon stopped (which a `Drop` cannot
/// tell apart).
const ABANDONED: &str = "withdrawn: the wait for approval ended before a verdict (the agent cancelled the request, or the daemon stopped)";

/// The `approval` event of this request, to be given its verdict
/// ([`Settled::of`]).
fn approval_event(meta: &ConnMeta, out: &Outcome, id: &str, request_hash: &str) -> Event {
    let mut event = meta.identity.stamp(Event::new(Kind::Approval));
    event.approval_id = Some(id.to_owned());
    event.request_hash = Some(request_hash.to_owned());
    event.tool = out.event().tool.clone();
    event.host = out.event().host.clone();
    event.method = out.event().method.clone();
    event.path = out.event().path.clone();
    event.sni = meta.sni.as_deref().map(Into::into);
    event.intent = out.event().intent.clone();
    event.policy_version = out.event().policy_version.clone();
    event.on_behalf_of = out.event().on_behalf_of.clone();
    event
}

fn id_of(record: &Event) -> &str {
    record.approval_id.as_deref().unwrap_or_default()
}

/// What a verdict makes of a held request.
struct Settled {
    /// Its `approval` event; `None` for a revocation, which recorded its
    /// denials itself (`crate::oversight`) before it closed the connection.
    event: Option<Event>,
    /// Who decided, for the request's own event.
    actor: Option<String>,
    /// Forwarded, or refused.
    result: Result<(), Refusal>,
}

impl Settled {
    /// `record` is the request's [`approval_event`], `agent` its agent.
    fn of(verdict: Verdict, record: &Event, agent: &str) -> Self {
        let id = id_of(record).to_owned();
        let (decision, rule, reason, actor, result) = match verdict {
            Verdict::Approved { by, .. } => (
                Decision::Allow,
                "approval:approved",
                format!("approved by {by}"),
                Some(by),
                Ok(()),
            ),
            Verdict::Denied { by, reason } => (
                Decision::Deny,
                "approval:denied",
                reason.clone(),
                Some(by.clone()),
                Err(Refusal::ApprovalDenied { id, by, reason }),
            ),
            Verdict::TimedOut { after } => {
                let refusal = Refusal::ApprovalTimedOut { id, after };
                (
                    Decision::Deny,
                    "approval:timeout",
                    refusal.to_string(),
                    None,
                    Err(refusal),
                )
            }
            Verdict::Withdrawn => {
                let refusal = Refusal::ApprovalWithdrawn { id };
                (
                    Decision::Refuse,
                    "approval:withdrawn",
                    refusal.to_string(),
                    None,
                    Err(refusal),
                )
            }
            Verdict::Revoked { by, reason } => (
                Decision::Deny,
                "approval:revoked",
                reason.clone(),
                Some(by),
                Err(Refusal::Revoked {
                    agent: agent.to_owned(),
                    reason,
                }),
            ),
        };
        info!(approval = %id_of(record), rule, reason = %reason, "approval decided");
        // A revocation recorded its denials itself.
        if rule == "approval:revoked" {
            return Self {
                event: None,
                actor,
                result,
            };
        }
        // Its own id and time: the verdict's, not the hold's.
        let mut event = Event::like(record).with_decision(decision, reason);
        event.rule = Some(rule.into());
        event.actor = actor.clone();
        Self {
            event: Some(event),
            actor,
            result,
        }
    }
}
