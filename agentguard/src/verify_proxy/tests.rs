//! verify-proxy's own answers, on loopback: what it says before and instead
//! of the tool.

use std::{path::Path, time::Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::token::{JwksSource, MintRequest, Minter, SigningAlgorithm, VerifierConfig};

fn minter(dir: &Path) -> Minter {
    Minter::load_or_create(dir, Some(SigningAlgorithm::Es256), "example.org").unwrap()
}

/// A token for audience `aud` bound to `method` `url` with `body`.
fn token_for(m: &Minter, aud: &str, method: &str, url: &str, body: &[u8]) -> String {
    let binding = RequestBinding::from_url(method, url, body).unwrap();
    m.mint(&MintRequest {
        agent: "bot",
        audience: aud,
        scope: "",
        ttl: Duration::from_secs(60),
        binding: &binding,
        on_behalf_of: None,
        kernel: None,
    })
    .unwrap()
    .token
}

fn token(m: &Minter, method: &str, url: &str, body: &[u8]) -> String {
    token_for(m, "itsm", method, url, body)
}

async fn verifier(m: &Minter, source: JwksSource) -> Arc<Verifier> {
    let cfg = VerifierConfig::new("itsm", Some(&m.issuer()));
    Verifier::new(cfg, source).await.unwrap()
}

fn proxy(verifier: Arc<Verifier>, timeouts: ProxyTimeouts) -> VerifyProxy {
    VerifyProxy {
        verifier,
        // Refuses connections: most tests are about what verify-proxy
        // answers itself.
        upstream: "http://127.0.0.1:9".parse().unwrap(),
        public_scheme: "http".into(),
        max_body: 1 << 20,
        tls: None,
        upstream_ca: Vec::new(),
        reporter: None,
        timeouts,
        resource: None,
        upstream_authorization: None,
    }
}

async fn start_proxy(proxy: VerifyProxy) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(proxy).serve(listener));
    addr
}

async fn start(
    verifier: Arc<Verifier>,
    timeouts: ProxyTimeouts,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> SocketAddr {
    let mut p = proxy(verifier, timeouts);
    p.tls = tls;
    start_proxy(p).await
}

/// Timeouts short enough for a test.
const SHORT: ProxyTimeouts = ProxyTimeouts {
    tls_handshake: Duration::from_millis(300),
    header_read: Duration::from_millis(300),
    body_read: Duration::from_millis(300),
    upstream_response: Duration::from_millis(300),
};

/// Sends `request` and reads until the proxy closes the connection, for
/// at most 5 s: what it answered, and when it closed (`None`: not within
/// the 5 s).
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

/// A request head for `method` `target` on tool.test with `token` and a
/// `Content-Length` of `length`.
fn head(method: &str, target: &str, token: &str, length: usize) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: tool.test\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
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
    let (answer, _) = exchange(addr, head("GET", "/x", &t, 0).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // RFC 6750 §3.1: invalid_token goes with 401; the token may well be
    // fine.
    let lower = answer.to_ascii_lowercase();
    assert!(!lower.contains("www-authenticate"), "{answer}");
    assert!(!lower.contains("invalid_token"), "{answer}");
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
async fn as_an_mcp_resource_server_it_serves_its_metadata_and_points_401s_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = minter(dir.path());
    let resource = "http://tool.test/mcp";
    let mut cfg = VerifierConfig::new(resource, Some(&m.issuer()));
    cfg.scope = Some("tools:call".into());
    cfg.origin = Some(agentguard_verify::Origin::of_uri(resource).unwrap());
    let v = Verifier::new(cfg, JwksSource::Static(m.jwks()))
        .await
        .unwrap();
    let mut p = proxy(v, ProxyTimeouts::default());
    p.resource =
        Some(ResourceFront::new(resource, vec![m.issuer()], Some("tools:call"), None).unwrap());
    let addr = start_proxy(p).await;
    let metadata = "http://tool.test/.well-known/oauth-protected-resource/mcp";
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let (answer, _) = exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: tool.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        let json = answer.split("\r\n\r\n").nth(1).unwrap();
        let doc: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(doc["resource"], resource);
        assert_eq!(doc["authorization_servers"][0], m.issuer().as_str());
    }
    // No token: a challenge without an error code, naming the metadata.
    let (answer, _) = exchange(
        addr,
        b"POST /mcp HTTP/1.1\r\nHost: tool.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains(&format!(
            "www-authenticate: Bearer resource_metadata=\"{metadata}\"\r\n"
        )),
        "{answer}"
    );
    // A token for another audience: invalid_token, and the metadata.
    let t = token_for(&m, "http://tool.test/other", "POST", resource, b"");
    let (answer, _) = exchange(addr, head("POST", "/mcp", &t, 0).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("error=\"invalid_token\""), "{answer}");
    assert!(
        answer.contains(&format!("resource_metadata=\"{metadata}\"")),
        "{answer}"
    );
    // The right audience without the scope: 403 naming the scope needed.
    let t = token_for(&m, resource, "POST", resource, b"");
    let (answer, _) = exchange(addr, head("POST", "/mcp", &t, 0).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains("error=\"insufficient_scope\"")
            && answer.contains("scope=\"tools:call\"")
            && answer.contains(&format!("resource_metadata=\"{metadata}\"")),
        "{answer}"
    );
}

#[tokio::test]
async fn a_tool_that_does_not_answer_in_time_is_504() {
    let dir = tempfile::tempdir().unwrap();
    let m = minter(dir.path());
    let v = verifier(&m, JwksSource::Static(m.jwks())).await;
    // A tool that takes the connection and the request, and says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut p = proxy(v, SHORT);
    p.upstream = format!("http://{silent_addr}").parse().unwrap();
    let addr = start_proxy(p).await;
    let t = token(&m, "GET", "http://tool.test/x", b"");
    let (answer, closed) = exchange(addr, head("GET", "/x", &t, 0).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let closed = closed.expect("held open for 5 s");
    assert!(closed >= SHORT.upstream_response, "{closed:?}");
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
    let tls = crate::token::tls_acceptor(&cert_file, &key_file).unwrap();
    let addr = start(v, SHORT, Some(tls)).await;
    // Connected, and not a byte of a ClientHello.
    let (_, closed) = exchange(addr, b"").await;
    let closed = closed.expect("the connection was held open for 5 s");
    assert!(closed >= SHORT.tls_handshake, "{closed:?}");
}
