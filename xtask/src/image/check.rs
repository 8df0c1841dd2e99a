//! `cargo xtask image --check`: the built image, run with podman the way
//! `deploy/kubernetes/daemonset.yaml` runs it (its commands, capabilities,
//! environment and mount paths, read from the manifest):
//!
//! 1. `agentguard --version` is the version built;
//! 2. `policy check` passes on the example policies the image ships;
//! 3. with the DaemonSet's ConfigMaps laid out as the kubelet writes them
//!    (each key a link through `..data`), `policy check` and `config show`
//!    pass on them;
//! 4. the init container's bpffs check passes on the host's bpffs and
//!    refuses a folder that is not one;
//! 5. `nsenter --cgroup=/proc/1/ns/cgroup` (the main container's command)
//!    moves the view of /proc/self/cgroup from the container's cgroup
//!    namespace to the host's (here: the cgroup namespace of the check's
//!    own process, since PID 1 on these machines is the sandbox's, closed
//!    to everyone);
//! 6. the daemon itself starts with only the DaemonSet's capabilities, its
//!    readiness probe passes, its liveness endpoint answers, and an agent in
//!    its policy's cgroup, in the daemon's network namespace (the node's,
//!    in a pod with hostNetwork), is redirected to it and refused;
//! 7. the init container that installs the hook on the node leaves there
//!    an agentguard that runs and containerd's runc wrapper.
//!
//! The daemon runs in a network namespace of its own (podman's
//! `--network=none`: loopback only), so its ports are not the host's, with
//! a bpffs instance of its own (unmounted after: its pins go with it) and
//! its agent in a cgroup named for this run (removed after).

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::manifest::{Container, PodSpec};
use crate::{cmd, paths};

/// The DaemonSet's example policies and config, beside the manifest.
const POLICIES: &str = "deploy/kubernetes/policies";
const CONFIG: &str = "deploy/kubernetes/agentguard.toml";
/// The example policy's cgroup, renamed for this run in the staged copy.
const POLICY_CGROUP: &str = "cgroup = \"agentguard/support-bot\"";
const AGENT: &str = "support-bot";
/// Where the image ships its example policies.
const SHIPPED_POLICIES: &str = "/usr/share/doc/agentguard/examples/policies";
/// How the main container enters the host's cgroup namespace.
const HOST_CGROUPNS: &str = "--cgroup=/proc/1/ns/cgroup";

