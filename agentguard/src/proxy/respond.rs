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
    Response, StatusCode,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER},
};
use serde::Serialize;
use serde_json::{Value, json};

use super::{refusal::Refusal, upstream::ProxyBody};
use crate::{audit::Decision, mcp};

pub const DECISION_HEADER: &str = "x-agentguard-decision";
/// agentguard refused the request on its own account (malformed,
/// misdirected, placeholder misuse, upstream unverifiable).
pub const DECISION_REFUSE: &str = "refuse";
/// The agent's policy denies the request.
pub const DECISION_DENY: &str = "deny";
/// The policy would deny it, but the agent runs in audit mode.
const DECISION_WOULD_DENY: &str = "would-deny";

/// How refusals of one request are written for the agent.
#[derive(Debug, Clone, Default)]
pub enum Render {
    /// A JSON body `{"error", "agent", "rule"}` with the refusal's status:
    /// what every HTTP client can show.
    #[default]
    Json,
    /// JSON-RPC error responses, for a POST to an MCP or JSON-RPC tool: an
    /// MCP SDK reports them as the call's error, where a bare 4xx would be
    /// a transport failure. One error per request of the body (`ids`, an
    /// array for a batch), or one with a null id when the body could not
    /// be read. A policy's denial is the call's answer (HTTP 200); other
    /// refusals keep their status (429 over a rate, 400 for a body
    /// agentguard cannot read, ...), which MCP SDKs read the JSON-RPC error
    /// of too.
    JsonRpc { ids: Vec<Value>, batch: bool },
    /// An AWS SDK's request: the error in the shape its protocol parses
    /// (an SDK that cannot parse an error reports a parser failure, not
    /// the refusal).
    Aws(AwsDialect),
}

/// The error shapes of AWS protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsDialect {
    /// EC2's query protocol: `<Response><Errors><Error>`.
    Ec2,
    /// The query protocol (STS, IAM, SQS, SNS): `<ErrorResponse><Error>`.
    Query,
    /// S3's REST-XML: `<Error>`.
    S3,
    /// The JSON protocols: `{"__type", "message"}`.
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

/// The JSON-RPC error (code, message, data) that tells `agent` a call was
/// refused: the message names agentguard and its reason, `data` the rule
/// (and `retryAfterMs` over a rate).
pub fn json_rpc_error(refusal: &Refusal, agent: &str) -> (i64, String, Value) {
    let mut data = json!({
        "agent": agent,
        "rule": refusal.rule(),
        "decision": decision_str(refusal),
    });
    if let Some(secs) = refusal.retry_after() {
        data["retryAfterMs"] = json!(secs.saturating_mul(1000));
    }
    (
        refusal.json_rpc_code(),
        format!("agentguard: {refusal}"),
        data,
    )
}

fn decision_str(refusal: &Refusal) -> &'static str {
    match refusal.decision() {
        Decision::Deny => DECISION_DENY,
        _ => DECISION_REFUSE,
    }
}

