//! `agentguard revoke`: every open connection of the agent ends at once (a
//! streaming response, an idle keep-alive connection, a passthrough relay,
//! a request held for approval), its next connect fails with EPERM in the
//! kernel, and the revocation holds across a daemon restart until
//! `agentguard restore`.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::common::{
    Daemon, DnsUpstream, TestCa, TlsUpstream, alone, in_cgroup_dir, require_root, text,
};

const AGENT: &str = "revoked-agent";
const API: &str = "api.agentguard.test";
const PASS: &str = "pass.agentguard.test";

/// What the brief of revocation promises: open connections end within a
/// second of the command.
const AT_ONCE: Duration = Duration::from_secs(1);

/// Two GETs on one kept-alive connection, then it waits for the connection
/// to end (prints `closed`) or for 30 s (prints `timeout`).
const KEEP_ALIVE: &str = r#"
import http.client, socket, ssl, sys
c = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), timeout=30)
for _ in range(2):
    c.request("GET", "/")
    c.getresponse().read()
print("ready", flush=True)
try:
    data = c.sock.recv(1)
    print("closed" if data == b"" else "data", flush=True)
except TimeoutError:
    print("timeout", flush=True)
except OSError:
    print("closed", flush=True)
"#;

fn policy() -> String {
    format!(
        r#"
[[tool]]
name = "test.any"
host = "{API}"
methods = ["GET"]
paths = ["/", "/*"]

[[tool]]
name = "test.held"
host = "{API}"
methods = ["POST"]
paths = ["/echo"]
approval = {{ timeout = "60s" }}

[[passthrough]]
host = "{PASS}"
"#
    )
}

/// One TCP connect, as the agent makes it: prints its errno (0: it
/// connected).
const CONNECT: &str = r#"
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close()
    print(0)
except OSError as e:
    print(e.errno)
"#;

/// The errno of a connect from the agent's cgroup to the upstream's
/// address (redirected to the proxy while the agent is not revoked).
fn connect_errno(daemon: &Daemon, upstream: &TlsUpstream) -> String {
    connect_errno_from(&daemon.cgroup_path(AGENT), upstream)
}

fn connect_errno_from(cgroup: &Path, upstream: &TlsUpstream) -> String {
    let port = upstream.addr.port().to_string();
    let out = in_cgroup_dir(cgroup, &["python3", "-c", CONNECT, "127.0.0.3", &port])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

/// Lines a child prints, as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !line.is_empty() && tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, want: &str) {
    let line = rx.recv_timeout(Duration::from_secs(15)).expect(want);
    assert_eq!(line, want);
}

/// How long after `since` the child exited (bounded: 10 s).
fn exited_after(child: &mut Child, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            return since.elapsed();
        }
        assert!(Instant::now() < deadline, "still running 10 s after revoke");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// curl GETs `/` once: whether it got the upstream's answer.
fn get_once(daemon: &Daemon, upstream: &TlsUpstream) -> bool {
    let out = daemon
        .exec_resolving(
            AGENT,
            &[API],
            "127.0.0.3",
            &["curl", "-sS", "-m", "10", &upstream.url("/")],
        )
        .output()
        .unwrap();
    out.status.success() && text(&out.stdout) == "hello over tls"
}

