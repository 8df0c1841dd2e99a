//! A Kubernetes node's runtime without the kubelet: Debian's containerd,
//! started by the test with its own root, state, socket and CNI folder,
//! its CRI plugin serving pods. The test plays the kubelet through the CRI
//! (k8s-cri: the kubelet's side of the API, generated from Kubernetes'
//! api.proto, over tonic). containerd's runc is `agentguard oci-runtime
//! --cri-socket`, through a two-line script as the README says; a pod's
//! network namespace gets a veth from the CNI `ptp` plugin (no bridge, no
//! masquerade) on 10.214.0.0/24, which nothing routes beyond this host.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_cri::v1 as cri;
use tonic::transport::Channel;

use super::containers::{agent_request, canary_tool, rootfs_tar, wait_for_containers};
use crate::common::{AGENTGUARD, Daemon, TestCa, TlsUpstream, require_root, text};

const API: &str = "api.agentguard.test";
const CANARY: &str = "agc-pod-canary-3b81";

/// A containerd of the test's own; its pods are removed and it is
/// stopped when dropped.
struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Containerd {
    fn start(dir: &Path, admin_socket: &Path, pause_image: &str, exempt: &str) -> Self {
        let socket = dir.join("containerd.sock");
        // containerd's runc, as the README has it: agentguard's wrapper,
        // told where the CRI answers.
        let runc = dir.join("agentguard-runc");
        std::fs::write(
            &runc,
            format!(
                "#!/bin/sh\nexec {AGENTGUARD} --admin-socket {} oci-runtime --runc /usr/sbin/runc --cri-socket {} --exempt-namespace {exempt} -- \"$@\"\n",
                admin_socket.display(),
                socket.display()
            ),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        std::fs::write(
            cni.join("10-pods.conflist"),
            serde_json::json!({
                "cniVersion": "0.4.0",
                "name": "agentguard-test-pods",
                "plugins": [{
                    "type": "ptp",
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": "10.214.0.0/24" }]],
                        "dataDir": dir.join("cni-ipam"),
                    },
                }],
            })
            .to_string(),
        )
        .unwrap();
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  disable_apparmor = true
  # These machines refuse a lower oom_score_adj than the test's own (the
  # pause container's -998): containerd keeps them at its own instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                cni = cni.display(),
                runc = runc.display(),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let mut c = Command::new("/usr/bin/containerd");
        c.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        {
            use std::os::unix::process::CommandExt as _;
            c.process_group(0);
        }
        let child = c.spawn().expect("containerd (Debian's) runs");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let d = Self {
            child,
            dir: dir.to_owned(),
            socket,
            log,
            rt,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = d.socket.exists()
                && d.rt.block_on(async {
                    let mut c = cri::runtime_service_client::RuntimeServiceClient::new(
                        d.channel().await.ok()?,
                    );
                    let s = c.status(cri::StatusRequest::default()).await.ok()?;
                    Some(s.into_inner().status?.conditions.iter().all(|c| c.status))
                }) == Some(true);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI was not ready in 60 s: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        d
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        let socket = self.socket.clone();
        tonic::transport::Endpoint::from_static("http://[::]")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
    }

    fn runtime(&self) -> cri::runtime_service_client::RuntimeServiceClient<Channel> {
        cri::runtime_service_client::RuntimeServiceClient::new(
            self.rt.block_on(self.channel()).unwrap(),
        )
    }

    /// `ctr images import` of an image archive into the CRI's namespace.
    fn import(&self, archive: &Path) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr images import: {}",
            text(&out.stderr)
        );
    }

    /// A pod, as the kubelet asks for one: its own network namespace
    /// (`host_network`: the node's), its cgroup under the test's.
    fn run_pod(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        host_network: bool,
    ) -> Result<String, tonic::Status> {
        let mode = if host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        let logs = self.dir.join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            // The node's network is the node's UTS namespace too.
            hostname: if host_network {
                String::new()
            } else {
                "pod".into()
            },
            log_directory: logs.display().to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/agentguard-pods-{}", std::process::id()),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: mode as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut rt = self.runtime();
        let id = self
            .rt
            .block_on(rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }))?;
        Ok(id.into_inner().pod_sandbox_id)
    }

    /// Creates and starts a container in the pod; `Ok(id)` once started.
    fn start_container(
        &self,
        pod: &str,
        pod_name: &str,
        namespace: &str,
        image: &str,
        command: Vec<String>,
        mounts: Vec<cri::Mount>,
    ) -> Result<String, tonic::Status> {
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod_name.into(),
                uid: format!("uid-{pod_name}"),
                namespace: namespace.into(),
                attempt: 0,
            }),
            log_directory: self.dir.join("logs").join(pod_name).display().to_string(),
            ..Default::default()
        };
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "agent".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command,
            mounts,
            log_path: "agent.log".into(),
            ..Default::default()
        };
        let mut rt = self.runtime();
        let id = self
            .rt
            .block_on(rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }))?
            .into_inner()
            .container_id;
        self.rt
            .block_on(rt.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))?;
        Ok(id)
    }

    /// Waits (bounded: 30 s) for the container to exit; its stdout, as
    /// the CRI logged it.
    fn wait_exited(&self, container: &str, pod_name: &str) -> String {
        let mut rt = self.runtime();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self
                .rt
                .block_on(rt.container_status(cri::ContainerStatusRequest {
                    container_id: container.into(),
                    verbose: false,
                }))
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if status.state == cri::ContainerState::ContainerExited as i32 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "container {container} still {:?} after 30 s",
                status.state
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The CRI's log format: `TIME STREAM TAG TEXT` per line.
        let log = std::fs::read_to_string(self.dir.join("logs").join(pod_name).join("agent.log"))
            .unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let mut f = l.splitn(4, ' ');
                let (_, stream, _, text) = (f.next()?, f.next()?, f.next()?, f.next()?);
                (stream == "stdout").then_some(text)
            })
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The pods, as the kubelet removes them: their containers, network
        // namespaces (CNI teardown) and shims go with them.
        if let Ok(channel) = self.rt.block_on(self.channel()) {
            let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(channel);
            let pods = self
                .rt
                .block_on(rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()))
                .map(|r| r.into_inner().items)
                .unwrap_or_default();
            for pod in pods {
                let _ = self
                    .rt
                    .block_on(rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod.id.clone(),
                    }));
                let _ = self
                    .rt
                    .block_on(rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod.id,
                    }));
            }
        }
        use nix::{sys::signal, unistd::Pid};
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = signal::killpg(pid, signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // Shims of a failed test (each in a process group of its own),
        // found by the socket they were started for.
        let socket = self.socket.display().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&socket)
                && let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok())
            {
                let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
            }
        }
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
        // The pods' parent cgroup, empty once they are gone: in the v2
        // hierarchy and in each v1 one (these machines mount both).
        let parent = format!("agentguard-pods-{}", std::process::id());
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join(&parent));
        }
    }
}

