//! Exports that downstream tools accept, each checked by a tool nobody here
//! wrote: OTLP decoded by the OpenTelemetry project's own Python classes
//! (`opentelemetry-proto`), over TLS with a CA, gzipped, with an auth header
//! and retries as OTLP specifies; OCSF validated against the OCSF schema
//! shipped in `ocsf-json-schema` with `jsonschema`; the Prometheus
//! exposition checked by `promtool check metrics`.

use std::{
    collections::VecDeque,
    convert::Infallible,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::Value;

use crate::common::{
    AGENTGUARD, ALLOW_LOOPBACK_TEST_HOSTS, Daemon, TestCa, Upstream, free_port, http_get, text,
};

/// The validators beside these tests.
fn validator(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/validators")
        .join(name)
}

/// One request the collector received.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The status it answered.
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as the official OTLP classes read it (fails the test if
    /// they cannot).
    fn decoded(&self, dir: &Path) -> Value {
        let file = dir.join(format!("body-{}.bin", rand_suffix()));
        std::fs::write(&file, &self.body).unwrap();
        let out = Command::new("python3")
            .arg(validator("otlp_decode.py"))
            .arg(self.header("content-type").unwrap_or_default())
            .arg(self.header("content-encoding").unwrap_or_default())
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the official OTLP classes refused the body: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst).to_string()
}

/// A loopback OTLP/HTTP collector (hyper, optionally TLS) that keeps what
/// it is sent and answers from a script, then 200.
struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

type Script = Arc<Mutex<VecDeque<(u16, Vec<(&'static str, &'static str)>)>>>;

impl Collector {
    fn start(
        tls: Option<(PathBuf, PathBuf)>,
        script: Vec<(u16, Vec<(&'static str, &'static str)>)>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tls.map(|(cert, key)| {
            let chain = rustls_pemfile::certs(&mut &std::fs::read(cert).unwrap()[..])
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut &std::fs::read(key).unwrap()[..])
                .unwrap()
                .unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(Mutex::new(script.into()));
        {
            let received = received.clone();
            runtime.spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, received, script) =
                        (acceptor.clone(), received.clone(), script.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let (received, script) = (received.clone(), script.clone());
                            async move { Ok::<_, Infallible>(answer(req, &received, &script).await) }
                        });
                        let builder = auto::Builder::new(TokioExecutor::new());
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                                }
                            }
                            None => {
                                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                            }
                        }
                    });
                }
            });
        }
        Self {
            addr,
            received,
            _runtime: runtime,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Polls (bounded: 20 s) until `done` holds for what was received.
    fn wait(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "collector: {what}; got {} requests",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    received: &Mutex<Vec<Received>>,
    script: &Script,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let (status, extra) = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, Vec::new()));
    received.lock().unwrap().push(Received {
        at: Instant::now(),
        path,
        headers,
        body,
        status,
    });
    let mut resp = Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf");
    for (k, v) in extra {
        resp = resp.header(k, v);
    }
    // An empty ExportLogsServiceResponse: full success.
    resp.body(Full::new(Bytes::new())).unwrap()
}

