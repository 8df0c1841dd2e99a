//! The upstream every path reaches: HTTPS (HTTP/1.1 and HTTP/2 by ALPN) on
//! a loopback address, with fixed bodies and an SSE stream, plus the DNS
//! stand-in agentguard forwards the passthrough name to.
//!
//! Routes: `/1k` and `/64k` answer fixed bodies of 1 KiB and 64 KiB;
//! `/sse` sends one event at once, then [`SSE_EVENTS`]` - 1` more
//! [`SSE_INTERVAL`] apart, so a proxy that buffers the stream delays the
//! first event by at least the rest of it; a POST to `/mcp` or `/rpc` is
//! read whole and answered with a fixed JSON-RPC result, as an MCP server
//! answers `tools/call` in JSON. `/token` answers as an OAuth token
//! endpoint (RFC 8693 §2.2.1) for the exchange path, whose token
//! agentguard caches: it is asked once per daemon.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Body, Bytes, Frame, Incoming},
    header,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use crate::{certs, dns};

pub const SSE_EVENTS: usize = 3;
pub const SSE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(clap::Args)]
pub struct Args {
    /// Loopback address to serve HTTPS on.
    #[arg(long)]
    ip: IpAddr,
    /// Names the leaf certificate (and the DNS stand-in) answers for.
    #[arg(long, value_delimiter = ',', required = true)]
    names: Vec<String>,
    /// Where to write ca.pem, leaf.pem and leaf.key.
    #[arg(long)]
    dir: PathBuf,
}

type RespBody = BoxBody<Bytes, Infallible>;

pub async fn run(args: Args) -> Result<()> {
    anyhow::ensure!(args.ip.is_loopback(), "the upstream serves loopback only");
    let leaf = certs::make(&args.dir, &args.names, args.ip)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(leaf.chain, leaf.key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(SocketAddr::new(args.ip, 0))
        .await
        .with_context(|| format!("failed to bind {}:0", args.ip))?;
    let https_port = listener.local_addr()?.port();
    let dns_ip = match args.ip {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(_) => anyhow::bail!("the DNS stand-in answers A records: use an IPv4 address"),
    };
    let dns_addr = dns::start(&args.names, dns_ip).await?;

    // The one line xtask waits for.
    println!(
        "{}",
        serde_json::json!({ "https_port": https_port, "dns": dns_addr.to_string() })
    );

    let bodies = Arc::new(Bodies {
        k1: Bytes::from(vec![b'a'; 1024]),
        k64: Bytes::from(vec![b'b'; 64 * 1024]),
    });
    let serve = async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, bodies) = (acceptor.clone(), bodies.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let bodies = bodies.clone();
                    async move {
                        if matches!(req.uri().path(), "/mcp" | "/rpc") {
                            // Read the call, as a server does before it answers.
                            let _ = req.into_body().collect().await;
                            return Ok::<_, Infallible>(json(RPC_RESULT));
                        }
                        Ok::<_, Infallible>(route(&req, &bodies))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = serve => {}
        () = crate::stdin_closed() => {}
    }
    Ok(())
}

/// The answer to every JSON-RPC call: a `tools/call` result.
const RPC_RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;

fn json(body: &'static str) -> Response<RespBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A token exchange's answer: an access token for an hour, so that every
/// measured request is served from agentguard's cache.
const TOKEN_RESPONSE: &[u8] = br#"{"access_token":"bench-exchanged-token-not-real","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#;

struct Bodies {
    k1: Bytes,
    k64: Bytes,
}

fn route(req: &Request<Incoming>, bodies: &Bodies) -> Response<RespBody> {
    let fixed = |b: &Bytes| Full::new(b.clone()).boxed();
    let (content_type, body) = match req.uri().path() {
        "/1k" => ("application/octet-stream", fixed(&bodies.k1)),
        "/64k" => ("application/octet-stream", fixed(&bodies.k64)),
        "/sse" => ("text/event-stream", SseBody::default().boxed()),
        // 200 (or 20) MiB in 64 KiB pieces, made as it is sent (the soak's
        // large response: the proxy must stream it, not hold it).
        "/200m" | "/20m" => (
            "application/octet-stream",
            Repeat {
                piece: bodies.k64.clone(),
                left: if req.uri().path() == "/200m" {
                    3200
                } else {
                    320
                },
            }
            .boxed(),
        ),
        "/token" => (
            "application/json",
            Full::new(Bytes::from_static(TOKEN_RESPONSE)).boxed(),
        ),
        _ => {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"not found")).boxed());
            *resp.status_mut() = StatusCode::NOT_FOUND;
            return resp;
        }
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// `left` copies of `piece`, with their total length announced.
struct Repeat {
    piece: Bytes,
    left: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.piece.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left * self.piece.len() as u64)
    }
}

/// The `/sse` body: event 0 at once, then one every [`SSE_INTERVAL`].
#[derive(Default)]
struct SseBody {
    sent: usize,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == SSE_EVENTS {
            return Poll::Ready(None);
        }
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        let event = Bytes::from(format!("id: {0}\ndata: event-{0}\n\n", self.sent));
        self.sent += 1;
        if self.sent < SSE_EVENTS {
            self.wait = Some(Box::pin(tokio::time::sleep(SSE_INTERVAL)));
        }
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}
