//! A loopback HTTPS upstream (hyper + rustls, HTTP/1.1 and HTTP/2) that
//! misbehaves the way real ones do: it honours method and URL override
//! headers, and it echoes the credential it was sent back to the caller in
//! every form a redactor could miss: encoded, split across chunks and
//! events, compressed, inside WebSocket frames.
//!
//! Routes (a leading `/basic` is ignored, for tools on another credential):
//! - `/honour/...`, `/allowed/...`: answers `"<method> <path> client=<c>"`
//!   after applying `X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override`, `_method`, `X-Original-URL`, `X-Rewrite-URL`,
//!   `Forwarded` and `X-Forwarded-For`, as frameworks do.
//! - `/leak/headers`: the secret in response headers, raw and encoded.
//! - `/leak/encodings`: [`leak_text`] with a length, as octet-stream.
//! - `/leak/large`: 3 MiB with a length, the secret in the middle and at
//!   the end.
//! - `/leak/chunked`: [`leak_text`] in frames of one to seven bytes, so
//!   that every form is split at every place.
//! - `/leak/sse`: an event stream; the first event carries the secret split
//!   over three frames, the second is sent only after `/leak/release`.
//! - `/leak/gzip`, `/leak/deflate`: [`leak_text`] compressed, with
//!   `Content-Encoding`, whatever the request asked for.
//! - `/leak/ws`: a WebSocket whose server sends the secret in a fragmented
//!   text message (a ping between the fragments), a binary message, a
//!   JSON-escaped text message and the close reason.

