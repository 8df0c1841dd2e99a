//! Building the request the upstream receives, and handling what comes back:
//! upgrades become tunnels, secrets echoed by the upstream are redacted
//! (`redaction`).

use std::sync::Arc;

use hyper::{
    Response, Uri, header,
    http::{
        request::Parts,
        uri::{Authority, PathAndQuery, Scheme},
    },
    upgrade::OnUpgrade,
};
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use super::{hop::strip_hop_by_hop, redaction};
use crate::{
    credentials::Redactor,
    proxy::{refusal::Refusal, upstream::ProxyBody},
};

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
    let path_and_query = match parts.uri.path_and_query() {
        // Most requests' paths are normal already: theirs is kept as it is
        // (a reference count, not a new string parsed again). Not when it
        // has no path of its own (`http://host?q` holds "?q", whose path()
        // reads "/"): HTTP/2 would send that text as `:path`.
        Some(pq) if pq.as_str().starts_with('/') && pq.path() == normalized_path => pq.clone(),
        _ => {
            let joined = match parts.uri.query() {
                Some(q) => format!("{normalized_path}?{q}"),
                None => normalized_path.to_owned(),
            };
            joined
                .parse::<PathAndQuery>()
                .map_err(|e| format!("invalid request target: {e}"))?
        }
    };
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
/// and where the agent holds secrets, every one cut out (or the response
/// refused if it could not be checked).
pub async fn finish(
    mut resp: Response<ProxyBody>,
    redactor: Option<Arc<Redactor>>,
) -> Result<Response<ProxyBody>, Refusal> {
    let Some(redactor) = redactor else {
        strip_hop_by_hop(resp.headers_mut(), false);
        return Ok(resp);
    };
    redaction::check_codings(&resp)?;
    strip_hop_by_hop(resp.headers_mut(), false);
    Ok(redaction::redact(resp, redactor).await)
}

/// After a 101: WebSocket frames flow both ways, the upstream's redacted
/// where the agent holds secrets, untouched otherwise.
pub async fn tunnel(agent: OnUpgrade, upstream: OnUpgrade, redactor: Option<Arc<Redactor>>) {
    let (agent, upstream) = tokio::join!(agent, upstream);
    let (Ok(agent), Ok(upstream)) = (agent, upstream) else {
        warn!("upgrade failed on one side; closing both");
        return;
    };
    if let Some(redactor) = redactor {
        return redaction::relay(agent, upstream, redactor).await;
    }
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

    fn prepared(target: &str, normalized: &str) -> Uri {
        let req = hyper::Request::builder()
            .uri(target)
            .header(header::HOST, "tool.example")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let authority: Authority = "tool.example:8443".parse().unwrap();
        prepare(&mut parts, &authority, Scheme::HTTPS, normalized, false).unwrap();
        assert!(parts.headers.get(header::HOST).is_none());
        parts.uri
    }

    /// The upstream gets the normalised path (what the policy decided on)
    /// with the agent's query, whether the path needed normalising or not.
    #[test]
    fn the_upstream_target_is_the_normalised_path_and_the_query() {
        for (target, normalized, want) in [
            ("/a/b?x=1&y", "/a/b", "https://tool.example:8443/a/b?x=1&y"),
            (
                "/a/./b/../c?x=1",
                "/a/c",
                "https://tool.example:8443/a/c?x=1",
            ),
            ("/a//b", "/a/b", "https://tool.example:8443/a/b"),
            ("/a/b", "/a/b", "https://tool.example:8443/a/b"),
            ("/a/b?", "/a/b", "https://tool.example:8443/a/b?"),
            ("/a/%2e%2e/b?q", "/b", "https://tool.example:8443/b?q"),
            // Absolute form without a path: the path is "/".
            (
                "http://tool.example?x=1",
                "/",
                "https://tool.example:8443/?x=1",
            ),
            ("http://tool.example", "/", "https://tool.example:8443/"),
        ] {
            let uri = prepared(target, normalized);
            assert_eq!(uri.to_string(), want, "{target}");
            // What HTTP/2 sends as :path.
            let pq = uri.path_and_query().unwrap().as_str();
            assert!(pq.starts_with('/'), "{target}: {pq}");
        }
    }
}
