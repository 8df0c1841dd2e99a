//! TLS interception and HTTP proxying for unmodified clients: curl, Python
//! (urllib, requests) and Node (fetch, WebSocket) trust the agentguard CA
//! through the variables `agentguard exec` sets, and get the upstream's
//! answers, streamed, over HTTP/1.1 and HTTP/2.

use std::{
    io::{BufRead as _, BufReader},
    process::{Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::common::{DnsUpstream, SSE_EVENTS, Setup, TestCa, TlsUpstream, text};

const AGENT: &str = "tls-agent";
const API: &str = "api.agentguard.test";
const PASS: &str = "pass.agentguard.test";

/// Every method and path on the test upstreams' names: these tests are about
/// TLS and HTTP, not policy.
const ALLOW_TEST_UPSTREAMS: &str = r#"
[[tool]]
name = "test.any"
host = "*.agentguard.test"
methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
paths = ["/", "/*"]
"#;

fn setup(policy_extra: &str) -> Setup {
    setup_with_args(policy_extra, &[])
}

/// A daemon trusting the test CA for upstreams, plus the upstream `API` on
/// 127.0.0.3.
fn setup_with_args(policy_extra: &str, run_args: &[&str]) -> Setup {
    Setup::builder(API)
        .agents(&[AGENT])
        .policy(&format!("{ALLOW_TEST_UPSTREAMS}\n{policy_extra}"))
        .args(run_args)
        .start()
}

fn run(s: &Setup, names: &[&str], ip: &str, cmd: &[&str]) -> Output {
    s.daemon
        .exec_resolving(AGENT, names, ip, cmd)
        .output()
        .unwrap()
}

fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn curl_python_and_node_get_https_through_interception() {
    let s = setup("");
    let url = s.upstream.url("/hello");

    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &["curl", "-sS", "-v", "-m", "10", &url],
    );
    assert_eq!(assert_ok(&out, "curl"), "hello over tls");
    // curl (OpenSSL) names the issuer of the leaf it verified.
    let verbose = text(&out.stderr);
    assert!(verbose.contains("CN=agentguard local CA"), "{verbose}");

    let urllib = format!(
        "import socket, ssl, urllib.request\n\
         print(urllib.request.urlopen('{url}', timeout=10).read().decode())\n\
         ctx = ssl.create_default_context()\n\
         s = ctx.wrap_socket(socket.create_connection(('{API}', {port}), timeout=10), server_hostname='{API}')\n\
         print(dict(x[0] for x in s.getpeercert()['issuer'])['commonName'])\n\
         print(s.cipher()[0])\n",
        port = s.upstream.addr.port()
    );
    let out = run(&s, &[API], "127.0.0.3", &["python3", "-c", &urllib]);
    // Python's OpenSSL lists TLS_AES_256_GCM_SHA384 first; where the CPU
    // has AES instructions the proxy picks AES-128-GCM, the cheaper suite
    // for both ends (agentguard::tls_provider), else it follows the client.
    #[cfg(target_arch = "x86_64")]
    let aes = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let aes = false;
    let suite = if aes {
        "TLS_AES_128_GCM_SHA256"
    } else {
        "TLS_AES_256_GCM_SHA384"
    };
    assert_eq!(
        assert_ok(&out, "python urllib"),
        format!("hello over tls\nagentguard local CA\n{suite}\n")
    );

    let requests = format!("import requests\nprint(requests.get('{url}', timeout=10).text)\n");
    let out = run(&s, &[API], "127.0.0.3", &["python3", "-c", &requests]);
    assert_eq!(assert_ok(&out, "python requests"), "hello over tls\n");

    let node = format!(
        "const tls = require('tls');\n\
         fetch('{url}').then(r => r.text()).then(t => {{\n\
           console.log(t);\n\
           const s = tls.connect({{ host: '{API}', port: {port}, servername: '{API}' }}, () => {{\n\
             console.log(s.getPeerCertificate().issuer.CN); s.end();\n\
           }});\n\
         }}).catch(e => {{ console.error(e); process.exit(1); }});\n",
        port = s.upstream.addr.port()
    );
    let out = run(&s, &[API], "127.0.0.3", &["node", "-e", &node]);
    assert_eq!(
        assert_ok(&out, "node fetch"),
        "hello over tls\nagentguard local CA\n"
    );

    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.path == "/hello" && r.host.starts_with(API))
    );
    let entries = s.daemon.connections();
    assert!(
        entries
            .iter()
            .all(|e| e["decision"] == "intercept" && e["identity"]["agent"] == AGENT),
        "{entries:?}"
    );
}

