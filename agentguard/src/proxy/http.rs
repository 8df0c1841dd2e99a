//! Serving one intercepted connection as HTTP (hyper; HTTP/1.1 or HTTP/2 by
//! ALPN or preface) and forwarding each request to the original destination.
//!
//! Bodies are streamed both ways, never buffered: SSE and chunked responses
//! reach the agent as the upstream sends them.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::BodyExt as _;
use hyper::{
    Request, Response, StatusCode, Uri,
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::uri::{Authority, Scheme},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tracing::{Instrument as _, debug, info, warn};

use super::{
    ProxyContext,
    respond::{self, DECISION_REFUSE},
    upstream::{ProxyBody, describe_failure},
};
use crate::identity::Identity;

/// What the proxy knows about an intercepted connection before its first
/// request.
pub struct ConnMeta {
    pub identity: Identity,
    pub dst: SocketAddr,
    /// The SNI of the agent's ClientHello; `None` for plain HTTP.
    pub sni: Option<String>,
}

impl ConnMeta {
    fn scheme(&self) -> Scheme {
        if self.sni.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

/// Serves HTTP on `io` until the agent closes it.
pub async fn serve<IO>(io: IO, meta: ConnMeta, ctx: Arc<ProxyContext>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let meta = Arc::new(meta);
    let span = tracing::Span::current();
    let service = service_fn(move |req| {
        let (meta, ctx) = (meta.clone(), ctx.clone());
        async move { Ok::<_, Infallible>(handle(req, &meta, &ctx).await) }.instrument(span.clone())
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
    {
        debug!(error = %e, "http connection ended with error");
    }
}

async fn handle(
    mut req: Request<Incoming>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let agent = &meta.identity.agent;

    let authority = match request_authority(&req) {
        Ok(a) => a,
        Err(reason) => {
            warn!(%method, %path, reason, "bad request refused");
            return respond::error(StatusCode::BAD_REQUEST, DECISION_REFUSE, agent, &reason);
        }
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Err(reason) = check_consistency(host, authority.port_u16(), meta) {
        warn!(%method, %path, %authority, reason, "misdirected request refused");
        return respond::error(
            StatusCode::MISDIRECTED_REQUEST,
            DECISION_REFUSE,
            agent,
            &reason,
        );
    }

    let upgrade = wants_upgrade(&req);
    let agent_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let upstream_req = match upstream_request(req, &authority, meta.scheme(), upgrade) {
        Ok(r) => r,
        Err(reason) => {
            return respond::error(StatusCode::BAD_REQUEST, DECISION_REFUSE, agent, &reason);
        }
    };

    let client = ctx.upstreams.client(agent, host, meta.dst, upgrade);
    match client.request(upstream_req).await {
        Ok(mut resp) => {
            info!(%method, %authority, %path, status = resp.status().as_u16(), dur = ?start.elapsed(), "request forwarded");
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(agent_side) = agent_upgrade {
                    let upstream_side = hyper::upgrade::on(&mut resp);
                    tokio::spawn(tunnel(agent_side, upstream_side).in_current_span());
                }
            } else {
                strip_hop_by_hop(resp.headers_mut(), false);
            }
            resp.map(|body| body.boxed())
        }
        Err(e) => {
            let (certificate, reason) = describe_failure(&e);
            warn!(%method, %authority, %path, certificate, reason, "upstream failed");
            respond::error(StatusCode::BAD_GATEWAY, DECISION_REFUSE, agent, &reason)
        }
    }
}

/// The request's authority: the URI's (HTTP/2 `:authority`, or HTTP/1.1
/// absolute-form) or else the `Host` header (RFC 9110 §7.2).
fn request_authority(req: &Request<Incoming>) -> Result<Authority, String> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.clone());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or("request has no Host header or :authority")?;
    host.to_str()
        .ok()
        .and_then(|h| h.parse::<Authority>().ok())
        .ok_or_else(|| "request has an invalid Host header".to_owned())
}

/// SNI, Host/:authority and the connection's port must agree. Otherwise a
/// request could ride a connection verified for one name to another name
/// (domain fronting), and later, carry that name's credential.
fn check_consistency(host: &str, port: Option<u16>, meta: &ConnMeta) -> Result<(), String> {
    let host = host.trim_end_matches('.');
    if let Some(sni) = &meta.sni
        && !host.eq_ignore_ascii_case(sni.trim_end_matches('.'))
    {
        return Err(format!(
            "host {host:?} does not match the TLS server name {sni:?} of this connection"
        ));
    }
    if let Some(port) = port
        && port != meta.dst.port()
    {
        return Err(format!(
            "port {port} in the request does not match the connection's port {}",
            meta.dst.port()
        ));
    }
    Ok(())
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Rewrites the agent's request for the upstream: absolute URI (the client
/// derives SNI and `Host`/`:authority` from it), hop-by-hop headers removed.
fn upstream_request(
    req: Request<Incoming>,
    authority: &Authority,
    scheme: Scheme,
    upgrade: bool,
) -> Result<Request<ProxyBody>, String> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("invalid request target: {e}"))?;
    // The hyper client speaks whatever the upstream negotiated; HTTP/1.1
    // here lets it downgrade an HTTP/2 agent request when needed.
    parts.version = hyper::Version::HTTP_11;
    // The URI carries the authority; the client re-adds Host for HTTP/1.1.
    parts.headers.remove(header::HOST);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    Ok(Request::from_parts(parts, body.boxed()))
}

/// RFC 9110 §7.6.1: connection-specific headers do not cross a proxy. An
/// upgrade keeps `Connection: upgrade` and `Upgrade`, which it needs.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !(upgrade && t.eq_ignore_ascii_case("upgrade")))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "transfer-encoding",
        "trailer",
    ] {
        headers.remove(name);
    }
    // "TE: trailers" is end-to-end in practice (gRPC needs it); other TE
    // values are hop-by-hop.
    if headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// After a 101, bytes flow both ways untouched (WebSocket frames).
async fn tunnel(agent: OnUpgrade, upstream: OnUpgrade) {
    let (agent, upstream) = tokio::join!(agent, upstream);
    let (Ok(agent), Ok(upstream)) = (agent, upstream) else {
        warn!("upgrade failed on one side; closing both");
        return;
    };
    let (mut agent, mut upstream) = (TokioIo::new(agent), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut agent, &mut upstream).await {
        Ok((up, down)) => info!(
            bytes_up = up,
            bytes_down = down,
            "upgraded connection closed"
        ),
        Err(e) => debug!(error = %e, "upgraded connection ended with error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(sni: Option<&str>, port: u16) -> ConnMeta {
        ConnMeta {
            identity: Identity {
                agent: "a".into(),
                cgroup: "agentguard/a".into(),
                cgroup_id: 1,
                pid: 1,
                tid: 1,
                uid: 0,
                gid: 0,
                comm: "curl".into(),
                socket_family: "ipv4",
                exe: None,
            },
            dst: SocketAddr::from(([127, 0, 0, 3], port)),
            sni: sni.map(str::to_owned),
        }
    }

    #[test]
    fn host_must_match_sni_and_port() {
        let m = meta(Some("api.example.com"), 443);
        assert!(check_consistency("API.example.com.", None, &m).is_ok());
        assert!(check_consistency("api.example.com", Some(443), &m).is_ok());
        assert!(check_consistency("evil.example.com", None, &m).is_err());
        assert!(check_consistency("api.example.com", Some(8443), &m).is_err());
        // Plain HTTP has no SNI to compare; the port still must agree.
        let plain = meta(None, 80);
        assert!(check_consistency("anything", None, &plain).is_ok());
        assert!(check_consistency("anything", Some(81), &plain).is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-end-to-end").is_some());
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
    }
}
