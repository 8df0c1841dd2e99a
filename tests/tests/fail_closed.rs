//! A dead daemon leaves agents unable to connect; a restarted one takes over
//! the pinned state without anything done by hand.

use crate::common::{Daemon, Upstream, require_root, text};

#[test]
fn killed_daemon_fails_closed_and_restart_resumes() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let mut daemon = Daemon::start(&["failclosed"]);
    let curl = ["curl", "-sS", "-m", "5", &upstream.url()];

    let out = daemon.exec("failclosed", &curl).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(upstream.hits(), 1);
    let links_before = daemon.pinned_links();
    // One pinned link per kernel hook: 16 socket hooks, and the process
    // one where the kernel runs BPF LSM programs.
    let socket_hooks = |links: &[String]| links.iter().filter(|l| !l.contains("ptrace")).count();
    assert_eq!(socket_hooks(&links_before), 16, "{links_before:?}");

    daemon.kill9();
    // The daemon cannot help here (it is dead): join the cgroup directly.
    let out = daemon.in_cgroup("failclosed", &curl).output().unwrap();
    assert!(
        !out.status.success(),
        "a guarded connection succeeded with the daemon dead"
    );
    // curl exit 7: failed to connect (refused), not a timeout.
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(upstream.hits(), 1, "the upstream received a connection");

    daemon.restart();
    let out = daemon.exec("failclosed", &curl).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(upstream.hits(), 2);
    let entries = daemon.connections();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["original_dst"], upstream.addr.to_string());

    // The new daemon replaced the old links rather than stacking new ones.
    let links_after = daemon.pinned_links();
    assert_eq!(links_after.len(), links_before.len(), "{links_after:?}");
    assert_eq!(socket_hooks(&links_after), 16, "{links_after:?}");
    assert!(links_after.iter().all(|l| !links_before.contains(l)));
}

#[test]
fn a_process_dialling_the_proxy_directly_gets_nothing() {
    require_root();
    let daemon = Daemon::start(&["direct"]);
    let status: serde_json::Value =
        serde_json::from_slice(&daemon.cli(&["status", "-o", "json"]).stdout).unwrap();
    let port = status["proxy_port"].as_u64().unwrap();

    // From outside any agent cgroup: accepted, refused for want of a kernel
    // record, and recorded.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "5", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let entries = daemon.connections();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["decision"], "refuse");
    assert!(entries[0]["identity"].is_null());

    // From inside: the kernel refuses the connect itself (EPERM), so an
    // agent cannot choose its own "original destination".
    let out = daemon
        .exec(
            "direct",
            &[
                "curl",
                "-sS",
                "-m",
                "5",
                &format!("http://127.0.0.1:{port}/"),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(daemon.connections().len(), 1);
}
