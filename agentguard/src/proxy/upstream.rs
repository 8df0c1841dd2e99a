//! Connections to the real upstream: always to the original destination
//! address the kernel recorded (never a fresh DNS answer, which could differ
//! from what the agent dialled), over TLS verified for the agent's SNI.
//!
//! Every step toward the upstream is time-limited: the TCP connect and the
//! TLS handshake here, the response head and the gaps in the response body
//! in `deadline`. Each connection holds a socket of the proxy's descriptor
//! budget (`super::limits::fds`) for as long as it is open.

pub mod deadline;
pub mod pool;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use lru::LruCache;
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;
use tokio::{net::TcpStream, sync::oneshot};
use tracing::warn;

use super::limits::fds;
use crate::config::UPSTREAM_CONNECT_TIMEOUT_SECS;

/// Why a body stopped short: hyper's errors, and the proxy's own time
/// limits.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies as the proxy forwards them, both ways.
pub type ProxyBody = BoxBody<Bytes, BodyError>;
pub use pool::{Origin, UpstreamBody};
/// What dials an upstream: the recorded address, TLS verified, both
/// time-limited.
type Connector = HandshakeLimit<HttpsConnector<FixedAddr>>;

/// A body hyper reads (an agent's request body, an upstream's response
/// body) as a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
    use http_body_util::BodyExt as _;
    body.map_err(BodyError::from).boxed()
}

/// The whole body, if it is at most `max` bytes. A body that comes as
/// one frame, as short ones mostly do, is that frame itself, not a copy.
/// (A loop rather than `http_body_util::Limited`: its generic error
/// conversion, inside the proxy's request future, defeats rustc's proof
/// that the future is `Send`.)
pub async fn collect_limited(mut body: ProxyBody, max: usize) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt as _;
    use hyper::body::Body as _;
    // The body so far while it is one frame; then `joined`.
    let mut single: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        len += data.len();
        if len > max {
            return Err(format!("body larger than {max} bytes").into());
        }
        match single.take() {
            None if joined.is_empty() => single = Some(data),
            first => {
                let hint = body.size_hint().exact().unwrap_or(0) as usize;
                joined.reserve((len + hint).min(max) - joined.len());
                joined.extend_from_slice(first.as_deref().unwrap_or_default());
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(single.unwrap_or_else(|| Bytes::from(joined)))
}

/// Why no connection to the upstream was made. Carried inside hyper's
/// error, and found there again by [`connect_error`].
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("upstream did not accept the TCP connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("upstream TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    #[error(
        "the proxy holds all the sockets its descriptor budget allows; no upstream connection made"
    )]
    OutOfSockets,
}

/// Distinct (agent, host, address) pools kept; the least recently used pool
/// is dropped (closing its idle connections) beyond this.
const MAX_POOLS: usize = 1024;

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("failed to read upstream CA file {path}: {source}")]
    ReadCa { path: PathBuf, source: io::Error },
    #[error("upstream CA file {0} holds no certificate")]
    EmptyCa(PathBuf),
    #[error("upstream CA certificate in {path} is unusable: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "no trusted root certificates: the system store is empty and no --upstream-ca was given"
    )]
    NoRoots,
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// One pool of upstream connections per (agent, host, original
/// destination): a pooled connection is only ever reused for the same agent
/// talking to the same host at the same address.
pub struct Upstreams {
    tls: ClientConfig,
    /// The TLS handshake's limit, once TCP is connected.
    handshake: Duration,
    pools: Mutex<LruCache<PoolKey, Origin>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    agent: Arc<str>,
    host: String,
    dst: SocketAddr,
    /// HTTP/1.1-only connections, for the requests of HTTP/1.1 agents and
    /// for Upgrade requests (WebSocket): an HTTP/2 connection cannot carry
    /// an HTTP/1.1 upgrade.
    http1_only: bool,
    /// Cookie of the network namespace dialled from (None: the daemon's).
    netns: Option<u64>,
}

