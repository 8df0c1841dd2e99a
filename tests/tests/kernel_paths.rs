//! The less common ways into the kernel's TCP and DNS paths: redirects
//! reported as kernel events when asked, MPTCP sockets, TCP Fast Open and
//! getpeername on a v4-mapped socket all end at the proxy or resolver, as
//! plain connect() and sendto() do.
//!
//! Safety of these tests: every destination the agent tries is on loopback,
//! so even a redirect that failed would not send a packet off the machine.

use std::process::Output;

use serde_json::Value;

use crate::common::{
    ALLOW_LOOPBACK_TEST_HOSTS, BODY, Daemon, DnsUpstream, Upstream, ok, require_root, run_with_pid,
};

const AGENT: &str = "kernel-paths";
/// The resolver the agent's DNS query names; nothing listens there, the
/// kernel sends the query to agentguard's resolver instead.
const NAMESERVER: &str = "127.0.0.99";
/// IPPROTO_MPTCP, include/uapi/linux/in.h.
const IPPROTO_MPTCP: u16 = 262;

/// Python that sends a GET for `/` on the connected socket `s`.
const SEND_GET: &str =
    "s.sendall(b'GET / HTTP/1.1\\r\\nhost: 127.0.0.2\\r\\nconnection: close\\r\\n\\r\\n')\n";
/// Python that reads the response on `s` to the end and prints its body.
const PRINT_BODY: &str = "data = b''
while True:
    chunk = s.recv(4096)
    if not chunk: break
    data += chunk
print(data.decode().split('\\r\\n\\r\\n', 1)[1])
";

fn python(daemon: &Daemon, script: &str) -> (u32, Output) {
    run_with_pid(daemon.exec(AGENT, &["python3", "-c", script]))
}

/// The one proxy connection entry with this pid, asserting there is
/// exactly one.
fn connection_of(daemon: &Daemon, pid: u32) -> Value {
    let all = daemon.connections();
    let matching: Vec<&Value> = all.iter().filter(|e| e["identity"]["pid"] == pid).collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one proxy connection from pid {pid}, got {all:#?}"
    );
    matching[0].clone()
}

/// Asserts that `pid`'s connection to `upstream` went through the proxy:
/// the proxy accepted it from the agent and names the original destination.
fn assert_proxied(daemon: &Daemon, pid: u32, upstream: &Upstream) -> Value {
    let entry = connection_of(daemon, pid);
    assert_eq!(entry["decision"], "intercept", "{entry}");
    assert_eq!(entry["original_dst"], upstream.addr.to_string(), "{entry}");
    assert_eq!(entry["identity"]["agent"], AGENT, "{entry}");
    assert_eq!(entry["identity"]["comm"], "python3", "{entry}");
    assert_eq!(upstream.hits(), 1, "the upstream saw another connection");
    entry
}

/// A daemon whose agent may reach the loopback test hosts, with its
/// resolver forwarding to a loopback stand-in (never the machine's own).
fn start(dns: &DnsUpstream, extra_args: &[&str]) -> Daemon {
    let upstream = dns.addr.to_string();
    let mut args = vec!["--dns-upstream", upstream.as_str()];
    args.extend_from_slice(extra_args);
    Daemon::builder(&[AGENT])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&args)
        .start()
}

