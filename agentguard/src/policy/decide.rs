//! Deciding a request with what it calls: the HTTP request, and each
//! JSON-RPC message of its body for `protocol = "mcp"` and `"jsonrpc"`
//! tools, with `when` conditions evaluated and the rate check named.
//!
//! Default deny. The tools whose host, port, method and path match are the
//! candidates, in file order; the first that allows the call decides (and
//! names the credential). A tool allows:
//! - a request with no JSON-RPC body: an `http` tool if its condition
//!   holds; an `mcp`/`jsonrpc` tool only for methods other than POST (the
//!   MCP event stream and session end), which are session traffic;
//! - one JSON-RPC message: an `http` tool if its condition holds; an `mcp`
//!   tool for session methods and responses unconditionally, and for the
//!   tools, resources, prompts and methods it lists if its condition holds;
//!   a `jsonrpc` tool for the methods it lists if its condition holds.
//!
//! Rate limits are not counted here: an allowed call names its
//! [`RateCheck`], and [`Decision::admit`] counts it.

use std::{cell::OnceCell, time::SystemTime};

use hyper::{HeaderMap, Method};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{
    AgentIdentity, AgentPolicy, CallRules, CredentialPolicy, McpView, MessageMatch, RateCheck,
    RateKey, RateLimiter, RatePer, RequestView, ToolPolicy, Vars,
    condition::{Bound, Condition, Known, Uses},
    rate::Admission,
};
use crate::mcp::{Message, Target};

/// The parts of a request head that select the candidate tools.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// Host from SNI/Host (already checked to agree), without port.
    pub host: &'a str,
    /// The connection's original destination port.
    pub port: u16,
    /// The normalised path (see [`super::normalize_path`]), no query.
    pub path: &'a str,
    /// The AWS action (`ec2:DescribeInstances`) of a SigV4-signed request,
    /// when it can be told; tools that name `aws_actions` match only
    /// requests whose action they name.
    pub aws_action: Option<&'a str>,
}

impl ToolPolicy {
    /// Whether the tool's `aws_actions` (if it names any) allow the
    /// request's AWS action; a request whose action cannot be told matches
    /// no tool that names actions.
    pub fn allows_aws_action(&self, action: Option<&str>) -> bool {
        self.aws_actions.is_empty()
            || action.is_some_and(|a| {
                self.aws_actions
                    .iter()
                    .any(|p| super::aws_action_matches(p, a))
            })
    }
}

/// Everything about one request that a decision may use.
#[derive(Debug, Clone, Copy)]
pub struct RequestInput<'a> {
    pub facts: RequestFacts<'a>,
    pub query: Option<&'a str>,
    pub headers: Option<&'a HeaderMap>,
    /// The body parsed as JSON, when its content type is JSON and
    /// [`AgentPolicy::body_need`] asked for it.
    pub json_body: Option<&'a Value>,
    pub identity: &'a AgentIdentity,
    pub on_behalf_of: Option<&'a str>,
    pub intent: Option<&'a str>,
    pub now: SystemTime,
}

/// What the proxy must read of a request's body before deciding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyNeed {
    /// Nothing: decide on the head, stream the body.
    None,
    /// A condition reads `request.body`: read up to `max` bytes and parse
    /// it if its content type is JSON; refuse a longer body.
    Json { max: usize },
    /// A JSON-RPC body: read up to `max` bytes (refuse a longer one, never
    /// forward it unchecked), require a JSON content type, parse it with
    /// [`crate::mcp::Body::parse`], check [`crate::mcp::check_headers`],
    /// and decide each message with [`Decider::decide_message`].
    JsonRpc { max: usize },
}

