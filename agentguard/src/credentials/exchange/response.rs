//! Reading a token endpoint's answer: RFC 8693 §2.2.1 (successful
//! exchange), RFC 6749 §5.1 and §5.2 (success and error), field by field
//! with fixed messages, since serde's own errors would quote the token.

use std::time::Duration;

use base64::Engine as _;
use hyper::body::Bytes;

use super::{ExchangeError, client::Client};
use crate::credentials::Secret;

/// Used when the answer says nothing of the token's lifetime and the token
/// is not a JWT with an `exp`: a delegated token is short-lived.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// What was wrong with an answer, before the URL and client are known.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ResponseError {
    Rejected { status: u16, error: Option<String> },
    Bad(String),
}

impl ResponseError {
    pub(super) fn at(self, url: &str, client: &Client) -> ExchangeError {
        match self {
            ResponseError::Rejected { status, error } => ExchangeError::Rejected {
                url: url.to_owned(),
                status,
                error: error.and_then(|e| client.server_text(&e)),
            },
            ResponseError::Bad(reason) => ExchangeError::BadResponse {
                url: url.to_owned(),
                reason,
            },
        }
    }
}

/// The token and how long to use it. `exchange`: an RFC 8693 answer, which
/// must say what it issued (`issued_token_type`, REQUIRED by §2.2.1).
pub(super) fn parse_token_response(
    status: u16,
    body: &Bytes,
    exchange: bool,
) -> Result<(Secret, Duration), ResponseError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        return Err(ResponseError::Rejected {
            status,
            error: json
                .as_ref()
                .and_then(|j| j.get("error")?.as_str())
                .map(str::to_owned),
        });
    }
    let bad = |reason: &str| ResponseError::Bad(reason.to_owned());
    let json = json.ok_or_else(|| bad("the body is not JSON"))?;
    let token = match json.get("access_token").and_then(|t| t.as_str()) {
        Some(t) if !t.is_empty() => t.to_owned(),
        _ => return Err(bad("no access_token string")),
    };
    if exchange
        && !json
            .get("issued_token_type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.starts_with("urn:"))
    {
        return Err(bad("no issued_token_type (RFC 8693 §2.2.1)"));
    }
    // RFC 6749 §5.1: case-insensitive. RFC 8693 §2.2.1: "N_A" when the
    // issued token is not an access token; it is still what the tool takes.
    let token_type = json.get("token_type").and_then(|t| t.as_str());
    if !token_type.is_some_and(|t| t.eq_ignore_ascii_case("bearer") || t == "N_A") {
        return Err(bad("token_type is not Bearer (or N_A)"));
    }
    let lifetime = match json.get("expires_in") {
        None | Some(serde_json::Value::Null) => jwt_lifetime(&token).unwrap_or(DEFAULT_LIFETIME),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str()?.parse().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| bad("expires_in is not a number of seconds"))?,
    };
    Ok((Secret::new(token), lifetime))
}

/// The time left until a JWT's `exp`, read without verifying it (the
/// token is the tool's to verify; this only says how long to keep it).
fn jwt_lifetime(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_u64()?;
    exp.checked_sub(crate::token::now_secs())
        .map(Duration::from_secs)
}
