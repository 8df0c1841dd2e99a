//! A real `agentguard run` in its own temporary state, cgroups and bpffs
//! directory, so tests never touch a daemon the machine may be running.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    is_nscd_probe,
    machine::{self, Beside},
};

use super::{AGENTGUARD, require_root, text};

static INSTANCE: AtomicUsize = AtomicUsize::new(0);

/// Tools for tests about redirection rather than policy: anything on the
/// loopback hosts the plain upstreams use.
pub const ALLOW_LOOPBACK_TEST_HOSTS: &str = r#"
[[tool]]
name = "test.loopback-v4"
host = "127.0.0.2"
methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
paths = ["/", "/*"]

[[tool]]
name = "test.loopback-v6"
host = "::1"
methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
paths = ["/", "/*"]
"#;

pub struct Daemon {
    child: Option<Child>,
    nofile: Option<u64>,
    state_mounted: bool,
    upstream_ca: Option<PathBuf>,
    run_args: Vec<String>,
    run_env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    pub admin_socket: PathBuf,
    pub bpf_dir: PathBuf,
    cgroup_parent: PathBuf,
    agents: Vec<String>,
    /// Dropped after the daemon is stopped (fields drop after `drop`).
    _beside: Beside,
}

/// How to start a test daemon: its agents, what their policy says beyond
/// name and cgroup, and how `agentguard run` is called. Made by
/// [`Daemon::builder`]; [`DaemonBuilder::start`] starts it.
#[must_use]
pub struct DaemonBuilder {
    agents: Vec<String>,
    policy_extra: String,
    /// Per-agent replacements of `policy_extra`.
    policy_for: Vec<(String, String)>,
    upstream_ca: Option<PathBuf>,
    run_args: Vec<String>,
    run_env: Vec<(String, String)>,
    nofile: Option<u64>,
    state_tmpfs: Option<String>,
}

impl DaemonBuilder {
    /// TOML appended to every agent's policy file, right after its
    /// `cgroup` line (so it may start with more `[agent]` keys, such as
    /// `mode`). None by default: default deny.
    pub fn policy(mut self, extra: &str) -> Self {
        self.policy_extra = extra.to_owned();
        self
    }

    /// `agent`'s own policy after its name and cgroup, instead of the one
    /// [`DaemonBuilder::policy`] gives every agent.
    pub fn policy_for(mut self, agent: &str, extra: &str) -> Self {
        self.policy_for.push((agent.to_owned(), extra.to_owned()));
        self
    }

    /// `--upstream-ca`: the test upstreams' CA.
    pub fn upstream_ca(mut self, pem: &Path) -> Self {
        self.upstream_ca = Some(pem.to_owned());
        self
    }

