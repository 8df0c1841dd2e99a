//! Unix sockets: an agent reaches only the ones its policy lists. The
//! servers here run in the test process, outside every agent cgroup, like
//! the container engine or the session bus an agent must not reach.

use std::{
    io::Read as _,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            fs::PermissionsExt as _,
            net::{SocketAddr, UnixDatagram, UnixListener, UnixStream},
        },
    },
    path::Path,
    process::Output,
};

use serde_json::Value;

use crate::common::{Daemon, DaemonOptions, require_root, text};

const AGENT: &str = "unix-agent";

struct Servers {
    dir: tempfile::TempDir,
    _listeners: Vec<UnixListener>,
    _datagrams: Vec<UnixDatagram>,
}

/// Stream listeners at `allowed.sock`, `denied.sock` and two abstract
/// names; datagram sockets at `allowed.dgram` and `denied.dgram`. Each
/// stream listener accepts (in the backlog) without being served: a
/// connect that the kernel lets through succeeds.
fn servers(tag: &str) -> Servers {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut listeners = Vec::new();
    for name in ["allowed.sock", "denied.sock"] {
        listeners.push(UnixListener::bind(dir.path().join(name)).unwrap());
    }
    for name in ["allowed", "denied"] {
        let addr = SocketAddr::from_abstract_name(format!("agentguard-test-{tag}-{name}")).unwrap();
        listeners.push(UnixListener::bind_addr(&addr).unwrap());
    }
    let datagrams = ["allowed.dgram", "denied.dgram"]
        .iter()
        .map(|n| UnixDatagram::bind(dir.path().join(n)).unwrap())
        .collect();
    Servers {
        dir,
        _listeners: listeners,
        _datagrams: datagrams,
    }
}

fn start(servers: &Servers, tag: &str) -> Daemon {
    let d = servers.dir.path().display();
    let extra = format!(
        "unix_sockets = [\"{d}/allowed.sock\", \"{d}/allowed.dgram\", \"@agentguard-test-{tag}-allowed\"]\n"
    );
    Daemon::start_with(
        &[AGENT],
        DaemonOptions {
            policy_extra: &extra,
            ..DaemonOptions::default()
        },
    )
}

fn python(daemon: &Daemon, script: &str) -> (u32, Output) {
    let child = daemon
        .exec(AGENT, &["python3", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

/// The agent tries each address and prints `ok` or the error's name.
fn script(dir: &Path, tag: &str) -> String {
    let d = dir.display();
    format!(
        r#"
import os, socket
def stream(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(addr); return "ok"
    except OSError as e: return type(e).__name__
def dgram(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(b"hi", addr); return "ok"
    except OSError as e: return type(e).__name__
print("allowed", stream("{d}/allowed.sock"))
print("denied", stream("{d}/denied.sock"))
print("abstract-allowed", stream("\0agentguard-test-{tag}-allowed"))
print("abstract-denied", stream("\0agentguard-test-{tag}-denied"))
print("dgram-allowed", dgram("{d}/allowed.dgram"))
print("dgram-denied", dgram("{d}/denied.dgram"))
os.chdir("{d}")
print("relative", stream("allowed.sock"))
os.symlink("{d}/denied.sock", "{d}/link.sock")
print("symlink", stream("{d}/link.sock"))
"#
    )
}

/// The kernel refusals of process `pid`, once there are `count`.
fn refusals(daemon: &Daemon, pid: u32, count: usize) -> Vec<Value> {
    let of_pid = |e: &&Value| e["kind"] == "kernel_refusal" && e["pid"] == pid;
    let events = daemon.wait_for_events("unix refusals", |e| {
        e.iter().filter(of_pid).count() >= count
    });
    events.iter().filter(of_pid).cloned().collect()
}

#[test]
fn only_listed_unix_sockets_are_reachable_and_refusals_are_recorded() {
    require_root();
    let tag = format!("{}", std::process::id());
    let s = servers(&tag);
    let daemon = start(&s, &tag);
    assert_eq!(daemon.status()["unix_sockets_guarded"], true);

    let (pid, out) = python(&daemon, &script(s.dir.path(), &tag));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "allowed ok\n\
         denied PermissionError\n\
         abstract-allowed ok\n\
         abstract-denied PermissionError\n\
         dgram-allowed ok\n\
         dgram-denied PermissionError\n\
         relative PermissionError\n\
         symlink PermissionError\n"
    );

    let d = s.dir.path().display();
    let events = refusals(&daemon, pid, 5);
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["rule"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "kernel:unix-connect-denied".into(),
                format!("{d}/denied.sock")
            ),
            (
                "kernel:unix-connect-denied".into(),
                format!("@agentguard-test-{tag}-denied")
            ),
            (
                "kernel:unix-sendmsg-denied".into(),
                format!("{d}/denied.dgram")
            ),
            ("kernel:unix-connect-denied".into(), "allowed.sock".into()),
            (
                "kernel:unix-connect-denied".into(),
                format!("{d}/link.sock")
            ),
        ]
    );
    for e in &events {
        assert_eq!(e["agent"], AGENT, "{e}");
        assert_eq!(e["decision"], "refuse", "{e}");
        assert_eq!(e["protocol"], "unix", "{e}");
        assert_eq!(e["comm"], "python3", "{e}");
        assert_eq!(e["uid"], 0, "{e}");
    }
    let types: Vec<u64> = events
        .iter()
        .map(|e| {
            let reason = e["reason"].as_str().unwrap();
            let n = reason
                .rsplit("(type ")
                .next()
                .unwrap()
                .trim_end_matches(')');
            n.parse().unwrap()
        })
        .collect();
    assert_eq!(types, vec![1, 1, 2, 1, 1], "SOCK_STREAM, SOCK_DGRAM");

    // Outside the agent's cgroup nothing changes.
    UnixStream::connect(s.dir.path().join("denied.sock")).unwrap();
    let status = daemon.status();
    assert_eq!(status["kernel_events_lost"], 0, "{status}");
}

#[test]
fn an_allowed_socket_in_a_directory_others_can_change_is_refused_at_reload() {
    require_root();
    let tag = format!("r{}", std::process::id());
    let s = servers(&tag);
    let daemon = start(&s, &tag);

    // A sticky, world-writable directory (like /tmp): any user could plant
    // `tool.sock` there as a link to the container engine's socket.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let policy = daemon.policy_path(AGENT);
    let mut original = String::new();
    std::fs::File::open(&policy)
        .unwrap()
        .read_to_string(&mut original)
        .unwrap();
    let listed = format!("{}/allowed.sock\"", s.dir.path().display());
    let changed = original.replacen(
        &listed,
        &format!("{}/tool.sock\"", open_dir.path().display()),
        1,
    );
    assert_ne!(changed, original);
    std::fs::write(&policy, changed).unwrap();
    let status = daemon.wait_for_reload(false);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains(&format!("{AGENT}.toml")), "{error}");
    assert!(error.contains("other than root"), "{error}");

    // The running policy stays: the listed socket is still reachable.
    let d = s.dir.path().display();
    let (_, out) = python(
        &daemon,
        &format!(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{d}/allowed.sock')\nprint('ok')"
        ),
    );
    assert_eq!(text(&out.stdout), "ok\n", "{}", text(&out.stderr));
}
