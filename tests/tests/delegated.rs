//! Delegated and helper-made credentials, end to end: RFC 8693 token
//! exchange and the RFC 7523 JWT-bearer grant against an Authlib
//! authorization server (`tests/servers/oauth_server.py`) that verifies
//! agentguard's identity tokens against its JWKS over HTTPS; and credential
//! helpers (`source = { process = [...] }`).

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
};

use crate::common::{
    ApiRequest, Daemon, FakeApi, Handler, TestCa, orphaned_keep_alive, require_root, secret_file,
    text,
};

const AGENT: &str = "deleg-agent";
const API: &str = "tickets.agentguard.test";
const AUTH_IP: &str = "127.0.0.7";
const ISSUER: &str = "spiffe://agentguard.local/agentguard";

/// The Authlib server, killed on drop.
struct AuthServer {
    child: Child,
    port: u16,
    log: PathBuf,
    jwks_url_file: PathBuf,
}

impl AuthServer {
    fn start(dir: &Path, ca: &TestCa, extra: &[String]) -> Self {
        let (cert, key) = ca.leaf_files(AUTH_IP, dir);
        let log = dir.join("issued.jsonl");
        let jwks_url_file = dir.join("jwks-url");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/servers/oauth_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--host",
                AUTH_IP,
                "--token-path",
                "/oauth2/token",
                "--issuer",
                ISSUER,
            ])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--jwks-url-file")
            .arg(&jwks_url_file)
            .arg("--log")
            .arg(&log)
            // Until the daemon runs, its CA is not known; the file is
            // filled in by `trust_daemon`.
            .arg("--jwks-ca")
            .arg(dir.join("agentguard-ca.pem"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("oauth_server.py did not start: {line:?}"));
        Self {
            child,
            port,
            log,
            jwks_url_file,
        }
    }

    fn token_url(&self) -> String {
        format!("https://{AUTH_IP}:{}/oauth2/token", self.port)
    }

    /// Points the server at the daemon's JWKS (URL from its log) and CA.
    fn trust_daemon(&self, daemon: &Daemon, dir: &Path) {
        let log = daemon.log();
        let url = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|l| l["fields"]["jwks"].as_str().map(str::to_owned))
            .expect("the daemon logs its JWKS URL");
        std::fs::write(&self.jwks_url_file, url).unwrap();
        std::fs::copy(
            daemon.state_dir().join("ca/ca.crt"),
            dir.join("agentguard-ca.pem"),
        )
        .unwrap();
    }

    /// Every token issued, oldest first.
    fn issued(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tool: answers 200 only to a bearer token `accept` approves.
fn tool(ca: &TestCa, accept: impl Fn(&str) -> bool + Send + Sync + 'static) -> FakeApi {
    let handler: Handler = Arc::new(move |r: &ApiRequest| {
        let token = r
            .header("authorization")
            .first()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
            .unwrap_or_default();
        if accept(&token) {
            (200, r#"{"tickets":[]}"#.into())
        } else {
            (401, r#"{"error":"invalid_token"}"#.into())
        }
    });
    FakeApi::start("127.0.0.3", API, ca, handler)
}

fn tool_policy(credential: &str) -> String {
    format!(
        "[[tool]]\nname = \"tickets.read\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/api/tickets\"]\ncredential = \"{credential}\"\n"
    )
}

fn curl(daemon: &Daemon, flags: &[&str], url: &str) -> (u16, String) {
    let out = daemon
        .exec_resolving_with(
            AGENT,
            flags,
            &[API],
            "127.0.0.3",
            &["curl", "-sS", "-m", "20", "-w", "\n%{http_code}", url],
        )
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn token_exchange_for_the_agent_with_a_client_secret() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let auth = AuthServer::start(
        dir.path(),
        &ca,
        &["--client".into(), "agentguard:client-secret-4f1a2b".into()],
    );
    let issued_log = auth.log.clone();
    // The tool takes only tokens the authorization server issued.
    let api = tool(&ca, move |t| {
        std::fs::read_to_string(&issued_log).is_ok_and(|l| !t.is_empty() && l.contains(t))
    });
    let client_secret = secret_file(dir.path(), "client-secret", "client-secret-4f1a2b\n");
    let policy = format!(
        "[[credential]]\nid = \"tickets\"\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\
         [credential.source.token_exchange]\ntoken_url = \"{url}\"\nclient_id = \"agentguard\"\n\
         client_secret = {{ file = \"{secret}\" }}\naudience = \"tickets\"\nscope = \"tickets:read\"\n\n{tool}",
        url = auth.token_url(),
        secret = client_secret.display(),
        tool = tool_policy("tickets"),
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    auth.trust_daemon(&daemon, dir.path());
    for _ in 0..3 {
        let (status, body) = curl(&daemon, &[], &api.url("/api/tickets"));
        assert_eq!(status, 200, "{body}");
    }
    // One exchange served the three calls: the subject was the agent,
    // proved by agentguard's signature (verified against its JWKS).
    let issued = auth.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let exchange = &issued[0];
    assert_eq!(exchange["grant"], "token-exchange");
    assert_eq!(exchange["client_auth"], "client_secret_basic");
    assert_eq!(
        exchange["subject"],
        format!("spiffe://agentguard.local/agent/{AGENT}")
    );
    assert!(exchange["actor"].is_null());
    assert_eq!(exchange["audience"], "tickets");
    assert_eq!(exchange["scope"], "tickets:read");
    let token = exchange["token"].as_str().unwrap();
    let seen = api.seen();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            [format!("Bearer {token}").as_str()]
        );
    }
    // The exchanged token reached only the tool.
    assert!(!daemon.log().contains(token));
    let events = daemon.wait_for_events("three requests", |e| {
        e.iter().filter(|e| e["kind"] == "request").count() == 3
    });
    assert!(!format!("{events:?}").contains(token));
    let requests: Vec<_> = events.iter().filter(|e| e["kind"] == "request").collect();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|e| e["credential_id"] == "tickets"));
}