    /// More `agentguard run` arguments (audit, metrics, DNS, OTLP flags).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.run_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A variable set for `agentguard run` (test hooks).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.run_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// RLIMIT_NOFILE (soft and hard) of `agentguard run`, for the tests
    /// about descriptor exhaustion.
    pub fn nofile(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Puts the state folder on a tmpfs of this size (`mount -o size=`),
    /// which the test may fill; unmounted when the daemon is dropped.
    pub fn state_tmpfs(mut self, size: &str) -> Self {
        self.state_tmpfs = Some(size.to_owned());
        self
    }

    /// Starts the daemon, in its own state folder, cgroups and bpffs
    /// folder, and waits until it answers.
    pub fn start(self) -> Daemon {
        require_root();
        let beside = machine::beside();
        let n = INSTANCE.fetch_add(1, Ordering::SeqCst);
        let tag = format!("agentguard-test-{}-{n}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        for agent in &self.agents {
            let extra = self
                .policy_for
                .iter()
                .find(|(a, _)| a == agent)
                .map_or(&self.policy_extra, |(_, p)| p);
            fs::write(
                policies.join(format!("{agent}.toml")),
                format!("[agent]\nname = \"{agent}\"\ncgroup = \"{tag}/{agent}\"\n{extra}\n"),
            )
            .unwrap();
        }
        let cgroup_mount = cgroup2_mount();
        let state_mounted = if let Some(size) = &self.state_tmpfs {
            let state = dir.path().join("state");
            fs::create_dir(&state).unwrap();
            let out = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0711")])
                .arg(&tag)
                .arg(&state)
                .output()
                .unwrap();
            assert!(out.status.success(), "mount tmpfs: {}", text(&out.stderr));
            true
        } else {
            false
        };
        let mut daemon = Daemon {
            child: None,
            nofile: self.nofile,
            state_mounted,
            upstream_ca: self.upstream_ca,
            run_args: self.run_args,
            run_env: self.run_env,
            admin_socket: dir.path().join("admin.sock"),
            bpf_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
            cgroup_parent: cgroup_mount.join(&tag),
            agents: self.agents,
            dir,
            _beside: beside,
        };
        daemon.spawn();
        daemon
    }
}

impl Daemon {
    /// A daemon guarding one cgroup per agent name in `agents`, to be
    /// configured and started.
    pub fn builder(agents: &[&str]) -> DaemonBuilder {
        DaemonBuilder {
            agents: agents.iter().map(|a| a.to_string()).collect(),
            policy_extra: String::new(),
            policy_for: Vec::new(),
            upstream_ca: None,
            run_args: Vec::new(),
            run_env: Vec::new(),
            nofile: None,
            state_tmpfs: None,
        }
    }

