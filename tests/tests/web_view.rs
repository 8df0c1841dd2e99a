//! The web view: its API's guards, checked with curl (sessions, CSRF,
//! origin, roles, bearer tokens, sign-in rate limits, TLS from agentguard's
//! CA), and the pages in a real browser: Debian's Chromium, headless,
//! driven by playwright-core (`tests/browser/web_view.mjs`): sign in, see a
//! request appear live, filter, open a detail, verify the chain, approve a
//! held call, revoke an agent. The browser test writes a screenshot of each
//! page; `cargo xtask screenshots` runs it with
//! `AGENTGUARD_SCREENSHOTS=docs/web`, so the README's pictures are always
//! of the code that runs.

use std::{
    ffi::OsStr,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::common::{AGENTGUARD, Daemon, TestCa, TlsUpstream, alone, require_root, text};

const AGENT: &str = "web-agent";
const API: &str = "api.agentguard.test";
const APPROVER: (&str, &str) = ("alice", "alice's long passphrase");
const AUDITOR: (&str, &str) = ("bob", "bob's long passphrase");

struct Setup {
    dir: tempfile::TempDir,
    upstream: TlsUpstream,
    daemon: Daemon,
    /// The web view's URL, `https://127.0.0.1:PORT/`.
    url: String,
    /// A bearer token of the auditor role.
    token: String,
}

fn hash_password(password: &str) -> String {
    let mut child = Command::new(AGENTGUARD)
        .args(["web", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    text(&out.stdout).trim().to_owned()
}

fn setup() -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let new_token = Command::new(AGENTGUARD)
        .args(["web", "new-token"])
        .output()
        .unwrap();
    let printed = text(&new_token.stdout);
    let field = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let (token, sha256) = (field("token:"), field("sha256:"));
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nname = \"{}\"\nrole = \"approver\"\npassword = \"{}\"\n\n\
             [[user]]\nname = \"{}\"\nrole = \"auditor\"\npassword = \"{}\"\n\n\
             [[token]]\nname = \"siem\"\nrole = \"auditor\"\nsha256 = \"{sha256}\"\n",
            APPROVER.0,
            hash_password(APPROVER.1),
            AUDITOR.0,
            hash_password(AUDITOR.1),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let upstream = TlsUpstream::start("127.0.0.3", API, &ca);
    let policy = format!(
        r#"
[[tool]]
name = "test.read"
host = "{API}"
methods = ["GET"]
paths = ["/", "/*"]

[[tool]]
name = "test.write"
host = "{API}"
methods = ["POST"]
paths = ["/echo"]
approval = {{ timeout = "120s" }}
"#
    );
    let users_arg = users.display().to_string();
    // Checkpoints every few events, so that the pages show some.
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .args(&[
            "--web-listen",
            "127.0.0.1:0",
            "--web-users",
            &users_arg,
            "--audit-checkpoint-every",
            "5",
        ])
        .start();
    let url = daemon.status()["web"].as_str().unwrap().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    Setup {
        dir,
        upstream,
        daemon,
        url,
        token,
    }
}

impl Setup {
    fn ca(&self) -> PathBuf {
        self.daemon.state_dir().join("ca").join("ca.crt")
    }

    /// curl against the web view, verifying its certificate against
    /// agentguard's CA; (status, body). `args` go before the URL.
    fn curl(&self, path: &str, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "-m", "20", "--cacert"])
            .arg(self.ca())
            .args(["-w", "\n%{http_code}"])
            .args(args)
            .arg(format!("{}{}", self.url, path.trim_start_matches('/')))
            .output()
            .unwrap();
        assert!(out.status.success(), "curl: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let (body, status) = stdout.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), body.to_owned())
    }

    /// A command of the agent, as an argv the browser script can spawn.
    fn agent_argv(&self, cmd: &[&str]) -> String {
        let c = self.daemon.exec_resolving(AGENT, &[API], "127.0.0.3", cmd);
        let argv: Vec<String> = std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a: &OsStr| a.to_string_lossy().into_owned())
            .collect();
        serde_json::to_string(&argv).unwrap()
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn the_web_api_wants_a_session_its_csrf_token_and_the_approver_role() {
    let s = setup();
    let jar = s.dir.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let (status, _) = s.curl("/api/events", &[]);
    assert_eq!(status, 401, "no session, no events");
    let (status, page) = s.curl("/", &["-D", "-"]);
    assert_eq!(status, 200);
    assert!(
        page.contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{page}"
    );

    // Signing in: JSON only, and the session cookie is Secure, HttpOnly,
    // SameSite=Strict.
    let login = |who: (&str, &str), extra: &[&str]| {
        let body = serde_json::json!({ "name": who.0, "password": who.1 }).to_string();
        let mut args = vec![
            "-c", jar, "-b", jar, "-D", "-", "-X", "POST", "--data", &body,
        ];
        args.extend_from_slice(extra);
        s.curl("/api/login", &args)
    };
    let (status, _) = login(
        APPROVER,
        &["-H", "content-type: application/x-www-form-urlencoded"],
    );
    assert_eq!(status, 415);
    let (status, resp) = login(APPROVER, &["-H", "content-type: application/json"]);
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("__Host-agentguard="), "{resp}");
    assert!(resp.contains("Secure; HttpOnly; SameSite=Strict"), "{resp}");
    let me = json(resp.rsplit("\r\n\r\n").next().unwrap());
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("alice"), Some("approver"))
    );
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    let csrf_header = format!("x-csrf-token: {csrf}");

    // An action with the cookie alone (what a forged cross-site request
    // carries) is refused; so is one from another origin.
    let post = |path: &str, extra: &[&str]| {
        let mut args = vec!["-b", jar, "-X", "POST", "--data", "{}"];
        args.extend_from_slice(extra);
        s.curl(path, &args)
    };
    let ct = "content-type: application/json";
    let (status, body) = post("/api/agents/web-agent/revoke", &["-H", ct]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("CSRF"), "{body}");
    let (status, _) = post(
        "/api/agents/web-agent/revoke",
        &[
            "-H",
            ct,
            "-H",
            &csrf_header,
            "-H",
            "origin: https://evil.example",
        ],
    );
    assert_eq!(status, 403);
    // With its token, the session reaches the action (nothing is held).
    let (status, body) = post(
        "/api/approvals/0123/approve",
        &["-H", ct, "-H", &csrf_header],
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("is waiting for approval"), "{body}");

    // A bearer token: reads, as an auditor; cannot act.
    let bearer = format!("authorization: Bearer {}", s.token);
    let (status, body) = s.curl("/api/agents", &["-H", &bearer]);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["agents"][0]["name"], AGENT);
    let (status, body) = s.curl(
        "/api/agents/web-agent/revoke",
        &["-H", &bearer, "-H", ct, "-X", "POST", "--data", "{}"],
    );
    assert_eq!(status, 403);
    assert!(body.contains("approvers only"), "{body}");
    let (status, _) = s.curl("/api/agents", &["-H", "authorization: Bearer agw_guess"]);
    assert_eq!(status, 401);
    assert!(s.daemon.status()["agents"][0]["revoked"].is_null());

    // Guessing a password: refused, then locked out for that name even
    // with the right password.
    let other_jar = s.dir.path().join("other");
    let other_jar = other_jar.to_str().unwrap();
    let attempt = |password: &str| {
        let body = serde_json::json!({ "name": AUDITOR.0, "password": password }).to_string();
        s.curl(
            "/api/login",
            &["-c", other_jar, "-X", "POST", "-H", ct, "--data", &body],
        )
        .0
    };
    for n in 0..5 {
        assert_eq!(attempt(&format!("guess {n}")), 401);
    }
    assert_eq!(attempt(AUDITOR.1), 429);

    // Every sign-in, and every failed one, is in the record.
    let events = s.daemon.wait_for_events("login events", |e| {
        e.iter().filter(|e| e["kind"] == "login").count() >= 7
    });
    let logins: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "login")
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(logins[0], ("alice", "allow"));
    assert!(logins.contains(&("bearer token", "deny")), "{logins:?}");
    assert_eq!(logins.iter().filter(|l| *l == &("bob", "deny")).count(), 5);
    let alice = events
        .iter()
        .find(|e| e["kind"] == "login" && e["actor"] == "alice")
        .unwrap();
    assert_eq!(alice["src_ip"], "127.0.0.1");
    validate_ocsf(&s.daemon);
}

