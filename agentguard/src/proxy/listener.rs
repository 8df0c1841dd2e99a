//! Binding the proxy listeners and accepting connections, each handed to
//! its own task ([`super::connection`]) with the [`Origin`] of its
//! listener. The same code serves the listeners the daemon opens in
//! agents' network namespaces ([`crate::netns`]).

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket};
use tracing::warn;

use super::{ProxyContext, connection};
use crate::netns::{Dial, Origin, netns_cookie};

#[derive(Debug, Error)]
pub enum BindError {
    #[error(
        "proxy port {addr} is already in use (is another agentguard running? choose one with --proxy-port)"
    )]
    InUse { addr: SocketAddr },
    #[error("failed to bind proxy listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("proxy listener's network namespace: {0}")]
    Netns(io::Error),
}

/// The proxy's two listeners: 127.0.0.1 (IPv4 and v4-mapped connections) and
/// ::1 (IPv6), on one port.
pub struct Listeners {
    v4: TcpListener,
    v6: TcpListener,
    port: u16,
    /// The daemon's own namespace, dialled from directly.
    origin: Arc<Origin>,
}

impl Listeners {
    /// Binds both listeners. With `port == 0` the kernel picks a port for the
    /// IPv4 listener and the IPv6 one takes the same.
    pub fn bind(port: u16) -> Result<Self, BindError> {
        let v4 = bind_one(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), false)?;
        let port = v4
            .local_addr()
            .map_err(|source| BindError::Bind {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                source,
            })?
            .port();
        let v6 = bind_one(SocketAddr::from((Ipv6Addr::LOCALHOST, port)), true)?;
        let origin = Arc::new(Origin {
            netns: netns_cookie(std::os::fd::AsFd::as_fd(&v4)).map_err(BindError::Netns)?,
            dial: Dial::Host,
        });
        Ok(Self {
            v4,
            v6,
            port,
            origin,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Accepts until the task is dropped. Each connection gets its own task.
    pub async fn serve(self, ctx: Arc<ProxyContext>) {
        let v4 = tokio::spawn(accept_loop(self.v4, self.origin.clone(), ctx.clone()));
        let v6 = tokio::spawn(accept_loop(self.v6, self.origin, ctx));
        let _ = tokio::join!(v4, v6);
    }
}

fn bind_one(addr: SocketAddr, v6: bool) -> Result<TcpListener, BindError> {
    let bind_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            BindError::InUse { addr }
        } else {
            BindError::Bind { addr, source }
        }
    };
    let socket = if v6 {
        TcpSocket::new_v6()
    } else {
        TcpSocket::new_v4()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(addr).map_err(bind_err)?;
    socket.listen(1024).map_err(bind_err)
}

/// A listening socket for the proxy, made on the calling thread (so in its
/// network namespace), for [`accept_loop`] to serve from anywhere.
pub fn bind_std(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

pub async fn accept_loop(listener: TcpListener, origin: Arc<Origin>, ctx: Arc<ProxyContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (ctx, origin) = (ctx.clone(), origin.clone());
                tokio::spawn(async move { connection::handle(stream, peer, &origin, ctx).await });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