    /// The common case: a daemon guarding one cgroup per agent name in
    /// `agents`, each allowed every method and path on the loopback test
    /// hosts.
    pub fn start(agents: &[&str]) -> Self {
        Self::builder(agents)
            .policy(ALLOW_LOOPBACK_TEST_HOSTS)
            .start()
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(AGENTGUARD);
        // Any free port for the JWKS: several test daemons (and perhaps the
        // machine's own) must not contend for the default. Kernels that
        // refuse BPF LSM programs (as some VMs' do) run the tests too;
        // where the BPF LSM works the flag changes nothing, and the tests
        // about other processes check `processes_guarded` themselves.
        command.args([
            "--log-format",
            "json",
            "run",
            "--proxy-port",
            "0",
            "--jwks-listen",
            "127.0.0.1:0",
            "--allow-unguarded-processes",
        ]);
        if let Some(ca) = &self.upstream_ca {
            command.arg("--upstream-ca").arg(ca);
        }
        command
            .args(&self.run_args)
            .envs(self.run_env.iter().cloned());
        if let Some(n) = self.nofile {
            // SAFETY: only setrlimit, async-signal-safe, between fork and
            // exec.
            unsafe {
                command.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = command
            .arg("--policies")
            .arg(self.dir.path().join("policies"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .arg("--bpf-dir")
            .arg(&self.bpf_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn agentguard run");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls the admin API (bounded: 30 s) until the daemon answers.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agentguard run exited early ({status}):\n{}", self.log());
            }
            let out = self.cli(&["status"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agentguard run not ready after 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no clean-up code in the daemon runs.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, as `systemctl stop` sends it: the daemon's own clean stop.
    /// Waits (bounded: 30 s) until it has exited.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "agentguard run still running 30 s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again on the same state, policies and bpffs pins.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill the daemon first");
        self.spawn();
    }

    /// [`Daemon::restart`] with `args` in place of the builder's extra
    /// `agentguard run` arguments.
    pub fn restart_with_args(&mut self, args: &[&str]) {
        self.run_args = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// Runs an agentguard CLI command against this daemon's admin socket.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(AGENTGUARD)
            .args(args)
            .arg("--admin-socket")
            .arg(&self.admin_socket)
            .output()
            .unwrap()
    }

    /// `agentguard exec --agent AGENT -- CMD...`, ready to spawn.
    ///
    /// The agent runs as root without capabilities (`--allow-root`): these
    /// tests are about the network path, and their temporary files are
    /// root's. Tests about privileges use [`Daemon::exec_with`].
    pub fn exec(&self, agent: &str, cmd: &[&str]) -> Command {
        self.exec_with(agent, &["--allow-root"], cmd)
    }

    /// `agentguard exec --agent AGENT FLAGS... -- CMD...`.
    pub fn exec_with(&self, agent: &str, flags: &[&str], cmd: &[&str]) -> Command {
        let mut c = Command::new(AGENTGUARD);
        c.args(["exec", "--agent", agent, "--admin-socket"])
            .arg(&self.admin_socket)
            .args(flags)
            .arg("--")
            .args(cmd);
        c
    }

    /// Like [`Daemon::exec`], with a private `/etc/hosts` mapping `names` to
    /// `ip`: the command runs in its own mount namespace (same cgroup, same
    /// pid), so unmodified clients resolve the test upstreams' names the
    /// ordinary way, and the machine's /etc/hosts is untouched.
    pub fn exec_resolving(&self, agent: &str, names: &[&str], ip: &str, cmd: &[&str]) -> Command {
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, ip)).collect();
        self.exec_resolving_many(agent, &pairs, cmd)
    }

    /// [`Daemon::exec_resolving`] with `agentguard exec` flags (e.g.
    /// `--on-behalf-of WHO`).
    pub fn exec_resolving_with(
        &self,
        agent: &str,
        flags: &[&str],
        names: &[&str],
        ip: &str,
        cmd: &[&str],
    ) -> Command {
        let mut all = vec!["--allow-root"];
        all.extend_from_slice(flags);
        let exec = self.exec_with(agent, &all, cmd);
        let hosts = self
            .dir
            .path()
            .join(format!("hosts-with-{}", names.join("-")));
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for name in names {
            text.push_str(&format!("{ip} {name}\n"));
        }
        fs::write(&hosts, text).unwrap();
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
            .arg(hosts.display().to_string())
            .arg(exec.get_program())
            .args(exec.get_args());
        c
    }

    /// [`Daemon::exec_resolving`] with a different address per name.
    pub fn exec_resolving_many(
        &self,
        agent: &str,
        names: &[(&str, &str)],
        cmd: &[&str],
    ) -> Command {
        let tag: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
        let hosts = self.dir.path().join(format!("hosts-{}", tag.join("-")));
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, ip) in names {
            text.push_str(&format!("{ip} {name}\n"));
        }
        fs::write(&hosts, text).unwrap();
        let hosts = hosts.display().to_string();
        // The mount needs CAP_SYS_ADMIN, which the agent no longer has: set
        // up the namespace first, then exec agentguard exec inside it (each
        // step execs, so the agent keeps this process's pid).
        let exec = self.exec(agent, cmd);
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
            .arg(&hosts)
            .arg(exec.get_program())
            .args(exec.get_args());
        c
    }

    /// Like [`Daemon::exec`], in a private mount namespace whose
    /// /etc/resolv.conf names `nameserver` (any address: the kernel sends
    /// the queries to agentguard's resolver whatever it is) and whose
    /// /etc/hosts knows only localhost, so every lookup is a DNS query.
    pub fn exec_with_nameserver(
        &self,
        agent: &str,
        flags: &[&str],
        nameserver: &str,
        cmd: &[&str],
    ) -> Command {
        let hosts = self.dir.path().join("hosts-dns");
        fs::write(&hosts, "127.0.0.1 localhost\n::1 localhost\n").unwrap();
        let resolv = self.dir.path().join(format!("resolv-{nameserver}"));
        // One attempt, short timeout: a refused query should fail fast.
        fs::write(
            &resolv,
            format!("nameserver {nameserver}\noptions timeout:2 attempts:1\n"),
        )
        .unwrap();
        let exec = self.exec_with(agent, flags, cmd);
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/hosts && mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"")
            .arg(&hosts)
            .arg(&resolv)
            .arg(exec.get_program())
            .args(exec.get_args());
        c
    }

    /// A command that joins the agent's cgroup by itself (no daemon
    /// involved), for when the daemon is down.
    pub fn in_cgroup(&self, agent: &str, cmd: &[&str]) -> Command {
        in_cgroup_dir(&self.cgroup_path(agent), cmd)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The policy file of `agent`, to edit for reload tests.
    pub fn policy_path(&self, agent: &str) -> PathBuf {
        self.dir
            .path()
            .join("policies")
            .join(format!("{agent}.toml"))
    }

    pub fn cgroup_path(&self, agent: &str) -> PathBuf {
        self.cgroup_parent.join(agent)
    }

    /// The daemon's recent connection decisions.
    pub fn connections(&self) -> Vec<Value> {
        let out = self.cli(&["connections"]);
        assert!(out.status.success(), "connections: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    /// Every committed audit event, oldest first, as `audit query` prints
    /// them.
    pub fn audit_events(&self) -> Vec<Value> {
        let out = Command::new(AGENTGUARD)
            .args([
                "audit",
                "query",
                "-o",
                "json",
                "--limit",
                "100000",
                "--state-dir",
            ])
            .arg(self.state_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "audit query: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    /// `agentguard status`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "-o", "json"]);
        assert!(out.status.success(), "status: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Polls (bounded: 5 s) until `pred` holds for the audit events.
    pub fn wait_for_events(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = self.audit_events();
            if pred(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "{what}: {events:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The kernel refusals of process `pid`, oldest first, once there are
    /// at least `count` of them (bounded: 5 s), without glibc's nscd probes
    /// (see [`is_nscd_probe`]).
    pub fn wait_for_refusals(&self, pid: u32, count: usize) -> Vec<Value> {
        let of_pid =
            |e: &&Value| e["kind"] == "kernel_refusal" && e["pid"] == pid && !is_nscd_probe(e);
        let events = self.wait_for_events("kernel refusals", |e| {
            e.iter().filter(of_pid).count() >= count
        });
        events.iter().filter(of_pid).cloned().collect()
    }

    /// Polls `agentguard status` (bounded: 15 s) until the last reload
    /// (not the start) has the given outcome.
    pub fn wait_for_reload(&self, accepted: bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.status();
            let last = &status["last_reload"];
            if last["trigger"] != "start" && last["accepted"] == accepted {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no reload with accepted={accepted}: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn pinned_links(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.bpf_dir.join("links"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agentguard daemon log ---\n{}", self.log());
        }
        // Unpin everything: the test cgroups must not stay guarded.
        let _ = Command::new(AGENTGUARD)
            .args(["detach", "--bpf-dir"])
            .arg(&self.bpf_dir)
            .output();
        for agent in &self.agents {
            remove_cgroup(&self.cgroup_parent.join(agent));
        }
        remove_cgroup(&self.cgroup_parent);
        if self.state_mounted {
            let _ = Command::new("umount").arg(self.state_dir()).output();
        }
    }
}

/// rmdir fails while processes are still exiting; retry briefly.
fn remove_cgroup(path: &Path) {
    for _ in 0..50 {
        if fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cgroup v2 mount point (not assumed: hybrid hosts differ).
pub fn cgroup2_mount() -> PathBuf {
    agentguard::procfs::find_mount("cgroup2")
        .unwrap()
        .expect("cgroup v2 mount")
        .mount_point
}

/// `cmd`, started directly in the cgroup at `dir` (joined between fork and
/// exec), bypassing `agentguard exec`.
pub fn in_cgroup_dir(dir: &Path, cmd: &[&str]) -> Command {
    let procs = dir.join("cgroup.procs");
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..]);
    // SAFETY: only async-signal-safe work between fork and exec: one
    // open/write/close through std's thin wrappers.
    unsafe {
        c.pre_exec(move || fs::write(&procs, b"0"));
    }
    c
}
