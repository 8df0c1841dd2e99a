//! A dead daemon leaves agents unable to connect; a restarted one takes over
//! the pinned state without anything done by hand.

use std::{fs, os::unix::fs::MetadataExt as _};

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

/// The pins of an agent's cgroup removed while the daemon was stopped are
/// removed when it starts again (no later state would compare with it);
/// a cgroup still there keeps its pins, replaced by the new daemon's.
#[test]
fn pins_of_a_cgroup_gone_while_stopped_are_removed_at_start() {
    require_root();
    let mut daemon = Daemon::start(&["stays", "goes"]);
    let id = |daemon: &Daemon, agent: &str| fs::metadata(daemon.cgroup_path(agent)).unwrap().ino();
    let (stays, goes) = (id(&daemon, "stays"), id(&daemon, "goes"));
    let links_of = |daemon: &Daemon, cgroup_id: u64| {
        let prefix = format!("cg{cgroup_id}-");
        daemon
            .pinned_links()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect::<Vec<_>>()
    };
    let stays_before = links_of(&daemon, stays);
    assert!(!stays_before.is_empty());
    assert!(!links_of(&daemon, goes).is_empty());

    daemon.terminate();
    // The clean stop leaves every pin: agents fail closed meanwhile.
    assert_eq!(links_of(&daemon, goes).len(), stays_before.len());
    fs::remove_dir(daemon.cgroup_path("goes")).unwrap();

    daemon.restart();
    assert_eq!(links_of(&daemon, goes), Vec::<String>::new());
    let stays_after = links_of(&daemon, stays);
    assert_eq!(stays_after.len(), stays_before.len(), "{stays_after:?}");
    assert!(stays_after.iter().all(|l| !stays_before.contains(l)));
    // The policy's agent has a cgroup again, a new one, guarded anew.
    let again = id(&daemon, "goes");
    assert_ne!(again, goes);
    assert_eq!(links_of(&daemon, again).len(), stays_before.len());
    assert!(
        daemon
            .log()
            .contains("cgroup gone while agentguard was stopped; its pins are removed"),
        "{}",
        daemon.log()
    );
}
