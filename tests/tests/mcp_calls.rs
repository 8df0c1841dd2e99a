//! Policy that sees tool calls, end to end: the official MCP Python SDK,
//! unmodified, as the agent (`Client`, run with `agentguard exec`) and as
//! the server (`MCPServer` over streamable HTTP with TLS from a test CA, on
//! loopback), with agentguard deciding each call: allowed calls return
//! their results, denied ones come back as JSON-RPC errors naming
//! agentguard's reason, `tools/list` shows only allowed tools, conditions
//! read arguments, the kernel's identity and the time, rates count, SSE
//! flows event by event; a plain client's batch has only its denied member
//! answered by agentguard; a bad condition keeps the running policy; and
//! `policy replay` re-decides the recorded run under a changed policy.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::common::{AGENTGUARD, Daemon, TestCa, require_root, text};

const NAME: &str = "mcp.agentguard.test";
const AGENT: &str = "mcp-agent";
const IP: &str = "127.0.0.14";
const SERVER: &str = include_str!("mcp_calls/server.py");
const CLIENT: &str = include_str!("mcp_calls/client.py");

/// A child process stopped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The executable the kernel reports for `python3` (a symlink, or a shim
/// that execs the real interpreter): what `agent.exe` is for the client.
fn python_exe() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// RFC 3339 for `t`, as CEL's `timestamp()` reads it.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The agent's tools on the MCP server. `{python}`, `{from}` and `{until}`
/// are filled in.
const POLICY: &str = r#"
[[tool]]
name = "mcp.read"
host = "mcp.agentguard.test"
methods = ["POST", "GET", "DELETE"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["add", "list_issues", "count"]

[[tool]]
name = "mcp.write"
host = "mcp.agentguard.test"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue"]
when = 'mcp.arguments.owner == "acme" && mcp.arguments.repo == "widgets"'
record_arguments = true

[[tool]]
name = "mcp.python"
host = "mcp.agentguard.test"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["python_only"]
when = 'agent.exe == "{python}"'

[[tool]]
name = "mcp.window"
host = "mcp.agentguard.test"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["in_window"]
when = 'now >= timestamp("{from}") && now < timestamp("{until}")'

[[tool]]
name = "mcp.past"
host = "mcp.agentguard.test"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["in_the_past"]
when = 'now < timestamp("2000-01-01T00:00:00Z")'

[[tool]]
name = "mcp.rated"
host = "mcp.agentguard.test"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["ping_tool"]
rate = "20/min"
"#;

struct Setup {
    dir: tempfile::TempDir,
    daemon: Daemon,
    /// The MCP server answering with SSE, and the one answering with JSON.
    sse_port: u16,
    json_port: u16,
    calls_log: PathBuf,
    acks: PathBuf,
    python: String,
    _servers: Vec<Running>,
}

fn policy(python: &str) -> String {
    let now = SystemTime::now();
    POLICY
        .replace("{python}", python)
        .replace("{from}", &rfc3339(now - Duration::from_secs(3600)))
        .replace("{until}", &rfc3339(now + Duration::from_secs(3600)))
}

fn setup() -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard mcp test CA", dir.path());
    let python = python_exe();
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy(&python))
        .upstream_ca(&ca.pem_path)
        .start();
    let (cert, key) = ca.leaf_files(NAME, dir.path());
    let calls_log = dir.path().join("calls.jsonl");
    let acks = dir.path().join("acks");
    std::fs::create_dir(&acks).unwrap();
    let script = dir.path().join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for mode in ["sse", "json"] {
        let port = free_port(IP);
        let log = std::fs::File::create(dir.path().join(format!("server-{mode}.log"))).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .args([NAME, IP, &port.to_string()])
            .arg(&cert)
            .arg(&key)
            .arg(&calls_log)
            .arg(&acks)
            .arg(mode)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        servers.push(Running(child));
        ports.push(port);
    }
    for (port, mode) in ports.iter().zip(["sse", "json"]) {
        // The SDK's imports are slow on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect((IP, *port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "MCP server ({mode}) did not start: {}",
                std::fs::read_to_string(dir.path().join(format!("server-{mode}.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Setup {
        dir,
        daemon,
        sse_port: ports[0],
        json_port: ports[1],
        calls_log,
        acks,
        python,
        _servers: servers,
    }
}

impl Setup {
    fn url(&self, port: u16) -> String {
        format!("https://{NAME}:{port}/mcp")
    }

    /// Runs `cmd` as the agent, resolving the server's name to its address.
    fn agent(&self, cmd: &[&str]) -> Output {
        self.daemon
            .exec_resolving(AGENT, &[NAME], IP, cmd)
            .output()
            .unwrap()
    }

    /// The SDK's client against the SSE server: its JSON report.
    fn client(&self, mode: &str, rate: bool) -> Value {
        for f in std::fs::read_dir(&self.acks).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let script = self.dir.path().join("client.py");
        std::fs::write(&script, CLIENT).unwrap();
        let out = self.agent(&[
            "python3",
            &script.display().to_string(),
            &self.url(self.sse_port),
            &self.acks.display().to_string(),
            mode,
            if rate { "rate" } else { "norate" },
        ]);
        let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "client ({mode}) failed: {said}");
        let last = text(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned();
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {said}"))
    }

    /// The tool calls that reached the MCP servers.
    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.calls_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The request events, once `done` holds for them (they are committed
    /// shortly after the agent has its answers).
    fn requests(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let requests = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .filter(|e| e["kind"] == "request")
                .cloned()
                .collect()
        };
        let events = self
            .daemon
            .wait_for_events("request events", |events| done(&requests(events)));
        requests(&events)
    }
}

/// A JSON-RPC error of agentguard's: its code, and a message that names
/// agentguard and contains `reason`.
fn refused(result: &Value, code: i64, reason: &str) {
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["code"], code, "{result}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("agentguard: ") && message.contains(reason),
        "{result}"
    );
}

fn allowed(result: &Value, text: &str) {
    assert_eq!(result, &json!({"ok": true, "text": text}));
}

/// SHA-256 of the arguments' canonical JSON (keys sorted, no spaces).
fn digest(canonical: &str) -> String {
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

#[test]
fn the_mcp_sdk_calls_tools_through_agentguard_as_the_policy_decides() {
    let s = setup();
    let allowed_tools = json!([
        "add",
        "count",
        "create_issue",
        "in_the_past",
        "in_window",
        "list_issues",
        "ping_tool",
        "python_only"
    ]);
    // The initialize handshake with sessions, then the SDK's default (the
    // server/discover probe and the 2026-07-28 revision, whose requests
    // carry Mcp-Method and Mcp-Name headers that must match the body).
    for (mode, protocol) in [("legacy", "2025-11-25"), ("auto", "2026-07-28")] {
        let rate = mode == "legacy";
        let out = s.client(mode, rate);
        assert_eq!(out["protocol"], protocol, "{mode}: {out}");
        // tools/list shows the tools some [[tool]] names: not delete_repo.
        assert_eq!(out["tools"], allowed_tools, "{mode}");
        allowed(&out["add"], "42");
        // A tool no [[tool]] names: a JSON-RPC error, the session goes on.
        refused(&out["delete_repo"], -32003, "MCP tool \"delete_repo\"");
        // An argument condition: one repository, not another.
        allowed(&out["create_widgets"], "created 'bug' in acme/widgets");
        refused(
            &out["create_secrets"],
            -32003,
            "condition of tool \"mcp.write\"",
        );
        // The kernel's identity: the interpreter the client runs in.
        allowed(&out["python_only"], "python ok");
        // The time.
        allowed(&out["in_window"], "in window");
        refused(
            &out["in_the_past"],
            -32003,
            "condition of tool \"mcp.past\"",
        );
        // Progress events reached the client one by one: the server sent
        // each next one only after the client had seen the last.
        allowed(&out["count"], "counted 3");
        assert_eq!(out["progress"], json!([1.0, 2.0, 3.0]), "{mode}");
        if rate {
            // 20 calls in a minute, then the 21st is refused with the time
            // to wait; after it, calls go through again. (A minute, not
            // less: 21 calls on a loaded machine must fit in the window.)
            let calls = out["rate"].as_array().unwrap();
            assert_eq!(calls.len(), 21);
            for c in &calls[..20] {
                allowed(c, "pong");
            }
            refused(&calls[20], -32023, "tool \"mcp.rated\" allows 20/min");
            let wait = calls[20]["data"]["retryAfterMs"].as_u64().unwrap();
            assert!((1000..=60_000).contains(&wait), "{}", calls[20]);
            assert_eq!(calls[20]["data"]["rule"], "rate-limited");
            allowed(&out["rate_after"], "pong");
        }
    }

    // Denied calls never reached the server; allowed ones did.
    let calls = s.calls();
    let ran = |tool: &str| calls.iter().filter(|c| c["tool"] == tool).count();
    assert_eq!(ran("delete_repo"), 0, "{calls:?}");
    assert_eq!(ran("in_the_past"), 0, "{calls:?}");
    assert_eq!(ran("add"), 2);
    assert_eq!(ran("python_only"), 2);
    assert_eq!(ran("ping_tool"), 21);
    assert!(
        calls
            .iter()
            .filter(|c| c["tool"] == "create_issue")
            .all(|c| c["args"]["repo"] == "widgets"),
        "{calls:?}"
    );

    // The record: the JSON-RPC method and MCP tool of each call; arguments
    // only where the policy records them, else their SHA-256.
    // Both runs' 38 tools/call requests, and the legacy session's end.
    let requests = s.requests(|r| {
        r.iter().filter(|e| e["rpc_method"] == "tools/call").count() == 38
            && r.iter().any(|e| e["method"] == "DELETE")
    });
    let call_events = |target: &str| -> Vec<&Value> {
        requests
            .iter()
            .filter(|e| e["rpc_method"] == "tools/call" && e["mcp_target"] == target)
            .collect()
    };
    let rpc_calls = |e: &Value| -> Vec<Value> {
        serde_json::from_str(e["rpc_calls"].as_str().unwrap()).unwrap()
    };
    let deleted = call_events("delete_repo");
    assert_eq!(deleted.len(), 2);
    for e in &deleted {
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["rule"], "call-not-allowed", "{e}");
        assert_eq!(e["status"], 200, "{e}");
    }
    let added = call_events("add");
    assert_eq!(added.len(), 2);
    for e in &added {
        assert_eq!(
            (&e["decision"], &e["tool"]),
            (&json!("allow"), &json!("mcp.read"))
        );
        let c = &rpc_calls(e)[0];
        assert_eq!(c["arguments_sha256"], digest(r#"{"a":2,"b":40}"#), "{e}");
        assert!(c.get("arguments").is_none(), "{e}");
    }
    let created = call_events("create_issue");
    assert_eq!(created.len(), 4);
    let secrets: Vec<&&Value> = created
        .iter()
        .filter(|e| rpc_calls(e)[0]["arguments"]["repo"] == "secrets")
        .collect();
    assert_eq!(secrets.len(), 2, "{created:?}");
    for e in secrets {
        assert_eq!(
            (&e["decision"], &e["rule"]),
            (&json!("deny"), &json!("condition"))
        );
        assert_eq!(e["tool"], "mcp.write");
    }
    let limited: Vec<&Value> = requests
        .iter()
        .filter(|e| e["rule"] == "rate-limited")
        .collect();
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0]["status"], 429);
    assert_eq!(limited[0]["decision"], "deny");
    // Session traffic: the probe, the handshake, the list, the event
    // stream and the end of the session, all allowed by the MCP tool.
    let session = |method: &str, rpc: Option<&str>| {
        requests.iter().any(|e| {
            e["method"] == method
                && e["decision"] == "allow"
                && e["tool"] == "mcp.read"
                && rpc.is_none_or(|r| e["rpc_method"] == r)
        })
    };
    assert!(session("POST", Some("initialize")));
    assert!(session("POST", Some("server/discover")));
    assert!(session("POST", Some("tools/list")));
    assert!(session("GET", None), "the legacy session's event stream");
    assert!(session("DELETE", None), "the legacy session's end");

    replay_flips_exactly_what_the_change_flips(&s);
}

/// `agentguard policy replay` over the run above, with the candidate
/// policy `policy`: its exit code and JSON report.
fn replay(s: &Setup, name: &str, policy: &str) -> (Option<i32>, Value) {
    let dir = s.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(format!("{AGENT}.toml")), policy).unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["policy", "replay", "-o", "json", "--policies"])
        .arg(&dir)
        .arg("--state-dir")
        .arg(s.daemon.state_dir())
        .args(["--agent", AGENT, "--since", "1h"])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), report)
}

