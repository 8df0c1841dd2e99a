//! Turning a verified request into the tool's request: the upstream URI,
//! this hop's headers removed, and the agent's token never passed on.

use std::sync::Arc;

use hyper::{
    Uri,
    header::{self, HeaderValue},
    http::request::Parts,
};

/// The connection-specific headers of RFC 9110 §7.6.1, always removed
/// (beside those `Connection` lists).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Rewrites a verified request's head for the tool at `upstream`.
///
/// The agent's token is spent and was minted for verify-proxy, not the
/// tool: it is removed (the MCP authorization spec forbids passing a
/// client's token through), and `authorization` (the tool's own
/// credential, when configured) takes its place.
pub fn upstream_head(
    parts: &mut Parts,
    upstream: &Uri,
    target: &str,
    authorization: Option<&HeaderValue>,
) -> Result<(), String> {
    parts.uri = join(upstream, target)?;
    parts.headers.remove(header::HOST);
    if let Some(listed) = parts.headers.get(header::CONNECTION).cloned()
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',') {
            parts.headers.remove(name.trim());
        }
    }
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    parts.headers.remove(header::AUTHORIZATION);
    if let Some(value) = authorization {
        parts.headers.insert(header::AUTHORIZATION, value.clone());
    }
    // The body is whole by now, so hyper sets its length.
    parts.version = hyper::Version::HTTP_11;
    Ok(())
}

/// `upstream` (with an optional path prefix) joined with the request target.
pub fn join(upstream: &Uri, target: &str) -> Result<Uri, String> {
    let prefix = upstream.path().trim_end_matches('/');
    format!(
        "{}://{}{prefix}{target}",
        upstream.scheme_str().unwrap_or("http"),
        upstream.authority().map(|a| a.as_str()).unwrap_or_default()
    )
    .parse()
    .map_err(|e| format!("upstream uri: {e}"))
}

/// HTTP or HTTPS to the tool, verified against the system roots and
/// `extra` (DER).
pub fn https_connector(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra {
        let _ = roots.add(cert.clone());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_agents_token_is_replaced_or_removed() {
        let head = || {
            hyper::Request::post("/mcp")
                .header("host", "tool.example")
                .header("authorization", "Bearer agent-token")
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "1")
                .header("x-end", "2")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let u: Uri = "http://127.0.0.1:8080".parse().unwrap();
        let mut p = head();
        upstream_head(&mut p, &u, "/mcp", None).unwrap();
        assert!(p.headers.get("authorization").is_none());
        assert!(p.headers.get("x-hop").is_none() && p.headers.get("host").is_none());
        assert_eq!(p.headers["x-end"], "2");
        assert_eq!(p.uri.to_string(), "http://127.0.0.1:8080/mcp");
        let mut p = head();
        let own = HeaderValue::from_static("Bearer tool-own");
        upstream_head(&mut p, &u, "/mcp", Some(&own)).unwrap();
        assert_eq!(p.headers["authorization"], "Bearer tool-own");
    }
}
