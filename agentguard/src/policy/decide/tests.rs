//! Tests of call-aware decisions.

use std::time::{Duration, SystemTime};

use hyper::Method;
use serde_json::json;

use super::*;
use crate::policy::DEFAULT_MAX_BODY;
use crate::{
    mcp::{Body, TargetKind},
    policy::{PolicySet, load_path},
};

const POLICY: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[credential]]
id = "gh"
source = { env = "GH_TOKEN" }
inject = { header = "Authorization", format = "Bearer {secret}" }

[[tool]]
name = "github.mcp.read"
host = "mcp.github.example"
methods = ["POST", "GET", "DELETE"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["list_*", "get_*", "search_*"]
mcp_tools_except = ["get_secret*"]
mcp_resources = ["repo://acme/*"]
credential = "gh"

[[tool]]
name = "github.mcp.write"
host = "mcp.github.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue", "add_issue_comment"]
when = 'mcp.arguments.owner == "acme" && agent.exe == "/usr/bin/python3"'
rate = "2/min"
rate_per = "on_behalf_of"
record_arguments = true
credential = "gh"

[[tool]]
name = "chain.rpc"
host = "rpc.example"
methods = ["POST"]
paths = ["/"]
protocol = "jsonrpc"
rpc_methods = ["eth_call", "eth_get*"]
max_body = "64K"

[[tool]]
name = "itsm.office_hours"
host = "itsm.example"
methods = ["POST"]
paths = ["/api/tickets"]
when = 'now.getHours() >= 8 && now.getHours() < 18 && request.body.priority != "p0"'
rate = "1/hour"
"#;

fn policy() -> PolicySet {
    load(POLICY)
}

/// The policy set of one file, `bot.toml`, holding `text`.
fn load(text: &str) -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bot.toml"), text).unwrap();
    load_path(dir.path()).unwrap()
}

fn identity(exe: &str) -> AgentIdentity {
    AgentIdentity {
        name: "bot".into(),
        exe: Some(exe.into()),
        ..AgentIdentity::default()
    }
}

/// 2026-01-05T10:30:00Z.
fn ten_thirty() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_609_000)
}

struct Req<'a> {
    method: Method,
    host: &'a str,
    path: &'a str,
    body: Option<serde_json::Value>,
    identity: AgentIdentity,
    on_behalf_of: Option<&'a str>,
    now: SystemTime,
}

impl<'a> Req<'a> {
    fn post(host: &'a str, path: &'a str) -> Self {
        Req {
            method: Method::POST,
            host,
            path,
            body: None,
            identity: identity("/usr/bin/python3"),
            on_behalf_of: None,
            now: ten_thirty(),
        }
    }

    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: &self.method,
            host: self.host,
            port: 443,
            path: self.path,
            aws_action: None,
        }
    }

    fn input(&self) -> RequestInput<'_> {
        RequestInput {
            facts: self.facts(),
            query: None,
            headers: None,
            json_body: self.body.as_ref(),
            identity: &self.identity,
            on_behalf_of: self.on_behalf_of,
            intent: None,
            now: self.now,
        }
    }
}

fn tool_call(name: &str, args: serde_json::Value) -> crate::mcp::Message {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": args}});
    Body::parse(body.to_string().as_bytes()).unwrap().messages()[0].clone()
}

fn decide_call(
    set: &PolicySet,
    req: &Req<'_>,
    name: &str,
    args: serde_json::Value,
) -> Decision<'static> {
    // Leak the set: tests keep decisions past the borrow.
    let set: &'static PolicySet = Box::leak(Box::new(set.clone()));
    let agent = set.agent("bot").unwrap();
    let req: &'static Req<'static> = Box::leak(Box::new(Req {
        method: req.method.clone(),
        host: Box::leak(req.host.to_owned().into_boxed_str()),
        path: Box::leak(req.path.to_owned().into_boxed_str()),
        body: req.body.clone(),
        identity: req.identity.clone(),
        on_behalf_of: req
            .on_behalf_of
            .map(|s| &*Box::leak(s.to_owned().into_boxed_str())),
        now: req.now,
    }));
    agent
        .decider(req.input())
        .decide_message(&tool_call(name, args))
}

