//! Requests that would mean one thing to the policy and another to the
//! upstream never reach it: method and URL override headers are stripped
//! (and `_method` refused where a credential rides along) unless a tool
//! allows them, double-encoded paths are refused, a request names exactly
//! one authority, and a malformed request body is answered as the agent's
//! fault, not the upstream's. The upstream here honours every override, as
//! frameworks do.

use std::process::Output;

use serde_json::Value;

use crate::common::{Daemon, EchoUpstream, TestCa, require_root, text};

const AGENT: &str = "checks-agent";
const API: &str = "api.agentguard.test";

struct Setup {
    _dir: tempfile::TempDir,
    api: EchoUpstream,
    daemon: Daemon,
}

const POLICY: &str = r#"
[[credential]]
id = "key"
source = { file = "{secret_file}" }
inject = { header = "Authorization", format = "Bearer {secret}" }

[[tool]]
name = "honour"
host = "api.agentguard.test"
methods = ["GET", "POST"]
paths = ["/honour/*"]
credential = "key"

[[tool]]
name = "allowed"
host = "api.agentguard.test"
methods = ["POST"]
paths = ["/allowed/*"]
credential = "key"
allow_overrides = ["X-HTTP-Method-Override", "_method"]
"#;

fn setup() -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = crate::common::secret_file(dir.path(), "secret", "sk-checks-secret-1234\n");
    let ca = TestCa::new("agentguard checks upstream CA", dir.path());
    let api = EchoUpstream::start("127.0.0.3", API, &ca, dir.path());
    let policy = POLICY.replace("{secret_file}", &secret_file.display().to_string());
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    Setup {
        _dir: dir,
        api,
        daemon,
    }
}

fn run(s: &Setup, cmd: &[&str]) -> Output {
    s.daemon
        .exec_resolving(AGENT, &[API], "127.0.0.3", cmd)
        .output()
        .unwrap()
}

