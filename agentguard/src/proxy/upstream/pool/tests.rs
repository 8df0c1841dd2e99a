//! The pool against a real TLS upstream on loopback (hyper's server,
//! rustls, a leaf from agentguard's own CA): which connections requests
//! take, what an HTTP/1.1 request line and `Host` look like, and what
//! waiting requests are told when a connection fails.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Full};
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use super::*;
use crate::{
    ca::LocalCa,
    netns::Dial,
    proxy::upstream::{Upstreams, describe_failure},
};

/// How the test upstream answers.
#[derive(Clone, Copy)]
struct Serve {
    /// The protocols its ALPN offers, in its order of preference.
    alpn: &'static [&'static [u8]],
    /// Bytes of each response body.
    body_len: usize,
    /// Each response says `Connection: close`.
    close: bool,
    /// Waits this long before answering.
    delay: Duration,
}

const HTTP1: &[&[u8]] = &[b"http/1.1"];
const HTTP2: &[&[u8]] = &[b"h2", b"http/1.1"];

impl Default for Serve {
    fn default() -> Self {
        Self {
            alpn: HTTP1,
            body_len: 5,
            close: false,
            delay: Duration::ZERO,
        }
    }
}

/// A TLS upstream for `pool.test`, the CA that issued its leaf, and the
/// connections it has accepted so far. It answers each request with its
/// request target and `Host` in headers.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    upstreams: Upstreams,
    _dir: tempfile::TempDir,
}

impl Upstream {
    async fn start(serve: Serve) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let leaf = ca.mint_leaf("pool.test").unwrap();
        let mut tls =
            rustls::ServerConfig::builder_with_provider(crate::tls_provider::agent_side())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(leaf)));
        tls.alpn_protocols = serve.alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        service_fn(move |req: Request<hyper::body::Incoming>| async move {
                            tokio::time::sleep(serve.delay).await;
                            let host = req
                                .headers()
                                .get(header::HOST)
                                .map(|h| h.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            let mut resp = Response::builder()
                                .header("x-target", req.uri().to_string())
                                .header("x-host", host);
                            if serve.close {
                                resp = resp.header(header::CONNECTION, "close");
                            }
                            resp.body(Full::new(Bytes::from(vec![b'x'; serve.body_len])))
                        });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let upstreams = Upstreams::new(Some(ca.cert_path())).unwrap();
        Self {
            addr,
            accepted,
            upstreams,
            _dir: dir,
        }
    }

    fn origin(&self, http1_only: bool) -> Origin {
        self.upstreams.origin(
            &Arc::from("agent"),
            "pool.test",
            self.addr,
            http1_only,
            &Dial::Host,
        )
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn get(uri: &str) -> Request<ProxyBody> {
    Request::get(uri)
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap()
}

/// The response head and its whole body; a request left waiting fails
/// the test rather than hang it.
async fn fetch(origin: &Origin, uri: &str) -> (Response<()>, Bytes) {
    let exchange = async {
        let resp = origin.request(get(uri)).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ()), body)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no whole answer to {uri} within 10 s"))
}

#[tokio::test]
async fn requests_one_after_another_reuse_one_connection() {
    let upstream = Upstream::start(Serve::default()).await;
    let origin = upstream.origin(true);
    for _ in 0..5 {
        let (resp, body) = fetch(&origin, "https://pool.test/a").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"xxxxx");
    }
    assert_eq!(upstream.accepted(), 1);
}

