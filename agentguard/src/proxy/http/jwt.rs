//! Request-bound tokens in the proxy: the body is read whole (bounded) so
//! that the token can bind its hash, then a token is minted for exactly the
//! request the upstream will receive and put where the credential says.

use http_body_util::{BodyExt as _, Limited};
use hyper::{
    StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_LENGTH,
    http::request::Parts,
};

use super::ConnMeta;
use crate::{
    credentials::{Secret, inject},
    policy::Injection,
    proxy::ProxyContext,
    token::{MintRequest, RequestBinding},
};

/// A refusal: status, rule, reason.
pub(super) type Refusal = (StatusCode, &'static str, String);

/// The minted token (a secret: redacted if echoed) and its `jti`.
pub(super) struct Bound {
    pub body: Bytes,
    pub token: Secret,
    pub jti: String,
}

pub(super) struct JwtSpec<'a> {
    pub audience: &'a str,
    pub scope: &'a str,
    pub ttl: std::time::Duration,
    pub inject: &'a Injection,
}

/// `parts` must already be the upstream's request head (absolute URI with
/// the normalised path): that is what the token binds.
pub(super) async fn bind(
    parts: &mut Parts,
    body: Incoming,
    spec: &JwtSpec<'_>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
) -> Result<Bound, Refusal> {
    let max = ctx.jwt_max_body;
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "jwt-body-too-large",
            format!(
                "request body is larger than {max} bytes: a JWT-bound tool's body is hashed into its token, and is refused rather than sent unbound"
            ),
        )
    };
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(body, max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("failed to read the request body: {e}"),
            ));
        }
    };
    let binding = RequestBinding::new(parts.method.as_str(), &parts.uri, "https", &body);
    let minted = ctx
        .minter
        .mint(&MintRequest {
            agent: &meta.identity.agent,
            audience: spec.audience,
            scope: spec.scope,
            ttl: spec.ttl,
            binding: &binding,
            on_behalf_of: None,
            kernel: Some((&meta.identity.cgroup, meta.identity.uid)),
        })
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, "token-mint", e))?;
    let token = Secret::new(minted.token);
    inject(spec.inject, &token, parts).map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "credential-injection",
            format!("could not inject the token: {e}"),
        )
    })?;
    Ok(Bound {
        body,
        token,
        jti: minted.claims.jti,
    })
}