fn allowed_tool<'d>(d: &'d Decision<'_>) -> Option<&'d str> {
    match d {
        Decision::Allow(a) => Some(&a.tool.name),
        Decision::Deny(_) => None,
    }
}

#[test]
fn mcp_calls_are_decided_by_name_condition_and_identity() {
    let set = policy();
    let req = Req::post("mcp.github.example", "/mcp");
    let d = decide_call(&set, &req, "list_issues", json!({"owner": "anyone"}));
    assert_eq!(allowed_tool(&d), Some("github.mcp.read"));
    let Decision::Allow(a) = &d else {
        unreachable!()
    };
    assert_eq!(a.credential.map(|c| c.id.as_str()), Some("gh"));
    let call = a.call.as_ref().unwrap();
    assert_eq!(call.target.as_ref().unwrap().name, "list_issues");
    assert!(!call.session);
    // Arguments not recorded: their digest is.
    assert_eq!(
        call.arguments,
        ArgumentsRecord::Digest(digest(&json!({"owner": "anyone"})))
    );
    assert!(a.rate.is_none());

    let d = decide_call(
        &set,
        &req,
        "create_issue",
        json!({"owner": "acme", "repo": "widgets"}),
    );
    assert_eq!(allowed_tool(&d), Some("github.mcp.write"));
    let Decision::Allow(a) = &d else {
        unreachable!()
    };
    assert_eq!(
        a.call.as_ref().unwrap().arguments,
        ArgumentsRecord::Full(json!({"owner": "acme", "repo": "widgets"}))
    );
    assert_eq!(a.rate.as_ref().unwrap().spec.to_string(), "2/min");

    // The argument condition.
    let Decision::Deny(d) = decide_call(
        &set,
        &req,
        "create_issue",
        json!({"owner": "evil", "repo": "x"}),
    ) else {
        panic!("allowed")
    };
    assert_eq!(d.rule, DenyRule::Condition);
    assert_eq!(d.tool.as_deref(), Some("github.mcp.write"));
    assert!(d.reason.contains("does not hold"), "{}", d.reason);
    // A missing argument fails the condition rather than passing it.
    let Decision::Deny(d) = decide_call(&set, &req, "create_issue", json!({})) else {
        panic!()
    };
    assert!(d.reason.contains("failed"), "{}", d.reason);
    // The identity condition.
    let mut node = Req::post("mcp.github.example", "/mcp");
    node.identity = identity("/usr/bin/node");
    assert!(!decide_call(&set, &node, "create_issue", json!({"owner": "acme"})).is_allow());

    // Names nobody lists, and exceptions.
    for name in ["delete_repo", "get_secret_scanning_alerts"] {
        let Decision::Deny(d) = decide_call(&set, &req, name, json!({})) else {
            panic!("{name}")
        };
        assert_eq!(d.rule, DenyRule::CallNotAllowed, "{name}");
        assert!(d.reason.contains(name), "{}", d.reason);
    }
}