/// Every event, the new kinds (login, approval, revocation) among them,
/// renders as OCSF the schema accepts (tests/validators/ocsf_validate.py).
fn validate_ocsf(daemon: &Daemon) {
    let out = Command::new(AGENTGUARD)
        .args([
            "audit",
            "query",
            "--format",
            "ocsf",
            "--limit",
            "100000",
            "--state-dir",
        ])
        .arg(daemon.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let validator =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/validators/ocsf_validate.py");
    let mut check = Command::new("python3")
        .arg(validator)
        .arg("1.3.0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let verdict = check.wait_with_output().unwrap();
    assert!(
        verdict.status.success(),
        "{}{}",
        text(&verdict.stdout),
        text(&verdict.stderr)
    );
}

#[test]
fn the_web_view_in_chromium_signs_in_follows_filters_approves_and_revokes() {
    require_root();
    // Chromium loads the machine, and the page has bounded waits.
    let _alone = alone();
    let s = setup();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser/web_view.mjs");
    let modules = script
        .with_file_name("node_modules")
        .join("playwright-core");
    assert!(
        modules.exists(),
        "playwright-core is not installed in tests/browser: run `cargo xtask setup`"
    );
    // Chromium trusts what the user's NSS database trusts: agentguard's CA,
    // added as an operator would, in a home of the test's own.
    let home = s.dir.path().join("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let certutil = |args: &[&OsStr]| {
        let out = Command::new("certutil").args(args).output().unwrap();
        assert!(out.status.success(), "certutil: {}", text(&out.stderr));
    };
    certutil(&[
        "-N".as_ref(),
        "-d".as_ref(),
        db.as_ref(),
        "--empty-password".as_ref(),
    ]);
    certutil(&[
        "-A".as_ref(),
        "-d".as_ref(),
        db.as_ref(),
        "-t".as_ref(),
        "C,,".as_ref(),
        "-n".as_ref(),
        "agentguard".as_ref(),
        "-i".as_ref(),
        s.ca().as_os_str(),
    ]);
    let shots = std::env::var_os("AGENTGUARD_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| s.dir.path().join("screenshots"));
    let url = s.url.clone();
    let out = Command::new("node")
        .arg(&script)
        .env("HOME", &home)
        .env("WEB_URL", &url)
        .env(
            "USERS",
            serde_json::json!({ "approver": APPROVER, "auditor": AUDITOR }).to_string(),
        )
        .env("AGENT", AGENT)
        .env(
            "AGENT_GET",
            s.agent_argv(&["curl", "-sS", "-m", "20", &s.upstream.url("/listed")]),
        )
        .env(
            "AGENT_HELD",
            s.agent_argv(&[
                "curl",
                "-sS",
                "-m",
                "60",
                "--data-binary",
                "approved-body",
                &s.upstream.url("/echo"),
            ]),
        )
        .env(
            "AGENT_AFTER",
            s.agent_argv(&["curl", "-sS", "-m", "10", &s.upstream.url("/after")]),
        )
        .env(
            "TAMPER",
            serde_json::to_string(&[
                "sqlite3".to_owned(),
                s.daemon
                    .state_dir()
                    .join("audit/audit.db")
                    .display()
                    .to_string(),
                "UPDATE events SET reason = 'nothing to see' WHERE seq = 3".to_owned(),
            ])
            .unwrap(),
        )
        .env("TAMPERED_SEQ", "3")
        .env("SCREENSHOTS", &shots)
        .env("USER_DATA_DIR", s.dir.path().join("chromium-profile"))
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    eprintln!("{said}");
    assert!(out.status.success(), "the browser test failed:\n{said}");
    assert!(said.contains("step: done"));
    for page in [
        "login",
        "events",
        "event",
        "chain",
        "approvals",
        "agents",
        "chain-broken",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }

    // What the browser did is in the record, in its user's name.
    let upstream_paths: Vec<String> = s.upstream.seen().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        upstream_paths,
        ["/listed", "/echo"],
        "and nothing after the revocation"
    );
    let events = s
        .daemon
        .wait_for_events("approval and revocation by alice", |e| {
            e.iter().any(|e| e["kind"] == "approval") && e.iter().any(|e| e["kind"] == "revocation")
        });
    let by = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .map(|e| e["actor"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(by("approval").as_deref(), Some("alice (web, approver)"));
    assert_eq!(by("revocation").as_deref(), Some("alice (web, approver)"));
    let logins: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["kind"] == "login")
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        logins,
        [("alice", "deny"), ("alice", "allow"), ("bob", "allow")]
    );
    let revoked = s.daemon.status()["agents"][0]["revoked"]["reason"].clone();
    assert_eq!(revoked, "revoked from the web view");
    validate_ocsf(&s.daemon);
}
