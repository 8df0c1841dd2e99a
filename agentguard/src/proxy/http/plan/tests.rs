//! Request plans, table-style: one row per request, the plan it gets.

use std::net::{IpAddr, SocketAddr};

use hyper::Request;

use super::*;
use crate::identity::Identity;
use crate::policy::BodyNeed;

const POLICY: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[credential]]
id = "api-key"
source = { env = "AGENTGUARD_PLAN_TEST_KEY" }
inject = { header = "x-api-key" }

[[tool]]
name = "api"
host = "api.example.com"
port = 443
methods = ["GET", "POST"]
paths = ["/v1/*"]
credential = "api-key"

[[tool]]
name = "public"
host = "public.example.com"
methods = ["GET"]
paths = ["/*"]

[[tool]]
name = "keyed-plain"
host = "keyed.example.com"
methods = ["GET"]
paths = ["/*"]
credential = "api-key"
"#;

const AUDITED: &str = r#"
[agent]
name = "watched"
cgroup = "agentguard/watched"
mode = "audit"

[[tool]]
name = "public"
host = "public.example.com"
methods = ["GET"]
paths = ["/*"]
"#;

fn policy() -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bot.toml"), POLICY).unwrap();
    std::fs::write(dir.path().join("watched.toml"), AUDITED).unwrap();
    crate::policy::load_path(dir.path()).unwrap()
}

/// The resolver gave every agent 127.0.0.5 for public.example.com and
/// keyed.example.com, and nothing else.
struct Resolved;

impl Resolutions for Resolved {
    fn resolved_to(&self, _agent: &str, name: &str, ip: IpAddr) -> bool {
        ["public.example.com", "keyed.example.com"].contains(&name)
            && ip == IpAddr::from([127, 0, 0, 5])
    }
}

fn meta(agent: &str, sni: Option<&str>, dst: &str) -> ConnMeta {
    ConnMeta {
        identity: Identity {
            agent: agent.into(),
            cgroup: format!("agentguard/{agent}"),
            cgroup_id: 1,
            pid: 1,
            tid: 1,
            uid: 1000,
            gid: 1000,
            comm: "curl".into(),
            socket_family: "ipv4",
            exe: None,
            container: None,
        },
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        dst: dst.parse().unwrap(),
        sni: sni.map(str::to_owned),
        dial: crate::netns::Dial::Host,
        place: std::sync::Arc::new(crate::proxy::limits::Held::detached()),
        agent_socket: None,
        on_behalf_of: None,
    }
}

/// One request: on a connection of `agent` (TLS with `sni`, or plain
/// HTTP) to `dst`; `target` is the request target (origin or absolute
/// form); `headers` includes Host where the row wants one.
struct Row {
    agent: &'static str,
    sni: Option<&'static str>,
    dst: &'static str,
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    want: Want,
}

#[derive(Debug)]
enum Want {
    /// Forwarded: tool, credential id, upgrade.
    Forward(Option<&'static str>, Option<&'static str>, bool),
    /// Refused: status and rule.
    Refuse(u16, &'static str),
}

fn gets(plan: &Plan<'_>, want: &Want) -> bool {
    match (&plan.action, want) {
        (Action::Forward(f), Want::Forward(tool, credential, upgrade)) => {
            plan.noted.tool.as_deref() == *tool
                && f.credential.map(|c| c.id.as_str()) == *credential
                && f.upgrade == *upgrade
        }
        (Action::Refuse(r), Want::Refuse(status, rule)) => {
            r.status().as_u16() == *status && r.rule() == *rule
        }
        _ => false,
    }
}

const TLS_API: (&str, Option<&str>, &str) = ("bot", Some("api.example.com"), "127.0.0.3:443");

fn row(
    (agent, sni, dst): (&'static str, Option<&'static str>, &'static str),
    method: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    want: Want,
) -> Row {
    Row {
        agent,
        sni,
        dst,
        method,
        target,
        headers,
        want,
    }
}

fn plan_for<'p>(
    (agent, sni, dst): (&str, Option<&str>, &str),
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    set: &'p PolicySet,
) -> Plan<'p> {
    let mut req = Request::builder().method(method).uri(target);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(()).unwrap();
    let meta = meta(agent, sni, dst);
    let identity = crate::policy::AgentIdentity::from(&meta.identity);
    let limiter = crate::policy::RateLimiter::new();
    let caller = Caller {
        identity: &identity,
        on_behalf_of: None,
        intent: None,
        now: std::time::SystemTime::now(),
        limiter: &limiter,
    };
    plan(&req, &meta, set, &Resolved, &caller)
}