#[test]
fn session_traffic_is_allowed_without_conditions_or_rates() {
    let set = policy();
    let agent = set.agent("bot").unwrap();
    let mut req = Req::post("mcp.github.example", "/mcp");
    req.identity = identity("/usr/bin/node");
    for m in [
        r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        r#"{"jsonrpc":"2.0","id":"s","result":{}}"#,
    ] {
        let body = Body::parse(m.as_bytes()).unwrap();
        let d = agent
            .decider(req.input())
            .decide_message(&body.messages()[0]);
        let Decision::Allow(a) = d else { panic!("{m}") };
        assert!(a.call.unwrap().session && a.rate.is_none(), "{m}");
    }
    // GET (the event stream) and DELETE (session end) have no body.
    for method in [Method::GET, Method::DELETE] {
        let mut r = Req::post("mcp.github.example", "/mcp");
        r.method = method;
        assert_eq!(agent.body_need(r.facts()), BodyNeed::None);
        assert!(agent.decider(r.input()).decide().is_allow());
    }
    // A POST to an MCP tool is never decided without its body.
    assert_eq!(
        agent.body_need(req.facts()),
        BodyNeed::JsonRpc {
            max: DEFAULT_MAX_BODY
        }
    );
    let Decision::Deny(d) = agent.decider(req.input()).decide() else {
        panic!()
    };
    assert_eq!(d.rule, DenyRule::BodyRequired);
    // Only allowed names are visible in lists.
    assert!(agent.mcp_name_visible(req.facts(), TargetKind::Tool, "list_issues"));
    assert!(agent.mcp_name_visible(req.facts(), TargetKind::Tool, "create_issue"));
    assert!(!agent.mcp_name_visible(req.facts(), TargetKind::Tool, "delete_repo"));
    assert!(!agent.mcp_name_visible(req.facts(), TargetKind::Tool, "get_secret_x"));
    assert!(agent.mcp_name_visible(req.facts(), TargetKind::Resource, "repo://acme/w"));
}

#[test]
fn json_rpc_methods_and_body_bounds() {
    let set = policy();
    let agent = set.agent("bot").unwrap();
    let req = Req::post("rpc.example", "/");
    assert_eq!(
        agent.body_need(req.facts()),
        BodyNeed::JsonRpc { max: 64 << 10 }
    );
    let body = Body::parse(
        br#"[{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[]},{"jsonrpc":"2.0","id":2,"method":"eth_sendRawTransaction","params":["0x"]},{"jsonrpc":"2.0","id":3,"method":"initialize"}]"#,
    )
    .unwrap();
    let decider = agent.decider(req.input());
    let verdicts: Vec<bool> = body
        .messages()
        .iter()
        .map(|m| decider.decide_message(m).is_allow())
        .collect();
    assert_eq!(verdicts, [true, false, false]);
    let Decision::Allow(a) = decider.decide_message(&body.messages()[0]) else {
        panic!()
    };
    assert_eq!(
        a.call.unwrap().arguments,
        ArgumentsRecord::Digest(digest(&json!([])))
    );
}

#[test]
fn http_conditions_see_time_and_body_and_rates_count() {
    let set = policy();
    let agent = set.agent("bot").unwrap();
    let mut req = Req::post("itsm.example", "/api/tickets");
    assert_eq!(
        agent.body_need(req.facts()),
        BodyNeed::Json {
            max: DEFAULT_MAX_BODY
        }
    );
    req.body = Some(json!({"priority": "p2"}));
    let limiter = RateLimiter::new();
    let t = 1_767_609_000_000;
    let d = agent.decider(req.input()).decide().admit(&limiter, t);
    assert_eq!(allowed_tool(&d), Some("itsm.office_hours"));
    let Decision::Deny(d) = agent
        .decider(req.input())
        .decide()
        .admit(&limiter, t + 1000)
    else {
        panic!("over the rate")
    };
    assert_eq!(
        d.rule,
        DenyRule::RateLimited {
            retry_after_secs: 3599
        }
    );
    // Outside office hours, or a p0: the condition.
    req.now = ten_thirty() + Duration::from_secs(9 * 3600);
    assert!(matches!(
        agent.decider(req.input()).decide(),
        Decision::Deny(Denied {
            rule: DenyRule::Condition,
            ..
        })
    ));
    req.now = ten_thirty();
    req.body = Some(json!({"priority": "p0"}));
    assert!(!agent.decider(req.input()).decide().is_allow());
    // Unknown hosts and paths: as before.
    let other = Req::post("evil.example", "/");
    let Decision::Deny(d) = agent.decider(other.input()).decide() else {
        panic!()
    };
    assert_eq!(d.rule, DenyRule::NoTool);
    assert!(
        d.reason.contains("allows host evil.example:443"),
        "{}",
        d.reason
    );
}

