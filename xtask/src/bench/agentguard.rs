//! The agentguard daemon under test: the release binary, with its own
//! state dir, bpffs dir, admin socket, a free proxy port and a cgroup no
//! one else uses, so it never touches a daemon the machine may be running.
//! Dropping it stops the daemon, unpins its programs and removes the
//! cgroups, whatever happened before.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    process::{Running, SERVER_CPU, pinned},
    resolve::Resolution,
    upstream::{EXCHANGE_HOST, HOST, JWT_HOST, PASS_HOST, SIGV4_HOST, UPSTREAM_IP, Upstream},
};
use crate::cmd;

pub const AGENT: &str = "bench";
/// The injected secret: a fixed dummy (the upstream ignores it).
const SECRET_ENV: &str = "AGENTGUARD_BENCH_KEY";
/// The exchange path's client secret at the token endpoint (a dummy).
const CLIENT_SECRET_ENV: &str = "AGENTGUARD_BENCH_CLIENT_SECRET";
/// The SigV4 path's secret access key (a dummy: the upstream does not
/// verify signatures; the signing is what is measured).
const AWS_SECRET_ENV: &str = "AGENTGUARD_BENCH_AWS_SECRET";

pub struct Daemon {
    binary: PathBuf,
    pub admin_socket: PathBuf,
    pub state_dir: PathBuf,
    bpf_dir: PathBuf,
    cgroup_parent: PathBuf,
    log: PathBuf,
    process: Option<Running>,
}

/// The environment of the daemon behind the kernel relay row (an opt-in;
/// the main daemon relays in user space).
pub const KERNEL_RELAY: &[(&str, &str)] = &[("AGENTGUARD_PASSTHROUGH_RELAY", "kernel")];
/// The opt-in to passthrough's direct way.
pub const DIRECT_RELAY: &[(&str, &str)] = &[("AGENTGUARD_PASSTHROUGH_RELAY", "direct")];

impl Daemon {
    /// `instance` tells apart daemons of one bench (cgroup, bpffs dir).
    pub fn start(binary: &Path, dir: &Path, upstream: &Upstream, instance: &str) -> Result<Self> {
        Self::start_under(binary, dir, upstream, instance, &[], &[])
    }

    /// [`Daemon::start`], with `env` set for `agentguard run`.
    pub fn start_with(
        binary: &Path,
        dir: &Path,
        upstream: &Upstream,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_under(binary, dir, upstream, instance, &[], env)
    }