/// Every line the daemon logged with `message` names its connection (the
/// `conn` span: agent, pid), whichever protocol the agent spoke: hyper
/// runs an HTTP/2 request as a task of its own, an HTTP/1.1 one within
/// its connection's. `events`' requests all spoke `protocol`.
fn logged_with_its_connection(
    daemon: &Daemon,
    message: &str,
    events: &[serde_json::Value],
    protocol: &str,
) {
    let lines: Vec<serde_json::Value> = daemon
        .log()
        .lines()
        .filter(|l| l.contains(message))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty(), "no {message:?} in the log");
    for line in &lines {
        assert_eq!(line["span"]["name"], "conn", "{line}");
        assert_eq!(line["span"]["agent"], AGENT, "{line}");
        assert!(line["span"]["pid"].as_u64().is_some(), "{line}");
    }
    let requests: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["kind"] == "request").collect();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|e| e["protocol"] == protocol),
        "{requests:?}"
    );
}

/// alice's IdP token, in the operator's folder of people's tokens.
const ALICE_IDP_TOKEN: &str = "alice-idp-token-93b1";

/// A token exchange on behalf of alice: the authorization server (knowing
/// the client by `client_args` and alice by her IdP token), the tool that
/// accepts only the tokens it issued, and a daemon whose policy exchanges
/// alice's token, the client authenticated by `client_auth` and the token
/// asked for by `target` (policy lines).
fn on_behalf_of_alice(
    dir: &Path,
    ca: &TestCa,
    client_args: &[String],
    client_auth: &str,
    target: &str,
) -> (AuthServer, FakeApi, Daemon) {
    let mut args = client_args.to_vec();
    args.extend(["--person".into(), format!("alice:{ALICE_IDP_TOKEN}")]);
    let auth = AuthServer::start(dir, ca, &args);
    let issued_log = auth.log.clone();
    let api = tool(ca, move |t| {
        std::fs::read_to_string(&issued_log).is_ok_and(|l| !t.is_empty() && l.contains(t))
    });
    let people = dir.join("people");
    std::fs::create_dir(&people).unwrap();
    secret_file(&people, "alice", &format!("{ALICE_IDP_TOKEN}\n"));
    let policy = format!(
        "[[credential]]\nid = \"tickets\"\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\
         [credential.source.token_exchange]\ntoken_url = \"{url}\"\nclient_id = \"agentguard\"\n\
         {client_auth}\nsubject = \"on-behalf-of\"\nsubject_tokens = \"{people}\"\n{target}\n\n{tool}",
        url = auth.token_url(),
        people = people.display(),
        tool = tool_policy("tickets"),
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    auth.trust_daemon(&daemon, dir);
    (auth, api, daemon)
}

#[test]
fn token_exchange_on_behalf_of_a_person_with_private_key_jwt() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    // The client's key pair: agentguard holds the private key, the
    // authorization server knows the public one.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let client_key = secret_file(dir.path(), "client.pem", &key.serialize_pem());
    let public = dir.path().join("client.pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let (auth, api, daemon) = on_behalf_of_alice(
        dir.path(),
        &ca,
        &[
            "--key-client".into(),
            format!("agentguard:{}", public.display()),
        ],
        &format!("client_key = {{ file = \"{}\" }}", client_key.display()),
        &format!("resource = \"https://{API}/api\""),
    );
    let (status, body) = curl(
        &daemon,
        &["--on-behalf-of", "alice"],
        &api.url("/api/tickets"),
    );
    assert_eq!(status, 200, "{body}");
    let issued = auth.issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    // Delegation (RFC 8693 §1.1): alice is the subject, the agent acts.
    assert_eq!(issued[0]["subject"], "alice");
    assert_eq!(
        issued[0]["actor"],
        format!("spiffe://agentguard.local/agent/{AGENT}")
    );
    assert_eq!(issued[0]["client_auth"], "private_key_jwt");
    assert_eq!(issued[0]["resource"], format!("https://{API}/api"));

    // Not acting for anyone, or for someone without a token: a clear 502
    // and a recorded failure, never a token for the agent alone.
    for flags in [&[][..], &["--on-behalf-of", "bob"][..]] {
        let (status, body) = curl(&daemon, flags, &api.url("/api/tickets"));
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("credential-fetch-failed"), "{body}");
    }
    assert_eq!(auth.issued().len(), 1);
    assert_eq!(api.seen().len(), 1, "nothing else reached the tool");
    let events = daemon.wait_for_events("credential failures", |e| {
        e.iter()
            .filter(|e| e["kind"] == "credential_failure")
            .count()
            == 2
    });
    let failures: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "credential_failure")
        .collect();
    assert!(failures.iter().all(|e| e["credential_id"] == "tickets"));
    let reasons = format!("{failures:?}");
    assert!(reasons.contains("--on-behalf-of"), "{reasons}");
    assert!(reasons.contains("\\\"bob\\\""), "{reasons}");
    assert!(!reasons.contains(ALICE_IDP_TOKEN), "{reasons}");
    assert!(!daemon.log().contains(ALICE_IDP_TOKEN));
    logged_with_its_connection(&daemon, "credential unavailable", &events, "HTTP/2");
}

