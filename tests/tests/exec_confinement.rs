//! What `agentguard exec` takes away from an agent before it runs: every
//! capability (whatever user it becomes), and the sockets the kernel
//! programs cannot see.

use crate::common::{Daemon, ok, require_root};

const AGENT: &str = "confined-agent";

#[test]
fn an_agent_run_as_another_user_keeps_no_capability() {
    require_root();
    let daemon = Daemon::start(&[AGENT]);
    let script = "status = open('/proc/self/status').read()\n\
        print([l for l in status.splitlines() if l.startswith(('Cap', 'NoNewPrivs'))])\n";
    let out = daemon
        .exec_with(
            AGENT,
            &["--user", "65534:65534"],
            &["python3", "-c", script],
        )
        .output()
        .unwrap();
    // The bounding set too: it can only shrink before the switch from root.
    assert_eq!(
        ok(&out),
        "['CapInh:\\t0000000000000000', 'CapPrm:\\t0000000000000000', \
         'CapEff:\\t0000000000000000', 'CapBnd:\\t0000000000000000', \
         'CapAmb:\\t0000000000000000', 'NoNewPrivs:\\t1']\n"
    );
}

#[test]
fn sockets_the_kernel_programs_cannot_see_are_refused() {
    require_root();
    let daemon = Daemon::start(&[AGENT]);
    let script = "import ctypes, errno, socket\n\
        for name in ('AF_UNIX', 'AF_INET', 'AF_INET6', 'AF_NETLINK', 'AF_VSOCK', 'AF_PACKET', 'AF_TIPC'):\n\
        \x20   kind = socket.SOCK_RAW if name in ('AF_NETLINK', 'AF_PACKET') else socket.SOCK_DGRAM\n\
        \x20   try:\n\
        \x20       socket.socket(getattr(socket, name), kind).close(); print(name, 'ok')\n\
        \x20   except OSError as e: print(name, errno.errorcode[e.errno])\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        params = ctypes.create_string_buffer(120)\n\
        if libc.syscall(425, 8, params) < 0: print('io_uring_setup', errno.errorcode[ctypes.get_errno()])\n\
        else: print('io_uring_setup ok')\n";
    let expected = "AF_UNIX ok\nAF_INET ok\nAF_INET6 ok\nAF_NETLINK ok\n\
        AF_VSOCK EAFNOSUPPORT\nAF_PACKET EAFNOSUPPORT\nAF_TIPC EAFNOSUPPORT\n\
        io_uring_setup ENOSYS\n";
    // Unprivileged, and also with the namespace filter turned off: the
    // socket filter has no opt-out.
    for flags in [
        &["--user", "65534:65534"][..],
        &["--user", "65534:65534", "--allow-namespaces"][..],
    ] {
        let out = daemon
            .exec_with(AGENT, flags, &["python3", "-c", script])
            .output()
            .unwrap();
        assert_eq!(ok(&out), expected, "{flags:?}");
    }
}
