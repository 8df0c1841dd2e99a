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

/// A root file system of curl, sleep and the libraries they link, as a
/// tarball for a runtime to import: `dir/rootfs.tar`.
pub(super) fn rootfs_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    // curl, and sleep for a container that stays up a while.
    for (bin, name) in [("/usr/bin/curl", "curl"), ("/bin/sleep", "sleep")] {
        std::fs::copy(bin, root.join("bin").join(name)).unwrap();
        let ldd = Command::new("ldd").arg(bin).output().unwrap();
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
    tar
}

impl Image {
    fn build(dir: &Path) -> Self {
        let tar = rootfs_tar(dir);
        // Unique per test, not only per process: the tests of this file run
        // at once, and each removes its own image when it ends.
        static BUILT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("localhost/agentguard-test-curl-{}-{n}", std::process::id());
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

/// The canary secret (a root-only file in `dir`) and the policy lines
/// that inject it into GET /reflect on the test upstream, after an
/// agent's own lines.
pub(super) fn canary_tool(dir: &Path, canary: &str) -> String {
    let secret = crate::common::secret_file(dir, "canary", &format!("{canary}\n"));
    format!(
        "[[credential]]\nid = \"canary\"\nsource = {{ file = \"{}\" }}\n\
         inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\n\
         [[tool]]\nname = \"api.reflect\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/reflect\"]\ncredential = \"canary\"\n",
        secret.display()
    )
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
    // The container's namespace has its loopback only: the agent's
    // upstream connections are dialled from the host's.
    let mut daemon = Daemon::builder(&["podagent"])
        .policy(&format!(
            "netns = \"cgroup\"\nupstream_netns = \"host\"\n\
             {}",
            canary_tool(dir.path(), CANARY)
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

/// The hooks folder for selection by policy: the hook runs for every
/// container started with it, at createRuntime (report, attach if
/// selected) and poststop (forget ended containers).
fn selecting_hooks_dir(dir: &Path, admin_socket: &Path) -> PathBuf {
    let hooks = dir.join("selecting-hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": AGENTGUARD,
            "args": ["agentguard", "oci-hook", "--admin-socket", admin_socket],
        },
        "when": { "always": true },
        "stages": ["createRuntime", "poststop"],
    });
    std::fs::write(hooks.join("agentguard.json"), hook.to_string()).unwrap();
    hooks
}

/// `podman run` with the selecting hooks, no `--cgroup-parent`: Podman
/// places the container in a cgroup of its own choosing.
fn podman(hooks: &Path, name: &str) -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--hooks-dir"])
        .arg(hooks)
        .args(["run", "--name", name])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
        ]);
    c
}

/// Removes the named containers when dropped (a failed test leaves none).
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", name])
                .output();
        }
    }
}

/// The first request event of `agent`, once the audit record has one.
pub(super) fn agent_request(daemon: &Daemon, agent: &str, what: &str) -> serde_json::Value {
    let is = |e: &serde_json::Value| e["kind"] == "request" && e["agent"] == agent;
    daemon
        .wait_for_events(what, |events| events.iter().any(is))
        .into_iter()
        .find(is)
        .unwrap()
}

