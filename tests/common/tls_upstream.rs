//! A loopback HTTPS upstream (hyper + rustls, HTTP/1.1 and HTTP/2) with a
//! test CA made in code, standing in for the real APIs agents call.
//!
//! Routes: `/` says hello and reports what it saw; `/echo` streams the
//! request body back; `/sse` sends one event each time the test releases
//! one; `/ws` is a WebSocket echo.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    header,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::mpsc;
use tokio_tungstenite::{WebSocketStream, tungstenite::protocol::Role};

type Body = BoxBody<Bytes, hyper::Error>;

/// A throwaway CA for test upstreams.
pub struct TestCa {
    pub cert_pem: String,
    pub pem_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A test server's TLS acceptor for `chain` and `key`, offering HTTP/2 and
/// HTTP/1.1 by ALPN, as the upstreams agentguard meets do.
pub fn tls_acceptor(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl TestCa {
    pub fn new(common_name: &str, dir: &Path) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let pem_path = dir.join(format!("{}.pem", common_name.replace(' ', "-")));
        std::fs::write(&pem_path, cert.pem()).unwrap();
        Self {
            cert_pem: cert.pem(),
            pem_path,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate chain (PEM, with this CA's certificate) and its
    /// key (PKCS#8 PEM) for `name`, written to files in `dir`, for servers
    /// the tests run as processes.
    pub fn leaf_files(&self, name: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.cert_pem)).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// [`TestCa::leaf_files`] for a certificate valid for every name in
    /// `names` (DNS names or IP addresses), written as `<stem>.crt` and
    /// `<stem>.key`.
    pub fn leaf_files_for(&self, names: &[&str], stem: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.cert_pem)).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// A server certificate for `name`, with this CA's certificate.
    pub fn leaf(&self, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let ca_der = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        (
            vec![cert.der().clone(), ca_der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub version: String,
    pub host: String,
}

pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    handshakes: Arc<AtomicUsize>,
    sse: mpsc::UnboundedSender<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsUpstream {
    /// Serves HTTPS for `name` on `ip`, with a certificate from `ca`.
    pub fn start(ip: &str, name: &str, ca: &TestCa) -> Self {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        Self::serve(listener, name, ca)
    }

    /// [`TlsUpstream::start`] in the network namespace at `netns` (a test
    /// host the test made): the socket is made by a thread that enters it.
    pub fn start_in_netns(netns: &Path, ip: &str, name: &str, ca: &TestCa) -> Self {
        let file = std::fs::File::open(netns).unwrap();
        let ip = ip.to_owned();
        let listener = std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind((ip.as_str(), 0)).unwrap()
        })
        .join()
        .unwrap();
        Self::serve(listener, name, ca)
    }

    fn serve(listener: std::net::TcpListener, name: &str, ca: &TestCa) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (chain, key) = ca.leaf(name);
        let acceptor = tls_acceptor(chain, key);
        listener.set_nonblocking(true).unwrap();
        let listener = {
            let _rt = runtime.enter();
            tokio::net::TcpListener::from_std(listener).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let (sse, sse_rx) = mpsc::unbounded_channel();
        let sse_rx = Arc::new(tokio::sync::Mutex::new(sse_rx));
        {
            let (seen, handshakes) = (seen.clone(), handshakes.clone());
            runtime.spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, seen, handshakes, sse_rx) = (
                        acceptor.clone(),
                        seen.clone(),
                        handshakes.clone(),
                        sse_rx.clone(),
                    );
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        let service = service_fn(move |req| {
                            let (seen, sse_rx) = (seen.clone(), sse_rx.clone());
                            async move { Ok::<_, Infallible>(route(req, &seen, sse_rx).await) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        }
        Self {
            addr,
            name: name.to_owned(),
            seen,
            handshakes,
            sse,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.name, self.addr.port())
    }

    /// The values of header `name` in every request to `path`.
    pub fn header_values(&self, path: &str, name: &str) -> Vec<String> {
        self.seen()
            .iter()
            .filter(|r| r.path == path)
            .flat_map(|r| {
                r.headers
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }

    /// HTTP requests that reached this upstream.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Completed TLS handshakes.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Lets the `/sse` stream send its next event.
    pub fn release_sse_event(&self) {
        self.sse.send(()).unwrap();
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Number of events `/sse` sends.
pub const SSE_EVENTS: usize = 5;

async fn route(
    mut req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    sse_rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
) -> Response<Body> {
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let query = req.uri().query().unwrap_or_default().to_owned();
    seen.lock().unwrap().push(Seen {
        path: req.uri().path().to_owned(),
        query: query.clone(),
        headers: headers.clone(),
        version: format!("{:?}", req.version()),
        host,
    });
    match req.uri().path() {
        "/echo" => {
            // Streams the body back as it arrives.
            Response::new(req.into_body().boxed())
        }
        // Echoes the request's headers back, in a header and in the body: an
        // upstream that leaks what it was sent.
        "/reflect" => {
            let body: String = headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
            let auth = headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .header("x-echo-authorization", auth)
                .body(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed())
                .unwrap()
        }
        // 302 to the URL in the query (`/redirect?https://...`).
        "/redirect" => Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, query)
            .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
            .unwrap(),
        // An OAuth 2.0 token endpoint (client credentials): each call issues
        // a new token, so tests can count fetches by the token they see.
        "/token" => {
            let n = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.path == "/token")
                .count();
            let body = format!(
                r#"{{"access_token":"oauth-token-{n}","token_type":"Bearer","expires_in":3600}}"#
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed())
                .unwrap()
        }
        "/sse" => {
            let stream = async_stream(sse_rx);
            let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
            resp
        }
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return text(StatusCode::BAD_REQUEST, "not a websocket request");
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    } else if msg.is_close() {
                        break;
                    }
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
                .unwrap()
        }
        _ => text(StatusCode::OK, "hello over tls"),
    }
}

/// One `data:` event per release from the test, then the end of the body.
fn async_stream(
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, hyper::Error>> {
    futures_util::stream::unfold(0usize, move |n| {
        let rx = rx.clone();
        async move {
            if n == SSE_EVENTS {
                return None;
            }
            rx.lock().await.recv().await?;
            let event = Frame::data(Bytes::from(format!("data: event-{n}\n\n")));
            Some((Ok(event), n + 1))
        }
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp
}
