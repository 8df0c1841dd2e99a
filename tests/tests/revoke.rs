//! Revocation in the kernel: a revoked agent's connects, datagrams and
//! binds fail with EPERM at once, and the mark outlives the daemon. Driven
//! through the library's `Kernel` (the `agentguard revoke` command comes
//! later): real programs attached to a real cgroup, a loopback listener
//! standing in for the proxy.

use std::{net::TcpListener, path::PathBuf, time::Duration};

use agentguard::{
    cgroup::CgroupRoot,
    ebpf::{self, Kernel, KernelOptions, ProcessGuard, UnixGuard},
    policy::CgroupRelPath,
};
use agentguard_common::event_kind;

use crate::common::{in_cgroup_dir, require_root, text};

/// A TCP connect (redirected to the stand-in proxy), a DNS datagram (to
/// the agent's resolver port) and a bind; prints each errno (0: it worked).
const TRY: &str = r#"
import socket
def attempt(f):
    try:
        f()
        return 0
    except OSError as e:
        return e.errno
def tcp():
    s = socket.create_connection(("127.0.0.2", 9), timeout=5)
    s.close()
def dns():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("127.0.0.53", 53))
def bind():
    socket.socket().bind(("127.0.0.1", 0))
print(attempt(tcp), attempt(dns), attempt(bind))
"#;

fn attempt(cgroup: &std::path::Path) -> String {
    let out = in_cgroup_dir(cgroup, &["python3", "-c", TRY])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_owned()
}

fn load(pin_dir: &std::path::Path) -> Kernel {
    let options = KernelOptions {
        processes: ProcessGuard::Optional,
        ..KernelOptions::default()
    };
    Kernel::load(pin_dir, UnixGuard::Required, &options)
        .unwrap()
        .0
}

struct Cleanup {
    pin_dir: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = ebpf::detach_all(&self.pin_dir);
        for c in &self.cgroups {
            let _ = std::fs::remove_dir(c);
        }
    }
}

#[test]
fn a_revoked_agent_is_refused_at_once_and_stays_revoked_across_a_restart() {
    require_root();
    let tag = format!("agentguard-test-revoke-{}", std::process::id());
    let root = CgroupRoot::discover().unwrap();
    let cgroup = root
        .ensure(&CgroupRelPath::parse(&format!("{tag}/agent")).unwrap())
        .unwrap();
    let cleanup = Cleanup {
        pin_dir: PathBuf::from("/sys/fs/bpf").join(&tag),
        cgroups: vec![cgroup.path.clone(), root.mount().join(&tag)],
    };
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let resolver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

    let mut kernel = load(&cleanup.pin_dir);
    let mut events = kernel.take_events().unwrap().ring;
    kernel.guard(&cgroup).unwrap();
    kernel
        .set_agent_dns(cgroup.id, resolver.local_addr().unwrap().port())
        .unwrap();
    kernel
        .configure(proxy.local_addr().unwrap().port(), std::process::id())
        .unwrap();
    assert_eq!(attempt(&cgroup.path), "0 0 0");

    kernel.set_revoked(cgroup.id, true).unwrap();
    assert_eq!(attempt(&cgroup.path), "1 1 1");
    let mut revoked = 0;
    while let Some(item) = events.next() {
        let kind = u32::from_ne_bytes(item[..4].try_into().unwrap());
        if kind == event_kind::AGENT_REVOKED {
            revoked += 1;
        }
    }
    assert_eq!(revoked, 3, "one refusal event per attempt");

    // The daemon stops; the mark stays in the pinned map, and the pinned
    // programs keep refusing.
    drop(events);
    drop(kernel);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(attempt(&cgroup.path), "1 1 1");

    // A new daemon adopts the pins and sees the mark...
    let mut kernel = load(&cleanup.pin_dir);
    assert_eq!(kernel.revoked(), vec![cgroup.id]);
    kernel.guard(&cgroup).unwrap();
    assert_eq!(attempt(&cgroup.path), "1 1 1");
    // ...until it restores the agent.
    kernel.set_revoked(cgroup.id, false).unwrap();
    assert_eq!(kernel.revoked(), Vec::<u64>::new());
    assert_eq!(attempt(&cgroup.path), "0 0 0");
    drop(kernel);
    drop(cleanup);
}
