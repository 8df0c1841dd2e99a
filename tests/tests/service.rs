//! agentguard as a systemd service: the notify protocol spoken to a real
//! notify socket (a Unix datagram socket bound here, named in
//! `NOTIFY_SOCKET` as systemd does), and logs shaped for the journal.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{AGENTGUARD, Service, pinned_links, require_root, text};

fn watchdog_pings(messages: &[String]) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
fn notify_protocol_ready_status_reload_watchdog_and_stopping() {
    // WATCHDOG_USEC as systemd sets it for WatchdogSec=2s: pings every 1 s.
    let name = format!("agentguard-test-notify-{}", std::process::id());
    let policy = format!("[agent]\nname = \"svc\"\ncgroup = \"{name}/svc\"\n");
    let mut svc = Service::start(
        &name,
        &[("svc.toml", &policy)],
        &[("WATCHDOG_USEC", "2000000")],
    );

    // READY=1 only once the agent's programs are attached and pinned and
    // the admin socket answers: checked the instant READY arrives.
    let ready = svc.wait_for("READY=1", Duration::from_secs(60));
    assert!(
        pinned_links(&svc.bpf_dir) > 0,
        "READY before the programs were pinned"
    );
    let status = Command::new(AGENTGUARD)
        .args(["status", "-o", "json", "--admin-socket"])
        .arg(svc.admin_socket())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "READY before the admin API answered"
    );
    let ready = ready.last().unwrap();
    assert!(
        ready.contains("STATUS=guarding 1 of 1 agents; policy "),
        "{ready}"
    );

    // The watchdog pings while the daemon makes progress.
    let pings = svc.collect(Duration::from_millis(3500));
    assert!(watchdog_pings(&pings) >= 2, "{pings:?}");

    // systemctl reload: RELOADING=1 with the time, then READY=1 again.
    svc.signal(nix::sys::signal::Signal::SIGHUP);
    let reload = svc.wait_for("READY=1", Duration::from_secs(15));
    let reloading = reload
        .iter()
        .find(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {reload:?}"));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");

    // The audit writer stuck: another process holds the store's write lock,
    // so commits fail. A reload makes an event to commit. The pings stop
    // while it waits, and resume once the writer can commit again.
    let db = svc.dir().join("state/audit/audit.db");
    let mut locker = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(7)\n\
             c.execute('COMMIT')\n",
        )
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(locker.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let locked_at = Instant::now();
    svc.signal(nix::sys::signal::Signal::SIGHUP);
    // One check may pass before the event is seen waiting; from the
    // second on, none may.
    let _ = svc.collect(Duration::from_millis(2500));
    let during = svc.collect(Duration::from_millis(3000));
    assert!(
        locked_at.elapsed() < Duration::from_secs(7),
        "the lock was released before the check ended"
    );
    assert_eq!(
        watchdog_pings(&during),
        0,
        "pinged while the audit writer was stuck: {during:?}"
    );
    locker.wait().unwrap();
    svc.wait_for("WATCHDOG=1", Duration::from_secs(20));
    assert!(svc.log().contains("withholding the systemd watchdog ping"));

    // systemctl stop: STOPPING=1, then a clean exit.
    svc.signal(nix::sys::signal::Signal::SIGTERM);
    svc.wait_for("STOPPING=1", Duration::from_secs(15));
    let status = svc.wait_exit();
    assert!(status.success(), "{status}\n{}", svc.log());
}

