//! `approval = { timeout = "5m" }` on a `[[tool]]`: every request the tool
//! allows waits for a person (web view, `agentguard approve`) before it is
//! sent. The key is a table so that what may come later (a CEL `when`
//! deciding which calls need approval, once conditions exist) is one more
//! key, and every policy written today stays valid.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

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
}

/// The validated form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Undecided after this long, the request is refused (403).
    pub timeout: Duration,
}

pub(super) fn parse(section: &ApprovalSection) -> Result<ApprovalPolicy, String> {
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
    Ok(ApprovalPolicy { timeout })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(timeout: Option<&str>) -> ApprovalSection {
        ApprovalSection {
            timeout: timeout.map(str::to_owned),
        }
    }

    #[test]
    fn timeouts_default_and_are_bounded() {
        assert_eq!(parse(&section(None)).unwrap().timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            parse(&section(Some("90s"))).unwrap().timeout,
            Duration::from_secs(90)
        );
        assert!(parse(&section(Some("2h"))).unwrap_err().contains("between"));
        assert!(parse(&section(Some("0s"))).unwrap_err().contains("between"));
        assert!(parse(&section(Some("soon"))).unwrap_err().contains("soon"));
    }
}
