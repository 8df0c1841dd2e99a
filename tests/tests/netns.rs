//! Agents in network namespaces of their own, as a container runtime makes
//! them: a namespace with its loopback (and a veth pair to a test host in
//! a second namespace), and a cgroup. The daemon opens its listeners in
//! the agent's namespace; the kernel sends the agent there; the proxy
//! attributes, decides, injects and records exactly as for a host agent,
//! and dials upstream from the agent's namespace (or the host's, if the
//! policy says so).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use std::net::Ipv4Addr;

use crate::common::{
    Daemon, DaemonBuilder, DnsUpstream, TestCa, TlsUpstream, in_cgroup_dir, require_root, text,
};

const API: &str = "api.agentguard.test";
/// The test host's address on the veth pair, and the agent's.
const UPSTREAM_VETH_IP: &str = "10.213.0.1";
const AGENT_VETH_IP: &str = "10.213.0.2";

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}

/// A named network namespace (`/run/netns/NAME`) with its loopback up;
/// deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Self {
        let name = format!(
            "agt-{}-{}-{role}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let netns = Self { name };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A file `ip netns exec` mounts over /etc/NAME for commands in this
    /// namespace (as a container has its own /etc/resolv.conf).
    fn etc_file(&self, name: &str, body: &str) {
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), body).unwrap();
    }

    /// `cmd` started in this namespace and in the cgroup at `cgroup`
    /// (joined before `ip netns exec` runs, so before `cmd` exists): what a
    /// container runtime does.
    fn run_in(&self, cgroup: &Path, cmd: &[&str]) -> Command {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(cmd);
        in_cgroup_dir(cgroup, &full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        // `ip netns exec` files of this namespace (see `etc_file`).
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// An agent's namespace joined by a veth pair to a test host's namespace,
/// where the upstream listens.
struct Link {
    agent: Netns,
    host: Netns,
}

impl Link {
    fn new() -> Self {
        let (agent, host) = (Netns::new("a"), Netns::new("u"));
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let (va, vu) = (
            format!("ag{}a{n}", std::process::id() % 100_000),
            format!("ag{}u{n}", std::process::id() % 100_000),
        );
        ip(&[
            "-n",
            &agent.name,
            "link",
            "add",
            &va,
            "type",
            "veth",
            "peer",
            "name",
            &vu,
            "netns",
            &host.name,
        ]);
        let agent_addr = format!("{AGENT_VETH_IP}/30");
        let host_addr = format!("{UPSTREAM_VETH_IP}/30");
        ip(&["-n", &agent.name, "addr", "add", &agent_addr, "dev", &va]);
        ip(&["-n", &host.name, "addr", "add", &host_addr, "dev", &vu]);
        ip(&["-n", &agent.name, "link", "set", &va, "up"]);
        ip(&["-n", &host.name, "link", "set", &vu, "up"]);
        Self { agent, host }
    }
}

/// What most tests here start from: a test CA, an agent's namespace
/// linked to a test host's with the upstream on it, and the canary
/// secret's file. (Fields drop in order: the upstream before the
/// namespaces it runs in.)
struct Linked {
    secret: PathBuf,
    upstream: TlsUpstream,
    link: Link,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl Linked {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("netns test CA", dir.path());
        let link = Link::new();
        let upstream = TlsUpstream::start_in_netns(&link.host.path(), UPSTREAM_VETH_IP, API, &ca);
        Self {
            secret: secret_file(dir.path()),
            upstream,
            link,
            ca,
            dir,
        }
    }

    /// A daemon guarding `agent` in the agent's namespace, with
    /// [`policy`] and the test CA for upstreams.
    fn daemon(&self, agent: &str) -> DaemonBuilder {
        Daemon::builder(&[agent])
            .policy(&policy(&self.link.agent.path(), &self.secret, ""))
            .upstream_ca(&self.ca.pem_path)
    }
}

const CANARY: &str = "agc-netns-canary-7f3a";

/// The policy of an agent in `netns` that may GET /reflect on the API with
/// the canary injected (and nothing else), after its name and cgroup.
fn policy(netns: &Path, secret: &Path, extra_agent_keys: &str) -> String {
    format!(
        "netns = \"{}\"\n{extra_agent_keys}\n\
         [[credential]]\nid = \"canary\"\nsource = {{ file = \"{}\" }}\n\
         inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\n\
         [[tool]]\nname = \"api.reflect\"\nhost = \"{API}\"\nmethods = [\"GET\"]\npaths = [\"/reflect\"]\ncredential = \"canary\"\n",
        netns.display(),
        secret.display()
    )
}

fn secret_file(dir: &Path) -> PathBuf {
    crate::common::secret_file(dir, "canary", &format!("{CANARY}\n"))
}

/// Unmodified curl to the API at `ip` (by name, as the agent would after
/// DNS), trusting agentguard's CA bundle.
fn curl(daemon: &Daemon, upstream: &TlsUpstream, ip: &str, path: &str) -> Vec<String> {
    let port = upstream.addr.port();
    let bundle = daemon.state_dir().join("ca/bundle.pem");
    vec![
        "curl".into(),
        "-sS".into(),
        "-m".into(),
        "10".into(),
        "--cacert".into(),
        bundle.display().to_string(),
        "--resolve".into(),
        format!("{API}:{port}:{ip}"),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        format!("https://{API}:{port}{path}"),
    ]
}

fn run(mut cmd: Command) -> (u32, Output) {
    crate::common::run_with_pid({
        cmd.stdin(std::process::Stdio::null());
        cmd
    })
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The audit events of `kind` for `agent`.
fn events_of<'a>(events: &'a [Value], kind: &str, agent: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["agent"] == agent)
        .collect()
}

#[test]
fn an_agent_in_its_own_netns_is_redirected_attributed_decided_injected_and_audited() {
    require_root();
    let linked = Linked::start();
    let (link, upstream) = (&linked.link, &linked.upstream);
    let daemon = linked.daemon("nsagent").start();
    let cgroup = daemon.cgroup_path("nsagent");

    let allowed = curl(&daemon, upstream, UPSTREAM_VETH_IP, "/reflect");
    let (pid, out) = run(link.agent.run_in(&cgroup, &strs(&allowed)));
    assert_eq!(
        text(&out.stdout),
        "200",
        "{}{}",
        text(&out.stderr),
        daemon.log()
    );
    // Injected on the way, never seen by the agent.
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    assert!(!text(&out.stderr).contains(CANARY));

    // Decided: a path no tool allows is refused before the upstream.
    let denied = curl(&daemon, upstream, UPSTREAM_VETH_IP, "/admin");
    let (_, out) = run(link.agent.run_in(&cgroup, &strs(&denied)));
    assert_eq!(text(&out.stdout), "403", "{}", text(&out.stderr));
    assert!(upstream.seen().iter().all(|r| r.path != "/admin"));

    // Attributed and recorded: the connection by curl's pid, the original
    // destination on the veth, the request allowed with the credential.
    let events = daemon.wait_for_events("the namespaced agent's events", |e| {
        events_of(e, "request", "nsagent").len() >= 2
    });
    let conns = events_of(&events, "connection", "nsagent");
    assert!(
        conns.iter().any(|e| e["pid"] == pid
            && e["dst_ip"] == UPSTREAM_VETH_IP
            && e["dst_port"] == upstream.addr.port()),
        "{conns:#?}"
    );
    let requests = events_of(&events, "request", "nsagent");
    assert!(
        requests
            .iter()
            .any(|e| e["decision"] == "allow" && e["credential_id"] == "canary"),
        "{requests:#?}"
    );
    assert!(
        requests.iter().any(|e| e["decision"] == "deny"),
        "{requests:#?}"
    );
    assert!(!daemon.log().contains(CANARY));
}

#[test]
fn a_namespaced_agents_dns_is_answered_by_its_resolver_inside_its_netns() {
    require_root();
    let linked = Linked::start();
    let (link, upstream) = (&linked.link, &linked.upstream);
    let dns = DnsUpstream::start(
        "127.0.0.1",
        &[(API, UPSTREAM_VETH_IP.parse::<Ipv4Addr>().unwrap())],
    );
    let daemon = linked
        .daemon("nsdns")
        .args(&["--dns-upstream", &dns.addr.to_string()])
        .start();
    // The container's resolv.conf names a server on its own network; the
    // kernel sends the query to the agent's resolver, in the namespace.
    link.agent.etc_file(
        "resolv.conf",
        &format!("nameserver {UPSTREAM_VETH_IP}\noptions timeout:2 attempts:1\n"),
    );
    link.agent.etc_file("hosts", "127.0.0.1 localhost\n");
    let mut cmd = curl(&daemon, upstream, UPSTREAM_VETH_IP, "/reflect");
    let at = cmd.iter().position(|a| a == "--resolve").unwrap();
    cmd.drain(at..at + 2);
    let (_, out) = run(link.agent.run_in(&daemon.cgroup_path("nsdns"), &strs(&cmd)));
    assert_eq!(text(&out.stdout), "200", "{}", text(&out.stderr));
    assert!(
        dns.asked().iter().any(|q| q.contains(API)),
        "{:?}",
        dns.asked()
    );
    daemon.wait_for_events("the agent's DNS query", |e| {
        e.iter()
            .any(|e| e["kind"] == "dns_query" && e["agent"] == "nsdns" && e["decision"] == "allow")
    });
}

#[test]
fn a_killed_daemon_leaves_a_namespaced_agent_unable_to_connect() {
    require_root();
    let linked = Linked::start();
    let (link, upstream, ca) = (&linked.link, &linked.upstream, &linked.ca);
    let mut daemon = linked.daemon("nsdead").start();
    let cgroup = daemon.cgroup_path("nsdead");
    let cmd = curl(&daemon, upstream, UPSTREAM_VETH_IP, "/reflect");
    let (_, out) = run(link.agent.run_in(&cgroup, &strs(&cmd)));
    assert_eq!(text(&out.stdout), "200", "{}", text(&out.stderr));
    assert_eq!(upstream.handshakes(), 1);

    daemon.kill9();
    let (_, out) = run(link.agent.run_in(&cgroup, &strs(&cmd)));
    // curl exit 7: could not connect (refused), not a timeout, and the
    // route to the test host was right there.
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(upstream.handshakes(), 1, "the upstream was reached");
    // The same curl outside the agent's cgroup (trusting the test CA, as
    // no proxy is in the way) reaches the test host: the refusal was the
    // guard's, not the network's.
    let mut direct = cmd.clone();
    direct[5] = ca.pem_path.display().to_string();
    let mut free = Command::new("ip");
    free.args(["netns", "exec", &link.agent.name]).args(&direct);
    let (_, out) = run(free);
    assert_eq!(text(&out.stdout), "200", "{}", text(&out.stderr));
    assert_eq!(upstream.seen().len(), 2);
}

#[test]
fn a_host_agent_and_namespaced_agents_at_once_each_attributed_to_itself() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("netns test CA", dir.path());
    let link = Link::new();
    let ns_upstream = TlsUpstream::start_in_netns(&link.host.path(), UPSTREAM_VETH_IP, API, &ca);
    let host_upstream = TlsUpstream::start("127.0.0.3", API, &ca);
    let secret = secret_file(dir.path());
    // Agent "inside" dials from its namespace (the default); "viahost" is
    // in the same namespace but its policy has upstream connections dialled
    // from the host's; "onhost" is an ordinary host agent.
    // Each agent connects from the same local port (see below), which its
    // policy must let it bind.
    let local_port = 20_000 + (std::process::id() % 10_000) as u16;
    let ports: Vec<String> = (0..6)
        .map(|i| format!("\"*:{}\"", local_port + i))
        .collect();
    let listen = format!("listen = [{}]", ports.join(", "));
    let in_netns = policy(&link.agent.path(), &secret, &listen);
    let daemon = Daemon::builder(&["inside", "viahost", "onhost"])
        .policy(&in_netns)
        .policy_for(
            "viahost",
            &policy(
                &link.agent.path(),
                &secret,
                &format!("upstream_netns = \"host\"\n{listen}"),
            ),
        )
        .policy_for(
            "onhost",
            &in_netns.replace(
                &format!("netns = \"{}\"\n", link.agent.path().display()),
                "",
            ),
        )
        .upstream_ca(&ca.pem_path)
        .start();

    // The three at once, each from the same local port in its own
    // namespace (127.0.0.1:<port> on the agents' loopback and on the
    // host's): only the namespace tells their kernel records apart.
    // ("inside" and "viahost" share a namespace: they take turns at a
    // port of their own, and every round takes new ports, as the last
    // round's are in TIME_WAIT.)
    let with_port = |mut cmd: Vec<String>, port: u16| {
        cmd.insert(1, "--local-port".into());
        cmd.insert(2, port.to_string());
        cmd
    };
    for round in 0..3u16 {
        let port = local_port + 2 * round;
        let inside = with_port(
            curl(&daemon, &ns_upstream, UPSTREAM_VETH_IP, "/reflect"),
            port,
        );
        let viahost = with_port(
            curl(&daemon, &host_upstream, "127.0.0.3", "/reflect"),
            port + 1,
        );
        let onhost = with_port(curl(&daemon, &host_upstream, "127.0.0.3", "/reflect"), port);
        let mut children = Vec::new();
        for (agent, cmd, netns) in [
            ("inside", &inside, true),
            ("viahost", &viahost, true),
            ("onhost", &onhost, false),
        ] {
            let cgroup = daemon.cgroup_path(agent);
            let mut c = if netns {
                link.agent.run_in(&cgroup, &strs(cmd))
            } else {
                in_cgroup_dir(&cgroup, &strs(cmd))
            };
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            children.push((agent, c.spawn().unwrap()));
        }
        for (agent, child) in children {
            let pid = child.id();
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                text(&out.stdout),
                "200",
                "round {round}, {agent}: {}",
                text(&out.stderr)
            );
            let events = daemon.wait_for_events("the agent's connection", |e| {
                e.iter()
                    .any(|e| e["kind"] == "connection" && e["pid"] == pid)
            });
            let conn = events
                .iter()
                .find(|e| e["kind"] == "connection" && e["pid"] == pid)
                .unwrap();
            assert_eq!(conn["agent"], agent, "{conn:#}");
        }
    }
    // "viahost" was in the agents' namespace, where 127.0.0.3 has nothing:
    // its requests reached the host's upstream because they were dialled
    // from the host. "inside"'s went over the veth.
    assert_eq!(
        host_upstream
            .header_values("/reflect", "authorization")
            .len(),
        6
    );
    assert_eq!(
        ns_upstream.header_values("/reflect", "authorization").len(),
        3
    );
}