use std::{
    convert::Infallible,
    io::Write as _,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
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
use tokio::{io::AsyncWriteExt as _, sync::Notify};

use super::TestCa;

type Body = BoxBody<Bytes, Infallible>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Heard {
    pub method: String,
    /// As received: not decoded.
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Heard {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    heard: Mutex<Vec<Heard>>,
    /// `/leak/release` lets the SSE stream send its second event.
    release: Notify,
}

pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub name: String,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl EchoUpstream {
    /// Serves HTTPS for `name` on `ip`, with a certificate from `ca`.
    pub fn start(ip: &str, name: &str, ca: &TestCa, dir: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (cert, key) = ca.leaf_files(name, dir);
        let chain = rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut std::fs::read(key).unwrap().as_slice())
            .unwrap()
            .unwrap();
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
        let shared = Arc::new(Shared {
            heard: Mutex::new(Vec::new()),
            release: Notify::new(),
        });
        let state = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(route(req, &state).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            name: name.to_owned(),
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.name, self.addr.port())
    }

    /// Every request that reached this upstream, in order.
    pub fn heard(&self) -> Vec<Heard> {
        self.shared.heard.lock().unwrap().clone()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The secret inside an `Authorization` value, as the upstream received
/// it: after `Bearer `, or the password inside `Basic`.
fn secret_of(authorization: &str) -> String {
    if let Some(token) = authorization.strip_prefix("Bearer ") {
        return token.to_owned();
    }
    if let Some(b64) = authorization.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        let decoded = String::from_utf8_lossy(&decoded).into_owned();
        return decoded
            .split_once(':')
            .map(|(_, p)| p.to_owned())
            .unwrap_or_default();
    }
    authorization.to_owned()
}

/// JSON string escaping (without the quotes) as encoders differ in it:
/// `slash` escapes `/` as `\/` (PHP), `html` escapes `<>&'` (Go),
/// `ascii` escapes everything beyond ASCII (Python), `all` escapes every
/// character as `\uXXXX`.
fn json_escape(s: &str, slash: bool, html: bool, ascii: bool, all: bool) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let mut units = [0u16; 2];
        let u = |out: &mut String, units: &[u16]| {
            for unit in units {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        };
        match c {
            _ if all => u(&mut out, c.encode_utf16(&mut units)),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if slash => out.push_str("\\/"),
            '<' | '>' | '&' | '\'' if html => u(&mut out, c.encode_utf16(&mut units)),
            c if (c as u32) < 0x20 || (ascii && !c.is_ascii()) => {
                u(&mut out, c.encode_utf16(&mut units))
            }
            c => out.push(c),
        }
    }
    out
}

/// Every encoded form the upstream sends back, one per line, each with a
/// label the tests do not look at: base64 at every alignment and in both
/// alphabets, percent-encoding (upper- and lowercase hex, and every byte),
/// JSON escapes of four encoders, hex, the raw secret and the raw header.
pub fn leak_text(authorization: &str) -> String {
    let secret = secret_of(authorization);
    let std64 = base64::engine::general_purpose::STANDARD;
    let url64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut lines = vec![
        format!("raw: {secret}"),
        format!("authorization: {authorization}"),
    ];
    for pad in ["", "x", "xy"] {
        let text = format!("{pad}{secret}!");
        lines.push(format!("base64: {}", std64.encode(&text)));
        lines.push(format!("base64url: {}", url64.encode(&text)));
    }
    let pct = percent_encoding::utf8_percent_encode(&secret, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    lines.push(format!("percent: {pct}"));
    lines.push(format!("percent-lower: {}", lower_hex_escapes(&pct)));
    let every: String = secret.bytes().map(|b| format!("%{b:02X}")).collect();
    lines.push(format!("percent-every-byte: {every}"));
    lines.push(format!("query: ?key={}&x=1", form_encode(&secret)));
    for (slash, html, ascii, all) in [
        (false, false, false, false),
        (true, false, true, false),
        (false, true, false, false),
        (false, false, true, false),
        (false, false, false, true),
    ] {
        lines.push(format!(
            "json: {{\"token\":\"{}\"}}",
            json_escape(&secret, slash, html, ascii, all)
        ));
    }
    lines.push(format!("hex: {}", hex_of(secret.as_bytes())));
    lines.join("\n") + "\n"
}

fn lower_hex_escapes(pct: &str) -> String {
    let mut out = String::new();
    let mut rest = pct;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        out.push('%');
        out.push_str(&rest[at + 1..at + 3].to_ascii_lowercase());
        rest = &rest[at + 3..];
    }
    out + rest
}

/// `application/x-www-form-urlencoded`: a space is `+`.
fn form_encode(s: &str) -> String {
    s.split(' ')
        .map(|part| {
            percent_encoding::utf8_percent_encode(part, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("+")
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn route(mut req: Request<Incoming>, state: &Arc<Shared>) -> Response<Body> {
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
    let heard = Heard {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        headers,
    };
    state.heard.lock().unwrap().push(heard.clone());
    let path = heard.path.strip_prefix("/basic").unwrap_or(&heard.path);
    let authorization = heard.header("authorization").unwrap_or_default().to_owned();
    let secret = secret_of(&authorization);
    if path.starts_with("/honour/") || path.starts_with("/allowed/") {
        // Read the body first, as servers do before acting on a request.
        let _ = req.into_body().collect().await;
        return text(honour(&heard));
    }
    match path {
        "/leak/headers" => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("x{secret}"));
            Response::builder()
                .header("x-raw", &secret)
                .header("x-authorization", &authorization)
                .header("x-base64", b64)
                .header(
                    "x-percent",
                    percent_encoding::utf8_percent_encode(
                        &secret,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string(),
                )
                .header(
                    header::LOCATION,
                    format!("/next?key={}", form_encode(&secret)),
                )
                .body(full("ok\n"))
                .unwrap()
        }
        "/leak/encodings" => Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(full(leak_text(&authorization)))
            .unwrap(),
        "/leak/large" => {
            let filler = "0123456789abcdef".repeat((3 << 20) / 16 / 2);
            let body = format!(
                "{filler}\n{}{filler}\n{}",
                leak_text(&authorization),
                secret
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(full(body))
                .unwrap()
        }
        "/leak/chunked" => {
            let body = leak_text(&authorization).into_bytes();
            // Frames of 1..=7 bytes, each written on its own: every form
            // is cut at every place somewhere in the body.
            let pieces: Vec<Bytes> = {
                let mut pieces = Vec::new();
                let (mut at, mut n) = (0, 1);
                while at < body.len() {
                    let end = (at + n).min(body.len());
                    pieces.push(Bytes::copy_from_slice(&body[at..end]));
                    at = end;
                    n = n % 7 + 1;
                }
                pieces
            };
            let stream = futures_util::stream::unfold(pieces.into_iter(), |mut it| async move {
                let piece = it.next()?;
                tokio::time::sleep(Duration::from_micros(300)).await;
                Some((Ok::<_, Infallible>(Frame::data(piece)), it))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/leak/release" => {
            state.release.notify_one();
            text("released".into())
        }
        "/leak/sse" => {
            let first = format!("data: {{\"token\":\"{secret}\"}}\n\n");
            let (a, b) = (first.len() / 3, first.len() * 2 / 3);
            // Cut by bytes, wherever that falls (inside a character too).
            let first = Bytes::from(first);
            let pieces = vec![first.slice(..a), first.slice(a..b), first.slice(b..)];
            let second = format!(
                "data: {}\n\n",
                base64::engine::general_purpose::STANDARD.encode(&authorization)
            );
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            let state = state.clone();
            tokio::spawn(async move {
                for p in pieces {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // The second event only once the agent has read the
                // first: a proxy that held the first back deadlocks here
                // (bounded: the agent gives up after its timeout).
                if tokio::time::timeout(Duration::from_secs(15), state.release.notified())
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tx.send(Bytes::from(second)).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                let b = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/leak/gzip" | "/leak/deflate" => {
            let coding = &path["/leak/".len()..];
            let script = if coding == "gzip" {
                "import gzip,sys;sys.stdout.buffer.write(gzip.compress(sys.stdin.buffer.read()))"
            } else {
                "import zlib,sys;sys.stdout.buffer.write(zlib.compress(sys.stdin.buffer.read()))"
            };
            let compressed = compress(script, leak_text(&authorization).as_bytes());
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .header(header::CONTENT_ENCODING, coding)
                .body(full(compressed))
                .unwrap()
        }
        "/leak/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return text("not a websocket request".into());
            };
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = TokioIo::new(upgraded);
                let json = json_escape(&secret, true, true, true, false);
                let (head, tail) = secret.as_bytes().split_at(secret.len() / 2);
                let mut frames = Vec::new();
                // A text message in three fragments, a ping between them.
                frames.extend(ws_frame(false, 0x1, &[b"token: ", head].concat()));
                frames.extend(ws_frame(true, 0x9, b"ping"));
                frames.extend(ws_frame(false, 0x0, tail));
                frames.extend(ws_frame(true, 0x0, b" (end)"));
                frames.extend(ws_frame(
                    true,
                    0x2,
                    format!("binary: {authorization}").as_bytes(),
                ));
                frames.extend(ws_frame(
                    true,
                    0x1,
                    format!("{{\"t\":\"{json}\"}}").as_bytes(),
                ));
                let mut close = 1000u16.to_be_bytes().to_vec();
                close.extend_from_slice(secret.as_bytes());
                frames.extend(ws_frame(true, 0x8, &close));
                // Byte by byte, so that frame headers are split too.
                for b in frames {
                    if io.write_all(&[b]).await.is_err() {
                        return;
                    }
                    io.flush().await.ok();
                }
                // Wait for the client's close (bounded).
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    tokio::io::AsyncReadExt::read(&mut io, &mut buf),
                )
                .await;
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        _ => text("hello from the echo upstream".into()),
    }
}

/// A server-to-client WebSocket frame (RFC 6455 §5.2): not masked.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Frameworks' override handling: the method from the first override
/// header or `_method`, the path from `X-Original-URL`/`X-Rewrite-URL`, the
/// client from `Forwarded`/`X-Forwarded-For`.
fn honour(heard: &Heard) -> String {
    let method_param = heard
        .query
        .split('&')
        .find_map(|p| p.strip_prefix("_method="))
        .map(str::to_owned);
    let method = [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .iter()
    .find_map(|h| heard.header(h).map(str::to_owned))
    .or(method_param)
    .unwrap_or_else(|| heard.method.clone());
    let path = ["x-original-url", "x-rewrite-url"]
        .iter()
        .find_map(|h| heard.header(h))
        .unwrap_or(&heard.path);
    let client = ["forwarded", "x-forwarded-for"]
        .iter()
        .find_map(|h| heard.header(h))
        .unwrap_or("none");
    format!("{method} {path} client={client}\n")
}

/// Runs a Python one-liner over `input`: the standard library's gzip and
/// zlib, rather than a compression crate only tests would use.
fn compress(script: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn text(s: String) -> Response<Body> {
    Response::new(full(s))
}
