//! Behind the address hooks: socket options that would route packets past
//! the redirect are refused, a packet that still heads off the loopback is
//! dropped in the kernel, and a closed connection's kernel record cannot
//! be claimed by another process.
//!
//! Safety of these tests: the only non-loopback addresses used (192.0.2.99,
//! 2001:db8::99, documentation prefixes) are routed through a veth pair
//! inside a network namespace the test creates, so even a guard that failed
//! would not send a packet off the machine.

use std::{
    io::{BufRead as _, BufReader, Lines, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    process::{Child, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::common::{
    ALLOW_LOOPBACK_TEST_HOSTS, Daemon, Upstream, alone, ok, require_root, run_with_pid,
};

const AGENT: &str = "egress-agent";

#[test]
fn routing_options_are_refused_and_recorded() {
    require_root();
    let daemon = Daemon::start(&[AGENT]);
    // An RFC 8754 segment routing header naming 2001:db8::99 as the next
    // hop: any user may set one, and the kernel would send every packet of
    // the socket there, whatever address the connect hook wrote. Binding a
    // socket to an interface (25: SO_BINDTODEVICE, 50: IP_UNICAST_IF) sends
    // packets for 127.0.0.1 out of that interface.
    let script = "import errno, socket, struct\n\
        seg = socket.inet_pton(socket.AF_INET6, '2001:db8::99')\n\
        srh = struct.pack('!BBBBBBH', 0, 4, 4, 1, 1, 0, 0) + bytes(16) + seg\n\
        lsrr = bytes([1, 0x83, 7, 4]) + socket.inet_aton('192.0.2.99')\n\
        cases = [('tcp6-rthdr', socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh),\n\
        \x20        ('udp6-rthdr', socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh),\n\
        \x20        ('udp4-options', socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr),\n\
        \x20        ('tcp4-bindtodevice', socket.AF_INET, socket.SOCK_STREAM, socket.SOL_SOCKET, 25, b'lo'),\n\
        \x20        ('udp4-unicast-if', socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_IP, 50, bytes(4))]\n\
        for name, family, kind, level, opt, value in cases:\n\
        \x20   s = socket.socket(family, kind)\n\
        \x20   try:\n\
        \x20       s.setsockopt(level, opt, value); print(name, 'set')\n\
        \x20   except OSError as e: print(name, errno.errorcode[e.errno])\n\
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 7)\n\
        print('hops', s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS))\n";
    // As root with every capability kept: IP_OPTIONS would otherwise need
    // CAP_NET_RAW, and only agentguard's hook is left to say no.
    let (pid, out) = run_with_pid(daemon.exec_with(
        AGENT,
        &["--allow-root", "--keep-capabilities"],
        &["python3", "-c", script],
    ));
    assert_eq!(
        ok(&out),
        "tcp6-rthdr EPERM\nudp6-rthdr EPERM\nudp4-options EPERM\n\
         tcp4-bindtodevice EPERM\nudp4-unicast-if EPERM\nhops 7\n",
        "other options still work"
    );
    let options = [
        "IPV6_RTHDR",
        "IPV6_RTHDR",
        "IP_OPTIONS",
        "SO_BINDTODEVICE",
        "IP_UNICAST_IF",
    ];
    let refusals = daemon.wait_for_refusals(pid, options.len());
    assert_eq!(refusals.len(), options.len(), "{refusals:?}");
    for (e, option) in refusals.iter().zip(options) {
        assert_eq!(e["rule"], "kernel:sockopt-denied", "{e}");
        assert_eq!(e["protocol"], "sockopt", "{e}");
        assert_eq!(e["agent"], AGENT, "{e}");
        assert_eq!(e["comm"], "python3", "{e}");
        let reason = e["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("setsockopt {option} ")),
            "{reason}"
        );
    }
    assert_eq!(daemon.status()["kernel_events_lost"], 0);
}

#[test]
fn packets_steered_off_the_loopback_are_dropped_at_egress() {
    require_root();
    let daemon = Daemon::start(&[AGENT]);
    // Per-datagram options (cmsgs) get past any setsockopt hook. A DNS
    // query, which the sendmsg hook sends to agentguard's resolver on
    // 127.0.0.1, would leave the loopback: loose-source-routed through
    // 192.0.2.99, or with IP_PKTINFO (8) naming another interface, out of
    // that interface still addressed to 127.0.0.1.
    let script = "import errno, socket, struct\n\
        lsrr = bytes([1, 0x83, 7, 4]) + socket.inet_aton('192.0.2.99')\n\
        pktinfo = struct.pack('=I4s4s', socket.if_nametoindex('ag0'), bytes(4), bytes(4))\n\
        for name, kind, data in (('source-route', socket.IP_RETOPTS, lsrr), ('pktinfo', 8, pktinfo)):\n\
        \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        \x20   try:\n\
        \x20       u.sendmsg([b'leak'], [(socket.IPPROTO_IP, kind, data)], 0, ('127.0.0.1', 53)); print(name, 'sent')\n\
        \x20   except OSError as e: print(name, errno.errorcode[e.errno])\n";
    // A namespace with a route to 192.0.2.0/24 over a veth pair (its other
    // end is the only "host" there), so the packets would really leave by
    // it if the kernel let them. Root with CAP_NET_RAW kept: IP options
    // need it.
    let exec = daemon.exec_with(
        AGENT,
        &["--allow-root", "--keep-capabilities"],
        &["python3", "-c", script],
    );
    let setup = "ip link set lo up && ip link add ag0 type veth peer name ag1 \
         && ip link set ag0 up && ip link set ag1 up \
         && ip addr add 192.0.2.1/24 dev ag0 \
         && ip neigh add 192.0.2.99 lladdr 02:00:00:00:00:99 dev ag0 \
         && exec \"$@\"";
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--net", "sh", "-c", setup, "sh"])
        .arg(exec.get_program())
        .args(exec.get_args());
    let (pid, out) = run_with_pid(cmd);
    assert_eq!(ok(&out), "source-route EPERM\npktinfo EPERM\n");
    let refusals = daemon.wait_for_refusals(pid, 2);
    let dst: Vec<&str> = refusals
        .iter()
        .map(|e| e["dst_ip"].as_str().unwrap())
        .collect();
    assert_eq!(dst, ["192.0.2.99", "127.0.0.1"]);
    for e in &refusals {
        assert_eq!(e["rule"], "kernel:egress-denied", "{e}");
        assert_eq!(e["protocol"], "udp", "{e}");
        assert_eq!(e["agent"], AGENT, "{e}");
        // Sent from the agent's own syscall: the event names it.
        assert_eq!(e["pid"], pid, "{e}");
    }
    assert_eq!(daemon.status()["kernel_events_lost"], 0);
}

/// SIGCONTs the daemon if the test fails while it is stopped.
struct Resume(Pid);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// An agent running `script` (python), which waits for a line on stdin
/// before it connects; returned once exec has become python, with its
/// stdout lines.
fn cued_agent(daemon: &Daemon, script: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut agent = daemon
        .exec(AGENT, &["python3", "-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    // exec asks the daemon for the agent first: the daemon must still run.
    let comm = format!("/proc/{}/comm", agent.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "python3" {
        assert!(Instant::now() < deadline, "agent never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    (agent, lines)
}

/// Stops the daemon: it accepts nothing, so a connection the agent makes
/// now is established in the listen queue, its kernel record waiting.
fn stop(daemon: &Daemon) -> Resume {
    let pid = Pid::from_raw(daemon.status()["pid"].as_i64().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    Resume(pid)
}

/// Stops the daemon, then has an agent connect to 127.0.0.2:9 (into the
/// listen queue, its kernel record waiting) and run `then` (python, with
/// the socket as `s`). Returns the agent, its remaining output, the
/// guard that resumes the daemon, and the agent's local port.
fn connect_while_stopped(
    daemon: &Daemon,
    then: &str,
) -> (Child, Lines<BufReader<ChildStdout>>, Resume, u16) {
    let script = format!(
        "import socket, sys\n\
         sys.stdin.readline()\n\
         s = socket.create_connection(('127.0.0.2', 9), timeout=5)\n\
         print(s.getsockname()[1], flush=True)\n\
         {then}"
    );
    let (mut agent, mut lines) = cued_agent(daemon, &script);
    let resume = stop(daemon);
    agent.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let port = lines.next().unwrap().unwrap().parse().unwrap();
    (agent, lines, resume, port)
}

/// A process outside every agent cgroup binds 127.0.0.1:`port` and dials
/// the daemon's proxy port directly with a request; returns what it got.
/// The one end-to-end step that shares kernel state with other tests: the
/// port must stay free from the agent's close to here, so the tests that
/// claim run alone (any test's connection from 127.0.0.1 may take it).
fn claim(daemon: &Daemon, port: u16) -> Vec<u8> {
    let proxy_port = daemon.status()["proxy_port"].as_u64().unwrap() as u16;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into())
        .unwrap();
    socket
        .connect(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, proxy_port).into())
        .unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.2:9\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// The claim got nothing and was recorded as what it is: no agent.
fn assert_refused(daemon: &Daemon, reply: &[u8]) {
    assert!(
        reply.is_empty(),
        "the proxy answered: {}",
        String::from_utf8_lossy(reply)
    );
    let entries = daemon.connections();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["decision"], "refuse", "{entries:?}");
    assert!(entries[0]["identity"].is_null(), "{entries:?}");
}

#[test]
fn a_dead_connections_record_cannot_be_claimed_after_a_restart() {
    require_root();
    let _alone = alone();
    let mut daemon = Daemon::start(&[AGENT]);
    let (mut agent, mut lines, resume, port) = connect_while_stopped(
        &daemon,
        "try:\n\
         \x20   print('read', s.recv(1))\n\
         except OSError as e: print(type(e).__name__)\n",
    );
    // The daemon dies with the connection never accepted: the kernel
    // resets it, and the agent's socket closes.
    daemon.kill9();
    drop(resume);
    assert_eq!(lines.next().unwrap().unwrap(), "ConnectionResetError");
    assert!(agent.wait().unwrap().success());

    daemon.restart();
    let reply = claim(&daemon, port);
    assert_refused(&daemon, &reply);
}

#[test]
fn a_record_left_by_a_graceful_close_is_forgotten_at_restart() {
    require_root();
    let _alone = alone();
    let mut daemon = Daemon::start(&[AGENT]);
    // The agent closes first, so its record outlives its socket (the proxy
    // may still accept it); then the daemon dies without accepting.
    let (mut agent, _, resume, port) = connect_while_stopped(&daemon, "s.close()\n");
    assert!(agent.wait().unwrap().success());
    daemon.kill9();
    drop(resume);

    daemon.restart();
    assert!(
        daemon.log().contains("forgot kernel records"),
        "{}",
        daemon.log()
    );
    let reply = claim(&daemon, port);
    assert_refused(&daemon, &reply);
}

#[test]
fn a_request_sent_and_closed_before_the_proxy_accepts_is_still_served() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    // At debug: how the connection ended is logged there, should the
    // request not arrive (it once did not: hyper dropped it on reading the
    // agent's end of stream, before HTTP/1 half-closes were kept).
    let daemon = Daemon::builder(&[AGENT])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .env("RUST_LOG", "info,agentguard::proxy=debug")
        .start();
    // Fire and forget: the whole request, then close, without waiting.
    let script = format!(
        "import socket, sys\n\
         sys.stdin.readline()\n\
         s = socket.create_connection(('127.0.0.2', {port}), timeout=5)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nHost: 127.0.0.2:{port}\\r\\nConnection: close\\r\\n\\r\\n')\n\
         s.close()\n\
         print('sent', flush=True)\n",
        port = upstream.addr.port()
    );
    let (mut agent, mut lines) = cued_agent(&daemon, &script);
    let resume = stop(&daemon);
    agent.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "sent");
    assert!(agent.wait().unwrap().success());
    // The agent's side is fully closed well within this (FIN_WAIT2 to
    // TCP_CLOSE took ~200 ms here) while the daemon still has not accepted.
    std::thread::sleep(Duration::from_secs(1));
    drop(resume);
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.hits() == 0 {
        // What the daemon made of the connection and of the request, to
        // tell a request never read from one never sent.
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream\nconnections: {:?}\naudit events: {:#?}\ndaemon log:\n{}",
            daemon.connections(),
            daemon.audit_events(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let entries = daemon.connections();
    assert_eq!(entries[0]["identity"]["agent"], AGENT, "{entries:?}");
    // Served whole, not abandoned mid-flight when the agent's end of stream
    // was read: the upstream's answer is in the record.
    let served = |events: &[serde_json::Value]| {
        events
            .iter()
            .any(|e| e["kind"] == "request" && e["status"] == 200)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served(&daemon.audit_events()) {
        assert!(
            Instant::now() < deadline,
            "the request was not recorded as answered\naudit events: {:#?}",
            daemon.audit_events()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