#[test]
fn rates_count_per_on_behalf_of_when_asked() {
    let set = policy();
    let limiter = RateLimiter::new();
    let args = json!({"owner": "acme"});
    let mut alice = Req::post("mcp.github.example", "/mcp");
    alice.on_behalf_of = Some("alice");
    let mut bob = Req::post("mcp.github.example", "/mcp");
    bob.on_behalf_of = Some("bob");
    let t = 1_000_000;
    for _ in 0..2 {
        assert!(
            decide_call(&set, &alice, "create_issue", args.clone())
                .admit(&limiter, t)
                .is_allow()
        );
    }
    let Decision::Deny(d) =
        decide_call(&set, &alice, "create_issue", args.clone()).admit(&limiter, t)
    else {
        panic!()
    };
    assert!(
        matches!(
            d.rule,
            DenyRule::RateLimited {
                retry_after_secs: 60
            }
        ),
        "{d:?}"
    );
    assert!(d.reason.contains("for alice"), "{}", d.reason);
    assert!(
        decide_call(&set, &bob, "create_issue", args.clone())
            .admit(&limiter, t)
            .is_allow()
    );
    // Reads have no rate.
    for _ in 0..10 {
        assert!(
            decide_call(&set, &alice, "list_issues", json!({}))
                .admit(&limiter, t)
                .is_allow()
        );
    }
}

/// Plain HTTP tools: no protocol, condition or rate.
const PLAIN: &str = r#"
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
"#;

/// Decides a request without a JSON-RPC body under [`PLAIN`]: the tool and
/// credential it is allowed with, or the reason it is denied.
fn decide_plain(
    method: &str,
    host: &str,
    port: u16,
    raw_path: &str,
) -> Result<(String, Option<String>), String> {
    let set = load(PLAIN);
    let path = crate::policy::normalize_path(raw_path)?;
    let method: Method = method.parse().unwrap();
    let identity = identity("/usr/bin/curl");
    let input = RequestInput {
        facts: RequestFacts {
            method: &method,
            host,
            port,
            path: &path,
            aws_action: None,
        },
        query: None,
        headers: None,
        json_body: None,
        identity: &identity,
        on_behalf_of: None,
        intent: None,
        now: ten_thirty(),
    };
    match set.agent("bot").unwrap().decider(input).decide() {
        Decision::Allow(a) => Ok((a.tool.name.clone(), a.credential.map(|c| c.id.clone()))),
        Decision::Deny(d) => {
            assert_eq!(d.rule, DenyRule::NoTool);
            Err(d.reason)
        }
    }
}

#[test]
fn plain_tools_allow_on_host_port_method_and_path_with_their_credential() {
    assert_eq!(
        decide_plain("POST", "itsm.example.com", 443, "/api/v2/tickets").unwrap(),
        ("itsm.create_ticket".into(), Some("itsm-token".into()))
    );
    assert_eq!(
        decide_plain("POST", "ITSM.example.com", 443, "/api/v2/tickets/42")
            .unwrap()
            .0,
        "itsm.create_ticket"
    );
    assert_eq!(
        decide_plain("GET", "a.docs.example.com", 8443, "/x").unwrap(),
        ("docs.read".into(), None)
    );
}

