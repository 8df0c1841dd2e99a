//! Agents that are systemd services (`[agent] systemd_unit`), with systemd
//! played by the test: PID 1 is not systemd on these machines, so the test
//! does what systemd does for a unit (creates its cgroup below its slice,
//! starts `ExecStartPre=` and `ExecStart=` inside it, removes the cgroup at
//! stop) with real cgroups and real eBPF programs.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{
    AGENTGUARD, ALLOW_LOOPBACK_TEST_HOSTS, BODY, Service, Upstream, cgroup2_mount, in_cgroup_dir,
    text,
};

const UNIT: &str = "bot.service";

/// The agent's view in `status -o json`.
fn agent_status(svc: &Service) -> Value {
    let out = svc.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "bot")
        .cloned()
        .unwrap_or_else(|| panic!("no agent bot: {status}"))
}

/// Polls (bounded: 10 s) until the agent's view satisfies `pred`.
fn wait_agent(svc: &Service, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = agent_status(svc);
        if pred(&view) {
            return view;
        }
        assert!(Instant::now() < deadline, "{what}: {view}\n{}", svc.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn links_of(bpf_dir: &Path, cgroup_id: u64) -> usize {
    let prefix = format!("cg{cgroup_id}-");
    fs::read_dir(bpf_dir.join("links")).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    })
}

/// What systemd does when the unit starts: a fresh cgroup below the slice.
fn start_unit(unit_cgroup: &Path) -> u64 {
    fs::create_dir_all(unit_cgroup).unwrap();
    fs::metadata(unit_cgroup).unwrap().ino()
}

