//! A loopback HTTPS API (hyper + rustls, HTTP/1.1 and HTTP/2) whose answers
//! a test gives as a function of the request: the stand-in for the vendor
//! APIs (OpenAI, Anthropic, GitHub, Slack) whose official SDKs the tests run
//! as agents. It records every request whole (head and body), so a test can
//! check that the real key arrived, and where.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    header,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};

use super::TestCa;

/// One request as the API received it.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiRequest {
    /// Every value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// (status, JSON body) for a request.
pub type Handler = Arc<dyn Fn(&ApiRequest) -> (u16, String) + Send + Sync>;

pub struct FakeApi {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<ApiRequest>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeApi {
    /// Serves HTTPS for `name` on `ip` (any free port), with a certificate
    /// from `ca`; every request is answered by `handler`.
    pub fn start(ip: &str, name: &str, ca: &TestCa, handler: Handler) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (chain, key) = ca.leaf(name);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((ip, 0)))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let seen = seen.clone();
            runtime.spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, seen, handler) =
                        (acceptor.clone(), seen.clone(), handler.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |req| {
                            let (seen, handler) = (seen.clone(), handler.clone());
                            async move { Ok::<_, Infallible>(answer(req, &seen, &handler).await) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        }
        Self {
            addr,
            name: name.to_owned(),
            seen,
            runtime: Some(runtime),
        }
    }

    /// `https://<name>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.name, self.addr.port())
    }

    pub fn seen(&self) -> Vec<ApiRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: &Mutex<Vec<ApiRequest>>,
    handler: &Handler,
) -> Response<BoxBody<Bytes, hyper::Error>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let request = ApiRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let (status, json) = handler(&request);
    seen.lock().unwrap().push(request);
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json)).map_err(|n| match n {}).boxed())
        .unwrap()
}