/// The test's image as an archive containerd imports: curl and sleep,
/// imported by Podman with `sleep infinity` as its command (which the
/// pod's sandbox runs), saved in Docker's archive format.
fn image_archive(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new("podman")
        .args(["import", "--change", "CMD [\"/bin/sleep\", \"infinity\"]"])
        .arg(rootfs_tar(dir))
        .arg(name)
        .output()
        .unwrap();
    assert!(out.status.success(), "podman import: {}", text(&out.stderr));
    let archive = dir.join("image.tar");
    let out = Command::new("podman")
        .args(["save", "--format", "docker-archive", "-o"])
        .arg(&archive)
        .arg(name)
        .output()
        .unwrap();
    let _ = Command::new("podman").args(["rmi", "-f", name]).output();
    assert!(out.status.success(), "podman save: {}", text(&out.stderr));
    archive
}

#[test]
fn a_pod_selected_by_namespace_and_labels_is_attached_before_its_container_starts() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("pod test CA", dir.path());
    let upstream = TlsUpstream::start("127.0.0.4", API, &ca);
    let me = std::process::id();
    let mut daemon = Daemon::builder(&["podagent"])
        .policy(&format!(
            "upstream_netns = \"host\"\n\
             [agent.containers]\nruntime = \"kubernetes\"\nnamespace = \"agents-{me}\"\nlabels = {{ app = \"coder\" }}\n\n\
             {}",
            canary_tool(dir.path(), CANARY)
        ))
        .upstream_ca(&ca.pem_path)
        .start();
    let image = format!("localhost/agentguard-test-pod:{me}");
    let archive = image_archive(dir.path(), &image);
    // agentguard's own namespace, whose pods start while it is down.
    let own = format!("agentguard-system-{me}");
    let containerd = Containerd::start(dir.path(), &daemon.admin_socket, &image, &own);
    containerd.import(&archive);
    let bundle = daemon.state_dir().join("ca/bundle.pem");
    let port = upstream.addr.port();
    let curl = |cacert: &str| -> Vec<String> {
        [
            "/bin/curl",
            "-sS",
            "-m",
            "10",
            "--cacert",
            cacert,
            "--resolve",
            &format!("{API}:{port}:127.0.0.4"),
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{API}:{port}/reflect"),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mount = |host: &Path| cri::Mount {
        container_path: "/ca.pem".into(),
        host_path: host.display().to_string(),
        readonly: true,
        ..Default::default()
    };

    // Selected by its namespace and label: the pod has a network namespace
    // of its own (a veth, no route to the upstream), and curl's connect,
    // its first, reaches the proxy's listener there.
    let namespace = format!("agents-{me}");
    let pod = containerd
        .run_pod(&namespace, "coder", &[("app", "coder")], false)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}\n{}", containerd.log(), daemon.log()));
    let container = containerd
        .start_container(
            &pod,
            "coder",
            &namespace,
            &image,
            curl("/ca.pem"),
            vec![mount(&bundle)],
        )
        .unwrap_or_else(|e| {
            panic!(
                "StartContainer: {e}\n{}\n{}",
                containerd.log(),
                daemon.log()
            )
        });
    let stdout = containerd.wait_exited(&container, "coder");
    assert_eq!(stdout, "200", "{}\n{}", daemon.log(), containerd.log());
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    let request = agent_request(&daemon, "podagent", "the pod's request");
    assert_eq!(request["decision"], "allow", "{request:#}");
    assert_eq!(request["credential_id"], "canary", "{request:#}");
    assert_eq!(
        request["container_name"],
        format!("{namespace}/coder/agent"),
        "{request:#}"
    );
    assert_eq!(request["container_image"], image.as_str(), "{request:#}");
    assert_eq!(request["container_id"], container.as_str(), "{request:#}");
    assert_eq!(request["comm"], "curl", "{request:#}");
    // The pod's sandbox (pause) container started through the same hook
    // and was never attached (nothing of it in the log's attachments);
    // the agent's container was, and is forgotten once it ended.
    let attached = daemon
        .log()
        .matches("container attached before its start")
        .count();
    assert_eq!(attached, 1, "{}", daemon.log());
    wait_for_containers(&daemon, "podagent", &[]);

    // Not selected, on the node's network: the same label in another
    // namespace, and another label in the same namespace. Each starts
    // untouched and reaches the upstream itself, with no credential;
    // agentguard records nothing of either.
    let other = format!("default-{me}");
    for (n, (ns, pod, label)) in [(&other, "plain", "coder"), (&namespace, "web", "web")]
        .into_iter()
        .enumerate()
    {
        let sandbox = containerd
            .run_pod(ns, pod, &[("app", label)], true)
            .unwrap();
        let plain = containerd
            .start_container(
                &sandbox,
                pod,
                ns,
                &image,
                curl("/ca.pem"),
                vec![mount(&ca.pem_path)],
            )
            .unwrap();
        assert_eq!(
            containerd.wait_exited(&plain, pod),
            "200",
            "{}",
            daemon.log()
        );
        assert_eq!(
            upstream.header_values("/reflect", "authorization"),
            vec![format!("Bearer {CANARY}")],
            "{ns}/{pod}'s request carried no credential"
        );
        assert_eq!(upstream.handshakes(), 2 + n);
        assert!(
            !daemon
                .audit_events()
                .iter()
                .any(|e| e["container_id"] == plain.as_str()),
            "{:#?}",
            daemon.audit_events()
        );
    }

    // With the daemon gone, the hook cannot ask: a container of a pod
    // that was already running does not start, selected or not.
    let late = containerd
        .run_pod(&namespace, "late", &[("app", "coder")], false)
        .unwrap();
    daemon.kill9();
    let refused = containerd
        .start_container(
            &late,
            "late",
            &namespace,
            &image,
            curl("/ca.pem"),
            vec![mount(&bundle)],
        )
        .expect_err("a pod's container started without agentguard");
    assert!(
        refused.message().contains("agentguard"),
        "the runtime's error names the hook: {refused}"
    );
    // Except agentguard's own namespace's: its pod must be able to start
    // to bring the daemon back. It runs untouched.
    let revived = containerd
        .run_pod(&own, "agentguard", &[("app", "coder")], true)
        .unwrap_or_else(|e| panic!("RunPodSandbox in {own}: {e}\n{}", containerd.log()));
    let container = containerd
        .start_container(
            &revived,
            "agentguard",
            &own,
            &image,
            curl("/ca.pem"),
            vec![mount(&ca.pem_path)],
        )
        .unwrap_or_else(|e| panic!("StartContainer in {own}: {e}\n{}", containerd.log()));
    assert_eq!(containerd.wait_exited(&container, "agentguard"), "200");
    assert_eq!(upstream.handshakes(), 4);
}
