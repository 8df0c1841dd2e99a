//! JSON-RPC 2.0 and MCP (Model Context Protocol) as agentguard's proxy sees
//! them, for tools the policy marks `protocol = "mcp"` or `"jsonrpc"`: the
//! request body parsed (bounded and strict), the MCP headers checked against
//! it, the answers agentguard gives in JSON-RPC terms (a denied batch member
//! gets its own error; the rest is forwarded), and list results filtered to
//! what the agent may use.
//!
//! Pure functions over bytes and values: the proxy reads the body (at most
//! the tool's bound), calls these, and does what they say.

mod headers;
mod list_filter;
mod message;
mod reply;
mod strict;

use thiserror::Error;

pub use headers::{HeaderMismatch, MCP_METHOD, MCP_NAME, MCP_PARAM_PREFIX, check as check_headers};
pub use list_filter::{FilterError, ListFilter, ListKind, MAX_LIST_RESPONSE, SseFilter};
pub use message::{Body, MAX_BATCH, Message, MessageKind, Target, TargetKind};
pub use reply::{
    BodyPlan, Forward, HEADER_MISMATCH, INVALID_REQUEST, MemberOutcome, PARSE_ERROR, POLICY_DENIED,
    RATE_LIMITED, error_response,
};
pub use strict::{MAX_DEPTH, parse as parse_strict_json};

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum McpError {
    /// Not JSON, or JSON agentguard refuses to read (duplicate keys, too
    /// deep): JSON-RPC "Parse error".
    #[error("{0}")]
    Parse(String),
    /// JSON, but not a valid JSON-RPC 2.0 message or batch: "Invalid
    /// Request".
    #[error("invalid JSON-RPC request: {0}")]
    Invalid(String),
}

impl McpError {
    /// The JSON-RPC error code to answer with (JSON-RPC §5.1).
    pub fn code(&self) -> i64 {
        match self {
            McpError::Parse(_) => PARSE_ERROR,
            McpError::Invalid(_) => INVALID_REQUEST,
        }
    }
}

/// Whether a `Content-Type` is JSON (`application/json`, or any
/// `application/*+json`), parameters aside.
pub fn is_json_content_type(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json_content_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "text/json",
            "",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!is_json_content_type(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn errors_map_to_json_rpc_codes() {
        assert_eq!(Body::parse(b"{").unwrap_err().code(), PARSE_ERROR);
        assert_eq!(Body::parse(b"{}").unwrap_err().code(), INVALID_REQUEST);
    }
}
