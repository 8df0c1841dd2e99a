//! Binding the proxy listeners and attributing accepted connections.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{Instrument as _, info, info_span, warn};

use super::{
    ProxyContext,
    decide::{ConnDecision, decide},
    http::{self, ConnMeta},
    refusal::ConnRefusal,
    relay,
    sniff::sniff,
};
use crate::{
    audit::{self, Event, Kind},
    connlog::Decision,
    identity::{Identity, original_destination},
};

/// How long a new connection may take to send its first message
/// (ClientHello or request line). Server-speaks-first protocols never do,
/// and are refused after this.
const SNIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum BindError {
    #[error(
        "proxy port {addr} is already in use (is another agentguard running? choose one with --proxy-port)"
    )]
    InUse { addr: SocketAddr },
    #[error("failed to bind proxy listener {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// The proxy's two listeners: 127.0.0.1 (IPv4 and v4-mapped connections) and
/// ::1 (IPv6), on one port.
pub struct Listeners {
    v4: TcpListener,
    v6: TcpListener,
    port: u16,
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
        Ok(Self { v4, v6, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Accepts until the task is dropped. Each connection gets its own task.
    pub async fn serve(self, ctx: Arc<ProxyContext>) {
        let v4 = tokio::spawn(accept_loop(self.v4, ctx.clone()));
        let v6 = tokio::spawn(accept_loop(self.v6, ctx));
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

async fn accept_loop(listener: TcpListener, ctx: Arc<ProxyContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { handle(stream, peer, ctx).await });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Attributes one connection, decides what to do with it, and does it.
/// Nothing is relayed without a kernel record: a connection we cannot
/// attribute is one we cannot decide on.
async fn handle(stream: TcpStream, peer: SocketAddr, ctx: Arc<ProxyContext>) {
    // Responses go out in pieces (headers, then body frames, TLS records
    // each); with Nagle's algorithm a piece waits for the agent's delayed
    // ACK, ~40 ms (measured: p99 at 1000 req/s and the first SSE event).
    let _ = stream.set_nodelay(true);
    let Some(record) = ctx.peers.take(peer) else {
        refuse(&ctx, peer, None, None, ConnRefusal::NoKernelRecord).await;
        return;
    };
    let dst = original_destination(&record);
    let state = ctx.live.load();
    let identity = match state.agents.resolve(&record) {
        Ok(identity) => identity,
        Err(e) => {
            refuse(&ctx, peer, None, Some(dst), ConnRefusal::UnknownCgroup(e)).await;
            return;
        }
    };
    if dst.ip().is_loopback() && dst.port() == ctx.proxy_port {
        refuse(
            &ctx,
            peer,
            Some(identity),
            Some(dst),
            ConnRefusal::ProxyLoop,
        )
        .await;
        return;
    }

    let span = info_span!(
        "conn",
        agent = %identity.agent,
        pid = identity.pid,
        uid = identity.uid,
        comm = %identity.comm,
        cgroup = %identity.cgroup,
        dst = %dst,
    );
    async move {
        let sniffed = match sniff(&stream, SNIFF_TIMEOUT).await {
            Ok(s) => s,
            Err(e) => {
                refuse(&ctx, peer, Some(identity), Some(dst), ConnRefusal::Sniff(e)).await;
                return;
            }
        };
        let mut decision = decide(&sniffed, &state.policy, &identity.agent, dst);
        // A passthrough host is named only by the agent's SNI, which it may
        // write on a hello to any address; nothing after it is verified. Only
        // relay to an address agentguard's resolver gave this agent for
        // that very name, or the entry would be a tunnel to anywhere.
        if let (ConnDecision::Passthrough { .. }, Some(sni)) = (&decision, sniffed_sni(&sniffed))
            && !ctx.resolvers.resolved_to(&identity.agent, &sni, dst.ip())
        {
            decision =
                ConnDecision::Refuse(ConnRefusal::PassthroughUnresolved { sni, ip: dst.ip() });
        }
        let (kind, reason) = match decision {
            ConnDecision::InterceptTls { ref sni } => {
                (Decision::Intercept, format!("intercept TLS for {sni}"))
            }
            ConnDecision::InterceptHttp => (Decision::Intercept, "intercept plain HTTP".to_owned()),
            ConnDecision::Passthrough { ref reason } => (Decision::Passthrough, reason.clone()),
            ConnDecision::Refuse(refusal) => {
                refuse(&ctx, peer, Some(identity), Some(dst), refusal).await;
                return;
            }
        };
        info!(decision = ?kind, reason, "connection decided");
        let sni = match &decision {
            ConnDecision::InterceptTls { sni } => Some(sni.clone()),
            _ => sniffed_sni(&sniffed),
        };
        let mut event = Event::new(Kind::Connection)
            .with_identity(&identity)
            .with_src(peer)
            .with_dst(dst)
            .with_decision(
                match kind {
                    Decision::Passthrough => audit::Decision::Passthrough,
                    _ => audit::Decision::Intercept,
                },
                reason.clone(),
            );
        event.protocol = Some(if sni.is_some() { "tls" } else { "http" }.to_owned());
        event.rule = Some(match (&decision, &sni) {
            (ConnDecision::Passthrough { .. }, Some(sni)) => format!("passthrough:{sni}"),
            _ => "intercept".to_owned(),
        });
        event.sni = sni;
        event.policy_version = Some(state.policy.version.clone());
        ctx.audit.record(event).await;
        ctx.log.push(
            peer,
            Some(identity.clone()),
            Some(dst),
            kind,
            reason,
            &state.policy.version,
        );
        drop(state);
        match decision {
            ConnDecision::InterceptTls { sni } => {
                // Bounded: a client that stalls mid-handshake must not hold a
                // task and a socket for ever.
                let tls = match tokio::time::timeout(SNIFF_TIMEOUT, ctx.tls.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        warn!(error = %e, "agent TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        warn!("agent TLS handshake timed out");
                        return;
                    }
                };
                let meta = ConnMeta {
                    identity,
                    peer,
                    dst,
                    sni: Some(sni),
                };
                http::serve(tls, meta, ctx.clone()).await;
            }
            ConnDecision::InterceptHttp => {
                let meta = ConnMeta {
                    identity,
                    peer,
                    dst,
                    sni: None,
                };
                http::serve(stream, meta, ctx.clone()).await;
            }
            ConnDecision::Passthrough { .. } => relay::relay(stream, dst).await,
            ConnDecision::Refuse(_) => unreachable!("handled above"),
        }
    }
    .instrument(span)
    .await;
}

/// The SNI of a sniffed ClientHello, if it had one.
fn sniffed_sni(sniffed: &super::sniff::Sniffed) -> Option<String> {
    match sniffed {
        super::sniff::Sniffed::Tls { sni, .. } => sni.clone(),
        _ => None,
    }
}

/// Records a refused connection; dropping the stream then closes it, with
/// nothing sent upstream.
async fn refuse(
    ctx: &ProxyContext,
    peer: SocketAddr,
    identity: Option<Identity>,
    dst: Option<SocketAddr>,
    refusal: ConnRefusal,
) {
    let reason = refusal.to_string();
    warn!(%peer, agent = identity.as_ref().map(|i| &*i.agent), ?dst, reason, "connection refused");
    let version = ctx.live.load().policy.version.clone();
    let mut event = Event::new(Kind::Connection)
        .with_src(peer)
        .with_decision(audit::Decision::Refuse, &reason);
    if let Some(identity) = &identity {
        event = event.with_identity(identity);
    }
    if let Some(dst) = dst {
        event = event.with_dst(dst);
    }
    event.rule = Some(refusal.rule().to_owned());
    event.policy_version = Some(version.clone());
    ctx.audit.record(event).await;
    ctx.log
        .push(peer, identity, dst, Decision::Refuse, reason, &version);
}
