//! `agentguard policy test --cases FILE`: a file of requests with the
//! decisions expected for them, run against a policy set the way the proxy
//! decides (the body read and bounded, the JSON-RPC members parsed and
//! checked against the MCP headers, each decided, rate limits counted), like
//! `opa test`. Secrets are never read.
//!
//! A case file is TOML:
//!
//! ```toml
//! [[case]]
//! name = "issues in acme may be created"
//! agent = "github-mcp-agent"
//! method = "POST"
//! url = "https://api.githubcopilot.com/mcp/"
//! mcp = { tool = "create_issue", arguments = { owner = "acme", repo = "widgets" } }
//! identity = { exe = "/usr/bin/python3", uid = 1000 }
//! time = "2026-01-05T10:00:00Z"
//! expect = "allow"
//! tool = "github.write"
//! ```
//!
//! Each case starts with fresh rate counts; `repeat = 21` sends its request
//! 21 times at the case's time, so it can expect `rate-limited` for the last.

use std::{path::Path, time::SystemTime};

use hyper::{
    HeaderMap, Method, Uri,
    header::{CONTENT_TYPE, HeaderName, HeaderValue},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AgentIdentity, BodyNeed, Decision, Mode, PolicySet, RateLimiter, RequestFacts, RequestInput,
    normalize_path,
};
use crate::mcp;

/// A case file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
}

/// One request and what the policy should decide for it.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case checks, for the report.
    pub name: Option<String>,
    pub agent: String,
    pub method: String,
    /// `https://host[:port]/path[?query]` (or `http://`).
    pub url: String,
    /// Request headers (the content type defaults to JSON when a body is
    /// given).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body as text (a JSON-RPC message or batch, or any JSON).
    pub body: Option<String>,
    /// An MCP call, as a shorthand for its JSON-RPC body.
    pub mcp: Option<McpCall>,
    /// The kernel identity of the calling process.
    #[serde(default)]
    pub identity: Option<AgentIdentity>,
    pub on_behalf_of: Option<String>,
    pub intent: Option<String>,
    /// The AWS service (its signing name: `ec2`, `s3`, `sts`) the request
    /// is SigV4-signed for. Its action is then told from `X-Amz-Target`,
    /// the `Action` parameter or the S3 method, bucket and key, as the
    /// proxy tells it, for tools that name `aws_actions`.
    pub aws_service: Option<String>,
    /// RFC 3339 (default: now).
    pub time: Option<String>,
    /// Send the request this many times (default 1); the expectation is for
    /// the last.
    pub repeat: Option<u32>,
    /// The decision: one for a single message or request, or one per
    /// member of a batch.
    pub expect: Expect,
    /// The tool that allows it.
    pub tool: Option<String>,
    /// The credential injected.
    pub credential: Option<String>,
    /// The rule of a denial (`default-deny`, `call-not-allowed`,
    /// `condition`, `rate-limited`, ...).
    pub rule: Option<String>,
    /// Text the reason must contain.
    pub reason: Option<String>,
}

/// `{ tool = "x", arguments = {...} }`, `{ resource = "uri" }`,
/// `{ prompt = "p", arguments = {...} }` or `{ method = "m", params = ... }`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpCall {
    pub method: Option<String>,
    pub tool: Option<String>,
    pub resource: Option<String>,
    pub prompt: Option<String>,
    #[schemars(with = "Option<std::collections::BTreeMap<String, serde_json::Value>>")]
    pub arguments: Option<toml::Table>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub params: Option<toml::Value>,
    /// The JSON-RPC id (default 1; `false` for a notification).
    #[schemars(with = "Option<serde_json::Value>")]
    pub id: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Expect {
    One(Outcome),
    Each(Vec<Outcome>),
}

impl Default for Expect {
    fn default() -> Self {
        Expect::One(Outcome::Allow)
    }
}

/// What happens to a request or message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Allow,
    Deny,
    /// Denied, but the agent is in audit mode.
    WouldDeny,
    RateLimited,
    /// agentguard refuses the request as malformed (a body it cannot read,
    /// over `max_body`, MCP headers that disagree with it).
    Refuse,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::WouldDeny => "would-deny",
            Outcome::RateLimited => "rate-limited",
            Outcome::Refuse => "refuse",
        }
    }
}