#[test]
fn http2_and_multi_mebibyte_bodies_stream_both_ways() {
    let s = setup("");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    // 6 MiB of incompressible data.
    let mut data = vec![0u8; 6 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&input, &data).unwrap();
    let input = input.display().to_string();

    for (flag, expected_version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let output = dir.path().join(format!("out{flag}.bin"));
        let output = output.display().to_string();
        let out = run(
            &s,
            &[API],
            "127.0.0.3",
            &[
                "curl",
                "-sS",
                flag,
                "-m",
                "30",
                "--data-binary",
                &format!("@{input}"),
                "-o",
                &output,
                "-w",
                "%{http_version}",
                &s.upstream.url("/echo"),
            ],
        );
        assert_eq!(assert_ok(&out, "curl echo"), expected_version);
        assert!(
            std::fs::read(&output).unwrap() == data,
            "{flag}: body changed in transit"
        );
    }
    // Each request reached the upstream in the protocol the agent spoke:
    // HTTP/2 negotiated with the upstream for the HTTP/2 agent, HTTP/1.1
    // kept for the HTTP/1.1 one.
    let versions: Vec<String> = s
        .upstream
        .seen()
        .iter()
        .map(|r| r.version.clone())
        .collect();
    assert_eq!(versions, ["HTTP/2.0", "HTTP/1.1"]);
}

#[test]
fn sse_events_reach_the_client_one_by_one() {
    let s = setup("");
    let mut child = s
        .daemon
        .exec_resolving(
            AGENT,
            &[API],
            "127.0.0.3",
            &["curl", "-sSN", "-m", "30", &s.upstream.url("/sse")],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !line.is_empty() && tx.send(line).is_err() {
                break;
            }
        }
    });
    // The upstream sends event n+1 only after the client has printed event
    // n: a proxy that buffered the response would never deliver event 0.
    for n in 0..SSE_EVENTS {
        s.upstream.release_sse_event();
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!("event {n} did not reach the client before the next was sent")
            });
        assert_eq!(line, format!("data: event-{n}"));
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn websocket_echo_round_trips() {
    let s = setup("");
    let url = format!("wss://{API}:{}/ws", s.upstream.addr.port());
    let node = format!(
        "const ws = new WebSocket('{url}');\n\
         const timer = setTimeout(() => {{ console.error('timeout'); process.exit(2); }}, 10000);\n\
         ws.onopen = () => ws.send('ping through agentguard');\n\
         ws.onmessage = (e) => {{ console.log(e.data); clearTimeout(timer); ws.close(); }};\n\
         ws.onerror = (e) => {{ console.error('websocket error', e.message); process.exit(1); }};\n"
    );
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &[
            "node",
            "--experimental-websocket",
            "--no-warnings",
            "-e",
            &node,
        ],
    );
    assert_eq!(
        assert_ok(&out, "node websocket"),
        "ping through agentguard\n"
    );
    assert!(s.upstream.seen().iter().any(|r| r.path == "/ws"));
}

