//! A record cut or replaced is caught: checkpoints leave the host as they
//! are signed (an anchor folder, an anchor command), and `audit verify
//! --public-key --anchor` finds events cut after an exported checkpoint
//! and a chain made anew, naming what is missing. Without them the same
//! tampered stores verify, which is what each test shows first.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::common::{AGENTGUARD, ALLOW_LOOPBACK_TEST_HOSTS, Daemon, Upstream, text};

/// A daemon that signs a checkpoint every few events and exports each to
/// `anchors` (a folder) and, by a command, to `shipped` (another folder,
/// standing for another host).
fn anchored_daemon(agent: &str, anchors: &Path, shipped: &Path, extra: &[&str]) -> Daemon {
    let command = format!("cat > {}/$AGENTGUARD_CHECKPOINT_FILE", shipped.display());
    let mut args = vec![
        "--audit-checkpoint-every",
        "3",
        "--audit-flush-interval",
        "20ms",
        "--audit-checkpoint-interval",
        "300ms",
        "--audit-anchor-dir",
        anchors.to_str().unwrap(),
        "--audit-anchor-command",
        &command,
    ];
    args.extend_from_slice(extra);
    Daemon::builder(&[agent])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&args)
        .start()
}

/// `n` requests by the agent; each makes a connection and a request event.
fn traffic(daemon: &Daemon, agent: &str, upstream: &Upstream, n: usize) {
    for i in 0..n {
        let out = daemon
            .exec(
                agent,
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "10",
                    &format!("http://{}/anchor/{i}", upstream.addr),
                ],
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

/// Waits (bounded: 15 s) until at least `seq` events are recorded, a
/// checkpoint of the last one has been exported, and nothing has changed
/// for a second (an event read late from the kernel, such as a refused nscd
/// probe, would otherwise start a checkpoint that the kill cuts half
/// exported), then stops the daemon (kill -9: nothing it records afterwards
/// can race the test); returns the newest exported seq.
fn wait_exported(daemon: &mut Daemon, seq: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut settled: Option<(i64, Instant)> = None;
    loop {
        let audit = &daemon.status()["audit"];
        let exported = audit["anchor_last_exported_seq"].as_i64().unwrap();
        if exported >= seq && exported == audit["last_seq"].as_i64().unwrap() {
            match settled {
                Some((at, since)) if at == exported => {
                    if since.elapsed() >= Duration::from_secs(1) {
                        daemon.kill9();
                        assert_eq!(audit["anchor_failures"], 0, "{audit}");
                        return exported;
                    }
                }
                _ => settled = Some((exported, Instant::now())),
            }
        } else {
            settled = None;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint at or after {seq} exported: {audit}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A consistent copy of the daemon's store, as an auditor (or an intruder)
/// takes one, with the host's public key beside it.
fn copy_store(daemon: &Daemon, to: &Path) -> PathBuf {
    let audit = to.join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    sqlite(
        &daemon.state_dir().join("audit/audit.db"),
        &format!(".backup '{}'", audit.join("audit.db").display()),
    );
    std::fs::copy(
        daemon.state_dir().join("audit/signing.pub"),
        audit.join("signing.pub"),
    )
    .unwrap();
    to.to_owned()
}

fn sqlite(db: &Path, sql: &str) {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3 {sql}: {}", text(&out.stderr));
}

/// `agentguard audit verify --state-dir STATE ARGS`.
fn verify(state: &Path, args: &[&Path]) -> Output {
    let mut c = Command::new(AGENTGUARD);
    c.args(["audit", "verify", "--state-dir"]).arg(state);
    for pair in args.chunks(2) {
        c.arg(pair[0]).arg(pair[1]);
    }
    c.output().unwrap()
}

fn passes(out: &Output) -> bool {
    out.status.success() && text(&out.stdout).contains("intact")
}

fn broken_at(out: &Output, seq: i64, says: &str) {
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(&format!("broken at seq {seq}:")) && stdout.contains(says),
        "expected a break at {seq} saying {says:?}: {stdout}{}",
        text(&out.stderr)
    );
}

#[test]
fn a_record_cut_after_an_exported_checkpoint_fails_verify_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (anchors, shipped) = (dir.path().join("anchors"), dir.path().join("shipped"));
    std::fs::create_dir(&anchors).unwrap();
    std::fs::create_dir(&shipped).unwrap();
    let mut daemon = anchored_daemon("anchor-cut", &anchors, &shipped, &[]);
    let upstream = Upstream::start("127.0.0.2");
    traffic(&daemon, "anchor-cut", &upstream, 6);
    // daemon_start + 6 × (connection, request), nscd probes perhaps.
    let exported = wait_exported(&mut daemon, 12);

    // The auditor's pinned copy of the public key, taken off the host.
    let pinned = dir.path().join("pinned.pub");
    std::fs::copy(daemon.state_dir().join("audit-key/signing.pub"), &pinned).unwrap();
    let copy = copy_store(&daemon, &dir.path().join("copy"));
    let (public_key, anchor) = (Path::new("--public-key"), Path::new("--anchor"));
    let out = verify(&copy, &[public_key, &pinned, anchor, &anchors]);
    assert!(passes(&out), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("the newest at seq {exported}")),
        "{}",
        text(&out.stdout)
    );
    // The command shipped the same checkpoints.
    let names = |d: &Path| {
        let mut n: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&anchors), names(&shipped));

    // The intruder cuts the tail and the checkpoints after the cut.
    let cut = 5;
    sqlite(
        &copy.join("audit/audit.db"),
        &format!(
            "DELETE FROM events WHERE seq > {cut}; DELETE FROM checkpoints WHERE seq > {cut};"
        ),
    );
    let out = verify(&copy, &[]);
    assert!(
        passes(&out),
        "the store alone cannot show the cut: {}",
        text(&out.stdout)
    );
    let out = verify(&copy, &[public_key, &pinned]);
    assert!(passes(&out), "nor can a pinned key: {}", text(&out.stdout));

    // Against the exported checkpoints: the cut, with the missing range.
    let missing = format!("events {}..={exported} are missing", cut + 1);
    broken_at(
        &verify(&copy, &[public_key, &pinned, anchor, &anchors]),
        cut + 1,
        &missing,
    );
    // The newest shipped one alone says the same.
    let newest = shipped.join(names(&shipped).last().unwrap());
    broken_at(
        &verify(&copy, &[public_key, &pinned, anchor, &newest]),
        cut + 1,
        &missing,
    );

    // An anchor that the pinned key did not sign proves nothing: refused.
    let forged = dir.path().join("forged.json");
    let text_of = std::fs::read_to_string(&newest).unwrap();
    std::fs::write(
        &forged,
        text_of.replace(&format!("\"seq\":{exported}"), "\"seq\":3"),
    )
    .unwrap();
    let out = verify(&copy, &[public_key, &pinned, anchor, &forged]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not signed by the trusted public key"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_replaced_chain_fails_verify_with_the_pinned_key_and_with_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let (anchors, shipped) = (dir.path().join("anchors"), dir.path().join("shipped"));
    std::fs::create_dir(&anchors).unwrap();
    std::fs::create_dir(&shipped).unwrap();
    let upstream = Upstream::start("127.0.0.2");
    let mut original = anchored_daemon("anchor-orig", &anchors, &shipped, &[]);
    traffic(&original, "anchor-orig", &upstream, 3);
    let exported = wait_exported(&mut original, 6);
    let pinned = dir.path().join("pinned.pub");
    std::fs::copy(original.state_dir().join("audit-key/signing.pub"), &pinned).unwrap();
    let (public_key, anchor) = (Path::new("--public-key"), Path::new("--anchor"));

    // A chain made anew by another daemon, with its own key, and more
    // events than the original: swapped in whole, public key included.
    let elsewhere = (dir.path().join("a2"), dir.path().join("s2"));
    std::fs::create_dir(&elsewhere.0).unwrap();
    std::fs::create_dir(&elsewhere.1).unwrap();
    let mut forger = anchored_daemon("anchor-new", &elsewhere.0, &elsewhere.1, &[]);
    traffic(&forger, "anchor-new", &upstream, 5);
    wait_exported(&mut forger, 10);
    let replaced = copy_store(&forger, &dir.path().join("replaced"));
    let out = verify(&replaced, &[]);
    assert!(
        passes(&out),
        "the swapped-in chain is consistent in itself: {}",
        text(&out.stdout)
    );
    // The pinned key: its checkpoints are another key's.
    let out = verify(&replaced, &[public_key, &pinned]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("signed by another key"),
        "{}",
        text(&out.stdout)
    );

    // The intruder who read the key itself signs a chain made anew with
    // it: the pinned key passes, the exported checkpoints do not.
    let key = original.state_dir().join("audit-key/signing.key");
    let thief_dirs = (dir.path().join("a3"), dir.path().join("s3"));
    std::fs::create_dir(&thief_dirs.0).unwrap();
    std::fs::create_dir(&thief_dirs.1).unwrap();
    let mut thief = anchored_daemon(
        "anchor-thief",
        &thief_dirs.0,
        &thief_dirs.1,
        &["--audit-signing-key", key.to_str().unwrap()],
    );
    traffic(&thief, "anchor-thief", &upstream, 5);
    wait_exported(&mut thief, 10);
    let forged = copy_store(&thief, &dir.path().join("forged"));
    let out = verify(&forged, &[public_key, &pinned]);
    assert!(passes(&out), "same key: {}", text(&out.stdout));
    let first_exported = std::fs::read_dir(&anchors)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .min()
        .unwrap();
    let first_seq: i64 = first_exported["checkpoint-".len().."checkpoint-".len() + 20]
        .parse()
        .unwrap();
    broken_at(
        &verify(&forged, &[public_key, &pinned, anchor, &anchors]),
        first_seq,
        "the chain was replaced or rewritten",
    );
    assert!(exported >= first_seq);

    // An emptied store: everything exported is missing.
    sqlite(
        &forged.join("audit/audit.db"),
        "DELETE FROM events; DELETE FROM checkpoints;",
    );
    broken_at(
        &verify(&forged, &[public_key, &pinned, anchor, &anchors]),
        1,
        "the store holds no events",
    );
}

#[test]
fn a_key_kept_in_the_audit_directory_moves_out_and_keeps_signing() {
    let mut daemon = Daemon::builder(&["anchor-move"])
        .policy(ALLOW_LOOPBACK_TEST_HOSTS)
        .args(&["--audit-checkpoint-every", "1"])
        .start();
    let key_id = daemon.status()["audit"]["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(key_id.len(), 64);
    let state = daemon.state_dir();
    let key = state.join("audit-key/signing.key");
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&state.join("audit-key")), 0o700);
    assert!(!state.join("audit/signing.key").exists());
    daemon.kill9();

    // The layout of earlier versions (up to commit e057790): the key beside
    // the database.
    std::fs::rename(&key, state.join("audit/signing.key")).unwrap();
    std::fs::remove_dir_all(state.join("audit-key")).unwrap();
    daemon.restart();
    assert_eq!(daemon.status()["audit"]["key_id"], key_id.as_str());
    assert!(key.exists(), "moved to audit-key/");
    assert!(!state.join("audit/signing.key").exists(), "not left behind");
    let upstream = Upstream::start("127.0.0.2");
    traffic(&daemon, "anchor-move", &upstream, 1);
    daemon.wait_for_events("the request", |e| e.iter().any(|e| e["kind"] == "request"));
    // Signed by the same key, before and after the move.
    let pinned = state.join("audit-key/signing.pub");
    let out = verify(&state, &[Path::new("--public-key"), &pinned]);
    assert!(passes(&out), "{}{}", text(&out.stdout), text(&out.stderr));

    // A key pointed into the audit directory, or an anchor folder that is
    // not there, stops the start with a clear error.
    for (args, says) in [
        (
            vec!["--audit-signing-key", "STATE/audit/k.key"],
            "inside the audit directory",
        ),
        (
            vec!["--audit-anchor-dir", "/nonexistent/agentguard-anchors"],
            "not a directory (is the mount it lives on there?)",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let policies = tmp.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(
            policies.join("a.toml"),
            "[agent]\nname = \"a\"\ncgroup = \"agentguard-test-anchor-refuse/a\"\n",
        )
        .unwrap();
        let bpf_dir = format!(
            "/sys/fs/bpf/agentguard-test-anchor-refuse-{}",
            std::process::id()
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("STATE", state.to_str().unwrap()))
            .collect();
        let out = Command::new(AGENTGUARD)
            .args([
                "run",
                "--proxy-port",
                "0",
                "--jwks-listen",
                "off",
                "--bpf-dir",
                &bpf_dir,
            ])
            .args(&args)
            .arg("--policies")
            .arg(&policies)
            .arg("--state-dir")
            .arg(&state)
            .arg("--admin-socket")
            .arg(tmp.path().join("admin.sock"))
            .output()
            .unwrap();
        let _ = Command::new(AGENTGUARD)
            .args(["detach", "--bpf-dir", &bpf_dir])
            .output();
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
}

#[test]
fn a_store_written_by_the_previous_agentguard_verifies_and_reads_with_this_one() {
    crate::common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/audit/testdata");
    let out = Command::new("sqlite3")
        .arg(audit.join("audit.db"))
        .stdin(std::fs::File::open(testdata.join("store-v1.sql")).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = verify(
        dir.path(),
        &[Path::new("--public-key"), &testdata.join("store-v1.pub")],
    );
    assert!(passes(&out), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        text(&out.stdout).contains("10 events"),
        "{}",
        text(&out.stdout)
    );
    let out = Command::new(AGENTGUARD)
        .args(["audit", "query", "-o", "json", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 10);
    assert!(events.iter().all(|e| e["traceparent"].is_null()));
}