#[test]
fn each_request_gets_the_plan_its_checks_give_in_order() {
    use Want::{Forward, Refuse};
    let host = |h: &'static str| vec![("host", h)];
    let plain = |dst: &'static str| ("bot", None, dst);
    #[rustfmt::skip]
    let rows = [
        // Allowed, with the tool's credential.
        row(TLS_API, "GET", "/v1/models", host("api.example.com"), Forward(Some("api"), Some("api-key"), false)),
        // HTTP/2: the authority is in the URI.
        row(TLS_API, "POST", "https://api.example.com/v1/chat", vec![], Forward(Some("api"), Some("api-key"), false)),
        // No authority at all.
        row(TLS_API, "GET", "/v1/models", vec![], Refuse(400, "bad-request")),
        // Host, SNI and port must agree (domain fronting).
        row(TLS_API, "GET", "/v1/models", host("evil.example.com"), Refuse(421, "misdirected")),
        row(TLS_API, "GET", "/v1/models", host("api.example.com:8443"), Refuse(421, "misdirected")),
        // Plain HTTP: only to an address the resolver gave for the host, or
        // the host itself as an IP literal.
        row(plain("127.0.0.5:80"), "GET", "/page", host("public.example.com"), Forward(Some("public"), None, false)),
        row(plain("127.0.0.6:80"), "GET", "/page", host("public.example.com"), Refuse(421, "misdirected")),
        row(plain("127.0.0.6:80"), "GET", "/page", host("127.0.0.6"), Refuse(403, "default-deny")),
        // Paths are normalised before matching, and refused when they
        // cannot be.
        row(TLS_API, "GET", "/v1/%2Fadmin", host("api.example.com"), Refuse(400, "path-refused")),
        row(TLS_API, "GET", "/v1/../admin", host("api.example.com"), Refuse(403, "default-deny")),
        // A second layer of escapes reads differently to a server that
        // decodes twice.
        row(TLS_API, "GET", "/v1/%252e%252e/admin", host("api.example.com"), Refuse(400, "path-refused")),
        // One authority per request (RFC 9112 §3.2, RFC 9113 §8.3.1).
        row(TLS_API, "GET", "/v1/models", vec![("host", "api.example.com"), ("host", "api.example.com")], Refuse(400, "bad-request")),
        row(TLS_API, "GET", "https://api.example.com/v1/models", host("public.example.com"), Refuse(400, "bad-request")),
        // _method is refused where a credential rides along, not elsewhere.
        row(TLS_API, "POST", "/v1/chat?_method=DELETE", host("api.example.com"), Refuse(403, "method-override")),
        row(TLS_API, "POST", "/v1/chat?%5Fmethod=DELETE", host("api.example.com"), Refuse(403, "method-override")),
        row(("bot", Some("public.example.com"), "127.0.0.5:443"), "GET", "/page?_method=DELETE", host("public.example.com"), Forward(Some("public"), None, false)),
        // Default deny: method, path and host must all match a tool.
        row(TLS_API, "DELETE", "/v1/models", host("api.example.com"), Refuse(403, "default-deny")),
        // An agent reloaded away since its connection was attributed.
        row(("ghost", Some("api.example.com"), "127.0.0.3:443"), "GET", "/v1/models", host("api.example.com"), Refuse(403, "unknown-agent")),
        // Only WebSocket upgrades.
        row(TLS_API, "GET", "/v1/ws", vec![("host", "api.example.com"), ("connection", "Upgrade"), ("upgrade", "websocket")], Forward(Some("api"), Some("api-key"), true)),
        row(TLS_API, "GET", "/v1/ws", vec![("host", "api.example.com"), ("connection", "Upgrade"), ("upgrade", "h2c")], Refuse(403, "upgrade-refused")),
        // A credential never goes over plain HTTP.
        row(plain("127.0.0.5:80"), "GET", "/page", host("keyed.example.com"), Refuse(403, "credential-over-plain-http")),
        // Audit mode: a denial is recorded and forwarded, without credential.
        row(("watched", Some("api.example.com"), "127.0.0.3:443"), "GET", "/v1/models", host("api.example.com"), Forward(None, None, false)),
    ];
    let set = policy();
    for (i, r) in rows.iter().enumerate() {
        let plan = plan_for(
            (r.agent, r.sni, r.dst),
            r.method,
            r.target,
            &r.headers,
            &set,
        );
        assert!(
            gets(&plan, &r.want),
            "row {i}: {} {} {:?} on {:?} to {}: want {:?}, got {plan:?}",
            r.method,
            r.target,
            r.headers,
            r.sni,
            r.dst,
            r.want
        );
    }
}

