//! `approval = { timeout = "5m", when = '...' }` on a `[[tool]]`: a request
//! the tool allows waits for a person (web view, `agentguard approve`)
//! before it is sent: every one, or those for which the CEL `when` holds
//! (the same variables as the tool's own `when`). The protocol messages an
//! MCP session needs (`initialize`, `tools/list`, ...) never wait: only
//! calls do.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{calls::CallRules, condition::Condition};

/// When no `timeout` is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a request may be held: the agent's connection and a place in
/// the queue stay taken meanwhile.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The file's form.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApprovalSection {
    /// How long a request waits for a verdict, e.g. `"5m"` (the default);
    /// from 1s to 60m. Undecided by then, it is refused.
    pub timeout: Option<String>,
    /// Only the calls for which this CEL condition holds wait (the tool's
    /// `when` variables: `request`, `mcp`, `agent`, `on_behalf_of`,
    /// `intent`, `now`); without it, every call the tool allows. A
    /// condition that fails to evaluate counts as holding: the call waits.
    pub when: Option<String>,
}

/// The validated form.
#[derive(Debug, Clone)]
pub struct ApprovalPolicy {
    /// Undecided after this long, the request is refused (403).
    pub timeout: Duration,
    /// Which calls wait; `None`: all.
    pub when: Option<Condition>,
}

impl ApprovalPolicy {
    /// Whether a call waits, given its condition's outcome (`None` when
    /// there is no condition). Fails closed: an error holds the call.
    pub fn holds(&self, outcome: Option<Result<bool, String>>) -> bool {
        !matches!(outcome, Some(Ok(false)))
    }
}

/// `calls`: the tool's own rules, which say what its conditions may read.
pub(super) fn parse(
    section: &ApprovalSection,
    calls: &CallRules,
) -> Result<ApprovalPolicy, String> {
    let timeout = match &section.timeout {
        None => DEFAULT_TIMEOUT,
        Some(t) => humantime::parse_duration(t)
            .map_err(|_| format!("timeout {t:?} is not a duration (like 5m)"))?,
    };
    if timeout < Duration::from_secs(1) || timeout > MAX_TIMEOUT {
        return Err(format!(
            "timeout must be between 1s and {}m: a held request keeps the agent's connection open",
            MAX_TIMEOUT.as_secs() / 60
        ));
    }
    let when = match &section.when {
        None => None,
        Some(source) => {
            let condition = Condition::compile(source).map_err(|m| format!("when: {m}"))?;
            let uses = condition.uses();
            if uses.mcp && !calls.protocol.is_rpc() {
                return Err(
                    "when: mcp is only set for protocol = \"mcp\" or \"jsonrpc\" tools".into(),
                );
            }
            // The decision is made before a body is read, unless the tool
            // reads bodies anyway.
            if uses.request_body && !calls.reads_body() {
                return Err("when: request.body is only read by tools that read bodies (protocol = \"mcp\" or \"jsonrpc\", or a tool when that reads request.body)".into());
            }
            Some(condition)
        }
    };
    Ok(ApprovalPolicy { timeout, when })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(timeout: Option<&str>) -> ApprovalSection {
        ApprovalSection {
            timeout: timeout.map(str::to_owned),
            when: None,
        }
    }

    fn http() -> CallRules {
        CallRules::default()
    }

    #[test]
    fn timeouts_default_and_are_bounded() {
        let parse = |s| parse(&s, &http());
        assert_eq!(parse(section(None)).unwrap().timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            parse(section(Some("90s"))).unwrap().timeout,
            Duration::from_secs(90)
        );
        assert!(parse(section(Some("2h"))).unwrap_err().contains("between"));
        assert!(parse(section(Some("0s"))).unwrap_err().contains("between"));
        assert!(parse(section(Some("soon"))).unwrap_err().contains("soon"));
    }

    #[test]
    fn conditions_read_only_what_the_tool_has() {
        let with_when = |w: &str| ApprovalSection {
            timeout: None,
            when: Some(w.to_owned()),
        };
        let ok = parse(&with_when("request.path.startsWith('/admin')"), &http()).unwrap();
        assert!(ok.when.is_some());
        let err = parse(&with_when("request.path =="), &http()).err();
        assert!(err.is_some());
        let err = parse(&with_when("mcp.tool == 'merge'"), &http()).unwrap_err();
        assert!(err.contains("mcp is only set"), "{err}");
        let err = parse(&with_when("request.body.amount > 1000"), &http()).unwrap_err();
        assert!(err.contains("request.body is only read"), "{err}");
    }

    #[test]
    fn a_condition_that_cannot_be_evaluated_holds_the_call() {
        let policy = parse(&section(None), &http()).unwrap();
        assert!(policy.holds(None));
        assert!(policy.holds(Some(Ok(true))));
        assert!(policy.holds(Some(Err("no such key".into()))));
        assert!(!policy.holds(Some(Ok(false))));
    }
}
