//! Passthrough with the agent's sends in the kernel (issue 19), an opt-in
//! (`AGENTGUARD_PASSTHROUGH_RELAY=kernel`, i.e. `--passthrough-relay
//! kernel`): once a connection is decided passthrough and its first flight
//! (the ClientHello) has been copied upstream, the agent's sends go
//! straight into the upstream socket (an sk_msg program); the upstream's
//! answers are copied by the proxy. What must still hold: TLS end to end
//! (the agent sees the upstream's own certificate), every byte both ways in
//! order (whether or not the direct way opened), half-closes passed on,
//! revocation and a daemon stop cutting the connection with the direct way
//! open, and the audit event saying which path it took. Without the
//! opt-in the proxy copies both ways (the default), and says so.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{
    ALLOW_LOOPBACK_TEST_HOSTS, BODY, Daemon, DnsUpstream, TestCa, TlsUpstream, Upstream, free_port,
    http_get, text,
};

pub(super) const AGENT: &str = "splice-agent";
pub(super) const PASS: &str = "pass.agentguard.test";
pub(super) const PASS_IP: &str = "127.0.0.4";

/// Bytes each way in the large transfers.
pub(super) const LARGE: usize = 50 * 1024 * 1024;

/// The upstream of the raw transfers: reads the agent's ClientHello record,
/// sends `n` pseudo-random bytes while it reads everything the agent sends
/// until the agent half-closes, then sends the SHA-256 of what it read and
/// closes. Prints its port, then `hello`, then the bytes it read.
pub(super) const SERVER: &str = r#"
import hashlib, random, socket, sys, threading
n = int(sys.argv[2])
l = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
l.bind((sys.argv[1], 0))
l.listen(1)
print(l.getsockname()[1], flush=True)
c, _ = l.accept()
c.settimeout(120)
def exact(k):
    b = b""
    while len(b) < k:
        r = c.recv(k - len(b))
        assert r, "closed inside the hello"
        b += r
    return b
head = exact(5)
assert head[0] == 0x16, head
exact(int.from_bytes(head[3:5], "big"))
print("hello", flush=True)
down = random.Random(2).randbytes(n)
t = threading.Thread(target=c.sendall, args=(down,))
t.start()
h, total = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    total += len(b)
t.join()
print(total, flush=True)
try:
    c.sendall(h.hexdigest().encode())
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
except OSError:
    pass  # the cut tests: the proxy closed its end
c.close()
"#;

/// What the agent scripts below start with: `client_hello(host)`, a real
/// TLS ClientHello for `host`, made by Python's ssl (the proxy decides
/// passthrough on it). A macro, so that `concat!` can put it before each.
macro_rules! client_hello {
    () => {
        r#"
import ssl
def client_hello(host):
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(bio_in, bio_out, server_hostname=host)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return bio_out.read()
"#
    };
}

/// [`client_hello!`] for scripts put together at run time.
pub(super) const CLIENT_HELLO: &str = client_hello!();

/// The agent of the raw transfers: sends a real ClientHello for the
/// passthrough name (made by Python's ssl), then `n` pseudo-random bytes
/// while it reads, half-closes, and reads until the upstream closes. With
/// a pause (seconds, argv[4]) it sends its bytes only that long after the
/// upstream's first ones arrived, as a TLS client waits for the server.
/// Prints how many bytes came down, whether they are the upstream's, and
/// whether the upstream's digest is that of what it sent.
pub(super) const CLIENT: &str = concat!(
    client_hello!(),
    r#"
import hashlib, random, socket, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4])
first = threading.Event()
hello = client_hello(host)
s = socket.create_connection((host, port), timeout=120)
up = random.Random(1).randbytes(n)
def send():
    s.sendall(hello)
    if pause:
        first.wait(60)
        time.sleep(pause)
    s.sendall(up)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got = bytearray()
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    got += b
    first.set()
t.join()
down = random.Random(2).randbytes(n)
print(len(got) - 64, bytes(got[:n]) == down, got[n:].decode() == hashlib.sha256(up).hexdigest())
"#
);

/// The agent of the cut tests: sends its ClientHello, prints `sent`, then
/// reads until the connection ends and prints how (`eof` or the error).
/// With a count (argv[3]) it first waits for a line on stdin, then sends
/// that many bytes `x` and prints `more sent`.
pub(super) const WAITER: &str = concat!(
    client_hello!(),
    r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=60)
