//! `agentguard policy replay`: every request in the audit record decided
//! again under a candidate policy, and what would change: allowed calls now
//! denied, denied ones now allowed, another tool or credential.
//!
//! A request is re-decided from what its event holds: method, host, port,
//! path and query, the kernel's identity, `on_behalf_of`, `intent`, the time,
//! and for a JSON-RPC body each message's method, target and id (its
//! arguments where the policy recorded them). Rates are counted again over
//! the replayed events in order. The record holds no headers and no bodies
//! (nor unrecorded arguments): where a condition the decision evaluates
//! reads one of those, the event is reported as undetermined, with what it
//! needs, instead of guessed.

use std::{collections::BTreeMap, time::SystemTime};

use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    AgentIdentity, AgentPolicy, BodyNeed, Decision, PolicySet, RateLimiter, RequestFacts,
    RequestInput, ToolPolicy, one_credential,
};
use crate::{
    audit::{Decision as Recorded, Event, Kind, RpcCall},
    mcp::{Message, MessageKind, Target, TargetKind},
};

/// How a decision would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Change {
    #[serde(rename = "allow->deny")]
    AllowToDeny,
    #[serde(rename = "deny->allow")]
    DenyToAllow,
    #[serde(rename = "tool-changed")]
    ToolChanged,
    #[serde(rename = "credential-changed")]
    CredentialChanged,
    /// The decision reads data the record does not hold.
    #[serde(rename = "undetermined")]
    Undetermined,
}

impl Change {
    pub const ALL: [Change; 5] = [
        Change::AllowToDeny,
        Change::DenyToAllow,
        Change::ToolChanged,
        Change::CredentialChanged,
        Change::Undetermined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Change::AllowToDeny => "allow->deny",
            Change::DenyToAllow => "deny->allow",
            Change::ToolChanged => "tool-changed",
            Change::CredentialChanged => "credential-changed",
            Change::Undetermined => "undetermined",
        }
    }
}

/// One side of a decision: as recorded, or as the candidate decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub allowed: bool,
    pub tool: Option<String>,
    pub credential: Option<String>,
    /// A denial's rule.
    pub rule: Option<String>,
    pub reason: Option<String>,
}

impl Side {
    /// `allow tool (credential)` or `deny rule`.
    pub fn summary(&self) -> String {
        match (self.allowed, &self.tool, &self.credential) {
            (true, tool, credential) => format!(
                "allow {}{}",
                tool.as_deref().unwrap_or("-"),
                credential
                    .as_deref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ),
            (false, _, _) => format!("deny {}", self.rule.as_deref().unwrap_or("-")),
        }
    }
}

/// A decision that would change.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// The event's sequence number in the audit record.
    pub seq: i64,
    pub time: String,
    pub agent: String,
    pub method: String,
    pub host: String,
    pub path: String,
    /// The message's position in a JSON-RPC batch (0 for a single one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_method: Option<String>,
    /// The MCP tool, prompt or resource the call names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// What changes (tool and credential may both).
    pub changes: Vec<Change>,
    pub old: Side,
    /// `None` when undetermined.
    pub new: Option<Side>,
    /// For an undetermined decision: the data it needs that the record
    /// lacks (`request.headers`, `request.body`, `mcp.arguments`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
}

/// What replaying a record gives.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Request events replayed.
    pub events: usize,
    /// Decisions compared: one per request, or per message of a body.
    pub decisions: usize,
    pub unchanged: usize,
    /// Requests agentguard refused before any policy decision (malformed,
    /// misdirected): nothing to re-decide.
    pub skipped: usize,
    /// Decisions per kind of change.
    pub counts: BTreeMap<&'static str, usize>,
    pub changes: Vec<Replayed>,
}

impl Report {
    /// Whether a call that was allowed would now be denied: what gates a
    /// policy change.
    pub fn denies_allowed(&self) -> bool {
        self.count(Change::AllowToDeny) > 0
    }

    pub fn count(&self, change: Change) -> usize {
        self.counts.get(change.as_str()).copied().unwrap_or(0)
    }
}

/// Re-decides the request events among `events` (oldest first) under
/// `set`.
pub fn replay(set: &PolicySet, events: &[(i64, Event)]) -> Report {
    let mut report = Report::default();
    for c in Change::ALL {
        report.counts.insert(c.as_str(), 0);
    }
    let limiter = RateLimiter::new();
    for (seq, e) in events.iter().filter(|(_, e)| e.kind == Kind::Request) {
        replay_event(set, *seq, e, &limiter, &mut report);
    }
    report
}

/// One unit of comparison: the request, or one message of its body.
struct Unit<'e> {
    member: Option<usize>,
    call: Option<&'e RpcCall>,
    old: Side,
    /// The candidate's decision, and the data it lacks.
    new: Result<Side, Vec<String>>,
}

