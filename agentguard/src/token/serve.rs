//! The two HTTP servers of `token`: the daemon's JWKS endpoint, and
//! `agentguard verify-proxy`, a reverse proxy that lets through only requests
//! whose token verifies and is bound to them.

use std::{convert::Infallible, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode, Uri,
    body::{Body as _, Bytes, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{Minter, RequestBinding, Verifier, verify::https_connector};

type Body = BoxBody<Bytes, hyper::Error>;

/// Where the JWKS is served.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// How long verify-proxy waits on a client before it gives up on it. Its
/// clients are not authenticated until their token is checked, so none may
/// hold a connection or a buffer open for as long as it likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTimeouts {
    /// For the whole TLS handshake.
    pub tls_handshake: Duration,
    /// For a request head (on HTTP/1.1 also the idle time between
    /// requests); HTTP/2 connections are pinged at this interval and closed
    /// if the client does not answer.
    pub header_read: Duration,
    /// For the whole request body, which must be read to check its hash.
    pub body_read: Duration,
}

impl Default for ProxyTimeouts {
    /// The agents' proxy's values (`proxy/listener.rs`, `proxy/http.rs`).
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            header_read: HEADER_READ_TIMEOUT,
            body_read: Duration::from_secs(30),
        }
    }
}

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A server connection builder that gives up on a slow client. Without a
/// timer hyper applies no header-read timeout: a client that never
/// finishes its request head (or idles between requests) would hold the
/// connection for ever. As the agents' proxy does (`proxy/http.rs`).
fn server(header_read: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_read));
    builder
}

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Serves `GET /.well-known/jwks.json` (the current and still-valid retired
/// public keys) and 404 for anything else.
pub async fn serve_jwks(listener: TcpListener, minter: Arc<Minter>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "jwks accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let minter = minter.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let minter = minter.clone();
                async move {
                    let resp = if req.uri().path() == JWKS_PATH {
                        let body = serde_json::to_vec(&minter.jwks()).unwrap_or_default();
                        let mut r = full(StatusCode::OK, "application/jwk-set+json", body);
                        r.headers_mut().insert(
                            header::CACHE_CONTROL,
                            HeaderValue::from_static("max-age=60"),
                        );
                        r
                    } else {
                        full(StatusCode::NOT_FOUND, "text/plain", "not found\n")
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = server(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// How `agentguard verify-proxy` runs.
pub struct VerifyProxy {
    pub verifier: Arc<Verifier>,
    /// The tool server: `http(s)://host:port`, optionally with a path prefix.
    pub upstream: Uri,
    /// The scheme clients used to reach this proxy, for `htu`: `https` when
    /// it terminates TLS itself or sits behind a TLS terminator.
    pub public_scheme: String,
    /// Larger request bodies are refused (413): the body must be read whole
    /// to check its hash.
    pub max_body: usize,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// CA certificates trusted for the upstream beside the system roots.
    pub upstream_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Records each decision in a daemon's audit record, if given.
    pub reporter: Option<Arc<super::Reporter>>,
    pub timeouts: ProxyTimeouts,
}

/// The certificates in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A TLS acceptor from a PEM certificate chain and PKCS#8/SEC1 key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let certs = read_certs(cert)?;
    let pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl VerifyProxy {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let client: Client<_, Body> =
            Client::builder(TokioExecutor::new()).build(https_connector(&self.upstream_ca));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (this, client) = (self.clone(), client.clone());
            tokio::spawn(async move {
                let (tls, timeouts) = (this.tls.clone(), this.timeouts);
                let service = service_fn(move |req| {
                    let (this, client) = (this.clone(), client.clone());
                    async move { Ok::<_, Infallible>(this.handle(req, peer, &client).await) }
                });
                let builder = server(timeouts.header_read);
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(timeouts.tls_handshake, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                            Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => warn!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    }

    /// Decides and forwards one request, then reports the decision to the
    /// daemon's audit record if there is one.
    async fn handle<C>(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        client: &Client<C, Body>,
    ) -> Response<Body>
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        let Some(reporter) = &self.reporter else {
            return self.decide(req, peer, client).await.0;
        };
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                let h = req.headers().get(header::HOST)?;
                h.to_str().ok().map(str::to_owned)
            })
            .unwrap_or_default();
        let (response, outcome) = self.decide(req, peer, client).await;
        reporter.report(super::VerifyReport {
            audience: self.verifier.config().audience.clone(),
            allowed: outcome.verified.is_some(),
            status: response.status().as_u16(),
            method,
            host,
            path,
            reason: outcome.reason,
            sub: outcome.verified.as_ref().map(|(sub, _)| sub.clone()),
            jti: outcome.verified.map(|(_, jti)| jti),
            peer: peer.ip().to_string(),
        });
        response
    }

    async fn decide<C>(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        client: &Client<C, Body>,
    ) -> (Response<Body>, Outcome)
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        let method = req.method().clone();
        let target = req.uri().path_and_query().map(|p| p.to_string());
        let target = target.unwrap_or_else(|| "/".into());
        let refuse = |e: super::VerifyError| {
            if let super::VerifyError::Jwks(_) = e {
                // Not the client's fault, and the JWKS's location and error
                // are no business of an unauthenticated client: the detail
                // goes to the log and the audit record only.
                warn!(%peer, %method, target, decision = "refuse", reason = %e, "cannot verify tokens");
                let r = full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "the keys to verify the token with are unavailable; try again later\n",
                );
                return (r, Outcome::refused(e.to_string()));
            }
            info!(%peer, %method, target, decision = "refuse", reason = %e, "token refused");
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let body = serde_json::json!({ "error": e.to_string() }).to_string();
            let mut r = full(status, "application/json", body);
            if let Some(challenge) = e.www_authenticate(self.verifier.config().scope.as_deref())
                && let Ok(v) = HeaderValue::from_str(&challenge)
            {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            (r, Outcome::refused(e.to_string()))
        };
        // RFC 6750 §2.1: exactly one Authorization header, "Bearer <token>".
        let mut auth = req.headers().get_all(header::AUTHORIZATION).iter();
        let token = match (auth.next(), auth.next()) {
            (Some(v), None) => v
                .to_str()
                .ok()
                .and_then(|v| {
                    v.get(..7)
                        .filter(|p| p.eq_ignore_ascii_case("bearer "))
                        .map(|_| v[7..].trim().to_owned())
                })
                .filter(|t| !t.is_empty()),
            _ => None,
        };
        let Some(token) = token else {
            return refuse(super::VerifyError::InvalidToken(
                "exactly one Authorization: Bearer token is required".into(),
            ));
        };
        let authority = req
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
        let (mut parts, body) = req.into_parts();
        let mut binding = RequestBinding {
            method: parts.method.to_string(),
            scheme: self.public_scheme.clone(),
            authority,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            // Known once the body is read.
            body_hash: String::new(),
        };
        // All that can be checked without the body is checked before it is
        // read: a client without a valid, unused token bound to this method
        // and URI is refused without making the proxy wait for or buffer a
        // body.
        let claims = match self.verifier.check_head(&token, &binding).await {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        if body
            .size_hint()
            .upper()
            .is_some_and(|n| n > self.max_body as u64)
            || parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n > self.max_body as u64)
        {
            return (too_large(self.max_body), Outcome::too_large());
        }
        let read = Limited::new(body, self.max_body).collect();
        let body = match tokio::time::timeout(self.timeouts.body_read, read).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return (too_large(self.max_body), Outcome::too_large());
            }
            Ok(Err(e)) => {
                let reason = format!("failed to read the request body: {e}");
                let r = full(StatusCode::BAD_REQUEST, "text/plain", format!("{reason}\n"));
                return (r, Outcome::refused(reason));
            }
            // A token is for one call, quickly made; and a client that
            // trickles its body must not hold a buffer for ever.
            Err(_) => {
                let reason = format!(
                    "request body not received within {}s",
                    self.timeouts.body_read.as_secs_f32()
                );
                let body = serde_json::json!({ "error": reason }).to_string();
                let r = full(StatusCode::REQUEST_TIMEOUT, "application/json", body);
                return (r, Outcome::refused(reason));
            }
        };
        binding.body_hash = super::b64url(&<sha2::Sha256 as sha2::Digest>::digest(&body));
        let claims = match self.verifier.finish(claims, &binding) {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        info!(%peer, %method, target, decision = "allow", sub = %claims.sub, jti = %claims.jti, "token verified");
        let outcome = Outcome {
            verified: Some((claims.sub.clone(), claims.jti.clone())),
            reason: String::new(),
        };
        let upstream = match join(&self.upstream, &target) {
            Ok(u) => u,
            Err(e) => return (full(StatusCode::BAD_GATEWAY, "text/plain", e), outcome),
        };
        parts.uri = upstream;
        parts.headers.remove(header::HOST);
        // Hop-by-hop headers are this connection's, not the upstream's
        // (RFC 9110 §7.6.1); the body is now whole, so hyper sets its length.
        if let Some(listed) = parts.headers.get(header::CONNECTION).cloned()
            && let Ok(listed) = listed.to_str()
        {
            for name in listed.split(',') {
                parts.headers.remove(name.trim());
            }
        }
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            parts.headers.remove(name);
        }
        parts.version = hyper::Version::HTTP_11;
        let req = Request::from_parts(parts, Full::new(body).map_err(|n| match n {}).boxed());
        let response = match client.request(req).await {
            Ok(resp) => resp.map(|b| b.boxed()),
            Err(e) => {
                warn!(error = %e, "upstream failed");
                full(StatusCode::BAD_GATEWAY, "text/plain", "upstream failed\n")
            }
        };
        (response, outcome)
    }
}

/// What [`VerifyProxy::decide`] established about a request.
struct Outcome {
    /// (`sub`, `jti`) of a token that verified and bound.
    verified: Option<(String, String)>,
    /// Why it was refused.
    reason: String,
}

impl Outcome {
    fn refused(reason: String) -> Self {
        Self {
            verified: None,
            reason,
        }
    }

    fn too_large() -> Self {
        Self::refused("request body too large to check its hash".into())
    }
}

fn too_large(max: usize) -> Response<Body> {
    let body = serde_json::json!({
        "error": format!("request body larger than {max} bytes; it must be read whole to check the token's request hash")
    });
    full(
        StatusCode::PAYLOAD_TOO_LARGE,
        "application/json",
        body.to_string(),
    )
}

/// `upstream` (with an optional path prefix) joined with the request target.
fn join(upstream: &Uri, target: &str) -> Result<Uri, String> {
    let prefix = upstream.path().trim_end_matches('/');
    format!(
        "{}://{}{prefix}{target}",
        upstream.scheme_str().unwrap_or("http"),
        upstream.authority().map(|a| a.as_str()).unwrap_or_default()
    )
    .parse()
    .map_err(|e| format!("upstream uri: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::token::{JwksSource, KeyStore, MintRequest, SigningAlgorithm, VerifierConfig};

    fn minter(dir: &Path) -> Minter {
        let keys = KeyStore::load_or_create(dir, SigningAlgorithm::Es256).unwrap();
        Minter::new(keys, "example.org")
    }

    /// A token for audience `itsm` bound to `method` `url` with `body`.
    fn token(m: &Minter, method: &str, url: &str, body: &[u8]) -> String {
        let binding = RequestBinding::from_url(method, url, body).unwrap();
        m.mint(&MintRequest {
            agent: "bot",
            audience: "itsm",
            scope: "",
            ttl: Duration::from_secs(60),
            binding: &binding,
            on_behalf_of: None,
            kernel: None,
        })
        .unwrap()
        .token
    }

    async fn verifier(m: &Minter, source: JwksSource) -> Arc<Verifier> {
        let cfg = VerifierConfig::new("itsm", Some(&m.issuer()));
        Verifier::new(cfg, source).await.unwrap()
    }

    /// A verify-proxy on 127.0.0.1 whose upstream refuses connections:
    /// these tests are about what it answers itself.
    async fn start(
        verifier: Arc<Verifier>,
        timeouts: ProxyTimeouts,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Arc::new(VerifyProxy {
            verifier,
            upstream: "http://127.0.0.1:9".parse().unwrap(),
            public_scheme: "http".into(),
            max_body: 1 << 20,
            tls,
            upstream_ca: Vec::new(),
            reporter: None,
            timeouts,
        });
        tokio::spawn(proxy.serve(listener));
        addr
    }

    /// Timeouts short enough for a test.
    const SHORT: ProxyTimeouts = ProxyTimeouts {
        tls_handshake: Duration::from_millis(300),
        header_read: Duration::from_millis(300),
        body_read: Duration::from_millis(300),
    };

    /// Sends `request` and reads until the proxy closes the connection, for
    /// at most 5 s: what it answered, and when it closed (`None`: not
    /// within the 5 s).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Option<Duration>) {
        let start = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .map(|()| start.elapsed());
        (String::from_utf8_lossy(&answer).into_owned(), closed)
    }

    #[tokio::test]
    async fn a_jwks_that_cannot_be_fetched_is_503_without_an_invalid_token_challenge() {
        let dir = tempfile::tempdir().unwrap();
        let m = minter(dir.path());
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, serde_json::to_vec(&m.jwks()).unwrap()).unwrap();
        let v = verifier(&m, JwksSource::File(file.clone())).await;
        let addr = start(v, ProxyTimeouts::default(), None).await;
        // A key the verifier has not seen makes it re-read the JWKS, which
        // is gone.
        std::fs::remove_file(&file).unwrap();
        let other = tempfile::tempdir().unwrap();
        let t = token(&minter(other.path()), "GET", "http://tool.test/x", b"");
        let (answer, _) = exchange(
            addr,
            format!(
                "GET /x HTTP/1.1\r\nHost: tool.test\r\nAuthorization: Bearer {t}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        // RFC 6750 §3.1: invalid_token goes with 401; the token may well be
        // fine.
        let lower = answer.to_ascii_lowercase();
        assert!(!lower.contains("www-authenticate"), "{answer}");
        assert!(!lower.contains("invalid_token"), "{answer}");
    }

    #[test]
    fn upstream_prefix_is_kept() {
        let u: Uri = "http://127.0.0.1:8080/base/".parse().unwrap();
        assert_eq!(
            join(&u, "/v1/x?a=1").unwrap().to_string(),
            "http://127.0.0.1:8080/base/v1/x?a=1"
        );
        let u: Uri = "https://tool.example".parse().unwrap();
        assert_eq!(join(&u, "/").unwrap().to_string(), "https://tool.example/");
    }

    /// A request head for `method` `target` on tool.test with `token` and
    /// a `Content-Length` of `length`.
    fn head(method: &str, target: &str, token: &str, length: usize) -> String {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: tool.test\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
    }

    #[tokio::test]
    async fn a_client_without_an_unused_token_for_this_call_is_refused_before_its_body() {
        let dir = tempfile::tempdir().unwrap();
        let m = minter(dir.path());
        let v = verifier(&m, JwksSource::Static(m.jwks())).await;
        let addr = start(v, ProxyTimeouts::default(), None).await;
        let url = "http://tool.test/x";
        // Spent: its first use reads the body, checks its hash and records
        // the jti (the upstream then refuses: 502).
        let spent = token(&m, "POST", url, b"{}");
        let (answer, _) = exchange(
            addr,
            format!("{}{{}}", head("POST", "/x", &spent, 2)).as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
        for (token, what) in [
            ("not.a.token".to_owned(), "invalid_token"),
            (token(&m, "POST", "http://tool.test/other", b""), "bound to"),
            (token(&m, "PUT", url, b""), "method"),
            (spent, "replay"),
        ] {
            // A body announced and never sent: answered without waiting.
            let (answer, closed) =
                exchange(addr, head("POST", "/x", &token, 1_000_000).as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{what}: {answer}");
            assert!(answer.contains(what), "{what}: {answer}");
            assert!(closed.is_some(), "{what}: connection left open");
        }
    }

    #[tokio::test]
    async fn a_request_head_that_never_ends_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let m = minter(dir.path());
        let v = verifier(&m, JwksSource::Static(m.jwks())).await;
        let addr = start(v, SHORT, None).await;
        let (_, closed) = exchange(addr, b"GET /x HTTP/1.1\r\nHost: tool.test\r\n").await;
        let closed = closed.expect("the connection was held open for 5 s");
        assert!(closed >= SHORT.header_read, "{closed:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_answered_408() {
        let dir = tempfile::tempdir().unwrap();
        let m = minter(dir.path());
        let v = verifier(&m, JwksSource::Static(m.jwks())).await;
        let addr = start(v, SHORT, None).await;
        let t = token(&m, "POST", "http://tool.test/x", b"hello world");
        // Half the body, then nothing.
        let request = format!("{}hello", head("POST", "/x", &t, 11));
        let (answer, closed) = exchange(addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        let closed = closed.expect("the connection was held open for 5 s");
        assert!(closed >= SHORT.body_read, "{closed:?}");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_ends_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let m = minter(dir.path());
        let v = verifier(&m, JwksSource::Static(m.jwks())).await;
        let cert = rcgen::generate_simple_self_signed(vec!["tool.test".to_owned()]).unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
        let tls = tls_acceptor(&cert_file, &key_file).unwrap();
        let addr = start(v, SHORT, Some(tls)).await;
        // Connected, and not a byte of a ClientHello.
        let (_, closed) = exchange(addr, b"").await;
        let closed = closed.expect("the connection was held open for 5 s");
        assert!(closed >= SHORT.tls_handshake, "{closed:?}");
    }
}