#[test]
fn everything_else_is_denied_by_default() {
    // Wrong method, path, port, host.
    for (method, host, port, path) in [
        ("GET", "itsm.example.com", 443, "/api/v2/tickets"),
        ("POST", "itsm.example.com", 443, "/api/v2/admin"),
        ("POST", "itsm.example.com", 8443, "/api/v2/tickets"),
        ("POST", "evil.example.com", 443, "/api/v2/tickets"),
        // Dot segments are resolved before matching.
        ("POST", "itsm.example.com", 443, "/api/v2/tickets/../admin"),
        (
            "POST",
            "itsm.example.com",
            443,
            "/api/v2/tickets/%2e%2e/admin",
        ),
    ] {
        assert!(
            decide_plain(method, host, port, path).is_err(),
            "{method} {host}:{port}{path} allowed"
        );
    }
    let reason = decide_plain("DELETE", "itsm.example.com", 443, "/api/v2/tickets/1").unwrap_err();
    assert!(
        reason.contains("\"bot\"") && reason.contains("DELETE"),
        "{reason}"
    );
    let reason = decide_plain("GET", "evil.example.com", 443, "/").unwrap_err();
    assert!(reason.contains("host evil.example.com:443"), "{reason}");
}

/// Tools that differ in a literal their conditions compare (a
/// prerequisite): the conditions that cannot hold are passed over unrun.
const CHOICES: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[tool]]
name = "calls.acme"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue"]
when = 'mcp.arguments.owner == "acme"'

[[tool]]
name = "calls.beta"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue"]
when = 'mcp.arguments.owner == "beta" && mcp.arguments.size > 10'

[[tool]]
name = "calls.sized"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue"]
when = 'mcp.arguments.size > 10'

[[tool]]
name = "plain.python"
host = "api.example"
methods = ["GET"]
paths = ["/x"]
when = 'agent.exe == "/usr/bin/python3"'

[[tool]]
name = "plain.node"
host = "api.example"
methods = ["GET"]
paths = ["/x"]
when = 'agent.exe == "/usr/bin/node" && request.path == "/x"'
"#;

