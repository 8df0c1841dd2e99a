//! The claims of a request-bound token (the table in the crate docs).

use serde::{Deserialize, Serialize};

/// Every claim agentguard puts in a token. Unknown claims are ignored when
/// verifying, so a newer minter stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    /// Space-separated scopes (RFC 8693 §4.2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    pub htm: String,
    pub htu: String,
    pub rh: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agentguard: Option<KernelClaims>,
}

impl Claims {
    /// Whether every space-separated scope in `required` is granted.
    pub fn has_scopes(&self, required: &str) -> bool {
        required
            .split_ascii_whitespace()
            .all(|r| self.scope.split_ascii_whitespace().any(|s| s == r))
    }

    /// The agent's name, from a `sub` of the form
    /// `spiffe://<trust-domain>/agent/<name>`.
    pub fn agent(&self) -> Option<&str> {
        self.sub
            .strip_prefix("spiffe://")?
            .split_once("/agent/")
            .map(|(_, name)| name)
    }
}

/// RFC 8693 §4.1: the party the agent acts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    pub sub: String,
}

/// What the kernel said about the caller: a tool can decide on the cgroup or
/// uid without trusting anything the agent sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelClaims {
    pub agent: String,
    pub cgroup: String,
    pub uid: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_must_all_be_granted() {
        let c = Claims {
            iss: String::new(),
            sub: "spiffe://example.org/agent/bot".into(),
            aud: String::new(),
            scope: "tickets:read tickets:write".into(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: String::new(),
            htm: String::new(),
            htu: String::new(),
            rh: String::new(),
            act: None,
            agentguard: None,
        };
        assert!(c.has_scopes("tickets:write"));
        assert!(c.has_scopes("tickets:read tickets:write"));
        assert!(c.has_scopes(""));
        assert!(!c.has_scopes("tickets:admin"));
        assert!(!c.has_scopes("tickets"));
        assert_eq!(c.agent(), Some("bot"));
    }
}
