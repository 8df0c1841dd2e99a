//! Per-agent policy and credential injection, end to end: the agent never
//! holds the secret, the upstream receives it only where a tool binds it, and
//! nothing the agent can read ever contains it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use crate::common::{self, Daemon, TestCa, TlsUpstream, require_root, text};

const AGENT: &str = "cred-agent";
const API: &str = "api.agentguard.test";
const OTHER: &str = "other.agentguard.test";

/// The common fixture (its upstream is `API`), and the canary secret its
/// policy may bind.
struct Setup {
    fixture: common::Setup,
    canary: String,
}

impl std::ops::Deref for Setup {
    type Target = common::Setup;

    fn deref(&self) -> &common::Setup {
        &self.fixture
    }
}

/// A secret file as a security team would keep it: root-owned, 0600.
/// A secret file holding `value` and a newline.
fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    common::secret_file(dir, name, &format!("{value}\n"))
}

/// `policy` is the TOML after the `[agent]` section's name and cgroup (so it
/// may start with more `[agent]` keys); `{canary_file}` in it is replaced
/// by the path of a secret file holding a fresh canary.
fn setup(mode: &str, policy: &str) -> Setup {
    let canary = format!("agc-canary-{}-{}", std::process::id(), rand_suffix());
    let policy = format!("mode = \"{mode}\"\n{policy}");
    let secret = canary.clone();
    let fixture = common::Setup::builder(API)
        .agents(&[AGENT])
        .policy_from(move |dir, api| {
            let canary_file = secret_file(dir, "canary", &secret);
            policy
                .replace("{canary_file}", &canary_file.display().to_string())
                .replace("{api_port}", &api.addr.port().to_string())
        })
        .start();
    Setup { fixture, canary }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const CANARY_TOOL: &str = r#"
[[credential]]
id = "canary-key"
source = { file = "{canary_file}" }
inject = { header = "Authorization", format = "Bearer {secret}" }
placeholder_env = "CANARY_API_KEY"

[[tool]]
name = "api.reflect"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/reflect"]
credential = "canary-key"

[[tool]]
name = "api.public"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/public/*"]
"#;

fn run(s: &Setup, names: &[&str], ip: &str, cmd: &[&str]) -> Output {
    s.daemon
        .exec_resolving(AGENT, names, ip, cmd)
        .output()
        .unwrap()
}

/// Everything an agent could read about its own run.
fn agent_visible(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn requests(daemon: &Daemon) -> Vec<serde_json::Value> {
    let out = daemon.cli(&["requests"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn canary_reaches_the_upstream_and_nothing_the_agent_can_read() {
    let s = setup("enforce", CANARY_TOOL);
    let url = s.upstream.url("/reflect");

    // curl -v prints every header it sends and receives.
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &["curl", "-sS", "-v", "-m", "10", &url],
    );
    assert!(out.status.success(), "{}", agent_visible(&out));
    let python = format!(
        "import requests\nr = requests.get('{url}', timeout=10)\nprint(r.status_code, dict(r.headers), r.text)\n"
    );
    let py = run(&s, &[API], "127.0.0.3", &["python3", "-c", &python]);
    assert!(py.status.success(), "{}", agent_visible(&py));

    // The upstream got the secret on both calls...
    let seen = s.upstream.header_values("/reflect", "authorization");
    assert_eq!(seen, vec![format!("Bearer {}", s.canary); 2]);
    // ...and echoed it back in a header and the body, which agentguard
    // redacted before the agent saw them.
    for visible in [agent_visible(&out), agent_visible(&py)] {
        assert!(
            !visible.contains(&s.canary),
            "the agent saw the secret:\n{visible}"
        );
        assert!(visible.contains("[redacted]"), "{visible}");
    }
    assert!(
        !s.daemon.log().contains(&s.canary),
        "the secret is in the daemon log"
    );
    let entries = requests(&s.daemon);
    assert!(
        entries
            .iter()
            .all(|e| e["credential"] == "canary-key" && e["decision"] == "allow")
    );
    assert!(!format!("{entries:?}").contains(&s.canary));
}

#[test]
fn requests_outside_the_tools_are_denied_before_the_upstream() {
    let s = setup("enforce", CANARY_TOOL);
    let denied = [
        ("POST", s.upstream.url("/reflect")),
        ("GET", s.upstream.url("/admin")),
        ("GET", s.upstream.url("/public/../admin")),
        ("GET", s.upstream.url("/public/%2e%2e/admin")),
    ];
    for (method, url) in &denied {
        let out = run(
            &s,
            &[API],
            "127.0.0.3",
            &[
                "curl",
                "-sS",
                "--path-as-is",
                "-m",
                "10",
                "-i",
                "-X",
                method,
                url,
            ],
        );
        let response = text(&out.stdout);
        assert!(
            response.starts_with("HTTP/2 403"),
            "{method} {url}: {response}"
        );
        assert!(
            response.contains("x-agentguard-decision: deny"),
            "{response}"
        );
        assert!(
            response.contains(&format!("\"agent\":\"{AGENT}\"")),
            "{response}"
        );
        assert!(!response.contains(&s.canary));
    }
    // A host no tool names.
    let other = TlsUpstream::start("127.0.0.4", OTHER, &s.ca);
    let out = run(
        &s,
        &[OTHER],
        "127.0.0.4",
        &["curl", "-sS", "-m", "10", "-i", &other.url("/reflect")],
    );
    assert!(
        text(&out.stdout).starts_with("HTTP/2 403"),
        "{}",
        text(&out.stdout)
    );

    assert!(
        s.upstream.seen().is_empty(),
        "a denied request reached the upstream: {:?}",
        s.upstream.seen()
    );
    assert!(other.seen().is_empty());
    let decisions: Vec<_> = requests(&s.daemon)
        .iter()
        .map(|e| e["decision"].clone())
        .collect();
    assert_eq!(decisions.len(), 5);
    assert!(decisions.iter().all(|d| d == "deny"), "{decisions:?}");
}

#[test]
fn an_agent_supplied_authorization_header_is_replaced() {
    let s = setup("enforce", CANARY_TOOL);
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "-H",
            "Authorization: Bearer agent-own-token",
            "-H",
            "authorization: Basic c3RvbGVuOmNyZWRz",
            &s.upstream.url("/reflect"),
        ],
    );
    assert!(out.status.success());
    let seen = s.upstream.header_values("/reflect", "authorization");
    assert_eq!(
        seen,
        vec![format!("Bearer {}", s.canary)],
        "agent's own values were forwarded"
    );
}

#[test]
fn placeholders_are_swapped_where_bound_and_refused_elsewhere() {
    let s = setup("enforce", CANARY_TOOL);
    // exec hands the agent a placeholder, not the secret.
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &["sh", "-c", "printf %s \"$CANARY_API_KEY\""],
    );
    assert_eq!(text(&out.stdout), "agentguard-placeholder:canary-key");

    // Where the policy binds it, the placeholder becomes the secret.
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &[
            "sh",
            "-c",
            &format!(
                "curl -sS -m 10 -H \"Authorization: Bearer $CANARY_API_KEY\" {}",
                s.upstream.url("/reflect")
            ),
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        s.upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {}", s.canary)]
    );

    // Anywhere else it is refused and never leaves the machine.
    let public = s.upstream.url("/public/page");
    for cmd in [
        format!("curl -sS -m 10 -i -H \"x-api-key: $CANARY_API_KEY\" {public}"),
        format!("curl -sS -m 10 -i \"{public}?key=$CANARY_API_KEY\""),
    ] {
        let out = run(&s, &[API], "127.0.0.3", &["sh", "-c", &cmd]);
        let response = text(&out.stdout);
        assert!(response.starts_with("HTTP/2 403"), "{cmd}: {response}");
        assert!(response.contains("placeholder"), "{response}");
    }
    assert!(
        s.upstream.seen().iter().all(|r| r.path == "/reflect"),
        "{:?}",
        s.upstream.seen()
    );
}

#[test]
fn a_redirect_to_another_host_carries_only_that_hosts_credential() {
    let s = setup(
        "enforce",
        &format!(
            "{CANARY_TOOL}\n\
             [[credential]]\nid = \"other-key\"\nsource = {{ env = \"PATH\" }}\ninject = {{ header = \"x-other-key\" }}\n\n\
             [[tool]]\nname = \"api.redirect\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/redirect\"]\ncredential = \"canary-key\"\n\n\
             [[tool]]\nname = \"other.landing\"\nhost = \"{OTHER}\"\nmethods = [\"GET\"]\npaths = [\"/landing\"]\ncredential = \"other-key\"\n"
        ),
    );
    let other = TlsUpstream::start("127.0.0.4", OTHER, &s.ca);
    let target = other.url("/landing");
    let out = s
        .daemon
        .exec_resolving_many(
            AGENT,
            &[(API, "127.0.0.3"), (OTHER, "127.0.0.4")],
            &[
                "curl",
                "-sS",
                "-L",
                "-m",
                "10",
                &format!("{}?{target}", s.upstream.url("/redirect")),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "hello over tls", "{}", text(&out.stderr));
    // The first host got its credential; the second got only its own.
    assert_eq!(
        s.upstream.header_values("/redirect", "authorization").len(),
        1
    );
    let landing = other.seen();
    assert_eq!(landing.len(), 1);
    assert!(
        landing[0]
            .headers
            .iter()
            .all(|(k, v)| k != "authorization" && !v.contains(&s.canary))
    );
    assert_eq!(other.header_values("/landing", "x-other-key").len(), 1);
}

#[test]
fn audit_mode_lets_denied_calls_through_and_records_would_deny() {
    let s = setup("audit", CANARY_TOOL);
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &["curl", "-sS", "-m", "10", "-i", &s.upstream.url("/admin")],
    );
    let response = text(&out.stdout);
    assert!(response.starts_with("HTTP/2 200"), "{response}");
    assert!(
        response.contains("x-agentguard-decision: would-deny"),
        "{response}"
    );
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 1);
    // Let through, but never with a credential.
    assert!(seen[0].headers.iter().all(|(k, _)| k != "authorization"));
    let entries = requests(&s.daemon);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["decision"], "would-deny");
    assert!(entries[0]["credential"].is_null());
}

#[test]
fn oauth2_client_credentials_one_token_serves_many_calls() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let api = TlsUpstream::start("127.0.0.3", API, &ca);
    // The token endpoint is the daemon's to reach, named by IP (the daemon
    // resolves names with the host's resolver, which the test leaves alone).
    let auth = TlsUpstream::start("127.0.0.6", "127.0.0.6", &ca);
    let client_secret = secret_file(dir.path(), "client-secret", "oauth-client-secret-value");
    let policy = format!(
        "[[credential]]\nid = \"oauth\"\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\
         [credential.source.oauth2]\ntoken_url = \"https://127.0.0.6:{port}/token\"\nclient_id = \"test-client\"\n\
         client_secret = {{ file = \"{secret}\" }}\nscope = \"tickets:write\"\n\n\
         [[tool]]\nname = \"api.reflect\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/reflect\"]\ncredential = \"oauth\"\n",
        port = auth.addr.port(),
        secret = client_secret.display()
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    for _ in 0..5 {
        let out = daemon
            .exec_resolving(
                AGENT,
                &[API],
                "127.0.0.3",
                &["curl", "-sS", "-m", "10", &api.url("/reflect")],
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            !text(&out.stdout).contains("oauth-token-"),
            "token leaked to the agent"
        );
    }
    assert_eq!(
        api.header_values("/reflect", "authorization"),
        vec!["Bearer oauth-token-1".to_owned(); 5]
    );
    let token_requests: Vec<_> = auth
        .seen()
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect();
    assert_eq!(
        token_requests.len(),
        1,
        "one token fetch serves every call until expiry"
    );
    let t = &token_requests[0];
    assert!(
        t.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.starts_with("Basic "))
    );
    let _ = &t.query;
}

#[test]
fn a_bad_policy_keeps_the_old_one_and_a_good_one_applies_without_dropping_connections() {
    let s = setup("enforce", CANARY_TOOL);
    let policy_file = s.daemon.policy_path(AGENT);
    let original = std::fs::read_to_string(&policy_file).unwrap();

    // One keep-alive session in the agent, driven line by line.
    let script = format!(
        "import sys, requests\n\
         s = requests.Session()\n\
         for line in sys.stdin:\n\
         \x20   r = s.get('https://{API}:{port}' + line.strip(), timeout=10)\n\
         \x20   print(r.status_code, flush=True)\n",
        port = s.upstream.addr.port()
    );
    let mut child = s
        .daemon
        .exec_resolving(AGENT, &[API], "127.0.0.3", &["python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ask = |path: &str| -> String {
        writeln!(stdin, "{path}").unwrap();
        stdout.next().unwrap().unwrap()
    };
    assert_eq!(ask("/public/a"), "200");
    assert_eq!(ask("/other/b"), "403");

    // An invalid file: refused, reported, and the running policy stays.
    std::fs::write(
        &policy_file,
        format!("{original}\n[[tool]]\nname = \"broken\"\n"),
    )
    .unwrap();
    let status = s.daemon.wait_for_reload(false);
    let error = status["last_reload"]["error"].as_str().unwrap().to_owned();
    assert!(error.contains(&format!("{AGENT}.toml:")), "{error}");
    assert_eq!(ask("/public/a"), "200");
    assert_eq!(ask("/other/b"), "403");

    // A valid change applies to the open connection's next request.
    std::fs::write(
        &policy_file,
        format!("{original}\n[[tool]]\nname = \"api.other\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/other/*\"]\n"),
    )
    .unwrap();
    let status = s.daemon.wait_for_reload(true);
    assert_ne!(
        status["last_reload"]["active_version"],
        serde_json::Value::Null
    );
    assert_eq!(ask("/other/b"), "200");
    drop(stdin);
    assert!(child.wait().unwrap().success());

    // One connection served every request: nothing was dropped.
    let connections = s.daemon.connections();
    assert_eq!(connections.len(), 1, "{connections:?}");
    let versions: std::collections::BTreeSet<String> = requests(&s.daemon)
        .iter()
        .map(|e| e["policy_version"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        versions.len(),
        2,
        "decisions name the policy version in force"
    );

    // SIGHUP reloads too (here with nothing changed: accepted, same version).
    let before = s.daemon.status();
    let pid = before["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = s.daemon.status();
        if status["last_reload"]["trigger"] == "SIGHUP" {
            assert_eq!(status["last_reload"]["accepted"], true, "{status}");
            assert_eq!(status["policy_version"], before["policy_version"]);
            break;
        }
        assert!(Instant::now() < deadline, "no SIGHUP reload: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = (&s.dir, &s.ca);
}
