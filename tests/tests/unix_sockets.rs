//! Unix sockets: an agent reaches only the ones its policy lists. The
//! servers here run in the test process, outside every agent cgroup, like
//! the container engine or the session bus an agent must not reach.

use std::{
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            fs::PermissionsExt as _,
            net::{SocketAddr, UnixDatagram, UnixListener, UnixStream},
        },
    },
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{Daemon, in_cgroup_dir, require_root, run_with_pid, text};

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

/// Root check, servers and a daemon, with abstract names unique to this
/// test process and `prefix`.
fn setup(prefix: &str) -> (String, Servers, Daemon) {
    require_root();
    let tag = format!("{prefix}{}", std::process::id());
    let s = servers(&tag);
    let daemon = start(&s, &tag);
    (tag, s, daemon)
}

fn start(servers: &Servers, tag: &str) -> Daemon {
    let d = servers.dir.path().display();
    let extra = format!(
        "unix_sockets = [\"{d}/allowed.sock\", \"{d}/allowed.dgram\", \"@agentguard-test-{tag}-allowed\"]\n"
    );
    Daemon::builder(&[AGENT]).policy(&extra).start()
}

fn python(daemon: &Daemon, script: &str) -> (u32, Output) {
    run_with_pid(daemon.exec(AGENT, &["python3", "-c", script]))
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
# Raw addresses, as a C client may pass them: the kernel reads a path up
# to its first NUL within the length, and all 108 bytes without one.
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def raw(path):
    s = socket.socket(socket.AF_UNIX)
    addr = (1).to_bytes(2, "little") + path
    if libc.connect(s.fileno(), addr, len(addr)) == 0: return "ok"
    return errno.errorcode[ctypes.get_errno()]
listed = b"{d}/allowed.sock"
print("nul-then-junk", raw((listed + b"\0" + b"J" * 108)[:108]))
print("full-length", raw((listed + b"X" * 108)[:108]))
"#
    )
}

#[test]
fn only_listed_unix_sockets_are_reachable_and_refusals_are_recorded() {
    let (tag, s, daemon) = setup("");
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
         symlink PermissionError\n\
         nul-then-junk ok\n\
         full-length EPERM\n"
    );

    let d = s.dir.path().display();
    let events = daemon.wait_for_refusals(pid, 6);
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
            ("kernel:unix-connect-denied".into(), {
                let listed = format!("{d}/allowed.sock");
                let pad = "X".repeat(108 - listed.len());
                format!("{listed}{pad}")
            }),
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
    assert_eq!(types, vec![1, 1, 2, 1, 1, 1], "SOCK_STREAM, SOCK_DGRAM");

    // A process in a cgroup below the agent's is refused even a listed
    // socket (the list is keyed by the exact cgroup), and the event says so.
    let sub = daemon.cgroup_path(AGENT).join("sub");
    std::fs::create_dir(&sub).unwrap();
    let script = connect_script(&s.dir.path().join("allowed.sock"));
    let (sub_pid, out) = run_with_pid(in_cgroup_dir(&sub, &["python3", "-c", &script]));
    assert_eq!(
        text(&out.stdout),
        "PermissionError\n",
        "{}",
        text(&out.stderr)
    );
    // The daemon names the agent from the cgroup when it reads the event:
    // the sub-cgroup goes only after that (on a busy machine the event may
    // be read after the process has exited).
    let below = &daemon.wait_for_refusals(sub_pid, 1)[0];
    std::fs::remove_dir(&sub).unwrap();
    assert!(
        below["reason"]
            .as_str()
            .is_some_and(|r| r.contains("below the agent's")),
        "{below}"
    );
    assert_eq!(below["agent"], AGENT, "{below}");
    assert_eq!(below["path"], format!("{d}/allowed.sock"), "{below}");

    // Outside the agent's cgroup nothing changes.
    UnixStream::connect(s.dir.path().join("denied.sock")).unwrap();
    let status = daemon.status();
    assert_eq!(status["kernel_events_lost"], 0, "{status}");
}

/// Python that connects to `path` and prints `ok` or the error's name.
fn connect_script(path: &Path) -> String {
    format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\n\
         try:\n    s.connect({:?}); print('ok')\n\
         except OSError as e: print(type(e).__name__)",
        path.display().to_string()
    )
}