/// The response that tells `agent` it was refused.
pub fn refusal(refusal: &Refusal, agent: &str, render: &Render) -> Response<ProxyBody> {
    let (status, body) = match render {
        Render::Aws(dialect) => return aws_error(refusal, *dialect, decision_str(refusal)),
        Render::Json => {
            let reason = refusal.to_string();
            let body = serde_json::to_vec(&ErrorBody {
                error: &reason,
                agent,
                rule: refusal.rule(),
            })
            .unwrap_or_default();
            (refusal.status(), body)
        }
        Render::JsonRpc { ids, batch } => {
            let (code, message, data) = json_rpc_error(refusal, agent);
            let error =
                |id: Option<&Value>| mcp::error_response(id, code, &message, Some(data.clone()));
            let value = match (batch, ids.as_slice()) {
                (false, ids) => error(ids.first()),
                (true, []) => Value::Array(vec![error(None)]),
                (true, ids) => Value::Array(ids.iter().map(|id| error(Some(id))).collect()),
            };
            let status = if refusal.answers_the_call() {
                StatusCode::OK
            } else {
                refusal.status()
            };
            (status, serde_json::to_vec(&value).unwrap_or_default())
        }
    };
    let mut resp = json_response(status, body, decision_str(refusal));
    if let Some(secs) = refusal.retry_after() {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// A JSON response agentguard writes itself, marked with its decision.
pub fn json_response(
    status: StatusCode,
    body: Vec<u8>,
    decision: &'static str,
) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(DECISION_HEADER, HeaderValue::from_static(decision));
    resp
}

/// XML text with `&`, `<`, `>` and quotes escaped.
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn aws_error(
    refusal: &Refusal,
    dialect: AwsDialect,
    decision: &'static str,
) -> Response<ProxyBody> {
    let status = refusal.status();
    let code = match status.as_u16() {
        403 => "AccessDenied",
        413 => "EntityTooLarge",
        400..=499 => "InvalidRequest",
        _ => "ServiceUnavailable",
    };
    let message = format!("{} (agentguard rule {})", refusal, refusal.rule());
    let (content_type, body) = match dialect {
        AwsDialect::Json => (
            "application/x-amz-json-1.1",
            serde_json::json!({ "__type": code, "message": message }).to_string(),
        ),
        AwsDialect::Ec2 => (
            "text/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>agentguard</RequestID></Response>",
                xml_escape(&message)
            ),
        ),
        AwsDialect::Query => (
            "text/xml",
            format!(
                "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>agentguard</RequestId></ErrorResponse>",
                xml_escape(&message)
            ),
        ),
        AwsDialect::S3 => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><RequestId>agentguard</RequestId></Error>",
                xml_escape(&message)
            ),
        ),
    };
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(DECISION_HEADER, HeaderValue::from_static(decision));
    resp
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
            rule: "default-deny",
            reason: "no tool allows it".into(),
        };
        let resp = refusal(&denied, "bot", &Render::Json);
        assert_eq!(resp.status(), hyper::StatusCode::FORBIDDEN);
        assert_eq!(resp.headers()[DECISION_HEADER], "deny");
        assert_eq!(body(resp).await["rule"], "default-deny");
        // Over a rate: 429 with Retry-After, whatever the rendering.
        let limited = Refusal::RateLimited {
            rule: "rate-limited",
            reason: "tool \"t\" allows 20/min".into(),
            retry_after_secs: 7,
        };
        let resp = refusal(&limited, "bot", &Render::Json);
        assert_eq!(resp.status(), hyper::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "7");
        assert_eq!(body(resp).await["rule"], "rate-limited");
    }

    #[tokio::test]
    async fn json_rpc_clients_get_errors_with_their_ids() {
        let denied = Refusal::Denied {
            rule: "call-not-allowed",
            reason: "MCP tool \"delete_repo\" is not allowed".into(),
        };
        let single = Render::JsonRpc {
            ids: vec![json!(7)],
            batch: false,
        };
        // A denial is the call's answer: HTTP 200, the error names
        // agentguard and its reason.
        let resp = refusal(&denied, "bot", &single);
        assert_eq!(resp.status(), hyper::StatusCode::OK);
        assert_eq!(resp.headers()[DECISION_HEADER], "deny");
        let v = body(resp).await;
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], mcp::POLICY_DENIED);
        assert_eq!(
            v["error"]["message"],
            "agentguard: MCP tool \"delete_repo\" is not allowed"
        );
        assert_eq!(v["error"]["data"]["rule"], "call-not-allowed");
        // Over a rate: 429, Retry-After, -32023 with retryAfterMs.
        let limited = Refusal::RateLimited {
            rule: "rate-limited",
            reason: "over".into(),
            retry_after_secs: 3,
        };
        let resp = refusal(&limited, "bot", &single);
        assert_eq!(resp.status(), hyper::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "3");
        let v = body(resp).await;
        assert_eq!(v["error"]["code"], mcp::RATE_LIMITED);
        assert_eq!(v["error"]["data"]["retryAfterMs"], 3000);
        // A batch: one error per request; a body never read: a null id.
        let batch = Render::JsonRpc {
            ids: vec![json!(1), json!("b")],
            batch: true,
        };
        let resp = refusal(&Refusal::UpstreamFailed("down".into()), "bot", &batch);
        assert_eq!(resp.status(), hyper::StatusCode::BAD_GATEWAY);
        let v = body(resp).await;
        assert_eq!(v[0]["id"], 1);
        assert_eq!(v[1]["id"], "b");
        assert_eq!(v[1]["error"]["code"], -32603);
        let unread = Render::JsonRpc {
            ids: vec![],
            batch: false,
        };
        let resp = refusal(&Refusal::BodyTooLarge { max: 10 }, "bot", &unread);
        assert_eq!(resp.status(), hyper::StatusCode::PAYLOAD_TOO_LARGE);
        let v = body(resp).await;
        assert_eq!(v["id"], Value::Null);
        assert_eq!(v["error"]["code"], mcp::INVALID_REQUEST);
    }

    #[tokio::test]
    async fn an_approvers_no_is_the_calls_answer() {
        let single = Render::JsonRpc {
            ids: vec![json!("call-1")],
            batch: false,
        };
        let denied = Refusal::ApprovalDenied {
            id: "ap-1".into(),
            by: "alice".into(),
            reason: "not today".into(),
        };
        let timed_out = Refusal::ApprovalTimedOut {
            id: "ap-2".into(),
            after: std::time::Duration::from_secs(300),
        };
        for (refusal_, rule) in [(denied, "approval-denied"), (timed_out, "approval-timeout")] {
            // To an MCP client: the call's error, not a transport failure.
            let resp = refusal(&refusal_, "bot", &single);
            assert_eq!(resp.status(), hyper::StatusCode::OK);
            let v = body(resp).await;
            assert_eq!(v["id"], "call-1");
            assert_eq!(v["error"]["code"], mcp::POLICY_DENIED);
            assert_eq!(v["error"]["data"]["rule"], rule);
            // To a plain HTTP client: still a 403.
            let resp = refusal(&refusal_, "bot", &Render::Json);
            assert_eq!(resp.status(), hyper::StatusCode::FORBIDDEN);
        }
    }
}
