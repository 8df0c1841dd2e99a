//! Tests of CEL conditions: what compiles, what is refused at load, and
//! what each variable holds.

use std::time::{Duration, SystemTime};

use hyper::{HeaderMap, header::HeaderValue};
use serde_json::json;

use super::*;
use crate::mcp::{Target, TargetKind};

fn identity() -> AgentIdentity {
    AgentIdentity {
        name: "bot".into(),
        uid: 1000,
        gid: 1000,
        pid: 4242,
        exe: Some("/usr/bin/python3".into()),
        comm: "python3".into(),
        cgroup: "agentguard/bot".into(),
    }
}

/// 2026-01-05T10:30:00Z, a Monday.
fn monday_morning() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_609_000)
}

fn vars_with(body: Option<&serde_json::Value>, headers: Option<&HeaderMap>) -> Vars {
    Vars::new(
        RequestView {
            method: "POST",
            host: "api.example.com",
            port: 443,
            path: "/mcp",
            query: Some("state=open&label=a+b&dup=1&dup=2"),
            headers,
            body,
        },
        &identity(),
        Some("alice@example.com"),
        Some("triage"),
        monday_morning(),
        &["x-custom-key"],
        Uses::ALL,
    )
}

fn eval(expr: &str, vars: &Vars) -> Result<bool, String> {
    Condition::compile(expr)?.evaluate(vars)
}

#[test]
fn every_variable_is_there() {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("curl/8"));
    headers.append("accept", HeaderValue::from_static("a"));
    headers.append("accept", HeaderValue::from_static("b"));
    headers.insert("authorization", HeaderValue::from_static("Bearer secret"));
    headers.insert("x-custom-key", HeaderValue::from_static("secret"));
    let body = json!({"jsonrpc": "2.0", "items": [1, 2, 3]});
    let base = vars_with(Some(&body), Some(&headers));
    let target = Target {
        kind: TargetKind::Tool,
        name: "create_issue".into(),
    };
    let args = json!({"owner": "acme", "repo": "widgets", "labels": ["bug"], "n": 3});
    let id = json!(7);
    let view = McpView {
        method: Some("tools/call"),
        target: Some(&target),
        arguments: Some(&args),
        params: None,
        id: Some(&id),
    };
    let vars = base.with_mcp(view);
    // What a decision binds for a member, without the copy.
    let bound = base.bind_with_mcp(view);
    let eval_bound = |expr| Condition::compile(expr).unwrap().evaluate_bound(&bound);
    for expr in [
        r#"request.method == "POST" && request.host == "api.example.com" && request.port == 443"#,
        r#"request.path.startsWith("/mcp")"#,
        r#"request.query.state == "open" && request.query["label"] == "a b""#,
        r#"request.query.dup == ["1", "2"]"#,
        r#"request.headers["user-agent"] == "curl/8" && request.headers.accept == "a, b""#,
        r#"!("authorization" in request.headers) && !("x-custom-key" in request.headers)"#,
        r#"request.body.items.all(i, i > 0) && size(request.body.items) == 3"#,
        r#"mcp.method == "tools/call" && mcp.tool == "create_issue" && mcp.resource == null"#,
        r#"mcp.arguments.owner == "acme" && "bug" in mcp.arguments.labels && mcp.arguments.n == 3"#,
        r#"mcp.id == 7"#,
        r#"agent.name == "bot" && agent.uid == 1000 && agent.gid == 1000 && agent.pid == 4242"#,
        r#"agent.exe == "/usr/bin/python3" && agent.comm == "python3" && agent.cgroup == "agentguard/bot""#,
        r#"on_behalf_of.endsWith("@example.com") && intent == "triage""#,
        r#"now.getDayOfWeek() == 1 && now.getHours() == 10 && now.getHours("Europe/Paris") == 11"#,
        r#"now > timestamp("2026-01-01T00:00:00Z") && now - timestamp("2026-01-05T10:00:00Z") == duration("30m")"#,
        r#"mcp.arguments.repo.matches("^[a-z-]+$")"#,
        r#"has(mcp.arguments.owner) && !has(mcp.arguments.org)"#,
    ] {
        assert_eq!(eval(expr, &vars), Ok(true), "{expr}");
        assert_eq!(eval_bound(expr), Ok(true), "{expr}");
    }
    for expr in [
        r#"mcp.arguments.owner == "other""#,
        r#"agent.exe == "/usr/bin/node""#,
        r#"now.getHours() >= 18"#,
    ] {
        assert_eq!(eval(expr, &vars), Ok(false), "{expr}");
        assert_eq!(eval_bound(expr), Ok(false), "{expr}");
    }
}