/// Polls `agentguard status` (bounded: 10 s) until agent `agent` lists
/// exactly the containers named `names`.
pub(super) fn wait_for_containers(
    daemon: &Daemon,
    agent: &str,
    names: &[&str],
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = daemon.status();
        let listed: Vec<String> = status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["name"] == agent)
            .flat_map(|a| a["containers"].as_array().cloned().unwrap_or_default())
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        if listed == names {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent {agent} lists containers {listed:?}, not {names:?}: {status:#}\n{}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_podman_container_selected_by_name_is_attached_before_it_starts_and_detached_when_it_ends() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("podman selection test CA", dir.path());
    let upstream = TlsUpstream::start("127.0.0.3", API, &ca);
    let me = std::process::id();
    let selected = format!("agc-sel-{me}-curl");
    let sleeper = format!("agc-sel-{me}-sleep");
    let udp = format!("agc-sel-{me}-udp");
    let annotated = format!("agc-ann-{me}");
    let other = format!("agc-other-{me}");
    let _cleanup = Containers(vec![
        selected.clone(),
        sleeper.clone(),
        udp.clone(),
        annotated.clone(),
        other.clone(),
    ]);
    // A second agent selects by annotation, and has no tool: its
    // container's request is denied by its own policy.
    let mut daemon = Daemon::builder(&["boxagent", "annagent"])
        .policy_for(
            "annagent",
            "upstream_netns = \"host\"\n\
             [agent.containers]\nruntime = \"podman\"\nannotations = { \"io.example.team\" = \"red\" }\n",
        )
        .policy(&format!(
            "upstream_netns = \"host\"\n\
             [agent.containers]\nruntime = \"podman\"\nname = \"agc-sel-{me}-*\"\n\n\
             {}",
            canary_tool(dir.path(), CANARY)
        ))
        .upstream_ca(&ca.pem_path)
        .start();
    let image = Image::build(dir.path());
    let hooks = selecting_hooks_dir(dir.path(), &daemon.admin_socket);
    let bundle = daemon.state_dir().join("ca/bundle.pem");
    let port = upstream.addr.port();
    let curl_args = |c: &mut Command, cacert: &str| {
        c.args(["/bin/curl", "-sS", "-m", "10", "--cacert", cacert])
            .arg("--resolve")
            .arg(format!("{API}:{port}:127.0.0.3"))
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://{API}:{port}/reflect"));
    };
    let curl = |c: &mut Command, cacert: &str| {
        c.arg(&image.name);
        curl_args(c, cacert);
    };

    // Selected by its name: its connect (curl's first) reaches the proxy
    // in its own namespace, which has nothing but loopback.
    let cidfile = dir.path().join("selected.cid");
    let mut run = podman(&hooks, &selected);
    run.args(["--rm", "--network", "none", "--cidfile"])
        .arg(&cidfile)
        .arg("-v")
        .arg(format!("{}:/ca.pem:ro", bundle.display()));
    curl(&mut run, "/ca.pem");
    let out = run.output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(text(&out.stdout), "200", "{stderr}\n{}", daemon.log());
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    assert!(!stderr.contains(CANARY));
    let id = std::fs::read_to_string(&cidfile).unwrap().trim().to_owned();
    assert_eq!(id.len(), 64, "{id:?}");
    assert!(
        daemon.log().contains("container attached before its start"),
        "{}",
        daemon.log()
    );
    let image_name = format!("{}:latest", image.name);
    let request = agent_request(&daemon, "boxagent", "the container's request");
    assert_eq!(request["decision"], "allow", "{request:#}");
    assert_eq!(request["credential_id"], "canary", "{request:#}");
    assert_eq!(request["container_id"], id.as_str(), "{request:#}");
    assert_eq!(request["container_name"], selected.as_str(), "{request:#}");
    assert_eq!(
        request["container_image"],
        image_name.as_str(),
        "{request:#}"
    );
    assert_eq!(request["comm"], "curl", "{request:#}");
    // The container ended (--rm): agentguard forgets it.
    wait_for_containers(&daemon, "boxagent", &[]);

    // What the kernel refuses a selected container (UDP to a port other
    // than DNS: curl's TFTP) names the container too.
    let mut run = podman(&hooks, &udp);
    run.args(["--rm", "--network", "none"])
        .arg(&image.name)
        .args(["/bin/curl", "-sS", "-m", "3", "tftp://127.0.0.3:6969/x"]);
    let out = run.output().unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let events = daemon.wait_for_events("the container's refused datagram", |e| {
        e.iter().any(|e| {
            e["kind"] == "kernel_refusal"
                && e["container_name"] == udp.as_str()
                && e["rule"] == "kernel:udp-denied"
        })
    });
    // (glibc's probe of nscd's socket is refused and named too.)
    let refusal = events
        .iter()
        .find(|e| e["container_name"] == udp.as_str() && e["rule"] == "kernel:udp-denied")
        .unwrap();
    assert_eq!(refusal["dst_port"], 6969, "{refusal:#}");
    assert_eq!(refusal["agent"], "boxagent", "{refusal:#}");
    assert_eq!(
        refusal["container_image"],
        image_name.as_str(),
        "{refusal:#}"
    );
    wait_for_containers(&daemon, "boxagent", &[]);

    // Not selected (another name): it starts untouched. On the host's
    // network it reaches the upstream itself, with no credential, and
    // agentguard records nothing of it.
    let mut run = podman(&hooks, &other);
    run.args(["--rm", "--network", "host"])
        .arg("-v")
        .arg(format!("{}:/upstream-ca.pem:ro", ca.pem_path.display()));
    curl(&mut run, "/upstream-ca.pem");
    let out = run.output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "200",
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    assert_eq!(upstream.handshakes(), 2);
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")],
        "the unselected container's request carried no credential"
    );
    let events = daemon.audit_events();
    assert!(
        !events.iter().any(|e| e["container_name"] == other.as_str()
            || (e["kind"] == "request" && e["container_id"].is_null() && e["agent"] == "boxagent")),
        "{events:#?}"
    );
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "request").count(),
        1,
        "{events:#?}"
    );

    // Selected by its annotation, by the other agent, whose policy denies.
    let mut run = podman(&hooks, &annotated);
    run.args(["--rm", "--network", "none"])
        .args(["--annotation", "io.example.team=red"])
        .arg("-v")
        .arg(format!("{}:/ca.pem:ro", bundle.display()));
    curl(&mut run, "/ca.pem");
    let out = run.output().unwrap();
    assert_eq!(
        text(&out.stdout),
        "403",
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let events = daemon.wait_for_events("the annotated container's request", |e| {
        e.iter()
            .any(|e| e["kind"] == "request" && e["container_name"] == annotated.as_str())
    });
    let denied = events
        .iter()
        .find(|e| e["kind"] == "request" && e["container_name"] == annotated.as_str())
        .unwrap();
    assert_eq!(denied["agent"], "annagent", "{denied:#}");
    assert_eq!(denied["decision"], "deny", "{denied:#}");
    assert!(denied["credential_id"].is_null(), "{denied:#}");
    wait_for_containers(&daemon, "annagent", &[]);

    // A selected container that stays up: `status` names it, and once it
    // is removed agentguard detaches from it.
    let mut run = podman(&hooks, &sleeper);
    run.args(["-d", "--network", "none"])
        .arg("-v")
        .arg(format!("{}:/ca.pem:ro", bundle.display()))
        .arg(&image.name)
        .args(["/bin/sleep", "60"]);
    let out = run.output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let status = wait_for_containers(&daemon, "boxagent", &[&sleeper]);
    let agent = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "boxagent")
        .unwrap();
    let listed = &agent["containers"][0];
    assert_eq!(listed["runtime"], "podman");
    assert_eq!(listed["image"], image_name.as_str());
    assert!(
        listed["cgroup"]
            .as_str()
            .unwrap()
            .ends_with(listed["id"].as_str().unwrap()),
        "Podman's own cgroup for it, not the agent's: {listed:#}"
    );
    assert_ne!(listed["cgroup_id"], agent["cgroup_id"]);
    // A process started in it later (podman exec) is the agent's too; and
    // still after the daemon restarts (its programs stayed pinned, and the
    // new daemon opens its listeners again from the saved list).
    let exec_curl = || {
        let mut c = Command::new("podman");
        c.args(["--runtime", "runc", "exec", &sleeper]);
        curl_args(&mut c, "/ca.pem");
        c.output().unwrap()
    };
    let out = exec_curl();
    assert_eq!(
        text(&out.stdout),
        "200",
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let execd =
        |e: &serde_json::Value| e["kind"] == "request" && e["container_name"] == sleeper.as_str();
    // Recorded before the kill (a kill -9 may lose the last batch).
    daemon.wait_for_events("the exec'd process's request", |e| {
        e.iter().filter(|e| execd(e)).count() == 1
    });
    daemon.kill9();
    daemon.restart();
    wait_for_containers(&daemon, "boxagent", &[&sleeper]);
    let out = exec_curl();
    assert_eq!(
        text(&out.stdout),
        "200",
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    let events = daemon.wait_for_events("the requests of the exec'd processes", |e| {
        e.iter().filter(|e| execd(e)).count() == 2
    });
    assert!(
        events
            .iter()
            .filter(|e| execd(e))
            .all(|e| e["credential_id"] == "canary" && e["decision"] == "allow"),
        "{events:#?}"
    );
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}"); 3]
    );
    let out = Command::new("podman")
        .args(["rm", "-f", "-t", "0", &sleeper])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_containers(&daemon, "boxagent", &[]);
    assert!(
        daemon
            .log()
            .contains("container ended; agentguard detached from it"),
        "{}",
        daemon.log()
    );

    // With the daemon gone, a container's start fails (the hook cannot
    // ask whether a policy selects it): curl never runs.
    daemon.kill9();
    let handshakes = upstream.handshakes();
    let mut run = podman(&hooks, &selected);
    run.args(["--rm", "--network", "none"])
        .arg("-v")
        .arg(format!("{}:/ca.pem:ro", bundle.display()));
    curl(&mut run, "/ca.pem");
    let out = run.output().unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert_ne!(text(&out.stdout), "200");
    assert_eq!(
        upstream.handshakes(),
        handshakes,
        "the upstream was reached"
    );
}