/// curl's output (`-i`: status line, headers, body) for `args` + `url`.
fn curl(s: &Setup, args: &[&str], path: &str) -> String {
    let url = s.api.url(path);
    let mut cmd = vec!["curl", "-sS", "-i", "--path-as-is", "-m", "10"];
    cmd.extend_from_slice(args);
    cmd.push(&url);
    let out = run(s, &cmd);
    assert!(
        out.status.success(),
        "curl {args:?} {path}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The request events whose path starts with `prefix`.
fn request_events(s: &Setup, prefix: &str, count: usize) -> Vec<Value> {
    let matching = |e: &&Value| {
        e["kind"] == "request" && e["path"].as_str().is_some_and(|p| p.starts_with(prefix))
    };
    let events = s.daemon.wait_for_events("request events", |e| {
        e.iter().filter(matching).count() >= count
    });
    events.iter().filter(matching).cloned().collect()
}

const OVERRIDES: [(&str, &str); 8] = [
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("Forwarded", "for=10.0.0.1;proto=https"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-Host", "admin.internal"),
];

#[test]
fn override_headers_never_reach_an_upstream_that_honours_them() {
    let s = setup();
    // Each override on its own, then all at once: the upstream runs what
    // the request line says.
    for (name, value) in OVERRIDES {
        let header = format!("{name}: {value}");
        let out = curl(&s, &["-X", "POST", "-H", &header], "/honour/items");
        assert!(out.starts_with("HTTP/2 200"), "{name}: {out}");
        assert!(
            out.ends_with("POST /honour/items client=none\n"),
            "{name} was honoured: {out}"
        );
    }
    let all: Vec<String> = OVERRIDES.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    let mut args = vec!["-X", "POST"];
    for h in &all {
        args.extend(["-H", h.as_str()]);
    }
    let out = curl(&s, &args, "/honour/items");
    assert!(out.ends_with("POST /honour/items client=none\n"), "{out}");
    for heard in s.api.heard() {
        for (name, _) in OVERRIDES {
            assert!(
                heard.header(&name.to_ascii_lowercase()).is_none(),
                "{name} reached the upstream: {heard:?}"
            );
        }
    }

    // `_method` on a tool that binds a credential is refused, in any
    // spelling, and never reaches the upstream.
    let before = s.api.heard().len();
    for query in ["_method=DELETE", "x=1&%5Fmethod=DELETE"] {
        let out = curl(&s, &["-X", "POST"], &format!("/honour/items?{query}"));
        assert!(out.starts_with("HTTP/2 403"), "{query}: {out}");
        assert!(out.contains("\"rule\":\"method-override\""), "{out}");
    }
    assert_eq!(
        s.api.heard().len(),
        before,
        "a _method request reached the upstream"
    );

    // A tool that allows an override gets it, and only it.
    let out = curl(
        &s,
        &[
            "-X",
            "POST",
            "-H",
            "X-HTTP-Method-Override: PUT",
            "-H",
            "X-Original-URL: /admin",
            "-H",
            "X-Forwarded-For: 10.0.0.1",
        ],
        "/allowed/items",
    );
    assert!(out.ends_with("PUT /allowed/items client=none\n"), "{out}");
    let out = curl(&s, &["-X", "POST"], "/allowed/items?_method=PATCH");
    assert!(out.ends_with("PATCH /allowed/items client=none\n"), "{out}");

    let refused = request_events(&s, "/honour/items?", 2);
    assert!(
        refused
            .iter()
            .all(|e| e["rule"] == "method-override" && e["decision"] == "refuse"),
        "{refused:#?}"
    );
}

#[test]
fn double_encoded_paths_are_refused_before_the_upstream() {
    let s = setup();
    for path in [
        "/honour/%252e%252e/admin",
        "/honour/%252E%252E/admin",
        "/honour/%25%32%65%25%32%65/admin",
        "/honour/x%252fadmin",
    ] {
        let out = curl(&s, &[], path);
        assert!(out.starts_with("HTTP/2 400"), "{path}: {out}");
        assert!(out.contains("\"rule\":\"path-refused\""), "{out}");
    }
    assert!(
        s.api.heard().is_empty(),
        "a double-encoded path reached the upstream: {:?}",
        s.api.heard()
    );
    // A literal percent sign (encoded once) is still a path like any other.
    let out = curl(&s, &[], "/honour/100%25-sure");
    assert!(
        out.ends_with("GET /honour/100%25-sure client=none\n"),
        "{out}"
    );
    // Recorded as received.
    let refused = request_events(&s, "/honour/", 5);
    let paths: Vec<_> = refused
        .iter()
        .filter(|e| e["rule"] == "path-refused" && e["status"] == 400)
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/honour/%252e%252e/admin",
            "/honour/%252E%252E/admin",
            "/honour/%25%32%65%25%32%65/admin",
            "/honour/x%252fadmin"
        ],
        "{refused:#?}"
    );
}

/// Python over TLS (trusting agentguard's CA as every agent does), sending
/// raw HTTP/1.1 or HTTP/2 bytes no well-behaved client would: prints one
/// line per case, the status line or what the server did.
const RAW_CLIENT: &str = r#"
import socket, ssl, struct, sys
host, port = sys.argv[1], int(sys.argv[2])

def connect(alpn):
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols([alpn])
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)
    assert s.selected_alpn_protocol() == alpn, s.selected_alpn_protocol()
    return s

def h1(raw):
    s = connect('http/1.1')
    s.sendall(raw)
    data = b''
    try:
        while b'\r\n\r\n' not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError, ssl.SSLError):
        pass
    s.close()
    return data.split(b'\r\n')[0].decode() or 'closed'

def frame(kind, flags, stream, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload

def literal(index, value):
    # Literal header field without indexing, indexed name (RFC 7541 §6.2.2).
    return bytes([index, len(value)]) + value

def literal_name(name, value):
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value

def h2(block):
    s = connect('h2')
    s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + frame(4, 0, 0, b''))
    s.sendall(frame(1, 0x5, 1, block))
    data = b''
    try:
        while True:
            while len(data) < 9:
                chunk = s.recv(4096)
                if not chunk:
                    return 'closed'
                data += chunk
            length = int.from_bytes(data[:3], 'big')
            kind, stream = data[3], int.from_bytes(data[5:9], 'big') & 0x7fffffff
            while len(data) < 9 + length:
                chunk = s.recv(4096)
                if not chunk:
                    return 'closed'
                data += chunk
            payload, data = data[9:9 + length], data[9 + length:]
            if kind == 3 and stream == 1:
                return 'reset %d' % int.from_bytes(payload[:4], 'big')
            if kind == 7:
                return 'goaway'
            if kind == 1 and stream == 1:
                # :status 400 is static table entry 12 (RFC 7541 Appendix A).
                return 'status 400' if payload[0] == 0x8c else 'status other %r' % payload[:8]
    except socket.timeout:
        return 'timeout'