/// A broken policy: `run` logs at start and then fails, without touching
/// the kernel. Its stderr goes to a file; returns what was written.
fn failing_run(tag: &str, env: &[(&str, &str)], journal: bool) -> String {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    fs::create_dir(&policies).unwrap();
    fs::write(
        policies.join("x.toml"),
        "[agent]\nname = \"x\"\ncgroup = \"/abs\"\n",
    )
    .unwrap();
    let err_path = dir.path().join("stderr");
    let stderr = fs::File::create(&err_path).unwrap();
    let meta = fs::metadata(&err_path).unwrap();
    let bpf_dir = format!("/sys/fs/bpf/agentguard-test-{tag}-{}", std::process::id());
    let mut cmd = Command::new(AGENTGUARD);
    cmd.args(["run", "--proxy-port", "0", "--bpf-dir", &bpf_dir])
        .arg("--policies")
        .arg(&policies)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stderr(stderr);
    if journal {
        // What systemd sets when it connects stderr to the journal.
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let out = cmd.output().unwrap();
    let _ = Command::new(AGENTGUARD)
        .args(["detach", "--bpf-dir", &bpf_dir])
        .output();
    assert!(!out.status.success());
    fs::read_to_string(&err_path).unwrap()
}

#[test]
fn logs_carry_journal_priorities_under_systemd_and_no_colour_off_a_terminal() {
    // stderr is the journal: a priority on every line, errors' details
    // included, no colour, no timestamp (the journal has its own).
    let journal = failing_run("journal", &[], true);
    let start = journal
        .lines()
        .find(|l| l.contains("starting agentguard"))
        .unwrap_or_else(|| panic!("{journal}"));
    assert!(start.starts_with("<6>"), "{journal}");
    assert!(!start.starts_with("<6>20"), "timestamp in {start}");
    let error = journal
        .lines()
        .position(|l| l.starts_with("<3>agentguard: error: invalid policy"))
        .unwrap_or_else(|| panic!("{journal}"));
    let detail = journal.lines().nth(error + 1).unwrap_or_default();
    assert!(
        detail.starts_with("<3>") && detail.contains("x.toml:3:10"),
        "{journal}"
    );
    assert!(journal.lines().all(|l| l.starts_with('<')), "{journal}");
    assert!(!journal.contains('\x1b'), "{journal}");

    // A JOURNAL_STREAM inherited by a process whose stderr now goes
    // elsewhere does not count; a file gets plain lines.
    let plain = failing_run("plain", &[("JOURNAL_STREAM", "1:2")], false);
    assert!(plain.contains("starting agentguard"), "{plain}");
    assert!(!plain.contains("<6>"), "{plain}");
    assert!(!plain.contains('\x1b'), "ANSI escapes in a file: {plain}");
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set() {
    require_root();
    // script(1) runs the command on a pseudo-terminal.
    let run = |no_color: bool| {
        let dir = tempfile::tempdir().unwrap();
        let inner = format!(
            "{AGENTGUARD} run --proxy-port 0 --bpf-dir /sys/fs/bpf/agentguard-test-tty-{pid} \
             --policies {d}/none --state-dir {d}/state --admin-socket {d}/admin.sock",
            pid = std::process::id(),
            d = dir.path().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &inner, "/dev/null"])
            .env_remove("JOURNAL_STREAM")
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().unwrap();
        let _ = Command::new(AGENTGUARD)
            .args(["detach", "--bpf-dir"])
            .arg(format!(
                "/sys/fs/bpf/agentguard-test-tty-{}",
                std::process::id()
            ))
            .output();
        text(&out.stdout)
    };
    let tty = run(false);
    assert!(tty.contains("starting agentguard"), "{tty}");
    assert!(tty.contains('\x1b'), "no colour on a terminal: {tty}");
    let no_color = run(true);
    assert!(no_color.contains("starting agentguard"), "{no_color}");
    assert!(!no_color.contains('\x1b'), "{no_color}");
}

/// The shipped units with `/usr/bin/agentguard` pointing at the binary
/// under test (the installed ones are verified by `cargo xtask package
/// --check`, with their man pages in place).
#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dir = tempfile::tempdir().unwrap();
    for (src, name) in [
        ("packaging/systemd/agentguard.service", "agentguard.service"),
        (
            "packaging/examples/agent-unit.service",
            "support-bot.service",
        ),
    ] {
        let unit = fs::read_to_string(format!("{root}/{src}"))
            .unwrap()
            .replace("/usr/bin/agentguard", AGENTGUARD)
            .replace("/opt/support-bot/bin/support-bot", "/bin/true");
        fs::write(dir.path().join(name), unit).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("support-bot.service"))
        .arg(dir.path().join("agentguard.service"))
        .output()
        .unwrap();
    // verify exits 0 on unknown keys and bad values too, warning on
    // stderr: any output is a failure.
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}\n{}",
        out.status,
        text(&out.stderr)
    );
    // It does notice a broken unit (the check is not vacuous).
    fs::write(
        dir.path().join("broken.service"),
        "[Service]\nType=notify\nExecStart=/bin/true\nProtectSystem=sometimes\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("broken.service"))
        .output()
        .unwrap();
    assert!(!out.stderr.is_empty());
}
