//! Rotating agentguard's CA while the daemon runs: `agentguard ca rotate`
//! puts a new CA into the trust bundle beside the one that signs, and
//! `agentguard ca activate` makes it sign. A real curl, trusting a copy of
//! the bundle taken at each stage (as an agent loads it when it starts),
//! shows what the two steps promise: an agent started before the rotation
//! keeps working until the activation, one started after it keeps working
//! through it, and the new CA alone is what the proxy's leaves chain to
//! afterwards. Each step, and a step out of order, is an audit event
//! naming who asked.

use std::{path::Path, process::Output};

use serde_json::Value;

use crate::common::{Setup, free_port, http_get, text};

const AGENT: &str = "rotation-agent";
const API: &str = "api.agentguard.test";
const ALLOW: &str = r#"
[[tool]]
name = "test.any"
host = "*.agentguard.test"
methods = ["GET"]
paths = ["/", "/*"]
"#;

/// The roles of `agentguard_ca_expiry_timestamp_seconds`, each with an
/// expiry at least `min_days` ahead, sorted (the exposition's order of a
/// metric's labels is not fixed).
fn expiry_roles(metrics_port: u16, min_days: i64) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut roles: Vec<String> = http_get(metrics_port, "/metrics")
        .lines()
        .filter_map(|l| l.strip_prefix("agentguard_ca_expiry_timestamp_seconds{role=\""))
        .map(|rest| {
            let (role, value) = rest.split_once("\"} ").unwrap();
            let at: i64 = value.trim().parse().unwrap();
            assert!(at > now + min_days * 86_400, "{role} expires at {at}");
            role.to_owned()
        })
        .collect();
    roles.sort();
    roles
}

/// The trust bundle as it is now, copied as an agent starting now loads it.
fn bundle_now(s: &Setup, dir: &Path, name: &str) -> String {
    let copy = dir.join(name);
    std::fs::copy(s.daemon.state_dir().join("ca/bundle.pem"), &copy).unwrap();
    copy.display().to_string()
}

/// curl through the proxy, trusting only `ca_file`.
fn curl(s: &Setup, ca_file: &str) -> Output {
    s.daemon
        .exec_resolving(
            AGENT,
            &[API],
            "127.0.0.3",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "--cacert",
                ca_file,
                &s.upstream.url("/"),
            ],
        )
        .output()
        .unwrap()
}

fn assert_served(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: curl failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "hello over tls", "{what}");
}

fn ca(s: &Setup, args: &[&str]) -> Output {
    let mut all = vec!["ca"];
    all.extend_from_slice(args);
    s.daemon.cli(&all)
}

fn rotation_events(s: &Setup, count: usize) -> Vec<Value> {
    let is_rotation = |e: &Value| e["kind"] == "ca_rotation";
    s.daemon.wait_for_events("ca_rotation events", |events| {
        events.iter().filter(|e| is_rotation(e)).count() >= count
    });
    s.daemon
        .audit_events()
        .into_iter()
        .filter(is_rotation)
        .collect()
}

#[test]
fn a_rotation_switches_the_signing_ca_without_breaking_restarted_agents() {
    let metrics = free_port();
    let listen = format!("127.0.0.1:{metrics}");
    let s = Setup::builder(API)
        .agents(&[AGENT])
        .policy(ALLOW)
        .args(&["--metrics-listen", &listen])
        .start();
    assert_eq!(expiry_roles(metrics, 700), ["active"]);
    let dir = tempfile::tempdir().unwrap();
    let before = bundle_now(&s, dir.path(), "before.pem");
    assert_served(&curl(&s, &before), "before the rotation");

    // Step 1: a next CA is trusted, the current one still signs.
    let out = ca(&s, &["rotate"]);
    assert!(out.status.success(), "ca rotate: {}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(listed.contains("active  sha256 "), "{listed}");
    assert!(listed.contains("next    sha256 "), "{listed}");
    let during = bundle_now(&s, dir.path(), "during.pem");
    assert_served(&curl(&s, &before), "staged, agent started before");
    assert_served(&curl(&s, &during), "staged, agent started after");
    let status: Value =
        serde_json::from_slice(&s.daemon.cli(&["status", "-o", "json"]).stdout).unwrap();
    let roles: Vec<&str> = status["ca"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["active", "next"], "{status}");
    assert_eq!(expiry_roles(metrics, 700), ["active", "next"]);

    // Step 2: the next CA signs; the old one is trusted no more.
    let out = ca(&s, &["activate"]);
    assert!(out.status.success(), "ca activate: {}", text(&out.stderr));
    assert_served(
        &curl(&s, &during),
        "activated, agent started after the rotation",
    );
    assert_eq!(expiry_roles(metrics, 700), ["active"]);
    let stale = curl(&s, &before);
    assert!(
        !stale.status.success(),
        "an agent trusting only the old CA still verified the proxy's leaf"
    );
    // curl's "Peer certificate cannot be authenticated with given CA
    // certificates" (exit 60): verification, not the connection, failed.
    assert_eq!(stale.status.code(), Some(60), "{}", text(&stale.stderr));
    // The exported CA is the new one, and trusting it alone is enough.
    let out = s.daemon.cli(&[
        "ca",
        "export",
        "--state-dir",
        &s.daemon.state_dir().display().to_string(),
    ]);
    let exported = dir.path().join("exported.pem");
    std::fs::write(&exported, &out.stdout).unwrap();
    assert_served(
        &curl(&s, &exported.display().to_string()),
        "the exported CA alone",
    );
    let after = std::fs::read_to_string(s.daemon.state_dir().join("ca/bundle.pem")).unwrap();
    let old = std::fs::read_to_string(&before).unwrap();
    let old_ca = &old[old.rfind("-----BEGIN CERTIFICATE-----").unwrap()..];
    assert!(!after.contains(old_ca), "the old CA is still in the bundle");

    // A step out of order is refused, says why, and is recorded too.
    let out = ca(&s, &["cancel"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no next CA is staged"),
        "{}",
        text(&out.stderr)
    );
    let events = rotation_events(&s, 3);
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["rule"].as_str().unwrap(), e["decision"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("ca-rotate", "accept"),
            ("ca-activate", "accept"),
            ("ca-cancel", "reject")
        ],
        "{events:?}"
    );
    for e in &events {
        assert!(
            e["actor"]
                .as_str()
                .unwrap()
                .contains("(admin socket, uid 0)"),
            "{e}"
        );
    }
}
