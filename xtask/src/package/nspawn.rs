//! `cargo xtask package --nspawn`: the package end to end under a real
//! systemd. PID 1 is not systemd on these machines, so a Debian root made by
//! debootstrap (from the Debian archive apt uses here) boots with
//! systemd-nspawn; the package is installed in it, and the test drives
//! `systemctl` inside: agentguard's hardened `Type=notify` unit starts,
//! an agent unit with the gate is guarded in its own cgroup, its traffic is
//! decided by agentguard, it is guarded again after a restart, and it
//! cannot start while agentguard is down.
//!
//! Host state is kept apart: the container runs in cgroups of its own
//! (made here, removed after), with a private network, on a copy of the
//! cached root; its bpffs is its own mount, gone with it.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    cmd, debian_root, paths,
    setup::{SERVICE_PACKAGES, apt::Apt},
};

/// What the root needs beyond debootstrap's minimal base: systemd as PID 1,
/// the bus systemctl talks over, a client for the agent, and procps (the
/// package depends on it: /bin/kill for `systemctl reload`).
const INCLUDE: &str = "systemd,systemd-sysv,dbus,curl,ca-certificates,procps";
/// A file of each package in INCLUDE: a cached root without one is made
/// again.
const INCLUDED_FILES: &[&str] = &["usr/bin/systemctl", "usr/bin/curl", "usr/bin/kill"];
/// The hierarchies nspawn places the container in: the cgroup v2 tree
/// (found, not assumed) and, on hybrid hosts, the named v1 `systemd` one.
const V1_SYSTEMD: &str = "/sys/fs/cgroup/systemd";

/// The agent's policy: its unit, and journald's stdout socket, which
/// systemd connects the unit's stdout to (in the unit's cgroup, after the
/// gate guarded it): without it the agent's output goes to /dev/null.
const BOT_POLICY: &str = "[agent]\nname = \"bot\"\nsystemd_unit = \"bot.service\"\nunix_sockets = [\"/run/systemd/journal/stdout\"]\n";

pub fn run(root: &Path, deb: &Path) -> Result<()> {
    // setup installs them; `--no-setup` runs may come without.
    Apt::default().ensure_without_recommends(SERVICE_PACKAGES)?;
    let base = paths::target_dir(root).join("nspawn");
    let cached = base.join("root");
    debian_root::ensure(
        &base,
        &cached,
        &debian_root::Spec {
            include: INCLUDE,
            marker_files: INCLUDED_FILES,
        },
    )?;
    let run_root = base.join(format!("run-{}", std::process::id()));
    if run_root.exists() {
        fs::remove_dir_all(&run_root)?;
    }
    println!("nspawn: copying the root for this run");
    cmd::run(cmd::new("cp").arg("-a").arg(&cached).arg(&run_root))?;
    let result = prepare(root, &run_root, deb).and_then(|()| boot_and_check(&run_root));
    let _ = fs::remove_dir_all(&run_root);
    if result.is_ok() {
        // The console log is kept only when something failed.
        let _ = fs::remove_file(run_root.with_extension("log"));
    }
    result
}