/// Why a request or message was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyRule {
    /// No tool matches the host, port, method and path.
    NoTool,
    /// Tools match the endpoint, but none allows this JSON-RPC method, MCP
    /// tool, resource or prompt.
    CallNotAllowed,
    /// A tool would allow it, but its `when` condition does not hold.
    Condition,
    /// A JSON-RPC endpoint's POST was not decided on its body.
    BodyRequired,
    /// Over the tool's rate.
    RateLimited { retry_after_secs: u64 },
    /// The rate limiter's table is full.
    RateLimiterFull,
    /// A batch member allowed by a tool whose credential differs from the
    /// one the rest of the batch is sent with: one request carries one
    /// credential, so it is denied rather than sent with another's.
    MixedCredentials,
}

impl DenyRule {
    /// The short code recorded as the event's rule.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyRule::NoTool => "default-deny",
            DenyRule::CallNotAllowed => "call-not-allowed",
            DenyRule::Condition => "condition",
            DenyRule::BodyRequired => "body-required",
            DenyRule::RateLimited { .. } => "rate-limited",
            DenyRule::RateLimiterFull => "rate-limiter-full",
            DenyRule::MixedCredentials => "mixed-credentials",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    pub rule: DenyRule,
    pub reason: String,
    /// The tool that came closest (its condition failed, or it is over
    /// its rate), if any.
    pub tool: Option<String>,
}

/// How a call's arguments go into the audit record.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgumentsRecord {
    /// No arguments.
    None,
    /// SHA-256 (hex) of the arguments as canonical JSON (object keys sorted,
    /// no whitespace): comparable across events without holding the data.
    Digest(String),
    /// The arguments themselves (`record_arguments = true`).
    Full(Value),
}

/// The JSON-RPC message an allowed decision is about.
#[derive(Debug, Clone, PartialEq)]
pub struct CallInfo {
    /// The JSON-RPC method; `None` for a response the client sends.
    pub method: Option<String>,
    /// The MCP tool, resource or prompt named.
    pub target: Option<Target>,
    /// Session traffic (no condition or rate applied).
    pub session: bool,
    pub arguments: ArgumentsRecord,
}

#[derive(Debug, Clone)]
pub struct Allowed<'p> {
    pub tool: &'p ToolPolicy,
    pub credential: Option<&'p CredentialPolicy>,
    /// For a JSON-RPC message.
    pub call: Option<CallInfo>,
    /// The count this call must pass, if the tool has a rate.
    pub rate: Option<RateCheck>,
    /// Set when the call must wait for a person's approval: the tool asks
    /// for it, the call is not a session's protocol message, and the
    /// approval's `when` (if any) holds.
    pub approval: Option<&'p super::ApprovalPolicy>,
}

#[derive(Debug, Clone)]
pub enum Decision<'p> {
    Allow(Allowed<'p>),
    Deny(Denied),
}

