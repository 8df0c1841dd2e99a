//! agentguard's resolver as agents meet it: whatever server and transport
//! an agent names for DNS, agentguard answers, only standard queries within
//! policy go on to the host's resolver (the loopback [`DnsUpstream`]), and
//! only as the question itself.
//!
//! Safety of these tests: every address the agent sends to is on loopback
//! (127.0.0.99, ::1), so even a redirect that failed would not send a packet
//! off the machine.

use std::{net::Ipv4Addr, process::Output};

use serde_json::Value;

use crate::common::{Daemon, DnsUpstream, ok, require_root, run_with_pid};

const AGENT: &str = "dns-agent";
/// The resolver the agent believes it uses; nothing listens there.
const NAMESERVER: &str = "127.0.0.99";
/// A tool's host: the policy lets the agent resolve it.
const ALLOWED: &str = "api.agentguard.test";
/// A name the upstream knows but no tool names.
const OUTSIDE: &str = "elsewhere.agentguard.test";
const DENIED: &str = "exfil.attacker.example";

const POLICY: &str = r#"
[[tool]]
name = "test.api"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/*"]
"#;

/// Python helpers for the agent: raw DNS messages, over UDP and TCP.
const PRELUDE: &str = r#"
import socket, struct

def name(n):
    return b''.join(bytes([len(p)]) + p.encode() for p in n.split('.')) + b'\x00'

def query(n, qid):
    # RD set, one question, type A, class IN.
    return struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0) + name(n) + struct.pack('>HH', 1, 1)

def show(reply, asked):
    qid, flags, qd, an, ns, ar = struct.unpack('>HHHHHH', reply[:12])
    ip = socket.inet_ntoa(reply[-4:]) if an and not ar else '-'
    # The question section comes back as the agent wrote it.
    same = reply[12:12 + len(question(asked))] == question(asked)
    print(hex(qid), 'opcode=%d' % ((flags >> 11) & 0xf), 'rcode=%d' % (flags & 0xf), 'answers=%d' % an, ip, 'question' if same else 'other-question')

def question(msg):
    # The first question: name, then type and class.
    end = 12
    while msg[end]:
        end += msg[end] + 1
    return msg[12:end + 5]

def recv_exact(c, n):
    b = b''
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            raise EOFError('closed after %d bytes' % len(b))
        b += chunk
    return b

def over_tcp(server, msg):
    with socket.create_connection((server, 53), timeout=5) as c:
        c.sendall(struct.pack('>H', len(msg)) + msg)
        return recv_exact(c, struct.unpack('>H', recv_exact(c, 2))[0])

def over_udp(family, server, msg):
    with socket.socket(family, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(msg, (server, 53))
        return u.recvfrom(4096)
"#;

struct Setup {
    dns: DnsUpstream,
    daemon: Daemon,
}

/// A daemon whose agent has [`POLICY`] after `agent_keys` (more `[agent]`
/// keys, such as `dns`), forwarding to a loopback upstream that knows
/// [`ALLOWED`] and [`OUTSIDE`].
fn setup(agent_keys: &str) -> Setup {
    require_root();
    let dns = DnsUpstream::start(
        "127.0.0.1",
        &[
            (ALLOWED, Ipv4Addr::new(127, 0, 0, 3)),
            (OUTSIDE, Ipv4Addr::new(127, 0, 0, 4)),
        ],
    );
    let upstream = dns.addr.to_string();
    let policy = format!("{agent_keys}{POLICY}");
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .args(&["--dns-upstream", &upstream])
        .start();
    Setup { dns, daemon }
}

/// Runs [`PRELUDE`] then `script` as the agent, with a resolv.conf naming
/// [`NAMESERVER`].
fn python(s: &Setup, script: &str) -> (u32, Output) {
    let script = format!("{PRELUDE}\n{script}");
    run_with_pid(s.daemon.exec_with_nameserver(
        AGENT,
        &["--allow-root"],
        NAMESERVER,
        &["python3", "-c", &script],
    ))
}

/// The agent's DNS events, once `pred` holds for them (bounded: 5 s).
fn dns_events(s: &Setup, pred: impl Fn(&[&Value]) -> bool) -> Vec<Value> {
    let of_agent = |e: &&Value| e["kind"] == "dns_query" && e["agent"] == AGENT;
    let events = s.daemon.wait_for_events("dns events", |e| {
        pred(&e.iter().filter(of_agent).collect::<Vec<_>>())
    });
    events.iter().filter(of_agent).cloned().collect()
}

fn has(events: &[&Value], host: &str, decision: &str, protocol: &str) -> bool {
    events
        .iter()
        .any(|e| e["host"] == host && e["decision"] == decision && e["protocol"] == protocol)
}

#[test]
fn dns_over_tcp_to_any_server_is_answered_by_agentguard_within_policy() {
    let s = setup("");
    let script = format!(
        "for n, qid in (('{ALLOWED}', 0x1111), ('{DENIED}', 0x2222)):\n    \
             q = query(n, qid)\n    \
             show(over_tcp('{NAMESERVER}', q), q)\n"
    );
    let (_, out) = python(&s, &script);
    assert_eq!(
        ok(&out),
        "0x1111 opcode=0 rcode=0 answers=1 127.0.0.3 question\n\
         0x2222 opcode=0 rcode=3 answers=0 - question\n"
    );
    // Only the allowed name went on, and over TCP as the agent asked.
    assert_eq!(s.dns.asked(), [ALLOWED]);
    assert!(s.dns.received().iter().all(|m| m.transport == "tcp"));
    let events = dns_events(&s, |e| {
        has(e, ALLOWED, "allow", "dns/tcp") && has(e, DENIED, "deny", "dns/tcp")
    });
    assert_eq!(events.len(), 2, "{events:#?}");
}

#[test]
fn dns_over_udp_to_v6_loopback_is_answered_by_agentguard_as_the_address_asked() {
    let s = setup("");
    let script = format!(
        "for n, qid in (('{ALLOWED}', 0x3333), ('{DENIED}', 0x4444)):\n    \
             q = query(n, qid)\n    \
             reply, peer = over_udp(socket.AF_INET6, '::1', q)\n    \
             show(reply, q)\n    \
             print(peer[0], peer[1])\n"
    );
    let (_, out) = python(&s, &script);
    assert_eq!(
        ok(&out),
        "0x3333 opcode=0 rcode=0 answers=1 127.0.0.3 question\n\
         ::1 53\n\
         0x4444 opcode=0 rcode=3 answers=0 - question\n\
         ::1 53\n"
    );
    assert_eq!(s.dns.asked(), [ALLOWED]);
    let events = dns_events(&s, |e| {
        has(e, ALLOWED, "allow", "dns/udp") && has(e, DENIED, "deny", "dns/udp")
    });
    // The resolver saw the query arrive on its v6 socket.
    assert!(events.iter().all(|e| e["src_ip"] == "::1"), "{events:#?}");
}

#[test]
fn with_dns_any_a_name_outside_the_tools_is_forwarded_and_answered() {
    let s = setup("dns = \"any\"\n");
    let script = format!(
        "print(socket.getaddrinfo('{OUTSIDE}', 443, socket.AF_INET)[0][4][0])\n\
         try:\n    \
             socket.getaddrinfo('unknown.agentguard.test', 443, socket.AF_INET); print('resolved')\n\
         except socket.gaierror: print('no such name')\n"
    );
    let (_, out) = python(&s, &script);
    assert_eq!(ok(&out), "127.0.0.4\nno such name\n");
    // Both went to the upstream; its NXDOMAIN is what the agent got.
    let asked = s.dns.asked();
    assert!(asked.iter().any(|n| n == OUTSIDE), "{asked:?}");
    assert!(
        asked.iter().any(|n| n == "unknown.agentguard.test"),
        "{asked:?}"
    );
    let events = dns_events(&s, |e| {
        has(e, OUTSIDE, "allow", "dns/udp") && has(e, "unknown.agentguard.test", "allow", "dns/udp")
    });
    assert!(
        events
            .iter()
            .any(|e| e["host"] == OUTSIDE && e["reason"] == "No Error (127.0.0.4)"),
        "{events:#?}"
    );
}

#[test]
fn an_update_from_an_agent_gets_notimp_and_never_reaches_the_upstream() {
    let s = setup("");
    // RFC 2136: zone (the allowed name, SOA IN) and one TXT record to add,
    // over UDP and over TCP. The zone is a name the policy resolves, so only
    // the opcode check stands between it and the upstream.
    let script = format!(
        "zone = name('{ALLOWED}') + struct.pack('>HH', 6, 1)\n\
         add = name('data.{ALLOWED}') + struct.pack('>HHIH', 16, 1, 60, 7) + b'\\x06secret'\n\
         msg = struct.pack('>HHHHHH', 0x5555, 5 << 11, 1, 0, 1, 0) + zone + add\n\
         show(over_udp(socket.AF_INET, '{NAMESERVER}', msg)[0], msg)\n\
         show(over_tcp('{NAMESERVER}', msg), msg)\n"
    );
    let (_, out) = python(&s, &script);
    assert_eq!(
        ok(&out),
        "0x5555 opcode=5 rcode=4 answers=0 - question\n\
         0x5555 opcode=5 rcode=4 answers=0 - question\n"
    );
    let received = s.dns.received();
    assert!(received.is_empty(), "{received:?}");
    let events = dns_events(&s, |e| {
        has(e, ALLOWED, "refuse", "dns/udp") && has(e, ALLOWED, "refuse", "dns/tcp")
    });
    for e in &events {
        assert_eq!(e["rule"], "dns:not-a-standard-query");
        assert_eq!(e["method"], "SOA");
        assert_eq!(
            e["reason"],
            "Not Implemented (no records): opcode UPDATE is not a standard query"
        );
    }
}

#[test]
fn only_the_question_of_a_query_reaches_the_upstream() {
    let s = setup("");
    // A query carrying data in an additional record and in EDNS options
    // (client subnet, a cookie).
    let script = format!(
        "extra = name('smuggled.example') + struct.pack('>HHIH', 16, 1, 60, 7) + b'\\x06secret'\n\
         opts = struct.pack('>HHHBB', 8, 7, 1, 24, 0) + bytes([203, 0, 113]) + struct.pack('>HH', 10, 8) + b'cookie!!'\n\
         opt = b'\\x00' + struct.pack('>HHIH', 41, 4096, 0, len(opts)) + opts\n\
         msg = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 2) + name('{ALLOWED}') + struct.pack('>HH', 1, 1) + extra + opt\n\
         show(over_udp(socket.AF_INET, '{NAMESERVER}', msg)[0], msg)\n"
    );
    let (_, out) = python(&s, &script);
    assert_eq!(
        ok(&out),
        "0x1234 opcode=0 rcode=0 answers=1 127.0.0.3 question\n"
    );
    let received = s.dns.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let forwarded = &received[0];
    assert_eq!(forwarded.opcode(), Some(0));
    let m = forwarded.parsed().expect("a parseable query");
    assert_eq!(m.queries().len(), 1);
    assert_eq!(m.queries()[0].name().to_utf8(), format!("{ALLOWED}."));
    assert!(m.answers().is_empty() && m.name_servers().is_empty());
    assert!(m.additionals().is_empty(), "{m:?}");
    let edns = m.extensions().as_ref().expect("a fresh OPT record");
    assert!(edns.options().as_ref().is_empty(), "{edns:?}");
    assert!(edns.max_payload() <= 1232);
    for smuggled in [&b"secret"[..], b"smuggled", b"cookie!!"] {
        assert!(
            !forwarded
                .bytes
                .windows(smuggled.len())
                .any(|w| w == smuggled),
            "{forwarded:?}"
        );
    }
}