/// hyper's server, sending a response body to the agent, stops at the
/// frame after which the body says it has ended and never asks for the
/// end itself: the connection goes back then.
#[tokio::test]
async fn a_body_read_to_its_announced_end_gives_its_connection_back() {
    let upstream = Upstream::start(Serve {
        body_len: 100_000,
        ..Serve::default()
    })
    .await;
    let origin = upstream.origin(true);
    for _ in 0..3 {
        let resp = origin.request(get("https://pool.test/a")).await.unwrap();
        let mut body = resp.into_body();
        let mut len = 0;
        while !body.is_end_stream() {
            let frame = body.frame().await.unwrap().unwrap();
            len += frame.data_ref().map_or(0, |d| d.len());
        }
        assert_eq!(len, 100_000);
    }
    assert_eq!(upstream.accepted(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_not_used_again() {
    let upstream = Upstream::start(Serve {
        close: true,
        ..Serve::default()
    })
    .await;
    let origin = upstream.origin(true);
    for _ in 0..3 {
        let (resp, _) = fetch(&origin, "https://pool.test/a").await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(upstream.accepted(), 3);
}

/// A response read only in part leaves its connection in no state for
/// another request: the next one gets a new connection, and its answer.
#[tokio::test]
async fn a_body_left_unread_takes_its_connection_with_it() {
    let upstream = Upstream::start(Serve {
        body_len: 1 << 20,
        ..Serve::default()
    })
    .await;
    let origin = upstream.origin(true);
    let resp = origin.request(get("https://pool.test/big")).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body);
    let (resp, body) = fetch(&origin, "https://pool.test/again").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body.len(), 1 << 20);
    assert_eq!(upstream.accepted(), 2);
    // That one was read whole: the next request reuses it.
    fetch(&origin, "https://pool.test/third").await;
    assert_eq!(upstream.accepted(), 2);
}

/// HTTP/1.1 carries the path and `Host` (its port only when not 443);
/// as hyper-util's client did, which SigV4 re-signing signs.
#[tokio::test]
async fn an_http1_request_carries_its_path_and_host() {
    let upstream = Upstream::start(Serve::default()).await;
    let origin = upstream.origin(true);
    for (uri, target, host) in [
        ("https://pool.test/a/b?c=d", "/a/b?c=d", "pool.test"),
        ("https://pool.test:443/", "/", "pool.test"),
        ("https://pool.test:8443/x", "/x", "pool.test:8443"),
    ] {
        let (resp, _) = fetch(&origin, uri).await;
        assert_eq!(resp.headers()["x-target"], target, "{uri}");
        assert_eq!(resp.headers()["x-host"], host, "{uri}");
    }
}

/// Requests that arrive together before there is any connection wait for
/// the first one's; it comes back HTTP/2, and all of them share it.
#[tokio::test]
async fn requests_together_share_one_http2_connection() {
    let upstream = Upstream::start(Serve {
        alpn: HTTP2,
        delay: Duration::from_millis(20),
        ..Serve::default()
    })
    .await;
    let origin = upstream.origin(false);
    let requests: Vec<_> = (0..16)
        .map(|i| {
            let origin = origin.clone();
            tokio::spawn(async move {
                let uri = format!("https://pool.test/{i}");
                let (resp, body) = fetch(&origin, &uri).await;
                (resp.status(), resp.version(), body)
            })
        })
        .collect();
    for request in requests {
        let (status, version, body) = request.await.unwrap();
        assert_eq!((status.as_u16(), version), (200, hyper::Version::HTTP_2));
        assert_eq!(&body[..], b"xxxxx");
    }
    assert_eq!(upstream.accepted(), 1);
}

/// The same, where the upstream chooses HTTP/1.1: once the first
/// connection says so, the others open their own rather than queue on it.
#[tokio::test]
async fn requests_together_to_an_http1_upstream_each_get_a_connection() {
    let upstream = Upstream::start(Serve {
        alpn: HTTP1,
        delay: Duration::from_millis(200),
        ..Serve::default()
    })
    .await;
    let origin = upstream.origin(false);
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let origin = origin.clone();
            tokio::spawn(async move { fetch(&origin, "https://pool.test/").await.0.status() })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    // Each request held its connection for the upstream's delay while the
    // others were sent.
    assert_eq!(upstream.accepted(), 6);
}

/// A connection that could not be made is the answer for each request
/// that waited for it, each told why; none is left waiting.
#[tokio::test]
async fn every_request_waiting_on_a_failed_connection_is_told_why() {
    let upstream = Upstream::start(Serve::default()).await;
    // A port with nothing listening: taken, then let go.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let origin =
        upstream
            .upstreams
            .origin(&Arc::from("agent"), "pool.test", addr, false, &Dial::Host);
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let origin = origin.clone();
            tokio::spawn(async move { origin.request(get("https://pool.test/")).await })
        })
        .collect();
    for request in requests {
        let error = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("a waiting request was left waiting")
            .unwrap()
            .unwrap_err();
        let (_, text) = describe_failure(&error);
        assert!(text.contains("refused"), "{text}");
    }
}

/// A request dropped while its connection is being made (the agent went
/// away) does not leave the others waiting: one of them connects.
#[tokio::test]
async fn a_request_that_goes_away_while_connecting_does_not_strand_the_rest() {
    // An upstream that accepts TCP and never answers the ClientHello, then
    // a real one at another address: the first attempt hangs until it is
    // dropped.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let upstream = Upstream::start(Serve {
        alpn: HTTP2,
        ..Serve::default()
    })
    .await;
    let origin = upstream.upstreams.origin(
        &Arc::from("agent"),
        "pool.test",
        silent_addr,
        false,
        &Dial::Host,
    );
    let first = {
        let origin = origin.clone();
        tokio::spawn(async move { origin.request(get("https://pool.test/")).await })
    };
    // Accepted: the first request is mid-handshake and holds the attempt.
    let (_held, _) = silent.accept().await.unwrap();
    let waiter = {
        let origin = origin.clone();
        tokio::spawn(async move { origin.request(get("https://pool.test/")).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiter.is_finished(),
        "the second request waits for the first's connection"
    );
    first.abort();
    // The waiter makes its own attempt, which the silent address holds in
    // turn: seen by a second accept.
    let second = tokio::time::timeout(Duration::from_secs(5), silent.accept()).await;
    assert!(second.is_ok(), "the waiting request was stranded");
    waiter.abort();
}