s.sendall(client_hello(host))
print("sent", flush=True)
if len(sys.argv) > 3:
    sys.stdin.readline()
    s.sendall(b"x" * int(sys.argv[3]))
    print("more sent", flush=True)
try:
    while True:
        b = s.recv(65536)
        if not b:
            print("eof", flush=True)
            break
except OSError as e:
    print(type(e).__name__, flush=True)
"#
);

/// An agent that keeps its connection busy one way only: sends its
/// ClientHello, then `count` bytes `x`, `gap` seconds apart, half-closes,
/// and reads until the upstream closes. Prints whether what came down is
/// the digest of what it sent ([`SERVER`] with `n` 0 sends nothing else).
const TRICKLE: &str = concat!(
    client_hello!(),
    r#"
import hashlib, socket, sys, time
host, port, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), timeout=60)
s.sendall(client_hello(host))
for _ in range(count):
    time.sleep(gap)
    s.sendall(b"x")
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
print(got.decode() == hashlib.sha256(b"x" * count).hexdigest())
"#
);

/// The opt-in to the kernel splice, as an operator would set it.
const KERNEL: Option<(&str, &str)> = Some(("AGENTGUARD_PASSTHROUGH_RELAY", "kernel"));

/// A daemon guarding `AGENT` with `PASS` as a passthrough host, its
/// resolver forwarding to a stand-in that says `PASS` is `PASS_IP`; `env`
/// set for `agentguard run` (`None`: the default relay).
fn daemon(dns: &DnsUpstream, env: Option<(&str, &str)>) -> Daemon {
    daemon_with(dns, env, &[])
}

pub(super) fn daemon_with(dns: &DnsUpstream, env: Option<(&str, &str)>, args: &[&str]) -> Daemon {
    let dns_addr = dns.addr.to_string();
    let mut b = Daemon::builder(&[AGENT])
        .policy(&format!("[[passthrough]]\nhost = \"{PASS}\"\n"))
        .args(&["--dns-upstream", &dns_addr])
        .args(args);
    if let Some((k, v)) = env {
        b = b.env(k, v);
    }
    b.start()
}

/// A daemon opted in to the splice, serving its metrics; returns it and
/// the metrics port.
fn daemon_with_metrics(dns: &DnsUpstream) -> (Daemon, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    (
        daemon_with(dns, KERNEL, &["--metrics-listen", &listen]),
        port,
    )
}

/// `agentguard_passthrough_direct_total` from the daemon's metrics, once
/// it reaches `want` (or whatever it is after 10 s).
fn direct_connections(port: u16, want: u64) -> u64 {
    metric(port, "agentguard_passthrough_direct_total", want)
}