/// The decision for one request, or one member of its body.
#[derive(Debug, Clone, Serialize)]
pub struct Decided {
    pub decision: Outcome,
    pub tool: Option<String>,
    pub credential: Option<String>,
    /// The JSON-RPC method, for a member.
    pub rpc_method: Option<String>,
    /// The MCP tool, resource or prompt named.
    pub mcp_target: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
    pub retry_after_secs: Option<u64>,
}

impl Decided {
    fn refuse(reason: String) -> Self {
        Decided {
            decision: Outcome::Refuse,
            tool: None,
            credential: None,
            rpc_method: None,
            mcp_target: None,
            rule: Some("refuse".into()),
            reason,
            retry_after_secs: None,
        }
    }
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// What did not match; empty when it passed.
    pub mismatches: Vec<String>,
    pub got: Vec<Decided>,
}

/// Reads a case file.
pub fn read_cases(path: &Path) -> Result<CaseFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("failed to read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(0);
        format!("{}:{line}: {}", path.display(), e.message().trim())
    })
}

/// Runs every case in order against `set`.
pub fn run_cases(set: &PolicySet, cases: &[Case]) -> Vec<CaseResult> {
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let name = case.name.clone().unwrap_or_else(|| {
                format!(
                    "case {} ({} {} {})",
                    i + 1,
                    case.agent,
                    case.method,
                    case.url
                )
            });
            match run_case(set, case, &RateLimiter::new()) {
                Err(e) => CaseResult {
                    name,
                    passed: false,
                    mismatches: vec![e],
                    got: Vec::new(),
                },
                Ok(got) => {
                    let mismatches = compare(case, &got);
                    CaseResult {
                        name,
                        passed: mismatches.is_empty(),
                        mismatches,
                        got,
                    }
                }
            }
        })
        .collect()
}

fn compare(case: &Case, got: &[Decided]) -> Vec<String> {
    let mut out = Vec::new();
    let expected: Vec<Outcome> = match &case.expect {
        Expect::One(o) => vec![*o; got.len().max(1)],
        Expect::Each(list) => list.clone(),
    };
    if expected.len() != got.len() {
        out.push(format!(
            "expected {} decisions, got {}",
            expected.len(),
            got.len()
        ));
        return out;
    }
    for (i, (want, d)) in expected.iter().zip(got).enumerate() {
        let at = if got.len() > 1 {
            format!("member {i}: ")
        } else {
            String::new()
        };
        if *want != d.decision {
            out.push(format!(
                "{at}expected {}, got {} ({})",
                want.as_str(),
                d.decision.as_str(),
                d.reason
            ));
        }
    }
    // The detail expectations apply to the first decision that matches
    // them, or to the only one.
    let first = &got[0];
    let check =
        |what: &str, want: &Option<String>, have: &Option<String>, out: &mut Vec<String>| {
            if let Some(w) = want
                && have.as_deref() != Some(w.as_str())
                && !got.iter().any(|d| match what {
                    "tool" => d.tool.as_deref() == Some(w),
                    "credential" => d.credential.as_deref() == Some(w),
                    _ => d.rule.as_deref() == Some(w),
                })
            {
                out.push(format!(
                    "expected {what} {w:?}, got {:?}",
                    have.as_deref().unwrap_or("none")
                ));
            }
        };
    check("tool", &case.tool, &first.tool, &mut out);
    check("credential", &case.credential, &first.credential, &mut out);
    check("rule", &case.rule, &first.rule, &mut out);
    if let Some(r) = &case.reason
        && !got.iter().any(|d| d.reason.contains(r.as_str()))
    {
        out.push(format!(
            "expected a reason containing {r:?}, got {:?}",
            first.reason
        ));
    }
    out
}

