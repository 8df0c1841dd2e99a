//! `agentguard policy test`: what the policy would decide for one request,
//! without a daemon. Names the credential that would be injected, never its
//! value (secrets are not even read).

use hyper::{Method, Uri};
use serde::Serialize;

use super::{PolicySet, RequestFacts, Verdict, normalize_path};

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub agent: String,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// "allow", "deny", or "would-deny" (denied, but the agent is in audit
    /// mode).
    pub decision: &'static str,
    pub tool: Option<String>,
    pub credential: Option<String>,
    pub reason: String,
    pub policy_version: String,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.decision == "allow"
    }
}

pub fn explain(
    set: &PolicySet,
    agent: &str,
    method: &str,
    url: &str,
) -> Result<Explanation, String> {
    let policy = set
        .agent(agent)
        .ok_or_else(|| format!("no agent named {agent:?} in the policy"))?;
    let method: Method = method
        .parse()
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
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
    let port = uri.port_u16().unwrap_or(scheme_port);
    let path = normalize_path(uri.path()).map_err(|e| format!("path refused: {e}"))?;
    let verdict = policy.evaluate(RequestFacts {
        method: &method,
        host: &host,
        port,
        path: &path,
        aws_action: None,
    });
    let (decision, tool, credential, reason) = match verdict {
        Verdict::Allow { tool, credential } => (
            "allow",
            Some(tool.name.clone()),
            credential.map(|c| c.id.clone()),
            format!("allowed by tool {:?}", tool.name),
        ),
        Verdict::Deny { reason } if policy.mode == super::Mode::Audit => {
            ("would-deny", None, None, reason)
        }
        Verdict::Deny { reason } => ("deny", None, None, reason),
    };
    Ok(Explanation {
        agent: agent.to_owned(),
        method: method.to_string(),
        host,
        port,
        path,
        decision,
        tool,
        credential,
        reason,
        policy_version: set.version.clone(),
    })
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "decision:   {}", self.decision)?;
        writeln!(f, "agent:      {}", self.agent)?;
        writeln!(
            f,
            "request:    {} {}:{}{}",
            self.method, self.host, self.port, self.path
        )?;
        writeln!(f, "tool:       {}", self.tool.as_deref().unwrap_or("-"))?;
        writeln!(
            f,
            "credential: {}",
            self.credential.as_deref().unwrap_or("-")
        )?;
        writeln!(f, "reason:     {}", self.reason)?;
        write!(f, "policy:     {}", self.policy_version)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::load_path;

    /// Every example in policies/ is exercised: for each agent, requests its
    /// tools allow (with the credential they inject) and requests they do
    /// not.
    #[test]
    fn example_policies_decide_as_documented() {
        let set = load_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")).unwrap();
        let cases: &[(&str, &str, &str, &str, Option<&str>)] = &[
            (
                "support-bot",
                "POST",
                "https://itsm.example.com/api/v2/tickets",
                "allow",
                Some("itsm-token"),
            ),
            (
                "support-bot",
                "GET",
                "https://itsm.example.com/api/v2/tickets/42",
                "allow",
                Some("itsm-token"),
            ),
            (
                "support-bot",
                "GET",
                "https://itsm.example.com/api/v2/tickets/../admin",
                "deny",
                None,
            ),
            (
                "support-bot",
                "DELETE",
                "https://itsm.example.com/api/v2/tickets/42",
                "deny",
                None,
            ),
            (
                "support-bot",
                "POST",
                "https://itsm.example.com:8443/api/v2/tickets",
                "deny",
                None,
            ),
            (
                "support-bot",
                "POST",
                "https://kb.example.com/v1/search",
                "allow",
                Some("kb-token"),
            ),
            (
                "support-bot",
                "GET",
                "https://kb.example.com/v1/search",
                "deny",
                None,
            ),
            (
                "openai-agent",
                "POST",
                "https://api.openai.com/v1/chat/completions",
                "allow",
                Some("openai-key"),
            ),
            (
                "openai-agent",
                "GET",
                "https://api.openai.com/v1/models/gpt-5",
                "allow",
                Some("openai-key"),
            ),
            (
                "openai-agent",
                "DELETE",
                "https://api.openai.com/v1/files/f1",
                "deny",
                None,
            ),
            (
                "anthropic-agent",
                "POST",
                "https://api.anthropic.com/v1/messages",
                "allow",
                Some("anthropic-key"),
            ),
            (
                "anthropic-agent",
                "POST",
                "https://api.openai.com/v1/chat/completions",
                "deny",
                None,
            ),
            (
                "github-agent",
                "GET",
                "https://api.github.com/repos/acme/widgets/pulls/1",
                "allow",
                Some("github-token"),
            ),
            (
                "github-agent",
                "POST",
                "https://api.github.com/repos/acme/widgets/issues",
                "allow",
                Some("github-token"),
            ),
            (
                "github-agent",
                "PUT",
                "https://api.github.com/repos/acme/widgets/pulls/1/merge",
                "deny",
                None,
            ),
            (
                "github-agent",
                "GET",
                "https://api.github.com/repos/acme/other",
                "deny",
                None,
            ),
            (
                "slack-agent",
                "POST",
                "https://slack.com/api/chat.postMessage",
                "allow",
                Some("slack-bot"),
            ),
            (
                "slack-agent",
                "POST",
                "https://slack.com/api/admin.users.remove",
                "deny",
                None,
            ),
            (
                "research-agent",
                "GET",
                "https://export.arxiv.org/api/query",
                "allow",
                None,
            ),
            (
                "research-agent",
                "GET",
                "https://example.com/",
                "would-deny",
                None,
            ),
        ];
        let mut agents_seen = std::collections::BTreeSet::new();
        for (agent, method, url, decision, credential) in cases {
            let e = explain(&set, agent, method, url).unwrap();
            assert_eq!(
                e.decision, *decision,
                "{agent} {method} {url}: {}",
                e.reason
            );
            assert_eq!(
                e.credential.as_deref(),
                *credential,
                "{agent} {method} {url}"
            );
            agents_seen.insert(*agent);
        }
        let all: std::collections::BTreeSet<&str> =
            set.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(agents_seen, all, "every example agent is exercised");
    }
}
