//! The audit record end to end: every decision stored with the identity the
//! kernel saw, the chain verifiable (and tampering found), nothing lost under
//! load, at most one batch lost to `kill -9`, live follow, OCSF and OTLP
//! export, Prometheus metrics.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::Path,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{
    AGENTGUARD, Daemon, DnsUpstream, Setup, TlsUpstream, Upstream, alone, free_port, http_get,
    is_nscd_probe, require_root, run_with_pid, text,
};

const API: &str = "api.agentguard.test";
const PASS: &str = "pass.agentguard.test";
const NOBODY: u32 = 65534;
/// The daemon's default `--audit-batch-max`.
const BATCH_MAX: i64 = 1024;

/// Tools on the plain loopback upstream (127.0.0.2) and the TLS one (API),
/// and a passthrough host.
const POLICY: &str = r#"
[[tool]]
name = "test.public"
host = "127.0.0.2"
methods = ["GET"]
paths = ["/public/*"]

[[tool]]
name = "test.api"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/", "/*"]

[[passthrough]]
host = "pass.agentguard.test"
"#;

fn setup(agents: &[&str], run_args: &[&str]) -> Setup {
    Setup::builder(API)
        .agents(agents)
        .policy(POLICY)
        .args(run_args)
        .start()
}

/// `agentguard audit ARGS --state-dir <the daemon's>`.
fn audit(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(AGENTGUARD)
        .arg("audit")
        .args(args)
        .arg("--state-dir")
        .arg(daemon.state_dir())
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `audit query --format json ARGS`, without glibc's nscd probes, polled
/// (bounded: 10 s) until `done` holds; the writer commits every 200 ms.
fn query_until(daemon: &Daemon, args: &[&str], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut all = vec!["query", "-o", "json"];
    all.extend_from_slice(args);
    loop {
        let mut events = json_lines(&audit(daemon, &all));
        events.retain(|e| !is_nscd_probe(e));
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "audit query {args:?} never satisfied the test; last answer:\n{}",
            events
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `cmd` as agent `agent`, as user nobody; returns its pid and output.
fn as_nobody(daemon: &Daemon, agent: &str, cmd: &[&str]) -> (u32, Output) {
    let user = format!("{NOBODY}:{NOBODY}");
    run_with_pid(daemon.exec_with(agent, &["--user", &user], cmd))
}

fn status(daemon: &Daemon) -> Value {
    let out = daemon.cli(&["status", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// (kind, agent, decision) of an event, for comparing sequences.
fn shape(e: &Value) -> (String, String, String) {
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    (s("kind"), s("agent"), s("decision"))
}

#[test]
fn a_mixed_run_is_recorded_exactly_with_the_clients_identity() {
    // The passthrough host resolves through agentguard's resolver, which
    // forwards to this loopback stand-in for the host's DNS: a passthrough is
    // only relayed to an address agentguard answered for its name.
    let dns = DnsUpstream::start(
        "127.0.0.1",
        &[(PASS, std::net::Ipv4Addr::new(127, 0, 0, 4))],
    );
    let dns_addr = dns.addr.to_string();
    let s = setup(&["audit-mix", "audit-obs"], &["--dns-upstream", &dns_addr]);
    let plain = Upstream::start("127.0.0.2");
    let pass = TlsUpstream::start("127.0.0.4", PASS, &s.ca);
    let base = format!("http://{}", plain.addr);

    // Allowed, with a stated intent.
    let (allow_pid, out) = as_nobody(
        &s.daemon,
        "audit-mix",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "-H",
            "x-agentguard-intent: read the public page",
            &format!("{base}/public/a?q=1"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Denied.
    let (deny_pid, out) = as_nobody(
        &s.daemon,
        "audit-mix",
        &["curl", "-sS", "-m", "10", &format!("{base}/private")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("default-deny"),
        "{}",
        text(&out.stdout)
    );
    // Passthrough: the agent sees the upstream's own certificate.
    // curl -4: one A query, so one dns_query event.
    let user = format!("{NOBODY}:{NOBODY}");
    let child = s
        .daemon
        .exec_with_nameserver(
            "audit-mix",
            &["--user", &user],
            "127.0.0.99",
            &["curl", "-4", "-sS", "-k", "-m", "10", &pass.url("/")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pass_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "hello over tls", "{}", text(&out.stderr));

    // Audit mode for the second agent, by a policy reload.
    let policy = s.daemon.policy_path("audit-obs");
    let original = std::fs::read_to_string(&policy).unwrap();
    // Written aside and renamed in, so the reload sees the whole file.
    let edited = original.replacen("\n[[tool]]", "\nmode = \"audit\"\n[[tool]]", 1);
    let tmp = policy.with_extension("tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::fs::rename(&tmp, &policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&s.daemon)["last_reload"]["trigger"] == "start" {
        assert!(Instant::now() < deadline, "no reload");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&s.daemon)["last_reload"]["accepted"], true);
    let (would_pid, out) = as_nobody(
        &s.daemon,
        "audit-obs",
        &["curl", "-sS", "-m", "10", &format!("{base}/private")],
    );
    assert_eq!(
        text(&out.stdout),
        crate::common::BODY,
        "{}",
        text(&out.stderr)
    );

    // Over TLS (as root: the CA bundle is in the test's private state dir),
    // to see the intent header stop at the proxy.
    let child = s
        .daemon
        .exec_resolving(
            "audit-mix",
            &[API],
            "127.0.0.3",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                "-H",
                "x-agentguard-intent: check the api",
                &s.upstream.url("/hello"),
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let tls_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "hello over tls");
    let seen = s.upstream.seen();
    assert!(
        seen[0]
            .headers
            .iter()
            .all(|(k, _)| k != "x-agentguard-intent"),
        "the intent header reached the upstream: {:?}",
        seen[0].headers
    );

    let events = query_until(&s.daemon, &[], |e| e.len() >= 12);
    let shapes: Vec<_> = events.iter().map(shape).collect();
    let expect = |k: &str, a: &str, d: &str| (k.to_owned(), a.to_owned(), d.to_owned());
    assert_eq!(
        shapes,
        vec![
            expect("daemon_start", "-", "-"),
            expect("connection", "audit-mix", "intercept"),
            expect("request", "audit-mix", "allow"),
            expect("connection", "audit-mix", "intercept"),
            expect("request", "audit-mix", "deny"),
            expect("dns_query", "audit-mix", "allow"),
            expect("connection", "audit-mix", "passthrough"),
            expect("policy_reload", "-", "accept"),
            expect("connection", "audit-obs", "intercept"),
            expect("request", "audit-obs", "would-deny"),
            expect("connection", "audit-mix", "intercept"),
            expect("request", "audit-mix", "allow"),
        ],
        "{events:#?}"
    );
    // The whole sequence, nscd probes included, has no gap.
    let all = json_lines(&audit(&s.daemon, &["query", "-o", "json"]));
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as i64).collect::<Vec<_>>());
    assert_eq!(
        all.len() - all.iter().filter(|e| is_nscd_probe(e)).count(),
        12
    );

    // Identity: the pid and uid of each client process.
    let pids = [
        allow_pid, allow_pid, deny_pid, deny_pid, pass_pid, would_pid, would_pid, tls_pid, tls_pid,
    ];
    let with_pid: Vec<&Value> = events.iter().filter(|e| !e["pid"].is_null()).collect();
    // daemon_start carries the daemon's own pid.
    assert_eq!(with_pid[0]["kind"], "daemon_start");
    for (e, pid) in with_pid[1..].iter().zip(pids) {
        assert_eq!(e["pid"], pid, "{e}");
        assert_eq!(e["comm"], "curl", "{e}");
        assert!(
            e["cgroup_path"]
                .as_str()
                .unwrap()
                .ends_with(e["agent"].as_str().unwrap()),
            "{e}"
        );
        assert!(e["cgroup_id"].as_u64().unwrap() > 0);
        assert!(e["exe"].as_str().unwrap().ends_with("/curl"), "{e}");
        let uid = if pid == tls_pid { 0 } else { NOBODY };
        assert_eq!(e["uid"], uid, "{e}");
    }

    let allow = &events[2];
    assert_eq!(allow["tool"], "test.public");
    assert_eq!(allow["rule"], "tool:test.public");
    assert_eq!(allow["intent"], "read the public page");
    assert_eq!(allow["path"], "/public/a?q=1");
    assert_eq!(allow["status"], 200);
    assert_eq!(allow["method"], "GET");
    assert_eq!(allow["host"], "127.0.0.2");
    assert_eq!(allow["dst_port"], plain.addr.port());
    assert_eq!(allow["bytes_out"], crate::common::BODY.len());
    assert!(allow["duration_us"].as_u64().unwrap() > 0);
    assert!(allow["on_behalf_of"].is_null());
    assert!(allow["credential_id"].is_null());
    assert!(allow["token_jti"].is_null());
    let versions: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["policy_version"].as_str())
        .collect();
    assert_eq!(versions.len(), 2, "a version before and after the reload");
    let deny = &events[4];
    assert_eq!(
        (deny["status"].as_u64(), deny["rule"].as_str()),
        (Some(403), Some("default-deny"))
    );
    assert_eq!(events[5]["host"], PASS);
    assert_eq!(events[5]["reason"], "No Error (127.0.0.4)");
    assert_eq!(events[6]["sni"], PASS);
    assert_eq!(events[6]["rule"], format!("passthrough:{PASS}"));
    assert_eq!(events[9]["status"], 200);
    assert_eq!(events[11]["intent"], "check the api");
    assert_eq!(events[11]["protocol"], "HTTP/2");
    let times: Vec<&str> = events.iter().map(|e| e["time"].as_str().unwrap()).collect();
    assert!(
        times.iter().all(|t| t.len() == 27 && t.ends_with('Z')),
        "{times:?}"
    );

    // Filters.
    let any = |_: &[Value]| true;
    let denied = query_until(&s.daemon, &["--decision", "deny"], any);
    assert_eq!(denied.len(), 1);
    let obs = query_until(&s.daemon, &["--agent", "audit-obs", "--since", "15m"], any);
    assert_eq!(obs.len(), 2);
    let tool = query_until(&s.daemon, &["--tool", "test.api", "--host", API], any);
    assert_eq!(tool.len(), 1);
    let out = audit(&s.daemon, &["query", "-o", "table", "--limit", "3"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        3,
        "{}",
        text(&out.stdout)
    );

    // OCSF: HTTP Activity for requests, Network Activity for connections,
    // each with its class's required attributes.
    let ocsf = json_lines(&audit(&s.daemon, &["query", "-o", "ocsf"]));
    assert_eq!(ocsf.len(), all.len());
    for (o, e) in ocsf.iter().zip(&all) {
        for key in [
            "activity_id",
            "category_uid",
            "class_uid",
            "severity_id",
            "time",
            "type_uid",
        ] {
            assert!(o[key].is_u64(), "{key} missing: {o}");
        }
        assert_eq!(
            o["type_uid"],
            o["class_uid"].as_u64().unwrap() * 100 + o["activity_id"].as_u64().unwrap()
        );
        assert!(
            o["metadata"]["version"].as_str().unwrap().starts_with("1."),
            "{o}"
        );
        assert!(o["metadata"]["product"]["vendor_name"].is_string(), "{o}");
        match e["kind"].as_str().unwrap() {
            "request" => {
                assert_eq!(o["class_uid"], 4002);
                assert_eq!(o["category_uid"], 4);
                assert!(o["http_request"]["http_method"].is_string(), "{o}");
                assert!(o["dst_endpoint"].is_object() || o["src_endpoint"].is_object());
            }
            "connection" => {
                assert_eq!(o["class_uid"], 4001);
                assert!(o["dst_endpoint"]["ip"].is_string(), "{o}");
                assert!(o["src_endpoint"]["port"].is_u64(), "{o}");
            }
            // The nscd probes: refused (activity 5) Network Activity.
            "kernel_refusal" => {
                assert_eq!(o["class_uid"], 4001);
                assert_eq!(o["activity_id"], 5);
            }
            _ => {}
        }
    }
    // Indexed like `events`: without the nscd probes.
    let ocsf: Vec<&Value> = ocsf
        .iter()
        .zip(&all)
        .filter(|(_, e)| !is_nscd_probe(e))
        .map(|(o, _)| o)
        .collect();
    assert_eq!(ocsf[2]["actor"]["process"]["pid"], allow_pid);
    assert_eq!(ocsf[2]["actor"]["user"]["uid"], NOBODY.to_string());
    assert_eq!(ocsf[4]["action"], "Denied");
    let _ = (&s.dir, plain.hits());
}

#[test]
fn verify_passes_and_finds_an_edit_a_deletion_and_a_swap() {
    let s = setup(&["audit-verify"], &[]);
    let plain = Upstream::start("127.0.0.2");
    for i in 0..4 {
        let out = s
            .daemon
            .exec(
                "audit-verify",
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "10",
                    &format!("http://{}/public/{i}", plain.addr),
                ],
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // daemon_start + 4 × (connection, request).
    query_until(&s.daemon, &[], |e| e.len() >= 9);
    // Every event is in the chain, nscd probes included.
    let total = json_lines(&audit(&s.daemon, &["query", "-o", "json"])).len();
    // While the daemon runs (WAL lets readers in).
    let out = audit(&s.daemon, &["verify"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&format!("intact: {total} events")),
        "{}",
        text(&out.stdout)
    );

    // Each tampering on its own consistent copy of the store, made by the
    // sqlite3 shell as an auditor (or an intruder) would.
    let cases = [
        (
            "edit",
            "UPDATE events SET decision = 'deny', status = 403 WHERE seq = 5;",
            5,
        ),
        ("delete", "DELETE FROM events WHERE seq = 4;", 4),
        (
            "swap",
            "UPDATE events SET seq = -1 WHERE seq = 6; UPDATE events SET seq = 6 WHERE seq = 7; UPDATE events SET seq = 7 WHERE seq = -1;",
            6,
        ),
    ];
    for (name, sql, bad_seq) in cases {
        let copy = s.dir.path().join(format!("copy-{name}"));
        let audit_dir = copy.join("audit");
        std::fs::create_dir_all(&audit_dir).unwrap();
        let db = s.daemon.state_dir().join("audit/audit.db");
        sqlite(
            &db,
            &format!(".backup '{}'", audit_dir.join("audit.db").display()),
        );
        std::fs::copy(
            s.daemon.state_dir().join("audit/signing.pub"),
            audit_dir.join("signing.pub"),
        )
        .unwrap();
        let verify = |dir: &Path| {
            Command::new(AGENTGUARD)
                .args(["audit", "verify", "--state-dir"])
                .arg(dir)
                .output()
                .unwrap()
        };
        assert!(
            verify(&copy).status.success(),
            "{name}: the copy verifies before tampering"
        );
        sqlite(&audit_dir.join("audit.db"), sql);
        let out = verify(&copy);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out.stdout));
        assert!(
            text(&out.stdout).contains(&format!("broken at seq {bad_seq}:")),
            "{name}: {}",
            text(&out.stdout)
        );
    }
}

/// Runs the sqlite3 shell on `db`.
fn sqlite(db: &Path, sql: &str) {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3 {sql}: {}", text(&out.stderr));
}

/// A curl config with `n` GETs of `url_base/<i>`, output discarded.
fn load_config(dir: &Path, url_base: &str, n: usize) -> String {
    let path = dir.join(format!("load-{n}.curl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..n {
        writeln!(f, "url = \"{url_base}/{i}\"\noutput = \"/dev/null\"").unwrap();
    }
    f.flush().unwrap();
    path.display().to_string()
}

/// curl running `config` with parallel transfers (HTTP/2 multiplexed),
/// printing each transfer's status code on a line.
fn load(s: &Setup, agent: &str, config: &str) -> Command {
    s.daemon.exec_resolving(
        agent,
        &[API],
        "127.0.0.3",
        &[
            "curl",
            "-s",
            "--parallel",
            "--parallel-max",
            "50",
            "-m",
            "60",
            "-w",
            "%{http_code}\\n",
            "-K",
            config,
        ],
    )
}

const LOAD: usize = 20_000;

#[test]
fn under_load_every_request_has_its_event_and_the_sequence_has_no_gap() {
    // 20,000 requests: the machine to itself, so the others' bounded
    // waits are not starved, nor its own.
    let _alone = alone();
    let s = setup(&["audit-load"], &[]);
    let config = load_config(s.dir.path(), &s.upstream.url("/load"), LOAD);
    let started = Instant::now();
    let out = load(&s, "audit-load", &config).output().unwrap();
    let elapsed = started.elapsed();
    let ok = text(&out.stdout).lines().filter(|l| *l == "200").count();
    assert_eq!(ok, LOAD, "{}", text(&out.stderr));
    eprintln!("{LOAD} requests through the proxy in {elapsed:?}");

    let requests = query_until(
        &s.daemon,
        &["--kind", "request", "--agent", "audit-load"],
        |e| e.len() >= LOAD,
    );
    assert_eq!(requests.len(), LOAD);
    let paths: BTreeSet<&str> = requests
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), LOAD, "one event per request, none twice");
    assert!(
        requests
            .iter()
            .all(|e| e["status"] == 200 && e["decision"] == "allow")
    );
    assert_eq!(s.upstream.seen().len(), LOAD);

    let all = json_lines(&audit(&s.daemon, &["query", "-o", "json"]));
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=all.len() as i64).collect::<Vec<_>>(),
        "gapless from 1"
    );
    let out = audit(&s.daemon, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert_eq!(status(&s.daemon)["audit"]["events_written"], all.len());
}

#[test]
fn kill_9_during_load_loses_at_most_one_batch_and_the_chain_continues() {
    // Load: the machine to itself (see the test above).
    let _alone = alone();
    // A 50 ms flush interval: the uncommitted batch at the kill stays far
    // below the batch cap even on a slow machine, so the bound below tests
    // the writer, not the machine's speed.
    let mut s = setup(&["audit-kill"], &["--audit-flush-interval", "50ms"]);
    let config = load_config(s.dir.path(), &s.upstream.url("/load"), LOAD);
    let mut curl = load(&s, "audit-kill", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Count completed transfers as curl reports them.
    let stdout = curl.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut ok = 0usize;
        for line in BufReader::new(stdout).lines() {
            if line.unwrap_or_default() == "200" {
                ok += 1;
                let _ = tx.send(ok);
            }
        }
        ok
    });
    // Kill mid-load: once a few thousand responses have arrived.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(n) if n >= 3000 => break,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("curl stopped early: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "load never reached 3000 responses"
        );
    }
    s.daemon.kill9();
    let _ = curl.wait();
    let ok = reader.join().unwrap();
    assert!(ok < LOAD, "the load finished before the kill");

    let committed = json_lines(&audit(&s.daemon, &["query", "-o", "json"]));
    let last_seq = committed.last().unwrap()["seq"].as_i64().unwrap();
    let recorded = committed
        .iter()
        .filter(|e| e["kind"] == "request" && e["status"] == 200)
        .count() as i64;
    let ok = ok as i64;
    eprintln!(
        "kill -9 after {ok} responses; {recorded} request events committed; last seq {last_seq}"
    );
    // What was committed verifies, without the final checkpoint a clean
    // stop signs.
    let out = audit(&s.daemon, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    // Responses the agent got whose events were not committed yet: at most
    // one batch. (An event is queued just before its last frame leaves, so a
    // few may be recorded for responses the kill cut off.)
    assert!(ok - recorded <= BATCH_MAX, "{} events lost", ok - recorded);
    assert!(
        recorded - ok <= 50,
        "{recorded} recorded for {ok} responses"
    );

    s.daemon.restart();
    let plain = Upstream::start("127.0.0.2");
    let out = s
        .daemon
        .exec(
            "audit-kill",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                &format!("http://{}/public/after", plain.addr),
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = query_until(&s.daemon, &["--since", "15m"], |e| {
        e.iter().any(|e| e["path"] == "/public/after")
    });
    let restart = after.iter().rfind(|e| e["kind"] == "daemon_start").unwrap();
    assert_eq!(restart["seq"], last_seq + 1, "the sequence continues");
    let out = audit(&s.daemon, &["verify"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

#[test]
fn tail_f_shows_a_new_event_within_a_second() {
    // A latency bound holds only on a machine not busy with other tests.
    let _alone = alone();
    let s = setup(&["audit-tail"], &[]);
    let plain = Upstream::start("127.0.0.2");
    let mut tail = Command::new(AGENTGUARD)
        .args([
            "audit",
            "tail",
            "-f",
            "-n",
            "0",
            "--agent",
            "audit-tail",
            "--admin-socket",
        ])
        .arg(&s.daemon.admin_socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<(Instant, String)>::new()));
    let stdout = tail.stdout.take().unwrap();
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push((Instant::now(), line));
            }
        });
    }
    // tail says on stderr when it is following.
    let mut stderr = BufReader::new(tail.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.contains("following"), "{first}");

    let out = s
        .daemon
        .exec(
            "audit-tail",
            &[
                "curl",
                "-sS",
                "-m",
                "10",
                &format!("http://{}/public/tail", plain.addr),
            ],
        )
        .output()
        .unwrap();
    let done = Instant::now();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = done + Duration::from_secs(5);
    let seen = loop {
        if let Some((at, line)) = lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains("/public/tail"))
        {
            break (*at, line.clone());
        }
        assert!(Instant::now() < deadline, "tail -f showed nothing");
        std::thread::sleep(Duration::from_millis(10));
    };
    let latency = seen.0.saturating_duration_since(done);
    eprintln!("tail -f showed the request {latency:?} after it completed");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let event: Value = serde_json::from_str(&seen.1).unwrap();
    assert_eq!(event["decision"], "allow");
    // The connection event came first, through the same filter.
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| !is_nscd_probe(&serde_json::from_str(l).unwrap()))
            .unwrap()
            .1
            .contains("\"kind\":\"connection\"")
    );
    let _ = tail.kill();
    let _ = tail.wait();
}

#[test]
fn otlp_reaches_a_collector_and_metrics_count_decisions() {
    require_root();
    let collector = Collector::start();
    let endpoint = format!("http://{}", collector.addr);
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let s = setup(
        &["audit-otlp"],
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            "http/json",
            "--metrics-listen",
            &metrics_addr,
        ],
    );
    let plain = Upstream::start("127.0.0.2");
    for path in ["/public/otlp", "/private"] {
        let out = s
            .daemon
            .exec(
                "audit-otlp",
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "10",
                    &format!("http://{}{path}", plain.addr),
                ],
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    // The collector gets OTLP/HTTP JSON log records carrying the events.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records: Vec<Value> = collector
            .bodies()
            .iter()
            .flat_map(|b| {
                b["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        if records
            .iter()
            .filter(|r| r["eventName"] == "agentguard.request")
            .count()
            >= 2
        {
            break records;
        }
        assert!(Instant::now() < deadline, "collector got: {records:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let denied =
        records
            .iter()
            .find(|r| {
                r["attributes"].as_array().into_iter().flatten().any(|a| {
                    a["key"] == "agentguard.decision" && a["value"]["stringValue"] == "deny"
                })
            })
            .expect("the denied request reached the collector");
    assert_eq!(denied["severityText"], "WARN");
    assert!(
        denied["timeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .unwrap()
            > 0
    );
    assert_eq!(collector.paths(), BTreeSet::from(["/v1/logs".to_owned()]));

    // Metrics, on the admin socket and the TCP listener alike.
    let metrics = http_get(metrics_port, "/metrics");
    for line in [
        r#"agentguard_requests_total{agent="audit-otlp",decision="allow"} 1"#,
        r#"agentguard_requests_total{agent="audit-otlp",decision="deny"} 1"#,
        r#"agentguard_connections_total{decision="intercept"} 2"#,
        "agentguard_upstream_latency_seconds_count 1",
        "agentguard_audit_queue_depth",
        "agentguard_audit_events_written_total",
        "agentguard_leaf_cache_misses_total",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    let audit_status = &status(&s.daemon)["audit"];
    assert!(
        audit_status["events_written"].as_u64().unwrap() >= 5,
        "{audit_status}"
    );
    assert!(audit_status["queue_depth"].is_u64());
    assert!(audit_status["last_checkpoint_seq"].is_i64());
}

/// A tiny OTLP/HTTP collector on loopback: stores each JSON body it is
/// posted and answers 200.
struct Collector {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let store = store.clone();
                std::thread::spawn(move || serve_collector(conn, &store));
            }
        });
        Self { addr, seen }
    }

    fn bodies(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn paths(&self) -> BTreeSet<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Serves requests on one keep-alive connection (bounded in size and time).
fn serve_collector(conn: std::net::TcpStream, store: &Mutex<Vec<(String, Value)>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0).min(64 << 20);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(json) = serde_json::from_slice(&body) {
            store.lock().unwrap().push((path, json));
        }
        if writer
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            )
            .is_err()
        {
            return;
        }
    }
}
