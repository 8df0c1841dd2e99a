//! The command line as scripts rely on it: exit codes that tell agentguard's
//! own failures from the agent's and "broken" from "could not check", the
//! token on stdin, `status` for people and `-o json` for scripts, the admin
//! socket from `--admin-socket` anywhere or `AGENTGUARD_ADMIN_SOCKET`, and
//! the config file's precedence.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    process::{Command, Output, Stdio},
};

use crate::common::{AGENTGUARD, Daemon, require_root, start_attempt, text};

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

#[test]
fn exec_exits_125_126_127_for_its_own_failures_and_the_agents_code_otherwise() {
    require_root();
    let daemon = Daemon::start(&["conv"]);
    // The agent's own exit code passes through.
    let out = daemon
        .exec("conv", &["sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(7), "{}", text(&out.stderr));
    // Not found: 127, like env(1) and a shell.
    let out = daemon
        .exec("conv", &["/nonexistent/agent-binary"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(127), "{}", text(&out.stderr));
    // Found but not executable: 126.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    let out = daemon
        .exec("conv", &[script.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(126), "{}", text(&out.stderr));
    // agentguard's own failures: 125 (unknown agent, no daemon, usage).
    let out = daemon.exec("nobody-here", &["true"]).output().unwrap();
    assert_eq!(code(&out), Some(125), "{}", text(&out.stderr));
    let out = Command::new(AGENTGUARD)
        .args(["exec", "--agent", "conv", "--admin-socket"])
        .arg(dir.path().join("none.sock"))
        .args(["--allow-root", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(125), "{}", text(&out.stderr));
    let out = Command::new(AGENTGUARD)
        .args(["exec", "--bogus-flag", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(125), "{}", text(&out.stderr));
}

#[test]
fn status_is_for_people_by_default_and_json_with_o_json_and_finds_the_socket_by_env() {
    require_root();
    let daemon = Daemon::start(&["people"]);
    let out = daemon.cli(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let human = text(&out.stdout);
    assert!(human.starts_with("agentguard running (pid "), "{human}");
    assert!(human.contains("people  guarded"), "{human}");
    assert!(serde_json::from_str::<serde_json::Value>(&human).is_err());
    let out = daemon.cli(&["status", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["agents"][0]["name"], "people");
    // The socket from the environment, and --admin-socket before the
    // subcommand as well as after it (the old spelling).
    let out = Command::new(AGENTGUARD)
        .args(["status", "-o", "json"])
        .env("AGENTGUARD_ADMIN_SOCKET", &daemon.admin_socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(AGENTGUARD)
        .arg("--admin-socket")
        .arg(&daemon.admin_socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A flag wins over the environment.
    let out = Command::new(AGENTGUARD)
        .args(["status", "--admin-socket"])
        .arg(&daemon.admin_socket)
        .env("AGENTGUARD_ADMIN_SOCKET", "/nonexistent/agentguard.sock")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn audit_verify_exits_2_when_it_cannot_check_and_token_verify_reads_stdin() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // No store, no key: nothing could be checked.
    let out = Command::new(AGENTGUARD)
        .args(["audit", "verify", "--state-dir"])
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));

    let daemon = Daemon::start(&["tok"]);
    let out = Command::new(AGENTGUARD)
        .args(["audit", "verify", "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));

    let jwks = dir.path().join("jwks.json");
    let out = Command::new(AGENTGUARD)
        .args(["token", "jwks", "--state-dir"])
        .arg(daemon.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    fs::write(&jwks, &out.stdout).unwrap();
    let verify = |jwks: &std::path::Path, arg: &str, stdin: &str| {
        let mut child = Command::new(AGENTGUARD)
            .args([
                "token",
                "verify",
                "--audience",
                "itsm",
                "--any-issuer",
                "--jwks",
            ])
            .arg(jwks)
            .arg(arg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    // A token that is no JWT, from stdin: checked, invalid, 1.
    let forged = "eyJhbGciOiJFUzI1NiIsImtpZCI6Im5vIn0.e30.c2ln";
    let out = verify(&jwks, "-", &format!("{forged}\n"));
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"valid\": false"),
        "{}",
        text(&out.stdout)
    );
    assert!(!text(&out.stderr).contains("deprecated"));
    // The old spelling still works, with a deprecation note.
    let out = verify(&jwks, forged, "");
    assert_eq!(code(&out), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("deprecated"),
        "{}",
        text(&out.stderr)
    );
    // Nothing on stdin, or a JWKS that cannot be read: could not check, 2.
    let out = verify(&jwks, "-", "");
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
    let out = verify(&dir.path().join("missing.json"), "-", forged);
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
}

#[test]
fn config_file_environment_and_flags_apply_in_that_order() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentguard.toml");
    fs::write(
        &config,
        "# test config\naudit_batch_max = 7\naudit_queue = 99\nstate_dir = \"/tmp/from-file\"\ndns_upstream = [\"127.0.0.1:5353\"]\n",
    )
    .unwrap();
    let show = |env: &[(&str, &str)], args: &[&str]| {
        let out = Command::new(AGENTGUARD)
            .arg("--config")
            .arg(&config)
            .args(["config", "show", "-o", "json"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let v = show(
        &[
            ("AGENTGUARD_AUDIT_QUEUE", "50"),
            ("AGENTGUARD_STATE_DIR", "/tmp/from-env"),
        ],
        &["--state-dir", "/tmp/from-flag"],
    );
    let file = config.display().to_string();
    assert_eq!(v["audit_batch_max"]["value"], 7);
    assert_eq!(v["audit_batch_max"]["source"]["kind"], "file");
    assert_eq!(v["audit_batch_max"]["source"]["path"], file.as_str());
    assert_eq!(v["audit_batch_max"]["source"]["line"], 2);
    assert_eq!(v["audit_queue"]["value"], 50);
    assert_eq!(v["audit_queue"]["source"]["var"], "AGENTGUARD_AUDIT_QUEUE");
    assert_eq!(v["state_dir"]["value"], "/tmp/from-flag");
    assert_eq!(v["state_dir"]["source"]["kind"], "flag");
    assert_eq!(v["dns_upstream"]["value"][0], "127.0.0.1:5353");
    assert_eq!(v["proxy_port"]["value"], 977);
    assert_eq!(v["proxy_port"]["source"]["kind"], "default");

    // AGENTGUARD_CONFIG names the file too; the text form says where.
    let out = Command::new(AGENTGUARD)
        .args(["config", "show"])
        .env("AGENTGUARD_CONFIG", &config)
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("audit_batch_max = 7")
                && l.ends_with(&format!("# file {file}:2"))),
        "{shown}"
    );

    // An unknown key, a bad value: refused with file and line, exit 2.
    fs::write(&config, "audit_batch_max = 7\nproxy_prot = 5\n").unwrap();
    let out = Command::new(AGENTGUARD)
        .arg("--config")
        .arg(&config)
        .args(["config", "show"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("{file}:2: unknown key \"proxy_prot\"")),
        "{}",
        text(&out.stderr)
    );
    fs::write(&config, "\nproxy_port = \"nine\"\n").unwrap();
    let out = Command::new(AGENTGUARD)
        .arg("--config")
        .arg(&config)
        .args(["run"])
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2));
    assert!(
        text(&out.stderr).contains(&format!("{file}:2: proxy_port: invalid value 'nine'")),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(AGENTGUARD)
        .args(["config", "show"])
        .env("AGENTGUARD_CONFIG", dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
}

#[test]
fn the_daemon_takes_its_settings_from_the_config_file() {
    require_root();
    // The file sets the proxy port to one that is taken: the daemon read
    // it if, and only if, it fails to bind that very port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agentguard.toml");
    fs::write(&config, format!("proxy_port = {port}\n")).unwrap();
    let config = config.display().to_string();
    let attempt = start_attempt(
        "configfile",
        (
            "c.toml",
            "[agent]\nname = \"c\"\ncgroup = \"agentguard-test-configfile/c\"\n",
        ),
        &[],
        &[("AGENTGUARD_CONFIG", &config)],
    );
    assert!(!attempt.out.status.success());
    let err = text(&attempt.out.stderr);
    assert!(
        err.contains("already in use") && err.contains(&port.to_string()),
        "{err}"
    );
    assert!(
        !attempt.pinned,
        "something was pinned before the port was bound"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    for (shell, marker) in [
        ("bash", "_agentguard()"),
        ("zsh", "#compdef agentguard"),
        ("fish", "complete -c agentguard"),
    ] {
        let out = Command::new(AGENTGUARD)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        // Subcommands and their flags are offered.
        assert!(
            script.contains("attach") && script.contains("proxy-port"),
            "{shell}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(AGENTGUARD)
        .arg("manpages")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for page in [
        "agentguard.1",
        "agentguard-run.1",
        "agentguard-attach.1",
        "agentguard-audit-verify.1",
        "agentguard-config-show.1",
    ] {
        let body =
            fs::read_to_string(dir.path().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            body.starts_with(".ie") || body.contains(".TH"),
            "{page}: {body}"
        );
    }
    let run = fs::read_to_string(dir.path().join("agentguard-run.1")).unwrap();
    assert!(run.contains("audit\\-batch\\-max"), "{run}");
}

#[test]
fn the_old_format_spelling_still_works_with_a_deprecation_note() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let test = |output: &[&str]| {
        Command::new(AGENTGUARD)
            .args(["policy", "test", "--policies", examples])
            .args(["--agent", "support-bot", "--method", "POST"])
            .args(["--url", "https://itsm.example.com/api/v2/tickets"])
            .args(output)
            .output()
            .unwrap()
    };
    let mut answers = Vec::new();
    for (spelling, deprecated) in [
        (&["-o", "json"][..], false),
        (&["--output=json"][..], false),
        (&["--format", "json"][..], true),
        (&["--format=json"][..], true),
    ] {
        let out = test(spelling);
        assert_eq!(code(&out), Some(0), "{spelling:?}: {}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        answers.push(v);
        assert_eq!(
            text(&out.stderr).contains("--format is deprecated; use -o/--output"),
            deprecated,
            "{spelling:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // The default output (not JSON) draws no note either.
    let out = test(&[]);
    assert_eq!(code(&out), Some(0));
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}
