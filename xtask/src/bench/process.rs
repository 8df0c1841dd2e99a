//! Long-running processes the bench starts (upstream, proxies, idle
//! clients): killed and reaped on drop, so an error or a Ctrl-C half way
//! leaves nothing behind; and pinning to CPUs.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The load generator's CPU, and the one the proxy and upstream share.
///
/// On 2 cores: the client on one, everything on the server side on the
/// other. The proxy then competes with the upstream for its CPU, so a
/// proxy's cost shows as lost throughput against the direct path rather
/// than being hidden by a CPU the direct path leaves idle.
pub const CLIENT_CPU: &str = "0";
pub const SERVER_CPU: &str = "1";

/// `taskset -c CPU` in front of `cmd`, or `cmd` unchanged on a machine
/// with one CPU (where pinning cannot separate anything).
pub fn pinned(cpu: &str, cmd: Command) -> Command {
    if !pinning_possible() {
        return cmd;
    }
    let mut c = crate::cmd::new("taskset");
    c.args(["-c", cpu])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}

pub fn pinning_possible() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

pub struct Running {
    pub name: String,
    child: Child,
}

impl Running {
    /// Spawns `cmd` with stdin piped (helpers exit when it closes) and
    /// stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &std::path::Path) -> Result<Self> {
        let log = std::fs::File::create(log)
            .with_context(|| format!("failed to create {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the process prints, waiting at most `timeout`.
    pub fn read_line(&mut self, timeout: Duration) -> Result<String> {
        let stdout = self
            .child
            .stdout
            .take()
            .with_context(|| format!("{}: stdout already taken", self.name))?;
        let (tx, rx) = mpsc::channel::<(std::io::Result<String>, ChildStdout)>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let res = reader.read_line(&mut line).map(|_| line);
            let _ = tx.send((res, reader.into_inner()));
        });
        match rx.recv_timeout(timeout) {
            Ok((line, stdout)) => {
                self.child.stdout = Some(stdout);
                let line = line?;
                if line.is_empty() {
                    bail!("{} exited before printing its ready line", self.name);
                }
                Ok(line)
            }
            Err(_) => bail!("{} printed nothing within {timeout:?}", self.name),
        }
    }

    /// Fails if the process has exited.
    pub fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status})", self.name);
        }
        Ok(())
    }

    /// Closes stdin: helpers report and exit on that.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Closes stdin (helpers exit on that), then waits up to 10 s before
    /// killing.
    pub fn finish(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        self.wait_exit(Duration::from_secs(10));
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit; whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `signal` (a `kill -s` name) to the process.
    pub fn signal(&self, signal: &str) {
        let _ = crate::cmd::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until something accepts TCP connections at `addr` (bounded).
pub fn wait_listening(addr: SocketAddr, what: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} is not listening on {addr} after {timeout:?}")
}
