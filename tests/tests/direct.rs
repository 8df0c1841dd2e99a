//! Passthrough's direct way (issue 19), an opt-in
//! (`AGENTGUARD_PASSTHROUGH_RELAY=direct`, i.e. `--passthrough-relay
//! direct`): an agent's connection to an address agentguard's resolver
//! gave it for a passthrough name goes straight to the upstream, not
//! through the proxy, and the kernel checks its first send is a
//! ClientHello for that name. What must hold: TLS end to end, every byte
//! both ways with half-closes, the audit event (relay `direct`), a hello
//! for another name or another protocol refused before a byte goes, data
//! the kernel could not check (TCP Fast Open) never going, an address
//! shared with an intercepted host left to the proxy, revocation and a
//! daemon stop cutting the connection, all of it over IPv6 too, and the
//! ways of a daemon that died closing with its lease.

use std::{io::Write as _, process::Child, sync::mpsc, time::Duration};

use serde_json::Value;

use super::splice::{
    AGENT, CLIENT_HELLO, PASS, PASS_IP, Running, agent, curl_keeps_the_upstreams_tls, daemon_with,
    dns, ended, next_line, open_connection, open_connection_on, open_connection_then,
    passthrough_events, server, server_on, transfer,
};
use crate::common::{Daemon, DnsUpstream, text};

/// The opt-in, as an operator would set it.
const DIRECT: Option<(&str, &str)> = Some(("AGENTGUARD_PASSTHROUGH_RELAY", "direct"));

/// An agent that connects to `host:port` (resolved through the daemon)
/// and sends `what` first: `hello:NAME` (a ClientHello for NAME) or
/// `http` (a plain HTTP request). Prints `sent`, or the error's type, then
/// how the connection ended.
const FIRST_SEND: &str = r#"
import socket, sys
host, port, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=10)
data = client_hello(what[6:]) if what.startswith("hello:") else b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
try:
    s.sendall(data)
    print("sent", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"#;

/// An agent that sends a ClientHello for `host` by TCP Fast Open (the
/// data queued at connect, before the socket is under the kernel's
/// message program), waits, then sends another the usual way. Prints what
/// became of the second send.
const FAST_OPEN: &str = r#"
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
s = socket.socket()
s.sendto(client_hello(host), socket.MSG_FASTOPEN, (ip, port))
s.settimeout(10)
time.sleep(1)
try:
    s.sendall(client_hello(host))
    print("sent", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"#;

/// An agent that gets bytes (a ClientHello for `other`) queued on its
/// socket before the kernel's check can see them, then sends the hello
/// the way expects: corked, it starts a non-blocking connect whose SYN the
/// upstream's full accept queue drops, and sends while the connect is
/// pending, so that its send waits in the kernel's plain `sendmsg` until
/// the SYN's retransmission connects it. Prints `sent`.
const QUEUED_AHEAD: &str = r#"
import socket, sys, time
host, port, other = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
s.setblocking(False)
try:
    s.connect((ip, port))
except BlockingIOError:
    pass
print("connecting", flush=True)
# Blocking, without a timeout: Python would otherwise wait for the socket
# to be writable itself and call send() only once connected.
s.setblocking(True)
s.send(client_hello(other))
s.send(client_hello(host))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
print("sent", flush=True)
time.sleep(1)
"#;

/// The upstream of [`QUEUED_AHEAD`]: its accept queue full (one connection
/// of its own, unaccepted) until a line comes on stdin, then half a second
/// more; prints its port, then how many bytes the agent's connection
/// brought within 3 s (`nothing` for none).
const FULL_QUEUE: &str = r#"
import socket, sys, time
l = socket.socket()
l.bind((sys.argv[1], 0))
l.listen(0)
print(l.getsockname()[1], flush=True)
filler = socket.create_connection(l.getsockname())
sys.stdin.readline()
time.sleep(0.5)
l.accept()
c, _ = l.accept()
c.settimeout(3)
try:
    b = c.recv(65536)
    print("got", len(b), flush=True)
except socket.timeout:
    print("nothing", flush=True)
"#;

/// An agent that opens a direct-way connection with a hello for `host`,
/// then asks for kTLS on it. Prints what became of that.
const ULP: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=10)
s.sendall(client_hello(host))
try:
    s.setsockopt(socket.IPPROTO_TCP, 31, b"tls")
    print("set", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True)
"#;

fn script(body: &str) -> String {
    format!("{CLIENT_HELLO}{body}")
}

/// Runs the agent script `body` (after [`CLIENT_HELLO`]) with `args`; returns
/// what it printed, once it exited successfully.
fn run_agent(daemon: &Daemon, body: &str, args: &[&str]) -> String {
    let out = agent(daemon, &script(body), args).output().unwrap();
    assert!(
        out.status.success(),
        "agent failed:\n{}{}\n--- daemon ---\n{}",
        text(&out.stdout),
        text(&out.stderr),
        daemon.log()
    );
    text(&out.stdout).trim().to_owned()
}

fn daemon(dns: &DnsUpstream) -> Daemon {
    daemon_with(dns, DIRECT, &[])
}

/// The connection events of `decision`, once there are `count`.
fn connection_events(daemon: &Daemon, decision: &str, count: usize) -> Vec<Value> {
    daemon.wait_for_events("connection events", |events| {
        events
            .iter()
            .filter(|e| e["kind"] == "connection" && e["decision"] == decision)
            .count()
            >= count
    });
    daemon
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "connection" && e["decision"] == decision)
        .collect()
}