fn replay_event(set: &PolicySet, seq: i64, e: &Event, limiter: &RateLimiter, report: &mut Report) {
    let calls = match e.rpc_calls.as_deref().map(RpcCall::parse_column) {
        Some(Ok(calls)) => Some(calls),
        // A column this version cannot read: nothing to compare.
        Some(Err(_)) => {
            report.skipped += 1;
            return;
        }
        None => None,
    };
    // Refused before the policy decided (nothing noted of a tool or call).
    if e.decision == Some(Recorded::Refuse) && e.tool.is_none() && calls.is_none() {
        report.skipped += 1;
        return;
    }
    let (Some(agent), Some(method), Some(host), Some(port), Some(path)) = (
        e.agent.as_deref(),
        e.method.as_deref().and_then(|m| m.parse::<Method>().ok()),
        e.host.as_deref(),
        e.dst_port,
        e.path.as_deref(),
    ) else {
        report.skipped += 1;
        return;
    };
    report.events += 1;
    let (bare, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let identity = AgentIdentity {
        name: agent.to_owned(),
        uid: e.uid.unwrap_or_default(),
        gid: e.gid.unwrap_or_default(),
        pid: e.pid.unwrap_or_default(),
        exe: e.exe.as_deref().map(str::to_owned),
        comm: e.comm.as_deref().unwrap_or_default().to_owned(),
        cgroup: e.cgroup_path.as_deref().unwrap_or_default().to_owned(),
    };
    let now = humantime::parse_rfc3339(&e.time).unwrap_or(SystemTime::UNIX_EPOCH);
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let facts = RequestFacts {
        method: &method,
        host,
        port,
        path: bare,
        // The record does not keep the AWS action: tools that name
        // `aws_actions` see none, and deny, as for a request whose action
        // cannot be told.
        aws_action: None,
    };
    let input = RequestInput {
        facts,
        query,
        headers: None,
        json_body: None,
        identity: &identity,
        on_behalf_of: e.on_behalf_of.as_deref(),
        intent: e.intent.as_deref(),
        now,
    };
    let old_request = Side {
        allowed: matches!(e.decision, Some(Recorded::Allow | Recorded::Refuse)),
        tool: e.tool.as_deref().map(str::to_owned),
        credential: e.credential_id.clone(),
        rule: e.rule.as_deref().map(str::to_owned),
        reason: e.reason.as_deref().map(str::to_owned),
    };

    let units: Vec<Unit<'_>> = match (set.agent(agent), &calls) {
        (None, _) => {
            let gone = Side {
                allowed: false,
                tool: None,
                credential: None,
                rule: Some("unknown-agent".into()),
                reason: Some(format!("agent {agent:?} is not in the candidate policy")),
            };
            match &calls {
                Some(calls) => calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Unit {
                        member: Some(i),
                        call: Some(c),
                        old: old_member(c, e),
                        new: Ok(gone.clone()),
                    })
                    .collect(),
                None => vec![Unit {
                    member: None,
                    call: None,
                    old: old_request.clone(),
                    new: Ok(gone),
                }],
            }
        }
        (Some(policy), Some(calls))
            if matches!(policy.body_need(facts), BodyNeed::JsonRpc { .. }) =>
        {
            let messages: Vec<Message> = calls.iter().map(message_of).collect();
            let decider = policy.decider(input);
            let mut decisions: Vec<Decision<'_>> =
                messages.iter().map(|m| decider.decide_message(m)).collect();
            one_credential(&mut decisions);
            calls
                .iter()
                .zip(&messages)
                .zip(decisions)
                .enumerate()
                .map(|(i, ((c, m), d))| {
                    let needs = unrecorded(policy, facts, Some(m), &d, c.arguments.is_some());
                    let d = admit(d, limiter, &needs, now_ms);
                    Unit {
                        member: Some(i),
                        call: Some(c),
                        old: old_member(c, e),
                        new: side(d, needs),
                    }
                })
                .collect()
        }
        (Some(policy), _) => {
            let need = policy.body_need(facts);
            let d = policy.decider(input).decide();
            let mut needs = unrecorded(policy, facts, None, &d, false);
            if matches!(need, BodyNeed::JsonRpc { .. }) {
                // The candidate decides this endpoint's POSTs on a JSON-RPC
                // body the record never held.
                needs.push("request.body".into());
            }
            let d = admit(d, limiter, &needs, now_ms);
            vec![Unit {
                member: None,
                call: None,
                old: old_request.clone(),
                new: side(d, needs),
            }]
        }
    };

    for unit in units {
        report.decisions += 1;
        let (changes, new, needs) = match unit.new {
            Err(needs) => (vec![Change::Undetermined], None, needs),
            Ok(new) => (classify(&unit.old, &new), Some(new), Vec::new()),
        };
        if changes.is_empty() {
            report.unchanged += 1;
            continue;
        }
        for c in &changes {
            *report.counts.entry(c.as_str()).or_default() += 1;
        }
        report.changes.push(Replayed {
            seq,
            time: e.time.clone(),
            agent: agent.to_owned(),
            method: method.to_string(),
            host: host.to_owned(),
            path: path.to_owned(),
            member: unit.member,
            rpc_method: unit.call.and_then(|c| c.method.clone()),
            target: unit.call.and_then(|c| c.target.clone()),
            changes,
            old: unit.old,
            new,
            needs,
        });
    }
}

