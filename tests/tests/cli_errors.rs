//! Clear errors, and nothing changed, when the operator gets something wrong.

use std::{fs, net::TcpListener, process::Command};

use crate::common::{AGENTGUARD, Daemon, require_root, text};

#[test]
fn exec_without_a_daemon_says_so() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["exec", "--agent", "anyone", "--admin-socket"])
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
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(
        policies.join("broken.toml"),
        "[agent]\nname = \"broken\"\ncgroup = \"/absolute\"\n",
    )
    .unwrap();
    let bpf_dir = format!(
        "/sys/fs/bpf/agentguard-test-badpolicy-{}",
        std::process::id()
    );
    let out = Command::new(AGENTGUARD)
        .args(["run", "--proxy-port", "0", "--bpf-dir", &bpf_dir])
        .arg("--policies")
        .arg(&policies)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("broken.toml:3:10: agent.cgroup"), "{err}");
    // Refused before anything was pinned.
    assert!(!std::path::Path::new(&bpf_dir).exists());
}

#[test]
fn proxy_port_in_use_is_reported() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(
        policies.join("p.toml"),
        "[agent]\nname = \"p\"\ncgroup = \"agentguard-test-port/p\"\n",
    )
    .unwrap();
    let bpf_dir = format!("/sys/fs/bpf/agentguard-test-port-{}", std::process::id());
    let out = Command::new(AGENTGUARD)
        .args(["run", "--proxy-port", &port, "--bpf-dir", &bpf_dir])
        .arg("--policies")
        .arg(&policies)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("already in use"), "{err}");
    assert!(!std::path::Path::new(&bpf_dir).exists());
}