/// What the agent gets connecting to `path`: `ok` or the error's name.
fn reach(daemon: &Daemon, path: &Path) -> String {
    let (_, out) = python(daemon, &connect_script(path));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// When the daemon last loaded its policy (RFC 3339).
fn last_reload_time(daemon: &Daemon) -> String {
    daemon.status()["last_reload"]["time"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Polls `status` (bounded: 15 s) until a reload after `since` (an RFC 3339
/// time, which sorts as text) has the given outcome.
fn reload_after(daemon: &Daemon, since: &str, accepted: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = daemon.status();
        let last = &status["last_reload"];
        if last["time"].as_str().unwrap() > since && last["accepted"] == accepted {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "no reload with accepted={accepted}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reloads_add_and_revoke_sockets_and_unsafe_directories_lose_theirs() {
    let (_, s, daemon) = setup("r");
    let (allowed, denied) = (
        s.dir.path().join("allowed.sock"),
        s.dir.path().join("denied.sock"),
    );
    assert_eq!(
        (reach(&daemon, &allowed), reach(&daemon, &denied)),
        ("ok".into(), "PermissionError".into())
    );

    // An accepted reload swaps one socket for the other in the kernel.
    let policy = daemon.policy_path(AGENT);
    let original = std::fs::read_to_string(&policy).unwrap();
    let listed = format!("{}\"", allowed.display());
    let swapped = original.replacen(&listed, &format!("{}\"", denied.display()), 1);
    assert_ne!(swapped, original);
    let since = last_reload_time(&daemon);
    std::fs::write(&policy, &swapped).unwrap();
    reload_after(&daemon, &since, true);
    assert_eq!(
        (reach(&daemon, &allowed), reach(&daemon, &denied)),
        ("PermissionError".into(), "ok".into())
    );

    // A socket in a sticky, world-writable directory (like /tmp), where
    // any user could plant the name as a link to another socket: refused,
    // naming the file; the running policy stays.
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let unsafe_policy = swapped.replacen(
        &format!("{}\"", denied.display()),
        &format!("{}/tool.sock\"", open_dir.path().display()),
        1,
    );
    let since = last_reload_time(&daemon);
    std::fs::write(&policy, &unsafe_policy).unwrap();
    let status = reload_after(&daemon, &since, false);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains(&format!("{AGENT}.toml")), "{error}");
    assert!(error.contains("other than root"), "{error}");
    assert_eq!(reach(&daemon, &denied), "ok");

    // The policy in force lists denied.sock; once its directory becomes
    // writable by others, the next load (here SIGHUP) fails and revokes it.
    let since = last_reload_time(&daemon);
    std::fs::write(&policy, &swapped).unwrap();
    reload_after(&daemon, &since, true);
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let since = last_reload_time(&daemon);
    let pid = daemon.status()["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let status = reload_after(&daemon, &since, false);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("may no longer reach it"), "{error}");
    assert_eq!(reach(&daemon, &denied), "PermissionError");
    // Mended, the next load gives it back.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let since = last_reload_time(&daemon);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    reload_after(&daemon, &since, true);
    assert_eq!(reach(&daemon, &denied), "ok");
}

/// The way around a path allow-list: a user namespace of one's own, where
/// the agent may bind-mount any socket it can open over an allowed path.
/// `exec` refuses it with seccomp; `--allow-namespaces` shows that the
/// attempt would otherwise succeed here.
#[test]
fn agents_cannot_make_namespaces_to_remount_an_allowed_path() {
    let (_, _servers, daemon) = setup("n");
    let script = "import ctypes, subprocess\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000\n\
        r = subprocess.run(['unshare', '-Urm', 'true'], capture_output=True)\n\
        print('unshare-cmd', r.returncode == 0)\n\
        print('unshare-user', libc.unshare(CLONE_NEWUSER) == 0, ctypes.get_errno())\n\
        print('spawn', subprocess.run(['true']).returncode == 0)\n";
    let run = |flags: &[&str]| {
        let mut all = vec!["--user", "65534:65534"];
        all.extend_from_slice(flags);
        let out = daemon
            .exec_with(AGENT, &all, &["python3", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    // EPERM is 1. Children still start (clone3 falls back to clone).
    assert_eq!(
        run(&[]),
        "unshare-cmd False\nunshare-user False 1\nspawn True\n"
    );
    assert_eq!(
        run(&["--allow-namespaces"]),
        "unshare-cmd True\nunshare-user True 0\nspawn True\n"
    );
}

#[test]
fn a_kernel_without_the_unix_hooks_runs_only_when_told_and_says_so() {
    require_root();
    let hooks = "cgroup/connect_unix,cgroup/sendmsg_unix";
    let daemon = Daemon::builder(&[AGENT])
        .args(&["--allow-unguarded-unix-sockets"])
        .env("AGENTGUARD_TEST_UNSUPPORTED_HOOKS", hooks)
        .start();
    // Said at start (the log), in the record and in status.
    assert!(
        daemon
            .log()
            .contains("agents' Unix sockets are not guarded"),
        "{}",
        daemon.log()
    );
    let start = daemon.wait_for_events("the start event", |e| {
        e.iter().any(|e| e["kind"] == "daemon_start")
    });
    let start = start.iter().find(|e| e["kind"] == "daemon_start").unwrap();
    assert!(
        start["reason"]
            .as_str()
            .unwrap()
            .contains("UNIX SOCKETS NOT GUARDED"),
        "{start}"
    );
    assert_eq!(daemon.status()["unix_sockets_guarded"], false);
    // The other socket hooks are all there: only the two Unix ones are
    // missing. (The process-access hook depends on the BPF LSM instead.)
    let links: Vec<String> = daemon
        .pinned_links()
        .into_iter()
        .filter(|l| !l.contains("agentguard_ptrace"))
        .collect();
    assert_eq!(links.len(), 14, "{links:?}");
    assert!(!links.iter().any(|l| l.contains("unix")), "{links:?}");

    // And it is true: an unlisted socket is reachable.
    let s = servers(&format!("unguarded{}", std::process::id()));
    assert_eq!(reach(&daemon, &s.dir.path().join("denied.sock")), "ok");
}
