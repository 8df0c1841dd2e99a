//! Token-bound tool invocation, end to end: agent (curl) → agentguard (mints
//! a token bound to the call and injects it) → `agentguard verify-proxy`
//! (TLS, as the tool's front door) → the tool. The token verifies for that
//! call only: not again, not for another audience, not once expired, not
//! with the body, method, path or query changed, not for a wider scope; and
//! the agent never sees it.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use base64::Engine as _;
use serde_json::Value;

use crate::common::{
    AGENTGUARD, Daemon, TestCa, TlsUpstream, UPSTREAM_IP, orphaned_keep_alive, require_root, text,
};

pub(super) const AGENT: &str = "token-agent";
pub(super) const TOOL: &str = "tool.agentguard.test";

/// The agent's policy: POSTs to TOOL's /reflect carry a token for audience
/// `itsm`, scope `tickets:write`, that lives `ttl`.
pub(super) fn policy(ttl: &str) -> String {
    format!(
        r#"
[[credential]]
id = "tool-token"
source = {{ jwt = {{ audience = "itsm", scope = "tickets:write", ttl = "{ttl}" }} }}
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}

[[tool]]
name = "tool.tickets"
host = "{TOOL}"
methods = ["POST"]
paths = ["/reflect"]
credential = "tool-token"
"#
    )
}

static VP_INSTANCE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A running `agentguard verify-proxy`, stopped on drop.
pub(super) struct VerifyProxy {
    child: Child,
    pub port: u16,
}

impl Drop for VerifyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) struct Setup {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub backend: TlsUpstream,
    pub daemon: Daemon,
    pub jwks: PathBuf,
    /// The `iss` of the daemon's tokens, from its start-up log.
    pub issuer: String,
    cert: PathBuf,
    key: PathBuf,
}

pub(super) fn setup() -> Setup {
    setup_with_args(&[])
}

/// [`setup`], with extra `agentguard run` arguments.
fn setup_with_args(run_args: &[&str]) -> Setup {
    // ttl 2 s: the token expires (with the verifier's 5 s leeway) within
    // the test, so expiry is checked on a real minted token.
    setup_with(&policy("2s"), run_args)
}

