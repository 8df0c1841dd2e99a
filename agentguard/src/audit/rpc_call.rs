//! One JSON-RPC message of a request's body as its audit event records it
//! (the event's `rpc_calls` column holds a JSON array of these): what it
//! called, how the policy decided it, and its arguments only where the
//! policy records them, otherwise their SHA-256, so that `policy replay` can
//! re-decide it and say when it cannot.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Decision;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcCall {
    /// The message's id; absent for a notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The JSON-RPC method; absent for a response the client sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `tool`, `resource` or `prompt`, with [`RpcCall::target`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kind: Option<String>,
    /// The MCP tool or prompt name, or resource URI, the call names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `allow`, `deny` or `would-deny`.
    pub decision: Decision,
    /// The policy's `[[tool]]` that allowed it (or came closest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Why a denial (`call-not-allowed`, `condition`, `rate-limited`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Session traffic (`initialize`, `tools/list`, ...): no condition or
    /// rate applied.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
    /// The arguments, where the tool sets `record_arguments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// SHA-256 (hex) of the arguments' canonical JSON otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_sha256: Option<String>,
}

impl RpcCall {
    /// The `rpc_calls` column's text for `calls`.
    pub fn column(calls: &[RpcCall]) -> String {
        serde_json::to_string(calls).expect("JSON values serialise")
    }

    /// Reads an event's `rpc_calls` column.
    pub fn parse_column(text: &str) -> Result<Vec<RpcCall>, String> {
        serde_json::from_str(text).map_err(|e| format!("rpc_calls: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn calls_round_trip_and_leave_out_what_is_absent() {
        let calls = vec![
            RpcCall {
                id: Some(json!(3)),
                method: Some("tools/call".into()),
                target_kind: Some("tool".into()),
                target: Some("create_issue".into()),
                decision: Decision::Allow,
                tool: Some("github.write".into()),
                rule: None,
                reason: None,
                session: false,
                arguments: None,
                arguments_sha256: Some("ab".repeat(32)),
            },
            RpcCall {
                id: None,
                method: Some("notifications/initialized".into()),
                target_kind: None,
                target: None,
                decision: Decision::Allow,
                tool: Some("github.read".into()),
                rule: None,
                reason: None,
                session: true,
                arguments: None,
                arguments_sha256: None,
            },
        ];
        let text = RpcCall::column(&calls);
        assert!(
            !text.contains("null") && !text.contains("\"arguments\""),
            "{text}"
        );
        assert_eq!(RpcCall::parse_column(&text).unwrap(), calls);
        assert!(RpcCall::parse_column("{").is_err());
    }
}
