//! What the kernel knows of a TCP socket's state (`TCP_INFO`): how long a
//! relayed connection has been idle, and whether an agent has closed its
//! side of a connection while one of its requests waits.

use std::{io, os::fd::RawFd};

use nix::libc;

/// `TCP_ESTABLISHED` of the kernel's `enum tcp_state` (include/net/tcp_states.h),
/// which the libc crate does not export.
const TCP_ESTABLISHED: u8 = 1;

/// The kernel's `TCP_INFO` for the socket `fd`.
pub(super) fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info and len are valid for the sizes given. The caller keeps
    // `fd` open (a number closed and reused would be read as another
    // socket, which is why callers hold the socket while they ask).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// The agent's socket of an intercepted connection, to ask whether the
/// agent has closed its side while an HTTP/1 request of it waits (for a
/// person, or for the audit store): HTTP/1 keeps half-closes, so hyper
/// does not tell (`http::ConnMeta::agent_left`).
///
/// A bare descriptor number, valid while an HTTP/1 request of the
/// connection is being served: its future is polled by the HTTP
/// connection, which owns the socket, so the socket outlives every such
/// ask. Not so for HTTP/2, whose streams run as tasks of their own and can
/// outlive the connection: they never ask.
#[derive(Debug, Clone, Copy)]
pub struct AgentSocket(RawFd);

impl AgentSocket {
    pub fn of(socket: &impl std::os::fd::AsRawFd) -> Self {
        Self(socket.as_raw_fd())
    }

    /// Whether the agent has sent its FIN or a reset (it closed, or shut
    /// its sending side): this side of the connection is past
    /// `ESTABLISHED`. An error reading the state counts as closed.
    pub fn agent_finished(self) -> bool {
        tcp_info(self.0).map_or(true, |info| info.tcpi_state != TCP_ESTABLISHED)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Shutdown, TcpListener, TcpStream},
        time::{Duration, Instant},
    };

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let agent = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (proxy, _) = listener.accept().unwrap();
        (agent, proxy)
    }

    /// The FIN reaches the other end in its own time: asked until it has
    /// (bounded).
    fn finished_soon(socket: AgentSocket) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if socket.agent_finished() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn an_open_connection_is_not_finished_even_with_unread_bytes() {
        let (mut agent, proxy) = pair();
        std::io::Write::write_all(&mut agent, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!AgentSocket::of(&proxy).agent_finished());
    }

    #[test]
    fn a_shut_sending_side_or_a_close_is_finished() {
        let (agent, proxy) = pair();
        agent.shutdown(Shutdown::Write).unwrap();
        assert!(finished_soon(AgentSocket::of(&proxy)), "half-close");

        let (agent, proxy) = pair();
        drop(agent);
        assert!(finished_soon(AgentSocket::of(&proxy)), "close");
    }

    #[test]
    fn a_socket_the_kernel_cannot_read_counts_as_finished() {
        // Not a TCP socket: TCP_INFO fails, which must not read as open.
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(AgentSocket::of(&file).agent_finished());
    }
}