impl<'p> Decision<'p> {
    /// Counts an allowed call against its rate: over the limit it becomes
    /// a denial carrying the `Retry-After` seconds. Denials are not counted.
    pub fn admit(self, limiter: &RateLimiter, now_ms: u64) -> Decision<'p> {
        let Decision::Allow(allowed) = self else {
            return self;
        };
        let Some(check) = &allowed.rate else {
            return Decision::Allow(allowed);
        };
        match limiter.admit(check, now_ms) {
            Admission::Admitted { .. } => Decision::Allow(allowed),
            Admission::Limited { retry_after_secs } => Decision::Deny(Denied {
                rule: DenyRule::RateLimited { retry_after_secs },
                reason: format!(
                    "tool {:?} allows {} ({}); retry in {retry_after_secs} s",
                    allowed.tool.name,
                    check.spec,
                    match &check.key.on_behalf_of {
                        Some(who) => format!("for {who}"),
                        None => "per agent".to_owned(),
                    }
                ),
                tool: Some(allowed.tool.name.clone()),
            }),
            Admission::Full => Decision::Deny(Denied {
                rule: DenyRule::RateLimiterFull,
                reason: "the rate limiter is full; try again shortly".into(),
                tool: Some(allowed.tool.name.clone()),
            }),
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl AgentPolicy {
    /// What the proxy must read of the body before deciding (plan before
    /// doing: asked with the request head alone).
    pub fn body_need(&self, facts: RequestFacts<'_>) -> BodyNeed {
        let (mut rpc, mut json) = (None::<usize>, None::<usize>);
        for tool in self
            .tools
            .for_method(facts.method)
            .filter(|t| endpoint_matches(t, &facts))
        {
            let max = tool.calls.max_body;
            if tool.calls.protocol.is_rpc() {
                if *facts.method == Method::POST {
                    rpc = Some(rpc.map_or(max, |m| m.max(max)));
                }
            } else if tool.calls.reads_body() {
                json = Some(json.map_or(max, |m| m.max(max)));
            }
        }
        match (rpc, json) {
            (Some(r), j) => BodyNeed::JsonRpc {
                max: r.max(j.unwrap_or(0)),
            },
            (None, Some(j)) => BodyNeed::Json { max: j },
            (None, None) => BodyNeed::None,
        }
    }

    /// A decider for one request; its messages share the variables built
    /// for conditions.
    pub fn decider<'p, 'a>(&'p self, input: RequestInput<'a>) -> Decider<'p, 'a> {
        Decider {
            policy: self,
            input,
            vars: OnceCell::new(),
            bound: OnceCell::new(),
        }
    }

    /// Whether the agent may use this MCP tool, prompt or resource by name
    /// at this endpoint (for filtering list results; a condition may still
    /// refuse a particular call).
    pub fn mcp_name_visible(
        &self,
        facts: RequestFacts<'_>,
        kind: crate::mcp::TargetKind,
        name: &str,
    ) -> bool {
        self.tools
            .for_method(facts.method)
            .any(|t| endpoint_matches(t, &facts) && t.calls.allows_name(kind, name))
    }

    /// The tools whose `when` condition a decision evaluates, in the order
    /// it tries them: for the request as a whole (`message` `None`) or for
    /// one JSON-RPC message. A decision that allows stops at its tool; one
    /// that denies has evaluated them all. `policy replay` reads their
    /// conditions to tell whether a decision needs data the audit record
    /// lacks.
    pub fn conditioned_candidates(
        &self,
        facts: RequestFacts<'_>,
        message: Option<&Message>,
    ) -> Vec<&ToolPolicy> {
        self.tools
            .for_method(facts.method)
            .filter(|t| t.calls.when.is_some() && endpoint_matches(t, &facts))
            .filter(|t| match message {
                None => !t.calls.protocol.is_rpc(),
                Some(m) => {
                    !t.calls.protocol.is_rpc() || t.calls.match_message(m) == MessageMatch::Call
                }
            })
            .collect()
    }

    /// What the agent's conditions read (its tools' and their approvals'):
    /// the variables a decision builds.
    fn condition_uses(&self) -> Uses {
        self.tools
            .iter()
            .flat_map(|t| {
                [
                    t.calls.when.as_ref(),
                    t.approval.as_ref().and_then(|a| a.when.as_ref()),
                ]
            })
            .flatten()
            .fold(Uses::default(), |all, c| all.union(c.uses()))
    }

    /// Names of the headers this agent's credentials are injected into:
    /// conditions never see them.
    fn credential_headers(&self) -> Vec<&str> {
        self.credentials
            .iter()
            .filter_map(|c| match &c.inject {
                super::Injection::Header { name, .. } => Some(name.as_str()),
                super::Injection::Basic { .. } => Some("authorization"),
                // SigV4 re-signing replaces the agent's `Authorization`.
                super::Injection::AwsSigV4 { .. } => Some("authorization"),
                super::Injection::Query { .. } => None,
            })
            .collect()
    }
}

/// Whether a tool's host, port, method and path match: it is a candidate.
fn endpoint_matches(t: &ToolPolicy, facts: &RequestFacts<'_>) -> bool {
    // The cheap tests first: every request goes through every tool that
    // may take its method (`Tools::for_method`), and a case-insensitive
    // host comparison costs more than a method's or a port's, which are
    // read from the tool itself (the result is the same in any order).
    t.methods.contains(facts.method)
        && t.port.is_none_or(|p| p == facts.port)
        && t.paths.iter().any(|p| p.matches(facts.path))
        && t.host.matches(facts.host)
        && t.allows_aws_action(facts.aws_action)
}

/// Decides one request, and each JSON-RPC message of its body.
pub struct Decider<'p, 'a> {
    policy: &'p AgentPolicy,
    input: RequestInput<'a>,
    vars: OnceCell<Vars>,
    bound: OnceCell<Bound>,
}

/// A reason for denial kept while the remaining candidates are tried.
struct Miss<'p> {
    rule: DenyRule,
    why: Why<'p>,
}

/// What a [`Miss`] says.
enum Why<'p> {
    /// Written when the tool was tried.
    Written {
        reason: String,
        tool: Option<String>,
    },
    /// The tool's condition cannot hold and was passed over unrun
    /// ([`Decider::passes_over`]); it is run for its reason only if the
    /// decision is a denial that shows it. An allowed request (the usual
    /// case) thus runs no condition but the one that allows it: before,
    /// the first condition tried was always run, to have its reason at
    /// hand (measured in the commit that made this).
    Unrun(&'p ToolPolicy),
}

impl Miss<'_> {
    fn written(rule: DenyRule, reason: String, tool: Option<String>) -> Self {
        Self {
            rule,
            why: Why::Written { reason, tool },
        }
    }
}

