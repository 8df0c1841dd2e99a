//! Spent tokens across restarts and replicas: verify-proxy's default store
//! is a file that survives a restart, and replicas share a real Redis
//! (Debian's `redis-server`, started here on a loopback port over TLS with
//! a password), so a token used at one replica is refused at another, and
//! at a restarted one. A Redis that cannot be reached refuses every token
//! (503), never lets one through.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::tokens::{
    AGENT, Setup, TOOL, agent_call_at, claims, direct, reflect_hits, setup_with, verify_proxy,
};
use crate::common::{TestCa, TlsUpstream, text};

/// Tokens that stay valid for the whole test.
const POLICY: &str = r#"
[[credential]]
id = "tool-token"
source = { jwt = { audience = "itsm", ttl = "60s" } }
inject = { header = "Authorization", format = "Bearer {secret}" }

[[tool]]
name = "tool.tickets"
host = "tool.agentguard.test"
methods = ["POST"]
paths = ["/reflect"]
credential = "tool-token"
"#;

const PASSWORD: &str = "agentguard-test-redis-password";

/// A `redis-server` on 127.0.0.1, TLS only (certificate from the test CA,
/// for the address), with a password; stopped on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
}

impl Redis {
    fn start(dir: &Path, ca: &TestCa) -> Self {
        // A port nobody holds now; redis-server takes it at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (cert, key) = ca.leaf_files("127.0.0.1", dir);
        let data = dir.join("redis-data");
        std::fs::create_dir_all(&data).unwrap();
        let conf = dir.join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\nrequirepass {PASSWORD}\n\
                 save \"\"\nappendonly no\ndir {}\nmaxmemory-policy noeviction\n",
                cert.display(),
                key.display(),
                ca.pem_path.display(),
                data.display()
            ),
        )
        .unwrap();
        let mut redis = Self {
            child: None,
            port,
            conf,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (cargo xtask setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A token the agent gets minted for `POST https://TOOL:port/reflect?dry=1`
/// with `body`, as seen by a stand-in for the tool on 127.0.0.10.
fn mint(s: &Setup, peek: &TlsUpstream, body: &Path) -> String {
    let out = agent_call_at(s, "127.0.0.10", peek.addr.port(), body);
    assert!(text(&out.stdout).ends_with("200"), "{}", text(&out.stderr));
    let seen = peek.header_values("/reflect", "authorization");
    let token = seen.last().unwrap().strip_prefix("Bearer ").unwrap();
    assert!(claims(token)["sub"].as_str().unwrap().ends_with(AGENT));
    token.to_owned()
}

#[test]
fn replicas_sharing_redis_refuse_a_token_spent_at_any_of_them() {
    let s = setup_with(POLICY, &[]);
    let redis = Redis::start(s.dir.path(), &s.ca);
    let password = s.dir.path().join("redis-password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let peek = TlsUpstream::start("127.0.0.10", TOOL, &s.ca);
    let origin = format!("https://{TOOL}:{}", peek.addr.port());
    let body = s.dir.path().join("body.json");
    std::fs::write(&body, "{}").unwrap();
    let url = redis.url();
    let ca = s.ca.pem_path.display().to_string();
    let pw = password.display().to_string();
    let replica = |listen: &str| {
        verify_proxy(
            &s,
            listen,
            &[
                "--audience",
                "itsm",
                "--public-origin",
                &origin,
                "--replay-store",
                &url,
                "--replay-store-password-file",
                &pw,
                "--replay-store-ca",
                &ca,
            ],
        )
    };
    let send = |ip: &str, port: u16, token: &str| {
        direct(&s, ip, port, token, "POST", "/reflect?dry=1", &body)
    };
    let a = replica("127.0.0.4:0");
    let b = replica("127.0.0.5:0");

    // Spent at A: refused at B, and at A.
    let first = mint(&s, &peek, &body);
    assert_eq!(send("127.0.0.4", a.port, &first).0, 200);
    let (status, headers) = send("127.0.0.5", b.port, &first);
    assert_eq!(status, 401, "{headers}");
    assert!(headers.contains("replay"), "{headers}");
    // A token B sees first: B takes it, A refuses it.
    let second = mint(&s, &peek, &body);
    assert_eq!(send("127.0.0.5", b.port, &second).0, 200);
    assert_eq!(send("127.0.0.4", a.port, &second).0, 401);

    // A restarted replica still refuses both.
    drop(a);
    let a = replica("127.0.0.4:0");
    for token in [&first, &second] {
        let (status, headers) = send("127.0.0.4", a.port, token);
        assert_eq!(status, 401, "{headers}");
        assert!(headers.contains("replay"), "{headers}");
    }
    assert_eq!(reflect_hits(&s), 2);

    // Keys in Redis are the jti's, with an expiry; the token is not there.
    let jti = claims(&first)["jti"].as_str().unwrap().to_owned();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-h", "127.0.0.1", "-p"])
            .arg(redis.port.to_string())
            .args(["--no-auth-warning", "-a", PASSWORD])
            .args(args)
            .output()
            .unwrap();
        text(&out.stdout).trim().to_owned()
    };
    let ttl: i64 = cli(&["TTL", &format!("agentguard:jti:{jti}")])
        .parse()
        .unwrap();
    assert!((1..=70).contains(&ttl), "ttl {ttl}");
    assert!(!cli(&["KEYS", "*"]).contains(first.rsplit('.').next().unwrap()));

    // A wrong password stops a replica at start, without the password in
    // what it says.
    let wrong = s.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let out = Command::new(crate::common::AGENTGUARD)
        .args(["verify-proxy", "--listen", "127.0.0.6:0", "--upstream"])
        .arg("http://127.0.0.1:9")
        .args(["--audience", "itsm", "--issuer", &s.issuer, "--jwks"])
        .arg(&s.jwks)
        .args(["--replay-store", &url, "--replay-store-ca", &ca])
        .arg("--replay-store-password-file")
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("replay-store"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");

    // Redis gone: a fresh token is refused with 503 (fail closed), the
    // tool is not reached, and no challenge blames the token.
    let mut redis = redis;
    redis.stop();
    let third = mint(&s, &peek, &body);
    let (status, headers) = send("127.0.0.5", b.port, &third);
    assert_eq!(status, 503, "{headers}");
    assert!(!headers.contains("www-authenticate"), "{headers}");
    assert_eq!(reflect_hits(&s), 2);
    // Back: the same token goes through (it was never spent).
    redis.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers) = send("127.0.0.5", b.port, &third);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{headers}");
        assert!(Instant::now() < deadline, "B did not reconnect to Redis");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(reflect_hits(&s), 3);
}

#[test]
fn the_default_store_survives_a_restart() {
    let s = setup_with(POLICY, &[]);
    let peek = TlsUpstream::start("127.0.0.10", TOOL, &s.ca);
    let origin = format!("https://{TOOL}:{}", peek.addr.port());
    let body = s.dir.path().join("body.json");
    std::fs::write(&body, "{}").unwrap();
    // No --replay-store: the default file, under a state dir of the
    // test's own.
    let state = s.dir.path().join("vp-state");
    let state_arg = state.display().to_string();
    let start = || {
        verify_proxy(
            &s,
            "127.0.0.4:0",
            &[
                "--audience",
                "itsm",
                "--public-origin",
                &origin,
                "--state-dir",
                &state_arg,
            ],
        )
    };
    let send = |port: u16, token: &str| {
        direct(
            &s,
            "127.0.0.4",
            port,
            token,
            "POST",
            "/reflect?dry=1",
            &body,
        )
    };
    let a = start();
    let token = mint(&s, &peek, &body);
    assert_eq!(send(a.port, &token).0, 200);
    drop(a);
    let a = start();
    let (status, headers) = send(a.port, &token);
    assert_eq!(status, 401, "{headers}");
    assert!(headers.contains("replay"), "{headers}");
    let files: Vec<String> = std::fs::read_dir(state.join("verify-proxy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.len() == 1 && files[0].starts_with("replay-") && files[0].ends_with(".redb"),
        "{files:?}"
    );
    // A second verify-proxy cannot take the same file: it says so.
    let out = std::process::Command::new(crate::common::AGENTGUARD)
        .args(["verify-proxy", "--listen", "127.0.0.4:0", "--upstream"])
        .arg("http://127.0.0.1:9")
        .args(["--audience", "itsm", "--issuer", &s.issuer, "--jwks"])
        .arg(&s.jwks)
        .args(["--state-dir", &state_arg])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(reflect_hits(&s), 1);
}