    /// As [`Daemon::start_with`], the daemon run by `wrapper` (a program
    /// and its arguments, e.g. valgrind for the instruction counts), which
    /// execs in the same process: the pid is the daemon's.
    pub fn start_under(
        binary: &Path,
        dir: &Path,
        upstream: &Upstream,
        instance: &str,
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let tag = format!("agentguard-bench-{}{instance}", std::process::id());
        let policies = dir.join("policies");
        fs::create_dir_all(&policies)?;
        fs::write(
            policies.join(format!("{AGENT}.toml")),
            policy(&tag, &upstream.token_url()),
        )?;
        let mut daemon = Self {
            binary: binary.to_owned(),
            admin_socket: dir.join("admin.sock"),
            state_dir: dir.join("state"),
            bpf_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
            cgroup_parent: cgroup2_mount()?.join(&tag),
            log: dir.join("agentguard.log"),
            process: None,
        };
        let mut c = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = cmd::new(program);
                c.args(args).arg(binary);
                c
            }
            None => cmd::new(binary),
        };
        c.env(SECRET_ENV, "bench-secret-not-real")
            .env(CLIENT_SECRET_ENV, "bench-client-secret-not-real")
            .env(AWS_SECRET_ENV, "bench-aws-secret-not-real")
            .envs(env.iter().copied())
            .args(["--log-format", "json", "run"])
            // 0: a port the kernel knows is free (never the default 977,
            // which a real daemon may hold); the JWKS endpoint is not
            // measured.
            .args(["--proxy-port", "0", "--jwks-listen", "off"])
            // What is measured is the network path; on a kernel without a
            // usable BPF LSM the daemon starts only with this, and where
            // the BPF LSM works it changes nothing.
            .arg("--allow-unguarded-processes")
            .arg("--upstream-ca")
            .arg(&upstream.ca)
            .arg("--dns-upstream")
            .arg(upstream.dns.to_string())
            .arg("--policies")
            .arg(&policies)
            .arg("--state-dir")
            .arg(&daemon.state_dir)
            .arg("--admin-socket")
            .arg(&daemon.admin_socket)
            .arg("--bpf-dir")
            .arg(&daemon.bpf_dir);
        daemon.process = Some(Running::spawn(
            "agentguard run",
            pinned(SERVER_CPU, c),
            &daemon.log,
        )?);
        // Under a wrapper that runs it 50 times slower, start-up (keys,
        // the CA, loading the eBPF programs) takes longer.
        let ready = if wrapper.is_empty() { 30 } else { 300 };
        daemon.wait_ready(Duration::from_secs(ready))?;
        Ok(daemon)
    }

    /// The last `lines` lines of the daemon's log, for an error that
    /// needs to say what the daemon made of the requests.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().map_or(0, Running::pid)
    }

    /// The CA the agent's leaves chain to.
    pub fn ca(&self) -> PathBuf {
        self.state_dir.join("ca").join("ca.crt")
    }

    /// `cmd` run as the bench agent: joined to its cgroup before exec, so
    /// every connection it makes is redirected to the proxy. Root with its
    /// capabilities kept: the bench measures the network path, not the
    /// sandbox, and the idle-connection client raises its own limits.
    pub fn exec(&self, cmd: Command) -> Command {
        let mut c = cmd::new(&self.binary);
        c.args(["exec", "--agent", AGENT, "--admin-socket"])
            .arg(&self.admin_socket)
            .args(["--allow-root", "--keep-capabilities", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }

    /// Looks the passthrough name up as the agent, through agentguard's
    /// resolver: agentguard relays passthrough TLS only to an address its
    /// resolver gave the agent for that name.
    pub fn resolve_passthrough(&self, resolution: &Resolution) -> Result<()> {
        let mut getent = cmd::new("getent");
        getent.args(["ahostsv4", PASS_HOST]);
        let out = cmd::output(&mut resolution.wrap(self.exec(getent)))?;
        if !out.contains(&UPSTREAM_IP.to_string()) {
            bail!("the agent resolved {PASS_HOST} to {out:?}, not {UPSTREAM_IP}");
        }
        Ok(())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let log = &self.log;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(p) = self.process.as_mut()
                && let Err(e) = p.ensure_alive()
            {
                bail!("{e}:\n{}", fs::read_to_string(log).unwrap_or_default());
            }
            let status = cmd::new(&self.binary)
                .arg("status")
                .arg("--admin-socket")
                .arg(&self.admin_socket)
                .output();
            if status.is_ok_and(|o| o.status.success()) && self.ca().exists() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "agentguard not ready after {} s:\n{}",
                    limit.as_secs(),
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stopped as a service manager stops it (SIGTERM, then a kill
        // after 10 s): an instrumented build writes its profile only on a
        // clean exit (xtask/src/release.rs).
        if let Some(mut p) = self.process.take() {
            p.signal("TERM");
            p.wait_exit(Duration::from_secs(10));
        }
        // Unpin: the bench cgroup must not stay guarded.
        let _ = cmd::new(&self.binary)
            .args(["detach", "--bpf-dir"])
            .arg(&self.bpf_dir)
            .output();
        remove_cgroup(&self.cgroup_parent.join(AGENT));
        remove_cgroup(&self.cgroup_parent);
    }
}

/// One agent: its calls to the upstream's main name go the full path (a
/// static credential injected), to the JWT name with a request-bound token
/// minted per call, to the exchange name with a token exchanged once at
/// the upstream's `/token` and cached, to the S3 name re-signed with SigV4,
/// and to the passthrough name relayed untouched. POSTs to
/// `/rpc` go through a plain tool; to `/mcp` through 50 MCP tools with
/// conditions on the call's arguments, the last of which allows the bench's
/// call (so each decision evaluates all 50).
fn policy(tag: &str, token_url: &str) -> String {
    let mut mcp = String::new();
    for i in 0..50 {
        mcp.push_str(&format!(
            r#"
[[tool]]
name = "bench.mcp.{i}"
host = "{HOST}"
methods = ["POST"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["create_issue", "list_*", "get_*"]
when = 'mcp.arguments.owner == "org-{i}" && mcp.arguments.repo in ["widgets", "gadgets"]'
credential = "bench-key"
"#
        ));
    }
    policy_head(tag, token_url) + &mcp
}

fn policy_head(tag: &str, token_url: &str) -> String {
    format!(
        r#"[agent]
name = "{AGENT}"
cgroup = "{tag}/{AGENT}"

[[credential]]
id = "bench-key"
source = {{ env = "{SECRET_ENV}" }}
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}

[[credential]]
id = "bench-jwt"
source = {{ jwt = {{ audience = "bench-tool", scope = "bench:read", ttl = "60s" }} }}
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}

[[credential]]
id = "bench-exchanged"
inject = {{ header = "Authorization", format = "Bearer {{secret}}" }}

[credential.source.token_exchange]
token_url = "{token_url}"
client_id = "agentguard-bench"
client_secret = {{ env = "{CLIENT_SECRET_ENV}" }}
audience = "bench-tool"
scope = "bench:read"

[[credential]]
id = "bench-aws"
inject = {{ aws_sigv4 = {{ regions = ["us-east-1"], services = ["s3"] }} }}

[credential.source.aws]
access_key_id = "AKIDBENCHNOTREAL"
secret_access_key = {{ env = "{AWS_SECRET_ENV}" }}

[[tool]]
name = "bench.read"
host = "{HOST}"
methods = ["GET"]
paths = ["/1k", "/64k", "/sse", "/20m", "/200m"]
credential = "bench-key"

[[tool]]
name = "bench.rpc"
host = "{HOST}"
methods = ["POST"]
paths = ["/rpc"]
credential = "bench-key"

[[tool]]
name = "bench.jwt-read"
host = "{JWT_HOST}"
methods = ["GET"]
paths = ["/1k", "/64k", "/sse"]
credential = "bench-jwt"

[[tool]]
name = "bench.exchanged-read"
host = "{EXCHANGE_HOST}"
methods = ["GET"]
paths = ["/1k", "/64k", "/sse"]
credential = "bench-exchanged"

[[tool]]
name = "bench.s3-read"
host = "{SIGV4_HOST}"
methods = ["GET"]
paths = ["/1k", "/64k"]
credential = "bench-aws"
aws_actions = ["s3:GetObject"]

[[passthrough]]
host = "{PASS_HOST}"
"#
    )
}

/// rmdir fails while processes are still leaving the cgroup; retry briefly.
fn remove_cgroup(path: &Path) {
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("bench: warning: could not remove cgroup {}", path.display());
}

/// cgroup v2 is not always at /sys/fs/cgroup (here it is
/// /sys/fs/cgroup/unified): find it in mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let mount = fields.split_whitespace().nth(4)?;
            (rest.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .context("no cgroup v2 mount in /proc/self/mountinfo")
}