/// The reasons a denial could give: the first of each rank (a failed
/// condition says more than a body not read, which says more than a name
/// not listed). Later ones of a rank are never shown, so they are not
/// written: a decision among fifty tools formats at most three.
#[derive(Default)]
struct Misses<'p>([Option<Miss<'p>>; 3]);

impl<'p> Misses<'p> {
    fn rank(rule: DenyRule) -> usize {
        match rule {
            DenyRule::Condition => 0,
            DenyRule::BodyRequired => 1,
            _ => 2,
        }
    }

    /// Keeps the miss `make` writes, if it is the first of its rank.
    fn add(&mut self, rule: DenyRule, make: impl FnOnce() -> Miss<'p>) {
        let slot = &mut self.0[Self::rank(rule)];
        if slot.is_none() {
            *slot = Some(make());
        }
    }

    fn best(self) -> Option<Miss<'p>> {
        self.0.into_iter().flatten().next()
    }
}

impl<'p> Decider<'p, '_> {
    fn vars(&self) -> &Vars {
        self.vars.get_or_init(|| {
            let i = &self.input;
            Vars::new(
                RequestView {
                    method: i.facts.method.as_str(),
                    host: i.facts.host,
                    port: i.facts.port,
                    path: i.facts.path,
                    query: i.query,
                    headers: i.headers,
                    body: i.json_body,
                },
                i.identity,
                i.on_behalf_of,
                i.intent,
                i.now,
                &self.policy.credential_headers(),
                self.policy.condition_uses(),
            )
        })
    }

    /// The request and `message` as they are, for conditions'
    /// prerequisites.
    fn known<'m>(&'m self, message: Option<&'m Message>) -> Known<'m> {
        let i = &self.input;
        Known {
            request: RequestView {
                method: i.facts.method.as_str(),
                host: i.facts.host,
                port: i.facts.port,
                path: i.facts.path,
                query: i.query,
                headers: i.headers,
                body: i.json_body,
            },
            identity: i.identity,
            on_behalf_of: i.on_behalf_of,
            intent: i.intent,
            mcp: message.map(mcp_view),
        }
    }

    fn bound(&self) -> &Bound {
        self.bound.get_or_init(|| self.vars().bind())
    }

    /// `bound`: the variables the tool's conditions see (for a JSON-RPC
    /// message, with its `mcp`); bound here if needed and not yet.
    fn allow(
        &self,
        tool: &'p ToolPolicy,
        call: Option<CallInfo>,
        rated: bool,
        bound: Option<&Bound>,
    ) -> Decision<'p> {
        // A session's own traffic never waits: its protocol messages, and
        // on a JSON-RPC tool the requests without a body to decide (the
        // event stream's GET, the session's DELETE).
        let session = call
            .as_ref()
            .map_or(tool.calls.protocol.is_rpc(), |c| c.session);
        let approval = tool.approval.as_ref().filter(|a| {
            !session
                && a.holds(
                    a.when
                        .as_ref()
                        .map(|w| w.evaluate_bound(bound.unwrap_or_else(|| self.bound()))),
                )
        });
        let rate = tool.calls.rate.filter(|_| rated).map(|rule| RateCheck {
            key: RateKey {
                agent: self.policy.name.clone(),
                tool: tool.name.clone(),
                on_behalf_of: match rule.per {
                    RatePer::Agent => None,
                    RatePer::OnBehalfOf => self.input.on_behalf_of.map(str::to_owned),
                },
            },
            spec: rule.spec,
        });
        Decision::Allow(Allowed {
            tool,
            // Load-time validation guarantees the id exists.
            credential: tool
                .credential
                .as_deref()
                .and_then(|id| self.policy.credential(id)),
            call,
            rate,
            approval,
        })
    }

    /// Whether the tool's condition holds (or it has none); if not, the
    /// reason is kept in `misses` when it is the first of its kind.
    fn condition(&self, tool: &ToolPolicy, bound: &Bound, misses: &mut Misses<'p>) -> bool {
        let Some(when) = &tool.calls.when else {
            return true;
        };
        let result = when.evaluate_bound(bound);
        if result == Ok(true) {
            return true;
        }
        misses.add(DenyRule::Condition, || {
            Miss::written(
                DenyRule::Condition,
                condition_reason(tool, when, result),
                Some(tool.name.clone()),
            )
        });
        false
    }

    /// Whether the tool's condition can be passed over unrun: its
    /// prerequisites fail on the plain request, so it cannot hold. The
    /// first such tool is kept in `misses`, to be run for the reason of a
    /// denial (`Why::Unrun`).
    fn passes_over(
        &self,
        tool: &'p ToolPolicy,
        known: &Known<'_>,
        misses: &mut Misses<'p>,
    ) -> bool {
        let cannot = tool
            .calls
            .when
            .as_ref()
            .is_some_and(|w| w.cannot_hold(known));
        if cannot {
            misses.add(DenyRule::Condition, || Miss {
                rule: DenyRule::Condition,
                why: Why::Unrun(tool),
            });
        }
        cannot
    }

    /// The denial `misses` tell, or that no tool allows `what`. `bound`
    /// gives the variables a condition passed over unrun sees, should its
    /// reason be the one shown.
    fn deny<'b>(
        &self,
        misses: Misses<'p>,
        what: String,
        bound: impl FnOnce() -> &'b Bound,
    ) -> Decision<'p> {
        let best = misses.best();
        let facts = &self.input.facts;
        Decision::Deny(match best {
            Some(Miss {
                rule,
                why: Why::Written { reason, tool },
            }) => Denied { rule, reason, tool },
            Some(Miss {
                rule,
                why: Why::Unrun(tool),
            }) => {
                let when = tool
                    .calls
                    .when
                    .as_ref()
                    .expect("only a condition is passed over");
                let result = when.evaluate_bound(bound());
                Denied {
                    rule,
                    reason: condition_reason(tool, when, result),
                    tool: Some(tool.name.clone()),
                }
            }
            None if self
                .policy
                .tools
                .iter()
                .any(|t| t.host.matches(facts.host) && t.port.is_none_or(|p| p == facts.port)) =>
            {
                Denied {
                    rule: DenyRule::NoTool,
                    reason: format!("no tool of agent {:?} allows {what}", self.policy.name),
                    tool: None,
                }
            }
            None => Denied {
                rule: DenyRule::NoTool,
                reason: format!(
                    "no tool of agent {:?} allows host {}:{}",
                    self.policy.name, facts.host, facts.port
                ),
                tool: None,
            },
        })
    }

    /// Decides the request as a whole: any request without a JSON-RPC body.
    pub fn decide(&self) -> Decision<'p> {
        let facts = &self.input.facts;
        let known = self.known(None);
        let mut misses = Misses::default();
        for tool in self
            .policy
            .tools
            .for_method(facts.method)
            .filter(|t| endpoint_matches(t, facts))
        {
            if tool.calls.protocol.is_rpc() {
                if *facts.method == Method::POST {
                    misses.add(DenyRule::BodyRequired, || {
                        Miss::written(
                            DenyRule::BodyRequired,
                            format!(
                                "tool {:?} decides each JSON-RPC message of the body",
                                tool.name
                            ),
                            Some(tool.name.clone()),
                        )
                    });
                    continue;
                }
                return self.allow(tool, None, false, None);
            }
            if self.passes_over(tool, &known, &mut misses) {
                continue;
            }
            // The condition's variables (the request's headers, query and
            // identity as CEL values) are built only for a tool that has a
            // condition: most have none (measured: 5% of the full path's
            // instructions went into building them for nothing).
            let held = match tool.calls.when {
                None => true,
                Some(_) => self.condition(tool, self.bound(), &mut misses),
            };
            if held {
                return self.allow(tool, None, true, None);
            }
        }
        let what = match facts.aws_action {
            Some(action) => format!(
                "{} {} on {} for AWS action {action}",
                facts.method, facts.path, facts.host
            ),
            None => format!("{} {} on {}", facts.method, facts.path, facts.host),
        };
        self.deny(misses, what, || self.bound())
    }

    /// Decides one message of a JSON-RPC body.
    pub fn decide_message(&self, message: &Message) -> Decision<'p> {
        let facts = &self.input.facts;
        let known = self.known(Some(message));
        // The member's variables, bound once for both rounds.
        let mut member: Option<Bound> = None;
        // Most calls are allowed. The tools whose conditions may hold are
        // tried first, found through an index of their conditions'
        // prerequisites (`Tools::for_call`) rather than by trying each
        // (measured in the commit that made this): the first of them that
        // allows is the first tool that allows. A denial tries them all,
        // for the reason it gives. Session traffic is not conditioned,
        // so it skips the first round, as does a policy the index would
        // leave no tool out of.
        if !CallRules::may_be_session(message)
            && let Some(tools) = self.policy.tools.for_call(facts.method, &known)
        {
            let decision = self.decide_message_among(tools, message, &known, &mut member);
            if matches!(decision, Decision::Allow(_)) {
                return decision;
            }
        }
        let tools = self.policy.tools.for_method(facts.method);
        self.decide_message_among(tools, message, &known, &mut member)
    }

    /// Decides `message` among `tools` (in policy order).
    fn decide_message_among(
        &self,
        tools: impl Iterator<Item = &'p ToolPolicy>,
        message: &Message,
        known: &Known<'_>,
        member: &mut Option<Bound>,
    ) -> Decision<'p> {
        let mut misses = Misses::default();
        let facts = &self.input.facts;
        let bind_member = || self.vars().bind_with_mcp(mcp_view(message));
        for tool in tools.filter(|t| endpoint_matches(t, facts)) {
            let session = match (
                tool.calls.protocol.is_rpc(),
                tool.calls.match_message(message),
            ) {
                (false, _) => false,
                (true, MessageMatch::Session) => true,
                (true, MessageMatch::Call) => false,
                (true, MessageMatch::No(why)) => {
                    misses.add(DenyRule::CallNotAllowed, || {
                        Miss::written(
                            DenyRule::CallNotAllowed,
                            format!("tool {:?}: {why}", tool.name),
                            None,
                        )
                    });
                    continue;
                }
            };
            if !session && tool.calls.when.is_some() {
                if self.passes_over(tool, known, &mut misses) {
                    continue;
                }
                let bound = member.get_or_insert_with(bind_member);
                if !self.condition(tool, bound, &mut misses) {
                    continue;
                }
            }
            let arguments = match message.arguments() {
                None => ArgumentsRecord::None,
                Some(args) if tool.calls.record_arguments => ArgumentsRecord::Full(args.clone()),
                Some(args) => ArgumentsRecord::Digest(digest(args)),
            };
            let call = CallInfo {
                method: message.method.clone(),
                target: message.target.clone(),
                session,
                arguments,
            };
            // An approval's condition sees the message too.
            if !session && tool.approval.as_ref().is_some_and(|a| a.when.is_some()) {
                member.get_or_insert_with(bind_member);
            }
            return self.allow(tool, Some(call), !session, member.as_ref());
        }
        let what = match (&message.target, &message.method) {
            (Some(t), _) => format!("MCP {} {:?}", t.kind.as_str(), t.name),
            (None, Some(m)) => format!("method {m:?}"),
            (None, None) => "a response".to_owned(),
        };
        self.deny(misses, what, || &*member.get_or_insert_with(bind_member))
    }
}

