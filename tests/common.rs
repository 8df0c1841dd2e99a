//! Fixtures shared by the end-to-end tests.

mod daemon;
mod dns_upstream;
mod echo_upstream;
mod fake_api;
mod machine;
mod service;
mod setup;
mod tls_upstream;
mod upstream;

pub use daemon::{ALLOW_LOOPBACK_TEST_HOSTS, Daemon, DaemonBuilder, cgroup2_mount, in_cgroup_dir};
pub use dns_upstream::DnsUpstream;
pub use echo_upstream::{EchoUpstream, leak_text as echo_upstream_leak_text};
pub use fake_api::{ApiRequest, FakeApi, Handler};
pub use machine::alone;
pub use service::{Service, pinned_links};
pub use setup::{Setup, UPSTREAM_IP};
pub use tls_upstream::{SSE_EVENTS, TestCa, TlsUpstream};
pub use upstream::{BODY, Upstream};

/// A loopback port nobody listens on right now (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET on loopback; the body.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Path of the agentguard binary cargo built for these tests.
pub const AGENTGUARD: &str = env!("CARGO_BIN_EXE_agentguard");

/// Every privileged test starts here. Without root it fails with a message
/// that says why: a privileged test that skipped would pass while proving
/// nothing.
/// A credential file as the daemon accepts one: `contents` in `dir/name`,
/// mode 0600 (the daemon refuses secret files others could read).
pub fn secret_file(dir: &std::path::Path, name: &str, contents: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "privileged test: must run as root (it loads eBPF programs and creates cgroups); run `sudo -E cargo xtask test`"
    );
}

/// glibc asks nscd first in processes that look up users, groups or hosts,
/// whether or not nscd runs (python does at start when `HOME` is unset, as
/// in CI); agents may not reach its socket (nscd would resolve names outside
/// agentguard's resolver), so each such probe is a recorded kernel refusal.
/// Real, but whether it happens depends on the environment, not on what a
/// test checks.
pub fn is_nscd_probe(e: &serde_json::Value) -> bool {
    e["rule"] == "kernel:unix-connect-denied"
        && e["path"].as_str().is_some_and(|p| p.contains("/nscd/"))
}

/// Runs `cmd` with stdout and stderr captured; returns its pid (the
/// agent's, once `agentguard exec` has exec'd) and its output.
pub fn run_with_pid(mut cmd: std::process::Command) -> (u32, std::process::Output) {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

/// The command (for `agentguard exec`) of `tests/clients/orphaned_keep_alive.py`:
/// a shell (the registered process) runs the client, which sends `method`
/// to `url`, kills the shell, sends again on the same keep-alive
/// connection, then once on a new one, and prints
/// `STATUS STATUS SAME-CONNECTION PARENT-GONE STATUS`.
pub fn orphaned_keep_alive(url: &str, method: &str) -> Vec<String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/clients/orphaned_keep_alive.py");
    [
        "sh".to_owned(),
        "-c".to_owned(),
        "python3 \"$0\" \"$1\" \"$2\" & wait".to_owned(),
        script.display().to_string(),
        url.to_owned(),
        method.to_owned(),
    ]
    .into()
}

/// The output of a finished command, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The stdout of an agent that must have succeeded; on failure the test
/// fails with everything the agent printed.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "agent failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The outcome of [`start_attempt`].
pub struct StartAttempt {
    pub out: std::process::Output,
    /// Whether anything was pinned in bpffs before the daemon stopped.
    pub pinned: bool,
}

/// Runs `agentguard run` once, in a throwaway state dir with one policy file
/// (`name`, `body`), for start-ups that must be refused: the daemon is
/// expected to exit on its own. Anything it pinned is removed afterwards.
pub fn start_attempt(
    tag: &str,
    (name, body): (&str, &str),
    args: &[&str],
    env: &[(&str, &str)],
) -> StartAttempt {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join(name), body).unwrap();
    let bpf_dir = format!("/sys/fs/bpf/agentguard-test-{tag}-{}", std::process::id());
    let out = std::process::Command::new(AGENTGUARD)
        .envs(env.iter().copied())
        .args(["run", "--bpf-dir", &bpf_dir])
        .args(args)
        .arg("--policies")
        .arg(&policies)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-socket")
        .arg(dir.path().join("admin.sock"))
        .output()
        .unwrap();
    let pinned = std::path::Path::new(&bpf_dir).exists();
    let _ = std::process::Command::new(AGENTGUARD)
        .args(["detach", "--bpf-dir", &bpf_dir])
        .output();
    StartAttempt { out, pinned }
}
