//! One agent's resolver sockets: UDP and TCP on 127.0.0.1 and ::1, all on
//! one port, in the daemon's network namespace and in the agent's if it
//! has its own. Dropping an [`AgentResolver`] stops them.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::debug;

use super::{Shared, query};
use crate::netns::{Netns, NetnsError, NetnsId};

/// Queries of one agent answered at once; beyond this, new ones wait, so
/// an agent flooding its resolver cannot exhaust the daemon's memory.
const MAX_IN_FLIGHT: usize = 256;
/// TCP connections of one agent served at once; further ones wait in the
/// kernel's accept queue. Without it, each connection would be a task and
/// a buffer of its own, however many the agent opens.
const MAX_TCP_SESSIONS: usize = 64;
/// A TCP DNS client idle this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Port collisions between the v4 and v6 binds are retried this often.
const BIND_ATTEMPTS: usize = 16;

pub struct AgentResolver {
    pub port: u16,
    agent: Arc<str>,
    shared: Arc<Shared>,
    /// Shared by all of the agent's sockets, in every namespace.
    limit: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
    /// The serving tasks, by network namespace (`None`: the daemon's).
    tasks: HashMap<Option<NetnsId>, Vec<JoinHandle<()>>>,
}

impl Drop for AgentResolver {
    fn drop(&mut self) {
        for task in self.tasks.values().flatten() {
            task.abort();
        }
    }
}

impl AgentResolver {
    pub fn start(agent: &str, shared: Arc<Shared>) -> io::Result<Self> {
        let (port, sockets) = bind_all()?;
        let mut resolver = Self {
            port,
            agent: Arc::from(agent),
            shared,
            limit: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            sessions: Arc::new(Semaphore::new(MAX_TCP_SESSIONS)),
            tasks: HashMap::new(),
        };
        resolver.serve(None, sockets)?;
        Ok(resolver)
    }

    /// Also listens on the agent's port in `netns` (an agent in a
    /// container), unless it does already.
    pub fn listen_in(&mut self, netns: &Netns) -> Result<(), NetnsError> {
        if self.tasks.contains_key(&Some(netns.id)) {
            return Ok(());
        }
        let port = self.port;
        let sockets = netns.enter(|| bind_at(port))?;
        self.serve(Some(netns.id), sockets)
            .map_err(|source| NetnsError::Inside {
                path: netns.path.clone(),
                source,
            })
    }

    /// Closes the sockets in namespaces not in `keep` (the daemon's own
    /// stay): a container that ended must not be kept alive by them.
    pub fn retain_netns(&mut self, keep: &[NetnsId]) {
        self.tasks.retain(|netns, tasks| {
            let kept = netns.is_none_or(|id| keep.contains(&id));
            if !kept {
                tasks.iter().for_each(JoinHandle::abort);
            }
            kept
        });
    }

    fn serve(&mut self, netns: Option<NetnsId>, sockets: Sockets) -> io::Result<()> {
        let (udp, tcp) = sockets;
        let tasks = self.tasks.entry(netns).or_default();
        for udp in udp {
            udp.set_nonblocking(true)?;
            let udp = Arc::new(UdpSocket::from_std(udp)?);
            let (agent, shared, limit) =
                (self.agent.clone(), self.shared.clone(), self.limit.clone());
            tasks.push(tokio::spawn(serve_udp(udp, agent, shared, limit)));
        }
        for tcp in tcp {
            tcp.set_nonblocking(true)?;
            let tcp = TcpListener::from_std(tcp)?;
            let (agent, shared, limit) =
                (self.agent.clone(), self.shared.clone(), self.limit.clone());
            let sessions = self.sessions.clone();
            tasks.push(tokio::spawn(serve_tcp(tcp, agent, shared, limit, sessions)));
        }
        Ok(())
    }
}

/// UDP and TCP sockets on 127.0.0.1 and (where the namespace has it) ::1.
type Sockets = (Vec<std::net::UdpSocket>, Vec<std::net::TcpListener>);

fn bind_all() -> io::Result<(u16, Sockets)> {
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        match try_bind() {
            Ok(bound) => return Ok(bound),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free resolver port")))
}

fn try_bind() -> io::Result<(u16, Sockets)> {
    let udp4 = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let port = udp4.local_addr()?.port();
    let udp6 = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, port))?;
    let tcp4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    let tcp6 = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port))?;
    Ok((port, (vec![udp4, udp6], vec![tcp4, tcp6])))
}

/// The sockets on `port`, in the calling thread's namespace; ::1 only if
/// the namespace has it (the kernel has nowhere to send IPv6 DNS there
/// otherwise).
fn bind_at(port: u16) -> io::Result<Sockets> {
    let udp4 = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?;
    let tcp4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    let (mut udp, mut tcp) = (vec![udp4], vec![tcp4]);
    match std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, port)) {
        Ok(udp6) => {
            udp.push(udp6);
            tcp.push(std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port))?);
        }
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {}
        Err(e) => return Err(e),
    }
    Ok((udp, tcp))
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    agent: Arc<str>,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let bytes = buf[..n].to_vec();
        let (socket, agent, shared) = (socket.clone(), agent.clone(), shared.clone());
        tokio::spawn(async move {
            if let Some(reply) = query::answer(&shared, &agent, &bytes, client, "udp").await {
                let _ = socket.send_to(&reply, client).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    agent: Arc<str>,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
) {
    loop {
        let Ok(session) = sessions.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, client)) = listener.accept().await else {
            continue;
        };
        let (agent, shared, limit) = (agent.clone(), shared.clone(), limit.clone());
        tokio::spawn(async move {
            if let Err(e) = tcp_session(stream, client, &agent, &shared, &limit).await {
                debug!(%client, error = %e, "dns tcp session ended");
            }
            drop(session);
        });
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2) until the client is done.
async fn tcp_session(
    mut stream: TcpStream,
    client: SocketAddr,
    agent: &str,
    shared: &Shared,
    limit: &Semaphore,
) -> io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "partial message"))??;
        let _permit = limit.acquire().await.map_err(io::Error::other)?;
        let Some(reply) = query::answer(shared, agent, &msg, client, "tcp").await else {
            return Ok(());
        };
        let len = u16::try_from(reply.len()).map_err(|_| io::Error::other("reply too large"))?;
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&reply).await?;
    }
}
