//! The connections to one upstream origin, kept open between requests:
//! idle HTTP/1.1 connections, each carrying one request at a time, and at
//! most one HTTP/2 connection that every request shares.
//!
//! Written on hyper's connection API rather than taken from hyper-util's
//! pooled client, whose generality cost every request (callgrind, full
//! path, keep-alive): a checkout racing a connect in one boxed future of
//! kilobytes, the pool's keys formatted and compared, and a task spawned
//! per request to put the connection back. Here a request takes the last
//! idle connection under one lock, and its response body gives the
//! connection back once the upstream has sent all of it.
//!
//! What hyper-util did that is kept:
//! - A request that a reused connection could not carry (the upstream
//!   closed it as the request went out, and hyper hands the request back
//!   unsent) goes once more, on a fresh connection.
//! - Requests that find no connection while one that may turn out HTTP/2
//!   is being made wait for it rather than each opening its own; once
//!   the upstream has chosen HTTP/1.1, each opens its own.
//! - Idle connections are not used after [`IDLE_TIMEOUT`].
//! - HTTP/1.1 requests go in origin form with a `Host` header made from
//!   the URI (the port only when it is not the scheme's own), which SigV4
//!   re-signing depends on; HTTP/2 requests keep the absolute URI, whose
//!   authority becomes `:authority`.

use std::{
    collections::VecDeque,
    error::Error as StdError,
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{
    Method, Request, Response, StatusCode, Uri,
    body::{Body, Bytes, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
    header::{self, HeaderValue},
    http::uri::{PathAndQuery, Scheme},
};
use hyper_util::{client::legacy::connect::Connection as _, rt::TokioExecutor};
use tokio::sync::Notify;
use tower_service::Service as _;
use tracing::debug;

use super::{BodyError, Connector, ProxyBody};

/// Idle connections are closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Sends of one request: the first, and again on other connections while
/// reused ones hand it back unsent (closed by the upstream meanwhile).
const MAX_GOES: u32 = 3;

/// Why a request got no response head.
#[derive(Debug)]
pub enum Failure {
    /// No connection: TCP, TLS or the limits on either (`ConnectError`
    /// somewhere in the source).
    Connect(BodyError),
    /// Connected, but HTTP could not start on it.
    Handshake(hyper::Error),
    /// The request was sent, or could not be, and no response came.
    Request(hyper::Error),
    /// The connection made for several waiting requests failed; each of
    /// them reports that one failure.
    Shared(Arc<Failure>),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(_) => f.write_str("no connection to the upstream"),
            Self::Handshake(_) => f.write_str("the upstream connection could not start HTTP"),
            Self::Request(_) => f.write_str("no response from the upstream"),
            Self::Shared(inner) => inner.fmt(f),
        }
    }
}

impl StdError for Failure {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Connect(e) => Some(&**e),
            Self::Handshake(e) | Self::Request(e) => Some(e),
            Self::Shared(inner) => inner.source(),
        }
    }
}