/// Why `tool`'s condition `when`, which gave `result`, did not allow.
fn condition_reason(tool: &ToolPolicy, when: &Condition, result: Result<bool, String>) -> String {
    match result {
        Err(e) => format!("the condition of tool {:?} failed: {e}", tool.name),
        Ok(_) => format!(
            "the condition of tool {:?} does not hold: {}",
            tool.name,
            when.source()
        ),
    }
}

/// A JSON-RPC message as conditions see it.
fn mcp_view(message: &Message) -> McpView<'_> {
    McpView {
        method: message.method.as_deref(),
        target: message.target.as_ref(),
        arguments: message.arguments(),
        params: message.params.as_ref(),
        id: message.id.as_ref(),
    }
}

/// One request carries one credential: a member of a batch allowed by a
/// tool whose credential (or lack of one) differs from the first allowed
/// member's is denied, never sent with a credential its tool does not bind.
/// Run before [`Decision::admit`], so that such a member is not counted.
pub fn one_credential(decisions: &mut [Decision<'_>]) {
    let mut first: Option<(Option<&str>, &str)> = None;
    for d in decisions.iter_mut() {
        let Decision::Allow(a) = d else { continue };
        let id = a.credential.map(|c| c.id.as_str());
        match first {
            None => first = Some((id, a.tool.name.as_str())),
            Some((want, by)) if want != id => {
                let name = |c: Option<&str>| {
                    c.map_or("no credential".to_owned(), |c| format!("credential {c:?}"))
                };
                *d = Decision::Deny(Denied {
                    rule: DenyRule::MixedCredentials,
                    reason: format!(
                        "tool {:?} allows this call with {}, but the batch goes with {} (tool {by:?}): send it in a request of its own",
                        a.tool.name,
                        name(id),
                        name(want),
                    ),
                    tool: Some(a.tool.name.clone()),
                });
            }
            Some(_) => {}
        }
    }
}

/// SHA-256 of `value` as canonical JSON: object keys sorted (RFC 8785's
/// order for the keys JSON-RPC arguments use), no whitespace.
pub fn digest(value: &Value) -> String {
    let mut hasher = Sha256::new();
    canonical(value, &mut hasher);
    crate::audit::chain::to_hex(&hasher.finalize().into())
}

fn canonical(value: &Value, h: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            h.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                h.update(
                    serde_json::to_string(k)
                        .expect("strings serialise")
                        .as_bytes(),
                );
                h.update(b":");
                canonical(&map[k], h);
            }
            h.update(b"}");
        }
        Value::Array(items) => {
            h.update(b"[");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                canonical(v, h);
            }
            h.update(b"]");
        }
        other => h.update(
            serde_json::to_string(other)
                .expect("JSON values serialise")
                .as_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests;
