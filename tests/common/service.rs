//! A daemon run the way systemd runs a `Type=notify` unit: its notify
//! socket is a Unix datagram socket bound here (`NOTIFY_SOCKET`), and the
//! test learns it is ready from `READY=1`, not by polling.

use std::{
    fs,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    AGENTGUARD, cgroup2_mount,
    machine::{self, Beside},
    require_root,
};

/// A daemon started the way systemd starts a `Type=notify` unit, without
/// waiting for it: the test learns it is ready from `READY=1` alone.
pub struct Service {
    child: Option<Child>,
    dir: tempfile::TempDir,
    notify: UnixDatagram,
    pub bpf_dir: PathBuf,
    cgroup_parent: PathBuf,
    /// Its share of the machine, like every test daemon's (see
    /// `machine`): a test that runs alone waits for it.
    _beside: Beside,
}

impl Service {
    /// Starts `agentguard run` with these policy files, pins under
    /// `/sys/fs/bpf/agentguard-test-<name>`, and the cgroup `<name>` (below
    /// the mount) removed at the end with what is below it.
    pub fn start(name: &str, policies: &[(&str, &str)], env: &[(&str, &str)]) -> Self {
        require_root();
        let beside = machine::beside();
        let dir = tempfile::tempdir().unwrap();
        let notify = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let policy_dir = dir.path().join("policies");
        fs::create_dir(&policy_dir).unwrap();
        for (file, body) in policies {
            fs::write(policy_dir.join(file), body).unwrap();
        }
        let policies = policy_dir;
        // bpffs refuses names with dots (a slice's name has one).
        let bpf_name = name.replace('.', "-");
        let bpf_dir =
            PathBuf::from("/sys/fs/bpf").join(if bpf_name.starts_with("agentguard-test-") {
                bpf_name
            } else {
                format!("agentguard-test-{bpf_name}")
            });
        let log = fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = Command::new(AGENTGUARD)
            // As the Daemon fixture does: kernels that refuse BPF LSM
            // programs (some VMs') run these tests too.
            .args([
                "run",
                "--proxy-port",
                "0",
                "--jwks-listen",
                "127.0.0.1:0",
                "--allow-unguarded-processes",
            ])
            .arg("--policies")
            .arg(&policies)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--admin-socket")
            .arg(dir.path().join("admin.sock"))
            .arg("--bpf-dir")
            .arg(&bpf_dir)
            .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            dir,
            notify,
            bpf_dir,
            cgroup_parent: cgroup2_mount().join(name),
            _beside: beside,
        }
    }

    /// Notifications until one holds `field` (bounded by `within`); all
    /// of them, oldest first, the matching one last.
    pub fn wait_for(&self, field: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|l| l == field || l.starts_with(field));
                seen.push(message);
                if found {
                    return seen;
                }
            } else if self.exited() {
                panic!(
                    "the daemon exited before {field}; got {seen:?}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
        }
        panic!(
            "no {field} within {within:?}; got {seen:?}\n--- daemon log ---\n{}",
            self.log()
        );
    }

    /// Whether the daemon has exited (a zombie not yet reaped: read from
    /// /proc, so that `wait_exit` can still reap it).
    fn exited(&self) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        fs::read_to_string(format!("/proc/{}/stat", child.id())).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    }

    /// Every notification received during `span`.
    pub fn collect(&self, span: Duration) -> Vec<String> {
        let deadline = Instant::now() + span;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        seen
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits for the daemon to exit (after SIGTERM).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("daemon running").wait().unwrap()
    }

    /// An agentguard command against this daemon's admin socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(AGENTGUARD)
            .args(args)
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .output()
            .unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(AGENTGUARD)
            .args(["detach", "--bpf-dir"])
            .arg(&self.bpf_dir)
            .output();
        remove_tree(&self.cgroup_parent);
    }
}

/// Removes a cgroup and its descendants, deepest first (rmdir fails while
/// processes are still exiting: retried briefly).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pinned link files of a bpffs pin directory.
pub fn pinned_links(bpf_dir: &Path) -> usize {
    fs::read_dir(bpf_dir.join("links")).map_or(0, |d| d.count())
}