impl Upstreams {
    /// Trusts the host's system roots plus, if given, the certificates in
    /// `extra_ca` (for private CAs and tests).
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, UpstreamError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            warn!(%error, "skipping part of the system trust store");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            warn!(ignored, "skipped unparsable system root certificates");
        }
        if let Some(path) = extra_ca {
            add_pem_file(&mut roots, path)?;
        }
        if roots.is_empty() {
            return Err(UpstreamError::NoRoots);
        }
        tracing::debug!(system_roots = added, "upstream trust store loaded");
        let tls = ClientConfig::builder_with_provider(crate::tls_provider::upstream_side())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls,
            handshake: DEFAULT_HANDSHAKE_TIMEOUT,
            pools: Mutex::new(LruCache::new(
                NonZeroUsize::new(MAX_POOLS).expect("non-zero"),
            )),
        })
    }

    /// Limits upstream TLS handshakes to `limit` (from the time TCP is
    /// connected).
    pub fn with_handshake_timeout(mut self, limit: Duration) -> Self {
        self.handshake = limit;
        self
    }

    /// The connections for this agent's requests to `host` at `dst`.
    /// `http1_only` pins ALPN to HTTP/1.1 (for HTTP/1.1 agents and
    /// upgrades); `dial` says which network namespace connections leave
    /// from.
    pub fn origin(
        &self,
        agent: &Arc<str>,
        host: &str,
        dst: SocketAddr,
        http1_only: bool,
        dial: &crate::netns::Dial,
    ) -> Origin {
        let key = PoolKey {
            agent: agent.clone(),
            host: host.to_ascii_lowercase(),
            dst,
            http1_only,
            netns: dial.netns_cookie(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(origin) = pools.get(&key) {
            return origin.clone();
        }
        // hyper-rustls sets SNI from the request URI's host, which the
        // proxy has already checked against the agent's SNI and Host, and
        // verifies the certificate for that name.
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(self.tls.clone())
            .https_or_http()
            .enable_http1();
        let connector = if http1_only {
            builder.wrap_connector(FixedAddr {
                dst,
                dial: dial.downgrade(),
            })
        } else {
            builder.enable_http2().wrap_connector(FixedAddr {
                dst,
                dial: dial.downgrade(),
            })
        };
        let connector = HandshakeLimit {
            inner: connector,
            limit: self.handshake,
        };
        let origin = Origin::new(connector, http1_only);
        pools.put(key, origin.clone());
        origin
    }
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), UpstreamError> {
    let read_err = |source| UpstreamError::ReadCa {
        path: path.to_owned(),
        source,
    };
    let pem = std::fs::read(path).map_err(read_err)?;
    let mut count = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(read_err)?)
            .map_err(|source| UpstreamError::BadCa {
                path: path.to_owned(),
                source,
            })?;
        count += 1;
    }
    if count == 0 {
        return Err(UpstreamError::EmptyCa(path.to_owned()));
    }
    Ok(())
}

/// A connector that ignores the URI's host and dials the recorded original
/// destination: the agent chose that address, and DNS is not asked again.
#[derive(Debug, Clone)]
pub struct FixedAddr {
    dst: SocketAddr,
    /// Weak: a pool kept after its container ended must not keep the
    /// container's namespace (and a thread in it) alive.
    dial: crate::netns::WeakDial,
}

impl tower_service::Service<hyper::Uri> for FixedAddr {
    type Response = TokioIo<Budgeted>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: hyper::Uri) -> Self::Future {
        let (dst, dial) = (self.dst, self.dial.clone());
        Box::pin(async move {
            let socket = fds::take().ok_or_else(|| io::Error::other(ConnectError::OutOfSockets))?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial.connect(dst))
                .await
                .map_err(|_| io::Error::other(ConnectError::ConnectTimeout(CONNECT_TIMEOUT)))??;
            stream.set_nodelay(true)?;
            // The handshake's clock starts now.
            let _ = TCP_CONNECTED.try_with(|c| c.borrow_mut().take().map(|tx| tx.send(())));
            Ok(TokioIo::new(Budgeted {
                stream,
                _socket: socket,
            }))
        })
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(UPSTREAM_CONNECT_TIMEOUT_SECS);
/// Until [`Upstreams::with_handshake_timeout`] says otherwise.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream TCP connection and the socket of the proxy's budget it
/// holds while open.
pub struct Budgeted {
    stream: TcpStream,
    _socket: fds::Socket,
}