auth = ('%s:%d' % (host, port)).encode()
print('two-hosts', h1(b'GET /honour/two-hosts HTTP/1.1\r\nHost: ' + auth + b'\r\nHost: ' + auth + b'\r\n\r\n'))
print('absolute-form', h1(b'GET https://' + auth + b'/honour/absolute HTTP/1.1\r\nHost: evil.agentguard.test:' + str(port).encode() + b'\r\n\r\n'))
print('bad-chunked', h1(b'POST /honour/chunked HTTP/1.1\r\nHost: ' + auth + b'\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n'))
pseudo = b'\x82\x87' + literal(4, b'/honour/h2')
print('h2-two-authorities', h2(pseudo + literal(1, auth) + literal(1, auth)))
print('h2-host-mismatch', h2(pseudo + literal(1, auth) + literal_name(b'host', b'evil.agentguard.test')))
print('h2-fine', h2(pseudo + literal(1, auth)))
"#;

#[test]
fn one_authority_per_request_and_a_bad_body_is_the_agents_fault() {
    let s = setup();
    let port = s.api.addr.port().to_string();
    let out = run(&s, &["python3", "-c", RAW_CLIENT, API, &port]);
    let lines = text(&out.stdout);
    assert!(out.status.success(), "{lines}{}", text(&out.stderr));
    let result = |case: &str| {
        lines
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{case} ")))
            .unwrap_or_else(|| panic!("no {case} in {lines}"))
            .to_owned()
    };
    // RFC 9112 §3.2: more than one Host is a 400.
    assert_eq!(result("two-hosts"), "HTTP/1.1 400 Bad Request", "{lines}");
    // A Host that names another authority than the absolute-form target.
    assert_eq!(
        result("absolute-form"),
        "HTTP/1.1 400 Bad Request",
        "{lines}"
    );
    // A body that is not valid chunked encoding: 400, the agent's fault.
    assert_eq!(result("bad-chunked"), "HTTP/1.1 400 Bad Request", "{lines}");
    // HTTP/2: a repeated :authority is malformed (RFC 9113 §8.1.1), reset
    // by the HTTP/2 layer before any request exists; a host header that
    // disagrees with :authority is a 400.
    assert!(
        result("h2-two-authorities").starts_with("reset 1"),
        "{lines}"
    );
    assert_eq!(result("h2-host-mismatch"), "status 400", "{lines}");
    assert!(result("h2-fine").starts_with("status other"), "{lines}");

    let heard: Vec<String> = s.api.heard().iter().map(|h| h.path.clone()).collect();
    assert!(
        heard
            .iter()
            .all(|p| p == "/honour/h2" || p == "/honour/chunked"),
        "an ambiguous request reached the upstream: {heard:?}"
    );

    // Refused before any path was decided on: recorded without one.
    let bad = s.daemon.wait_for_events("bad-request events", |e| {
        e.iter()
            .filter(|e| e["kind"] == "request" && e["rule"] == "bad-request")
            .count()
            >= 3
    });
    let bad: Vec<_> = bad
        .iter()
        .filter(|e| e["kind"] == "request" && e["rule"] == "bad-request")
        .collect();
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad.iter().all(|e| e["status"] == 400), "{bad:#?}");
    let events = request_events(&s, "/honour/", 2);
    let rule_of = |path: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["path"] == path)
            .map(|e| e["rule"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        rule_of("/honour/chunked"),
        ["bad-request-body"],
        "{events:#?}"
    );
    let chunked = events
        .iter()
        .find(|e| e["path"] == "/honour/chunked")
        .unwrap();
    assert_eq!(chunked["status"], 400, "{chunked:#?}");
    assert_eq!(chunked["decision"], "refuse", "{chunked:#?}");
    let log = s.daemon.log();
    assert!(
        !log.contains("upstream failed"),
        "the agent's malformed body was logged as an upstream failure:\n{log}"
    );
}