/// Decides one case the way the proxy would.
pub fn run_case(
    set: &PolicySet,
    case: &Case,
    limiter: &RateLimiter,
) -> Result<Vec<Decided>, String> {
    let policy = set
        .agent(&case.agent)
        .ok_or_else(|| format!("no agent named {:?} in the policy", case.agent))?;
    let method: Method = case
        .method
        .parse()
        .map_err(|_| format!("{:?} is not an HTTP method", case.method))?;
    let target = Target::parse(&case.url)?;
    let now = match &case.time {
        None => SystemTime::now(),
        Some(t) => {
            let parsed =
                chrono::DateTime::parse_from_rfc3339(t).map_err(|e| format!("time {t:?}: {e}"))?;
            SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(
                    u64::try_from(parsed.timestamp_millis()).map_err(|_| "time before 1970")?,
                )
        }
    };
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let body = case_body(case)?;
    let mut headers = HeaderMap::new();
    for (k, v) in &case.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("header name {k:?}"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("header {k:?} value"))?;
        headers.append(name, value);
    }
    if body.is_some() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let mut identity = case.identity.clone().unwrap_or_default();
    if identity.name.is_empty() {
        identity.name = case.agent.clone();
    }
    if identity.cgroup.is_empty() {
        identity.cgroup = policy.cgroup.to_string();
    }
    // As the proxy: an action that cannot be told is none, and no tool
    // that names aws_actions matches.
    let aws_action = match &case.aws_service {
        None => None,
        Some(service) => {
            let uri: hyper::Uri = case
                .url
                .parse()
                .map_err(|e| format!("invalid URL {:?}: {e}", case.url))?;
            crate::credentials::sigv4::action(
                service,
                &method,
                &target.host,
                &uri,
                &headers,
                body.as_deref(),
            )
        }
    };
    let facts = RequestFacts {
        method: &method,
        host: &target.host,
        port: target.port,
        path: &target.path,
        aws_action: aws_action.as_deref(),
    };
    let audit = policy.mode == Mode::Audit;
    let mut last = Vec::new();
    for _ in 0..case.repeat.unwrap_or(1).max(1) {
        last = decide_once(
            policy,
            facts,
            &target,
            &headers,
            body.as_deref(),
            &identity,
            case,
            now,
            now_ms,
            limiter,
            audit,
        );
    }
    Ok(last)
}

#[allow(clippy::too_many_arguments)]
fn decide_once(
    policy: &super::AgentPolicy,
    facts: RequestFacts<'_>,
    target: &Target,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    identity: &AgentIdentity,
    case: &Case,
    now: SystemTime,
    now_ms: u64,
    limiter: &RateLimiter,
    audit: bool,
) -> Vec<Decided> {
    let json_type = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| mcp::is_json_content_type(v.as_bytes()));
    let bytes = body.unwrap_or_default();
    let mut input = RequestInput {
        facts,
        query: target.query.as_deref(),
        headers: Some(headers),
        json_body: None,
        identity,
        on_behalf_of: case.on_behalf_of.as_deref(),
        intent: case.intent.as_deref(),
        now,
    };
    let outcome = |d: Decision<'_>, member: Option<&mcp::Message>| {
        let d = d.admit(limiter, now_ms);
        decided(d, member, audit)
    };
    match policy.body_need(facts) {
        BodyNeed::None => vec![outcome(policy.decider(input).decide(), None)],
        BodyNeed::Json { max } => {
            if bytes.len() > max {
                return vec![Decided::refuse(format!("body over {max} bytes"))];
            }
            let parsed = if json_type && !bytes.is_empty() {
                match mcp::parse_strict_json(bytes) {
                    Ok(v) => Some(v),
                    Err(e) => return vec![Decided::refuse(e)],
                }
            } else {
                None
            };
            input.json_body = parsed.as_ref();
            vec![outcome(policy.decider(input).decide(), None)]
        }
        BodyNeed::JsonRpc { max } => {
            if bytes.len() > max {
                return vec![Decided::refuse(format!("body over {max} bytes (max_body)"))];
            }
            if !json_type {
                return vec![Decided::refuse(
                    "a JSON-RPC request must be application/json".into(),
                )];
            }
            let parsed = match mcp::Body::parse(bytes) {
                Ok(b) => b,
                Err(e) => return vec![Decided::refuse(e.to_string())],
            };
            if let Err(e) = mcp::check_headers(headers, &parsed) {
                return vec![Decided::refuse(e.to_string())];
            }
            let json = mcp::parse_strict_json(bytes).ok();
            input.json_body = json.as_ref();
            let decider = policy.decider(input);
            let mut decisions: Vec<Decision<'_>> = parsed
                .messages()
                .iter()
                .map(|m| decider.decide_message(m))
                .collect();
            super::one_credential(&mut decisions);
            decisions
                .into_iter()
                .zip(parsed.messages())
                .map(|(d, m)| outcome(d, Some(m)))
                .collect()
        }
    }
}