pub fn run(repo: &Path, tag: &str, version: &str) -> Result<()> {
    let pod = PodSpec::load(repo)?;
    let main = pod.container("agentguard")?;
    let init = pod.init_container("check-node")?;
    let install = pod.init_container("install-node-hook")?;
    for c in [&main, &init, &install] {
        ensure!(
            c.image() == tag,
            "daemonset.yaml names image {:?}, the image built is {tag}: update the manifest",
            c.image()
        );
    }

    // 1.
    let shown = podman_output(&["run", "--rm", "--network=none", tag, "--version"])?;
    ensure!(
        shown == format!("agentguard {version}"),
        "--version in the image: {shown:?}"
    );
    println!("image check: `agentguard --version` → {shown}");

    // 2.
    podman_output(&[
        "run",
        "--rm",
        "--network=none",
        tag,
        "policy",
        "check",
        SHIPPED_POLICIES,
    ])?;
    println!("image check: `policy check` passes on the shipped policies ({SHIPPED_POLICIES})");

    let work = paths::target_dir(repo)
        .join("image")
        .join(format!("check-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    let result = with_staged_volumes(repo, &work, tag, &pod, &main, &init)
        .and_then(|()| node_hook_installed(&work, tag, &install, version));
    let _ = fs::remove_dir_all(&work);
    result
}

fn with_staged_volumes(
    repo: &Path,
    work: &Path,
    tag: &str,
    pod: &PodSpec,
    main: &Container<'_>,
    init: &Container<'_>,
) -> Result<()> {
    // 3. The ConfigMaps and the Secret as the kubelet lays them out.
    let cgroup = format!("agentguard-image-check-{}/{AGENT}", std::process::id());
    let mut policies = Vec::new();
    for entry in fs::read_dir(repo.join(POLICIES))?.flatten() {
        let text = fs::read_to_string(entry.path())?;
        ensure!(
            text.contains(POLICY_CGROUP),
            "{} changed shape: no {POLICY_CGROUP}",
            entry.path().display()
        );
        let name = entry.file_name().to_string_lossy().into_owned();
        policies.push((
            name,
            text.replace(POLICY_CGROUP, &format!("cgroup = \"{cgroup}\"")),
        ));
    }
    let volumes = Volumes {
        policies: atomic_volume(&work.join("policies"), &policies, 0o644)?,
        config: atomic_volume(
            &work.join("config"),
            &[(
                "agentguard.toml".into(),
                fs::read_to_string(repo.join(CONFIG))?,
            )],
            0o644,
        )?,
        // A Secret volume with defaultMode 0400: a test value, never a
        // real credential.
        secrets: atomic_volume(
            &work.join("secrets"),
            &[("itsm-token".into(), "image-check-not-a-secret\n".into())],
            0o400,
        )?,
    };
    let mut common = vec!["--rm".to_owned(), "--network=none".to_owned()];
    common.extend(volumes.mounts(main)?);
    for (name, value) in main.env() {
        common.push(format!("--env={name}={value}"));
    }
    let run = |extra: &[&str]| -> Result<String> {
        let mut args: Vec<&str> = vec!["run"];
        args.extend(common.iter().map(String::as_str));
        args.push(tag);
        args.extend(extra);
        podman_output(&args)
    };
    run(&["policy", "check"])?;
    let config = run(&["config", "show"])?;
    ensure!(
        config.contains("otlp_endpoint = \"http://otel-collector.")
            && config.contains("/etc/agentguard/config/agentguard.toml"),
        "`config show` with the DaemonSet's config does not show its file's settings:\n{config}"
    );
    println!(
        "image check: the DaemonSet's ConfigMaps (kubelet layout) pass `policy check` and `config show`"
    );

    // 4. The init container's bpffs check, both ways.
    let init_argv = init.command();
    ensure!(!init_argv.is_empty(), "the init container has no command");
    let init_run = |source: &str| {
        let args = init_container_args(tag, &init_argv, &format!("{source}:/sys/fs/bpf:ro"));
        podman(&args.iter().map(String::as_str).collect::<Vec<_>>()).output()
    };
    let on_bpffs = init_run("/sys/fs/bpf")?;
    ensure!(
        on_bpffs.status.success(),
        "the init container's check fails on the host's bpffs: {}",
        String::from_utf8_lossy(&on_bpffs.stderr)
    );
    let not_bpffs = init_run(&work.join("config").display().to_string())?;
    ensure!(
        !not_bpffs.status.success()
            && String::from_utf8_lossy(&not_bpffs.stderr).contains("no bpffs at /sys/fs/bpf"),
        "the init container's check passed on a folder that is no bpffs: {}",
        String::from_utf8_lossy(&not_bpffs.stderr)
    );
    println!("image check: the init container passes on bpffs and refuses a plain folder");

    // 5. The host's cgroup namespace, entered as the main command does.
    let argv = main.command();
    let (nsenter, daemon) = match argv.iter().position(|a| a == "--") {
        Some(i) => (&argv[..i], &argv[i + 1..]),
        None => {
            bail!("the main container's command is not `nsenter ... -- agentguard run`: {argv:?}")
        }
    };
    ensure!(
        pod.host_pid() && nsenter == ["nsenter", HOST_CGROUPNS],
        "the DaemonSet no longer enters the host's cgroup namespace with hostPID: {argv:?}"
    );
    // PID 1 on these machines is the sandbox's own process, whose
    // namespaces nobody here may open (not even root outside podman): the
    // check enters the cgroup namespace of its own process instead, the
    // host's as well, and one of a process with every capability, so that
    // the DaemonSet's CAP_SYS_PTRACE and CAP_SYS_ADMIN are what it takes.
    let nsenter = [
        "nsenter".to_owned(),
        HOST_CGROUPNS.replace("/proc/1/", &format!("/proc/{}/", std::process::id())),
    ];
    let nsenter = &nsenter[..];
    let privileged = privileged_args(main);
    let cgroup_line = |enter: bool| -> Result<String> {
        let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--network=none".into()];
        args.extend(privileged.iter().cloned());
        if enter {
            args.push(format!("--entrypoint={}", nsenter[0]));
            args.push(tag.into());
            args.extend(nsenter[1..].iter().cloned());
            args.extend(["--".into(), "cat".into(), "/proc/self/cgroup".into()]);
        } else {
            args.extend([
                "--entrypoint=cat".into(),
                tag.into(),
                "/proc/self/cgroup".into(),
            ]);
        }
        let out = podman_output(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(out
            .lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default()
            .to_owned())
    };
    let inside = cgroup_line(false)?;
    let entered = cgroup_line(true)?;
    ensure!(
        inside == "0::/" && entered.len() > "0::/".len(),
        "cgroup as the container sees it: {inside:?}; after nsenter: {entered:?}"
    );
    println!(
        "image check: {}: /proc/self/cgroup {inside:?} → {entered:?}",
        nsenter[1]
    );

    // 6. The daemon.
    Daemon::start(work, tag, &common, &privileged, nsenter, daemon)?.check(main, &cgroup)
}

/// Step 7: the init container that puts the hook's binary and containerd's runc
/// wrapper on the node, run as the DaemonSet runs it (read-only root, no
/// capabilities) into a folder standing for the node's: the binary there
/// runs, and the wrapper is a script that starts it as `oci-runtime`,
/// told where the CRI answers.
fn node_hook_installed(
    work: &Path,
    tag: &str,
    install: &Container<'_>,
    version: &str,
) -> Result<()> {
    let argv = install.command();
    ensure!(!argv.is_empty(), "install-node-hook has no command");
    let at = install
        .mount_path("node-bin")
        .context("install-node-hook does not mount node-bin")?;
    let node_bin = work.join("node-bin");
    fs::create_dir_all(&node_bin)?;
    let args = init_container_args(tag, &argv, &format!("{}:{at}", node_bin.display()));
    podman_output(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let shown = std::process::Command::new(node_bin.join("agentguard"))
        .arg("--version")
        .output()
        .context("running the installed agentguard")?;
    ensure!(
        String::from_utf8_lossy(&shown.stdout).trim() == format!("agentguard {version}"),
        "the installed agentguard says {:?}",
        String::from_utf8_lossy(&shown.stdout)
    );
    let wrapper = fs::read_to_string(node_bin.join("agentguard-runc"))?;
    let mode = fs::metadata(node_bin.join("agentguard-runc"))?
        .permissions()
        .mode();
    ensure!(
        wrapper.starts_with("#!/bin/sh\n")
            && wrapper.contains(&format!("exec {at}/agentguard "))
            && wrapper.contains(" oci-runtime ")
            && wrapper.contains(
                "--cri-socket /run/containerd/containerd.sock --exempt-namespace agentguard-system -- \"$@\"",
            )
            && mode & 0o777 == 0o755,
        "the installed runc wrapper (mode {mode:o}):\n{wrapper}"
    );
    println!(
        "image check: install-node-hook puts a working agentguard and containerd's runc wrapper in {at}"
    );
    Ok(())
}

/// podman's arguments to run an init container's command (`argv`, not
/// empty) as the DaemonSet's init containers run: no network, a
/// read-only root, no capabilities, no_new_privs, one volume.
fn init_container_args(tag: &str, argv: &[String], volume: &str) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--rm".into(),
        "--network=none".into(),
        "--read-only".into(),
        "--cap-drop=all".into(),
        "--security-opt=no-new-privileges".into(),
        format!("--volume={volume}"),
        format!("--entrypoint={}", argv[0]),
        tag.into(),
    ];
    args.extend(argv[1..].iter().cloned());
    args
}

/// The staged volumes: host folders in the kubelet's layout.
struct Volumes {
    policies: PathBuf,
    config: PathBuf,
    secrets: PathBuf,
}

impl Volumes {
    /// `--volume` options placing each where the main container mounts it.
    fn mounts(&self, main: &Container<'_>) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (volume, dir) in [
            ("policies", &self.policies),
            ("config", &self.config),
            ("credentials", &self.secrets),
        ] {
            let at = main
                .mount_path(volume)
                .with_context(|| format!("the main container does not mount {volume}"))?;
            out.push(format!("--volume={}:{at}:ro", dir.display()));
        }
        Ok(out)
    }
}

/// A ConfigMap or Secret volume as the kubelet's atomic writer makes it:
/// the files in a timestamped folder, `..data` a link to it, and each key
/// a link `KEY -> ..data/KEY`.
fn atomic_volume(dir: &Path, files: &[(String, String)], mode: u32) -> Result<PathBuf> {
    let data = dir.join("..2026_01_01_00_00_00.000000001");
    fs::create_dir_all(&data)?;
    for (name, text) in files {
        let path = data.join(name);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        symlink(format!("..data/{name}"), dir.join(name))?;
    }
    symlink(
        data.file_name().context("timestamped folder")?,
        dir.join("..data"),
    )?;
    Ok(dir.to_owned())
}

/// podman's options for what the main container's securityContext says:
/// every capability dropped but those it adds, no_new_privs, a read-only
/// root, the host's PID namespace, a cgroup namespace of its own (as
/// containerd gives every container on cgroup v2).
fn privileged_args(main: &Container<'_>) -> Vec<String> {
    let mut args = vec![
        "--pid=host".to_owned(),
        "--cgroupns=private".into(),
        "--read-only".into(),
        "--security-opt=no-new-privileges".into(),
    ];
    if main.drops_all_capabilities() {
        args.push("--cap-drop=all".into());
    }
    for cap in main.added_capabilities() {
        args.push(format!("--cap-add=CAP_{cap}"));
    }
    args
}

/// The daemon's container, removed on drop with what was made for it.
struct Daemon {
    name: String,
    bpffs: PathBuf,
    run_dir: PathBuf,
    cgroup_root: PathBuf,
}

impl Daemon {
    fn start(
        work: &Path,
        tag: &str,
        common: &[String],
        privileged: &[String],
        nsenter: &[String],
        daemon: &[String],
    ) -> Result<Self> {
        let name = format!("agentguard-image-check-{}", std::process::id());
        let bpffs = work.join("bpffs");
        let state = work.join("state");
        let run_dir = work.join("run");
        for d in [&bpffs, &state, &run_dir] {
            fs::create_dir_all(d)?;
        }
        // A bpffs of its own: the check's pins are not the host's, and go
        // when it is unmounted.
        cmd::run(cmd::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs))?;
        let cgroup_root = cgroup2_mount()?;
        let this = Self {
            name: name.clone(),
            bpffs: bpffs.clone(),
            run_dir: run_dir.clone(),
            cgroup_root: cgroup_root.clone(),
        };
        let mut args: Vec<String> = vec!["run".into(), "--detach".into(), format!("--name={name}")];
        args.extend(common.iter().filter(|a| *a != "--rm").cloned());
        args.extend(privileged.iter().cloned());
        args.extend([
            format!("--volume={}:/sys/fs/bpf", bpffs.display()),
            format!("--volume={}:/sys/fs/cgroup", cgroup_root.display()),
            "--volume=/sys/kernel/security:/sys/kernel/security:ro".into(),
            format!("--volume={}:/var/lib/agentguard", state.display()),
            format!("--volume={}:/run/agentguard", run_dir.display()),
            "--tmpfs=/tmp".into(),
            "--env=NODE_NAME=image-check".into(),
            // These VMs' kernel lists the BPF LSM but refuses to load its
            // programs (README, Known gaps): as the test suite does. Where
            // the BPF LSM works it changes nothing.
            "--env=AGENTGUARD_ALLOW_UNGUARDED_PROCESSES=true".into(),
            format!("--entrypoint={}", nsenter[0]),
            tag.into(),
        ]);
        args.extend(nsenter[1..].iter().cloned());
        args.push("--".into());
        args.extend(daemon.iter().cloned());
        podman_output(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(this)
    }

    fn check(self, main: &Container<'_>, cgroup: &str) -> Result<()> {
        // The readiness probe, as the kubelet runs it: in the container.
        let probe = main.exec_probe("readinessProbe");
        ensure!(
            !probe.is_empty(),
            "the DaemonSet has no exec readiness probe"
        );
        let started = Instant::now();
        let status: serde_json::Value = loop {
            let mut args = vec!["exec", self.name.as_str()];
            args.extend(probe.iter().map(String::as_str));
            if let Ok(out) = podman_output(&args) {
                break serde_json::from_str(&out).context("status -o json")?;
            }
            let running = podman_output(&["inspect", "--format", "{{.State.Running}}", &self.name]);
            if running.is_ok_and(|r| r != "true") {
                bail!("the daemon in the image stopped:\n{}", self.logs());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the daemon in the image was not ready within 60 s:\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(500));
        };
        let agent = status["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == AGENT))
            .with_context(|| format!("no agent {AGENT} in the status: {status}"))?;
        ensure!(agent["guarded"] == true, "{AGENT} not guarded: {agent}");
        println!(
            "image check: the daemon is ready after {:.1?} with only the DaemonSet's capabilities; {AGENT} guarded in {}",
            started.elapsed(),
            agent["cgroup_path"]
        );

        let pid: u32 = podman_output(&["inspect", "--format", "{{.State.Pid}}", &self.name])?
            .parse()
            .context("the container's pid")?;
        let netns = format!("--net=/proc/{pid}/ns/net");
        // The liveness probe: GET /metrics on the port the manifest names,
        // on the loopback of the daemon's network namespace.
        let port = main
            .http_probe_port("livenessProbe")
            .context("the DaemonSet has no httpGet liveness probe")?;
        let metrics = cmd::output(cmd::new("nsenter").args([
            netns.as_str(),
            "curl",
            "-sf",
            "-m",
            "10",
            &format!("http://127.0.0.1:{port}/metrics"),
        ]))?;
        ensure!(
            metrics
                .lines()
                .any(|l| l.starts_with("agentguard_audit_queue_depth ")),
            "GET /metrics: {metrics}"
        );
        println!("image check: the liveness endpoint (127.0.0.1:{port}/metrics) answers");
        let rss = fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
            .unwrap_or_default();
        println!("image check: the daemon's resident memory when ready: {rss}");

        // An agent on the "node": in the policy's cgroup and the daemon's
        // network namespace, as another user. Its request goes to a
        // loopback address nothing listens on; agentguard answers 403.
        let procs = self.cgroup_root.join(cgroup).join("cgroup.procs");
        let script = format!(
            "echo $$ > {} && exec setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -o /dev/null -w %{{http_code}} -m 10 http://127.0.0.2:8080/",
            procs.display()
        );
        let code = cmd::output(cmd::new("nsenter").args([netns.as_str(), "sh", "-c", &script]))
            .unwrap_or_else(|e| format!("{e:#}"));
        ensure!(
            code == "403",
            "an agent's request through the daemon in the image: {code}\n{}",
            self.logs()
        );
        println!(
            "image check: an agent in {cgroup} was redirected to the daemon and refused (403)"
        );
        Ok(())
    }

    fn logs(&self) -> String {
        podman(&["logs", "--tail", "40", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "10", &self.name]).output();
        // Its pins go with its bpffs: the programs detach.
        let _ = cmd::new("umount").arg(&self.bpffs).output();
        let _ = fs::remove_file(self.run_dir.join("agentguard.sock"));
        // The agent's cgroup and the one made for this run, now empty.
        let top = self
            .cgroup_root
            .join(format!("agentguard-image-check-{}", std::process::id()));
        let _ = fs::remove_dir(top.join(AGENT));
        let _ = fs::remove_dir(&top);
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

fn podman_output(args: &[&str]) -> Result<String> {
    cmd::output(&mut podman(args))
}

/// podman with runc, and for `run` resource limits this process may set.
///
/// runc, not Debian's default crun: crun refuses hosts whose cgroup v2
/// hierarchy has a controller enabled beside v1 ones ("cgroups in hybrid
/// mode not supported"), as these VMs have (hugetlb). And podman gives a
/// container as many open files and processes as it can get (1048576 files),
/// which a setup without CAP_SYS_RESOURCE (these machines' root) cannot
/// raise the limits to: the container would not start. The check's
/// containers get this process's own open-file limit (the daemon raises
/// its soft limit to the hard one) and a few thousand processes (threads).
fn podman(args: &[&str]) -> std::process::Command {
    let mut command = cmd::new("podman");
    command.args(["--runtime", "runc"]);
    match args.split_first() {
        Some((&"run", rest)) => {
            let files = open_files_limit();
            command
                .arg("run")
                .arg(format!("--ulimit=nofile={files}:{files}"))
                .arg("--ulimit=nproc=4096:4096")
                .args(rest);
        }
        _ => {
            command.args(args);
        }
    }
    command
}

/// The hard RLIMIT_NOFILE of this process, from /proc/self/limits.
fn open_files_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(4)?.parse().ok()
        })
        .unwrap_or(1024)
}
