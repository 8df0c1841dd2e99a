//! No way around the proxy: every socket an agent can create is redirected,
//! decided by policy, or refused, and every refusal is recorded.
//!
//! Safety of these tests: every destination the agent tries is on loopback,
//! so even a redirect that failed would not send a packet off the machine.

use std::{net::Ipv4Addr, process::Output};

use serde_json::Value;

use crate::common::{Daemon, DnsUpstream, Upstream, ok, require_root, run_with_pid, text};

const AGENT: &str = "bypass-agent";
/// The resolver the agent believes it uses; nothing listens there.
const NAMESERVER: &str = "127.0.0.99";
const ALLOWED: &str = "api.agentguard.test";

/// Tools on the loopback test host, and one named host the resolver may
/// answer for.
const POLICY: &str = r#"
[[tool]]
name = "test.loopback"
host = "127.0.0.2"
methods = ["GET"]
paths = ["/", "/*"]

[[tool]]
name = "test.api"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/*"]
"#;

struct Setup {
    dns: DnsUpstream,
    daemon: Daemon,
}

fn setup() -> Setup {
    require_root();
    let dns = DnsUpstream::start("127.0.0.1", &[(ALLOWED, Ipv4Addr::new(127, 0, 0, 3))]);
    let upstream = dns.addr.to_string();
    let daemon = Daemon::builder(&[AGENT])
        .policy(POLICY)
        .args(&["--dns-upstream", &upstream])
        .start();
    Setup { dns, daemon }
}

/// Runs a python snippet as the agent (root, capabilities dropped, unless
/// `flags` say otherwise), with a resolv.conf naming NAMESERVER.
fn python(s: &Setup, flags: &[&str], script: &str) -> (u32, Output) {
    run_with_pid(s.daemon.exec_with_nameserver(
        AGENT,
        flags,
        NAMESERVER,
        &["python3", "-c", script],
    ))
}

#[test]
fn udp_other_than_dns_is_refused_and_recorded() {
    let s = setup();
    let script = "import socket\n\
        for port in (443, 40999):\n\
        \x20   u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        \x20   try:\n\
        \x20       u.sendto(b'quic?', ('127.0.0.2', port)); print('sent', port)\n\
        \x20   except PermissionError: print('EPERM', port)\n\
        c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
        try:\n\
        \x20   c.connect(('::1', 443)); print('connected')\n\
        except PermissionError: print('EPERM connect')\n";
    let (pid, out) = python(&s, &["--allow-root"], script);
    assert_eq!(ok(&out), "EPERM 443\nEPERM 40999\nEPERM connect\n");
    let refusals = s.daemon.wait_for_refusals(pid, 3);
    let ports: Vec<u64> = refusals
        .iter()
        .map(|e| e["dst_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![443, 40999, 443]);
    for e in &refusals {
        assert_eq!(e["agent"], AGENT);
        assert_eq!(e["decision"], "refuse");
        assert_eq!(e["protocol"], "udp");
        assert_eq!(e["comm"], "python3");
        assert_eq!(e["uid"], 0);
    }
    assert_eq!(s.daemon.status()["kernel_events_lost"], 0);
}

#[test]
fn dns_from_agents_is_answered_by_agentguard_within_policy() {
    let s = setup();
    // getaddrinfo goes through resolv.conf (NAMESERVER, UDP); the raw
    // query checks that the reply seems to come from the server asked.
    let script = format!(
        "import socket, struct\n\
         print(socket.getaddrinfo('{ALLOWED}', 443, socket.AF_INET)[0][4][0])\n\
         try:\n\
         \x20   socket.getaddrinfo('exfil.attacker.example', 443, socket.AF_INET); print('resolved')\n\
         except socket.gaierror: print('no answer')\n\
         q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(p)]) + p.encode() for p in '{ALLOWED}'.split('.')) + b'\\x00' + struct.pack('>HH', 1, 1)\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)\n\
         u.sendto(q, ('{NAMESERVER}', 53))\n\
         data, peer = u.recvfrom(4096)\n\
         print(peer[0], peer[1], data[:2] == b'\\x12\\x34')\n"
    );
    let (_, out) = python(&s, &["--allow-root"], &script);
    assert_eq!(
        ok(&out),
        format!("127.0.0.3\nno answer\n{NAMESERVER} 53 True\n")
    );
    // Only the allowed name ever reached the upstream resolver.
    let asked = s.dns.asked();
    assert!(asked.iter().all(|n| n == ALLOWED), "{asked:?}");
    assert!(!asked.is_empty());
    let events = s.daemon.wait_for_events("dns events", |e| {
        e.iter()
            .any(|e| e["kind"] == "dns_query" && e["decision"] == "deny")
    });
    let dns: Vec<&Value> = events.iter().filter(|e| e["kind"] == "dns_query").collect();
    assert!(
        dns.iter()
            .any(|e| e["host"] == ALLOWED && e["decision"] == "allow")
    );
    assert!(
        dns.iter()
            .any(|e| e["host"] == "exfil.attacker.example" && e["decision"] == "deny")
    );
    assert!(dns.iter().all(|e| e["agent"] == AGENT));
}

#[test]
fn raw_and_ping_sockets_cannot_be_created() {
    let s = setup();
    let script = "import errno, socket\n\
        for name, args in (('raw', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),\n\
        \x20                  ('ping', (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)),\n\
        \x20                  ('ping6', (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6))):\n\
        \x20   try:\n\
        \x20       socket.socket(*args); print(name, 'created')\n\
        \x20   except OSError as e: print(name, errno.errorcode[e.errno])\n";
    // As root with every capability kept, in a network namespace of its own
    // where ping sockets are enabled for every group (the sysctl is per
    // namespace; the host's stays as it is): only agentguard's hook can say
    // no, and it says EPERM.
    let exec = s.daemon.exec_with(
        AGENT,
        &["--allow-root", "--keep-capabilities"],
        &["python3", "-c", script],
    );
    let child = std::process::Command::new("unshare")
        .args(["--net", "sh", "-c"])
        .arg("sysctl -q -w net.ipv4.ping_group_range='0 2147483647' && exec \"$@\"")
        .arg("sh")
        .arg(exec.get_program())
        .args(exec.get_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(ok(&out), "raw EPERM\nping EPERM\nping6 EPERM\n");
    let rules: Vec<String> = s
        .daemon
        .wait_for_refusals(pid, 3)
        .iter()
        .map(|e| e["rule"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        rules,
        [
            "kernel:raw-socket-denied",
            "kernel:icmp-socket-denied",
            "kernel:icmp-socket-denied"
        ]
    );

    // With capabilities dropped by exec (the default for --allow-root), the
    // sockets are refused too, and the process has no capabilities and
    // cannot regain any.
    let script2 = format!(
        "{script}status = open('/proc/self/status').read()\n\
         print([l for l in status.splitlines() if l.startswith(('CapEff', 'CapBnd', 'NoNewPrivs'))])\n"
    );
    let (_, out) = python(&s, &["--allow-root"], &script2);
    let stdout = ok(&out);
    assert!(!stdout.contains("created"), "{stdout}");
    assert!(
        stdout.ends_with(
            "['CapEff:\\t0000000000000000', 'CapBnd:\\t0000000000000000', 'NoNewPrivs:\\t1']\n"
        ),
        "{stdout}"
    );
}

#[test]
fn agents_run_unprivileged_unless_root_is_asked_for() {
    let s = setup();
    let out = s
        .daemon
        .exec_with(AGENT, &[], &["id", "-u"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refusing to run agent"),
        "{}",
        text(&out.stderr)
    );
    let out = s
        .daemon
        .exec_with(AGENT, &["--user", "65534:65534"], &["id", "-u"])
        .output()
        .unwrap();
    assert_eq!(ok(&out), "65534\n");
}

#[test]
fn plain_http_with_a_spoofed_host_is_refused() {
    // "Host: api.agentguard.test" (a tool the policy allows) sent to an
    // address agentguard never resolved for that name: without TLS nothing
    // proves who is there, so the request is refused before it goes out.
    let s = setup();
    let upstream = Upstream::start("127.0.0.2");
    let url = format!("http://127.0.0.2:{}/anything", upstream.addr.port());
    let out = s
        .daemon
        .exec(
            AGENT,
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-i",
                "-H",
                "Host: api.agentguard.test",
                &url,
            ],
        )
        .output()
        .unwrap();
    let response = ok(&out);
    assert!(response.starts_with("HTTP/1.1 421"), "{response}");
    assert!(response.contains("was not resolved"), "{response}");
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn getpeername_reports_the_original_destination() {
    let s = setup();
    let v4 = Upstream::start("127.0.0.2");
    let v6 = Upstream::start("::1");
    let script = format!(
        "import socket\n\
         a = socket.create_connection(('127.0.0.2', {p4})); print(a.getpeername())\n\
         b = socket.create_connection(('::1', {p6})); print(b.getpeername()[:2])\n",
        p4 = v4.addr.port(),
        p6 = v6.addr.port()
    );
    let (_, out) = python(&s, &["--allow-root"], &script);
    assert_eq!(
        ok(&out),
        format!(
            "('127.0.0.2', {})\n('::1', {})\n",
            v4.addr.port(),
            v6.addr.port()
        )
    );
    // And the connections really went through the proxy.
    assert_eq!(s.daemon.connections().len(), 2);

    // The kernel's map occupancy is in the metrics. (The original
    // destinations live in socket storage now, not in a shared map.)
    let out = std::process::Command::new("curl")
        .args(["-sS", "-m", "10", "--unix-socket"])
        .arg(&s.daemon.admin_socket)
        .arg("http://agentguard/metrics")
        .output()
        .unwrap();
    let metrics = ok(&out);
    assert!(metrics.contains("agentguard_kernel_map_capacity{map=\"PEER_RECORDS\"} 65536"));
    assert!(
        metrics.contains("agentguard_kernel_events_lost_total 0"),
        "{metrics}"
    );
}

#[test]
fn a_double_forked_setsid_daemon_is_covered_for_tcp_udp_and_dns() {
    let s = setup();
    let upstream = Upstream::start("127.0.0.2");
    let script = format!(
        "import os, socket, sys\n\
         r, w = os.pipe()\n\
         if os.fork() == 0:\n\
         \x20   os.setsid()\n\
         \x20   if os.fork() == 0:\n\
         \x20       out = [str(os.getpid())]\n\
         \x20       c = socket.create_connection(('127.0.0.2', {port}), timeout=10)\n\
         \x20       c.sendall(b'GET / HTTP/1.1\\r\\nhost: 127.0.0.2\\r\\nconnection: close\\r\\n\\r\\n')\n\
         \x20       out.append('tcp-ok' if b'hello from upstream' in c.recv(4096) else 'tcp-bad')\n\
         \x20       try:\n\
         \x20           socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.2', 443)); out.append('udp-sent')\n\
         \x20       except PermissionError: out.append('udp-EPERM')\n\
         \x20       out.append(socket.getaddrinfo('{ALLOWED}', 443, socket.AF_INET)[0][4][0])\n\
         \x20       os.write(w, ' '.join(out).encode()); os._exit(0)\n\
         \x20   os._exit(0)\n\
         os.close(w)\n\
         print(os.read(r, 200).decode())\n",
        port = upstream.addr.port()
    );
    let (_, out) = python(&s, &["--allow-root"], &script);
    let stdout = ok(&out);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(
        fields[1..],
        ["tcp-ok", "udp-EPERM", "127.0.0.3"],
        "{stdout}"
    );
    let grandchild: u32 = fields[0].parse().unwrap();
    let connections = s.daemon.connections();
    assert!(
        connections
            .iter()
            .any(|c| c["identity"]["pid"] == grandchild),
        "{connections:?}"
    );
    let refusals = s.daemon.wait_for_refusals(grandchild, 1);
    assert_eq!(refusals[0]["rule"], "kernel:udp-denied", "{refusals:?}");
}

#[test]
fn a_kernel_without_a_needed_hook_stops_start_up_naming_it() {
    require_root();
    for hook in [
        "cgroup/sendmsg4",
        "cgroup/connect_unix",
        "cgroup/setsockopt",
        "cgroup_skb/egress",
    ] {
        let attempt = crate::common::start_attempt(
            "probe",
            (
                "p.toml",
                "[agent]\nname = \"p\"\ncgroup = \"agentguard-test-probe/p\"\n",
            ),
            &["--proxy-port", "0"],
            &[("AGENTGUARD_TEST_UNSUPPORTED_HOOKS", hook)],
        );
        assert!(!attempt.out.status.success());
        let err = text(&attempt.out.stderr);
        assert!(err.contains(hook), "{err}");
        assert!(err.contains("refusing to run"), "{err}");
    }
}
