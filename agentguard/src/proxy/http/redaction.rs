//! What comes back from upstreams, where the agent holds secrets: every
//! form of every secret the agent's credentials hold (and the token minted
//! for the request) is cut out of everything the agent can read: headers
//! and trailers, bodies of any length and type, streamed or not, and
//! WebSocket frames (`credentials::Redactor` finds them).
//!
//! What cannot be checked is not relayed. Compressed bodies: the request
//! asks for `identity` ([`prepare`]) and a reply encoded anyway is refused
//! (`502`, `upstream-unredactable`) rather than decoded: decoding would put
//! gzip, deflate and brotli decoders (and their ratios) on every response
//! path, and still leave zstd, compress and chains of codings to refuse.
//! Compressed WebSocket messages (permessage-deflate): the offer is
//! removed from the request and a 101 that negotiates an extension anyway
//! is refused ([`upgraded`]).

mod body;
mod websocket;

use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Response,
    body::Body as _,
    header::{self, HeaderMap, HeaderValue},
};
use tracing::warn;

pub use websocket::relay;

use crate::{
    credentials::{Redactor, redact_headers},
    proxy::{
        refusal::Refusal,
        upstream::{ProxyBody, collect_limited},
    },
};
use body::RedactedBody;

/// Responses known to be at most this long are read whole and sent with
/// their (redacted) length; longer or unknown ones stream through a
/// [`RedactedBody`] without a length.
const MAX_WHOLE_BODY: u64 = 1 << 20;

/// Readies the request head: nothing that could come back compressed.
pub fn prepare(headers: &mut HeaderMap) {
    // RFC 9110 §12.5.3: identity only.
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
}

/// After a 101: refused if the upstream negotiated an extension anyway
/// (its frames could be compressed); otherwise the 101's headers redacted.
pub fn upgraded<B>(resp: &mut Response<B>, redactor: &Redactor) -> Result<(), Refusal> {
    if resp
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        return Err(Refusal::UpstreamUnredactable(
            "the upstream negotiated a WebSocket extension that was not offered; its frames could not be checked for secrets".into(),
        ));
    }
    redact_response_headers(resp.headers_mut(), redactor);
    Ok(())
}

/// The response for the agent, every secret cut out of its headers and its
/// body: a body known to be short is read whole and keeps a (corrected)
/// length, any other streams. [`check_codings`] first.
pub async fn redact(mut resp: Response<ProxyBody>, redactor: Arc<Redactor>) -> Response<ProxyBody> {
    redact_response_headers(resp.headers_mut(), &redactor);
    if resp.body().is_end_stream() {
        return resp;
    }
    let short = resp
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_WHOLE_BODY);
    let (mut parts, body) = resp.into_parts();
    if !short {
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = RedactedBody::new(body, redactor).boxed();
        return Response::from_parts(parts, body);
    }
    let bytes = match collect_limited(body, MAX_WHOLE_BODY as usize).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // The body failed mid-way: the agent gets an empty 502 rather
            // than a truncated body that might look complete.
            warn!(error = %e, "failed to read upstream response body");
            let mut resp = Response::new(Full::default().map_err(|n| match n {}).boxed());
            *resp.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return resp;
        }
    };
    let bytes = match redactor.redact(&bytes) {
        Some((clean, redacted)) => {
            warn!(
                redacted,
                "upstream echoed a secret in the response body; redacted"
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(clean.len()));
            clean.into()
        }
        None => bytes,
    };
    Response::from_parts(parts, Full::new(bytes).map_err(|n| match n {}).boxed())
}

fn redact_response_headers(headers: &mut HeaderMap, redactor: &Redactor) {
    let redacted = redact_headers(headers, redactor);
    if redacted > 0 {
        warn!(
            redacted,
            "upstream echoed a secret in response headers; redacted"
        );
    }
}

/// A body coded in any way but `identity` (content coding) or `chunked`
/// (transfer coding) cannot be searched, and is refused; one with no bytes
/// to read is harmless (HEAD, 304). Call before hop-by-hop headers are
/// stripped: `Transfer-Encoding` is one.
pub fn check_codings<B: hyper::body::Body>(resp: &Response<B>) -> Result<(), Refusal> {
    if resp.body().is_end_stream() {
        return Ok(());
    }
    let codings = |name: header::HeaderName, allowed: &'static str| {
        resp.headers()
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("?").split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(move |t| !t.is_empty() && t != allowed)
            .collect::<Vec<_>>()
    };
    let content = codings(header::CONTENT_ENCODING, "identity");
    let transfer = codings(header::TRANSFER_ENCODING, "chunked");
    match (content.first(), transfer.first()) {
        (None, None) => Ok(()),
        (Some(coding), _) | (None, Some(coding)) => Err(Refusal::UpstreamUnredactable(format!(
            "the upstream sent a {coding:?}-coded body though agentguard asked for identity; it could not be checked for secrets, so it is not relayed"
        ))),
    }
}
