//! A thread that lives in an agent's network namespace and makes sockets
//! there, so that the agent's upstream connections leave from its own
//! namespace (its routes, its source address). Only the socket is made
//! there; it is connected and used from the daemon's runtime.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, mpsc},
};

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::oneshot,
};

use super::{Netns, NetnsError, NetnsId};

type Request = (Domain, oneshot::Sender<io::Result<Socket>>);

/// Ends its thread when dropped (the channel closes).
#[derive(Debug)]
pub struct Dialer {
    requests: mpsc::Sender<Request>,
    netns: NetnsId,
    /// The namespace's cookie: unlike its inode, never reused in a boot.
    cookie: u64,
}

impl Dialer {
    /// Starts the thread in `netns`; returns once it is inside.
    pub fn start(netns: &Netns) -> Result<Arc<Self>, NetnsError> {
        let inside = netns.try_clone()?;
        let (requests, incoming) = mpsc::channel::<Request>();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::Builder::new()
            .name("agentguard-dial".into())
            .spawn(move || {
                let entered = setns(
                    std::os::fd::AsFd::as_fd(&inside.file),
                    CloneFlags::CLONE_NEWNET,
                );
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                while let Ok((domain, reply)) = incoming.recv() {
                    let _ = reply.send(new_socket(domain));
                }
            })
            .map_err(|source| netns.inside(source))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Arc::new(Self {
                requests,
                netns: netns.id,
                cookie: netns.cookie,
            })),
            Ok(Err(source)) => Err(NetnsError::Enter {
                path: netns.path.clone(),
                source,
            }),
            Err(_) => Err(netns.inside(io::Error::other("dialer thread ended"))),
        }
    }

    pub fn netns(&self) -> NetnsId {
        self.netns
    }

    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// A TCP connection to `dst` from the namespace.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        let domain = if dst.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let (reply, socket) = oneshot::channel();
        self.requests
            .send((domain, reply))
            .map_err(|_| io::Error::other("the namespace's dialer thread ended"))?;
        let socket = socket
            .await
            .map_err(|_| io::Error::other("the namespace's dialer thread ended"))??;
        TcpSocket::from_std_stream(std::net::TcpStream::from(socket))
            .connect(dst)
            .await
    }
}

fn new_socket(domain: Domain) -> io::Result<Socket> {
    // socket2 makes it close-on-exec.
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}
