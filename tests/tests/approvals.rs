//! Requests that wait for a person: curl, unmodified, calls a tool whose
//! policy says `approval = {...}`; the request is held (curl just waits)
//! until `agentguard approve` (it then reaches the upstream, exactly as
//! sent, once), `agentguard deny` or the timeout (403 with the reason).
//! An approval is bound to the exact request: an approver naming another
//! request's hash is refused, and a spent approval cannot be used again.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{Daemon, TestCa, TlsUpstream, require_root, text};

const AGENT: &str = "held-agent";
const API: &str = "api.agentguard.test";
const BODY: &str = r#"{"merge_method":"squash"}"#;

fn policy() -> String {
    format!(
        r#"
[[tool]]
name = "test.merge"
host = "{API}"
methods = ["POST"]
paths = ["/echo"]
approval = {{ timeout = "60s" }}

[[tool]]
name = "test.slow"
host = "{API}"
methods = ["POST"]
paths = ["/slow"]
approval = {{ timeout = "2s" }}

[[tool]]
name = "test.mcp-merge"
host = "{API}"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["merge_pull_request"]
approval = {{ timeout = "60s", when = 'mcp.arguments.pr > 5' }}
"#
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    upstream: TlsUpstream,
    daemon: Daemon,
}

fn setup() -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let upstream = TlsUpstream::start("127.0.0.3", API, &ca);
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy())
        .upstream_ca(&ca.pem_path)
        .start();
    Setup {
        _dir: dir,
        upstream,
        daemon,
    }
}

/// curl POSTs `BODY` to `path`, printing the body and then the status.
fn post(s: &Setup, path: &str) -> Child {
    post_body(s, path, BODY)
}

fn post_body(s: &Setup, path: &str, body: &str) -> Child {
    post_with(s, path, body, &[])
}