/// Variables are bound by reference (`to_val`): each kind of value comes
/// out as cel's own conversion makes it.
#[test]
fn values_bind_as_cels_own_conversion_binds_them() {
    let nested = json_to_cel(&json!({
        "owner": "acme",
        "n": -3,
        "big": 18_446_744_073_709_551_615u64,
        "ratio": 0.5,
        "flags": [true, null, {"deep": ["x", 1]}],
        "empty": {},
        "none": [],
    }))
    .unwrap();
    let mut samples = vec![
        nested,
        Cel::Null,
        Cel::Bool(false),
        Cel::Int(i64::MIN),
        Cel::UInt(7),
        Cel::Float(-1.25),
        Cel::from("text".to_owned()),
        timestamp(monday_morning()).unwrap(),
    ];
    samples.push(Cel::List(Arc::new(samples.clone())));
    let back = |v: &dyn Val| Cel::try_from(v).unwrap();
    for v in &samples {
        let ours = to_val(v).unwrap();
        let cels: Box<dyn Val> = v.clone().try_into().unwrap();
        assert_eq!(back(ours.as_ref()), back(cels.as_ref()), "{v:?}");
        assert_eq!(back(ours.as_ref()), *v, "{v:?}");
    }
}

#[test]
fn runtime_failures_are_errors_not_true() {
    let vars = vars_with(None, None).with_mcp(McpView::default());
    // A missing key, null where a string is needed, a non-bool result.
    for expr in [
        r#"mcp.arguments.owner == "acme""#,
        r#"mcp.tool.startsWith("list_")"#,
        r#"request.body.x == 1"#,
        r#"dyn(request.port)"#,
    ] {
        assert!(eval(expr, &vars).is_err(), "{expr}");
    }
    // Without an identity's exe, or an on_behalf_of: null, never equal.
    let mut id = identity();
    id.exe = None;
    let vars = Vars::new(
        RequestView {
            method: "GET",
            host: "h",
            port: 80,
            path: "/",
            query: None,
            headers: None,
            body: None,
        },
        &id,
        None,
        None,
        monday_morning(),
        &[],
        Uses::ALL,
    );
    assert_eq!(eval(r#"agent.exe == "/usr/bin/python3""#, &vars), Ok(false));
    assert_eq!(eval(r#"on_behalf_of == "alice""#, &vars), Ok(false));
}

/// A call's `arguments` and `params` are converted only for conditions that
/// read them; a condition reading one that was left out fails, never sees
/// an empty value.
#[test]
fn a_calls_arguments_and_params_are_built_only_where_read() {
    let target = Target {
        kind: TargetKind::Tool,
        name: "create_issue".into(),
    };
    let args = json!({"owner": "acme"});
    let params = json!({"name": "create_issue", "arguments": {"owner": "acme"}});
    let view = McpView {
        method: Some("tools/call"),
        target: Some(&target),
        arguments: Some(&args),
        params: Some(&params),
        id: Some(&json!(1)),
    };
    let vars_for = |needs: Uses| {
        Vars::new(
            RequestView {
                method: "POST",
                host: "h",
                port: 443,
                path: "/mcp",
                query: None,
                headers: None,
                body: None,
            },
            &identity(),
            None,
            None,
            monday_morning(),
            &[],
            needs,
        )
        .with_mcp(view)
    };
    let keys = |vars: &Vars| -> Vec<String> {
        let Ok(Cel::Map(m)) = &vars.mcp else {
            panic!("mcp is not a map: {:?}", vars.mcp)
        };
        let mut keys: Vec<String> = m.map.keys().map(|k| k.to_string()).collect();
        keys.sort();
        keys
    };
    let on_arguments = Condition::compile(r#"mcp.arguments.owner == "acme""#).unwrap();
    let on_params = Condition::compile(r#"mcp.params.name == "create_issue""#).unwrap();
    let on_tool = Condition::compile(r#"mcp.tool == "create_issue""#).unwrap();
    let whole = Condition::compile(r#"mcp.params.name == mcp.tool && "owner" in mcp["arguments"]"#)
        .unwrap();

    let vars = vars_for(on_arguments.uses());
    assert_eq!(
        keys(&vars),
        ["arguments", "id", "method", "prompt", "resource", "tool"]
    );
    assert_eq!(on_arguments.evaluate(&vars), Ok(true));
    assert!(on_params.evaluate(&vars).is_err());

    let vars = vars_for(on_params.uses());
    assert_eq!(
        keys(&vars),
        ["id", "method", "params", "prompt", "resource", "tool"]
    );
    assert_eq!(on_params.evaluate(&vars), Ok(true));

    let vars = vars_for(on_tool.uses());
    assert_eq!(keys(&vars), ["id", "method", "prompt", "resource", "tool"]);
    assert_eq!(on_tool.evaluate(&vars), Ok(true));
    assert!(on_arguments.evaluate(&vars).is_err());

    // Used whole, `mcp` has both.
    let vars = vars_for(whole.uses());
    assert_eq!(
        keys(&vars),
        [
            "arguments",
            "id",
            "method",
            "params",
            "prompt",
            "resource",
            "tool"
        ]
    );
    assert_eq!(whole.evaluate(&vars), Ok(true));
}

#[test]
fn bodies_over_the_bound_fail_the_conditions_that_read_them() {
    let big = json!({ "items": vec![0; MAX_VALUES] });
    let vars = vars_with(Some(&big), None);
    let err = eval("size(request.body.items) > 0", &vars).unwrap_err();
    assert!(
        err.contains("request is unavailable") && err.contains("values"),
        "{err}"
    );
    // Conditions that do not read the request still work.
    assert_eq!(eval(r#"agent.name == "bot""#, &vars), Ok(true));
}

#[test]
fn load_time_checks_refuse_what_cannot_work() {
    for (expr, want) in [
        ("", "empty"),
        ("request.method ==", "Syntax error"),
        ("requst.method == \"GET\"", "unknown variable \"requst\""),
        ("request.mthod == \"GET\"", "no field \"mthod\""),
        ("mcp.tol == \"x\"", "no field \"tol\""),
        ("agent.user == \"x\"", "no field \"user\""),
        ("lowerAscii(request.host) == \"x\"", "unknown function"),
        ("agent.uid == \"1000\"", "compares a int with a string"),
        ("request.port > \"80\"", "compares a int with a string"),
        ("request.path", "gives a string"),
        ("42", "gives a int"),
        ("[1].all(x, [2].exists(y, x == y))", "inside another"),
        (
            "google.protobuf.Duration{seconds: 1} == duration(\"1s\")",
            "not supported",
        ),
    ] {
        let err = Condition::compile(expr).unwrap_err();
        assert!(err.contains(want), "{expr}: {err}");
    }
    let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
    assert!(Condition::compile(&deep).is_err());
    let long = format!("true{}", " && true".repeat(MAX_SOURCE / 8));
    assert!(Condition::compile(&long).unwrap_err().contains("longer"));
    let wide = format!("true{}", " && true".repeat(MAX_NODES / 2 + 1));
    assert!(
        Condition::compile(&wide).unwrap_err().contains("nodes"),
        "{}",
        wide.len()
    );
    // Comprehension variables are in scope only inside.
    assert!(
        Condition::compile("[1].all(x, x > 0) && x > 0")
            .unwrap_err()
            .contains("\"x\"")
    );
    // Only the variables read are marked.
    let c = Condition::compile(r#"agent.uid == 0 || now.getHours() < 9"#).unwrap();
    assert_eq!(
        c.uses(),
        Uses {
            agent: true,
            now: true,
            ..Uses::default()
        }
    );
    // Fields the audit record does not hold are marked one by one; a
    // variable used whole marks them all.
    let c = Condition::compile(r#"request.path == "/" && mcp.arguments.owner == "acme""#)
        .unwrap()
        .uses();
    assert!(c.request && c.mcp && c.mcp_arguments);
    assert!(!c.request_body && !c.request_headers && !c.mcp_params);
    assert_eq!(c.unrecorded(false), ["mcp.arguments"]);
    assert!(c.unrecorded(true).is_empty());
    let c = Condition::compile(r#"has(request.body.x) || "x" in request.headers"#)
        .unwrap()
        .uses();
    assert_eq!(c.unrecorded(true), ["request.headers", "request.body"]);
    let c = Condition::compile(r#"size(mcp) > 0"#).unwrap().uses();
    assert_eq!(c.unrecorded(false), ["mcp.arguments", "mcp.params"]);
    // A comprehension variable named like a root is not the root.
    let c = Condition::compile(r#"[1].all(request, request > 0)"#)
        .unwrap()
        .uses();
    assert!(!c.request_body && !c.request);
}

/// Every allowed function name resolves in the interpreter: the allowlist
/// names nothing the crate lacks.
#[test]
fn every_allowed_function_exists() {
    let vars = vars_with(None, None);
    let calls = [
        ("size", r#"size("ab") == 2"#),
        ("contains", r#""abc".contains("b")"#),
        ("startsWith", r#""abc".startsWith("a")"#),
        ("endsWith", r#""abc".endsWith("c")"#),
        ("matches", r#""abc".matches("^a.c$")"#),
        ("int", r#"int("3") == 3"#),
        ("uint", r#"uint(3) == 3u"#),
        ("double", r#"double(1) == 1.0"#),
        ("string", r#"string(1) == "1""#),
        ("bytes", r#"bytes("a") == b"a""#),
        ("bool", r#"bool("true")"#),
        ("type", r#"type(1) == type(2)"#),
        ("dyn", r#"dyn(1) == 1"#),
        ("duration", r#"duration("1m") == duration("60s")"#),
        ("timestamp", r#"timestamp("2026-01-01T00:00:00Z") < now"#),
        ("getFullYear", r#"now.getFullYear() == 2026"#),
        ("getMonth", r#"now.getMonth() == 0"#),
        ("getDayOfYear", r#"now.getDayOfYear() == 4"#),
        ("getDayOfMonth", r#"now.getDayOfMonth() == 4"#),
        ("getDate", r#"now.getDate() == 5"#),
        ("getDayOfWeek", r#"now.getDayOfWeek() == 1"#),
        ("getHours", r#"now.getHours() == 10"#),
        ("getMinutes", r#"now.getMinutes() == 30"#),
        ("getSeconds", r#"now.getSeconds() == 0"#),
        ("getMilliseconds", r#"now.getMilliseconds() == 0"#),
    ];
    assert_eq!(calls.len(), FUNCTIONS.len());
    for (name, expr) in calls {
        assert!(FUNCTIONS.contains(&name), "{name}");
        assert_eq!(eval(expr, &vars), Ok(true), "{name}: {expr}");
    }
}

#[test]
fn deep_and_long_expressions_are_refused_without_crashing() {
    // The compiler runs on a thread of its own: none of these may overflow
    // the test thread's stack.
    for (expr, want) in [
        (
            format!("{}true{}", "(".repeat(60), ")".repeat(60)),
            "Recursion limit",
        ),
        (format!("1{} == 2", " + 1".repeat(400)), "deeper than"),
        (
            format!("{}true", "true ? true : ".repeat(100)),
            "Recursion limit",
        ),
        (format!("{}true", "!".repeat(1000)), ""),
    ] {
        match Condition::compile(&expr) {
            Ok(_) => assert!(want.is_empty(), "{expr} compiled"),
            Err(e) => assert!(e.contains(want), "{expr}: {e}"),
        }
    }
    // Long chains of && and || are fine up to the node bound.
    assert!(Condition::compile(&format!("true{}", " && true".repeat(100))).is_ok());
}