#[test]
fn the_record_keeps_what_was_learnt_before_a_refusal() {
    let set = policy();
    let noted = |target, headers| plan_for(TLS_API, "GET", target, headers, &set).noted;
    // The host is recorded even when it is the reason for the refusal.
    let n = noted("/v1/models", &[("host", "Evil.Example.com")]);
    assert_eq!(n.host.as_deref(), Some("evil.example.com"));
    assert_eq!(n.path, None);
    // A path that does not normalise is recorded as received.
    let n = noted("/v1/%2Fadmin", &[("host", "api.example.com")]);
    assert_eq!(n.path.as_deref(), Some("/v1/%2Fadmin"));
    assert_eq!(n.bare_path, "");
    // A normalised path keeps the agent's query in the record only.
    let n = noted("/v1/./models?q=1", &[("host", "api.example.com")]);
    assert_eq!(n.path.as_deref(), Some("/v1/models?q=1"));
    assert_eq!(n.bare_path, "/v1/models");
    assert_eq!(n.credential_id.as_deref(), Some("api-key"));
    assert_eq!(
        n.verdict,
        Some((
            Recorded::Allow,
            "tool:api".into(),
            "allowed by tool \"api\"".into()
        ))
    );
    // The tool that allowed an upgrade it then refused is recorded.
    let upgrade = [
        ("host", "api.example.com"),
        ("connection", "upgrade"),
        ("upgrade", "h2c"),
    ];
    assert_eq!(noted("/v1/ws", &upgrade).tool.as_deref(), Some("api"));
    // A credential that is not sent is not recorded.
    let plain = ("bot", None, "127.0.0.5:80");
    let n = plan_for(
        plain,
        "GET",
        "/page",
        &[("host", "keyed.example.com")],
        &set,
    )
    .noted;
    assert_eq!(n.tool.as_deref(), Some("keyed-plain"));
    assert_eq!(n.credential_id, None);
    // Audit mode records the denial it lets through.
    let watched = ("watched", Some("api.example.com"), "127.0.0.3:443");
    let n = plan_for(
        watched,
        "GET",
        "/v1/models",
        &[("host", "api.example.com")],
        &set,
    )
    .noted;
    assert_eq!(
        n.verdict.map(|(d, rule, _)| (d, rule)),
        Some((Recorded::WouldDeny, "default-deny".into()))
    );
}

const CALLS: &str = r#"
[agent]
name = "caller"
cgroup = "agentguard/caller"

[[tool]]
name = "mcp"
host = "mcp.example.com"
methods = ["POST", "GET"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["list_*"]

[[tool]]
name = "by-uid"
host = "api.example.com"
methods = ["GET"]
paths = ["/v1/*"]
when = 'agent.uid == 1000 && (!has(request.query.page) || request.query.page != "2")'

[[tool]]
name = "by-body"
host = "api.example.com"
methods = ["POST"]
paths = ["/v1/*"]
when = 'request.body.kind == "ticket"'

[[tool]]
name = "rated"
host = "rated.example.com"
methods = ["GET"]
paths = ["/*"]
rate = "2/min"
"#;

/// Tools that decide on more than the head: conditions on the caller and
/// the query are decided here, rates counted here; JSON-RPC bodies and
/// bodies a condition reads are left to `call`.
#[test]
fn call_aware_tools_are_decided_on_the_caller_or_left_for_the_body() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("caller.toml"), CALLS).unwrap();
    let set = crate::policy::load_path(dir.path()).unwrap();
    let limiter = crate::policy::RateLimiter::new();
    let now = std::time::SystemTime::now();
    let go = |uid: u32, method: &str, host: &'static str, target: &str| {
        let mut m = meta("caller", Some(host), "127.0.0.3:443");
        m.identity.uid = uid;
        let identity = crate::policy::AgentIdentity::from(&m.identity);
        let req = Request::builder()
            .method(method)
            .uri(target)
            .header("host", host)
            .body(())
            .unwrap();
        let caller = Caller {
            identity: &identity,
            on_behalf_of: None,
            intent: None,
            now,
            limiter: &limiter,
        };
        match plan(&req, &m, &set, &Resolved, &caller).action {
            Action::Forward(f) => Ok((f.host, f.resumed_lists)),
            Action::Refuse(r) => Err((r.status().as_u16(), r.rule())),
            Action::Decide(p) => Err((
                0,
                match p.need {
                    BodyNeed::JsonRpc { .. } => "json-rpc",
                    BodyNeed::Json { .. } => "json",
                    BodyNeed::None => "none",
                },
            )),
        }
    };
    // The caller's uid and the query, on the head.
    assert_eq!(
        go(1000, "GET", "api.example.com", "/v1/x"),
        Ok(("api.example.com".into(), false))
    );
    assert_eq!(
        go(1000, "GET", "api.example.com", "/v1/x?page=3"),
        Ok(("api.example.com".into(), false))
    );
    assert_eq!(
        go(0, "GET", "api.example.com", "/v1/x"),
        Err((403, "condition"))
    );
    assert_eq!(
        go(1000, "GET", "api.example.com", "/v1/x?page=2"),
        Err((403, "condition"))
    );
    // A condition on the body, and an MCP POST: decided once the body is read.
    assert_eq!(
        go(1000, "POST", "api.example.com", "/v1/x"),
        Err((0, "json"))
    );
    assert_eq!(
        go(1000, "POST", "mcp.example.com", "/mcp"),
        Err((0, "json-rpc"))
    );
    // The MCP event stream is session traffic: no body to read; the list
    // responses a resumed stream may replay are filtered.
    assert_eq!(
        go(1000, "GET", "mcp.example.com", "/mcp"),
        Ok(("mcp.example.com".into(), true))
    );
    // Two a minute, then 429 with the time to wait.
    assert!(go(1000, "GET", "rated.example.com", "/a").is_ok());
    assert!(go(1000, "GET", "rated.example.com", "/a").is_ok());
    assert_eq!(
        go(1000, "GET", "rated.example.com", "/a"),
        Err((429, "rate-limited"))
    );
}
