//! Replaying a small record under a candidate policy: each kind of change,
//! the unchanged, the skipped, and the undetermined.

use serde_json::json;

use super::*;

const CANDIDATE: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[credential]]
id = "docs-key"
source = { env = "AGENTGUARD_REPLAY_TEST_KEY" }
inject = { header = "x-api-key" }

[[tool]]
name = "mcp.read"
host = "mcp.example.com"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["list_issues"]

[[tool]]
name = "mcp.write"
host = "mcp.example.com"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue", "delete_repo"]
when = 'mcp.arguments.repo != "secrets"'

[[tool]]
name = "docs"
host = "docs.example.com"
methods = ["GET"]
paths = ["/*"]
credential = "docs-key"

[[tool]]
name = "headers"
host = "h.example.com"
methods = ["GET"]
paths = ["/*"]
when = 'request.headers["x-a"] == "1"'

[[tool]]
name = "rated"
host = "r.example.com"
methods = ["GET"]
paths = ["/*"]
rate = "2/min"
"#;

fn candidate() -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bot.toml"), CANDIDATE).unwrap();
    // SAFETY: set before any thread of this test reads the environment;
    // the key is this test's own.
    unsafe { std::env::set_var("AGENTGUARD_REPLAY_TEST_KEY", "k") };
    crate::policy::load_path(dir.path()).unwrap()
}

fn event(method: &str, host: &str, path: &str, decision: Recorded, tool: Option<&str>) -> Event {
    let mut e = Event::new(Kind::Request);
    e.time = "2026-01-05T10:00:00.000000Z".into();
    e.agent = Some("bot".into());
    e.method = Some(method.into());
    e.host = Some(host.into());
    e.dst_port = Some(443);
    e.path = Some(path.into());
    e.decision = Some(decision);
    e.tool = tool.map(Into::into);
    e
}

fn call(name: &str, decision: Recorded, tool: &str, arguments: Option<serde_json::Value>) -> Event {
    let mut e = event("POST", "mcp.example.com", "/mcp", decision, Some(tool));
    let recorded = arguments.is_some();
    e.rpc_method = Some("tools/call".into());
    e.mcp_target = Some(name.into());
    e.rpc_calls = Some(RpcCall::column(&[RpcCall {
        id: Some(json!(1)),
        method: Some("tools/call".into()),
        target_kind: Some("tool".into()),
        target: Some(name.into()),
        decision,
        tool: Some(tool.into()),
        rule: (decision != Recorded::Allow).then(|| "condition".into()),
        reason: None,
        session: false,
        arguments,
        arguments_sha256: (!recorded).then(|| "0".repeat(64)),
    }]));
    e
}

#[test]
fn each_change_is_reported_and_counted() {
    let set = candidate();
    let mut refused = event("GET", "x.example.com", "/", Recorded::Refuse, None);
    refused.rule = Some("misdirected".into());
    let mut keyless = event(
        "GET",
        "docs.example.com",
        "/a",
        Recorded::Allow,
        Some("docs"),
    );
    keyless.credential_id = None;
    let mut rated = event("GET", "r.example.com", "/x", Recorded::Allow, Some("rated"));
    rated.time = "2026-01-05T10:00:01.000000Z".into();
    let events: Vec<(i64, Event)> = [
        // 1: no longer listed.
        call("add", Recorded::Allow, "mcp.read", Some(json!({"a": 1}))),
        // 2: still allowed by its condition on recorded arguments.
        call(
            "create_issue",
            Recorded::Allow,
            "mcp.write",
            Some(json!({"repo": "widgets"})),
        ),
        // 3: newly listed, but its condition reads arguments not recorded.
        call("delete_repo", Recorded::Deny, "mcp.read", None),
        // 4: denied by the condition still.
        call(
            "create_issue",
            Recorded::Deny,
            "mcp.write",
            Some(json!({"repo": "secrets"})),
        ),
        // 5: the tool now binds a credential.
        keyless,
        // 6: a condition on headers, which the record lacks.
        event(
            "GET",
            "h.example.com",
            "/x",
            Recorded::Allow,
            Some("headers"),
        ),
        // 7: refused before any policy decision.
        refused,
        // 8-10: two calls a minute now; the third is over.
        rated.clone(),
        rated.clone(),
        rated,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, e)| (i as i64 + 1, e))
    .collect();
    let report = replay(&set, &events);
    assert_eq!(report.events, 9);
    assert_eq!(report.skipped, 1);
    assert_eq!(report.decisions, 9);
    let by_seq = |seq: i64| report.changes.iter().find(|c| c.seq == seq);
    let one = by_seq(1).unwrap();
    assert_eq!(one.changes, [Change::AllowToDeny]);
    assert_eq!(one.target.as_deref(), Some("add"));
    assert_eq!(
        one.new.as_ref().unwrap().rule.as_deref(),
        Some("call-not-allowed")
    );
    assert!(by_seq(2).is_none() && by_seq(4).is_none());
    let three = by_seq(3).unwrap();
    assert_eq!(three.changes, [Change::Undetermined]);
    assert_eq!(three.needs, ["mcp.arguments"]);
    assert!(three.new.is_none());
    assert_eq!(by_seq(5).unwrap().changes, [Change::CredentialChanged]);
    assert_eq!(by_seq(6).unwrap().needs, ["request.headers"]);
    assert!(by_seq(8).is_none() && by_seq(9).is_none());
    let ten = by_seq(10).unwrap();
    assert_eq!(ten.changes, [Change::AllowToDeny]);
    assert_eq!(
        ten.new.as_ref().unwrap().rule.as_deref(),
        Some("rate-limited")
    );
    assert_eq!(report.count(Change::AllowToDeny), 2);
    assert_eq!(report.count(Change::DenyToAllow), 0);
    assert_eq!(report.count(Change::CredentialChanged), 1);
    assert_eq!(report.count(Change::Undetermined), 2);
    assert_eq!(report.unchanged, 4);
    assert!(report.denies_allowed());
}

#[test]
fn an_unknown_agent_and_a_newly_allowed_call() {
    let set = candidate();
    let mut stranger = event(
        "GET",
        "docs.example.com",
        "/a",
        Recorded::Allow,
        Some("docs"),
    );
    stranger.agent = Some("stranger".into());
    let events = vec![
        (1, stranger),
        (
            2,
            call("list_issues", Recorded::Deny, "mcp.read", Some(json!({}))),
        ),
    ];
    let report = replay(&set, &events);
    assert_eq!(report.changes[0].changes, [Change::AllowToDeny]);
    assert_eq!(
        report.changes[0].new.as_ref().unwrap().rule.as_deref(),
        Some("unknown-agent")
    );
    assert_eq!(report.changes[1].changes, [Change::DenyToAllow]);
    assert_eq!(
        report.changes[1].new.as_ref().unwrap().tool.as_deref(),
        Some("mcp.read")
    );
    // Only allow->deny gates.
    let only_new = replay(&set, &events[1..]);
    assert!(!only_new.denies_allowed());
}