/// What `agentguard token jwks` prints for the daemon's state directory.
fn printed_jwks(daemon: &Daemon) -> Vec<u8> {
    let out = Command::new(AGENTGUARD)
        .args(["token", "jwks", "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "token jwks: {}", text(&out.stderr));
    out.stdout
}

/// A token the daemon minted for one agent call with `body`, as the tool
/// received it (a stand-in at 127.0.0.10 that shows what it gets).
pub(super) fn minted(s: &Setup, body: &str) -> String {
    let peek = TlsUpstream::start("127.0.0.10", TOOL, &s.ca);
    let file = s.dir.path().join("body.json");
    std::fs::write(&file, body).unwrap();
    let out = agent_call_at(s, "127.0.0.10", peek.addr.port(), &file);
    assert!(
        text(&out.stdout).ends_with("200"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let seen = peek.header_values("/reflect", "authorization");
    assert_eq!(seen.len(), 1, "{seen:?}");
    seen[0].strip_prefix("Bearer ").expect("bearer").to_owned()
}

/// [`setup`] with the agent's policy `policy` (beside its `[agent]`).
pub(super) fn setup_with(policy: &str, run_args: &[&str]) -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard token test CA", dir.path());
    // The tool itself, behind verify-proxy, reached by IP.
    let backend = TlsUpstream::start(UPSTREAM_IP, UPSTREAM_IP, &ca);
    let daemon = Daemon::builder(&[AGENT])
        .policy(policy)
        .upstream_ca(&ca.pem_path)
        .args(run_args)
        .start();
    // The JWKS as an operator would publish it.
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, printed_jwks(&daemon)).unwrap();
    let (cert, key) = ca.leaf_files(TOOL, dir.path());
    let issuer = log_field(&daemon, "issuer");
    Setup {
        dir,
        ca,
        backend,
        daemon,
        jwks,
        issuer,
        cert,
        key,
    }
}

/// Starts verify-proxy on `listen` in front of the backend, with the JWKS
/// file `agentguard token jwks` wrote.
pub(super) fn verify_proxy(s: &Setup, listen: &str, args: &[&str]) -> VerifyProxy {
    verify_proxy_with(s, listen, &s.jwks.display().to_string(), args)
}

/// [`verify_proxy`] with the JWKS from `jwks` (a URL or file). It expects
/// the daemon's issuer unless `args` name another (or `--any-issuer`).
pub(super) fn verify_proxy_with(s: &Setup, listen: &str, jwks: &str, args: &[&str]) -> VerifyProxy {
    let upstream = format!("https://127.0.0.3:{}", s.backend.addr.port());
    verify_proxy_to(s, listen, jwks, &upstream, args)
}

/// [`verify_proxy_with`] in front of `upstream`.
pub(super) fn verify_proxy_to(
    s: &Setup,
    listen: &str,
    jwks: &str,
    upstream: &str,
    args: &[&str],
) -> VerifyProxy {
    let issuer: &[&str] = if args.iter().any(|a| a.ends_with("issuer")) {
        &[]
    } else {
        &["--issuer", &s.issuer]
    };
    // Each its own replay store in the test's directory (the default is
    // under /var/lib/agentguard).
    let n = VP_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let store = s.dir.path().join(format!("replay-{n}.redb"));
    let store: Vec<String> = if args.contains(&"--replay-store") || args.contains(&"--state-dir") {
        Vec::new()
    } else {
        vec!["--replay-store".into(), store.display().to_string()]
    };
    // The daemon's JWKS endpoint is HTTPS with a leaf from its CA.
    let jwks_ca: Vec<String> = if jwks.starts_with("https://") {
        vec![
            "--jwks-ca".into(),
            s.daemon.state_dir().join("ca/ca.crt").display().to_string(),
        ]
    } else {
        Vec::new()
    };
    let log = std::fs::File::create(s.dir.path().join(format!("vp-{listen}-{n}.log"))).unwrap();
    let mut child = Command::new(AGENTGUARD)
        .args(["verify-proxy", "--listen", listen, "--upstream", upstream])
        .arg("--upstream-ca")
        .arg(&s.ca.pem_path)
        .args(["--jwks", jwks])
        .arg("--tls-cert")
        .arg(&s.cert)
        .arg("--tls-key")
        .arg(&s.key)
        .args(issuer)
        .args(&store)
        .args(&jwks_ca)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // Its first line names the bound address; EOF if it exits instead.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("verify-proxy did not start: {line:?}"));
    VerifyProxy { child, port }
}

/// A request straight to a verify-proxy on `ip` (not through agentguard):
/// (status, response headers).
pub(super) fn direct(
    s: &Setup,
    ip: &str,
    port: u16,
    token: &str,
    method: &str,
    target: &str,
    body: &Path,
) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "%{http_code}",
        ])
        .args(["--resolve", &format!("{TOOL}:{port}:{ip}"), "--cacert"])
        .arg(&s.ca.pem_path)
        .args([
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://{TOOL}:{port}{target}"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let status = stdout.get(stdout.len().saturating_sub(3)..).unwrap_or("");
    (
        status
            .parse()
            .unwrap_or_else(|_| panic!("curl: {stdout} {}", text(&out.stderr))),
        stdout.to_ascii_lowercase(),
    )
}

/// `agentguard token verify` of `token` for a POST of `body` to `url`,
/// with the daemon's JWKS, issuer and the policy's audience.
pub(super) fn token_verify(s: &Setup, url: &str, body: &Path, token: &str) -> Output {
    Command::new(AGENTGUARD)
        .args(["token", "verify", "--audience", "itsm", "--issuer"])
        .arg(&s.issuer)
        .args(["--method", "POST", "--jwks"])
        .arg(&s.jwks)
        .args(["--url", url, "--body-file"])
        .arg(body)
        .arg(token)
        .output()
        .unwrap()
}

pub(super) fn claims(token: &str) -> Value {
    part(token, 1)
}

/// The JSON of a JWT's header (0) or claims (1).
pub(super) fn part(token: &str, n: usize) -> Value {
    let payload = token.split('.').nth(n).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The agent's call: curl in the agent's cgroup, started by
/// `agentguard exec --on-behalf-of alice@example.org`, with TOOL resolving
/// to verify-proxy's address in a private /etc/hosts.
fn agent_call(s: &Setup, port: u16, body: &Path) -> Output {
    agent_call_at(s, "127.0.0.4", port, body)
}

/// [`agent_call`] with TOOL resolving to `ip`.
pub(super) fn agent_call_at(s: &Setup, ip: &str, port: u16, body: &Path) -> Output {
    agent_run(
        s,
        ip,
        &[
            "curl",
            "-sS",
            "-v",
            "-m",
            "10",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("https://{TOOL}:{port}/reflect?dry=1"),
        ],
    )
}

/// Runs `cmd` as the agent (`agentguard exec --on-behalf-of
/// alice@example.org`), with TOOL resolving to `ip` in a private /etc/hosts.
pub(super) fn agent_run(s: &Setup, ip: &str, cmd: &[&str]) -> Output {
    let hosts = s.dir.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n{ip} {TOOL}\n")).unwrap();
    let exec = s.daemon.exec_with(
        AGENT,
        &["--allow-root", "--on-behalf-of", "alice@example.org"],
        cmd,
    );
    // As the fixture's exec_resolving does: the mount first, then exec
    // agentguard exec, so the agent keeps this pid.
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(&hosts)
        .arg(exec.get_program())
        .args(exec.get_args())
        .output()
        .unwrap()
}

pub(super) fn reflect_hits(s: &Setup) -> usize {
    s.backend
        .seen()
        .iter()
        .filter(|r| r.path == "/reflect")
        .count()
}

#[test]
fn a_minted_token_binds_one_call_and_verify_proxy_checks_all_of_it() {
    let s = setup();
    // This one runs beside the daemon: its decisions join the audit record.
    let admin = s.daemon.admin_socket.display().to_string();
    let a = verify_proxy(
        &s,
        "127.0.0.4:0",
        &[
            "--audience",
            "itsm",
            "--scope",
            "tickets:write",
            "--admin-socket",
            &admin,
        ],
    );
    let body = s.dir.path().join("body.json");
    std::fs::write(&body, r#"{"title":"printer on fire"}"#).unwrap();

    // 1. The call goes through verify-proxy to the tool, which never sees
    // the agent's token: it was minted for verify-proxy and is spent.
    let out = agent_call(&s, a.port, &body);
    let visible = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && text(&out.stdout).ends_with("200"),
        "{visible}"
    );
    assert_eq!(reflect_hits(&s), 1);
    let forwarded = s.backend.header_values("/reflect", "authorization");
    assert!(
        forwarded.is_empty(),
        "the token went upstream: {forwarded:?}"
    );

    // To look at a token, the agent calls a stand-in for the tool that
    // shows what it received: agentguard mints for it as for any tool.
    let peek = TlsUpstream::start("127.0.0.10", TOOL, &s.ca);
    let port = peek.addr.port();
    let origin = format!("https://{TOOL}:{port}");
    let out = agent_call_at(&s, "127.0.0.10", port, &body);
    let visible = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).ends_with("200"), "{visible}");
    let seen = peek.header_values("/reflect", "authorization");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let token = seen[0].strip_prefix("Bearer ").expect("bearer").to_owned();
    let c = claims(&token);
    assert_eq!(s.issuer, "spiffe://agentguard.local/agentguard");
    assert_eq!(c["iss"], s.issuer.as_str());
    assert_eq!(c["sub"], format!("spiffe://agentguard.local/agent/{AGENT}"));
    assert_eq!(c["aud"], "itsm");
    assert_eq!(c["scope"], "tickets:write");
    assert_eq!(c["htm"], "POST");
    assert_eq!(c["htu"], format!("{origin}/reflect"));
    // agent_call ran the agent with `agentguard exec --on-behalf-of`: the
    // token names that party as the actor's principal (RFC 8693 §4.1).
    assert_eq!(c["act"], serde_json::json!({ "sub": "alice@example.org" }));
    assert!(
        c["agentguard"]["cgroup"].as_str().unwrap().ends_with(AGENT),
        "{c}"
    );

    // 5. The agent never saw it: the stand-in echoed it back, agentguard
    // cut it.
    assert!(
        !visible.contains(&token),
        "the agent saw the token:\n{visible}"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(!visible.contains(signature), "{visible}");
    assert!(visible.contains("[redacted]"), "{visible}");

    // `agentguard token verify` checks the same, for tool servers that call
    // it: the call as minted passes, another query does not.
    let verify = |url: &str| token_verify(&s, url, &body, &token);
    let ok = verify(&format!("{origin}/reflect?dry=1"));
    assert!(
        ok.status.success(),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );
    assert!(
        text(&ok.stdout).contains("\"binding_checked\": true"),
        "{}",
        text(&ok.stdout)
    );
    let bad = verify(&format!("{origin}/reflect?dry=0"));
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad.stdout));
    assert!(
        text(&bad.stdout).contains("request hash"),
        "{}",
        text(&bad.stdout)
    );

    // The verify-proxies below answer for the stand-in's origin (on ports
    // of their own: the origin decides, not the Host the client sends).
    let at = |listen: &str, extra: &[&str]| {
        let mut args = vec!["--public-origin", &origin];
        args.extend(extra);
        verify_proxy(&s, listen, &args)
    };
    // Any change to the call → 401.
    let b = at(
        "127.0.0.5:0",
        &["--audience", "itsm", "--admin-socket", &admin],
    );
    let other_body = s.dir.path().join("other.json");
    std::fs::write(&other_body, r#"{"title":"printer fine"}"#).unwrap();
    for (method, target, body, what) in [
        ("POST", "/reflect?dry=1", &other_body, "body"),
        ("PUT", "/reflect?dry=1", &body, "method"),
        ("POST", "/reflect/x?dry=1", &body, "path"),
        ("POST", "/reflect?dry=0", &body, "query"),
    ] {
        let (status, headers) = direct(&s, "127.0.0.5", b.port, &token, method, target, body);
        assert_eq!(status, 401, "{what}: {headers}");
        assert!(
            headers.contains("error=\"invalid_token\""),
            "{what}: {headers}"
        );
    }
    // Another audience → 401; a scope the token lacks → 403.
    let c_proxy = at("127.0.0.6:0", &["--audience", "billing"]);
    let (status, headers) = direct(
        &s,
        "127.0.0.6",
        c_proxy.port,
        &token,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 401, "{headers}");
    assert!(headers.contains("audience"), "{headers}");
    // Another issuer → 401.
    let i = at(
        "127.0.0.9:0",
        &[
            "--audience",
            "itsm",
            "--issuer",
            "spiffe://other.example/agentguard",
        ],
    );
    let (status, headers) = direct(
        &s,
        "127.0.0.9",
        i.port,
        &token,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 401, "{headers}");
    assert!(headers.contains("another issuer"), "{headers}");
    let d = at(
        "127.0.0.7:0",
        &["--audience", "itsm", "--scope", "tickets:admin"],
    );
    let (status, headers) = direct(
        &s,
        "127.0.0.7",
        d.port,
        &token,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 403, "{headers}");
    assert!(
        headers.contains("error=\"insufficient_scope\""),
        "{headers}"
    );
    // Another instance sharing the audience, under another name: the token
    // names the stand-in's origin, whatever Host the client sends.
    let o = verify_proxy(
        &s,
        "127.0.0.8:0",
        &[
            "--audience",
            "itsm",
            "--public-origin",
            &format!("https://replica-2.agentguard.test:{port}"),
        ],
    );
    let (status, headers) = direct(
        &s,
        "127.0.0.8",
        o.port,
        &token,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 401, "{headers}");
    assert!(headers.contains("bound to"), "{headers}");
    // None of the refused requests reached the tool.
    assert_eq!(reflect_hits(&s), 1);
    // 2. The call as minted → 200, once; its replay → 401.
    let (status, headers) = direct(
        &s,
        "127.0.0.5",
        b.port,
        &token,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 200, "{headers}");
    assert_eq!(reflect_hits(&s), 2);
    let (status, headers) = direct(
        &s,
        "127.0.0.5",
        b.port,
        &token,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 401, "{headers}");
    assert!(
        headers.contains("www-authenticate: bearer error=\"invalid_token\"")
            && headers.contains("replay"),
        "{headers}"
    );
    assert_eq!(reflect_hits(&s), 2);

    // 4. A 2 MiB body on the JWT-bound tool: 413 from agentguard, nothing
    // sent on.
    let big = s.dir.path().join("big.json");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    let out = agent_call(&s, a.port, &big);
    let visible = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).ends_with("413"), "{visible}");
    assert!(visible.contains("jwt-body-too-large"), "{visible}");
    assert_eq!(reflect_hits(&s), 2);

    // The request's audit event records the token's jti (never the token).
    let jti = c["jti"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = s.daemon.audit_events();
        let minted = events
            .iter()
            .find(|e| e["kind"] == "request" && e["token_jti"] == jti.as_str());
        // verify-proxy's verdicts, from A (the first call) and B (this
        // token: 4 changed calls, the call, the replay), and nothing of the
        // token itself.
        let verdicts: Vec<&Value> = events
            .iter()
            .filter(|e| e["kind"] == "token_verification")
            .collect();
        if let Some(e) = minted
            && verdicts.len() >= 7
        {
            assert_eq!(verdicts.len(), 7, "{verdicts:#?}");
            assert_eq!(e["on_behalf_of"], "alice@example.org", "{e}");
            assert!(!format!("{events:?}").contains(signature));
            let allowed: Vec<&&Value> = verdicts
                .iter()
                .filter(|e| e["decision"] == "allow")
                .collect();
            assert_eq!(allowed.len(), 2, "{verdicts:#?}");
            let allow = allowed
                .iter()
                .find(|e| e["token_jti"] == jti.as_str())
                .unwrap_or_else(|| panic!("no allow verdict for {jti}: {verdicts:#?}"));
            assert_eq!(allow["agent"], AGENT, "{allow}");
            assert_eq!(allow["status"], 200, "{allow}");
            assert_eq!(allow["rule"], "verify-proxy:itsm", "{allow}");
            assert_eq!(allow["path"], "/reflect", "{allow}");
            let replay = verdicts
                .iter()
                .find(|e| e["reason"].as_str().is_some_and(|r| r.contains("replay")))
                .unwrap_or_else(|| panic!("no replay verdict: {verdicts:#?}"));
            assert_eq!(replay["status"], 401, "{replay}");
            assert_eq!(replay["decision"], "deny", "{replay}");
            // A refused token's claims are unverified: none are recorded.
            assert!(
                replay["token_jti"].is_null() && replay["agent"].is_null(),
                "{replay}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request event with jti {jti} and seven verify-proxy verdicts: {events:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Expired (ttl 2 s + 5 s leeway) → 401 at a verifier that never saw it.
    let exp = c["exp"].as_u64().unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while now() <= exp + 6 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    let e = at("127.0.0.11:0", &["--audience", "itsm"]);
    let (status, headers) = direct(
        &s,
        "127.0.0.11",
        e.port,
        &token,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 401, "{headers}");
    assert!(headers.contains("expired"), "{headers}");
    assert_eq!(reflect_hits(&s), 2);
}

/// The daemon's JWKS URL, from its start-up log line.
pub(super) fn jwks_url(daemon: &Daemon) -> String {
    log_field(daemon, "jwks")
}

/// A field of the daemon's start-up log (where the README sends operators
/// for the JWKS URL and the issuer).
fn log_field(daemon: &Daemon, field: &str) -> String {
    daemon
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|l| l["fields"][field].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("the daemon logs no {field:?}"))
}

/// Whom a minted token's `act` names is settled when the connection
/// opens: a request sent on it after the registered process is gone still
/// names alice, and a connection opened after that names no one.
#[test]
fn a_token_names_whom_its_connection_acted_for_when_it_opened() {
    let s = setup();
    let peek = TlsUpstream::start("127.0.0.10", TOOL, &s.ca);
    let client = orphaned_keep_alive(
        &format!("https://{TOOL}:{}/reflect", peek.addr.port()),
        "POST",
    );
    let out = agent_run(
        &s,
        "127.0.0.10",
        &client.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "200 200 True True 200",
        "{stdout}{}",
        text(&out.stderr)
    );
    let acts: Vec<Value> = peek
        .header_values("/reflect", "authorization")
        .iter()
        .map(|h| claims(h.strip_prefix("Bearer ").expect("bearer"))["act"].clone())
        .collect();
    let alice = serde_json::json!({ "sub": "alice@example.org" });
    assert_eq!(acts, [alice.clone(), alice, Value::Null]);
}

#[test]
fn tokens_signed_before_a_key_rotation_verify_until_they_expire() {
    let s = setup();
    // verify-proxy reads the daemon's JWKS endpoint (HTTPS, agentguard's
    // CA), and again for a kid it does not know.
    let url = jwks_url(&s.daemon);
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let a = verify_proxy_with(&s, "127.0.0.4:0", &url, &["--audience", "itsm"]);
    let body = s.dir.path().join("body.json");
    std::fs::write(&body, "{}").unwrap();
    // A stand-in for the tool that shows the tokens it receives.
    let peek = TlsUpstream::start("127.0.0.10", TOOL, &s.ca);
    let origin = format!("https://{TOOL}:{}", peek.addr.port());
    let minted = || {
        let out = agent_call_at(&s, "127.0.0.10", peek.addr.port(), &body);
        assert!(text(&out.stdout).ends_with("200"), "{}", text(&out.stderr));
        let seen = peek.header_values("/reflect", "authorization");
        seen.last()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_owned()
    };

    let out = agent_call(&s, a.port, &body);
    assert!(text(&out.stdout).ends_with("200"), "{}", text(&out.stderr));
    let old = minted();
    let rotated = s.daemon.cli(&["token", "rotate"]);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    // A token of the new key at the verify-proxy that read the JWKS before.
    let out = agent_call(&s, a.port, &body);
    assert!(text(&out.stdout).ends_with("200"), "{}", text(&out.stderr));
    let new = minted();
    let (old_kid, new_kid) = (part(&old, 0)["kid"].clone(), part(&new, 0)["kid"].clone());
    assert_ne!(old_kid, new_kid);
    // Both keys are published, over HTTPS with agentguard's CA...
    let jwks = Command::new("curl")
        .args(["-sS", "-m", "5", "--cacert"])
        .arg(s.daemon.state_dir().join("ca/ca.crt"))
        .arg(&url)
        .output()
        .unwrap();
    let jwks: Value = serde_json::from_slice(&jwks.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&jwks.stderr)));
    let kids: Vec<&Value> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert!(
        kids.contains(&&old_kid) && kids.contains(&&new_kid),
        "{jwks}"
    );
    // ...and only over HTTPS: a verify-proxy without agentguard's CA
    // cannot read them.
    let blind = Command::new(AGENTGUARD)
        .args(["verify-proxy", "--listen", "127.0.0.12:0", "--upstream"])
        .arg("http://127.0.0.1:9")
        .args(["--audience", "itsm", "--issuer", &s.issuer, "--jwks", &url])
        .args(["--replay-store", "memory"])
        .output()
        .unwrap();
    assert!(!blind.status.success());
    assert!(
        text(&blind.stderr).contains("certificate"),
        "{}",
        text(&blind.stderr)
    );
    // ...so a token the old key signed verifies (at a verifier that has not
    // seen it) until it expires, and then fails. (The old key itself leaves
    // the JWKS once no token it signed can be valid: a unit test shows it.)
    let b = verify_proxy_with(
        &s,
        "127.0.0.5:0",
        &url,
        &["--audience", "itsm", "--public-origin", &origin],
    );
    let (status, headers) = direct(
        &s,
        "127.0.0.5",
        b.port,
        &old,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 200, "{headers}");
    let exp = claims(&old)["exp"].as_u64().unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while now() <= exp + 6 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(200));
    }
    let c = verify_proxy_with(
        &s,
        "127.0.0.6:0",
        &url,
        &["--audience", "itsm", "--public-origin", &origin],
    );
    let (status, headers) = direct(
        &s,
        "127.0.0.6",
        c.port,
        &old,
        "POST",
        "/reflect?dry=1",
        &body,
    );
    assert_eq!(status, 401, "{headers}");
    assert!(headers.contains("expired"), "{headers}");
}