/// A condition passed over because it cannot hold is run only for the
/// reason of a denial; the reason shown is still the first conditioned
/// tool's, as when every condition tried was run.
#[test]
fn a_denial_gives_the_first_failed_condition_whether_run_or_passed_over() {
    let set = load(CHOICES);
    let req = Req::post("mcp.example", "/mcp");
    let denied = |args| match decide_call(&set, &req, "create_issue", args) {
        Decision::Deny(d) => d,
        Decision::Allow(a) => panic!("allowed by {}", a.tool.name),
    };

    // Every tool passed over or failing: the first one's reason.
    let d = denied(json!({"owner": "other", "size": 1}));
    assert_eq!(d.rule, DenyRule::Condition);
    assert_eq!(d.tool.as_deref(), Some("calls.acme"));
    assert_eq!(
        d.reason,
        r#"the condition of tool "calls.acme" does not hold: mcp.arguments.owner == "acme""#
    );
    // A missing argument: the first condition fails when run for its
    // reason, as it did when it was run first.
    let d = denied(json!({}));
    assert_eq!(d.tool.as_deref(), Some("calls.acme"));
    assert!(
        d.reason
            .starts_with(r#"the condition of tool "calls.acme" failed: "#),
        "{}",
        d.reason
    );
    // Passing over the first never blocks a later tool.
    for (args, tool) in [
        (json!({"owner": "beta", "size": 20}), "calls.beta"),
        (json!({"owner": "other", "size": 20}), "calls.sized"),
        (json!({"owner": "acme"}), "calls.acme"),
    ] {
        let d = decide_call(&set, &req, "create_issue", args.clone());
        assert_eq!(allowed_tool(&d), Some(tool), "{args}");
    }

    // The same for a request decided as a whole.
    let agent = set.agent("bot").unwrap();
    let mut plain = Req::post("api.example", "/x");
    plain.method = Method::GET;
    for (exe, allowed) in [
        ("/usr/bin/python3", Some("plain.python")),
        ("/usr/bin/node", Some("plain.node")),
        ("/usr/bin/curl", None),
    ] {
        plain.identity = identity(exe);
        match agent.decider(plain.input()).decide() {
            Decision::Allow(a) => assert_eq!(Some(a.tool.name.as_str()), allowed, "{exe}"),
            Decision::Deny(d) => {
                assert_eq!(allowed, None, "{exe}: {}", d.reason);
                assert_eq!(d.rule, DenyRule::Condition);
                assert_eq!(d.tool.as_deref(), Some("plain.python"));
                assert_eq!(
                    d.reason,
                    r#"the condition of tool "plain.python" does not hold: agent.exe == "/usr/bin/python3""#
                );
            }
        }
    }
}

/// Fifty MCP tools that differ in the organisation their condition names
/// (as the bench's), among tools that name an argument deeper down, the
/// caller's program, a list, no condition at all, or a condition with no
/// prerequisite.
fn many_tools() -> String {
    let mut policy = String::from(
        r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"
"#,
    );
    for i in 0..50 {
        policy.push_str(&format!(
            r#"
[[tool]]
name = "org.{i}"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue", "list_*"]
when = 'mcp.arguments.owner == "org-{i}" && mcp.arguments.repo in ["widgets", "gadgets"]'
"#
        ));
    }
    policy.push_str(
        r#"
[[tool]]
name = "nested"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue"]
when = 'mcp.arguments.repo.owner in ["deep", "deeper"]'

[[tool]]
name = "by.program"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["get_*"]
when = 'agent.exe == "/usr/bin/node"'

[[tool]]
name = "sized"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue"]
when = 'mcp.arguments.size > 10'

[[tool]]
name = "reads"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["list_*"]
mcp_resources = ["repo://*"]

[[tool]]
name = "rpc"
host = "mcp.example"
methods = ["POST"]
paths = ["/mcp"]
protocol = "jsonrpc"
rpc_methods = ["eth_call"]
when = 'mcp.method == "eth_call"'
"#,
    );
    policy
}

/// Deciding through the index of the conditions' prerequisites gives the
/// decision trying every tool gives: the same tool, or the same denial
/// with the same reason, for calls, session traffic and responses.
#[test]
fn the_prerequisite_index_decides_as_trying_every_tool() {
    let messages: Vec<serde_json::Value> = [
        json!({"owner": "org-7", "repo": "widgets"}),
        json!({"owner": "org-49", "repo": "gadgets"}),
        json!({"owner": "org-7", "repo": "other"}),
        json!({"owner": "org-50", "repo": "widgets"}),
        json!({"owner": 7, "repo": "widgets"}),
        json!({"repo": {"owner": "deep"}}),
        json!({"repo": {"owner": "shallow"}, "size": 11}),
        json!({"size": 3}),
        json!({}),
    ]
    .into_iter()
    .flat_map(|args| {
        ["create_issue", "list_issues", "get_issue", "delete_repo"].map(|name| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": name, "arguments": args.clone()}})
        })
    })
    .chain([
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "repo://a/b"}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "initialize", "params": {}}),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 4, "result": {}}),
        json!({"jsonrpc": "2.0", "id": 5, "method": "eth_call", "params": []}),
        json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}),
    ])
    .collect();
    let mut decided = 0;
    // PLAIN keys no condition: no first round.
    for policy in [many_tools(), CHOICES.into(), POLICY.into(), PLAIN.into()] {
        let set = load(&policy);
        let agent = set.agent("bot").unwrap();
        for host in ["mcp.example", "mcp.github.example"] {
            for exe in ["/usr/bin/python3", "/usr/bin/node"] {
                let mut req = Req::post(host, "/mcp");
                req.identity = identity(exe);
                for raw in &messages {
                    let body = Body::parse(raw.to_string().as_bytes()).unwrap();
                    let message = &body.messages()[0];
                    let decider = agent.decider(req.input());
                    let indexed = decider.decide_message(message);
                    let every = agent.decider(req.input());
                    let known = every.known(Some(message));
                    let tools = agent.tools.for_method(&req.method);
                    let tried = every.decide_message_among(tools, message, &known, &mut None);
                    assert_eq!(
                        format!("{indexed:?}"),
                        format!("{tried:?}"),
                        "{host} {exe} {raw}"
                    );
                    decided += usize::from(indexed.is_allow());
                }
            }
        }
    }
    assert!(decided > 20, "too few calls allowed to compare: {decided}");

    // The index narrows: of the fifty, only the organisation's tool is
    // tried, beside those it cannot key.
    let set = load(&many_tools());
    let agent = set.agent("bot").unwrap();
    let req = Req::post("mcp.example", "/mcp");
    let message = tool_call("create_issue", json!({"owner": "org-7", "repo": "widgets"}));
    let decider = agent.decider(req.input());
    let known = decider.known(Some(&message));
    let tried: Vec<&str> = agent
        .tools
        .for_call(&req.method, &known)
        .expect("the organisations' tools are keyed")
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(tried, ["org.7", "sized", "reads"]);
}