#[test]
fn a_connect_as_the_first_thing_in_an_attached_netns_and_cgroup_is_redirected() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("netns test CA", dir.path());
    // A namespace with its loopback only; the upstream lives there too.
    let netns = Netns::new("lo");
    let upstream = TlsUpstream::start_in_netns(&netns.path(), "127.0.0.3", API, &ca);
    let secret = secret_file(dir.path());
    let daemon = Daemon::builder(&["nsfirst"])
        .policy(&policy(&netns.path(), &secret, ""))
        .upstream_ca(&ca.pem_path)
        .start();
    // The process is born in the cgroup and the namespace (as a runtime
    // starts a container's init); its first connection is curl's.
    let cmd = curl(&daemon, &upstream, "127.0.0.3", "/reflect");
    let (pid, out) = run(netns.run_in(&daemon.cgroup_path("nsfirst"), &strs(&cmd)));
    assert_eq!(text(&out.stdout), "200", "{}", text(&out.stderr));
    // Only the proxy adds the credential: the connection did not escape.
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    daemon.wait_for_events("the first connection", |e| {
        e.iter()
            .any(|e| e["kind"] == "connection" && e["pid"] == pid && e["agent"] == "nsfirst")
    });
}

#[test]
fn a_netns_found_from_the_cgroups_processes_gets_listeners() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("netns test CA", dir.path());
    let netns = Netns::new("found");
    let upstream = TlsUpstream::start_in_netns(&netns.path(), "127.0.0.3", API, &ca);
    let secret = secret_file(dir.path());
    let daemon = Daemon::builder(&["nsfound"])
        .policy(&policy(Path::new("cgroup"), &secret, ""))
        .upstream_ca(&ca.pem_path)
        .start();
    let cgroup = daemon.cgroup_path("nsfound");
    let cmd = curl(&daemon, &upstream, "127.0.0.3", "/reflect");
    // Nothing of the agent lives in the namespace yet: nothing listens on
    // the proxy's port there (probed from outside the agent's cgroup,
    // which the daemon's look at the cgroup cannot see).
    let proxy_port = daemon.status()["proxy_port"].as_u64().unwrap();
    let probe_url = format!("http://127.0.0.1:{proxy_port}/");
    let probe = || {
        Command::new("ip")
            .args(["netns", "exec", &netns.name, "curl", "-sS", "-m", "5"])
            .arg(&probe_url)
            .output()
            .unwrap()
    };
    let out = probe();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(upstream.handshakes(), 0);

    // A process of the agent's settles in the namespace (a container's
    // init); the daemon notices and opens its listeners there.
    let mut sleeper = netns.run_in(&cgroup, &["sleep", "60"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log()
        .contains("proxy listening in the agent's network namespace")
    {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Now the proxy answers there (and refuses the probe: no kernel
    // record, as it is no agent's)...
    assert_ne!(probe().status.code(), Some(7));
    // ...and the agent's connection goes through it.
    let (_, out) = run(netns.run_in(&cgroup, &strs(&cmd)));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(text(&out.stdout), "200", "{}", text(&out.stderr));
    assert_eq!(
        upstream.header_values("/reflect", "authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    // The agent's last process left: the listeners there close, so the
    // namespace is not kept alive by the daemon.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains("its listeners are closed") {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `count` connects to `host:port`, each sending a little and closing at
/// once; prints each errno (0: connected).
const CONNECT_AND_CLOSE: &str = r#"
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(count):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
        s.sendall(b"\x16\x03\x01\x00\x00")
        out.append(0)
    except OSError as e:
        out.append(e.errno)
    s.close()
print(*out)
"#;

/// A connection whose handshake the proxy's side never completes (its last
/// ACK lost, as when the listener's accept queue is full) is never
/// accepted; the agent, done with it, closes first. Its kernel record
/// would then keep its place in the agent's share until the daemon
/// restarted. After `--kernel-record-max-wait` the daemon forgets it: the
/// share comes back, the connection is recorded as refused and counted,
/// and the agent connects again.
#[test]
fn a_record_the_proxy_never_accepts_is_forgotten_after_the_max_wait() {
    require_root();
    let linked = Linked::start();
    let (link, upstream) = (&linked.link, &linked.upstream);
    let metrics_port = crate::common::free_port();
    let daemon = linked
        .daemon("nsstale")
        .args(&[
            "--kernel-agent-records",
            "2",
            "--kernel-record-max-wait",
            "2s",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ])
        .start();
    let cgroup = daemon.cgroup_path("nsstale");
    let waiting = || {
        let status = daemon.status();
        let agent = status["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "nsstale")
            .cloned()
            .unwrap();
        agent["kernel"]["records_waiting"].as_u64().unwrap()
    };

    // In the agent's namespace, every packet to the proxy's port but the
    // SYN is dropped: the agent's side completes the handshake (the
    // kernel records the connection), the proxy's never does.
    let proxy_port = daemon.status()["proxy_port"].as_u64().unwrap();
    let rules = linked.dir.path().join("drop-handshake.nft");
    std::fs::write(
        &rules,
        format!(
            "table ip agtest {{\n  chain out {{\n    type filter hook output priority 0;\n    \
             tcp dport {proxy_port} tcp flags & (syn | ack) == ack drop\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let nft = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &link.agent.name, "nft"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "nft {args:?}: {}", text(&out.stderr));
    };
    nft(&["-f", &rules.display().to_string()]);

    let port = upstream.addr.port().to_string();
    let started = Instant::now();
    let (pid, out) = run(link.agent.run_in(
        &cgroup,
        &[
            "python3",
            "-c",
            CONNECT_AND_CLOSE,
            UPSTREAM_VETH_IP,
            &port,
            "3",
        ],
    ));
    // Two connect (the share); the third is refused in the kernel (EPERM).
    assert_eq!(text(&out.stdout).trim(), "0 0 1", "{}", text(&out.stderr));
    assert_eq!(waiting(), 2, "{}", daemon.log());
    // The share's count and the kernel's table agree.
    let entries = |n: u32| format!("agentguard_kernel_map_entries{{map=\"PEER_RECORDS\"}} {n}");
    let metrics = crate::common::http_get(metrics_port, "/metrics");
    assert!(metrics.contains(&entries(2)), "{metrics}");

    // Forgotten once they have waited 2 s, within a check period and the
    // stamps' second after.
    let deadline = Instant::now() + Duration::from_secs(15);
    while waiting() > 0 {
        assert!(
            Instant::now() < deadline,
            "records still waiting 15 s on: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "forgotten after {:?}, before the max wait",
        started.elapsed()
    );
    // Gone from the table too, and counted (just after the share was
    // given back).
    let reported = || {
        let metrics = crate::common::http_get(metrics_port, "/metrics");
        metrics.contains("agentguard_kernel_records_expired_total 2")
            && metrics.contains(&entries(0))
    };
    while !reported() {
        assert!(
            Instant::now() < deadline,
            "not counted: {}",
            crate::common::http_get(metrics_port, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each is a refused connection in the audit record, attributed from
    // its record: the agent, the process, where it was going.
    let events = daemon.wait_for_events("the forgotten connections", |e| {
        e.iter()
            .filter(|e| e["rule"] == "kernel-record-expired")
            .count()
            >= 2
    });
    let forgotten: Vec<&Value> = events
        .iter()
        .filter(|e| e["rule"] == "kernel-record-expired")
        .collect();
    assert_eq!(forgotten.len(), 2, "{forgotten:#?}");
    for e in forgotten {
        assert_eq!(e["kind"], "connection", "{e}");
        assert_eq!(e["decision"], "refuse", "{e}");
        assert_eq!(e["agent"], "nsstale", "{e}");
        assert_eq!(e["pid"], pid, "{e}");
        assert_eq!(e["dst_ip"], UPSTREAM_VETH_IP, "{e}");
        assert_eq!(e["dst_port"], upstream.addr.port(), "{e}");
        assert!(
            e["reason"]
                .as_str()
                .unwrap()
                .contains("--kernel-record-max-wait (2s)"),
            "{e}"
        );
    }

    // The share is the agent's again: with the network whole, it connects
    // and is served.
    nft(&["delete", "table", "ip", "agtest"]);
    let cmd = curl(&daemon, upstream, UPSTREAM_VETH_IP, "/reflect");
    let (_, out) = run(link.agent.run_in(&cgroup, &strs(&cmd)));
    assert_eq!(text(&out.stdout), "200", "{}", text(&out.stderr));
}