/// Installs the package in the root, with an agent's policy and unit (the
/// shipped example's, with a command that makes one request and waits).
fn prepare(repo: &Path, run_root: &Path, deb: &Path) -> Result<()> {
    fs::copy(deb, run_root.join("tmp/agentguard.deb"))?;
    cmd::run(
        cmd::new("chroot")
            .arg(run_root)
            .args(["dpkg", "-i", "/tmp/agentguard.deb"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("dpkg -i inside the root")?;
    fs::write(
        run_root.join("etc/agentguard/policies/bot.toml"),
        BOT_POLICY,
    )?;
    // As the end-to-end tests do: kernels that refuse BPF LSM programs
    // (some VMs') run this test too; where the BPF LSM works the setting
    // changes nothing. Set the way an operator would, in the config file.
    let config = run_root.join("etc/agentguard/agentguard.toml");
    let mut text = fs::read_to_string(&config)?;
    ensure!(
        text.contains("#allow_unguarded_processes = false"),
        "the shipped config lacks allow_unguarded_processes"
    );
    text.push_str("allow_unguarded_processes = true\n");
    fs::write(&config, text)?;
    let example = fs::read_to_string(repo.join("packaging/examples/agent-unit.service"))?;
    ensure!(
        example.contains("--agent support-bot"),
        "the example unit changed shape"
    );
    // One request to a loopback address no policy allows (agentguard
    // answers 403), its status in the journal, then stay up.
    let unit = example
        .replace("support-bot", "bot")
        .replace("attach --agent bot", "attach --agent bot --wait 5s")
        .replace("--user bot", "--user 65534:65534")
        .replace(
            "/opt/bot/bin/bot",
            "/bin/sh -c 'echo status=$$(curl -s -o /dev/null -w %%{http_code} -m 10 http://127.0.0.2:8080/); exec sleep infinity'",
        );
    ensure!(unit.contains("curl"), "could not set the agent's command");
    fs::write(run_root.join("etc/systemd/system/bot.service"), unit)?;
    Ok(())
}

/// The container, in cgroups of its own, with a bpffs of its own; stopped,
/// its cgroups removed and its bpffs unmounted on drop.
struct Container {
    nspawn: Child,
    cgroups: Vec<PathBuf>,
    bpffs: PathBuf,
    log: PathBuf,
}

impl Container {
    fn boot(run_root: &Path) -> Result<Self> {
        let name = format!("agentguard-e2e-{}", std::process::id());
        let mut cgroups = vec![cgroup2_mount()?.join(&name)];
        if Path::new(V1_SYSTEMD).is_dir() {
            cgroups.push(Path::new(V1_SYSTEMD).join(&name));
        }
        for cg in &cgroups {
            fs::create_dir_all(cg)?;
        }
        // With a private network nspawn gives the container a /sys without
        // fs/bpf: a fresh bpffs instance (not the host's) is bound there.
        let bpffs = PathBuf::from(format!("/run/{name}-bpf"));
        fs::create_dir_all(&bpffs)?;
        cmd::run(cmd::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))?;
        let log = run_root.with_extension("log");
        let out = fs::File::create(&log)?;
        let procs: Vec<PathBuf> = cgroups.iter().map(|c| c.join("cgroup.procs")).collect();
        let mut command = Command::new("systemd-nspawn");
        command
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--private-network",
            ])
            // bpf(2) is outside nspawn's default system call filter.
            .args(["--capability=all", "--system-call-filter=bpf"])
            .args(["--console=read-only", "--machine"])
            .arg(&name)
            .arg(format!("--bind={}:/sys/fs/bpf", bpffs.display()))
            .arg("--directory")
            .arg(run_root)
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: between fork and exec only open/write/close through
        // std's thin wrappers: nspawn starts in the cgroups made for it, so
        // the container's tree is below them, not at the host's root.
        unsafe {
            command.pre_exec(move || {
                for p in &procs {
                    fs::write(p, b"0")?;
                }
                Ok(())
            });
        }
        let nspawn = command.spawn().context("failed to start systemd-nspawn")?;
        Ok(Self {
            nspawn,
            cgroups,
            bpffs,
            log,
        })
    }

    /// The container's PID 1 (systemd), a child of nspawn.
    fn leader(&self) -> Option<u32> {
        let pid = self.nspawn.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .find(|c| {
                fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|comm| comm.trim() == "systemd")
            })
    }

    /// Runs `args` inside the container's namespaces.
    fn exec(&self, args: &[&str]) -> Result<std::process::Output> {
        let leader = self.leader().context("the container's systemd is gone")?;
        cmd::new("nsenter")
            .args([
                "--target",
                &leader.to_string(),
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--cgroup",
                "--",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("failed to run nsenter")
    }

    /// Runs `args` inside and returns stdout, failing on a non-zero exit.
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.exec(args)?;
        ensure!(
            out.status.success(),
            "in the container: {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn wait_booted(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.leader().is_some()
                && let Ok(out) = self.exec(&["systemctl", "is-system-running"])
            {
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if state == "running" || state == "degraded" {
                    println!("nspawn: container booted ({state})");
                    return Ok(());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the container did not boot within 120 s; its console:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM: nspawn asks the container's systemd to power off.
        let _ = nix_kill(self.nspawn.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        for cg in &self.cgroups {
            remove_cgroup_tree(cg);
        }
        // The container's pins go with its bpffs.
        let _ = cmd::new("umount").arg(&self.bpffs).output();
        let _ = fs::remove_dir(&self.bpffs);
    }
}

fn nix_kill(pid: u32) -> Result<()> {
    cmd::run(cmd::new("kill").args(["-TERM", &pid.to_string()]))
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let mount = fields.split_whitespace().nth(4)?;
            (rest.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .context("no cgroup v2 mount")
}

fn boot_and_check(run_root: &Path) -> Result<()> {
    let c = Container::boot(run_root)?;
    c.wait_booted()?;
    let result = check(&c);
    if result.is_err() {
        let journal = c
            .exec(&[
                "journalctl",
                "--no-pager",
                "-n",
                "80",
                "-u",
                "agentguard",
                "-u",
                "bot",
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        eprintln!("nspawn: the container's journal (last lines):\n{journal}");
    }
    result
}

fn show(c: &Container, unit: &str, props: &str) -> Result<String> {
    c.ok(&["systemctl", "show", "-p", props, unit])
}

fn agent_view(c: &Container) -> Result<serde_json::Value> {
    let status: serde_json::Value =
        serde_json::from_str(&c.ok(&["agentguard", "status", "-o", "json"])?)?;
    status["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "bot").cloned())
        .context("agent bot missing from status")
}

fn check(c: &Container) -> Result<()> {
    // The package enabled the unit; start it as systemd would at boot.
    // Type=notify: `systemctl start` returns once READY=1 arrived.
    c.ok(&["systemctl", "start", "agentguard"])?;
    let props = show(
        c,
        "agentguard",
        "ActiveState,SubState,StatusText,WatchdogUSec,Type",
    )?;
    for want in [
        "ActiveState=active",
        "SubState=running",
        "Type=notify",
        "WatchdogUSec=30s",
        "StatusText=guarding 0 of 1 agents; policy ",
    ] {
        ensure!(
            props.contains(want),
            "agentguard.service: no {want} in\n{props}"
        );
    }
    println!(
        "nspawn: agentguard.service active under the hardened unit: {}",
        props.replace('\n', ", ")
    );

    // The agent's unit: the gate guards its cgroup before it runs.
    c.ok(&["systemctl", "start", "bot"])?;
    let view = agent_view(c)?;
    ensure!(view["guarded"] == true, "bot not guarded: {view}");
    let cgroup = view["cgroup_path"].as_str().unwrap_or_default().to_owned();
    ensure!(
        cgroup.ends_with("system.slice/bot.service"),
        "bot's cgroup: {cgroup}"
    );
    let first_id = view["cgroup_id"].as_u64().unwrap_or_default();
    // Its request went through agentguard, which refused it (no tool).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let journal = c.ok(&["journalctl", "--no-pager", "-u", "bot", "-o", "cat"])?;
        if journal.contains("status=403") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the agent's request was not refused by agentguard:\n{journal}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let requests = c.ok(&["agentguard", "requests"])?;
    ensure!(
        requests
            .lines()
            .any(|l| l.contains("\"agent\":\"bot\"") && l.contains("deny")),
        "no denied request of bot: {requests}"
    );
    println!("nspawn: bot.service guarded in {cgroup}; its request was attributed and denied");

    // systemctl reload: RELOADING/READY, still running.
    c.ok(&["systemctl", "reload", "agentguard"])?;
    ensure!(
        show(c, "agentguard", "ActiveState")? == "ActiveState=active",
        "not active after reload"
    );

    // A restart of the agent: a new cgroup, guarded again by the gate.
    c.ok(&["systemctl", "restart", "bot"])?;
    let view = agent_view(c)?;
    let second_id = view["cgroup_id"].as_u64().unwrap_or_default();
    ensure!(
        view["guarded"] == true && second_id != first_id,
        "after restart: {view}"
    );
    println!("nspawn: bot.service restarted; new cgroup {second_id} guarded");

    // The journal has agentguard's lines with their priorities, no colour.
    let entries = c.ok(&["journalctl", "--no-pager", "-u", "agentguard", "-o", "json"])?;
    let ready = entries
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("agentguard ready"))
        })
        .context("no 'agentguard ready' in the journal")?;
    ensure!(
        ready["PRIORITY"] == "6",
        "ready logged at priority {}",
        ready["PRIORITY"]
    );
    ensure!(!entries.contains("\\u001b"), "ANSI escapes in the journal");

    // Starting the agent starts agentguard too (Wants=).
    c.ok(&["systemctl", "stop", "agentguard"])?;
    c.ok(&["systemctl", "restart", "bot"])?;
    ensure!(
        show(c, "agentguard", "ActiveState")? == "ActiveState=active",
        "starting bot did not start agentguard"
    );
    ensure!(
        agent_view(c)?["guarded"] == true,
        "bot unguarded after restart"
    );
    // agentguard down for good (masked): the agent's start fails at the
    // gate (fail closed) instead of running unguarded.
    c.ok(&["systemctl", "mask", "--runtime", "agentguard"])?;
    c.ok(&["systemctl", "stop", "agentguard"])?;
    let restart = c.exec(&["systemctl", "restart", "bot"])?;
    ensure!(
        !restart.status.success(),
        "bot started while agentguard was down"
    );
    // Failed, or waiting to try again (Restart=on-failure): either way
    // its main process never ran.
    let state = show(c, "bot", "SubState,MainPID")?;
    ensure!(
        (state.contains("SubState=failed") || state.contains("SubState=auto-restart"))
            && state.contains("MainPID=0"),
        "bot: {state}"
    );
    let journal = c.ok(&["journalctl", "--no-pager", "-u", "bot", "-o", "cat"])?;
    ensure!(journal.contains("agentguard is not running"), "{journal}");
    println!("nspawn: with agentguard down, bot.service failed at its gate (fail closed)");
    Ok(())
}
