//! Request-bound tokens in the proxy: the body is read whole (bounded in
//! size and in time) so that the token can bind its hash, then a token is
//! minted for exactly the request the upstream will receive and put where
//! the credential says.

use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::{body::Bytes, header::CONTENT_LENGTH, http::request::Parts};
use tokio::time::Instant;

use super::ConnMeta;
use crate::{
    credentials::{Secret, inject},
    policy::Injection,
    proxy::{
        ProxyContext,
        refusal::Refusal,
        upstream::{BodyError, ProxyBody},
    },
    token::{MintRequest, RequestBinding},
};

/// The minted token (a secret: redacted if echoed) and its `jti`.
pub(super) struct Bound {
    pub body: Bytes,
    pub token: Secret,
    pub jti: String,
    pub on_behalf_of: Option<String>,
}

pub(super) struct JwtSpec<'a> {
    pub audience: &'a str,
    pub scope: &'a str,
    pub ttl: std::time::Duration,
    pub inject: &'a Injection,
}

/// A body past the bound is still read (and dropped), up to this much or
/// [`DRAIN_TIME`], so that the client, still sending, gets the 413 instead
/// of a reset stream.
const DRAIN_MAX: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Why a body was not read whole.
enum Unread {
    Failed(BodyError),
    /// It did not arrive within the limit.
    Late(Duration),
}

/// The body if it is at most `max` bytes (and `over` is false), `None` if
/// larger. The whole body must arrive within `limit`: an agent that sends
/// a head and then trickles (or stops) must not hold the request, and its
/// place among the agent's requests in flight, for ever.
async fn read_bounded(
    mut body: ProxyBody,
    max: usize,
    mut over: bool,
    limit: Duration,
) -> Result<Option<Bytes>, Unread> {
    let mut buf = Vec::new();
    let mut seen: u64 = 0;
    let deadline = Instant::now() + limit;
    let drain_deadline = Instant::now() + DRAIN_TIME;
    loop {
        let frame = if over {
            match tokio::time::timeout_at(drain_deadline.min(deadline), body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(f) => f,
                Err(_) => return Err(Unread::Late(limit)),
            }
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(Unread::Failed)?.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if !over && buf.len() + data.len() <= max {
            buf.extend_from_slice(&data);
        } else {
            over = true;
            buf = Vec::new();
            if seen > DRAIN_MAX {
                break;
            }
        }
    }
    Ok((!over).then(|| Bytes::from(buf)))
}

/// `parts` must already be the upstream's request head (absolute URI with
/// the normalised path): that is what the token binds.
pub(super) async fn bind(
    parts: &mut Parts,
    body: ProxyBody,
    spec: &JwtSpec<'_>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
) -> Result<Bound, Refusal> {
    let max = ctx.jwt_max_body;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let over = declared.is_some_and(|n| n > max as u64);
    let limit = ctx.limits.options().client_timeout;
    let body = match read_bounded(body, max, over, limit).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(Refusal::JwtBodyTooLarge { max }),
        Err(Unread::Failed(e)) => {
            return Err(Refusal::BodyUnreadable(super::agent_body::describe(&*e)));
        }
        Err(Unread::Late(limit)) => return Err(Refusal::BodyTimeout(limit)),
    };
    let on_behalf_of = ctx.on_behalf_of.lookup(meta.identity.pid);
    let binding = RequestBinding::new(parts.method.as_str(), &parts.uri, "https", &body);
    let minted = ctx
        .minter
        .mint(&MintRequest {
            agent: &meta.identity.agent,
            audience: spec.audience,
            scope: spec.scope,
            ttl: spec.ttl,
            binding: &binding,
            on_behalf_of: on_behalf_of.as_deref(),
            kernel: Some((&meta.identity.cgroup, meta.identity.uid)),
        })
        .map_err(Refusal::TokenMint)?;
    let token = Secret::new(minted.token);
    inject(spec.inject, &token, parts).map_err(|e| Refusal::TokenInjection(Box::new(e)))?;
    Ok(Bound {
        body,
        token,
        jti: minted.claims.jti,
        on_behalf_of,
    })
}
