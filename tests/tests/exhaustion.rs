//! Exhaustion and faults: a disk that fills under the audit store, one
//! agent holding every connection it can, upstreams that accept and never
//! answer, policy files written in place.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{
    AGENTGUARD, ALLOW_LOOPBACK_TEST_HOSTS, Daemon, Upstream, alone, require_root, text,
};

/// Requests one at a time, each on a new connection; prints the index of
/// each answered one, and `stalled` when one is not answered in time.
const SEQUENTIAL_AGENT: &str = r#"
import sys, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    try:
        urllib.request.urlopen(f"{base}seq/{i}", timeout=4).read()
    except Exception as e:
        print("stalled", i, e, flush=True)
        break
    print(i, flush=True)
"#;

/// The agent's output, line by line, as it comes.
fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

fn audit_cli(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(AGENTGUARD)
        .arg("audit")
        .args(args)
        .arg("--state-dir")
        .arg(daemon.state_dir())
        .output()
        .unwrap()
}

/// Fills the filesystem holding `dir` (a test tmpfs) to the last byte.
fn fill(dir: &std::path::Path) {
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", dir.join("filler").display()))
        .output()
        .unwrap();
    // dd stops with ENOSPC: that is the point.
    assert!(
        text(&out.stderr).contains("No space left"),
        "dd: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_full_disk_holds_agents_back_at_once_and_kill_9_loses_little() {
    require_root();
    // Hundreds of connections or requests, and limits timed in seconds.
    let _alone = alone();
    const REQUESTS: usize = 1500;
    const BATCH_MAX: usize = 64;
    const FILL_AT: usize = 300;
    let upstream = Upstream::start("127.0.0.2");
    // Batches of at most 64 events: the loss bound below is in events,
    // whatever the machine's speed.
    let mut daemon = Daemon::builder(&["diskfull"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&[
            "--audit-flush-interval",
            "200ms",
            "--audit-batch-max",
            &BATCH_MAX.to_string(),
        ])
        .state_tmpfs("24m")
        .start();
    let base = format!("http://{}/", upstream.addr);
    let mut agent = daemon
        .exec(
            "diskfull",
            &[
                "python3",
                "-c",
                SEQUENTIAL_AGENT,
                &base,
                &REQUESTS.to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut agent);
    let mut answered: Vec<usize> = Vec::new();
    let mut stalled = None;
    let mut filled_after = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) if line.starts_with("stalled") => {
                stalled = Some(line);
                break;
            }
            Ok(line) => answered.push(line.parse().expect("an index")),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if answered.len() == FILL_AT && filled_after.is_none() {
            fill(&daemon.state_dir());
            filled_after = Some(answered.len());
        }
    }
    let filled_after = filled_after.expect("the agent answered requests before the fill");
    let status = daemon.status();
    eprintln!(
        "{} answered, {} of them after the disk filled; agent: {stalled:?}; audit: {}",
        answered.len(),
        answered.len() - filled_after,
        status["audit"]
    );
    // The writer could not commit, and said so.
    assert_eq!(status["audit"]["commit"]["state"], "failing", "{status}");
    assert!(status["audit"]["write_errors"].as_u64().unwrap() > 0);
    // Agents were held back at once: the agent's next request waited
    // instead of being answered until the 4,096-event queue filled.
    assert!(
        stalled.is_some(),
        "the agent was answered {} times after the disk filled",
        answered.len() - filled_after
    );

    daemon.kill9();
    let _ = agent.kill();
    let _ = agent.wait();
    std::fs::remove_file(daemon.state_dir().join("filler")).unwrap();
    let out = audit_cli(&daemon, &["query", "--format", "json", "--limit", "100000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recorded: std::collections::HashSet<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "request")
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect();
    let lost: Vec<usize> = answered
        .iter()
        .copied()
        .filter(|i| !recorded.contains(&format!("/seq/{i}")))
        .collect();
    eprintln!(
        "kill -9: {} answered, {} of those not in the record: {lost:?}",
        answered.len(),
        lost.len()
    );
    // One request at a time: the record keeps a prefix of the run, and
    // what is missing is its end: the batch the failing commit held (two
    // events a request), not every request answered until the queue
    // filled.
    let kept = answered.len() - lost.len();
    assert_eq!(
        lost,
        answered[kept..],
        "the record is not a prefix of the run"
    );
    assert!(
        lost.len() <= BATCH_MAX,
        "{} answered requests unrecorded",
        lost.len()
    );
    let out = audit_cli(&daemon, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// Two requests on one keep-alive connection: the first answered; after a
/// line on stdin, a connection opened and closed unused (an event for the
/// store to fail to commit); after another, a second request it gives up
/// on after a second, closing the connection.
const IMPATIENT_AGENT: &str = r#"
import http.client, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection(host, port, timeout=5)
c.request("GET", "/first")
r = c.getresponse()
r.read()
print(r.status, flush=True)
sys.stdin.readline()
socket.create_connection((host, port), timeout=5).close()
print("poked", flush=True)
sys.stdin.readline()
c.sock.settimeout(1)
c.request("GET", "/second")
try:
    print(c.getresponse().status, flush=True)
except (socket.timeout, TimeoutError):
    print("gave up", flush=True)
c.close()
"#;

#[test]
fn a_request_that_waited_for_the_store_is_not_sent_once_its_agent_left() {
    require_root();
    let _alone = alone();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::builder(&["impatient"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&["--audit-flush-interval", "200ms"])
        .state_tmpfs("24m")
        .start();
    let mut agent = daemon
        .exec(
            "impatient",
            &[
                "python3",
                "-c",
                IMPATIENT_AGENT,
                &upstream.addr.ip().to_string(),
                &upstream.addr.port().to_string(),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut agent);
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, "200");
    // With the disk full, the next events (those of a connection the
    // agent opens and closes) fail to commit: the store stops admitting,
    // and the agent's next request waits before it goes.
    fill(&daemon.state_dir());
    use std::io::Write as _;
    let mut stdin = agent.stdin.take().unwrap();
    stdin.write_all(b"poke\n").unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "poked");
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.status()["audit"]["commit"]["state"] != "failing" {
        assert!(Instant::now() < deadline, "{}", daemon.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let gave_up = rx.recv_timeout(Duration::from_secs(10));
    let out = agent.wait_with_output().unwrap();
    assert_eq!(
        gave_up.as_deref().ok(),
        Some("gave up"),
        "agent: {}",
        text(&out.stderr)
    );
    assert!(out.status.success());
    std::fs::remove_file(daemon.state_dir().join("filler")).unwrap();

    // The store commits again; the waiting request is refused, not sent.
    let events = daemon.wait_for_events("the second request's record", |e| {
        e.iter()
            .any(|e| e["kind"] == "request" && e["path"] == "/second")
    });
    let second = events
        .iter()
        .find(|e| e["kind"] == "request" && e["path"] == "/second")
        .unwrap();
    assert_eq!(second["rule"], "agent-left", "{second}");
    assert_eq!(second["status"], 499, "{second}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upstream.hits(), 1, "only the first request went upstream");
}

/// Requests one at a time for `seconds`, printing each status code.
const STEADY_AGENT: &str = r#"
import sys, time, urllib.request, urllib.error
base, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    try:
        code = urllib.request.urlopen(f"{base}steady/{i}", timeout=10).status
    except urllib.error.HTTPError as e:
        code = e.code
    print(code, flush=True)
    i += 1
    time.sleep(0.02)
"#;

#[test]
fn a_policy_written_in_place_slowly_is_loaded_only_whole() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&["inplace"]);
    let path = daemon.policy_path("inplace");
    let original = std::fs::read_to_string(&path).unwrap();
    let base = format!("http://{}/", upstream.addr);
    let agent = daemon
        .exec("inplace", &["python3", "-c", STEADY_AGENT, &base, "9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Rewrite the file in place (truncate, then write), a few lines at a
    // time with pauses: its prefixes are valid TOML, the first ones an
    // agent with no tools at all, which denies everything.
    let new = format!("{original}\n# edited in place\n");
    let mut file = std::fs::File::create(&path).unwrap();
    let lines: Vec<&str> = new.split_inclusive('\n').collect();
    for chunk in lines.chunks(4) {
        use std::io::Write as _;
        file.write_all(chunk.concat().as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(1200));
    }
    drop(file);
    let status = daemon.wait_for_reload(true);
    let out = agent.wait_with_output().unwrap();
    let codes: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    let refused = codes.iter().filter(|c| *c != "200").count();
    eprintln!(
        "{} requests, {refused} not 200; last reload: {}",
        codes.len(),
        status["last_reload"]
    );
    assert!(
        codes.len() > 50,
        "the agent made too few requests: {codes:?}"
    );
    assert_eq!(
        refused, 0,
        "requests refused while the policy was being written: {codes:?}"
    );
    // The whole new file, and nothing before it, was loaded.
    let reloads: Vec<Value> = daemon
        .audit_events()
        .into_iter()
        .filter(|e| e["kind"] == "policy_reload")
        .collect();
    assert!(
        reloads.iter().all(|e| e["decision"] == "accept"),
        "a prefix was read: {reloads:#?}"
    );
}

/// What a [`Misbehaving`] upstream does once it has read a request head.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Never answers.
    Silent,
    /// Sends a head announcing 100 bytes, then 10 of them, then nothing.
    StallMidBody,
    /// A chunked body of `pieces` pieces, `gap` apart.
    Drip { pieces: usize, gap: Duration },
    /// Answers 200 after `Duration`.
    Late(Duration),
    /// Accepts TCP and never reads or writes (a TLS handshake stalls).
    Mute,
}

/// A loopback upstream that accepts and then misbehaves as told. Each
/// connection is held at most 60 s, or until the server is dropped.
struct Misbehaving {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Misbehaving {
    fn start(ip: &str, behaviour: Behaviour) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                for stream in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let stop = stop.clone();
                    std::thread::spawn(move || misbehave(stream, behaviour, &stop));
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Misbehaving {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn misbehave(
    mut stream: std::net::TcpStream,
    behaviour: Behaviour,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read as _, Write as _};
    let hold = || {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    if let Behaviour::Mute = behaviour {
        return hold();
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    match behaviour {
        Behaviour::Silent | Behaviour::Mute => hold(),
        Behaviour::StallMidBody => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\n0123456789",
            );
            hold();
        }
        Behaviour::Drip { pieces, gap } => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            );
            for i in 0..pieces {
                std::thread::sleep(gap);
                let piece = format!("piece{i}");
                let _ = stream.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes());
            }
            let _ = stream.write_all(b"0\r\n\r\n");
        }
        Behaviour::Late(after) => {
            std::thread::sleep(after);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nlate",
            );
        }
    }
}

/// A tool for everything on 127.0.0.2 with short upstream limits.
const IMPATIENT_TOOL: &str = r#"
[[tool]]
name = "test.impatient"
host = "127.0.0.2"
methods = ["GET"]
paths = ["/", "/*"]
timeouts = { response_head = "2s", body_idle = "2s" }
"#;

/// `curl` as the agent: (exit code, HTTP status) of one GET.
fn curl_status(daemon: &Daemon, agent: &str, url: &str) -> (Option<i32>, String) {
    let out = daemon
        .exec(
            agent,
            &[
                "curl",
                "-sS",
                "-m",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ],
        )
        .output()
        .unwrap();
    (out.status.code(), text(&out.stdout))
}

#[test]
fn an_upstream_that_never_answers_gets_a_504_at_the_tools_limit() {
    require_root();
    let silent = Misbehaving::start("127.0.0.2", Behaviour::Silent);
    let daemon = Daemon::builder(&["impatient"])
        .policy(IMPATIENT_TOOL)
        .start();
    let started = Instant::now();
    let (code, status) = curl_status(
        &daemon,
        "impatient",
        &format!("http://{}/slow", silent.addr),
    );
    eprintln!("curl {code:?} {status} after {:?}", started.elapsed());
    assert_eq!((code, status.as_str()), (Some(0), "504"));
    let events = daemon.wait_for_events("the 504's event", |e| {
        e.iter()
            .any(|e| e["kind"] == "request" && e["status"] == 504)
    });
    let event = events.iter().find(|e| e["status"] == 504).unwrap();
    assert_eq!(event["rule"], "upstream-timeout", "{event}");
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains("no response head within 2s"),
        "{event}"
    );
}

#[test]
fn a_body_that_stalls_is_cut_and_one_that_trickles_flows() {
    require_root();
    let stalling = Misbehaving::start("127.0.0.2", Behaviour::StallMidBody);
    let dripping = Misbehaving::start(
        "127.0.0.2",
        Behaviour::Drip {
            pieces: 3,
            gap: Duration::from_millis(1200),
        },
    );
    let daemon = Daemon::builder(&["trickle"]).policy(IMPATIENT_TOOL).start();
    // Stalled after 10 of 100 bytes: cut after the 2 s gap, well before
    // curl's own 20 s (curl 18: transfer closed with data outstanding).
    let (code, status) = curl_status(
        &daemon,
        "trickle",
        &format!("http://{}/stall", stalling.addr),
    );
    assert_eq!((code, status.as_str()), (Some(18), "200"));
    // Gaps of 1.2 s, each within the 2 s limit, 3.6 s in all: it flows.
    let out = daemon
        .exec(
            "trickle",
            &[
                "curl",
                "-sS",
                "-m",
                "20",
                &format!("http://{}/drip", dripping.addr),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "piece0piece1piece2",
        "{}",
        text(&out.stderr)
    );

    let events = daemon.wait_for_events("both requests' events", |e| {
        e.iter().filter(|e| e["kind"] == "request").count() >= 2
    });
    let stalled = events.iter().find(|e| e["path"] == "/stall").unwrap();
    assert!(
        stalled["reason"]
            .as_str()
            .unwrap()
            .contains("the upstream sent no response body bytes for 2s"),
        "{stalled}"
    );
    assert_eq!(stalled["bytes_out"], 10, "{stalled}");
    let dripped = events.iter().find(|e| e["path"] == "/drip").unwrap();
    assert_eq!(dripped["bytes_out"], 18, "{dripped}");
}

#[test]
fn a_tls_upstream_that_never_handshakes_gets_a_504() {
    require_root();
    let mute = Misbehaving::start("127.0.0.2", Behaviour::Mute);
    let daemon = Daemon::builder(&["handshake"])
        .policy(
            r#"
[[tool]]
name = "test.mute"
host = "mute.agentguard.test"
methods = ["GET"]
paths = ["/*"]
"#,
        )
        .args(&["--upstream-tls-timeout", "2s"])
        .start();
    let url = format!("https://mute.agentguard.test:{}/x", mute.addr.port());
    let out = daemon
        .exec_resolving(
            "handshake",
            &["mute.agentguard.test"],
            "127.0.0.2",
            &[
                "curl",
                "-sS",
                "-m",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        )
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "504", "{}", text(&out.stderr));
    let events = daemon.wait_for_events("the 504's event", |e| {
        e.iter()
            .any(|e| e["kind"] == "request" && e["status"] == 504)
    });
    let event = events.iter().find(|e| e["status"] == 504).unwrap();
    assert_eq!(event["rule"], "upstream-timeout", "{event}");
    assert!(
        event["reason"]
            .as_str()
            .unwrap()
            .contains("TLS handshake did not finish within 2s"),
        "{event}"
    );
}

/// Fires `n` GETs at once and prints each status code.
const CONCURRENT_AGENT: &str = r#"
import sys, threading, urllib.request, urllib.error
url, n = sys.argv[1], int(sys.argv[2])
codes = []
def get(i):
    try:
        codes.append(urllib.request.urlopen(f"{url}{i}", timeout=20).status)
    except urllib.error.HTTPError as e:
        codes.append(e.code)
threads = [threading.Thread(target=get, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(str(c) for c in sorted(codes)))
"#;

#[test]
fn an_agent_gets_429_beyond_its_requests_in_flight_and_slow_requests_outlive_the_idle_limit() {
    require_root();
    // Each answer takes 3 s: longer than the 1 s client timeout, which
    // must not cut a request in flight.
    let late = Misbehaving::start("127.0.0.2", Behaviour::Late(Duration::from_secs(3)));
    let daemon = Daemon::builder(&["busy"])
        .policy(&format!(
            "[agent.limits]\nrequests = 2\n{ALLOW_LOOPBACK_TEST_HOSTS}"
        ))
        .args(&["--client-timeout", "1s"])
        .start();
    let out = daemon
        .exec(
            "busy",
            &[
                "python3",
                "-c",
                CONCURRENT_AGENT,
                &format!("http://{}/r", late.addr),
                "5",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "200 200 429 429 429",
        "{}",
        text(&out.stderr)
    );
    let events = daemon.wait_for_events("five request events", |e| {
        e.iter().filter(|e| e["kind"] == "request").count() >= 5
    });
    let refused: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "request" && e["status"] == 429)
        .collect();
    assert_eq!(refused.len(), 3, "{events:#?}");
    for e in refused {
        assert_eq!(e["rule"], "agent-request-limit", "{e}");
        assert_eq!(e["decision"], "refuse", "{e}");
    }
}

/// Opens TLS connections to the proxy that never send a request, and
/// reports for each whether the proxy closed it within `wait` seconds.
const IDLE_TLS_AGENT: &str = r#"
import socket, ssl, sys, time
name, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cases = [("http/1.1", b""), ("h2", b""), ("h2", b"PRI * HTTP/2.0\r\n")]
socks = []
for alpn, first in cases:
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols([alpn])
    s = ctx.wrap_socket(socket.create_connection((name, port), timeout=10), server_hostname=name)
    if first:
        s.sendall(first)
    socks.append((alpn, first, s))
end = time.monotonic() + wait
for alpn, first, s in socks:
    s.settimeout(max(0.1, end - time.monotonic()))
    state = "open"
    try:
        while True:
            if not s.recv(4096):
                state = "closed"
                break
    except (socket.timeout, TimeoutError):
        state = "open"
    except (ConnectionResetError, ssl.SSLError):
        state = "closed"
    print(alpn, "partial" if first else "nothing", state, flush=True)
"#;

#[test]
fn connections_that_never_send_a_request_are_closed() {
    require_root();
    let daemon = Daemon::builder(&["idler"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&["--client-timeout", "2s"])
        .start();
    // Nothing listens behind the name: the proxy never dials the upstream
    // for a connection that sends no request.
    let out = daemon
        .exec_resolving(
            "idler",
            &["idle.agentguard.test"],
            "127.0.0.2",
            &[
                "python3",
                "-c",
                IDLE_TLS_AGENT,
                "idle.agentguard.test",
                "443",
                "15",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "http/1.1 nothing closed\nh2 nothing closed\nh2 partial closed\n",
        "{}",
        text(&out.stderr)
    );
}

/// Opens `n` connections that send half a request head, holds them
/// `hold` seconds, then says how many the proxy kept open.
const HOG_AGENT: &str = r#"
import socket, sys, time
ip, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks = []
for i in range(n):
    try:
        s = socket.create_connection((ip, port), timeout=5)
        s.sendall(b"GET /hog HTTP/1.1\r\n")
        socks.append(s)
    except OSError as e:
        print("connect failed after", i, e, flush=True)
        break
print("opened", len(socks), flush=True)
time.sleep(hold)
alive = 0
for s in socks:
    s.setblocking(False)
    try:
        if s.recv(1):
            alive += 1
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print("alive", alive, flush=True)
"#;

/// Runs `cmd`, killing it after `limit`: `None` if it had to be killed.
fn output_within(mut cmd: Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn an_agent_holding_every_connection_it_can_stops_neither_others_nor_status() {
    require_root();
    // Hundreds of connections or requests, and limits timed in seconds.
    let _alone = alone();
    // 600 descriptors: 256 kept in reserve, a budget of 344 proxy sockets,
    // and a default share of a quarter of it (86) per agent.
    const NOFILE: u64 = 600;
    const SHARE: usize = 86;
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::builder(&["hog", "other"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .nofile(NOFILE)
        .start();
    let mut hog = daemon
        .exec(
            "hog",
            &[
                "python3",
                "-c",
                HOG_AGENT,
                "127.0.0.2",
                &upstream.addr.port().to_string(),
                "700",
                "8",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines(&mut hog);
    let opened = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the hog opened its connections");
    eprintln!("hog: {opened}");

    // Another agent is served, and the operator's status answers.
    let out = output_within(
        daemon.exec("other", &["curl", "-sS", "-m", "5", &upstream.url()]),
        Duration::from_secs(10),
    )
    .expect("the other agent's curl finished");
    assert!(out.status.success(), "other agent: {}", text(&out.stderr));
    let mut status = Command::new(AGENTGUARD);
    status
        .args(["status", "--admin-socket"])
        .arg(&daemon.admin_socket);
    let out = output_within(status, Duration::from_secs(10)).expect("status answered");
    assert!(out.status.success(), "status: {}", text(&out.stderr));

    let alive = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the hog's count");
    let _ = hog.wait();
    eprintln!("hog: {alive}");
    let alive: usize = alive.trim_start_matches("alive ").parse().unwrap();
    assert!(alive <= SHARE, "the hog kept {alive} connections");
    let events = daemon.audit_events();
    let capped = events
        .iter()
        .filter(|e| e["kind"] == "connection" && e["rule"] == "agent-connection-limit")
        .count();
    assert!(capped > 0, "no connection refused at the cap");
    let refusal = events
        .iter()
        .find(|e| e["rule"] == "agent-connection-limit")
        .unwrap();
    assert_eq!(refusal["agent"], "hog", "{refusal}");
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("holds {SHARE} connections")),
        "{refusal}"
    );
}

/// Sends a request head announcing a 100-byte body, then 10 bytes of it,
/// then nothing; prints the status line it gets back, or `no answer`.
const STALLED_UPLOAD_AGENT: &str = r#"
import socket, ssl, sys
host, ip, port, tls = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "tls"
s = socket.create_connection((ip, port), timeout=10)
if tls:
    s = ssl.create_default_context().wrap_socket(s, server_hostname=host)
s.sendall(f"POST /reflect HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n0123456789".encode())
s.settimeout(15)
try:
    print(s.recv(4096).split(b"\r\n")[0].decode())
except (socket.timeout, TimeoutError):
    print("no answer")
"#;

#[test]
fn an_agent_that_stops_sending_its_body_gets_a_408() {
    require_root();
    let silent = Misbehaving::start("127.0.0.2", Behaviour::Silent);
    let daemon = Daemon::builder(&["uploader"])
        .policy(&format!(
            r#"
[[credential]]
id = "tool-token"
source = {{ jwt = {{ audience = "itsm" }} }}
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}

[[tool]]
name = "tool.jwt"
host = "jwt.agentguard.test"
methods = ["POST"]
paths = ["/reflect"]
credential = "tool-token"

[[tool]]
name = "tool.body"
host = "body.agentguard.test"
methods = ["POST"]
paths = ["/reflect"]
when = 'request.body.kind == "ok"'
{ALLOW_LOOPBACK_TEST_HOSTS}"#
        ))
        .args(&["--client-timeout", "2s"])
        .start();
    let port = silent.addr.port().to_string();
    // A tool whose condition reads the body: it is read whole before the
    // decision, within the same limit.
    let out = daemon
        .exec_resolving(
            "uploader",
            &["body.agentguard.test"],
            "127.0.0.2",
            &[
                "python3",
                "-c",
                STALLED_UPLOAD_AGENT,
                "body.agentguard.test",
                "body.agentguard.test",
                &port,
                "tls",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "HTTP/1.1 408 Request Timeout",
        "{}",
        text(&out.stderr)
    );
    // A JWT-bound tool: the body is read whole to hash it into the token.
    let out = daemon
        .exec_resolving(
            "uploader",
            &["jwt.agentguard.test"],
            "127.0.0.2",
            &[
                "python3",
                "-c",
                STALLED_UPLOAD_AGENT,
                "jwt.agentguard.test",
                "jwt.agentguard.test",
                &port,
                "tls",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "HTTP/1.1 408 Request Timeout",
        "{}",
        text(&out.stderr)
    );
    // A plain tool: the body streams to the upstream, which waits for the
    // rest; the agent's silence is the agent's, not the upstream's.
    let out = daemon
        .exec(
            "uploader",
            &[
                "python3",
                "-c",
                STALLED_UPLOAD_AGENT,
                "127.0.0.2",
                "127.0.0.2",
                &port,
                "plain",
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "HTTP/1.1 408 Request Timeout",
        "{}",
        text(&out.stderr)
    );
    let events = daemon.wait_for_events("three 408s", |e| {
        e.iter()
            .filter(|e| e["kind"] == "request" && e["status"] == 408)
            .count()
            >= 3
    });
    for e in events.iter().filter(|e| e["status"] == 408) {
        assert_eq!(e["rule"], "body-timeout", "{e}");
    }
}

/// Opens a WebSocket to the upstream (TLS, through the proxy) and holds
/// it; while it is open, tries one more connection with a plain request;
/// then closes the tunnel and tries again. Prints what each try got.
const TUNNEL_AGENT: &str = r#"
import socket, ssl, sys, time
name, port = sys.argv[1], int(sys.argv[2])
def tls():
    s = socket.create_connection((name, port), timeout=10)
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(s, server_hostname=name)
def try_get():
    try:
        s = tls()
        s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        line = s.recv(4096).split(b"\r\n")[0].decode()
        return line or "closed"
    except (OSError, ssl.SSLError) as e:
        return "closed"
ws = tls()
ws.sendall(f"GET /ws HTTP/1.1\r\nHost: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
print(ws.recv(4096).split(b"\r\n")[0].decode(), flush=True)
time.sleep(0.5)
print("while open:", try_get(), flush=True)
ws.close()
time.sleep(1)
print("after close:", try_get(), flush=True)
"#;

#[test]
fn a_websocket_tunnel_keeps_its_place_until_it_closes() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::common::TestCa::new("agentguard limits test CA", dir.path());
    let upstream = crate::common::TlsUpstream::start("127.0.0.3", "api.agentguard.test", &ca);
    let daemon = Daemon::builder(&["tunneler"])
        .policy(
            r#"
[agent.limits]
connections = 1

[[tool]]
name = "test.any"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/", "/*"]
"#,
        )
        .upstream_ca(&ca.pem_path)
        .start();
    let out = daemon
        .exec_resolving(
            "tunneler",
            &["api.agentguard.test"],
            "127.0.0.3",
            &[
                "python3",
                "-c",
                TUNNEL_AGENT,
                "api.agentguard.test",
                &upstream.addr.port().to_string(),
            ],
        )
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "HTTP/1.1 101 Switching Protocols\nwhile open: closed\nafter close: HTTP/1.1 200 OK\n",
        "{}",
        text(&out.stderr)
    );
}

/// Sends each input (hex, one per line on stdin) on its own connection and
/// prints the status line it got back, or `closed`.
const RAW_AGENT: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    data = bytes.fromhex(line.strip())
    s = socket.create_connection((ip, port), timeout=10)
    try:
        s.sendall(data)
        answer = s.recv(4096)
        print(answer.split(b"\r\n")[0].decode(errors="replace") if answer else "closed", flush=True)
    except OSError:
        print("closed", flush=True)
    finally:
        s.close()
"#;

#[test]
fn malformed_http1_requests_are_answered_by_the_proxy_and_never_forwarded() {
    require_root();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::start(&["malformed"]);
    let host = upstream.addr.to_string();
    let head = |rest: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\n{rest}\r\n");
    let inputs: Vec<Vec<u8>> = vec![
        // The control: well-formed, forwarded.
        head("").into(),
        // Framing a proxy and an upstream could read differently.
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!").into(),
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: abc\r\n\r\n").into(),
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n").into(),
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: +5\r\n\r\nhello").into(),
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: gzip\r\n\r\nxx").into(),
        format!("POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n").into(),
        // Header syntax.
        head("X-Folded: a\r\n b\r\n").into(),
        head("Bad Name: x\r\n").into(),
        format!("GET / HTTP/1.1\r\nHost : {host}\r\n\r\n").into(),
        [head("X: ").as_bytes(), b"\x00\r\n\r\n"].concat(),
        // Request line.
        format!("GET /a\x00b HTTP/1.1\r\nHost: {host}\r\n\r\n").into(),
        format!("GET / HTTP/1.1 extra\r\nHost: {host}\r\n\r\n").into(),
        format!("GET / HTTP/9.9\r\nHost: {host}\r\n\r\n").into(),
        format!("GET\t/ HTTP/1.1\r\nHost: {host}\r\n\r\n").into(),
        // No Host at all, and a head too large for the proxy's buffers.
        "GET / HTTP/1.1\r\n\r\n".into(),
        head(&format!("X-Big: {}\r\n", "a".repeat(1 << 20))).into(),
        // The path encodings the policy refuses.
        format!("GET /a%2fb HTTP/1.1\r\nHost: {host}\r\n\r\n").into(),
        format!("GET /a/%2e%2e%2f../b HTTP/1.1\r\nHost: {host}\r\n\r\n").into(),
    ];
    let stdin: String = inputs
        .iter()
        .map(|i| format!("{}\n", hex::encode(i)))
        .collect();
    let mut agent = daemon
        .exec(
            "malformed",
            &[
                "python3",
                "-c",
                RAW_AGENT,
                "127.0.0.2",
                &upstream.addr.port().to_string(),
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        agent
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
    }
    let out = agent.wait_with_output().unwrap();
    let answers: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(answers.len(), inputs.len(), "{}", text(&out.stderr));
    assert!(
        answers[0].starts_with("HTTP/1.1 200"),
        "the well-formed request: {answers:?}"
    );
    for (input, answer) in inputs.iter().zip(&answers).skip(1) {
        let refused = answer == "closed" || answer.starts_with("HTTP/1.1 4");
        assert!(
            refused,
            "{:?} got {answer:?}",
            String::from_utf8_lossy(&input[..input.len().min(120)])
        );
    }
    assert_eq!(
        upstream.hits(),
        1,
        "only the well-formed request reaches the upstream: {answers:?}"
    );
}

/// Opens `n` connections that each send a request head a byte every
/// 200 ms, never finishing it; prints how many the proxy closed within
/// `wait` seconds.
const SLOWLORIS_AGENT: &str = r#"
import socket, sys, time
ip, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks = [socket.create_connection((ip, port), timeout=5) for _ in range(n)]
for s in socks:
    s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
open_ = set(range(n))
end = time.monotonic() + wait
while open_ and time.monotonic() < end:
    for i in list(open_):
        try:
            socks[i].sendall(b"a")
        except OSError:
            open_.discard(i)
    time.sleep(0.2)
print("closed", n - len(open_), "of", n, flush=True)
"#;

#[test]
fn slowloris_heads_are_cut_at_the_client_timeout_and_others_are_served() {
    require_root();
    // Hundreds of connections or requests, and limits timed in seconds.
    let _alone = alone();
    let upstream = Upstream::start("127.0.0.2");
    let daemon = Daemon::builder(&["loris", "bystander"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&["--client-timeout", "2s"])
        .start();
    let loris = daemon
        .exec(
            "loris",
            &[
                "python3",
                "-c",
                SLOWLORIS_AGENT,
                "127.0.0.2",
                &upstream.addr.port().to_string(),
                "50",
                "15",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = daemon
        .exec("bystander", &["curl", "-sS", "-m", "5", &upstream.url()])
        .output()
        .unwrap();
    assert!(out.status.success(), "bystander: {}", text(&out.stderr));
    let out = loris.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stdout).trim(),
        "closed 50 of 50",
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        upstream.hits(),
        1,
        "only the bystander's request reached the upstream"
    );
}