#[test]
fn the_direct_way_keeps_the_upstreams_tls() {
    let dns = dns();
    let daemon = daemon(&dns);
    let events = curl_keeps_the_upstreams_tls(&daemon);
    assert_eq!(events[0]["relay"], "direct", "{events:?}");
    assert_eq!(events[0]["agent"], AGENT);
    assert_eq!(events[0]["comm"], "curl");
    assert_eq!(events[0]["dst_ip"], PASS_IP, "{events:?}");
}

#[test]
fn the_direct_way_carries_large_transfers_and_half_closes() {
    let dns = dns();
    let daemon = daemon(&dns);
    transfer(&daemon, "0");
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["relay"], "direct", "{events:?}");
}

/// Runs [`FIRST_SEND`] sending `what` to a fresh upstream; returns what
/// the agent printed, and whether the upstream got a hello.
fn first_send(daemon: &Daemon, what: &str) -> (String, bool) {
    first_send_on(daemon, PASS_IP, what)
}

/// [`first_send`] to an upstream on `ip` (what the resolver answers `PASS`
/// with).
fn first_send_on(daemon: &Daemon, ip: &str, what: &str) -> (String, bool) {
    let (mut upstream, upstream_lines, port) = server_on(ip, 0);
    let printed = run_agent(daemon, FIRST_SEND, &[PASS, &port, what]);
    let got_hello = upstream_lines.recv_timeout(Duration::from_secs(3)).is_ok();
    let _ = upstream.kill();
    let _ = upstream.wait();
    (printed, got_hello)
}

/// The passthrough address takes only a hello for the name it was
/// resolved for: the kernel refuses any other first send before a byte of
/// it leaves (the agent's send fails), records why, and the daemon closes
/// the connection.
#[test]
fn the_kernel_refuses_a_first_send_that_is_not_a_hello_for_the_name() {
    let dns = dns();
    let daemon = daemon(&dns);
    let (printed, got_hello) = first_send(&daemon, "hello:other.agentguard.test");
    assert_eq!(printed, "PermissionError");
    assert!(!got_hello, "the upstream received the refused hello");
    let (printed, got_hello) = first_send(&daemon, "http");
    assert_eq!(printed, "PermissionError");
    assert!(!got_hello, "the upstream received the refused request");
    let refused = connection_events(&daemon, "refuse", 2);
    let reasons: Vec<&str> = refused
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default())
        .collect();
    assert!(reasons[0].contains("names another host"), "{refused:?}");
    assert!(
        reasons[1].contains("not a whole TLS ClientHello"),
        "{refused:?}"
    );
    for event in &refused {
        assert_eq!(event["rule"], "protocol", "{event}");
        assert_eq!(event["agent"], AGENT, "{event}");
    }
    // And a hello for the name still goes.
    let (printed, got_hello) = first_send(&daemon, &format!("hello:{PASS}"));
    assert_eq!(printed, "sent");
    assert!(got_hello);
    assert_eq!(passthrough_events(&daemon, 1)[0]["relay"], "direct");
}

/// Data queued before the socket was under the kernel's check (TCP Fast
/// Open) never leaves, and the connection stays refused: a hello sent the
/// usual way afterwards cannot open it.
#[test]
fn data_the_kernel_could_not_check_never_goes() {
    let dns = dns();
    let daemon = daemon(&dns);
    let (mut upstream, upstream_lines, port) = server(0);
    assert_eq!(
        run_agent(&daemon, FAST_OPEN, &[PASS, &port]),
        "PermissionError"
    );
    assert!(
        upstream_lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "the upstream received data"
    );
    let _ = upstream.kill();
    let _ = upstream.wait();
    // The dropped packet is on record, as the agent's.
    daemon.wait_for_events("egress refusal", |events| {
        events.iter().any(|e| {
            e["rule"] == "kernel:egress-denied" && e["agent"] == AGENT && e["dst_ip"] == PASS_IP
        })
    });
    assert!(
        !daemon
            .audit_events()
            .iter()
            .any(|e| e["kind"] == "connection" && e["decision"] == "passthrough"),
        "a connection opened"
    );
}