/// `--token-algorithm es256` (the default is EdDSA, which the other tests
/// here run on): verify-proxy takes its tokens too, and the JWKS publishes
/// the P-256 key first, the identity tokens' key beside it.
#[test]
fn es256_keys_sign_tokens_that_verify_proxy_accepts() {
    let s = setup_with_args(&["--token-algorithm", "es256"]);
    let url = jwks_url(&s.daemon);
    let a = verify_proxy_with(&s, "127.0.0.4:0", &url, &["--audience", "itsm"]);
    let body = s.dir.path().join("body.json");
    std::fs::write(&body, "{}").unwrap();
    let out = agent_call(&s, a.port, &body);
    assert!(text(&out.stdout).ends_with("200"), "{}", text(&out.stderr));
    let token = minted(&s, "{}");
    assert_eq!(part(&token, 0)["alg"], "ES256");
    let jwks: Value = serde_json::from_slice(&std::fs::read(&s.jwks).unwrap()).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    assert_eq!(
        (&keys[0]["kty"], &keys[0]["crv"]),
        (&"EC".into(), &"P-256".into()),
        "{jwks}"
    );
    assert_eq!(keys[0]["kid"], part(&token, 0)["kid"]);
    assert_ne!(keys[1]["kid"], keys[0]["kid"]);
}

