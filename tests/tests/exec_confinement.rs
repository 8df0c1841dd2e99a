//! What `agentguard exec` takes away from an agent before it runs: every
//! capability (whatever user it becomes), the sockets the kernel programs
//! cannot see (other families, netlink protocols that carry messages
//! between processes, io_uring, the x32 system calls that would slip past
//! the filters), and inherited IPv4/IPv6 sockets.

use std::os::{
    fd::{AsRawFd as _, RawFd},
    unix::process::CommandExt as _,
};

use crate::common::{Daemon, ok, require_root, text};

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
        try:\n\
        \x20   socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2).close(); print('NETLINK_USERSOCK ok')\n\
        except OSError as e: print('NETLINK_USERSOCK', errno.errorcode[e.errno])\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        if libc.syscall(0x40000000 | 41, 2, 2, 0) < 0: print('x32 socket', errno.errorcode[ctypes.get_errno()])\n\
        else: print('x32 socket ok')\n\
        params = ctypes.create_string_buffer(120)\n\
        if libc.syscall(425, 8, params) < 0: print('io_uring_setup', errno.errorcode[ctypes.get_errno()])\n\
        else: print('io_uring_setup ok')\n";
    let expected = "AF_UNIX ok\nAF_INET ok\nAF_INET6 ok\nAF_NETLINK ok\n\
        AF_VSOCK EAFNOSUPPORT\nAF_PACKET EAFNOSUPPORT\nAF_TIPC EAFNOSUPPORT\n\
        NETLINK_USERSOCK EAFNOSUPPORT\nx32 socket EPERM\nio_uring_setup ENOSYS\n";
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

#[test]
fn an_inherited_ip_socket_stops_exec() {
    require_root();
    let daemon = Daemon::start(&[AGENT]);
    // Made here, outside the agent's cgroup: no hook would ever see it.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let out = exec_inheriting(&daemon, socket.as_raw_fd())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("file descriptor 5 is an IPv4 socket this process inherited"),
        "{err}"
    );
    // Unix sockets (a journald stdout, a pipe-like socketpair) are fine.
    let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    ok(&exec_inheriting(&daemon, unix.as_raw_fd()).output().unwrap());
}

/// `agentguard exec` (as nobody, running `true`) with `fd` handed down as
/// descriptor 5.
fn exec_inheriting(daemon: &Daemon, fd: RawFd) -> std::process::Command {
    let mut cmd = daemon.exec_with(AGENT, &["--user", "65534:65534"], &["true"]);
    // SAFETY: only dup2 and fcntl between fork and exec (both
    // async-signal-safe). dup2 leaves FD_CLOEXEC off on fd 5, except when
    // `fd` already is 5 (std opens sockets close-on-exec, and dup2 onto
    // itself changes nothing; with other tests running, fd 5 may well be
    // free for the socket): clearing the flag makes sure exec inherits it.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 5) < 0 || nix::libc::fcntl(5, nix::libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}