/// Whom a connection acts for is settled when it is accepted: a request
/// sent later on it is the same person's even once the registered process
/// is gone (its pid could be another process's by then), and a connection
/// opened after that acts for no one.
#[test]
fn a_connection_acts_for_whom_its_process_acted_for_when_it_opened() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let client_secret = secret_file(dir.path(), "client-secret", "client-secret-77c0\n");
    let (auth, api, daemon) = on_behalf_of_alice(
        dir.path(),
        &ca,
        &["--client".into(), "agentguard:client-secret-77c0".into()],
        &format!(
            "client_secret = {{ file = \"{}\" }}",
            client_secret.display()
        ),
        "audience = \"tickets\"",
    );
    // The registered process (the shell, which `agentguard exec` became)
    // starts the client and is killed by it after its first request: the
    // client's next request goes on the same connection, from a process
    // whose registered ancestor is gone.
    let client = orphaned_keep_alive(&api.url("/api/tickets"), "GET");
    let out = daemon
        .exec_resolving_with(
            AGENT,
            &["--on-behalf-of", "alice"],
            &[API],
            "127.0.0.3",
            &client.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "200 200 True True 502",
        "{stdout}{}",
        text(&out.stderr)
    );
    // Both of the first connection's requests were alice's; the second
    // connection's request fetched nothing for anyone.
    let issued = auth.issued();
    assert!(!issued.is_empty(), "{issued:?}");
    assert!(issued.iter().all(|t| t["subject"] == "alice"), "{issued:?}");
    assert_eq!(api.seen().len(), 2, "the refused request reached the tool");
    let events = daemon.wait_for_events("three requests", |e| {
        e.iter().filter(|e| e["kind"] == "request").count() == 3
    });
    let people: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "request")
        .map(|e| e["on_behalf_of"].clone())
        .collect();
    assert_eq!(
        people,
        [
            serde_json::json!("alice"),
            serde_json::json!("alice"),
            serde_json::Value::Null
        ]
    );
    logged_with_its_connection(&daemon, "credential unavailable", &events, "HTTP/1.1");
}