#[test]
fn passthrough_hosts_are_relayed_without_termination() {
    // The agent resolves the passthrough host through agentguard's resolver
    // (forwarding to this loopback stand-in for the host's DNS).
    let dns = DnsUpstream::start(
        "127.0.0.1",
        &[(PASS, std::net::Ipv4Addr::new(127, 0, 0, 4))],
    );
    let dns_addr = dns.addr.to_string();
    let s = setup_with_args(
        &format!("[[passthrough]]\nhost = \"{PASS}\"\n"),
        &["--dns-upstream", &dns_addr],
    );
    let passthrough = TlsUpstream::start("127.0.0.4", PASS, &s.ca);
    // Trusting only the test upstream CA: the handshake succeeds only if the
    // client sees the upstream's own certificate.
    let ca = s.ca.pem_path.display().to_string();
    let out = s
        .daemon
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
                &ca,
                &passthrough.url("/"),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(assert_ok(&out, "curl passthrough"), "hello over tls");
    assert!(text(&out.stderr).contains("CN=agentguard test upstream CA"));
    assert_eq!(passthrough.seen().len(), 1);
    let entries = s.daemon.connections();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["decision"], "passthrough");
    assert_eq!(dns.asked(), vec![PASS.to_owned()]);
}

#[test]
fn a_passthrough_name_on_another_address_is_refused() {
    // The agent writes the passthrough SNI on a hello to an address
    // agentguard never gave it for that name (here via its own hosts file):
    // relaying would be a tunnel to anywhere, so the connection is refused.
    let s = setup(&format!("[[passthrough]]\nhost = \"{PASS}\"\n"));
    let elsewhere = TlsUpstream::start("127.0.0.5", PASS, &s.ca);
    let ca = s.ca.pem_path.display().to_string();
    let out = run(
        &s,
        &[PASS],
        "127.0.0.5",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "--cacert",
            &ca,
            &elsewhere.url("/"),
        ],
    );
    assert!(!out.status.success(), "relayed: {}", text(&out.stdout));
    assert_eq!(elsewhere.handshakes(), 0, "bytes reached the other address");
    let entries = s.daemon.connections();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["decision"], "refuse");
    assert!(
        entries[0]["reason"]
            .as_str()
            .unwrap()
            .contains("was not resolved to 127.0.0.5"),
        "{entries:?}"
    );
}

#[test]
fn misdirected_requests_get_421_and_untrusted_upstreams_502() {
    let s = setup("");
    // Host disagrees with SNI: domain fronting is refused.
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "-i",
            "-H",
            "Host: other.agentguard.test",
            &s.upstream.url("/"),
        ],
    );
    let response = assert_ok(&out, "curl 421");
    assert!(response.starts_with("HTTP/2 421"), "{response}");
    assert!(
        response.contains("x-agentguard-decision: refuse"),
        "{response}"
    );
    assert!(
        response.contains(&format!("\"agent\":\"{AGENT}\"")),
        "{response}"
    );
    assert!(s.upstream.seen().is_empty());

    // An upstream whose certificate the daemon cannot verify.
    let dir = tempfile::tempdir().unwrap();
    let rogue_ca = TestCa::new("rogue CA", dir.path());
    let rogue = TlsUpstream::start("127.0.0.5", "rogue.agentguard.test", &rogue_ca);
    let out = run(
        &s,
        &["rogue.agentguard.test"],
        "127.0.0.5",
        &["curl", "-sS", "-m", "10", "-i", &rogue.url("/")],
    );
    let response = assert_ok(&out, "curl 502");
    assert!(response.starts_with("HTTP/2 502"), "{response}");
    assert!(
        response.contains("upstream certificate verification failed"),
        "{response}"
    );
    assert!(
        rogue.seen().is_empty(),
        "a request reached the unverified upstream"
    );
}

