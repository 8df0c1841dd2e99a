//! Responses agentguard itself gives an agent. They carry a JSON body and an
//! `x-agentguard-decision` header, so an agent's developer can tell
//! agentguard's refusal from the tool's own errors.

use http_body_util::{BodyExt as _, Full};
use hyper::{Response, StatusCode, body::Bytes, header::CONTENT_TYPE};
use serde::Serialize;

use super::upstream::ProxyBody;

pub const DECISION_HEADER: &str = "x-agentguard-decision";
/// agentguard refused the request on its own account (malformed,
/// misdirected, placeholder misuse, upstream unverifiable).
pub const DECISION_REFUSE: &str = "refuse";
/// The agent's policy denies the request.
pub const DECISION_DENY: &str = "deny";
/// The policy would deny it, but the agent runs in audit mode.
pub const DECISION_WOULD_DENY: &str = "would-deny";

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    agent: &'a str,
    /// The policy rule that decided; none for protocol-level refusals.
    rule: Option<&'a str>,
}

pub fn error(
    status: StatusCode,
    decision: &'static str,
    agent: &str,
    rule: Option<&str>,
    reason: &str,
) -> Response<ProxyBody> {
    let body = serde_json::to_vec(&ErrorBody {
        error: reason,
        agent,
        rule,
    })
    .unwrap_or_default();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("static"));
    resp.headers_mut()
        .insert(DECISION_HEADER, decision.parse().expect("static"));
    resp
}
