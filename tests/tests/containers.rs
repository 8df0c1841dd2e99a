//! A real container runtime: Podman (Debian's, with runc as its OCI
//! runtime), running a locally built image (imported from a tarball of
//! curl and its libraries; no registry). The container gets a network
//! namespace of its own from Podman (`--network none`: loopback only) and
//! its cgroup below the agent's (`--cgroup-parent`); an OCI hook
//! (`agentguard oci-hook`, stage createRuntime) has the daemon open its
//! listeners in that namespace before the container's program runs, and
//! fails the container's start when it cannot.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::common::{AGENTGUARD, Daemon, TestCa, TlsUpstream, cgroup2_mount, require_root, text};

const API: &str = "api.agentguard.test";
const CANARY: &str = "agc-podman-canary-51c2";

/// An image holding curl and the libraries it links, imported from a
/// tarball; removed when dropped.
struct Image {
    name: String,
}

impl Image {
    fn build(dir: &Path) -> Self {
        let root = dir.join("rootfs");
        for sub in ["bin", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::copy("/usr/bin/curl", root.join("bin/curl")).unwrap();
        let ldd = Command::new("ldd").arg("/usr/bin/curl").output().unwrap();
        assert!(ldd.status.success(), "ldd: {}", text(&ldd.stderr));
        for lib in text(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let target = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            // Follows the symlinks, as the loader would.
            std::fs::copy(lib, &target).unwrap();
        }
        std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        let tar = dir.join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .unwrap();
        assert!(out.status.success(), "tar: {}", text(&out.stderr));
        let name = format!("localhost/agentguard-test-curl-{}", std::process::id());
        let out = Command::new("podman")
            .arg("import")
            .arg(&tar)
            .arg(&name)
            .output()
            .unwrap();
        assert!(out.status.success(), "podman import: {}", text(&out.stderr));
        Self { name }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.name])
            .output();
    }
}

/// The hooks folder Podman is given: one hook, for containers annotated
/// with an agent, at createRuntime.
fn hooks_dir(dir: &Path, admin_socket: &Path) -> PathBuf {
    let hooks = dir.join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": AGENTGUARD,
            "args": ["agentguard", "oci-hook", "--admin-socket", admin_socket],
        },
        "when": { "annotations": { "^io\\.agentguard\\.agent$": ".+" } },
        "stages": ["createRuntime"],
    });
    std::fs::write(hooks.join("agentguard.json"), hook.to_string()).unwrap();
    hooks
}

/// `podman run` of curl in a new container of agent `agent`.
fn podman_run(
    image: &Image,
    hooks: &Path,
    agent_cgroup: &str,
    bundle: &Path,
    url_port: u16,
) -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--hooks-dir"])
        .arg(hooks)
        .args(["run", "--rm", "--network", "none"])
        .args(["--annotation", "io.agentguard.agent=podagent"])
        .arg(format!("--cgroup-parent={agent_cgroup}"))
        // The test process's own limit is below Podman's default one,
        // which the runtime may then not set.
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ])
        .arg("-v")
        .arg(format!("{}:/ca.pem:ro", bundle.display()))
        .arg(&image.name)
        .args(["/bin/curl", "-sS", "-m", "10", "--cacert", "/ca.pem"])
        .arg("--resolve")
        .arg(format!("{API}:{url_port}:127.0.0.3"))
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{API}:{url_port}/reflect"));
    c
}

/// The v1 controllers' cgroups Podman makes for `--cgroup-parent` (this
/// host mounts cgroup v1 beside v2; conmon's are left behind), removed
/// when dropped, deepest first.
struct V1Cgroups(String);

impl Drop for V1Cgroups {
    fn drop(&mut self) {
        fn remove_tree(dir: &Path) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_tree(&entry.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        // The first component of the parent: the test daemon's own (the
        // v2 hierarchy's is the daemon fixture's to remove).
        let top = self.0.split('/').next().unwrap_or_default();
        let tops: Vec<PathBuf> = controllers
            .flatten()
            .filter(|c| !top.is_empty() && !c.path().join("cgroup.controllers").exists())
            .map(|c| c.path().join(top))
            .collect();
        // Podman's clean-up of a container that failed to start runs on
        // after `podman run` returns: try for a while (bounded).
        for _ in 0..50 {
            tops.iter().for_each(|t| remove_tree(t));
            if tops.iter().all(|t| !t.exists()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[test]
fn a_podman_container_is_guarded_by_the_oci_hook_before_it_starts() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("podman test CA", dir.path());
    let upstream = TlsUpstream::start("127.0.0.3", API, &ca);
    let secret = dir.path().join("canary");
    std::fs::write(&secret, format!("{CANARY}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // The container's namespace has its loopback only: the agent's
    // upstream connections are dialled from the host's.
    let mut daemon = Daemon::builder(&["podagent"])
        .policy(&format!(
            "netns = \"cgroup\"\nupstream_netns = \"host\"\n\
             [[credential]]\nid = \"canary\"\nsource = {{ file = \"{}\" }}\n\
             inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\n\
             [[tool]]\nname = \"api.reflect\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/reflect\"]\ncredential = \"canary\"\n",
            secret.display()
        ))
        .upstream_ca(&ca.pem_path)
        .start();
    let image = Image::build(dir.path());
    let hooks = hooks_dir(dir.path(), &daemon.admin_socket);
    let cgroup = daemon.cgroup_path("podagent");
    let rel = cgroup
        .strip_prefix(cgroup2_mount())
        .unwrap()
        .display()
        .to_string();
    let _v1 = V1Cgroups(rel.clone());
    let bundle = daemon.state_dir().join("ca/bundle.pem");
    let port = upstream.addr.port();

    let out = podman_run(&image, &hooks, &format!("/{rel}"), &bundle, port)
        .output()
        .unwrap();
    let started = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(started, "200", "{stderr}\n{}", daemon.log());
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    assert!(!stderr.contains(CANARY));
    // The hook, not the daemon's once-a-second look at the cgroup, opened
    // the listeners: before the container's program ran.
    assert!(
        daemon
            .log()
            .contains("container's network namespace guarded before its start"),
        "{}",
        daemon.log()
    );
    let events = daemon.wait_for_events("the container's connection", |e| {
        e.iter().any(|e| {
            e["kind"] == "connection" && e["agent"] == "podagent" && e["dst_ip"] == "127.0.0.3"
        })
    });
    assert!(
        events.iter().any(|e| e["kind"] == "request"
            && e["agent"] == "podagent"
            && e["credential_id"] == "canary"
            && e["decision"] == "allow"),
        "{events:#?}"
    );

    // With the daemon gone, the hook fails and so does the container's
    // start: curl never runs.
    daemon.kill9();
    let out = podman_run(&image, &hooks, &format!("/{rel}"), &bundle, port)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert_ne!(text(&out.stdout), "200");
    assert!(text(&out.stderr).contains("hook"), "{}", text(&out.stderr));
    assert_eq!(upstream.handshakes(), 1, "the upstream was reached");
}