/// One origin's connections (one per agent, host, address, protocol
/// choice and network namespace: `super::PoolKey`). Cloning shares them.
#[derive(Clone)]
pub struct Origin {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// ALPN offers HTTP/1.1 only: HTTP/1.1 agents and upgrades.
    http1_only: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// HTTP/1.1 connections with no request on them, the most recently
    /// used last: taken from the back (warm), expired from the front.
    idle: VecDeque<Idle>,
    http2: Option<http2::SendRequest<ProxyBody>>,
    /// A connection being made that may come back HTTP/2.
    connecting: Option<Arc<Attempt>>,
    /// The upstream chose HTTP/1.1 for the last connection made: requests
    /// need not wait for one another's connections.
    chose_http1: bool,
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

impl Idle {
    /// Still open and not yet idle for [`IDLE_TIMEOUT`] at `now`.
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

/// A connection being made that other requests wait for.
struct Attempt {
    done: Notify,
    finished: AtomicBool,
    failed: std::sync::OnceLock<Arc<Failure>>,
}

/// A connection ready for one request.
enum Ready {
    Http1 {
        sender: http1::SendRequest<ProxyBody>,
        reused: bool,
    },
    Http2 {
        sender: http2::SendRequest<ProxyBody>,
        reused: bool,
    },
}

/// What a checkout found.
enum Found {
    Ready(Ready),
    /// Nothing: this request makes a connection, and those that find
    /// nothing meanwhile wait for it if it carries this attempt.
    Connect(Option<Arc<Attempt>>),
    Wait(Arc<Attempt>),
}

impl Origin {
    pub(super) fn new(connector: Connector, http1_only: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                connector,
                http1_only,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Sends `req` (an absolute URI) on a pooled or new connection and
    /// waits for the response head.
    pub async fn request(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, Failure> {
        let uri = req.uri().clone();
        // Another go only for a request a reused connection handed back
        // unsent; a fresh connection's failure is the answer.
        let mut go = 0;
        loop {
            go += 1;
            let ready = self.ready(&uri).await?;
            let outcome = match ready {
                Ready::Http2 { mut sender, reused } => sender
                    .try_send_request(req)
                    .await
                    .map(|resp| resp.map(|inner| UpstreamBody { inner, back: None }))
                    .map_err(|e| (e, reused)),
                Ready::Http1 { mut sender, reused } => {
                    to_origin_form(&mut req);
                    match sender.try_send_request(req).await {
                        Ok(resp) => Ok(self.give_back_after(sender, resp)),
                        Err(e) => Err((e, reused)),
                    }
                }
            };
            match outcome {
                Ok(resp) => return Ok(resp),
                Err((mut e, reused)) => match e.take_message() {
                    Some(unsent) if reused && go < MAX_GOES => {
                        debug!(error = %e.error(), "upstream connection closed before the request went out; again on another");
                        req = unsent;
                        *req.uri_mut() = uri.clone();
                    }
                    _ => return Err(Failure::Request(e.into_error())),
                },
            }
        }
    }

    /// A connection to send on: an idle or shared one, else a new one.
    async fn ready(&self, uri: &Uri) -> Result<Ready, Failure> {
        loop {
            match self.checkout() {
                Found::Ready(Ready::Http1 { mut sender, reused }) => {
                    // Idle connections signal readiness as soon as their
                    // task has finished the last response; one closed
                    // meanwhile is dropped and the next looked at.
                    if sender.ready().await.is_ok() {
                        return Ok(Ready::Http1 { sender, reused });
                    }
                }
                Found::Ready(ready) => return Ok(ready),
                Found::Connect(attempt) => {
                    let guard = attempt.map(|attempt| AttemptGuard {
                        shared: &self.shared,
                        attempt,
                    });
                    let made = self.connect(uri).await;
                    let made = match (made, &guard) {
                        (Err(e), Some(guard)) => {
                            let shared = Arc::new(e);
                            let _ = guard.attempt.failed.set(shared.clone());
                            Err(Failure::Shared(shared))
                        }
                        (made, _) => made,
                    };
                    drop(guard);
                    return made;
                }
                Found::Wait(attempt) => {
                    let notified = attempt.done.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if !attempt.finished.load(Ordering::Acquire) {
                        notified.await;
                    }
                    if let Some(failure) = attempt.failed.get() {
                        return Err(Failure::Shared(failure.clone()));
                    }
                    // Made (look again), or given up by a request that
                    // went away (one of the waiters makes the next).
                }
            }
        }
    }

    fn checkout(&self) -> Found {
        let mut state = self.shared.lock();
        if let Some(sender) = &state.http2 {
            if sender.is_ready() {
                return Found::Ready(Ready::Http2 {
                    sender: sender.clone(),
                    reused: true,
                });
            }
            state.http2 = None;
        }
        let now = Instant::now();
        while let Some(idle) = state.idle.pop_back() {
            if idle.usable(now) {
                return Found::Ready(Ready::Http1 {
                    sender: idle.sender,
                    reused: true,
                });
            }
        }
        if self.shared.http1_only || state.chose_http1 {
            return Found::Connect(None);
        }
        if let Some(attempt) = &state.connecting {
            return Found::Wait(attempt.clone());
        }
        let attempt = Arc::new(Attempt {
            done: Notify::new(),
            finished: AtomicBool::new(false),
            failed: std::sync::OnceLock::new(),
        });
        state.connecting = Some(attempt.clone());
        Found::Connect(Some(attempt))
    }

    /// A new connection, HTTP/2 if the upstream chose it (then shared at
    /// once), else HTTP/1.1.
    async fn connect(&self, uri: &Uri) -> Result<Ready, Failure> {
        let io = self
            .shared
            .connector
            .clone()
            .call(authority_only(uri))
            .await
            .map_err(Failure::Connect)?;
        let http2 = !self.shared.http1_only && io.connected().is_negotiated_h2();
        if http2 {
            let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(Failure::Handshake)?;
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            sender.ready().await.map_err(Failure::Handshake)?;
            let mut state = self.shared.lock();
            state.http2 = Some(sender.clone());
            // An upstream that chose HTTP/1.1 before has changed its mind.
            state.chose_http1 = false;
            drop(state);
            return Ok(Ready::Http2 {
                sender,
                reused: false,
            });
        }
        let (mut sender, conn) = http1::Builder::new()
            .handshake::<_, ProxyBody>(io)
            .await
            .map_err(Failure::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        sender.ready().await.map_err(Failure::Handshake)?;
        if !self.shared.http1_only {
            self.shared.lock().chose_http1 = true;
        }
        Ok(Ready::Http1 {
            sender,
            reused: false,
        })
    }

    /// The response, its body set to give `sender` back to the pool once
    /// it has all come (at once if there is none). A switch of protocols
    /// takes the connection for the tunnel: it never comes back.
    fn give_back_after(
        &self,
        sender: http1::SendRequest<ProxyBody>,
        resp: Response<Incoming>,
    ) -> Response<UpstreamBody> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|inner| {
            let mut body = UpstreamBody {
                inner,
                back: (!switching).then(|| GiveBack {
                    shared: Arc::downgrade(&self.shared),
                    sender,
                }),
            };
            body.give_back_if_done();
            body
        })
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends a connection attempt others wait for, however the request that
/// made it ends (it may be dropped mid-connect): the waiters wake and look
/// again.
struct AttemptGuard<'a> {
    shared: &'a Shared,
    attempt: Arc<Attempt>,
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            if state
                .connecting
                .as_ref()
                .is_some_and(|a| Arc::ptr_eq(a, &self.attempt))
            {
                state.connecting = None;
            }
        }
        self.attempt.finished.store(true, Ordering::Release);
        self.attempt.done.notify_waiters();
    }
}

/// The HTTP/1.1 connection a response body came on, and where it goes
/// back to.
struct GiveBack {
    shared: Weak<Shared>,
    sender: http1::SendRequest<ProxyBody>,
}

/// An upstream response body. On HTTP/1.1, the connection goes back to
/// its pool when the body has all come; a body dropped before its end
/// takes the connection with it (hyper closes it), so that no request
/// follows an unread response.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<GiveBack>,
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("inner", &self.inner)
            .field("gives_back_a_connection", &self.back.is_some())
            .finish()
    }
}