/// Metric `name` (a plain counter) from the daemon's metrics, once it
/// reaches `want` (or whatever it is after 10 s).
pub(super) fn metric(port: u16, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = http_get(port, "/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        if n >= want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn dns() -> DnsUpstream {
    DnsUpstream::start("127.0.0.1", &[(PASS, PASS_IP.parse().unwrap())])
}

/// The agent command `script args...`, resolving through the daemon.
pub(super) fn agent(daemon: &Daemon, script: &str, args: &[&str]) -> Command {
    let mut cmd = vec!["python3", "-c", script];
    cmd.extend_from_slice(args);
    daemon.exec_with_nameserver(AGENT, &["--allow-root"], "127.0.0.99", &cmd)
}

/// Starts the raw upstream (outside every guarded cgroup); returns it, its
/// stdout's lines and its port.
pub(super) fn server(n: usize) -> (Child, mpsc::Receiver<String>, String) {
    server_on(PASS_IP, n)
}

/// [`server`] on `ip`.
pub(super) fn server_on(ip: &str, n: usize) -> (Child, mpsc::Receiver<String>, String) {
    let mut child = Command::new("python3")
        .args(["-c", SERVER, ip, &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = lines(child.stdout.take().unwrap());
    let port = next_line(&lines, "the server's port");
    (child, lines, port)
}

pub(super) fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub(super) fn next_line(lines: &mpsc::Receiver<String>, what: &str) -> String {
    lines
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no line for {what}: {e}"))
}

/// The passthrough connection events.
pub(super) fn passthrough_events(daemon: &Daemon, count: usize) -> Vec<Value> {
    daemon.wait_for_events("passthrough connection events", |events| {
        events
            .iter()
            .filter(|e| e["kind"] == "connection" && e["decision"] == "passthrough")
            .count()
            >= count
    });
    daemon
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "connection" && e["decision"] == "passthrough")
        .collect()
}

/// 50 MiB each way through a passthrough connection, with a half-close
/// each way; returns the daemon (for its events).
fn large_transfer(env: Option<(&str, &str)>) -> Daemon {
    let dns = dns();
    let daemon = daemon(&dns, env);
    transfer(&daemon, "0");
    daemon
}

/// [`CLIENT`] and [`SERVER`] through `daemon`, the client pausing `pause`
/// seconds before its upload; checks every byte both ways.
pub(super) fn transfer(daemon: &Daemon, pause: &str) {
    let (mut server, server_lines, port) = server(LARGE);
    let out = agent(daemon, CLIENT, &[PASS, &port, &LARGE.to_string(), pause])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent failed:\n{}{}\n--- daemon ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        daemon.log()
    );
    // All of the upstream's bytes, unchanged, and after the agent's
    // half-close the upstream's digest of everything the agent sent.
    assert_eq!(text(&out.stdout).trim(), format!("{LARGE} True True"));
    assert_eq!(next_line(&server_lines, "hello"), "hello");
    assert_eq!(next_line(&server_lines, "bytes read"), LARGE.to_string());
    assert!(server.wait().unwrap().success());
}

#[test]
fn spliced_passthrough_keeps_the_upstreams_tls() {
    let dns = dns();
    let daemon = daemon(&dns, KERNEL);
    let events = curl_keeps_the_upstreams_tls(&daemon);
    assert_eq!(events[0]["relay"], "kernel", "{events:?}");
}

/// curl as the agent, trusting only the upstream's CA, through a
/// passthrough connection: it verifies the upstream's own leaf (nothing in
/// between terminated TLS). Returns the one passthrough event.
pub(super) fn curl_keeps_the_upstreams_tls(daemon: &Daemon) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let upstream = TlsUpstream::start(PASS_IP, PASS, &ca);
    let ca_pem = ca.pem_path.display().to_string();
    let out = daemon
        .exec_with_nameserver(
            AGENT,
            &["--allow-root"],
            "127.0.0.99",
            &[
                "curl",
                "-4",
                "-sS",
                "-v",
                "-m",
                "10",
                "--cacert",
                &ca_pem,
                &upstream.url("/"),
            ],
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}\n--- daemon ---\n{}",
        text(&out.stderr),
        daemon.log()
    );
    assert_eq!(text(&out.stdout), "hello over tls");
    assert!(text(&out.stderr).contains("CN=agentguard test upstream CA"));
    assert_eq!(upstream.handshakes(), 1);
    let events = passthrough_events(daemon, 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["sni"], PASS);
    events
}

#[test]
fn spliced_passthrough_carries_large_transfers_and_half_closes() {
    let daemon = large_transfer(KERNEL);
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["relay"], "kernel", "{events:?}");
}

/// Once everything the agent sent (its ClientHello) has reached the
/// upstream socket, the agent's own sends go straight into it in the
/// kernel, skipping the proxy's socket; every byte still arrives in order,
/// both ways, and the half-closes still pass.
#[test]
fn the_agents_sends_go_straight_upstream_once_all_before_them_arrived() {
    let dns = dns();
    let (daemon, metrics) = daemon_with_metrics(&dns);
    transfer(&daemon, "0.3");
    assert_eq!(direct_connections(metrics, 1), 1);
    // All of the upload but the hello (a few hundred bytes the proxy's
    // socket received and the proxy copied on) came the direct way.
    let direct = metric(
        metrics,
        "agentguard_passthrough_direct_bytes_total",
        LARGE as u64,
    );
    assert!(
        (LARGE as u64..LARGE as u64 + 4096).contains(&direct),
        "{direct} bytes the direct way"
    );
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events[0]["relay"], "kernel", "{events:?}");
}

/// With the kernel relay on, every agent socket starts in its sockhash;
/// one the proxy intercepts is served as always, never sent the direct
/// way.
#[test]
fn the_kernel_relay_leaves_intercepted_connections_alone() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = Daemon::builder(&[AGENT])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&["--metrics-listen", &listen])
        .env(KERNEL.unwrap().0, KERNEL.unwrap().1)
        .start();
    let plain = Upstream::start("127.0.0.2");
    for _ in 0..2 {
        let out = daemon
            .exec(AGENT, &["curl", "-sS", "-m", "10", &plain.url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl: {}\n--- daemon ---\n{}",
            text(&out.stderr),
            daemon.log()
        );
        assert_eq!(text(&out.stdout), BODY);
    }
    assert_eq!(plain.hits(), 2);
    assert_eq!(direct_connections(port, 0), 0);
}