/// An upgrade from an agentguard whose default was ES256 and whose one key
/// signed identity tokens too: started on such a state directory (an ES256
/// `signing.key`, no `identity.key`) without `--token-algorithm`, the
/// daemon keeps signing request-bound tokens with that key (the tools'
/// verifiers may allow only ES256), makes the identity tokens a key of
/// their own and says so. A new state directory's key is EdDSA
/// (token_verifiers.rs).
#[test]
fn an_upgraded_state_directory_keeps_its_key_and_gains_an_identity_key() {
    use std::os::unix::fs::MetadataExt as _;
    let mut s = setup_with_args(&["--token-algorithm", "es256"]);
    let printed =
        |s: &Setup| -> Value { serde_json::from_slice(&printed_jwks(&s.daemon)).unwrap() };
    let before = printed(&s);
    s.daemon.terminate();
    // The earlier version's layout: no identity key.
    let token_dir = s.daemon.state_dir().join("token");
    std::fs::remove_file(token_dir.join("identity.key")).unwrap();
    let _ = std::fs::remove_file(token_dir.join("identity-retired.json"));
    let only_request = printed(&s);
    assert_eq!(
        only_request["keys"].as_array().unwrap().len(),
        1,
        "{only_request}"
    );
    s.daemon.restart_with_args(&[]);
    let after = printed(&s);
    let keys = after["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{after}");
    assert_eq!(
        keys[0], before["keys"][0],
        "the request-bound tokens' key changed"
    );
    assert_eq!(keys[1]["crv"], "P-256", "{after}");
    assert_ne!(keys[1]["kid"], before["keys"][1]["kid"], "{after}");
    let mode = std::fs::metadata(token_dir.join("identity.key"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        s.daemon
            .log()
            .contains("identity tokens now have a signing key of their own"),
        "{}",
        s.daemon.log()
    );
    let token = minted(&s, "{}");
    assert_eq!(part(&token, 0)["alg"], "ES256");
    assert_eq!(part(&token, 0)["kid"], before["keys"][0]["kid"]);
}

/// `--upstream-token-file`: the tool receives verify-proxy's own bearer
/// token, never the agent's minted one; a file that holds no token stops
/// start-up without printing what it holds.
#[test]
fn verify_proxy_sends_the_tool_its_own_token_from_a_file() {
    let s = setup();
    let file = s.dir.path().join("upstream-token");
    std::fs::write(&file, "tool-side-secret-7f3a\n").unwrap();
    let file_arg = file.display().to_string();
    let vp = verify_proxy(
        &s,
        "127.0.0.4:0",
        &[
            "--audience",
            "itsm",
            "--scope",
            "tickets:write",
            "--upstream-token-file",
            &file_arg,
        ],
    );
    let body = s.dir.path().join("body.json");
    std::fs::write(&body, r#"{"title":"printer on fire"}"#).unwrap();
    let out = agent_call(&s, vp.port, &body);
    let visible = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).ends_with("200"), "{visible}");
    assert_eq!(
        s.backend.header_values("/reflect", "authorization"),
        ["Bearer tool-side-secret-7f3a"]
    );
    drop(vp);

    let bad = s.dir.path().join("not-a-token");
    std::fs::write(&bad, "two words\u{7}\n").unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["verify-proxy", "--listen", "127.0.0.4:0"])
        .args(["--upstream", "https://127.0.0.3:1", "--jwks"])
        .arg(&s.jwks)
        .args(["--audience", "itsm", "--issuer", &s.issuer])
        .arg("--upstream-token-file")
        .arg(&bad)
        .arg("--tls-cert")
        .arg(&s.cert)
        .arg("--tls-key")
        .arg(&s.key)
        .arg("--replay-store")
        .arg(s.dir.path().join("unused.redb"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not a token"), "{err}");
    assert!(
        !err.contains("two words"),
        "the file's content leaked: {err}"
    );
}
