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
    AGENTGUARD, ALLOW_LOOPBACK_TEST_HOSTS, Confinement, Daemon, DaemonOptions, Upstream,
    require_root, text,
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
    const REQUESTS: usize = 1500;
    const BATCH_MAX: usize = 64;
    const FILL_AT: usize = 300;
    let upstream = Upstream::start("127.0.0.2");
    let mut daemon = Daemon::start_confined(
        &["diskfull"],
        DaemonOptions {
            policy_extra: ALLOW_LOOPBACK_TEST_HOSTS,
            ..DaemonOptions::default()
        },
        // Batches of at most 64 events: the loss bound below is in events,
        // whatever the machine's speed.
        &[
            "--audit-flush-interval",
            "200ms",
            "--audit-batch-max",
            &BATCH_MAX.to_string(),
        ],
        &[],
        Confinement {
            state_tmpfs: Some("24m"),
            ..Confinement::default()
        },
    );
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
