//! `agentguard policy test`: what the policy would decide for one request,
//! without a daemon. Names the credential that would be injected, never its
//! value (secrets are not even read).

use serde::Serialize;

use super::{
    PolicySet, RateLimiter,
    cases::{Case, Decided, Target, run_case},
};

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub agent: String,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: String,
    /// "allow", "deny", "would-deny" (denied, but the agent is in audit
    /// mode), "rate-limited" or "refuse"; for a batch, the first member's.
    pub decision: &'static str,
    pub tool: Option<String>,
    pub credential: Option<String>,
    pub rule: Option<String>,
    pub reason: String,
    /// Each JSON-RPC member's decision, when the body is a batch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Decided>,
    pub policy_version: String,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.decision == "allow" && self.members.iter().all(|m| m.decision.as_str() == "allow")
    }
}

pub fn explain(
    set: &PolicySet,
    agent: &str,
    method: &str,
    url: &str,
) -> Result<Explanation, String> {
    explain_case(
        set,
        &Case {
            agent: agent.to_owned(),
            method: method.to_owned(),
            url: url.to_owned(),
            ..Case::default()
        },
    )
}

/// What the policy decides for one request (with its body, identity and
/// time, if the case gives them), as `policy test` shows it.
pub fn explain_case(set: &PolicySet, case: &Case) -> Result<Explanation, String> {
    let target = Target::parse(&case.url)?;
    let mut got = run_case(set, case, &RateLimiter::new())?;
    let first = got.first().cloned().ok_or("no decision")?;
    if got.len() == 1 {
        got.clear();
    }
    Ok(Explanation {
        agent: case.agent.clone(),
        method: case.method.clone(),
        host: target.host,
        port: target.port,
        path: target.path,
        decision: first.decision.as_str(),
        tool: first.tool,
        credential: first.credential,
        rule: first.rule,
        reason: first.reason,
        members: got,
        policy_version: set.version.to_string(),
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
        for (i, m) in self.members.iter().enumerate() {
            writeln!(
                f,
                "member {i}:   {} {} {}",
                m.decision.as_str(),
                m.rpc_method.as_deref().unwrap_or("-"),
                m.mcp_target.as_deref().unwrap_or("")
            )?;
        }
        write!(f, "policy:     {}", self.policy_version)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::load_path;

    /// `policy test` for one request names the tool and credential, and
    /// the decision; every example's cases are in policies/tests/ (see
    /// `cases::tests::every_shipped_case_file_passes`).
    #[test]
    fn one_request_is_explained() {
        let set = load_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")).unwrap();
        let e = explain(
            &set,
            "support-bot",
            "POST",
            "https://itsm.example.com/api/v2/tickets",
        )
        .unwrap();
        assert_eq!(
            (e.decision, e.tool.as_deref(), e.credential.as_deref()),
            ("allow", Some("itsm.create_ticket"), Some("itsm-token"))
        );
        assert!(e.allowed());
        assert_eq!(e.path, "/api/v2/tickets");
        let e = explain(
            &set,
            "support-bot",
            "GET",
            "https://itsm.example.com/api/v2/tickets/../admin",
        )
        .unwrap();
        assert_eq!((e.decision, e.path.as_str()), ("deny", "/api/v2/admin"));
        let e = explain(&set, "research-agent", "GET", "https://example.com/").unwrap();
        assert_eq!(e.decision, "would-deny");
        assert!(!e.allowed());
        // An MCP POST without a body is refused: its calls are in the body.
        let e = explain(
            &set,
            "github-mcp-agent",
            "POST",
            "https://api.githubcopilot.com/mcp/",
        )
        .unwrap();
        assert_eq!(e.decision, "refuse");
        // A batch lists its members.
        let e = explain_case(
            &set,
            &Case {
                agent: "github-mcp-agent".into(),
                method: "POST".into(),
                url: "https://api.githubcopilot.com/mcp/".into(),
                body: Some(
                    r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_repo"}}]"#.into(),
                ),
                ..Case::default()
            },
        )
        .unwrap();
        assert_eq!(e.members.len(), 2);
        assert!(!e.allowed());
        assert!(
            e.to_string()
                .contains("member 1:   deny tools/call delete_repo"),
            "{e}"
        );
        for (agent, url) in [
            ("nobody", "https://x/"),
            ("support-bot", "ftp://x/"),
            ("support-bot", "https://x/a%2fb"),
        ] {
            assert!(explain(&set, agent, "GET", url).is_err(), "{agent} {url}");
        }
    }
}
