//! Building the request the upstream receives, and handling what comes back:
//! upgrades become tunnels, secrets echoed by the upstream are redacted.

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Response, Uri,
    body::{Body as _, Bytes},
    header::{self, HeaderValue},
    http::{
        request::Parts,
        uri::{Authority, PathAndQuery, Scheme},
    },
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use super::hop::strip_hop_by_hop;
use crate::{
    credentials::{Secret, redact_bytes, redact_headers},
    proxy::upstream::{BodyError, ProxyBody},
};

/// Responses up to this size with a textual content type are read whole so
/// that a secret the upstream echoes can be redacted; larger or streamed
/// (SSE, chunked without length) responses pass through as they arrive.
const MAX_REDACTED_BODY: u64 = 1 << 20;

/// Rewrites the agent's request head for the upstream: absolute URI with the
/// normalised path (what the policy decided on is what the upstream gets),
/// hop-by-hop headers removed.
pub fn prepare(
    parts: &mut Parts,
    authority: &Authority,
    scheme: Scheme,
    normalized_path: &str,
    upgrade: bool,
) -> Result<(), String> {
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{normalized_path}?{q}"),
        None => normalized_path.to_owned(),
    };
    let path_and_query: PathAndQuery = path_and_query
        .parse()
        .map_err(|e| format!("invalid request target: {e}"))?;
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| format!("invalid request target: {e}"))?;
    // The hyper client speaks whatever the upstream negotiated; HTTP/1.1
    // here lets it downgrade an HTTP/2 agent request when needed.
    parts.version = hyper::Version::HTTP_11;
    // The URI carries the authority; the client re-adds Host for HTTP/1.1.
    parts.headers.remove(header::HOST);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    Ok(())
}

/// Readies the upstream's response for the agent: hop-by-hop headers out,
/// echoed secrets redacted.
pub async fn finish(mut resp: Response<ProxyBody>, secrets: &[Secret]) -> Response<ProxyBody> {
    strip_hop_by_hop(resp.headers_mut(), false);
    if secrets.is_empty() {
        return resp;
    }
    let redacted = redact_headers(resp.headers_mut(), secrets);
    if redacted > 0 {
        warn!(
            redacted,
            "upstream echoed a secret in response headers; redacted"
        );
    }
    if !redactable(&resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match collect_limited(body, MAX_REDACTED_BODY).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // The body failed mid-way: the agent gets an empty 502 rather
            // than a truncated body that might look complete.
            warn!(error = %e, "failed to read upstream response body");
            let mut resp = Response::new(empty());
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return resp;
        }
    };
    let bytes = match redact_bytes(&bytes, secrets) {
        Some(clean) => {
            warn!("upstream echoed a secret in the response body; redacted");
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(clean.len()));
            Bytes::from(clean)
        }
        None => bytes,
    };
    Response::from_parts(parts, Full::new(bytes).map_err(|n| match n {}).boxed())
}

/// The whole body, if it is at most `max` bytes. (A loop rather than
/// `Limited`: its generic error conversion, inside the proxy's request
/// future, defeats rustc's proof that the future is `Send`.)
async fn collect_limited(mut body: ProxyBody, max: u64) -> Result<Bytes, BodyError> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if (buf.len() + data.len()) as u64 > max {
                return Err(format!("response body larger than {max} bytes").into());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// Small, complete, textual bodies: the ones an echo could leak through and
/// that can be read whole without breaking streaming.
fn redactable(resp: &Response<ProxyBody>) -> bool {
    let small = resp
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_REDACTED_BODY);
    let textual = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            (ct.starts_with("text/") && !ct.starts_with("text/event-stream"))
                || ct.contains("json")
                || ct.contains("xml")
                || ct.contains("x-www-form-urlencoded")
        });
    let encoded = resp.headers().contains_key(header::CONTENT_ENCODING);
    small && textual && !encoded
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new()).map_err(|n| match n {}).boxed()
}

/// After a 101, bytes flow both ways untouched (WebSocket frames).
pub async fn tunnel(agent: OnUpgrade, upstream: OnUpgrade) {
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