#[test]
fn revoking_ends_every_open_connection_at_once_and_holds_across_a_restart() {
    require_root();
    // It bounds how long the connections take to end.
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let api = TlsUpstream::start("127.0.0.3", API, &ca);
    let pass = TlsUpstream::start("127.0.0.4", PASS, &ca);
    let dns = DnsUpstream::start(
        "127.0.0.1",
        &[(PASS, std::net::Ipv4Addr::new(127, 0, 0, 4))],
    );
    let dns_addr = dns.addr.to_string();
    let mut daemon = Daemon::builder(&[AGENT])
        .policy(&policy())
        .upstream_ca(&ca.pem_path)
        .args(&["--dns-upstream", &dns_addr])
        .start();
    assert!(get_once(&daemon, &api));
    assert_eq!(connect_errno(&daemon, &api), "0");

    // A long-lived streaming response, intercepted.
    let mut stream = daemon
        .exec_resolving(
            AGENT,
            &[API],
            "127.0.0.3",
            &["curl", "-sSN", "-m", "60", &api.url("/sse")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stream_lines = lines(&mut stream);
    api.release_sse_event();
    expect_line(&stream_lines, "data: event-0");

    // A kept-alive connection, idle between requests.
    let port = api.addr.port().to_string();
    let mut idle = daemon
        .exec_resolving(
            AGENT,
            &[API],
            "127.0.0.3",
            &["python3", "-c", KEEP_ALIVE, API, &port],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let idle_lines = lines(&mut idle);
    expect_line(&idle_lines, "ready");

    // A passthrough relay, streaming too: its TLS is the upstream's own.
    let test_ca = ca.pem_path.display().to_string();
    let mut relayed = daemon
        .exec_with_nameserver(
            AGENT,
            &["--allow-root"],
            "127.0.0.99",
            &[
                "curl",
                "-4",
                "-sSN",
                "-m",
                "60",
                "--cacert",
                &test_ca,
                &pass.url("/sse"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let relayed_lines = lines(&mut relayed);
    pass.release_sse_event();
    expect_line(&relayed_lines, "data: event-0");

    // A request held for approval.
    let mut held = daemon
        .exec_resolving(
            AGENT,
            &[API],
            "127.0.0.3",
            &[
                "curl",
                "-sS",
                "-m",
                "60",
                "--data-binary",
                "x",
                &api.url("/echo"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while daemon.cli(&["approvals"]).stdout.is_empty() {
        assert!(Instant::now() < deadline, "the POST was never held");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = daemon.cli(&["revoke", "--agent", AGENT, "--reason", "its key leaked"]);
    let revoked_at = Instant::now();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("1 held request(s) denied"), "{said}");

    let ends = [
        ("streaming response", exited_after(&mut stream, revoked_at)),
        ("keep-alive connection", {
            let line = idle_lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_default();
            assert_eq!(line, "closed");
            revoked_at.elapsed()
        }),
        ("passthrough relay", exited_after(&mut relayed, revoked_at)),
        ("held request", exited_after(&mut held, revoked_at)),
    ];
    eprintln!("ended after revoke: {ends:?}");
    for (what, after) in ends {
        assert!(after <= AT_ONCE, "{what} ended {after:?} after revoke");
    }
    // The streams were cut, not finished: the upstreams had more to send.
    assert!(!stream.wait().unwrap().success());
    assert!(!relayed.wait().unwrap().success());
    assert!(api.seen().iter().all(|r| r.path != "/echo"));
    let _ = idle.wait();

    // The next connection fails, at connect, in the kernel (EPERM), and
    // the upstream never hears of it.
    let before = api.seen().len();
    assert_eq!(connect_errno(&daemon, &api), "1");
    assert!(!get_once(&daemon, &api));
    assert_eq!(api.seen().len(), before);

    let status = daemon.status();
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == AGENT)
        .unwrap();
    assert_eq!(agent["revoked"]["reason"], "its key leaked");

    let events = daemon.wait_for_events("revocation and the refused connect", |e| {
        e.iter().any(|e| e["kind"] == "revocation")
            && e.iter()
                .any(|e| e["kind"] == "kernel_refusal" && e["rule"] == "kernel:agent-revoked")
    });
    let refused = events
        .iter()
        .find(|e| e["rule"] == "kernel:agent-revoked")
        .unwrap();
    assert_eq!(refused["agent"], AGENT);
    assert_eq!(refused["decision"], "refuse");
    let revocation = events.iter().find(|e| e["kind"] == "revocation").unwrap();
    assert_eq!(revocation["decision"], "deny");
    assert_eq!(revocation["reason"], "its key leaked");
    assert!(
        revocation["actor"]
            .as_str()
            .unwrap()
            .contains("(admin socket, uid 0)")
    );
    let approval = events.iter().find(|e| e["kind"] == "approval").unwrap();
    assert_eq!(approval["rule"], "approval:revoked");

    // After a restart (a crash, even), still revoked.
    daemon.kill9();
    assert_eq!(
        connect_errno(&daemon, &api),
        "1",
        "while the daemon is down"
    );
    daemon.restart();
    assert_eq!(connect_errno(&daemon, &api), "1");
    assert!(!get_once(&daemon, &api));
    assert_eq!(api.seen().len(), before);
    let restarted = daemon.status();
    assert!(restarted["agents"][0]["revoked"].is_object(), "{restarted}");

    let out = daemon.cli(&["restore", "--agent", AGENT]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(connect_errno(&daemon, &api), "0");
    assert!(get_once(&daemon, &api));
    let events = daemon.wait_for_events("restore", |e| {
        e.iter()
            .any(|e| e["kind"] == "revocation" && e["decision"] == "allow")
    });
    assert!(events.iter().any(|e| e["rule"] == "restore"));
}

#[test]
fn unknown_agents_cannot_be_revoked_and_unrevoked_ones_not_restored() {
    require_root();
    let daemon = Daemon::start(&["present"]);
    let out = daemon.cli(&["revoke", "--agent", "absent"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no agent named \"absent\""));
    let out = daemon.cli(&["restore", "--agent", "present"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not revoked"));
    assert!(!daemon.state_dir().join("revoked.json").exists());
}

/// Removes cgroups a test made beside its daemon's (declared before the
/// daemon, so dropped after it).
struct RemoveCgroups(Vec<PathBuf>);

impl Drop for RemoveCgroups {
    fn drop(&mut self) {
        for dir in &self.0 {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[test]
fn a_reload_that_moves_a_revoked_agent_moves_its_kernel_flag() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let api = TlsUpstream::start("127.0.0.3", API, &ca);
    let mut cleanup = RemoveCgroups(Vec::new());
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy())
        .upstream_ca(&ca.pem_path)
        .start();
    let old = daemon.cgroup_path(AGENT);
    let moved = old.with_file_name("moved");
    cleanup.0 = vec![moved.clone(), old.parent().unwrap().to_owned()];

    let out = daemon.cli(&["revoke", "--agent", AGENT]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(connect_errno_from(&old, &api), "1");

    // The agent's policy now names another cgroup.
    let file = daemon.policy_path(AGENT);
    let policy = std::fs::read_to_string(&file).unwrap();
    let tag = old.parent().unwrap().file_name().unwrap().to_str().unwrap();
    let from = format!("cgroup = \"{tag}/{AGENT}\"");
    assert!(policy.contains(&from), "{policy}");
    std::fs::write(
        &file,
        policy.replace(&from, &format!("cgroup = \"{tag}/moved\"")),
    )
    .unwrap();
    let status = daemon.wait_for_reload(true);
    assert!(status["agents"][0]["revoked"].is_object(), "{status}");

    // Its new cgroup is refused in the kernel; the old one, no agent's
    // now, lost its mark (the proxy refuses a cgroup no agent has).
    assert_eq!(connect_errno_from(&moved, &api), "1");
    assert_eq!(connect_errno_from(&old, &api), "0");

    let out = daemon.cli(&["restore", "--agent", AGENT]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(connect_errno_from(&moved, &api), "0");
    drop(daemon);
}