#[test]
fn jwt_bearer_grant_and_a_refused_exchange() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let auth = AuthServer::start(
        dir.path(),
        &ca,
        &[
            "--client".into(),
            "agentguard:s3cret-client".into(),
            "--refuse-audience".into(),
            "payroll".into(),
        ],
    );
    let issued_log = auth.log.clone();
    let api = tool(&ca, move |t| {
        std::fs::read_to_string(&issued_log).is_ok_and(|l| !t.is_empty() && l.contains(t))
    });
    let client_secret = secret_file(dir.path(), "client-secret", "s3cret-client");
    let policy = format!(
        "[[credential]]\nid = \"federated\"\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\
         [credential.source.jwt_bearer]\ntoken_url = \"{url}\"\nscope = \"tickets:read\"\n\n\
         [[credential]]\nid = \"payroll\"\ninject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\
         [credential.source.token_exchange]\ntoken_url = \"{url}\"\nclient_id = \"agentguard\"\n\
         client_secret = {{ file = \"{secret}\" }}\naudience = \"payroll\"\n\n\
         {tool}\n[[tool]]\nname = \"payroll.read\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/api/payroll\"]\ncredential = \"payroll\"\n",
        url = auth.token_url(),
        secret = client_secret.display(),
        tool = tool_policy("federated"),
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    auth.trust_daemon(&daemon, dir.path());
    let (status, body) = curl(&daemon, &[], &api.url("/api/tickets"));
    assert_eq!(status, 200, "{body}");
    let issued = auth.issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["grant"], "jwt-bearer");
    assert_eq!(
        issued[0]["subject"],
        format!("spiffe://agentguard.local/agent/{AGENT}")
    );

    // The server really checks agentguard's signature: the same claims
    // signed by another key are refused.
    let forger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &serde_json::json!({
            "iss": ISSUER, "sub": format!("spiffe://agentguard.local/agent/{AGENT}"),
            "aud": auth.token_url(), "iat": now, "exp": now + 60, "jti": "forged",
        }),
        &jsonwebtoken::EncodingKey::from_ec_pem(forger.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", "--cacert"])
        .arg(&ca.pem_path)
        .args([
            "-d",
            "grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer",
            "-d",
            &format!("assertion={forged}"),
            &auth.token_url(),
        ])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("invalid_grant"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(auth.issued().len(), 1);

    // The server refuses the exchange (invalid_target): 502, its error
    // code, nothing sent to the tool.
    let (status, body) = curl(&daemon, &[], &api.url("/api/payroll"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("invalid_target"), "{body}");
    assert!(!body.contains("s3cret-client"));
    assert!(api.seen().iter().all(|r| r.path != "/api/payroll"));
    let events = daemon.wait_for_events("the refusal", |e| {
        e.iter().any(|e| e["kind"] == "credential_failure")
    });
    let failure = events
        .iter()
        .find(|e| e["kind"] == "credential_failure")
        .unwrap();
    assert_eq!(failure["credential_id"], "payroll");
    let request = events.iter().rfind(|e| e["kind"] == "request").unwrap();
    assert_eq!(request["rule"], "credential-fetch-failed");
    assert_eq!(request["status"], 502);
}

/// A helper script, root-owned 0700 in a root-owned 0700 folder.
fn helper(dir: &Path, body: &str) -> PathBuf {
    let folder = dir.join("bin");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = folder.join("get-secret");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path
}

#[test]
fn a_credential_helper_runs_once_out_of_the_agents_reach() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let secret = format!("helper-secret-{}", std::process::id());
    let runs = dir.path().join("runs");
    // It records where it ran (cgroup, environment) and prints JSON.
    let script = helper(
        dir.path(),
        &format!(
            "{{ cat /proc/self/cgroup; env; echo \"args=$*\"; echo ---; }} >> {runs}\n\
             echo '{{\"secret\":\"{secret}\",\"expires_in\":3600}}'",
            runs = runs.display()
        ),
    );
    let accepted = secret.clone();
    let api = tool(&ca, move |t| t == accepted);
    let policy = format!(
        "[[credential]]\nid = \"itsm\"\nsource = {{ process = [\"{script}\", \"itsm\"] }}\n\
         inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\n{tool}",
        script = script.display(),
        tool = tool_policy("itsm"),
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .env("AGENTGUARD_TEST_DAEMON_ONLY", "not-for-helpers")
        .start();
    for _ in 0..3 {
        let (status, body) = curl(&daemon, &[], &api.url("/api/tickets"));
        assert_eq!(status, 200, "{body}");
    }
    let record = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        record.matches("---").count(),
        1,
        "cached: one run\n{record}"
    );
    assert!(record.contains("args=itsm"), "{record}");
    assert!(
        record.contains(&format!("AGENTGUARD_AGENT={AGENT}")),
        "{record}"
    );
    assert!(!record.contains("AGENTGUARD_TEST_DAEMON_ONLY"), "{record}");
    assert!(
        !record.contains(&format!("/{AGENT}\n")),
        "the helper ran in the agent's cgroup:\n{record}"
    );
    assert!(
        !daemon.log().contains(&secret),
        "the helper's output was logged"
    );

    // A failing helper: 502 naming the helper, with its last stderr line.
    std::fs::write(
        &script,
        "#!/bin/sh\necho leaked-partial-output\necho 'vault: permission denied' >&2\nexit 2\n",
    )
    .unwrap();
    let mut policy_file = std::fs::read_to_string(daemon.policy_path(AGENT)).unwrap();
    // A reload starts a fresh cache.
    policy_file.push_str("\n# reload\n");
    std::fs::write(daemon.policy_path(AGENT), policy_file).unwrap();
    daemon.wait_for_reload(true);
    let (status, body) = curl(&daemon, &[], &api.url("/api/tickets"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("vault: permission denied"), "{body}");
    assert!(!body.contains("leaked-partial-output"), "{body}");
    assert_eq!(api.seen().len(), 3);
}

#[test]
fn policy_check_validates_the_new_sources() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.toml");
    let head = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n\n[[credential]]\nid = \"c\"\n";
    std::fs::write(
        &file,
        format!(
            "{head}inject = {{ header = \"Authorization\" }}\n[credential.source.token_exchange]\ntoken_url = \"https://idp.example.com/token\"\nclient_id = \"agentguard\"\nclient_secret = {{ file = \"/etc/agentguard/secrets/idp\" }}\nsubject = \"on-behalf-of\"\nsubject_tokens = \"/etc/agentguard/people\"\n"
        ),
    )
    .unwrap();
    let check = |path: &Path| {
        Command::new(crate::common::AGENTGUARD)
            .args(["policy", "check"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = check(&file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(
        &file,
        format!("{head}source = {{ process = [\"get-secret\"] }}\ninject = {{ header = \"Authorization\" }}\n"),
    )
    .unwrap();
    let out = check(&file);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("a.toml:7:") && err.contains("must be an absolute path"),
        "{err}"
    );
    std::fs::write(
        &file,
        format!("{head}inject = {{ header = \"Authorization\" }}\n[credential.source.aws]\naccess_key_id = \"AKIDEXAMPLE\"\nsecret_access_key = {{ env = \"AWS_SECRET\" }}\n"),
    )
    .unwrap();
    let err = text(&check(&file).stderr);
    assert!(err.contains("aws_sigv4"), "{err}");
}