/// The log records of a decoded export request.
fn log_records(decoded: &Value) -> Vec<Value> {
    decoded["resourceLogs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rl| rl["scopeLogs"].as_array().cloned().unwrap_or_default())
        .flat_map(|sl| sl["logRecords"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn attr<'a>(record: &'a Value, key: &str) -> Option<&'a Value> {
    record["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn curl(daemon: &Daemon, agent: &str, url: &str, headers: &[&str]) {
    let mut cmd = vec!["curl", "-sS", "-m", "10"];
    for h in headers {
        cmd.extend(["-H", h]);
    }
    cmd.push(url);
    let out = daemon.exec(agent, &cmd).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn otlp_export_over_tls_decodes_with_the_official_classes_and_retries_as_otlp_says() {
    crate::common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("agentguard test collector CA", dir.path());
    let tls = ca.leaf_files("127.0.0.1", dir.path());
    // The first export is turned away with 503 and Retry-After: 1, its
    // retry with 400 (not retryable: dropped); then everything is taken.
    let collector = Collector::start(
        Some(tls),
        vec![(503, vec![("retry-after", "1")]), (400, vec![])],
    );
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let endpoint = format!("https://127.0.0.1:{}", collector.addr.port());
    let ca_path = ca.pem_path.display().to_string();
    let daemon = Daemon::builder(&["otlp-tls"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&[
            "--metrics-listen",
            &metrics_addr,
            "--audit-checkpoint-interval",
            "300ms",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_path)
        .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "authorization=Bearer%20collector-token,x-scope-orgid=agentguard-test",
        )
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .start();

    // The retry waited for Retry-After; the 400 was not retried.
    let first = collector.wait("a 503, its retry and a 400", |r| r.len() >= 2);
    assert_eq!((first[0].status, first[1].status), (503, 400));
    let waited = first[1].at - first[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    let turned_away = log_records(&first[0].decoded(dir.path()));
    let dropped = log_records(&first[1].decoded(dir.path()));
    let seq = |r: &Value| attr(r, "agentguard.seq").map(|v| v["intValue"].clone());
    assert!(!turned_away.is_empty());
    for r in &turned_away {
        assert!(
            dropped.iter().any(|d| seq(d) == seq(r)),
            "the retry resent {:?}",
            seq(r)
        );
    }

    // Traffic, one request carrying the agent's trace context.
    let upstream = Upstream::start("127.0.0.2");
    let url = format!("http://{}/otlp/traced", upstream.addr);
    curl(
        &daemon,
        "otlp-tls",
        &url,
        &[&format!("traceparent: {TRACEPARENT}")],
    );
    curl(
        &daemon,
        "otlp-tls",
        &format!("http://{}/otlp/plain", upstream.addr),
        &["traceparent: not-a-trace"],
    );
    let got = collector.wait("the two requests and a checkpoint", |r| {
        let all: Vec<Value> = r
            .iter()
            .skip(2)
            .flat_map(|x| log_records(&x.decoded(Path::new("/tmp"))))
            .collect();
        all.iter()
            .filter(|x| x["eventName"] == "agentguard.request")
            .count()
            >= 2
            && all
                .iter()
                .any(|x| x["eventName"] == "agentguard.checkpoint")
    });

    let mut records = Vec::new();
    for r in &got {
        assert_eq!(r.path, "/v1/logs");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("authorization"), Some("Bearer collector-token"));
        assert_eq!(r.header("x-scope-orgid"), Some("agentguard-test"));
        assert!(r.header("user-agent").unwrap().starts_with("agentguard/"));
        let decoded = r.decoded(dir.path());
        let resource = &decoded["resourceLogs"][0]["resource"]["attributes"];
        let res = |k: &str| {
            resource
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["key"] == k)
                .map(|a| a["value"]["stringValue"].clone())
        };
        assert_eq!(res("service.name"), Some(Value::from("agentguard")));
        assert_eq!(
            res("service.version"),
            Some(Value::from(env!("CARGO_PKG_VERSION")))
        );
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(res("host.name"), Some(Value::from(host.trim())));
        assert_eq!(res("deployment.environment"), Some(Value::from("test")));
        if r.status == 200 {
            records.extend(log_records(&decoded));
        }
    }
    // Nothing the 400 carried was sent again.
    for d in &dropped {
        assert!(
            !records.iter().any(|r| seq(r) == seq(d) && seq(d).is_some()),
            "{:?} was resent after a 400",
            seq(d)
        );
    }

    let requests: Vec<&Value> = records
        .iter()
        .filter(|r| r["eventName"] == "agentguard.request")
        .collect();
    let traced = requests
        .iter()
        .find(|r| attr(r, "url.path").unwrap()["stringValue"] == "/otlp/traced")
        .unwrap();
    // Typed attributes, not one JSON string.
    assert!(
        attr(traced, "process.pid").unwrap()["intValue"].is_string(),
        "{traced}"
    );
    assert!(attr(traced, "http.response.status_code").unwrap()["intValue"] == "200");
    assert_eq!(
        attr(traced, "http.request.method").unwrap()["stringValue"],
        "GET"
    );
    assert_eq!(
        attr(traced, "agentguard.agent").unwrap()["stringValue"],
        "otlp-tls"
    );
    assert_eq!(
        attr(traced, "agentguard.decision").unwrap()["stringValue"],
        "allow"
    );
    assert!(attr(traced, "agentguard.seq").unwrap()["intValue"].is_string());
    assert_eq!(
        attr(traced, "destination.port").unwrap()["intValue"],
        upstream.addr.port().to_string()
    );
    // The trace joins.
    assert_eq!(traced["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(traced["spanId"], "00f067aa0ba902b7");
    assert_eq!(
        attr(traced, "agentguard.traceparent").unwrap()["stringValue"],
        TRACEPARENT
    );
    let plain = requests
        .iter()
        .find(|r| attr(r, "url.path").unwrap()["stringValue"] == "/otlp/plain")
        .unwrap();
    assert!(plain.get("traceId").is_none() && attr(plain, "agentguard.traceparent").is_none());
    // And the store kept it, the malformed one not.
    let events = daemon.audit_events();
    let by_path = |p: &str| events.iter().find(|e| e["path"] == p).unwrap()["traceparent"].clone();
    assert_eq!(by_path("/otlp/traced"), TRACEPARENT);
    assert!(by_path("/otlp/plain").is_null());

    // A checkpoint record's body is an anchor for audit verify.
    let checkpoint = records
        .iter()
        .rfind(|r| r["eventName"] == "agentguard.checkpoint")
        .unwrap();
    let anchor = dir.path().join("from-collector.json");
    std::fs::write(&anchor, checkpoint["body"]["stringValue"].as_str().unwrap()).unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["audit", "verify", "--state-dir"])
        .arg(daemon.state_dir())
        .arg("--public-key")
        .arg(daemon.state_dir().join("audit-key/signing.pub"))
        .arg("--anchor")
        .arg(&anchor)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("matches 1 exported checkpoint"),
        "{}",
        text(&out.stdout)
    );

    // The counts: retried once, the 400's records rejected.
    let metrics = http_get(metrics_port, "/metrics");
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not in:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("agentguard_otlp_failures_total"), 1);
    // Events, not the checkpoint records that went with them.
    let dropped_events = dropped
        .iter()
        .filter(|r| r["eventName"] != "agentguard.checkpoint")
        .count();
    assert_eq!(
        value("agentguard_otlp_rejected_total"),
        dropped_events as u64
    );
    assert!(value("agentguard_otlp_exported_total") >= 4);
    assert!(value("agentguard_otlp_checkpoints_exported_total") >= 1);
}

#[test]
fn otlp_json_export_decodes_with_the_official_classes() {
    crate::common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(None, vec![]);
    let endpoint = format!("http://{}", collector.addr);
    let daemon = Daemon::builder(&["otlp-json"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&["--otlp-endpoint", &endpoint, "--otlp-protocol", "http/json"])
        .start();
    let upstream = Upstream::start("127.0.0.2");
    curl(
        &daemon,
        "otlp-json",
        &format!("http://{}/json", upstream.addr),
        &[&format!("traceparent: {TRACEPARENT}")],
    );
    let got = collector.wait("the request", |r| {
        r.iter()
            .flat_map(|x| log_records(&x.decoded(Path::new("/tmp"))))
            .any(|x| x["eventName"] == "agentguard.request")
    });
    for r in &got {
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("content-encoding"), None);
    }
    let request = got
        .iter()
        .flat_map(|r| log_records(&r.decoded(dir.path())))
        .find(|x| x["eventName"] == "agentguard.request")
        .unwrap();
    assert_eq!(request["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(attr(&request, "url.path").unwrap()["stringValue"], "/json");
}

#[test]
fn promtool_accepts_the_metrics_exposition() {
    crate::common::require_root();
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let collector = Collector::start(None, vec![]);
    let endpoint = format!("http://{}", collector.addr);
    let anchors = tempfile::tempdir().unwrap();
    let daemon = Daemon::builder(&["prom"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&[
            "--metrics-listen",
            &metrics_addr,
            "--otlp-endpoint",
            &endpoint,
            "--audit-anchor-dir",
            anchors.path().to_str().unwrap(),
        ])
        .start();
    let upstream = Upstream::start("127.0.0.2");
    curl(
        &daemon,
        "prom",
        &format!("http://{}/prom", upstream.addr),
        &[],
    );
    daemon.wait_for_events("the request", |e| e.iter().any(|e| e["kind"] == "request"));
    // Every family has samples now: connections, requests, latency, OTLP.
    let exposition = http_get(metrics_port, "/metrics");
    for family in [
        "agentguard_requests_total{",
        "agentguard_upstream_latency_seconds_bucket{",
        "agentguard_otlp_exported_total",
        "agentguard_audit_anchor_exported_seq",
    ] {
        assert!(
            exposition.contains(family),
            "{family} not in:\n{exposition}"
        );
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; cargo xtask setup installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).trim().is_empty() && text(&out.stderr).trim().is_empty(),
        "promtool has remarks: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// What the OCSF test's agent tries in the kernel's reach: a UDP datagram,
/// a raw socket, a Unix socket its policy does not list, and a
/// routing header; each refused and recorded.
const REFUSALS: &str = "import errno, socket, struct, sys\n\
    def attempt(name, f):\n\
    \x20   try:\n\
    \x20       f(); print(name, 'allowed')\n\
    \x20   except OSError as e: print(name, errno.errorcode.get(e.errno, e.errno))\n\
    attempt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9)))\n\
    attempt('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))\n\
    attempt('unix', lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(sys.argv[1]))\n\
    seg = socket.inet_pton(socket.AF_INET6, '2001:db8::99')\n\
    srh = struct.pack('!BBBBBBH', 0, 4, 4, 1, 1, 0, 0) + bytes(16) + seg\n\
    attempt('rthdr', lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh))\n\
    for name in ('ocsf.agentguard.test', 'nope.agentguard.test'):\n\
    \x20   try:\n\
    \x20       print(name, socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])\n\
    \x20   except socket.gaierror as e: print(name, 'unresolved')\n";

#[test]
fn ocsf_of_every_event_kind_validates_against_the_ocsf_schema() {
    crate::common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let dns = crate::common::DnsUpstream::start(
        "127.0.0.1",
        &[(
            "ocsf.agentguard.test",
            std::net::Ipv4Addr::new(127, 0, 0, 5),
        )],
    );
    let dns_addr = dns.addr.to_string();
    let policy =
        format!("{ALLOW_LOOPBACK_TEST_HOSTS}\n[[passthrough]]\nhost = \"ocsf.agentguard.test\"\n");
    let mut daemon = Daemon::builder(&["ocsf"])
        .policy(&policy)
        .args(&["--dns-upstream", &dns_addr])
        .start();
    let upstream = Upstream::start("127.0.0.2");
    // Intercepted connections, an allowed request and a denied one.
    curl(
        &daemon,
        "ocsf",
        &format!("http://{}/ocsf", upstream.addr),
        &[],
    );
    let out = daemon
        .exec(
            "ocsf",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-X",
                "TRACE",
                &format!("http://{}/x", upstream.addr),
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Kernel refusals and the resolver's answers.
    let unix = std::os::unix::net::UnixListener::bind(dir.path().join("ocsf.sock")).unwrap();
    let sock = dir.path().join("ocsf.sock").display().to_string();
    let out = daemon
        .exec_with_nameserver(
            "ocsf",
            &["--allow-root", "--keep-capabilities"],
            "127.0.0.99",
            &["python3", "-c", REFUSALS, &sock],
        )
        .output()
        .unwrap();
    let said = text(&out.stdout);
    for line in [
        "udp EPERM",
        "raw EPERM",
        "unix EPERM",
        "rthdr EPERM",
        "ocsf.agentguard.test 127.0.0.5",
        "nope.agentguard.test unresolved",
    ] {
        assert!(
            said.contains(line),
            "{line:?} not in: {said}{}",
            text(&out.stderr)
        );
    }
    drop(unix);
    // A reload, and a clean stop.
    let path = daemon.policy_path("ocsf");
    let mut edited = std::fs::read_to_string(&path).unwrap();
    edited.push_str("\n# edited by the OCSF test\n");
    std::fs::write(path.with_extension("tmp"), edited).unwrap();
    std::fs::rename(path.with_extension("tmp"), &path).unwrap();
    daemon.wait_for_reload(true);
    let pid = daemon.status()["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon
        .audit_events()
        .iter()
        .any(|e| e["kind"] == "daemon_stop")
    {
        assert!(
            Instant::now() < deadline,
            "no daemon_stop:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.kill9();

    // The kinds this run cannot make cheaply, written into the stopped
    // daemon's store as their emitters shape them (proxy/http.rs,
    // token/report.rs, audit/writer.rs): only the renderer is under test.
    let db = daemon.state_dir().join("audit/audit.db");
    let sql = "INSERT INTO events (seq, id, time, kind, agent, cgroup_path, cgroup_id, pid, uid, gid, comm, exe, decision, reason, credential_id, tool, host, policy_version, prev_hash, hash)
          SELECT (SELECT MAX(seq) FROM events) + 1, id || '-c', time, 'credential_failure', agent, cgroup_path, cgroup_id, pid, uid, gid, comm, exe, 'refuse',
                 'credential \"itsm\" is unavailable: no such file', 'itsm', tool, host, policy_version, '', '' FROM events WHERE kind = 'request' LIMIT 1;
        INSERT INTO events (seq, id, time, kind, agent, method, host, path, protocol, rule, token_jti, status, src_ip, decision, reason, prev_hash, hash)
          SELECT (SELECT MAX(seq) FROM events) + 1, id || '-t', time, 'token_verification', agent, 'POST', 'tool.agentguard.test', '/api/tickets', 'http',
                 'verify-proxy:tool.agentguard.test', 'jti-1', 200, '127.0.0.1', 'allow', 'token verified for spiffe://agentguard.local/agent/ocsf', '', ''
          FROM events WHERE kind = 'request' LIMIT 1;
        INSERT INTO events (seq, id, time, kind, reason, prev_hash, hash)
          SELECT (SELECT MAX(seq) FROM events) + 1, id || '-r', time, 'retention',
                 'removed events 1..=2 older than 90days; signed checkpoint 2 is the anchor the chain continues from', '', ''
          FROM events WHERE kind = 'daemon_start' LIMIT 1;";
    let out = Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = Command::new(AGENTGUARD)
        .args(["audit", "query", "-o", "ocsf", "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ocsf = text(&out.stdout);
    let mut validate = Command::new("python3")
        .arg(validator("ocsf_validate.py"))
        .arg("1.3.0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    validate
        .stdin
        .take()
        .unwrap()
        .write_all(ocsf.as_bytes())
        .unwrap();
    let verdict = validate.wait_with_output().unwrap();
    assert!(
        verdict.status.success(),
        "OCSF schema validation failed:\n{}{}",
        text(&verdict.stdout),
        text(&verdict.stderr)
    );
    let report = text(&verdict.stdout);
    eprintln!("{report}");

    // Every kind was there, and validated.
    let objects: Vec<Value> = ocsf
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kind = |o: &Value| {
        o["unmapped"]["agentguard"]["kind"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for k in [
        "daemon_start",
        "connection",
        "request",
        "kernel_refusal",
        "dns_query",
        "policy_reload",
        "daemon_stop",
        "credential_failure",
        "token_verification",
        "retention",
    ] {
        assert!(objects.iter().any(|o| kind(o) == k), "no {k} event");
    }
    let rule = |o: &Value| {
        o["unmapped"]["agentguard"]["rule"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let find = |pred: &dyn Fn(&Value) -> bool| objects.iter().find(|o| pred(o)).cloned();
    // DNS Activity, with the question, the code and the answers.
    let allowed =
        find(&|o| kind(o) == "dns_query" && o["query"]["hostname"] == "ocsf.agentguard.test")
            .unwrap();
    assert_eq!(allowed["class_uid"], 4003);
    assert_eq!(allowed["query"]["type"], "A");
    assert_eq!(allowed["rcode_id"], 0);
    assert_eq!(allowed["answers"][0]["rdata"], "127.0.0.5");
    assert_eq!(allowed["connection_info"]["protocol_name"], "udp");
    let denied =
        find(&|o| kind(o) == "dns_query" && o["query"]["hostname"] == "nope.agentguard.test")
            .unwrap();
    assert_eq!(
        (denied["rcode_id"].as_u64(), denied["action"].as_str()),
        (Some(3), Some("Denied"))
    );
    // The Unix socket by its path; the socket option with no destination.
    let unix = find(&|o| {
        rule(o) == "kernel:unix-connect-denied" && o["dst_endpoint"]["name"] == sock.as_str()
    })
    .unwrap();
    assert!(
        unix["connection_info"].get("protocol_name").is_none(),
        "{unix}"
    );
    let rthdr = find(&|o| rule(o) == "kernel:sockopt-denied").unwrap();
    assert_eq!(rthdr["dst_endpoint"]["name"], "unconnected");
    assert!(rthdr["src_endpoint"]["hostname"].is_string());
    // Real protocol names.
    let udp = find(&|o| rule(o) == "kernel:udp-denied").unwrap();
    assert_eq!(
        (
            udp["connection_info"]["protocol_name"].as_str(),
            udp["connection_info"]["protocol_num"].as_u64(),
            udp["dst_endpoint"]["port"].as_u64()
        ),
        (Some("udp"), Some(17), Some(9))
    );
    let conn =
        find(&|o| kind(o) == "connection" && o["unmapped"]["agentguard"]["protocol"] == "http")
            .unwrap();
    assert_eq!(conn["connection_info"]["protocol_name"], "tcp");
    assert!(!ocsf.contains("null"), "OCSF has no null");
}