/// Counts a decision against its rate, as the proxy did in order. An
/// undetermined one is not counted: its count would be a guess too.
fn admit<'p>(
    d: Decision<'p>,
    limiter: &RateLimiter,
    needs: &[String],
    now_ms: u64,
) -> Decision<'p> {
    match needs.is_empty() {
        true => d.admit(limiter, now_ms),
        false => d,
    }
}

/// What the record says was decided for one message.
fn old_member(c: &RpcCall, e: &Event) -> Side {
    let allowed = c.decision == Recorded::Allow;
    Side {
        allowed,
        tool: c.tool.clone(),
        // The request's credential, which an allowed member went with.
        credential: e.credential_id.clone().filter(|_| allowed),
        rule: c.rule.clone(),
        reason: c.reason.clone(),
    }
}

fn side(d: Decision<'_>, needs: Vec<String>) -> Result<Side, Vec<String>> {
    if !needs.is_empty() {
        return Err(needs);
    }
    Ok(match d {
        Decision::Allow(a) => Side {
            allowed: true,
            tool: Some(a.tool.name.clone()),
            credential: a.credential.map(|c| c.id.clone()),
            rule: None,
            reason: None,
        },
        Decision::Deny(denied) => Side {
            allowed: false,
            tool: denied.tool,
            credential: None,
            rule: Some(denied.rule.as_str().to_owned()),
            reason: Some(denied.reason),
        },
    })
}

fn classify(old: &Side, new: &Side) -> Vec<Change> {
    match (old.allowed, new.allowed) {
        (true, false) => vec![Change::AllowToDeny],
        (false, true) => vec![Change::DenyToAllow],
        (false, false) => Vec::new(),
        (true, true) => {
            let mut out = Vec::new();
            if old.tool != new.tool {
                out.push(Change::ToolChanged);
            }
            if old.credential != new.credential {
                out.push(Change::CredentialChanged);
            }
            out
        }
    }
}

/// The data a decision read through conditions that the record does not
/// hold: from the conditions of the tools it tried (up to the one that
/// allowed, or all of them for a denial).
fn unrecorded(
    policy: &AgentPolicy,
    facts: RequestFacts<'_>,
    message: Option<&Message>,
    decision: &Decision<'_>,
    arguments_recorded: bool,
) -> Vec<String> {
    let index = |t: &ToolPolicy| policy.tools.iter().position(|x| std::ptr::eq(x, t));
    let last = match decision {
        Decision::Allow(a) => index(a.tool),
        Decision::Deny(_) => None,
    };
    let mut needs: Vec<String> = Vec::new();
    for tool in policy.conditioned_candidates(facts, message) {
        if let (Some(last), Some(i)) = (last, index(tool))
            && i > last
        {
            break;
        }
        for field in tool.calls.uses().unrecorded(arguments_recorded) {
            if !needs.iter().any(|n| n == field) {
                needs.push(field.to_owned());
            }
        }
    }
    needs
}

/// The message an [`RpcCall`] describes, as far as the record holds it.
fn message_of(c: &RpcCall) -> Message {
    let kind = match (&c.method, &c.id) {
        (None, _) => MessageKind::Response,
        (Some(_), None) => MessageKind::Notification,
        (Some(_), Some(_)) => MessageKind::Request,
    };
    let target = match (c.target_kind.as_deref(), &c.target) {
        (Some(kind), Some(name)) => {
            let kind = match kind {
                "tool" => Some(TargetKind::Tool),
                "prompt" => Some(TargetKind::Prompt),
                "resource" => Some(TargetKind::Resource),
                _ => None,
            };
            kind.map(|kind| Target {
                kind,
                name: name.clone(),
            })
        }
        _ => None,
    };
    let params = match (c.method.as_deref(), &target) {
        (Some("tools/call" | "prompts/get"), Some(t)) => {
            let mut p = json!({"name": t.name});
            if let Some(args) = &c.arguments {
                p["arguments"] = args.clone();
            }
            Some(p)
        }
        (Some("resources/read" | "resources/subscribe" | "resources/unsubscribe"), Some(t)) => {
            Some(json!({"uri": t.name}))
        }
        (Some("completion/complete"), Some(t)) => Some(match t.kind {
            TargetKind::Resource => json!({"ref": {"type": "ref/resource", "uri": t.name}}),
            _ => json!({"ref": {"type": "ref/prompt", "name": t.name}}),
        }),
        // Other methods' params are the arguments, where recorded.
        _ => c.arguments.clone(),
    };
    let mut raw = json!({"jsonrpc": "2.0"});
    if let Some(id) = &c.id {
        raw["id"] = id.clone();
    }
    if let Some(m) = &c.method {
        raw["method"] = Value::String(m.clone());
    }
    if let Some(p) = &params {
        raw["params"] = p.clone();
    }
    Message {
        kind,
        id: c.id.clone(),
        method: c.method.clone(),
        params,
        target,
        raw,
    }
}

#[cfg(test)]
mod tests;
