//! verify-proxy as an MCP server's front, with the official MCP Python SDK
//! (pinned by `cargo xtask setup`) on both sides: its `Client`, run as an
//! agent through agentguard (a `jwt` credential mints a token bound to each
//! request), talks streamable HTTP to its `MCPServer` behind
//! `verify-proxy --resource`. Calls verify; the server never sees a token;
//! replays and tokens for another audience are refused with RFC 6750
//! challenges that point to the RFC 9728 metadata, which validates.

use std::{
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::tokens::{TOOL, agent_run, setup_with, verify_proxy_to};
use crate::common::text;

/// The MCP server: the SDK's MCPServer with one tool, over streamable HTTP,
/// recording the Authorization header of every request it receives.
const SERVER: &str = r#"
import json, sys
import uvicorn
from mcp.server.mcpserver import MCPServer

host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = MCPServer("agentguard-test-tools")

@server.tool()
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    return a + b

app = server.streamable_http_app(host=host)

async def recorded(scope, receive, send):
    if scope["type"] == "http":
        headers = dict(scope["headers"])
        with open(log, "a") as f:
            f.write(json.dumps({
                "method": scope["method"], "path": scope["path"],
                "authorization": headers.get(b"authorization", b"").decode(),
            }) + "\n")
    await app(scope, receive, send)

uvicorn.run(recorded, host=host, port=port, log_level="warning")
"#;

/// The agent: the SDK's Client.
const CLIENT: &str = r#"
import asyncio, sys
from mcp import Client

async def main():
    async with Client(sys.argv[1]) as client:
        tools = await client.list_tools()
        print("tools:", ",".join(t.name for t in tools.tools), flush=True)
        result = await client.call_tool("add", {"a": 2, "b": 40})
        print("result:", result.content[0].text, flush=True)

asyncio.run(main())
"#;

/// A stand-in for the MCP server that shows the tokens agentguard mints
/// for it (plain Python HTTPS), so the test can replay one.
const PEEK: &str = r#"
import http.server, ssl, sys
host, port, cert, key, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(log, "a") as f:
            f.write(self.headers.get("authorization", "") + "\n")
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((host, port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

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

/// Starts `python3 script args...` and waits (60 s at most: the SDK's
/// imports are slow on a loaded machine) until
/// `ip:port` accepts connections.
fn python(dir: &Path, name: &str, script: &str, args: &[&str], ip: &str, port: u16) -> Running {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new("python3")
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect((ip, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not start: {}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    running
}

/// curl to verify-proxy on 127.0.0.4 as TOOL: (status, headers, body).
fn curl(dir: &Path, ca: &Path, port: u16, args: &[&str], path: &str) -> (u16, String, String) {
    let headers = dir.join("curl-headers");
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{TOOL}:{port}:127.0.0.4")])
        .args(args)
        .arg(format!("https://{TOOL}:{port}{path}"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let status = status
        .parse()
        .unwrap_or_else(|_| panic!("curl: {stdout} {}", text(&out.stderr)));
    let headers = std::fs::read_to_string(&headers)
        .unwrap_or_default()
        .to_ascii_lowercase();
    (status, headers, body.to_owned())
}

#[test]
fn the_mcp_sdk_reaches_an_mcp_server_behind_verify_proxy_as_a_protected_resource() {
    let vport = free_port("127.0.0.4");
    let resource = format!("https://{TOOL}:{vport}/mcp");
    let other = format!("https://{TOOL}:{vport}/other");
    let policy = format!(
        r#"
[[credential]]
id = "mcp-token"
source = {{ jwt = {{ audience = "{resource}", scope = "tools", ttl = "60s" }} }}
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}

[[credential]]
id = "other-token"
source = {{ jwt = {{ audience = "{other}", scope = "tools", ttl = "60s" }} }}
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}

[[tool]]
name = "mcp.tools"
host = "{TOOL}"
methods = ["GET", "POST", "DELETE"]
paths = ["/mcp"]
credential = "mcp-token"

[[tool]]
name = "other.tools"
host = "{TOOL}"
methods = ["POST"]
paths = ["/other"]
credential = "other-token"
"#
    );
    let s = setup_with(&policy, &[]);
    let dir = s.dir.path();
    let mport = free_port("127.0.0.13");
    let server_log = dir.join("mcp-server.jsonl");
    let _server = python(
        dir,
        "mcp_server.py",
        SERVER,
        &[
            "127.0.0.13",
            &mport.to_string(),
            &server_log.display().to_string(),
        ],
        "127.0.0.13",
        mport,
    );
    let _proxy = verify_proxy_to(
        &s,
        &format!("127.0.0.4:{vport}"),
        &s.jwks.display().to_string(),
        &format!("http://127.0.0.13:{mport}"),
        &["--resource", &resource, "--scope", "tools"],
    );
    let server_requests = || -> Vec<Value> {
        std::fs::read_to_string(&server_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    // The SDK's client, as the agent, lists the tools and calls one.
    let client = dir.join("mcp_client.py");
    std::fs::write(&client, CLIENT).unwrap();
    let out = agent_run(
        &s,
        "127.0.0.4",
        &["python3", &client.display().to_string(), &resource],
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{said}");
    assert!(text(&out.stdout).contains("tools: add"), "{said}");
    assert!(text(&out.stdout).contains("result: 42"), "{said}");
    // Each request carried a token of its own (else verify-proxy would
    // have refused the second as a replay), and none reached the server.
    let seen = server_requests();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|r| r["authorization"] == ""), "{seen:?}");
    // The last requests' events are queued before their responses end and
    // committed by the next flush (200 ms): wait for it, bounded.
    let tokens_minted = |events: &[Value]| {
        events
            .iter()
            .filter(|e| {
                e["kind"] == "request" && e["tool"] == "mcp.tools" && !e["token_jti"].is_null()
            })
            .count()
    };
    s.daemon
        .wait_for_events("a minted token for each request the server saw", |events| {
            tokens_minted(events) >= seen.len()
        });

    // The metadata (RFC 9728 §3), at the path-suffixed and the root
    // well-known URIs, with the fields RFC 9728 §2 requires and MCP relies
    // on.
    let ca = &s.ca.pem_path;
    let metadata_url = format!("https://{TOOL}:{vport}/.well-known/oauth-protected-resource/mcp");
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let (status, headers, body) = curl(dir, ca, vport, &[], path);
        assert_eq!(status, 200, "{path}: {headers}{body}");
        assert!(
            headers.contains("content-type: application/json"),
            "{headers}"
        );
        let doc: Value = serde_json::from_str(&body).unwrap();
        // §2 REQUIRED, and §3.3: identical to the resource the client
        // derived the metadata URL from.
        assert_eq!(doc["resource"], resource.as_str(), "{doc}");
        // §2: a JSON array of issuer identifiers: agentguard's issuer.
        assert_eq!(
            doc["authorization_servers"],
            serde_json::json!([s.issuer]),
            "{doc}"
        );
        assert_eq!(
            doc["bearer_methods_supported"],
            serde_json::json!(["header"])
        );
        assert_eq!(doc["scopes_supported"], serde_json::json!(["tools"]));
        for (key, value) in doc.as_object().unwrap() {
            assert!(
                [
                    "resource",
                    "authorization_servers",
                    "jwks_uri",
                    "scopes_supported",
                    "bearer_methods_supported",
                    "resource_name"
                ]
                .contains(&key.as_str()),
                "{key}: {value} is not an RFC 9728 §2 member"
            );
        }
    }
    // No token: 401 whose challenge carries no error code (RFC 6750 §3.1)
    // and names the metadata (RFC 9728 §5.1).
    let (status, headers, _) = curl(dir, ca, vport, &["-X", "POST", "-d", "{}"], "/mcp");
    assert_eq!(status, 401, "{headers}");
    assert!(
        headers.contains(&format!(
            "www-authenticate: bearer resource_metadata=\"{}\"\r\n",
            metadata_url.to_ascii_lowercase()
        )),
        "{headers}"
    );

    // Tokens to replay: the agent calls a stand-in on the same name and
    // port (another address) that shows what agentguard sent it.
    let peek_log = dir.join("peek.log");
    let (cert, key) = s.ca.leaf_files(TOOL, dir);
    let peek = python(
        dir,
        "peek.py",
        PEEK,
        &[
            "127.0.0.10",
            &vport.to_string(),
            &cert.display().to_string(),
            &key.display().to_string(),
            &peek_log.display().to_string(),
        ],
        "127.0.0.10",
        vport,
    );
    let request = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let mint = |path: &str| {
        let out = agent_run(
            &s,
            "127.0.0.10",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                request,
                &format!("https://{TOOL}:{vport}{path}"),
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let log = std::fs::read_to_string(&peek_log).unwrap();
        log.lines()
            .last()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_owned()
    };
    let token = mint("/mcp");
    let for_other = mint("/other");
    drop(peek);
    let bearer = |t: &str| format!("authorization: Bearer {t}");
    let call = |t: &str, path: &str| {
        curl(
            dir,
            ca,
            vport,
            &[
                "-X",
                "POST",
                "-H",
                &bearer(t),
                "-H",
                "content-type: application/json",
                "-d",
                request,
            ],
            path,
        )
    };
    // First use: let through (the server, without the SDK's session and
    // Accept headers, answers as it likes; what matters is that it was
    // asked, without the token).
    let before = server_requests().len();
    let (status, headers, _) = call(&token, "/mcp");
    assert!(![401, 403, 503].contains(&status), "{status}: {headers}");
    assert_eq!(server_requests().len(), before + 1);
    assert_eq!(server_requests().last().unwrap()["authorization"], "");
    // Replayed: 401 invalid_token, pointing to the metadata.
    let (status, headers, body) = call(&token, "/mcp");
    assert_eq!(status, 401, "{headers}{body}");
    assert!(
        headers.contains("error=\"invalid_token\"") && body.contains("replay"),
        "{headers}{body}"
    );
    assert!(
        headers.contains(&format!(
            "resource_metadata=\"{}\"",
            metadata_url.to_ascii_lowercase()
        )),
        "{headers}"
    );
    // A token for another audience (another resource on the same host),
    // at the path it was minted for: 401, not for this audience.
    let (status, headers, body) = call(&for_other, "/other");
    assert_eq!(status, 401, "{headers}{body}");
    assert!(body.contains("audience"), "{body}");
    assert_eq!(server_requests().len(), before + 1);
}