/// An address the agent's resolver also gave it for a host the proxy
/// intercepts goes through the proxy, which tells the two apart by SNI.
#[test]
fn an_address_shared_with_an_intercepted_host_goes_through_the_proxy() {
    const API: &str = "api.agentguard.test";
    let dns = DnsUpstream::start(
        "127.0.0.1",
        &[
            (PASS, PASS_IP.parse().unwrap()),
            (API, PASS_IP.parse().unwrap()),
        ],
    );
    let dns_addr = dns.addr.to_string();
    let daemon = Daemon::builder(&[AGENT])
        .policy(&format!(
            "[[passthrough]]\nhost = \"{PASS}\"\n\n[[tool]]\nname = \"api\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/\"]\n"
        ))
        .args(&["--dns-upstream", &dns_addr])
        .env(DIRECT.unwrap().0, DIRECT.unwrap().1)
        .start();
    let (mut upstream, upstream_lines, port) = server(0);
    // The agent looks the intercepted host up, then connects to the
    // passthrough name: same address.
    let body = format!(
        "import socket\nsocket.getaddrinfo({API:?}, 443)\n{}",
        FIRST_SEND
    );
    let printed = run_agent(&daemon, &body, &[PASS, &port, &format!("hello:{PASS}")]);
    assert_eq!(printed, "sent");
    assert_eq!(next_line(&upstream_lines, "hello"), "hello");
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events[0]["relay"], "userspace", "{events:?}");
    let _ = upstream.kill();
    let _ = upstream.wait();
}

/// An open direct-way connection (the agent waiting for the upstream).
fn open_direct(daemon: &Daemon) -> (Running, Child, mpsc::Receiver<String>) {
    let ((waiter, waiter_lines), (server, server_lines)) = open_connection(daemon);
    let events = passthrough_events(daemon, 1);
    assert_eq!(events[0]["relay"], "direct", "{events:?}");
    ((waiter, waiter_lines), server, server_lines)
}

