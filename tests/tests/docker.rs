//! A real Docker (Debian's dockerd, containerd and runc), started by the
//! test with its own data root, exec root, socket and containerd
//! namespace, no bridge and no iptables rules: nothing of the host's is
//! touched. dockerd is given `agentguard oci-runtime` as a runtime, as the
//! README says to; containers run with `--runtime agentguard` from an
//! image imported from a tarball (no registry).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::containers::{agent_request, canary_tool, rootfs_tar, wait_for_containers};
use crate::common::{AGENTGUARD, Daemon, TestCa, TlsUpstream, require_root, text};

const API: &str = "api.agentguard.test";
const CANARY: &str = "agc-docker-canary-7e03";
/// Debian's client; another `docker` may come first in PATH.
const DOCKER: &str = "/usr/bin/docker";

/// A dockerd of the test's own, stopped (and its containerd with it) when
/// dropped.
struct Dockerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path, admin_socket: &Path) -> Self {
        let config = dir.join("daemon.json");
        let runtime = serde_json::json!({
            "runtimes": {
                "agentguard": {
                    "path": AGENTGUARD,
                    "runtimeArgs": [
                        "--admin-socket", admin_socket,
                        "oci-runtime", "--runc", "/usr/sbin/runc",
                        "--docker-root", dir.join("data"), "--",
                    ],
                }
            }
        });
        std::fs::write(&config, runtime.to_string()).unwrap();
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let namespace = format!("agentguard-test-{}", std::process::id());
        let mut c = Command::new("dockerd");
        c.arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip6tables=false", "--ip-masq=false"])
            .args(["--bridge=none", "--userland-proxy=false"])
            .args(["--containerd-namespace", &namespace])
            .args(["--containerd-plugins-namespace", &format!("{namespace}-p")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        {
            use std::os::unix::process::CommandExt as _;
            // Its containerd and shims in a group of their own, to end
            // them all.
            c.process_group(0);
        }
        let child = c.spawn().expect("dockerd (Debian's docker.io) runs");
        let d = Self {
            child,
            dir: dir.to_owned(),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker().arg("info").output().unwrap().status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer in 60 s: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        d
    }

    fn docker(&self) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("--host")
            .arg(format!("unix://{}", self.socket.display()));
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self
            .docker()
            .args(["rm", "-f"])
            .args(
                text(&self.docker().args(["ps", "-aq"]).output().unwrap().stdout)
                    .split_whitespace(),
            )
            .output();
        use nix::{sys::signal, unistd::Pid};
        let pid = Pid::from_raw(self.child.id() as i32);
        // SIGTERM: dockerd unmounts and stops its containerd.
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = signal::killpg(pid, signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // What it leaves mounted in its folders (libnetwork's handle on
        // the host's network namespace, x/netns/default), deepest first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn a_docker_container_selected_by_label_is_attached_before_it_starts_and_others_start_untouched() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("docker test CA", dir.path());
    let upstream = TlsUpstream::start("127.0.0.3", API, &ca);
    let me = std::process::id();
    let mut daemon = Daemon::builder(&["dockagent"])
        .policy(&format!(
            "upstream_netns = \"host\"\n\
             [agent.containers]\nruntime = \"docker\"\nname = \"agd-{me}-*\"\nlabels = {{ \"io.example.team\" = \"red\" }}\n\n\
             {}",
            canary_tool(dir.path(), CANARY)
        ))
        .upstream_ca(&ca.pem_path)
        .start();
    let dockerd = Dockerd::start(dir.path(), &daemon.admin_socket);
    let image = format!("agentguard-test-docker:{me}");
    let out = dockerd
        .docker()
        .arg("import")
        .arg(rootfs_tar(dir.path()))
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "docker import: {}", text(&out.stderr));
    let bundle = daemon.state_dir().join("ca/bundle.pem");
    let port = upstream.addr.port();
    // `docker run --rm --runtime agentguard` of curl, as `name`.
    let run = |name: &str, network: &str, label: Option<&str>, cacert: &Path, extra: &[String]| {
        let mut c = dockerd.docker();
        c.args([
            "run",
            "--rm",
            "--runtime",
            "agentguard",
            "--network",
            network,
        ])
        .args(["--name", name]);
        if let Some(label) = label {
            c.args(["--label", label]);
        }
        c.args(extra);
        c.arg("-v")
            .arg(format!("{}:/ca.pem:ro", cacert.display()))
            .arg(&image)
            .args(["/bin/curl", "-sS", "-m", "10", "--cacert", "/ca.pem"])
            .arg("--resolve")
            .arg(format!("{API}:{port}:127.0.0.3"))
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://{API}:{port}/reflect"));
        c.output().unwrap()
    };

    // Selected by its name and label: curl's connect, its first, reaches
    // the proxy inside the container's own namespace (loopback only),
    // and the credential is injected on the way out.
    let selected = format!("agd-{me}-coder");
    // It mounts files of its own where dockerd would mount its
    // (docker run -v … /etc/hostname): what the daemon reads is still
    // dockerd's record of it, found from the data root the runtime names.
    let own = dir.path().join("own-etc");
    std::fs::write(&own, "decoy\n").unwrap();
    let over: Vec<String> = ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
        .iter()
        .flat_map(|at| ["-v".to_owned(), format!("{}:{at}:ro", own.display())])
        .collect();
    let out = run(
        &selected,
        "none",
        Some("io.example.team=red"),
        &bundle,
        &over,
    );
    assert_eq!(
        text(&out.stdout),
        "200",
        "{}\n{}\n{}",
        text(&out.stderr),
        daemon.log(),
        dockerd.log()
    );
    assert!(!text(&out.stderr).contains(CANARY));
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    let request = agent_request(&daemon, "dockagent", "the container's request");
    assert_eq!(request["decision"], "allow", "{request:#}");
    assert_eq!(request["credential_id"], "canary", "{request:#}");
    assert_eq!(request["container_name"], selected.as_str(), "{request:#}");
    assert_eq!(request["container_image"], image.as_str(), "{request:#}");
    assert_eq!(request["comm"], "curl", "{request:#}");
    let id = request["container_id"].as_str().unwrap_or_default();
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{request:#}"
    );
    // Docker's own cgroup for it, which the daemon forgets once it ended.
    assert!(
        daemon.log().contains("container attached before its start"),
        "{}",
        daemon.log()
    );
    wait_for_containers(&daemon, "dockagent", &[]);

    // The same name without the label, on the host's network: not
    // selected, it starts untouched and reaches the upstream itself,
    // with no credential; agentguard records nothing of it.
    let unlabelled = format!("agd-{me}-plain");
    let out = run(&unlabelled, "host", None, &ca.pem_path, &[]);
    assert_eq!(
        text(&out.stdout),
        "200",
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")],
        "the unselected container's request carried no credential"
    );
    assert_eq!(upstream.handshakes(), 2);
    let events = daemon.audit_events();
    assert!(
        !events
            .iter()
            .any(|e| e["container_name"] == unlabelled.as_str()),
        "{events:#?}"
    );

    // With the daemon gone, the hook cannot ask: no container of this
    // runtime starts, selected or not.
    daemon.kill9();
    for (name, label) in [
        (format!("agd-{me}-late"), Some("io.example.team=red")),
        (format!("agd-{me}-late-plain"), None),
    ] {
        let out = run(&name, "none", label, &bundle, &[]);
        assert!(
            !out.status.success() && text(&out.stdout) != "200",
            "{name} started without agentguard: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("agentguard"),
            "the runtime's error names the hook: {}",
            text(&out.stderr)
        );
    }
}