/// As [`post_body`], with more of curl's options (`--http1.1`, ...).
fn post_with(s: &Setup, path: &str, body: &str, options: &[&str]) -> Child {
    let url = s.upstream.url(path);
    let mut argv = vec![
        "curl",
        "-sS",
        "-m",
        "90",
        "-w",
        "\n%{http_code}",
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ];
    argv.extend_from_slice(options);
    argv.push(&url);
    s.daemon
        .exec_resolving(AGENT, &[API], "127.0.0.3", &argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls `agentguard approvals` (bounded: 15 s) until `n` requests wait.
fn wait_pending(s: &Setup, n: usize) -> Vec<Value> {
    wait_approvals(s, |pending| pending.len() >= n)
}

/// Polls `agentguard approvals` (bounded: 15 s) until `done` holds of the
/// requests waiting.
fn wait_approvals(s: &Setup, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = s.daemon.cli(&["approvals"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let pending: Vec<Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if done(&pending) {
            return pending;
        }
        assert!(Instant::now() < deadline, "still waiting: {pending:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (body, status) curl printed.
fn finish(child: Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (body.to_owned(), status.to_owned())
}

#[test]
fn an_approved_request_goes_upstream_once_exactly_as_it_was_shown() {
    let s = setup();
    let curl = post(&s, "/echo");
    let pending = wait_pending(&s, 1);
    let p = &pending[0];
    assert_eq!(p["agent"], AGENT);
    assert_eq!(p["pid"], curl.id(), "bound to the process that asked");
    assert_eq!(p["tool"], "test.merge");
    assert_eq!(p["method"], "POST");
    assert_eq!(p["url"], s.upstream.url("/echo"));
    assert_eq!(p["body_preview"], BODY);
    // The hash is the request's own: method, URL and body, as a
    // request-bound token's `rh` would bind them.
    let uri: hyper::Uri = s.upstream.url("/echo").parse().unwrap();
    let expected = agentguard::token::RequestBinding::new("POST", &uri, "https", BODY.as_bytes())
        .request_hash();
    assert_eq!(p["request_hash"], expected.as_str());
    let id = p["id"].as_str().unwrap().to_owned();

    // Held: nothing reached the upstream, and curl is still waiting on an
    // open connection.
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.upstream.seen().is_empty());

    // An approver who was shown another request is refused; the request
    // keeps waiting.
    let wrong = s
        .daemon
        .cli(&["approve", &id, "--hash", "not-this-request"]);
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("is not the request you were shown"),
        "{}",
        text(&wrong.stderr)
    );
    assert_eq!(wait_pending(&s, 1)[0]["id"], id.as_str());

    let ok = s.daemon.cli(&["approve", &id, "--hash", &expected]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let (body, status) = finish(curl);
    assert_eq!((body.as_str(), status.as_str()), (BODY, "200"));
    let seen: Vec<String> = s.upstream.seen().iter().map(|r| r.path.clone()).collect();
    assert_eq!(seen, ["/echo"]);

    // Spent: it approves nothing else.
    let again = s.daemon.cli(&["approve", &id]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("is waiting for approval"));

    // The record: who approved what, and the request that went through
    // names its approval and approver.
    let events = s.daemon.wait_for_events("approval and request", |e| {
        e.iter().any(|e| e["kind"] == "approval")
            && e.iter()
                .any(|e| e["kind"] == "request" && e["status"] == 200)
    });
    let approval = events.iter().find(|e| e["kind"] == "approval").unwrap();
    assert_eq!(approval["decision"], "allow");
    assert_eq!(approval["rule"], "approval:approved");
    assert_eq!(approval["approval_id"], id.as_str());
    assert_eq!(approval["request_hash"], expected.as_str());
    assert_eq!(approval["pid"], p["pid"]);
    let actor = approval["actor"].as_str().unwrap();
    assert!(actor.contains("(admin socket, uid 0)"), "{actor}");
    let request = events.iter().find(|e| e["kind"] == "request").unwrap();
    assert_eq!(request["decision"], "allow");
    assert_eq!(request["approval_id"], id.as_str());
    assert_eq!(request["actor"], actor);
}

#[test]
fn an_agent_that_gives_up_withdraws_its_held_request() {
    let s = setup();
    // HTTP/1.1, whose end of stream hyper does not report (half-closes are
    // kept), and HTTP/2, whose connection ends with the agent's.
    let mut h1 = post_with(&s, "/echo", BODY, &["--http1.1"]);
    let pending = wait_pending(&s, 1);
    let h1_id = pending[0]["id"].as_str().unwrap().to_owned();
    let mut h2 = post_with(&s, "/echo", r#"{"n":2}"#, &["--http2"]);
    let pending = wait_pending(&s, 2);
    let h2_id = pending
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .find(|id| *id != h1_id)
        .unwrap()
        .to_owned();
    // Agents that still wait keep their requests: past a few of the
    // connection checks (one a second), both are still held.
    std::thread::sleep(Duration::from_millis(2500));
    let listed = s.daemon.cli(&["approvals"]);
    assert_eq!(
        text(&listed.stdout).lines().count(),
        2,
        "{}",
        text(&listed.stdout)
    );
    h1.kill().unwrap();
    h1.wait().unwrap();
    h2.kill().unwrap();
    h2.wait().unwrap();
    wait_approvals(&s, <[Value]>::is_empty);

    // Withdrawn, so there is nothing to approve and nothing went upstream.
    let late = s.daemon.cli(&["approve", &h1_id]);
    assert!(!late.status.success());
    assert!(text(&late.stderr).contains("is waiting for approval"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.upstream.seen().is_empty());

    // Each request's record says how it ended: the HTTP/1.1 one withdrawn,
    // the HTTP/2 one abandoned with its stream; each approval event says
    // withdrawn.
    let of = |events: &[Value], kind: &str, id: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind && e["approval_id"] == id)
            .cloned()
    };
    let events = s.daemon.wait_for_events("both records", |e| {
        [&h1_id, &h2_id]
            .iter()
            .all(|id| of(e, "approval", id).is_some() && of(e, "request", id).is_some())
    });
    let time =
        |e: &Value| chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
    for id in [&h1_id, &h2_id] {
        let approval = of(&events, "approval", id).unwrap();
        assert_eq!(approval["rule"], "approval:withdrawn", "{approval}");
        assert_eq!(approval["decision"], "refuse", "{approval}");
        assert!(approval["actor"].is_null(), "{approval}");
        // Stamped when the request was withdrawn, after the 2.5 s it was
        // held, not when it was queued.
        let request = of(&events, "request", id).unwrap();
        let held_for = time(&approval) - time(&request);
        assert!(
            held_for >= chrono::TimeDelta::seconds(2),
            "{held_for}: {approval} {request}"
        );
    }
    let reason = |id: &str| of(&events, "approval", id).unwrap()["reason"].to_string();
    assert!(
        reason(&h1_id).contains("closed its connection"),
        "{}",
        reason(&h1_id)
    );
    assert!(
        reason(&h2_id).contains("ended before a verdict"),
        "{}",
        reason(&h2_id)
    );
    let request = of(&events, "request", &h1_id).unwrap();
    assert_eq!(request["rule"], "approval-withdrawn");
    assert_eq!(request["status"], 499);
    assert_eq!(request["protocol"], "HTTP/1.1");
    let request = of(&events, "request", &h2_id).unwrap();
    assert_eq!(request["protocol"], "HTTP/2");
    assert!(
        request["reason"]
            .as_str()
            .unwrap()
            .contains("abandoned the request"),
        "{request}"
    );
}

#[test]
fn denied_and_unanswered_requests_get_403_with_the_reason_and_never_leave() {
    let s = setup();
    let denied = post(&s, "/echo");
    let id = wait_pending(&s, 1)[0]["id"].as_str().unwrap().to_owned();
    let out = s
        .daemon
        .cli(&["deny", &id, "--reason", "not during the freeze"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (body, status) = finish(denied);
    assert_eq!(status, "403");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["rule"], "approval-denied");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("not during the freeze"), "{error}");

    // Nobody answers: refused when the tool's timeout (2 s) passes.
    let slow = post(&s, "/slow");
    wait_pending(&s, 1);
    let (body, status) = finish(slow);
    assert_eq!(status, "403");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["rule"], "approval-timeout");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not approved within 2s")
    );
    assert!(s.upstream.seen().is_empty(), "nothing was sent upstream");

    let events = s.daemon.wait_for_events("two approval events", |e| {
        e.iter().filter(|e| e["kind"] == "approval").count() == 2
    });
    let rules: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "approval")
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["approval:denied", "approval:timeout"]);
    assert!(s.daemon.cli(&["approvals"]).stdout.is_empty());
}

#[test]
fn an_mcp_call_an_approver_refuses_gets_a_json_rpc_error_with_its_id() {
    let s = setup();
    // The approval's condition does not hold: the call goes straight on.
    let small = r#"{"jsonrpc":"2.0","id":40,"method":"tools/call","params":{"name":"merge_pull_request","arguments":{"pr":1}}}"#;
    let (_, status) = finish(post_body(&s, "/mcp", small));
    assert_ne!(status, "403");
    let seen: Vec<String> = s.upstream.seen().iter().map(|r| r.path.clone()).collect();
    assert_eq!(seen, ["/mcp"], "forwarded without waiting");

    // It holds: the call waits for a person.
    let call = r#"{"jsonrpc":"2.0","id":41,"method":"tools/call","params":{"name":"merge_pull_request","arguments":{"pr":7}}}"#;
    let curl = post_body(&s, "/mcp", call);
    let pending = wait_pending(&s, 1);
    assert_eq!(pending[0]["tool"], "test.mcp-merge");
    assert_eq!(pending[0]["body_preview"], call);
    let id = pending[0]["id"].as_str().unwrap().to_owned();
    let out = s
        .daemon
        .cli(&["deny", &id, "--reason", "merges wait for review"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The MCP client gets the call's own error, with the call's id, in an
    // HTTP 200: its SDK reports a refused tool call, not a broken
    // transport.
    let (body, status) = finish(curl);
    assert_eq!(status, "200", "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 41);
    assert_eq!(body["error"]["data"]["rule"], "approval-denied");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("merges wait for review"), "{message}");
    assert_eq!(s.upstream.seen().len(), 1, "the refused call was not sent");

    // A batch whose second member must wait holds the whole body, which
    // goes upstream as one.
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"merge_pull_request","arguments":{"pr":2}}},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"merge_pull_request","arguments":{"pr":9}}}]"#;
    let curl = post_body(&s, "/mcp", batch);
    let id = wait_pending(&s, 1)[0]["id"].as_str().unwrap().to_owned();
    assert!(s.daemon.cli(&["deny", &id]).status.success());
    let (body, status) = finish(curl);
    assert_eq!(status, "200", "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&Value> = body.as_array().unwrap().iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(s.upstream.seen().len(), 1, "the held batch was not sent");
}