#[test]
fn garbage_and_sni_less_connections_are_closed_and_others_still_served() {
    let s = setup("");
    let port = s.upstream.addr.port();
    // Each connection is redirected to the proxy; each must be closed
    // without an answer.
    let script = format!(
        "import socket, ssl\n\
         def probe(payload):\n\
         \x20   c = socket.create_connection(('127.0.0.3', {port}), timeout=15)\n\
         \x20   c.sendall(payload)\n\
         \x20   try:\n\
         \x20       print('closed' if c.recv(100) == b'' else 'answered')\n\
         \x20   except ConnectionResetError:\n\
         \x20       # Closing a socket with unread bytes sends RST (RFC 2525 2.17).\n\
         \x20       print('closed')\n\
         probe(bytes([0x16, 0x03, 0x01, 0x00, 0x40]) + bytes(range(64)))\n\
         probe(bytes(range(200)))\n\
         ctx = ssl.create_default_context()\n\
         ctx.check_hostname = False\n\
         try:\n\
         \x20   ctx.wrap_socket(socket.create_connection(('127.0.0.3', {port}), timeout=15))\n\
         \x20   print('handshake completed')\n\
         except (ssl.SSLError, ConnectionError, OSError):\n\
         \x20   print('closed')\n"
    );
    let out = run(&s, &[API], "127.0.0.3", &["python3", "-c", &script]);
    assert_eq!(assert_ok(&out, "python probes"), "closed\nclosed\nclosed\n");

    let reasons: Vec<String> = s
        .daemon
        .connections()
        .iter()
        .filter(|e| e["decision"] == "refuse")
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].starts_with("malformed TLS ClientHello"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("unknown protocol"), "{reasons:?}");
    assert!(reasons[2].contains("without SNI"), "{reasons:?}");
    assert_eq!(s.upstream.handshakes(), 0);

    // The daemon still serves everyone else.
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &["curl", "-sS", "-m", "10", &s.upstream.url("/")],
    );
    assert_eq!(assert_ok(&out, "curl after garbage"), "hello over tls");
}

#[test]
fn the_exported_ca_is_the_one_clients_verify_against() {
    let s = setup("");
    let out = std::process::Command::new(crate::common::AGENTGUARD)
        .args(["ca", "export", "--state-dir"])
        .arg(s.daemon.state_dir())
        .output()
        .unwrap();
    let pem = assert_ok(&out, "ca export");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let dir = tempfile::tempdir().unwrap();
    let exported = dir.path().join("agentguard-ca.pem");
    std::fs::write(&exported, &pem).unwrap();
    // Trusting only the exported CA (not the bundle exec sets up) works.
    let exported = exported.display().to_string();
    let out = run(
        &s,
        &[API],
        "127.0.0.3",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "--cacert",
            &exported,
            &s.upstream.url("/"),
        ],
    );
    assert_eq!(assert_ok(&out, "curl --cacert exported"), "hello over tls");
}

/// A client that keeps its TLS session resumes it on its next connection
/// (agentguard issues session tickets), and the resumed connection is
/// intercepted and answered like the first: the agent is who the kernel
/// says, whatever the session.
#[test]
fn agents_resume_tls_sessions_and_stay_intercepted() {
    let s = setup("");
    let script = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         session = None\n\
         for i in range(3):\n\
         \x20   raw = socket.create_connection(('{API}', {port}), timeout=10)\n\
         \x20   t = ctx.wrap_socket(raw, server_hostname='{API}', session=session)\n\
         \x20   t.sendall(b'GET /hello HTTP/1.1\\r\\nHost: {API}\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20   data = b''\n\
         \x20   while True:\n\
         \x20       chunk = t.recv(65536)\n\
         \x20       if not chunk: break\n\
         \x20       data += chunk\n\
         \x20   print(t.version(), t.session_reused, data.split(b'\\r\\n')[0].decode(), data.endswith(b'hello over tls'))\n\
         \x20   session = t.session\n\
         \x20   t.close()\n",
        port = s.upstream.addr.port()
    );
    let out = run(&s, &[API], "127.0.0.3", &["python3", "-c", &script]);
    assert_eq!(
        assert_ok(&out, "python ssl"),
        "TLSv1.3 False HTTP/1.1 200 OK True\n\
         TLSv1.3 True HTTP/1.1 200 OK True\n\
         TLSv1.3 True HTTP/1.1 200 OK True\n"
    );
    assert_eq!(s.upstream.seen().len(), 3);
    let entries = s.daemon.connections();
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert!(
        entries
            .iter()
            .all(|e| e["decision"] == "intercept" && e["identity"]["agent"] == AGENT),
        "{entries:?}"
    );
}
