//! Shares of the kernel's shared tables: one agent's flood cannot take the
//! room another agent's pending connection records need, nor crowd its
//! refusals out of the event ring. Past its own share a flooding agent's
//! connects fail with EPERM and its events are dropped and counted as its
//! own losses; the other agent is untouched.
//!
//! The daemon is stopped (SIGSTOP) while the agents act, so nothing is
//! taken from the tables meanwhile: what fits is decided by the shares
//! alone, not by how fast the daemon happens to be.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{ALLOW_LOOPBACK_TEST_HOSTS, Daemon, Upstream, require_root, text};

const FLOODER: &str = "share-flood";
const STEADY: &str = "share-steady";

/// Stops the daemon (SIGSTOP) until the returned guard is dropped
/// (SIGCONT), also when the test fails meanwhile.
struct Stopped(String);

fn stop(daemon: &Daemon) -> Stopped {
    let pid = daemon.status()["pid"].to_string();
    let out = Command::new("kill").args(["-STOP", &pid]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    Stopped(pid)
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).output();
    }
}

fn agent<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap()
}

/// `count` TCP connects to `port` on 127.0.0.2, one after the other; prints
/// each errno (0: connected; the socket is kept open).
const CONNECTS: &str = r#"
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
held, out = [], []
for _ in range(count):
    try:
        held.append(socket.create_connection(("127.0.0.2", port), timeout=5))
        out.append(0)
    except OSError as e:
        out.append(e.errno)
print(*out)
"#;

#[test]
fn a_flooding_agent_gets_eperm_past_its_share_of_waiting_connections() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let port = upstream.addr.port().to_string();
    let daemon = Daemon::builder(&[FLOODER, STEADY])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&["--kernel-agent-records", "4"])
        .start();
    // The proxy takes no record while stopped: every connection waits.
    let stopped = stop(&daemon);
    let flood = daemon
        .in_cgroup(FLOODER, &["python3", "-c", CONNECTS, &port, "10"])
        .output()
        .unwrap();
    let steady = daemon
        .in_cgroup(STEADY, &["curl", "-sS", "-m", "20", &upstream.url()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(stopped);
    assert_eq!(text(&flood.stdout).trim(), "0 0 0 0 1 1 1 1 1 1");
    // The steady agent's connection waited with the flooder's and was
    // served, attributed to it.
    let steady = steady.wait_with_output().unwrap();
    assert!(steady.status.success(), "{}", text(&steady.stderr));
    let connections = daemon.connections();
    assert!(
        connections
            .iter()
            .any(|c| c["identity"]["agent"] == STEADY
                && c["original_dst"] == upstream.addr.to_string()),
        "{connections:#?}"
    );
    let status = daemon.status();
    assert_eq!(agent(&status, FLOODER)["kernel"]["records_refused"], 6);
    assert_eq!(agent(&status, STEADY)["kernel"]["records_refused"], 0);
    let refused = daemon.wait_for_events("the flooder's refusals", |e| {
        e.iter()
            .filter(|e| e["rule"] == "kernel:connection-share-exceeded")
            .count()
            >= 6
    });
    assert!(
        refused
            .iter()
            .filter(|e| e["rule"] == "kernel:connection-share-exceeded")
            .all(|e| e["agent"] == FLOODER)
    );
}

/// `count` UDP datagrams to 127.0.0.1:9, each refused in the kernel.
const DATAGRAMS: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
refused = 0
for _ in range(int(sys.argv[1])):
    try:
        s.sendto(b"x", ("127.0.0.1", 9))
    except PermissionError:
        refused += 1
print(refused)
"#;

#[test]
fn a_flooding_agent_cannot_crowd_another_agents_refusals_out_of_the_record() {
    require_root();
    // The default share (64 KiB of the 1 MiB ring).
    let daemon = Daemon::start(&[FLOODER, STEADY]);
    let stopped = stop(&daemon);
    // More refusals than the whole ring holds (13,107 of 80 bytes).
    let flood = daemon
        .in_cgroup(FLOODER, &["python3", "-c", DATAGRAMS, "20000"])
        .output()
        .unwrap();
    assert_eq!(text(&flood.stdout).trim(), "20000");
    let (steady_pid, steady) =
        crate::common::run_with_pid(daemon.in_cgroup(STEADY, &["python3", "-c", DATAGRAMS, "20"]));
    assert_eq!(text(&steady.stdout).trim(), "20");
    drop(stopped);

    // Every one of the steady agent's refusals is in the record...
    let recorded = daemon.wait_for_refusals(steady_pid, 20);
    assert_eq!(recorded.len(), 20);
    assert!(recorded.iter().all(|e| e["rule"] == "kernel:udp-denied"));
    // ...and the flooder's losses are its own, counted.
    let status = daemon.status();
    let lost = agent(&status, FLOODER)["kernel"]["events_lost"]
        .as_u64()
        .unwrap();
    assert!(lost > 15_000, "flooder lost {lost}");
    assert_eq!(agent(&status, STEADY)["kernel"]["events_lost"], 0);
    assert!(status["kernel_events_lost"].as_u64().unwrap() >= lost);
}
