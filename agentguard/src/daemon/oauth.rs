//! OAuth 2.0 token requests go out through the same upstream client as
//! agents' requests: TLS verified against the system roots and
//! `--upstream-ca`, connection pools per host and address.

use std::{future::Future, pin::Pin, sync::Arc};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{HeaderMap, Method, Request, Uri, body::Bytes, header};

use crate::{credentials::TokenFetcher, proxy::upstream::Upstreams};

/// A token response larger than this is not a token response.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

pub struct UpstreamTokenFetcher {
    upstreams: Arc<Upstreams>,
    /// Pool label: token fetches are the daemon's own, not an agent's.
    label: Arc<str>,
}

impl UpstreamTokenFetcher {
    pub fn new(upstreams: Arc<Upstreams>) -> Self {
        Self {
            upstreams,
            label: Arc::from("agentguard:oauth2"),
        }
    }

    async fn post(
        &self,
        url: &Uri,
        headers: HeaderMap,
        body: String,
    ) -> Result<(u16, Bytes), String> {
        let host = url.host().ok_or("token_url has no host")?;
        let port = url
            .port_u16()
            .unwrap_or(if url.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        // The daemon resolves the token endpoint itself (agents never reach
        // it); the first address answers, like any HTTP client.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((bare_host, port))
            .await
            .map_err(|e| format!("failed to resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let origin = self.upstreams.origin(
            &self.label,
            bare_host,
            addr,
            false,
            &crate::netns::Dial::Host,
        );
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(
                Full::new(Bytes::from(body))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .map_err(|e| format!("invalid token request: {e}"))?;
        req.headers_mut().extend(headers);
        let resp = origin
            .request(req)
            .await
            .map_err(|e| crate::proxy::upstream::describe_failure(&e).1)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("failed to read the token response: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

impl TokenFetcher for UpstreamTokenFetcher {
    fn post_form(
        &self,
        url: &Uri,
        headers: HeaderMap,
        body: String,
    ) -> Pin<Box<dyn Future<Output = Result<(u16, Bytes), String>> + Send + '_>> {
        let url = url.clone();
        Box::pin(async move { self.post(&url, headers, body).await })
    }
}