/// ... and when it stops: its processes gone, the cgroup removed.
fn stop_unit(unit_cgroup: &Path) {
    for _ in 0..100 {
        if fs::remove_dir(unit_cgroup).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("could not remove {}", unit_cgroup.display());
}

/// `ExecStartPre=+agentguard attach --agent bot`, run inside the unit.
fn gate(svc: &Service, unit_cgroup: &Path) -> std::process::Output {
    let admin = svc.admin_socket().display().to_string();
    in_cgroup_dir(
        unit_cgroup,
        &[
            AGENTGUARD,
            "attach",
            "--agent",
            "bot",
            "--admin-socket",
            &admin,
        ],
    )
    .output()
    .unwrap()
}

#[test]
fn a_unit_is_guarded_by_its_gate_before_it_starts_and_again_after_each_restart() {
    // A top-level slice name has no '-' (systemd nests "a-b.slice" in
    // "a.slice"); the pid keeps it this test's own.
    let slice = format!("agtest{}.slice", std::process::id());
    let policy = format!(
        "[agent]\nname = \"bot\"\nsystemd_unit = \"{UNIT}\"\ncgroup = \"{slice}/{UNIT}\"\n{ALLOW_LOOPBACK_TEST_HOSTS}"
    );
    let svc = Service::start(&slice, &[("bot.toml", &policy)], &[]);
    svc.wait_for("READY=1", Duration::from_secs(60));
    let unit_cgroup: PathBuf = cgroup2_mount().join(&slice).join(UNIT);

    // The unit is not running: the daemon waits for it and makes no cgroup
    // of its own in systemd's tree.
    let view = agent_status(&svc);
    assert_eq!(view["guarded"], false, "{view}");
    assert_eq!(view["systemd_unit"], UNIT, "{view}");
    assert!(
        !unit_cgroup.exists(),
        "agentguard created the unit's cgroup"
    );

    // The unit starts: its gate guards the new cgroup and says so.
    let id = start_unit(&unit_cgroup);
    let out = gate(&svc, &unit_cgroup);
    assert!(out.status.success(), "gate failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("guarded"),
        "{}",
        text(&out.stdout)
    );
    let view = agent_status(&svc);
    assert_eq!(view["guarded"], true, "{view}");
    assert_eq!(view["cgroup_id"], id, "{view}");
    assert!(
        links_of(&svc.bpf_dir, id) > 0,
        "no pinned links for the unit"
    );

    // ExecStart=agentguard exec ...: the agent stays in its unit, and its
    // connections are redirected and attributed to it.
    let upstream = Upstream::start("127.0.0.2");
    let admin = svc.admin_socket().display().to_string();
    let url = upstream.url();
    let out = in_cgroup_dir(
        &unit_cgroup,
        &[
            AGENTGUARD,
            "exec",
            "--agent",
            "bot",
            "--allow-root",
            "--admin-socket",
            &admin,
            "--",
            "sh",
            "-c",
            "cat /proc/self/cgroup; curl -sS -m 10 \"$0\"",
            &url,
        ],
    )
    .output()
    .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("0::/{slice}/{UNIT}")),
        "exec moved the agent out of its unit: {stdout}"
    );
    assert!(stdout.contains(BODY), "{stdout}");
    let out = svc.cli(&["connections"]);
    let connections = text(&out.stdout);
    assert!(
        connections
            .lines()
            .any(|l| l.contains("\"agent\":\"bot\"") && l.contains("127.0.0.2")),
        "the unit's connection was not attributed to the agent: {connections}"
    );

    // exec from outside the unit is refused, with exec's own exit code.
    let out = Command::new(AGENTGUARD)
        .args([
            "exec",
            "--agent",
            "bot",
            "--allow-root",
            "--admin-socket",
            &admin,
        ])
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is the systemd service bot.service"),
        "{}",
        text(&out.stderr)
    );

    // A gate outside the unit's cgroup guards nothing and fails.
    let out = Command::new(AGENTGUARD)
        .args(["attach", "--agent", "bot", "--admin-socket", &admin])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("not in {UNIT}'s cgroup")),
        "{}",
        text(&out.stderr)
    );

    // systemctl restart: the cgroup goes (its pins with it, once the
    // watcher sees it) and a new one comes, guarded by the gate before
    // anything else of the unit runs.
    stop_unit(&unit_cgroup);
    wait_agent(&svc, "stopped unit still listed as guarded", |v| {
        v["guarded"] == false
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while links_of(&svc.bpf_dir, id) > 0 {
        assert!(Instant::now() < deadline, "the gone cgroup's pins stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let id2 = start_unit(&unit_cgroup);
    assert_ne!(id, id2);
    let out = gate(&svc, &unit_cgroup);
    assert!(out.status.success(), "gate failed: {}", text(&out.stderr));
    let view = agent_status(&svc);
    assert_eq!(view["cgroup_id"], id2, "{view}");

    // The watcher leaves a new cgroup in which nothing runs yet, or only
    // the gate, to the gate: guarded first, the gate could no longer reach
    // the admin socket (no socket the policy lists) and the unit would
    // fail to start. systemd makes the cgroup before it forks the gate
    // into it: the empty cgroup gets the watcher's turns (every second)
    // first. Then this gate waits for a daemon at another socket, so the
    // watcher has its turns again before any attach.
    stop_unit(&unit_cgroup);
    wait_agent(&svc, "stopped unit", |v| v["guarded"] == false);
    let id4 = start_unit(&unit_cgroup);
    std::thread::sleep(Duration::from_millis(2500));
    let view = agent_status(&svc);
    assert_eq!(
        view["guarded"], false,
        "an empty new cgroup was guarded before its gate: {view}"
    );
    assert_eq!(links_of(&svc.bpf_dir, id4), 0);
    let nowhere = tempfile::tempdir().unwrap();
    let elsewhere = nowhere.path().join("no-daemon.sock");
    let mut waiting = in_cgroup_dir(
        &unit_cgroup,
        &[
            AGENTGUARD,
            "attach",
            "--agent",
            "bot",
            "--wait",
            "30s",
            "--admin-socket",
            &elsewhere.display().to_string(),
        ],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let view = agent_status(&svc);
    assert_eq!(
        view["guarded"], false,
        "guarded under a waiting gate: {view}"
    );
    assert_eq!(links_of(&svc.bpf_dir, id4), 0);
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the waiting gate ended early"
    );
    waiting.kill().unwrap();
    waiting.wait().unwrap();
    let out = gate(&svc, &unit_cgroup);
    assert!(out.status.success(), "gate failed: {}", text(&out.stderr));
    let view = agent_status(&svc);
    assert_eq!(view["cgroup_id"], id4, "{view}");

    // A unit that runs without processes (RemainAfterExit=): its cgroup,
    // still empty once the gate has had its few seconds, is guarded like
    // any, so that its later commands run guarded.
    stop_unit(&unit_cgroup);
    wait_agent(&svc, "stopped unit", |v| v["guarded"] == false);
    let id5 = start_unit(&unit_cgroup);
    let view = wait_agent(&svc, "an empty cgroup was never guarded", |v| {
        v["guarded"] == true
    });
    assert_eq!(view["cgroup_id"], id5, "{view}");

    // A unit started without the gate is found by the watcher, guarded,
    // and reported: what ran before was not.
    stop_unit(&unit_cgroup);
    wait_agent(&svc, "stopped unit", |v| v["guarded"] == false);
    let id3 = start_unit(&unit_cgroup);
    let mut early = in_cgroup_dir(&unit_cgroup, &["sleep", "30"])
        .spawn()
        .unwrap();
    let view = wait_agent(&svc, "watcher did not guard the new cgroup", |v| {
        v["guarded"] == true
    });
    assert_eq!(view["cgroup_id"], id3, "{view}");
    assert!(
        svc.log()
            .contains("the unit's processes ran before agentguard guarded its cgroup"),
        "{}",
        svc.log()
    );
    early.kill().unwrap();
    early.wait().unwrap();
    stop_unit(&unit_cgroup);
}

#[test]
fn a_unit_name_or_cgroup_that_systemd_would_not_use_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let check = |body: &str| {
        fs::write(dir.path().join("x.toml"), body).unwrap();
        let out = Command::new(AGENTGUARD)
            .args(["policy", "check"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        text(&out.stderr)
    };
    let err = check("[agent]\nname = \"x\"\nsystemd_unit = \"x.socket\"\n");
    assert!(err.contains("x.toml:3:16: agent.systemd_unit"), "{err}");
    // Inside another service's cgroup (a container engine's, a user's
    // manager): not where systemd puts a unit.
    let err = check(
        "[agent]\nname = \"x\"\nsystemd_unit = \"x.service\"\ncgroup = \"system.slice/podman.service/x.service\"\n",
    );
    assert!(err.contains("is not a slice"), "{err}");
    let err = check("[agent]\nname = \"x\"\n");
    assert!(err.contains("missing `cgroup`"), "{err}");
    // The default slice.
    fs::write(
        dir.path().join("x.toml"),
        "[agent]\nname = \"x\"\nsystemd_unit = \"x.service\"\n",
    )
    .unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}
