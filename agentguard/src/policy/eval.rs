//! Deciding one HTTP request against an agent's tools. Default deny: a
//! request is allowed only if a `[[tool]]` matches its host, port, method and
//! normalised path; the first matching tool (in file order) decides.
//!
//! This decision sees the request head only. Tools that need more (a
//! `protocol` other than http, a `when` condition, a `rate`) never allow
//! here: they are decided by [`super::decide`], which the proxy calls with
//! the body, the identity and a rate limiter.

use hyper::Method;

use super::model::{AgentPolicy, CredentialPolicy, ToolPolicy};

/// The parts of a request a decision looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// Host from SNI/Host (already checked to agree), without port.
    pub host: &'a str,
    /// The connection's original destination port.
    pub port: u16,
    /// The normalised path (see [`super::normalize_path`]), no query.
    pub path: &'a str,
}

#[derive(Debug)]
pub enum Verdict<'p> {
    Allow {
        tool: &'p ToolPolicy,
        credential: Option<&'p CredentialPolicy>,
    },
    Deny {
        reason: String,
    },
}

impl AgentPolicy {
    pub fn evaluate(&self, req: RequestFacts<'_>) -> Verdict<'_> {
        let on_host: Vec<&ToolPolicy> = self
            .tools
            .iter()
            .filter(|t| t.host.matches(req.host) && t.port.is_none_or(|p| p == req.port))
            .collect();
        if on_host.is_empty() {
            return Verdict::Deny {
                reason: format!(
                    "no tool of agent {:?} allows host {}:{}",
                    self.name, req.host, req.port
                ),
            };
        }
        let mut call_aware = None;
        let tool = on_host.into_iter().find(|t| {
            let matches =
                t.methods.contains(req.method) && t.paths.iter().any(|p| p.matches(req.path));
            if matches && t.calls.needs_call_aware_decision() {
                call_aware.get_or_insert(t.name.as_str());
                return false;
            }
            matches
        });
        match tool {
            Some(tool) => Verdict::Allow {
                tool,
                // Load-time validation guarantees the id exists.
                credential: tool
                    .credential
                    .as_deref()
                    .and_then(|id| self.credential(id)),
            },
            None => Verdict::Deny {
                reason: match call_aware {
                    Some(name) => format!(
                        "tool {name:?} of agent {:?} needs a decision on the call itself (protocol, when or rate), which this path does not make",
                        self.name
                    ),
                    None => format!(
                        "no tool of agent {:?} allows {} {} on {}",
                        self.name, req.method, req.path, req.host
                    ),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySet, load_path, normalize_path};

    fn policy() -> PolicySet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bot.toml"),
            r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[credential]]
id = "itsm-token"
source = { env = "ITSM_TOKEN" }
inject = { header = "Authorization", format = "Bearer {secret}" }

[[tool]]
name = "itsm.create_ticket"
host = "itsm.example.com"
port = 443
methods = ["POST"]
paths = ["/api/v2/tickets", "/api/v2/tickets/*"]
credential = "itsm-token"

[[tool]]
name = "docs.read"
host = "*.docs.example.com"
methods = ["GET", "HEAD"]
paths = ["/*"]
"#,
        )
        .unwrap();
        load_path(dir.path()).unwrap()
    }

    fn decide(
        set: &PolicySet,
        method: &str,
        host: &str,
        port: u16,
        raw_path: &str,
    ) -> Result<(String, Option<String>), String> {
        let path = normalize_path(raw_path)?;
        let method: Method = method.parse().unwrap();
        match set.agent("bot").unwrap().evaluate(RequestFacts {
            method: &method,
            host,
            port,
            path: &path,
        }) {
            Verdict::Allow { tool, credential } => {
                Ok((tool.name.clone(), credential.map(|c| c.id.clone())))
            }
            Verdict::Deny { reason } => Err(reason),
        }
    }

    #[test]
    fn matching_tools_allow_with_their_credential() {
        let set = policy();
        assert_eq!(
            decide(&set, "POST", "itsm.example.com", 443, "/api/v2/tickets").unwrap(),
            ("itsm.create_ticket".into(), Some("itsm-token".into()))
        );
        assert_eq!(
            decide(&set, "POST", "ITSM.example.com", 443, "/api/v2/tickets/42")
                .unwrap()
                .0,
            "itsm.create_ticket"
        );
        assert_eq!(
            decide(&set, "GET", "a.docs.example.com", 8443, "/x").unwrap(),
            ("docs.read".into(), None)
        );
    }

    #[test]
    fn everything_else_is_denied() {
        let set = policy();
        // Wrong method, path, port, host.
        assert!(decide(&set, "GET", "itsm.example.com", 443, "/api/v2/tickets").is_err());
        assert!(decide(&set, "POST", "itsm.example.com", 443, "/api/v2/admin").is_err());
        assert!(decide(&set, "POST", "itsm.example.com", 8443, "/api/v2/tickets").is_err());
        assert!(decide(&set, "POST", "evil.example.com", 443, "/api/v2/tickets").is_err());
        // Dot segments are resolved before matching.
        assert!(
            decide(
                &set,
                "POST",
                "itsm.example.com",
                443,
                "/api/v2/tickets/../admin"
            )
            .is_err()
        );
        assert!(
            decide(
                &set,
                "POST",
                "itsm.example.com",
                443,
                "/api/v2/tickets/%2e%2e/admin"
            )
            .is_err()
        );
        let reason =
            decide(&set, "DELETE", "itsm.example.com", 443, "/api/v2/tickets/1").unwrap_err();
        assert!(
            reason.contains("\"bot\"") && reason.contains("DELETE"),
            "{reason}"
        );
    }
}