fn decided(d: Decision<'_>, member: Option<&mcp::Message>, audit: bool) -> Decided {
    let rpc_method = member.and_then(|m| m.method.clone());
    let mcp_target = member
        .and_then(|m| m.target.as_ref())
        .map(|t| t.name.clone());
    match d {
        Decision::Allow(a) => Decided {
            decision: Outcome::Allow,
            tool: Some(a.tool.name.clone()),
            credential: a.credential.map(|c| c.id.clone()),
            rpc_method,
            mcp_target,
            rule: None,
            reason: a.tool.allowed.reason.to_string(),
            retry_after_secs: None,
        },
        Decision::Deny(denied) => {
            let retry = match denied.rule {
                super::DenyRule::RateLimited { retry_after_secs } => Some(retry_after_secs),
                _ => None,
            };
            Decided {
                decision: match (audit, retry) {
                    (true, _) => Outcome::WouldDeny,
                    (false, Some(_)) => Outcome::RateLimited,
                    (false, None) => Outcome::Deny,
                },
                tool: None,
                credential: None,
                rpc_method,
                mcp_target,
                rule: Some(denied.rule.as_str().to_owned()),
                reason: denied.reason,
                retry_after_secs: retry,
            }
        }
    }
}

/// The body a case sends: its `body`, or the JSON-RPC message its `mcp`
/// describes.
fn case_body(case: &Case) -> Result<Option<Vec<u8>>, String> {
    match (&case.body, &case.mcp) {
        (Some(_), Some(_)) => Err("give body or mcp, not both".into()),
        (Some(b), None) => Ok(Some(b.clone().into_bytes())),
        (None, None) => Ok(None),
        (None, Some(call)) => {
            let json = |v: &toml::Value| serde_json::to_value(v).map_err(|e| e.to_string());
            let args = call
                .arguments
                .as_ref()
                .map(|t| json(&toml::Value::Table(t.clone())))
                .transpose()?;
            let (method, params) = match (&call.tool, &call.resource, &call.prompt) {
                (Some(t), None, None) => (
                    "tools/call",
                    Some(json!({"name": t, "arguments": args.unwrap_or_else(|| json!({}))})),
                ),
                (None, Some(uri), None) => ("resources/read", Some(json!({"uri": uri}))),
                (None, None, Some(p)) => (
                    "prompts/get",
                    Some(json!({"name": p, "arguments": args.unwrap_or_else(|| json!({}))})),
                ),
                (None, None, None) => (
                    call.method
                        .as_deref()
                        .ok_or("mcp needs tool, resource, prompt or method")?,
                    call.params.as_ref().map(json).transpose()?,
                ),
                _ => return Err("mcp: give one of tool, resource and prompt".into()),
            };
            let method = call.method.as_deref().unwrap_or(method);
            let mut msg = json!({"jsonrpc": "2.0", "method": method});
            match &call.id {
                Some(toml::Value::Boolean(false)) => {}
                Some(id) => msg["id"] = json(id)?,
                None => msg["id"] = json!(1),
            }
            if let Some(p) = params {
                msg["params"] = p;
            }
            Ok(Some(
                serde_json::to_vec(&msg).expect("JSON values serialise"),
            ))
        }
    }
}

/// The parts of a case's URL a decision uses.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let scheme_port = match uri.scheme_str() {
            Some("https") => 443,
            Some("http") => 80,
            _ => return Err(format!("URL {url:?} must start with https:// or http://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let path = normalize_path(uri.path()).map_err(|e| format!("path refused: {e}"))?;
        Ok(Target {
            host,
            port: uri.port_u16().unwrap_or(scheme_port),
            path,
            query: uri.query().map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests;