impl UpstreamBody {
    fn give_back_if_done(&mut self) {
        if !self.inner.is_end_stream() {
            return;
        }
        if let Some(GiveBack { shared, sender }) = self.back.take()
            && let Some(shared) = shared.upgrade()
        {
            let now = Instant::now();
            let mut state = shared.lock();
            // Under steady traffic the oldest idle connections are never
            // taken: they are closed here once expired.
            while state.idle.front().is_some_and(|old| !old.usable(now)) {
                state.idle.pop_front();
            }
            state.idle.push_back(Idle { sender, since: now });
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            // hyper's server stops reading a body that says it has ended,
            // so the end is looked for after each frame, not only at None.
            Poll::Ready(Some(Ok(_)) | None) => this.give_back_if_done(),
            // A failed body leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => this.back = None,
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The URI the connector dials (it reads the scheme and host: the TLS
/// server name).
fn authority_only(uri: &Uri) -> Uri {
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTPS));
    parts.authority = uri.authority().cloned();
    parts.path_and_query = Some(PathAndQuery::from_static("/"));
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// An HTTP/1.1 request line carries the path (CONNECT: the authority) and
/// `Host` the authority, with the port only when it is not the scheme's
/// own: as hyper-util's client made it, and as SigV4 re-signing signs it.
fn to_origin_form(req: &mut Request<ProxyBody>) {
    let uri = req.uri();
    if !req.headers().contains_key(header::HOST)
        && let Some(host) = uri.host()
    {
        let default_port = match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        };
        let value = match uri.port_u16() {
            Some(port) if port != default_port => {
                HeaderValue::from_maybe_shared(Bytes::from(format!("{host}:{port}")))
            }
            _ => HeaderValue::from_str(host),
        };
        if let Ok(value) = value {
            req.headers_mut().insert(header::HOST, value);
        }
    }
    let target = if req.method() == Method::CONNECT {
        let mut parts = hyper::http::uri::Parts::default();
        parts.authority = req.uri().authority().cloned();
        Uri::from_parts(parts).ok()
    } else {
        match req.uri().path_and_query() {
            Some(path) if path.as_str() != "/" => Some(Uri::from(path.clone())),
            _ => Some(Uri::from_static("/")),
        }
    };
    if let Some(target) = target {
        *req.uri_mut() = target;
    }
}

#[cfg(test)]
mod tests;