impl tokio::io::AsyncRead for Budgeted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Budgeted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connection for Budgeted {
    fn connected(&self) -> Connected {
        // Not the TcpStream's own, which asks the kernel for both
        // addresses and attaches them (`HttpInfo`) as an extra that the
        // pooled client then inserts into every response's extensions: an
        // extensions map and two allocations a request that nothing here
        // reads. hyper-rustls adds the negotiated protocol on top.
        Connected::new()
    }
}

tokio::task_local! {
    /// Told by [`FixedAddr`] when TCP is connected, so that
    /// [`HandshakeLimit`] times the TLS handshake alone.
    static TCP_CONNECTED: std::cell::RefCell<Option<oneshot::Sender<()>>>;
}

/// A connector whose TLS handshake must finish within `limit` of the TCP
/// connection (which has its own limit in [`FixedAddr`]).
#[derive(Clone)]
pub struct HandshakeLimit<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<hyper::Uri> for HandshakeLimit<C>
where
    C: tower_service::Service<hyper::Uri>,
    C::Error: Into<BodyError> + Send,
    C::Response: Send + 'static,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BodyError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BodyError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let limit = self.limit;
        let (connected, tcp) = oneshot::channel();
        let connecting = TCP_CONNECTED.scope(
            std::cell::RefCell::new(Some(connected)),
            self.inner.call(uri),
        );
        Box::pin(async move {
            tokio::pin!(connecting);
            tokio::select! {
                result = &mut connecting => return result.map_err(Into::into),
                tcp = tcp => if tcp.is_err() {
                    // No TCP connection: the connect's own error comes.
                    return connecting.await.map_err(Into::into);
                },
            }
            match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectError::HandshakeTimeout(limit)) as BodyError),
            }
        })
    }
}

/// The [`ConnectError`] somewhere in `error`'s chain, looking through
/// io::Error wrappers (whose `source()` skips the error they wrap).
pub fn connect_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConnectError> {
    let mut source = Some(error);
    while let Some(e) = source {
        let mut current = e;
        for _ in 0..8 {
            if let Some(found) = current.downcast_ref::<ConnectError>() {
                return Some(found);
            }
            match current
                .downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => current = inner,
                None => break,
            }
        }
        source = e.source();
    }
    None
}

/// Why a request to the upstream failed, in words an agent developer can act
/// on, and whether it was the upstream's certificate (then nothing was sent:
/// the handshake failed before any request byte).
pub fn describe_failure(error: &(dyn std::error::Error + 'static)) -> (bool, String) {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(tls) = rustls_error(e)
            && matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        {
            return (
                true,
                format!("upstream certificate verification failed: {tls}"),
            );
        }
        source = e.source();
    }
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    (false, format!("upstream request failed: {text}"))
}

/// The rustls error inside `e`, looking through io::Error wrappers: tokio's
/// TLS stream and hyper's connector each wrap it in an io::Error, whose
/// `source()` skips the wrapped error, so `get_ref()` must be followed.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current: &(dyn std::error::Error + 'static) = e;
    for _ in 0..8 {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = current.downcast_ref::<io::Error>()?.get_ref()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;

    use super::*;

    fn body(parts: &[&'static [u8]]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn bodies_are_collected_whole_up_to_the_bound() {
        // One frame: that frame itself, not a copy.
        static ONE: &[u8] = b"one frame";
        let got = collect_limited(body(&[ONE]), 9).await.unwrap();
        assert_eq!(got.as_ptr(), ONE.as_ptr());
        assert_eq!(&got[..], ONE);
        // Several, empty ones among them: joined in order.
        for parts in [
            &[&b"ab"[..], b"", b"cd", b"e"][..],
            &[b"", b"abc", b"de"],
            &[b"abcd", b"e", b""],
        ] {
            let got = collect_limited(body(parts), 5).await.unwrap();
            assert_eq!(&got[..], b"abcde", "{parts:?}");
        }
        assert!(collect_limited(body(&[]), 0).await.unwrap().is_empty());
        // One byte over the bound, in one frame or across several: refused.
        for parts in [&[&b"abcdef"[..]][..], &[b"abc", b"def"], &[b"abcde", b"f"]] {
            let e = collect_limited(body(parts), 5).await.unwrap_err();
            assert!(e.to_string().contains("larger than 5 bytes"), "{e}");
        }
    }
}