#[test]
fn digests_are_canonical() {
    assert_eq!(
        digest(&json!({"b": 1, "a": [true, null, "x"]})),
        digest(&json!({"a": [true, null, "x"], "b": 1}))
    );
    assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": "1"})));
    // SHA-256 of the text {"a":1}.
    assert_eq!(
        digest(&json!({"a": 1})),
        "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
    );
}

const APPROVALS: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[tool]]
name = "gh.merge"
host = "mcp.github.example"
paths = ["/mcp"]
methods = ["POST", "GET", "DELETE"]
protocol = "mcp"
mcp_tools = ["merge_pull_request", "list_*"]
approval = { timeout = "2m", when = 'mcp.tool == "merge_pull_request" && mcp.arguments.base == "main"' }

[[tool]]
name = "pay"
host = "pay.example"
methods = ["POST"]
paths = ["/charges"]
approval = {}
"#;

#[test]
fn approval_conditions_pick_the_calls_that_wait() {
    let set = load(APPROVALS);
    let req = Req::post("mcp.github.example", "/mcp");
    let waits = |name: &str, args: serde_json::Value| match decide_call(&set, &req, name, args) {
        Decision::Allow(a) => a.approval.map(|p| p.timeout),
        Decision::Deny(d) => panic!("{name}: {}", d.reason),
    };
    assert_eq!(
        waits("merge_pull_request", json!({"base": "main"})),
        Some(Duration::from_secs(120))
    );
    assert_eq!(waits("merge_pull_request", json!({"base": "dev"})), None);
    assert_eq!(waits("list_pulls", json!({"base": "main"})), None);
    // A condition that cannot be evaluated (no `base`) holds the call.
    assert!(waits("merge_pull_request", json!({})).is_some());

    // The session's own messages never wait.
    let agent = set.agent("bot").unwrap();
    let init =
        Body::parse(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#).unwrap();
    let Decision::Allow(a) = agent
        .decider(req.input())
        .decide_message(&init.messages()[0])
    else {
        panic!("initialize refused")
    };
    assert!(a.approval.is_none());
    // Nor its event stream (GET) or its end (DELETE), decided on the head.
    for method in [Method::GET, Method::DELETE] {
        let mut r = Req::post("mcp.github.example", "/mcp");
        r.method = method;
        let Decision::Allow(a) = agent.decider(r.input()).decide() else {
            panic!("{} refused", r.method)
        };
        assert!(a.approval.is_none(), "{}", r.method);
    }

    // Without a condition, every request the tool allows waits.
    let pay = Req::post("pay.example", "/charges");
    let Decision::Allow(a) = agent.decider(pay.input()).decide() else {
        panic!("pay refused")
    };
    assert_eq!(
        a.approval.map(|p| p.timeout),
        Some(Duration::from_secs(300))
    );
}
