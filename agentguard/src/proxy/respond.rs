//! Responses agentguard itself gives an agent. They carry a JSON body and an
//! `x-agentguard-decision` header, so an agent's developer can tell
//! agentguard's refusal from the tool's own errors.
//!
//! How a refusal is written depends on what the agent speaks, not on why it
//! was refused: [`Render`] is chosen per request and every [`Refusal`] is
//! written through [`refusal`], so a new rendering is one variant and one
//! arm here.

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Response,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER},
};
use serde::Serialize;

use super::{refusal::Refusal, upstream::ProxyBody};
use crate::audit::Decision;

pub const DECISION_HEADER: &str = "x-agentguard-decision";
/// agentguard refused the request on its own account (malformed,
/// misdirected, placeholder misuse, upstream unverifiable).
const DECISION_REFUSE: &str = "refuse";
/// The agent's policy denies the request.
const DECISION_DENY: &str = "deny";
/// The policy would deny it, but the agent runs in audit mode.
const DECISION_WOULD_DENY: &str = "would-deny";

/// How refusals of one request are written for the agent.
#[derive(Debug, Clone, Default)]
pub enum Render {
    /// A JSON body `{"error", "agent", "rule"}` with the refusal's status:
    /// what every HTTP client can show.
    #[default]
    Json,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    agent: &'a str,
    /// The rule that decided: the policy's, or the code of agentguard's
    /// own refusal.
    rule: &'a str,
}

/// The response that tells `agent` it was refused.
pub fn refusal(refusal: &Refusal, agent: &str, render: &Render) -> Response<ProxyBody> {
    let decision = match refusal.decision() {
        Decision::Deny => DECISION_DENY,
        _ => DECISION_REFUSE,
    };
    match render {
        Render::Json => {
            let reason = refusal.to_string();
            let body = serde_json::to_vec(&ErrorBody {
                error: &reason,
                agent,
                rule: refusal.rule(),
            })
            .unwrap_or_default();
            let mut resp = Response::new(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *resp.status_mut() = refusal.status();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp.headers_mut()
                .insert(DECISION_HEADER, HeaderValue::from_static(decision));
            if let Some(secs) = refusal.retry_after() {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            resp
        }
    }
}

/// Marks an upstream's response to a request the policy would have denied
/// (audit mode), so the agent's developer sees it before enforcing.
pub fn mark_would_deny<B>(resp: &mut Response<B>) {
    resp.headers_mut().insert(
        DECISION_HEADER,
        HeaderValue::from_static(DECISION_WOULD_DENY),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(resp: Response<ProxyBody>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn refusals_carry_status_rule_reason_and_decision() {
        let resp = refusal(&Refusal::UpgradeRefused, "bot", &Render::Json);
        assert_eq!(resp.status(), hyper::StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[DECISION_HEADER], "refuse");
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            body(resp).await,
            serde_json::json!({
                "error": "only WebSocket upgrades are relayed",
                "agent": "bot",
                "rule": "upgrade-refused",
            })
        );
        let denied = Refusal::Denied {
            reason: "no tool allows it".into(),
        };
        let resp = refusal(&denied, "bot", &Render::Json);
        assert_eq!(resp.status(), hyper::StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[DECISION_HEADER], "deny");
        assert_eq!(body(resp).await["rule"], "default-deny");
    }
}
