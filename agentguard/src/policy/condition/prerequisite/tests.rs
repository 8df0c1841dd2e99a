//! Prerequisites only ever skip conditions that could not hold: checked
//! against the interpreter on a grid of expressions and requests.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::super::{Condition, Uses, Vars};
use super::*;
use crate::mcp::{Target, TargetKind};

fn identity(exe: Option<&str>) -> AgentIdentity {
    AgentIdentity {
        name: "bot".into(),
        exe: exe.map(str::to_owned),
        comm: "python3".into(),
        cgroup: "agentguard/bot".into(),
        ..AgentIdentity::default()
    }
}

fn request() -> RequestView<'static> {
    RequestView {
        method: "POST",
        host: "mcp.example",
        port: 443,
        path: "/mcp",
        query: None,
        headers: None,
        body: None,
    }
}

const EXPRESSIONS: [&str; 12] = [
    r#"mcp.arguments.owner == "acme""#,
    r#""acme" == mcp.arguments.owner && mcp.arguments.repo in ["a", "b"]"#,
    r#"mcp.arguments.repo in ["a", "b"] && agent.exe == "/usr/bin/python3""#,
    r#"mcp.arguments.meta.team == "core""#,
    r#"mcp.tool == "create_issue" && on_behalf_of == "alice""#,
    r#"mcp.method == "tools/call" && intent in ["triage"]"#,
    r#"request.method == "POST" && request.host == "mcp.example" && request.path == "/mcp""#,
    r#"agent.name == "bot" && agent.comm == "python3" && agent.cgroup == "agentguard/bot""#,
    // Not prerequisites: a disjunction, a negation, an index, has().
    r#"mcp.arguments.owner == "acme" || mcp.arguments.owner == "other""#,
    r#"!(mcp.arguments.owner == "acme")"#,
    r#"mcp.arguments["owner"] == "acme""#,
    r#"has(mcp.arguments.owner) && mcp.arguments.owner != "acme""#,
];

#[test]
fn prerequisites_are_found_only_in_top_level_conjuncts() {
    let counts: Vec<usize> = EXPRESSIONS
        .iter()
        .map(|e| {
            let ast = cel::Env::stdlib().parser().parse(e).unwrap();
            prerequisites(&ast).len()
        })
        .collect();
    assert_eq!(counts, [1, 2, 2, 1, 2, 2, 3, 3, 0, 0, 0, 0]);
}

#[test]
fn a_condition_passed_over_never_holds() {
    let args = [
        json!({"owner": "acme", "repo": "a", "meta": {"team": "core"}}),
        json!({"owner": "other", "repo": "c", "meta": {"team": 7}}),
        json!({"owner": 1, "repo": ["a"], "meta": "core"}),
        json!({}),
        json!([1, 2]),
    ];
    let call = |name: &str| Target {
        kind: TargetKind::Tool,
        name: name.into(),
    };
    let targets = [Some(call("create_issue")), Some(call("other")), None];
    let mut skipped = 0;
    let mut checked = 0;
    for expr in EXPRESSIONS {
        let condition = Condition::compile(expr).unwrap();
        for exe in [Some("/usr/bin/python3"), None] {
            let id = identity(exe);
            for obo in [Some("alice"), None] {
                for target in &targets {
                    for a in args.iter().map(Some).chain([None]) {
                        let mcp = McpView {
                            method: Some("tools/call"),
                            target: target.as_ref(),
                            arguments: a,
                            params: None,
                            id: None,
                        };
                        let known = Known {
                            request: request(),
                            identity: &id,
                            on_behalf_of: obo,
                            intent: Some("triage"),
                            mcp: Some(mcp),
                        };
                        let vars = Vars::new(
                            request(),
                            &id,
                            obo,
                            Some("triage"),
                            SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_609_000),
                            &[],
                            Uses::ALL,
                        )
                        .with_mcp(mcp);
                        let result = condition.evaluate(&vars);
                        checked += 1;
                        if condition.cannot_hold(&known) {
                            skipped += 1;
                            assert_ne!(result, Ok(true), "{expr} with {a:?}, {obo:?}, {exe:?}");
                        }
                    }
                }
            }
        }
    }
    // The check is not vacuous: many were passed over, and many not.
    assert!(
        skipped > checked / 4 && skipped < checked,
        "{skipped} of {checked}"
    );
}

#[test]
fn a_request_decided_as_a_whole_has_no_mcp_fields() {
    let c = Condition::compile(r#"mcp.tool == "create_issue""#).unwrap();
    let id = identity(None);
    let known = Known {
        request: request(),
        identity: &id,
        on_behalf_of: None,
        intent: None,
        mcp: None,
    };
    assert!(c.cannot_hold(&known));
    let c = Condition::compile(r#"request.path == "/mcp""#).unwrap();
    assert!(!c.cannot_hold(&known));
}
