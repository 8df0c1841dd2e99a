//! Clear errors, and nothing changed, when the operator gets something wrong.

use std::{fs, net::TcpListener, process::Command};

use crate::common::{AGENTGUARD, Daemon, require_root, start_attempt, text};

#[test]
fn exec_without_a_daemon_says_so() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AGENTGUARD)
        .args([
            "exec",
            "--agent",
            "anyone",
            "--user",
            "65534",
            "--admin-socket",
        ])
        .arg(dir.path().join("nothing.sock"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("agentguard is not running"), "{err}");
}

#[test]
fn exec_of_an_unknown_agent_is_refused() {
    require_root();
    let daemon = Daemon::start(&["known"]);
    let out = daemon.exec("unknown", &["true"]).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown agent \"unknown\""), "{err}");
}

#[test]
fn bad_policy_stops_start_up_with_file_and_line() {
    require_root();
    let attempt = start_attempt(
        "badpolicy",
        (
            "broken.toml",
            "[agent]\nname = \"broken\"\ncgroup = \"/absolute\"\n",
        ),
        &["--proxy-port", "0"],
        &[],
    );
    assert!(!attempt.out.status.success());
    let err = text(&attempt.out.stderr);
    assert!(err.contains("broken.toml:3:10: agent.cgroup"), "{err}");
    assert!(
        !attempt.pinned,
        "something was pinned before the policy was checked"
    );
}

#[test]
fn proxy_port_in_use_is_reported() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let attempt = start_attempt(
        "port",
        (
            "p.toml",
            "[agent]\nname = \"p\"\ncgroup = \"agentguard-test-port/p\"\n",
        ),
        &["--proxy-port", &port],
        &[],
    );
    assert!(!attempt.out.status.success());
    let err = text(&attempt.out.stderr);
    assert!(err.contains("already in use"), "{err}");
    assert!(
        !attempt.pinned,
        "something was pinned before the port was bound"
    );
}

#[test]
fn run_without_root_says_so_and_changes_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(AGENTGUARD)
        .args([
            "run",
            "--proxy-port",
            "0",
            "--bpf-dir",
            "/sys/fs/bpf/agentguard-test-nonroot",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("must run as root"), "{err}");
    assert!(!dir.path().join("state").exists());
}

#[test]
fn policy_check_and_test_report_decisions_and_exit_codes() {
    require_root();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let out = Command::new(AGENTGUARD)
        .args(["policy", "check", examples])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: "));

    let test = |method: &str, url: &str| {
        Command::new(AGENTGUARD)
            .args([
                "policy",
                "test",
                "--policies",
                examples,
                "--agent",
                "support-bot",
            ])
            .args(["--method", method, "--url", url, "-o", "json"])
            .output()
            .unwrap()
    };
    let allow = test("POST", "https://itsm.example.com/api/v2/tickets");
    assert_eq!(allow.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&allow.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["tool"], "itsm.create_ticket");
    assert_eq!(v["credential"], "itsm-token");

    let deny = test("GET", "https://itsm.example.com/api/v2/tickets/../admin");
    assert_eq!(deny.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["path"], "/api/v2/admin");

    // A broken file: named with its line, exit non-zero.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("x.toml"),
        "[agent]\nname = \"x\"\ncgroup = \"a/x\"\n\n[[tool]]\nname = \"t\"\nhost = \"h.example\"\nmethods = [\"get\"]\npaths = [\"/\"]\n",
    )
    .unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("x.toml:8:") && err.contains("tool.methods"),
        "{err}"
    );
}

#[test]
fn a_plain_http_jwks_off_loopback_is_refused() {
    require_root();
    let attempt = start_attempt(
        "jwksplain",
        (
            "p.toml",
            "[agent]\nname = \"p\"\ncgroup = \"agentguard-test-jwksplain/p\"\n",
        ),
        &[
            "--proxy-port",
            "0",
            "--jwks-listen",
            "0.0.0.0:0",
            "--jwks-plain-http",
        ],
        &[],
    );
    assert!(!attempt.out.status.success());
    let err = text(&attempt.out.stderr);
    assert!(
        err.contains("--jwks-plain-http") && err.contains("not loopback"),
        "{err}"
    );
    assert!(
        !attempt.pinned,
        "something was pinned before the flags were checked"
    );
}
