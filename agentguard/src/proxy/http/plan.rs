//! The plan for one request, made from its head, the connection it arrived
//! on, the caller and the policy alone: what the record says about it and
//! whether it is refused, forwarded (with which credential), or decided on
//! its body (read by [`super::call`], which settles it here). Nothing here
//! waits, reads a body or touches a secret; the one effect is that an
//! allowed call is counted against its tool's rate. [`super::handle`]
//! carries the plan out.

use std::{sync::Arc, time::SystemTime};

use hyper::{Method, Request, http::uri::Authority};

use super::{
    ConnMeta,
    aws::{self, AwsFacts, AwsScope},
    checks, hop, overrides,
};
use crate::{
    audit::Decision as Recorded,
    policy::overrides::METHOD_PARAM,
    policy::{
        AgentIdentity, AgentPolicy, ApprovalPolicy, BodyNeed, CredentialPolicy, Decision, Mode,
        PolicySet, Protocol, RateLimiter, RequestFacts, RequestInput, ToolTimeouts, normalize_path,
    },
    proxy::{decide::Resolutions, refusal::Refusal},
};

/// Who sends the request, and when: what conditions and rates read beside
/// the request.
pub struct Caller<'a> {
    pub identity: &'a AgentIdentity,
    pub on_behalf_of: Option<&'a str>,
    pub intent: Option<&'a str>,
    pub now: SystemTime,
    /// Counts calls against rates; shared by every request of the daemon.
    pub limiter: &'a RateLimiter,
}

impl Caller<'_> {
    /// Milliseconds since the epoch, the rate limiter's clock.
    pub fn now_ms(&self) -> u64 {
        self.now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// What the audit record learns from planning, whatever comes of the
/// request afterwards.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Noted {
    /// Host from Host/`:authority`, lowercase, without brackets.
    pub host: Option<Arc<str>>,
    /// The path as recorded: normalised with the agent's query, or as
    /// received when it could not be normalised.
    pub path: Option<String>,
    /// The normalised path without the query (the recent-requests view).
    pub bare_path: String,
    /// Shared with the policy, as the verdict's rule and reason are where
    /// it allows.
    pub tool: Option<Arc<str>>,
    /// The credential that will be injected (its id, never its value).
    pub credential_id: Option<String>,
    /// The policy's verdict when it lets the request on: allow, or
    /// would-deny in audit mode (decision, rule, reason).
    pub verdict: Option<(Recorded, Arc<str>, Arc<str>)>,
}

#[derive(Debug)]
pub enum Action<'p> {
    Refuse(Refusal),
    Forward(Forward<'p>),
    /// The decision needs the body: read it (bounded) and decide
    /// ([`super::call`]).
    Decide(Pending<'p>),
}

/// A request whose decision waits for its body.
#[derive(Debug)]
pub struct Pending<'p> {
    pub agent: &'p AgentPolicy,
    /// What to read: `Json` or `JsonRpc`, with its bound.
    pub need: BodyNeed,
    pub authority: Authority,
    /// As in [`Noted::host`].
    pub host: String,
    /// Normalised, without the query.
    pub path: String,
}

/// A request to send upstream.
#[derive(Debug)]
pub struct Forward<'p> {
    pub authority: Authority,
    /// As in [`Noted::host`].
    pub host: String,
    /// Normalised, without the query: what was decided is what is sent.
    pub path: String,
    /// A WebSocket upgrade.
    pub upgrade: bool,
    /// The credential to inject; only ever on a TLS connection.
    pub credential: Option<&'p CredentialPolicy>,
    /// The tool wants a person to approve the request first.
    pub approval: Option<&'p ApprovalPolicy>,
    /// A GET an MCP tool allows (enforced): its event stream may replay
    /// list responses of earlier POSTs, which are filtered
    /// ([`crate::mcp::ListFilter::for_resumed_stream`]).
    pub resumed_lists: bool,
    /// The override headers the tool lets through (see `overrides`).
    pub allow_overrides: &'p [String],
    /// For a credential that re-signs AWS requests: what to sign for
    /// (boxed: most requests have none, and the plan is moved about).
    pub aws: Option<Box<AwsScope>>,
    /// The allowing tool's own time limits toward the upstream.
    pub timeouts: Option<ToolTimeouts>,
}