#[test]
fn the_user_space_relay_is_the_default() {
    let daemon = large_transfer(None);
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["relay"], "userspace", "{events:?}");
}

/// Starts a spliced connection that stays open (the upstream says nothing
/// after the hello); returns the agent and the server, each with its lines.
pub(super) type Running = (Child, mpsc::Receiver<String>);
pub(super) fn open_connection(daemon: &Daemon) -> (Running, Running) {
    open_connection_then(daemon, &[])
}

/// [`open_connection`] with more arguments for [`WAITER`].
pub(super) fn open_connection_then(daemon: &Daemon, more: &[&str]) -> (Running, Running) {
    open_connection_on(daemon, PASS_IP, more)
}

/// [`open_connection_then`] to an upstream on `ip` (what the resolver
/// answers `PASS` with).
pub(super) fn open_connection_on(daemon: &Daemon, ip: &str, more: &[&str]) -> (Running, Running) {
    let (server, server_lines, port) = server_on(ip, 0);
    let mut args = vec![PASS, &port];
    args.extend(more);
    let mut waiter = agent(daemon, WAITER, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waiter_lines = lines(waiter.stdout.take().unwrap());
    assert_eq!(next_line(&waiter_lines, "hello sent"), "sent");
    // The hello crossed the splice: the connection is up.
    assert_eq!(next_line(&server_lines, "hello"), "hello");
    ((waiter, waiter_lines), (server, server_lines))
}

/// Waits (bounded) for the agent to see its connection end; returns how.
pub(super) fn ended(waiter: &mut Child, lines: &mpsc::Receiver<String>) -> String {
    let how = lines
        .recv_timeout(Duration::from_secs(5))
        .expect("the connection was not cut");
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiter.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "agent still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    how
}

/// Revocation cuts a connection whose agent has sent bytes the direct
/// way and not closed, and those bytes are still counted.
#[test]
fn revoking_the_agent_cuts_a_spliced_connection() {
    let dns = dns();
    let (daemon, metrics) = daemon_with_metrics(&dns);
    let ((mut waiter, waiter_lines), (mut server, server_lines)) =
        open_connection_then(&daemon, &["5"]);
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events[0]["relay"], "kernel", "{events:?}");
    // Cut with the agent's direct way open: it closes with the rest.
    assert_eq!(direct_connections(metrics, 1), 1);
    // Five bytes the direct way: in the upstream socket once the agent's
    // send returns.
    writeln!(waiter.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(next_line(&waiter_lines, "more sent"), "more sent");
    let out = daemon.cli(&["revoke", "--agent", AGENT, "--reason", "test"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let how = ended(&mut waiter, &waiter_lines);
    assert!(how == "eof" || how == "ConnectionResetError", "{how}");
    // The upstream's end was closed too: it read the five bytes, then its
    // end, nothing more.
    assert_eq!(next_line(&server_lines, "upstream's end"), "5");
    let _ = server.wait();
    assert_eq!(
        metric(metrics, "agentguard_passthrough_direct_bytes_total", 5),
        5
    );
}

#[test]
fn stopping_the_daemon_cuts_a_spliced_connection() {
    let dns = dns();
    let (mut daemon, metrics) = daemon_with_metrics(&dns);
    let ((mut waiter, waiter_lines), (mut server, server_lines)) = open_connection(&daemon);
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events[0]["relay"], "kernel", "{events:?}");
    assert_eq!(direct_connections(metrics, 1), 1);
    daemon.terminate();
    let how = ended(&mut waiter, &waiter_lines);
    assert!(how == "eof" || how == "ConnectionResetError", "{how}");
    assert_eq!(next_line(&server_lines, "upstream's end"), "0");
    let _ = server.wait();
}

#[test]
fn an_unreachable_passthrough_upstream_is_recorded_as_such() {
    let dns = dns();
    let daemon = daemon(&dns, None);
    // A port nobody listens on: bound, then closed again (refused, not
    // timed out, on loopback).
    let port = std::net::TcpListener::bind((PASS_IP, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut waiter = agent(&daemon, WAITER, &[PASS, &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waiter_lines = lines(waiter.stdout.take().unwrap());
    assert_eq!(next_line(&waiter_lines, "hello sent"), "sent");
    let how = ended(&mut waiter, &waiter_lines);
    assert!(how == "eof" || how == "ConnectionResetError", "{how}");
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events.len(), 1, "{events:?}");
    let reason = events[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("upstream not reached: upstream connect failed"),
        "{events:?}"
    );
    // No bytes went either way, so no relay is named.
    assert!(events[0]["relay"].is_null(), "{events:?}");
}

/// The idle limit of the tests below, and the flag that sets it.
const IDLE_LIMIT: Duration = Duration::from_secs(1);
const IDLE_FLAG: [&str; 2] = ["--passthrough-idle-timeout", "1s"];

/// A daemon with [`IDLE_LIMIT`] and its metrics; `env` picks the relay.
fn idle_limited_daemon(dns: &DnsUpstream, env: Option<(&str, &str)>) -> (Daemon, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = IDLE_FLAG.to_vec();
    args.extend(["--metrics-listen", &listen]);
    (daemon_with(dns, env, &args), port)
}

/// The one connection's event names `relay`, and `idle_closed`
/// connections were closed by the idle limit.
fn assert_relayed(daemon: &Daemon, metrics: u16, relay: &str, idle_closed: u64) {
    assert_eq!(
        metric(
            metrics,
            "agentguard_passthrough_idle_closed_total",
            idle_closed
        ),
        idle_closed,
        "{relay}"
    );
    let events = passthrough_events(daemon, 1);
    assert_eq!(events[0]["relay"], relay, "{events:?}");
}

/// A passthrough connection on which no byte moves either way for the
/// idle limit is closed at both ends, whichever relay carries it (with the
/// kernel's, the agent's direct way open), and counted.
#[test]
fn a_passthrough_connection_idle_for_the_limit_is_closed() {
    let dns = dns();
    for (env, relay) in [(None, "userspace"), (KERNEL, "kernel")] {
        let (daemon, metrics) = idle_limited_daemon(&dns, env);
        // Before the hello: the quiet starts after it crossed.
        let opened = Instant::now();
        let ((mut waiter, waiter_lines), (mut server, server_lines)) = open_connection(&daemon);
        let how = ended(&mut waiter, &waiter_lines);
        let after = opened.elapsed();
        assert!(
            how == "eof" || how == "ConnectionResetError",
            "{relay}: {how}"
        );
        // Not before the limit (less a kernel clock tick).
        assert!(
            after + Duration::from_millis(10) >= IDLE_LIMIT,
            "{relay}: cut after {after:?}"
        );
        assert_eq!(next_line(&server_lines, "upstream's end"), "0", "{relay}");
        let _ = server.wait();
        assert_relayed(&daemon, metrics, relay, 1);
        if env.is_some() {
            assert_eq!(direct_connections(metrics, 1), 1);
        }
    }
}

/// Bytes one way only (the agent's, which with the kernel relay go
/// straight into the upstream socket, past the proxy's copy) keep a
/// passthrough connection open well past the idle limit.
#[test]
fn bytes_either_way_keep_a_passthrough_connection_past_the_idle_limit() {
    let dns = dns();
    for (env, relay) in [(None, "userspace"), (KERNEL, "kernel")] {
        let (daemon, metrics) = idle_limited_daemon(&dns, env);
        let (mut server, server_lines, port) = server(0);
        // 2.4 s of one byte every 0.3 s: over twice the limit.
        let out = agent(&daemon, TRICKLE, &[PASS, &port, "8", "0.3"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{relay}: agent failed:\n{}{}\n--- daemon ---\n{}",
            text(&out.stdout),
            text(&out.stderr),
            daemon.log()
        );
        assert_eq!(text(&out.stdout).trim(), "True", "{relay}");
        assert_eq!(next_line(&server_lines, "hello"), "hello");
        assert_eq!(next_line(&server_lines, "bytes read"), "8", "{relay}");
        assert!(server.wait().unwrap().success());
        assert_relayed(&daemon, metrics, relay, 0);
        if env.is_some() {
            // The trickle went the direct way, past the proxy's copy: the
            // kernel's counters still saw it.
            assert_eq!(direct_connections(metrics, 1), 1);
            assert_eq!(
                metric(metrics, "agentguard_passthrough_direct_bytes_total", 8),
                8
            );
        }
    }
}
