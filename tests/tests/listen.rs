//! Listening: an agent binds only what its policy's `listen` lists (and
//! port 0, which clients bind before connecting), so it cannot squat a port
//! that others dial; and the daemon does not start when an agent already
//! holds one of its own listeners.

use serde_json::Value;

use crate::common::{
    Daemon, free_port, in_cgroup_dir, require_root, run_with_pid, start_attempt, text,
};

/// Binds each `kind host port` of argv (kind `tcp`, which then listens,
/// or `udp`) and prints `host port errno` (0: bound).
const BINDER: &str = r#"
import socket, sys
args = sys.argv[1:]
for i in range(0, len(args), 3):
    kind, host, port = args[i], args[i + 1], int(args[i + 2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        if kind == "tcp":
            s.listen()
        print(kind, host, port, 0)
    except OSError as e:
        print(kind, host, port, e.errno)
    s.close()
"#;

fn bind_all(daemon: &Daemon, agent: &str, binds: &[(&str, &str, u16)]) -> (u32, Vec<i64>) {
    let mut args: Vec<String> = vec!["python3".into(), "-c".into(), BINDER.into()];
    for (kind, host, port) in binds {
        args.extend([kind.to_string(), host.to_string(), port.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (pid, out) = run_with_pid(daemon.exec(agent, &args));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let errnos = text(&out.stdout)
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    (pid, errnos)
}

const EPERM: i64 = 1;

#[test]
fn agents_bind_only_what_listen_lists() {
    require_root();
    let (exact, any, other) = (free_port(), free_port(), free_port());
    let extra = format!("listen = [\"127.0.0.1:{exact}\", \"*:{any}\"]\n");
    let daemon = Daemon::builder(&["listener"]).policy(&extra).start();
    let (pid, got) = bind_all(
        &daemon,
        "listener",
        &[
            ("tcp", "127.0.0.1", exact),
            ("udp", "127.0.0.1", exact),
            ("tcp", "0.0.0.0", exact),
            ("tcp", "::1", any),
            ("tcp", "0.0.0.0", any),
            ("tcp", "127.0.0.1", other),
            ("udp", "::1", other),
            ("tcp", "127.0.0.1", 0),
            ("udp", "::", 0),
        ],
    );
    assert_eq!(got, [0, 0, EPERM, 0, 0, EPERM, EPERM, 0, 0]);
    let refusals = daemon.wait_for_refusals(pid, 3);
    let seen: Vec<(&str, &str, u64)> = refusals
        .iter()
        .map(|e: &Value| {
            (
                e["rule"].as_str().unwrap(),
                e["src_ip"].as_str().unwrap(),
                e["src_port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("kernel:bind-denied", "0.0.0.0", u64::from(exact)),
            ("kernel:bind-denied", "127.0.0.1", u64::from(other)),
            ("kernel:bind-denied", "::1", u64::from(other)),
        ]
    );
    assert!(
        refusals[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not in agent.listen"),
        "{refusals:#?}"
    );
    drop(daemon);

    // The default: nothing but port 0.
    let daemon = Daemon::start(&["quiet"]);
    let (_, got) = bind_all(
        &daemon,
        "quiet",
        &[
            ("tcp", "127.0.0.1", exact),
            ("tcp", "::", any),
            ("udp", "0.0.0.0", other),
            ("tcp", "127.0.0.1", 0),
        ],
    );
    assert_eq!(got, [EPERM, EPERM, EPERM, 0]);
}

#[test]
fn the_daemon_does_not_start_when_an_agent_holds_its_listener() {
    require_root();
    let tag = format!("agentguard-test-held-{}", std::process::id());
    let mount = crate::common::cgroup2_mount();
    let cgroup = mount.join(&tag).join("squatter");
    std::fs::create_dir_all(&cgroup).unwrap();
    // An agent process that took the port before its cgroup was guarded
    // (or while the daemon was down, with the port in its listen).
    let port = free_port();
    let script = format!(
        "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\nprint('up',flush=True)\ntime.sleep(60)"
    );
    let mut squatter = in_cgroup_dir(&cgroup, &["python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead as _;
        let mut line = String::new();
        std::io::BufReader::new(squatter.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "up");
    }
    let attempt = start_attempt(
        "held",
        (
            "squatter.toml",
            &format!("[agent]\nname = \"squatter\"\ncgroup = \"{tag}/squatter\"\n"),
        ),
        &[
            "--proxy-port",
            "0",
            "--allow-unguarded-processes",
            "--jwks-listen",
            &format!("127.0.0.1:{port}"),
        ],
        &[],
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
    let _ = std::fs::remove_dir(&cgroup);
    let _ = std::fs::remove_dir(mount.join(&tag));
    assert!(!attempt.out.status.success());
    let err = text(&attempt.out.stderr);
    assert!(
        err.contains(&format!("pid {}", squatter.id())) && err.contains("agent \"squatter\"'s"),
        "{err}"
    );
    assert!(err.contains("agentguard's own listeners"), "{err}");
    assert!(
        !attempt.pinned,
        "something was pinned before the listeners were bound"
    );
}