#[derive(Debug)]
pub struct Plan<'p> {
    pub noted: Noted,
    pub action: Action<'p>,
}

/// Plans `req`, which arrived on `meta` from `caller`, under `policy`.
pub fn plan<'p, B>(
    req: &Request<B>,
    meta: &ConnMeta,
    policy: &'p PolicySet,
    resolutions: &dyn Resolutions,
    caller: &Caller<'_>,
) -> Plan<'p> {
    let mut noted = Noted::default();
    let action = match decide(req, meta, policy, resolutions, caller, &mut noted) {
        Ok(action) => action,
        Err(refusal) => Action::Refuse(refusal),
    };
    Plan { noted, action }
}

/// The checks in the order they run; each refusal keeps what was noted
/// before it.
fn decide<'p, B>(
    req: &Request<B>,
    meta: &ConnMeta,
    policy: &'p PolicySet,
    resolutions: &dyn Resolutions,
    caller: &Caller<'_>,
    noted: &mut Noted,
) -> Result<Action<'p>, Refusal> {
    let agent = &meta.identity.agent;
    let authority = checks::request_authority(req).map_err(Refusal::BadRequest)?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    noted.host = Some(host.as_str().into());
    checks::check_consistency(&host, authority.port_u16(), meta).map_err(Refusal::Misdirected)?;
    // Without TLS nothing proves the destination is the host the request
    // names: an agent could send "Host: allowed.example" to any address
    // (a cloud metadata endpoint, its own server). The destination must be
    // the host itself (an IP literal) or an address agentguard's resolver
    // gave this agent for that name.
    if meta.sni.is_none() {
        let literal = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical() == meta.dst.ip().to_canonical());
        if !literal && !resolutions.resolved_to(agent, &host, meta.dst.ip()) {
            return Err(Refusal::Misdirected(format!(
                "plain HTTP to {}: host {host:?} was not resolved to that address by agentguard's resolver",
                meta.dst
            )));
        }
    }
    let path = match checks::check_double_encoding(req.uri().path())
        .and_then(|()| normalize_path(req.uri().path()))
    {
        Ok(p) => p,
        Err(e) => {
            noted.path = Some(req.uri().path().to_owned());
            return Err(Refusal::Path(e));
        }
    };
    noted.bare_path = path.clone();
    noted.path = Some(match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    });
    let Some(agent_policy) = policy.agent(agent) else {
        return Err(Refusal::UnknownAgent(agent.to_string()));
    };

    let aws_facts = req.extensions().get::<AwsFacts>();
    let aws_action = aws_facts.and_then(|f| f.action.as_deref());
    let facts = RequestFacts {
        method: req.method(),
        host: &host,
        port: meta.dst.port(),
        path: &path,
        aws_action,
    };
    let need = agent_policy.body_need(facts);
    if need != BodyNeed::None {
        // After a 101 nothing is decided, and a body-bound decision has no
        // body to read in an upgrade.
        if hop::wants_upgrade(req) {
            return Err(Refusal::UpgradeRefused);
        }
        return Ok(Action::Decide(Pending {
            agent: agent_policy,
            need,
            authority,
            host,
            path,
        }));
    }
    let decision = agent_policy
        .decider(RequestInput {
            facts,
            query: req.uri().query(),
            headers: Some(req.headers()),
            json_body: None,
            identity: caller.identity,
            on_behalf_of: caller.on_behalf_of,
            intent: caller.intent,
            now: caller.now,
        })
        .decide()
        .admit(caller.limiter, caller.now_ms());
    let resumed_lists = *req.method() == Method::GET
        && agent_policy.mode == Mode::Enforce
        && matches!(&decision, Decision::Allow(a) if a.tool.calls.protocol == Protocol::Mcp);
    let target = Target {
        authority,
        host,
        path,
        upgrade: hop::wants_upgrade(req).then(|| hop::upgrades_to_websocket(req)),
        method_param: overrides::has_method_param(req.uri().query()),
        aws_facts: aws_facts.cloned(),
    };
    settle(decision, agent_policy, meta, noted, target).map(|forward| {
        Action::Forward(Forward {
            resumed_lists,
            ..forward
        })
    })
}