/// The agent makes one TCP connection to `upstream`, one DNS query, and
/// last one UDP datagram the kernel refuses. Returns the agent's pid once
/// that refusal is in the audit record: the kernel queues its events in
/// order and one task records them in order, so every kernel event of the
/// TCP connection and the DNS query is in the record by then too.
fn connect_and_query(daemon: &Daemon, upstream: &Upstream) -> u32 {
    let script = format!(
        "import socket, struct
s = socket.create_connection(('127.0.0.2', {port}), timeout=10)
{SEND_GET}{PRINT_BODY}
q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b'\\x07unknown\\x0aagentguard\\x04test\\x00' + struct.pack('>HH', 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(q, ('{NAMESERVER}', 53))
data, _ = u.recvfrom(4096)
print('dns', data[:2] == b'\\x12\\x34', data[3] & 0x0f)
try:
    u.sendto(b'x', ('127.0.0.2', 443)); print('udp sent')
except PermissionError: print('udp EPERM')
",
        port = upstream.addr.port()
    );
    let (pid, out) = python(daemon, &script);
    // The body, then the resolver's NXDOMAIN (rcode 3) for a name the
    // policy does not reach, under the query's id.
    assert_eq!(ok(&out), format!("{BODY}\ndns True 3\nudp EPERM\n"));
    let refusals = daemon.wait_for_refusals(pid, 1);
    assert_eq!(refusals[0]["rule"], "kernel:udp-denied", "{refusals:#?}");
    pid
}

/// Kernel events that report a redirect, not a refusal.
fn is_redirect_event(e: &Value) -> bool {
    e["rule"]
        .as_str()
        .is_some_and(|r| r.starts_with("kernel:") && r.ends_with("-redirected"))
}

#[test]
fn report_kernel_redirects_records_tcp_and_dns_redirects_with_the_agents_identity() {
    require_root();
    let dns = DnsUpstream::start("127.0.0.1", &[]);
    let upstream = Upstream::start("127.0.0.2");
    let daemon = start(&dns, &["--report-kernel-redirects"]);
    let pid = connect_and_query(&daemon, &upstream);
    assert_proxied(&daemon, pid, &upstream);

    let events = daemon.wait_for_events("two redirect events", |events| {
        events.iter().filter(|e| is_redirect_event(e)).count() >= 2
    });
    let redirects: Vec<&Value> = events.iter().filter(|e| is_redirect_event(e)).collect();
    let seen: Vec<(&str, &str, &str, u64)> = redirects
        .iter()
        .map(|e| {
            (
                e["rule"].as_str().unwrap(),
                e["protocol"].as_str().unwrap(),
                e["dst_ip"].as_str().unwrap(),
                e["dst_port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "kernel:tcp-redirected",
                "tcp",
                "127.0.0.2",
                u64::from(upstream.addr.port())
            ),
            ("kernel:dns-redirected", "udp", NAMESERVER, 53),
        ],
        "{redirects:#?}"
    );
    // Redirects are not refusals: daemon/events.rs records them as
    // connections the kernel sent to agentguard.
    for e in redirects {
        assert_eq!(e["kind"], "connection", "{e}");
        assert_eq!(e["decision"], "intercept", "{e}");
        assert_eq!(e["agent"], AGENT, "{e}");
        assert_eq!(e["pid"], pid, "{e}");
        assert_eq!(e["comm"], "python3", "{e}");
        assert_eq!(e["uid"], 0, "{e}");
    }
    assert_eq!(daemon.status()["kernel_events_lost"], 0);
}

#[test]
fn without_report_kernel_redirects_no_redirect_is_recorded() {
    require_root();
    let dns = DnsUpstream::start("127.0.0.1", &[]);
    let upstream = Upstream::start("127.0.0.2");
    let daemon = start(&dns, &[]);
    let pid = connect_and_query(&daemon, &upstream);
    // Both were redirected (the proxy has the connection, the resolver
    // answered); neither is a kernel event.
    assert_proxied(&daemon, pid, &upstream);
    let events = daemon.audit_events();
    let redirects: Vec<&Value> = events.iter().filter(|e| is_redirect_event(e)).collect();
    assert!(redirects.is_empty(), "{redirects:#?}");
}

#[test]
fn mptcp_connections_are_redirected_through_the_proxy() {
    require_root();
    // An MPTCP test that skipped where MPTCP is off would pass while
    // proving nothing about the kernels that have it (most distributions
    // enable it); fail and say so instead.
    let enabled = std::fs::read_to_string("/proc/sys/net/mptcp/enabled");
    assert_eq!(
        enabled.as_deref().map(str::trim).unwrap_or("missing"),
        "1",
        "MPTCP is unavailable on this kernel (net.mptcp.enabled: {enabled:?}); \
         this test needs CONFIG_MPTCP and `sysctl net.mptcp.enabled=1`"
    );
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&[AGENT]);
    let script = format!(
        "import errno, socket, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, {IPPROTO_MPTCP})
except OSError as e:
    sys.exit('cannot create an MPTCP socket: ' + errno.errorcode[e.errno])
print('protocol', s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
s.settimeout(10)
s.connect(('127.0.0.2', {port}))
{SEND_GET}{PRINT_BODY}",
        port = upstream.addr.port()
    );
    let (pid, out) = python(&daemon, &script);
    // SO_PROTOCOL shows the socket really is MPTCP, not TCP under another
    // name; against the proxy (plain TCP) it falls back to TCP.
    assert_eq!(ok(&out), format!("protocol {IPPROTO_MPTCP}\n{BODY}\n"));
    assert_proxied(&daemon, pid, &upstream);
}

#[test]
fn getpeername_on_a_redirected_v4_mapped_socket_reports_the_original_destination() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&[AGENT]);
    let port = upstream.addr.port();
    let script = format!(
        "import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(('::ffff:127.0.0.2', {port}))
print(s.getpeername()[:2])
{SEND_GET}{PRINT_BODY}"
    );
    let (pid, out) = python(&daemon, &script);
    assert_eq!(ok(&out), format!("('::ffff:127.0.0.2', {port})\n{BODY}\n"));
    let entry = assert_proxied(&daemon, pid, &upstream);
    assert_eq!(entry["identity"]["socket_family"], "ipv6", "{entry}");
}

#[test]
fn tcp_fast_open_is_redirected_through_the_proxy() {
    require_root();
    // Without the client bit (1) of net.ipv4.tcp_fastopen the kernel
    // answers MSG_FASTOPEN with EOPNOTSUPP and the test would prove
    // nothing; the sysctl is the host's (the upstream lives there).
    let sysctl = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen").unwrap();
    let flags: u32 = sysctl.trim().parse().unwrap();
    assert!(
        flags & 1 != 0,
        "TCP Fast Open is disabled for clients (net.ipv4.tcp_fastopen = {flags}); \
         this test needs its client bit: `sysctl net.ipv4.tcp_fastopen=1`"
    );
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&[AGENT]);
    // sendto with MSG_FASTOPEN on a fresh socket connects and sends in one
    // call (tcp_sendmsg_fastopen), without connect(). The socket stays
    // blocking until then: without a cookie from an earlier connection the
    // data waits for the handshake, and a non-blocking sendto (python's
    // settimeout) fails with EINPROGRESS. An alarm bounds the wait instead.
    let script = format!(
        "import signal, socket
signal.alarm(20)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.sendto(b'GET / HTTP/1.1\\r\\nhost: 127.0.0.2\\r\\nconnection: close\\r\\n\\r\\n', socket.MSG_FASTOPEN, ('127.0.0.2', {port}))
s.settimeout(10)
{PRINT_BODY}",
        port = upstream.addr.port()
    );
    let (pid, out) = python(&daemon, &script);
    assert_eq!(ok(&out), format!("{BODY}\n"));
    let entry = assert_proxied(&daemon, pid, &upstream);
    assert!(
        entry["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{entry}"
    );
}