/// The changes of a report, as (change, MCP tool, old decision's rule or
/// tool) sorted.
fn flips(report: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["changes"][0].as_str().unwrap().to_owned(),
                c["target"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn replay_flips_exactly_what_the_change_flips(s: &Setup) {
    let running = std::fs::read_to_string(s.daemon.policy_path(AGENT)).unwrap();
    // The policy that decided: nothing changes (the rate limit's refusal
    // is counted again the same way).
    let (code, report) = replay(s, "same", &running);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["changes"], json!([]), "{report}");
    assert!(report["decisions"].as_u64().unwrap() >= 40, "{report}");
    assert_eq!(report["skipped"], 0, "{report}");

    // add no longer listed, delete_repo listed, the write condition
    // turned round: exactly those calls flip, and the gate closes.
    let changed = running
        .replace(
            r#"mcp_tools = ["add", "list_issues", "count"]"#,
            r#"mcp_tools = ["list_issues", "count", "delete_repo"]"#,
        )
        .replace(
            r#"mcp.arguments.repo == "widgets""#,
            r#"mcp.arguments.repo == "secrets""#,
        );
    let (code, report) = replay(s, "changed", &changed);
    assert_eq!(code, Some(1), "{report}");
    let pair = |c: &str, t: &str| (c.to_owned(), t.to_owned());
    assert_eq!(
        flips(&report),
        [
            pair("allow->deny", "add"),
            pair("allow->deny", "add"),
            pair("allow->deny", "create_issue"),
            pair("allow->deny", "create_issue"),
            pair("deny->allow", "create_issue"),
            pair("deny->allow", "create_issue"),
            pair("deny->allow", "delete_repo"),
            pair("deny->allow", "delete_repo"),
        ],
        "{report}"
    );
    assert_eq!(report["counts"]["allow->deny"], 4);
    assert_eq!(report["counts"]["deny->allow"], 4);
    for c in report["changes"].as_array().unwrap() {
        if c["target"] == "create_issue" && c["changes"][0] == "allow->deny" {
            assert_eq!(c["new"]["rule"], "condition", "{c}");
        }
    }

    // Only more allowed: the gate stays open.
    let wider = running.replace(
        r#"mcp_tools = ["add", "list_issues", "count"]"#,
        r#"mcp_tools = ["add", "list_issues", "count", "delete_repo"]"#,
    );
    let (code, report) = replay(s, "wider", &wider);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["counts"]["deny->allow"], 2, "{report}");
    assert_eq!(report["counts"]["allow->deny"], 0, "{report}");

    // A condition on headers, which the record does not hold: each call
    // it would decide is undetermined, not guessed.
    let headers = running.replace(
        &format!(r#"when = 'agent.exe == "{}"'"#, s.python),
        r#"when = 'request.headers["x-team"] == "blue"'"#,
    );
    assert_ne!(headers, running);
    let (code, report) = replay(s, "headers", &headers);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        flips(&report),
        [
            pair("undetermined", "python_only"),
            pair("undetermined", "python_only"),
        ]
    );
    assert_eq!(report["changes"][0]["needs"], json!(["request.headers"]));
    assert!(report["changes"][0].get("new").is_none_or(Value::is_null));

    // The table says the same for people.
    let dir = s.dir.path().join("changed");
    let out = Command::new(AGENTGUARD)
        .args(["policy", "replay", "--policies"])
        .arg(&dir)
        .arg("--state-dir")
        .arg(s.daemon.state_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let table = text(&out.stdout);
    assert!(table.contains("allow->deny: 4, deny->allow: 4"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("allow->deny")
            && l.contains("tools/call add")
            && l.contains("deny call-not-allowed")),
        "{table}"
    );
}

/// A plain HTTP client (curl) as the agent, on the server that answers in
/// JSON: the session by hand, then requests the SDK would not send. Then on
/// the SSE server: a list answered as an event stream, and a GET resuming
/// that stream after its first (priming) event, which replays the list.
const CURL: &str = r#"
url=$1; out=$2; big=$3; sse=$4
post() {
  curl -sS -m 10 -D "$out/h-$1" -o "$out/b-$1" -w '%{http_code}' \
    -H "content-type: ${CT:-application/json}" -H 'accept: application/json, text/event-stream' \
    -H 'mcp-protocol-version: 2025-11-25' $3 --data-binary "$2" "$url" > "$out/s-$1"
}
post init '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
sid=$(grep -i '^mcp-session-id:' "$out/h-init" | cut -d' ' -f2 | tr -d '\r')
S="-H mcp-session-id:$sid"
post note '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$S"
post list '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' "$S"
post batch '[{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}},{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_repo","arguments":{"owner":"acme","repo":"widgets"}}}]' "$S"
post python '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"python_only","arguments":{}}}' "$S"
post mismatch '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}' "$S -H mcp-method:tools/call -H mcp-name:delete_repo"
post big "@$big" "$S"
CT=text/plain post text '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":2}}}' "$S"
post dup '{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"add","name":"delete_repo","arguments":{"owner":"acme","repo":"widgets"}}}' "$S"
url=$sse
post sse-init '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'
sid=$(grep -i '^mcp-session-id:' "$out/h-sse-init" | cut -d' ' -f2 | tr -d '\r')
S="-H mcp-session-id:$sid"
post sse-note '{"jsonrpc":"2.0","method":"notifications/initialized"}' "$S"
post sse-list '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' "$S"
first=$(grep -m1 '^id:' "$out/b-sse-list" | cut -d' ' -f2 | tr -d '\r')
# The resumed stream stays open for what comes next: curl stops it.
curl -sS -m 3 -o "$out/b-resumed" -w '%{http_code}' -H 'accept: text/event-stream' \
  -H 'mcp-protocol-version: 2025-11-25' $S -H "last-event-id: $first" "$url" > "$out/s-resumed" || true
"#;

#[test]
fn a_plain_clients_batch_lists_and_malformed_calls() {
    let s = setup();
    let out = s.dir.path().join("curl");
    std::fs::create_dir(&out).unwrap();
    let script = s.dir.path().join("curl.sh");
    std::fs::write(&script, CURL).unwrap();
    // Over max_body (1 MiB): refused, never forwarded unchecked.
    let big = s.dir.path().join("big.json");
    std::fs::write(
        &big,
        format!(
            r#"{{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{{"name":"add","arguments":{{"a":1,"b":2,"pad":"{}"}}}}}}"#,
            "x".repeat(1 << 20)
        ),
    )
    .unwrap();
    let run = s.agent(&[
        "sh",
        &script.display().to_string(),
        &s.url(s.json_port),
        &out.display().to_string(),
        &big.display().to_string(),
        &s.url(s.sse_port),
    ]);
    assert!(
        run.status.success(),
        "{}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let read = |name: &str| -> (u16, Value) {
        let status = std::fs::read_to_string(out.join(format!("s-{name}"))).unwrap();
        let body = std::fs::read_to_string(out.join(format!("b-{name}"))).unwrap_or_default();
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        (status.trim().parse().unwrap(), value)
    };

    // The session works; the JSON list is filtered.
    assert_eq!(read("init").0, 200, "{:?}", read("init"));
    assert_eq!(read("note").0, 202);
    let (status, list) = read("list");
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"add") && !names.contains(&"delete_repo"),
        "{names:?}"
    );
    assert_eq!(names.len(), 8, "{names:?}");

    // The same list as an event stream, and replayed on a resumed GET
    // stream: filtered both times.
    let listed = |events: &str| -> Vec<String> {
        let lists: Vec<Value> = events
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter(|v| v["id"] == 1 && v["result"]["tools"].is_array())
            .collect();
        assert_eq!(lists.len(), 1, "{events}");
        lists[0]["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let events = |name: &str| std::fs::read_to_string(out.join(format!("b-{name}"))).unwrap();
    assert_eq!(read("sse-init").0, 200);
    assert_eq!(read("sse-list").0, 200);
    assert_eq!(listed(&events("sse-list")), names, "{}", events("sse-list"));
    assert_eq!(read("resumed").0, 200, "{}", events("resumed"));
    assert_eq!(listed(&events("resumed")), names, "{}", events("resumed"));
    // A batch: the allowed member forwarded and answered by the server, the
    // denied one answered by agentguard, both in the one array.
    let (status, batch) = read("batch");
    assert_eq!(status, 200, "{batch}");
    let answers = batch.as_array().unwrap_or_else(|| panic!("{batch}"));
    assert_eq!(answers.len(), 2, "{batch}");
    let by_id = |id: i64| answers.iter().find(|a| a["id"] == id).unwrap();
    assert_eq!(by_id(2)["result"]["content"][0]["text"], "3", "{batch}");
    assert_eq!(by_id(3)["error"]["code"], -32003, "{batch}");
    assert!(
        by_id(3)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("delete_repo"),
        "{batch}"
    );

    // The condition on the caller's executable: curl is not Python.
    let (status, python) = read("python");
    assert_eq!(status, 200);
    assert_eq!(python["id"], 4);
    assert_eq!(python["error"]["code"], -32003, "{python}");
    assert_eq!(python["error"]["data"]["rule"], "condition", "{python}");

    // Headers that disagree with the body: -32001, HTTP 400.
    let (status, mismatch) = read("mismatch");
    assert_eq!(status, 400, "{mismatch}");
    assert_eq!(mismatch["id"], 5);
    assert_eq!(mismatch["error"]["code"], -32001, "{mismatch}");
    // Too large: 413; not JSON: 415; a repeated key: a parse error.
    let (status, big) = read("big");
    assert_eq!(status, 413, "{big}");
    assert_eq!(big["error"]["code"], -32600, "{big}");
    let (status, plain) = read("text");
    assert_eq!(status, 415, "{plain}");
    assert_eq!(plain["error"]["code"], -32600, "{plain}");
    let (status, dup) = read("dup");
    assert_eq!(status, 400, "{dup}");
    assert_eq!(dup["error"]["code"], -32700, "{dup}");

    // Only the batch's allowed member ran.
    let calls = s.calls();
    assert_eq!(
        calls,
        vec![json!({"tool": "add", "args": {"a": 1, "b": 2}})],
        "{calls:?}"
    );
    // The batch's event: forwarded, with each member's decision; the
    // malformed requests' refusals (the last are committed shortly after).
    let rules = [
        "mcp-header-mismatch",
        "body-too-large",
        "not-json",
        "json-rpc-invalid",
    ];
    let requests = s.daemon.wait_for_events("the refusals", |events| {
        rules.iter().all(|rule| {
            events
                .iter()
                .any(|e| e["rule"] == *rule && e["decision"] == "refuse")
        })
    });
    let batch_event = requests
        .iter()
        .find(|e| e["rpc_method"] == "tools/call,tools/call")
        .unwrap_or_else(|| panic!("{requests:#?}"));
    assert_eq!(batch_event["decision"], "allow");
    assert_eq!(batch_event["mcp_target"], "add,delete_repo");
    let members: Vec<Value> =
        serde_json::from_str(batch_event["rpc_calls"].as_str().unwrap()).unwrap();
    let decisions: Vec<&Value> = members.iter().map(|m| &m["decision"]).collect();
    assert_eq!(decisions, [&json!("allow"), &json!("deny")]);
}

#[test]
fn a_bad_condition_keeps_the_running_policy_and_names_file_and_line() {
    let s = setup();
    let file = s.daemon.policy_path(AGENT);
    let good = std::fs::read_to_string(&file).unwrap();
    let version = s.daemon.status()["last_reload"]["active_version"].clone();
    // The add tool's condition, broken: a syntax error on a known line.
    let bad = good.replacen(
        "mcp_tools = [\"add\", \"list_issues\", \"count\"]\n",
        "mcp_tools = [\"add\", \"list_issues\", \"count\"]\nwhen = 'mcp.arguments.a =='\n",
        1,
    );
    assert_ne!(bad, good);
    let line = bad
        .lines()
        .position(|l| l.starts_with("when = 'mcp.arguments.a =='"))
        .unwrap()
        + 1;
    std::fs::write(&file, &bad).unwrap();
    let status = s.daemon.wait_for_reload(false);
    let error = status["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("{AGENT}.toml:{line}:")) && error.contains("tool.when"),
        "{status}"
    );
    assert_eq!(status["last_reload"]["active_version"], version);
    // The running policy still decides: add is allowed, unconditionally.
    let out = s.client("legacy", false);
    allowed(&out["add"], "42");
    refused(&out["delete_repo"], -32003, "delete_repo");
}