/// Where a request goes, once its head is checked.
pub struct Target {
    pub authority: Authority,
    pub host: String,
    pub path: String,
    /// An upgrade request: `Some(true)` for WebSocket.
    pub upgrade: Option<bool>,
    /// The query sets `_method` (see `overrides`).
    pub method_param: bool,
    /// What the request says of itself as an AWS request, if it is one.
    pub aws_facts: Option<AwsFacts>,
}

/// The rest of the plan once the policy has decided (on the head, or on
/// the body by [`super::call`]), the decision already counted against its
/// rate: denied (or, in audit mode, let through without a credential), or
/// forwarded with the allowing tool's credential.
pub fn settle<'p>(
    decision: Decision<'p>,
    agent_policy: &AgentPolicy,
    meta: &ConnMeta,
    noted: &mut Noted,
    target: Target,
) -> Result<Forward<'p>, Refusal> {
    let Target {
        authority,
        host,
        path,
        upgrade,
        method_param,
        aws_facts,
    } = target;
    let aws_action = aws_facts.as_ref().and_then(|f| f.action.as_deref());
    let mut allow_overrides: &[String] = &[];
    let mut approval = None;
    let mut timeouts = None;
    let credential = match decision {
        Decision::Allow(allowed) => {
            let tool = allowed.tool;
            allow_overrides = &tool.allow_overrides;
            approval = allowed.approval;
            timeouts = Some(tool.timeouts);
            noted.tool = Some(tool.allowed.tool.clone());
            let reason = match aws_action {
                Some(action) => format!("{} (AWS action {action})", tool.allowed.reason).into(),
                None => tool.allowed.reason.clone(),
            };
            noted.verdict = Some((Recorded::Allow, tool.allowed.rule.clone(), reason));
            allowed.credential
        }
        Decision::Deny(denied) if agent_policy.mode == Mode::Enforce => {
            noted.tool = denied.tool.as_deref().map(Into::into);
            return Err(Refusal::from_denied(denied));
        }
        Decision::Deny(denied) => {
            // Audit mode: recorded as a denial, forwarded without any
            // credential.
            noted.verdict = Some((
                Recorded::WouldDeny,
                denied.rule.as_str().into(),
                denied.reason.into(),
            ));
            None
        }
    };

    // After a 101 the bytes are relayed with no further decision, so only
    // the upgrade browsers and SDKs use, WebSocket, is let through.
    if upgrade == Some(false) {
        return Err(Refusal::UpgradeRefused);
    }
    if let Some(credential) = credential {
        // A secret never crosses an unauthenticated connection: only TLS
        // upstreams, whose certificate is verified for the policy's host
        // before a byte of the request is sent, receive it.
        if meta.sni.is_none() {
            return Err(Refusal::CredentialOverPlainHttp {
                tool: noted.tool.as_deref().unwrap_or_default().to_owned(),
                credential: credential.id.clone(),
            });
        }
        noted.credential_id = Some(credential.id.clone());
        if method_param && !allow_overrides.iter().any(|a| a == METHOD_PARAM) {
            return Err(Refusal::MethodOverride {
                tool: noted.tool.as_deref().unwrap_or_default().to_owned(),
            });
        }
    }
    let aws = match credential {
        Some(credential) => aws::scope(aws_facts.as_ref(), credential)?.map(Box::new),
        None => None,
    };
    Ok(Forward {
        authority,
        host,
        path,
        upgrade: upgrade.is_some(),
        credential,
        approval,
        resumed_lists: false,
        allow_overrides,
        aws,
        timeouts,
    })
}

#[cfg(test)]
mod tests;