/// Aborted by the daemon: the agent's read fails (ECONNABORTED), and the
/// upstream's end is reset, so its server ends.
fn assert_cut(mut waiter: Child, waiter_lines: &mpsc::Receiver<String>, mut server: Child) {
    let how = ended(&mut waiter, waiter_lines);
    assert_eq!(how, "ConnectionAbortedError");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream's end is still open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revoking_the_agent_cuts_a_direct_way_connection() {
    let dns = dns();
    let daemon = daemon(&dns);
    let ((waiter, waiter_lines), server, _server_lines) = open_direct(&daemon);
    let out = daemon.cli(&["revoke", "--agent", AGENT, "--reason", "test"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_cut(waiter, &waiter_lines, server);
    let cut = connection_events(&daemon, "passthrough", 1);
    assert_eq!(cut.len(), 1, "{cut:?}");
}

#[test]
fn stopping_the_daemon_cuts_a_direct_way_connection() {
    let dns = dns();
    let mut daemon = daemon(&dns);
    let ((waiter, waiter_lines), server, _server_lines) = open_direct(&daemon);
    daemon.terminate();
    assert_cut(waiter, &waiter_lines, server);
}

/// Bytes that reached the socket's queue before the kernel's check could
/// see them (a send waiting in the plain `sendmsg` for the connect, corked)
/// never go ahead of the checked hello: the egress check finds the first
/// data segment is not that hello, and refuses the connection.
#[test]
fn bytes_queued_ahead_of_the_checked_hello_never_go() {
    let dns = dns();
    let daemon = daemon(&dns);
    let mut upstream = std::process::Command::new("python3")
        .args(["-c", FULL_QUEUE, PASS_IP])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let upstream_lines = super::splice::lines(upstream.stdout.take().unwrap());
    let port = next_line(&upstream_lines, "the upstream's port");
    let mut agent_process = agent(
        &daemon,
        &script(QUEUED_AHEAD),
        &[PASS, &port, "other.agentguard.test"],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let agent_lines = super::splice::lines(agent_process.stdout.take().unwrap());
    assert_eq!(next_line(&agent_lines, "connecting"), "connecting");
    writeln!(upstream.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(next_line(&agent_lines, "sent"), "sent");
    assert_eq!(next_line(&upstream_lines, "what came"), "nothing");
    let _ = agent_process.wait();
    let _ = upstream.wait();
    daemon.wait_for_events("egress refusal", |events| {
        events.iter().any(|e| {
            e["rule"] == "kernel:egress-denied" && e["agent"] == AGENT && e["dst_ip"] == PASS_IP
        })
    });
}

/// A direct-way connection cannot take an upper-layer protocol (kTLS):
/// the kernel checked its hello as the agent wrote it.
#[test]
fn a_direct_way_connection_gets_no_ktls() {
    let dns = dns();
    let daemon = daemon(&dns);
    let (mut upstream, _upstream_lines, port) = server(0);
    assert_eq!(run_agent(&daemon, ULP, &[PASS, &port]), "PermissionError");
    let _ = upstream.kill();
    let _ = upstream.wait();
}

/// A daemon that dies without its clean stop leaves the ways it opened
/// usable only until its lease on the direct way runs out (seconds), not
/// until their DNS answers expire (a minute at least): then a connect to
/// the passthrough address goes to the proxy's port, where nobody
/// answers, and an open connection's packets go nowhere (as a relayed
/// connection dies with the proxy).
#[test]
fn a_dead_daemons_ways_close_with_its_lease() {
    let dns = dns();
    let mut daemon = daemon(&dns);
    let ((mut waiter, waiter_lines), (mut server, server_lines)) =
        open_connection_then(&daemon, &["5"]);
    assert_eq!(passthrough_events(&daemon, 1)[0]["relay"], "direct");

    daemon.kill9();
    std::thread::sleep(agentguard::ebpf::LEASE + Duration::from_secs(1));
    // The open connection: five bytes and the agent's end, held back.
    writeln!(waiter.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(next_line(&waiter_lines, "more sent"), "more sent");
    let _ = waiter.kill();
    let _ = waiter.wait();
    assert!(
        server_lines.recv_timeout(Duration::from_secs(3)).is_err(),
        "the upstream got the agent's bytes and end with the daemon dead"
    );
    let _ = server.kill();
    let _ = server.wait();

    // A new connect: no resolver answers now (the daemon is dead), so the
    // agent, joined to its cgroup by hand, dials the address it was given.
    let (mut upstream, upstream_lines, port) = server_on(PASS_IP, 0);
    let script = script(FIRST_SEND);
    let hello = format!("hello:{PASS}");
    let out = daemon
        .in_cgroup(AGENT, &["python3", "-c", &script, PASS_IP, &port, &hello])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("ConnectionRefusedError"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        upstream_lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "the upstream received a connection's hello with the daemon dead"
    );
    let _ = upstream.kill();
    let _ = upstream.wait();
}

/// A name answered with an IPv6 address takes the direct way as an IPv4
/// one does: a hello for the name goes (recorded, relay `direct`, the v6
/// destination), another name's is refused unsent, and revocation cuts an
/// open connection (sock_diag finds it by its v6 addresses).
#[test]
fn the_direct_way_works_over_ipv6() {
    const V6: &str = "::1";
    let dns = DnsUpstream::start_with("127.0.0.1", &[(PASS, V6.parse().unwrap())]);
    let daemon = daemon(&dns);
    let (printed, got_hello) = first_send_on(&daemon, V6, &format!("hello:{PASS}"));
    assert_eq!((printed.as_str(), got_hello), ("sent", true));
    let events = passthrough_events(&daemon, 1);
    assert_eq!(events[0]["relay"], "direct", "{events:?}");
    assert_eq!(events[0]["dst_ip"], V6, "{events:?}");

    let (printed, got_hello) = first_send_on(&daemon, V6, "hello:other.agentguard.test");
    assert_eq!((printed.as_str(), got_hello), ("PermissionError", false));
    let refused = connection_events(&daemon, "refuse", 1);
    assert!(
        refused[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("names another host")),
        "{refused:?}"
    );

    let ((waiter, waiter_lines), (server, _server_lines)) = open_connection_on(&daemon, V6, &[]);
    let events = passthrough_events(&daemon, 2);
    assert_eq!(events[1]["relay"], "direct", "{events:?}");
    assert_eq!(events[1]["dst_ip"], V6, "{events:?}");
    let out = daemon.cli(&["revoke", "--agent", AGENT, "--reason", "test"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_cut(waiter, &waiter_lines, server);
}
