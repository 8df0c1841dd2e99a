//! OAuth 2.0 client credentials (RFC 6749 §4.4): fetching access tokens with
//! the client's id and secret, and caching them until shortly before they
//! expire.

use std::{
    sync::{
        Mutex as StdMutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hyper::{
    HeaderMap, Uri,
    header::{ACCEPT, AUTHORIZATION, HeaderValue},
};
use thiserror::Error;
use tokio::{sync::Mutex, time::Instant};
use tracing::{debug, warn};

use super::{Secret, TokenFetcher, encoding::base64_encode, redact::redact_bytes};

/// A token is renewed this long before it expires, so that it is still valid
/// when the request carrying it reaches the upstream.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// How long a token without `expires_in` is used (RFC 6749 §5.1 makes the
/// field optional; the server's default is unknown, so stay short).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The longest a token is used before it is fetched again, whatever
/// `expires_in` says: bounds how long a revoked token keeps being sent, and
/// keeps `Instant` arithmetic far from overflow.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The fetch runs under the credential's lock: a token endpoint that never
/// answers must not hold every request for that credential forever.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Tokens remembered for redaction: the current one and the one before, since
/// a response to a request sent with the old token can arrive after renewal.
const REMEMBERED_TOKENS: usize = 2;
/// RFC 6749 §5.2 error codes are short; anything longer is not one.
const MAX_ERROR_CODE_LEN: usize = 64;

/// Why no token could be had. `Clone`, because callers waiting on the same
/// fetch all get its outcome. Holds no secret: server-sent text is checked
/// against the client secret before it is kept.
#[derive(Debug, Clone, Error)]
pub enum TokenError {
    #[error("failed to fetch a token from {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("the token endpoint {url} did not answer within {} s", .timeout.as_secs())]
    Timeout { url: String, timeout: Duration },
    #[error(
        "the token endpoint {url} refused the request with status {status}{}",
        .error.as_ref().map(|e| format!(" (error {e:?})")).unwrap_or_default()
    )]
    Rejected {
        url: String,
        status: u16,
        /// The `error` field of the JSON body (RFC 6749 §5.2), if it had one.
        error: Option<String>,
    },
    #[error("the token endpoint {url} sent an unusable response: {reason}")]
    BadResponse { url: String, reason: String },
}

/// One OAuth2 credential: its client, and its cached token.
pub(super) struct OAuth2Client {
    token_url: Uri,
    /// `token_url` as logs and errors show it (see [`shown_url`]).
    shown_url: String,
    client_id: Secret,
    client_secret: Secret,
    scope: Option<String>,
    /// Held across check and fetch, so that concurrent callers share one
    /// fetch instead of each hitting the token endpoint.
    state: Mutex<State>,
    /// Fetches finished (counted under the lock, once the outcome is in
    /// `state`); read before waiting for `state`, so that a caller can tell a
    /// fetch finished while it waited and take its outcome.
    finished: AtomicU64,
    /// The latest tokens, readable without waiting on a fetch in flight.
    recent: StdMutex<Vec<Secret>>,
}

#[derive(Default)]
struct State {
    token: Option<CachedToken>,
    last_error: Option<TokenError>,
}

struct CachedToken {
    token: Secret,
    expires_at: Instant,
}

impl std::fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Client")
            .field("token_url", &self.shown_url)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl OAuth2Client {
    pub(super) fn new(
        token_url: Uri,
        client_id: Secret,
        client_secret: Secret,
        scope: Option<String>,
    ) -> Self {
        Self {
            shown_url: shown_url(&token_url),
            token_url,
            client_id,
            client_secret,
            scope,
            state: Mutex::new(State::default()),
            finished: AtomicU64::new(0),
            recent: StdMutex::new(Vec::new()),
        }
    }

    /// The client secret and the latest tokens, for redaction. The client
    /// secret is in it because nothing but a leak could put it in a response.
    pub(super) fn known_secrets(&self) -> Vec<Secret> {
        let mut secrets = vec![self.client_secret.clone()];
        secrets.extend(lock(&self.recent).iter().cloned());
        secrets
    }

    /// A token valid for at least [`REFRESH_MARGIN`] more, fetched if the
    /// cached one is not. `fetches` counts fetches across the store.
    pub(super) async fn token(
        &self,
        fetcher: &dyn TokenFetcher,
        fetches: &AtomicU64,
    ) -> Result<Secret, TokenError> {
        let seen = self.finished.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some(cached) = &state.token
            && cached.expires_at > now + REFRESH_MARGIN
        {
            return Ok(cached.token.clone());
        }
        // A fetch ended while we waited for the lock: its outcome is as
        // fresh as ours would be. Without this, callers queued behind a
        // failing endpoint would each wait out their own fetch in turn.
        if self.finished.load(Ordering::Acquire) != seen {
            // After a failed renewal, the fetching caller fell back to the
            // old token if it was not expired yet; so do we.
            if let Some(cached) = &state.token
                && cached.expires_at > now
            {
                return Ok(cached.token.clone());
            }
            if let Some(error) = &state.last_error {
                return Err(error.clone());
            }
        }
        fetches.fetch_add(1, Ordering::Relaxed);
        let outcome = self.fetch(fetcher).await;
        // Still under the lock: whoever sees the new count finds the outcome.
        self.finished.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok((token, lifetime)) => {
                debug!(url = %self.shown_url, lifetime = ?lifetime, "fetched an oauth2 token");
                state.token = Some(CachedToken {
                    token: token.clone(),
                    expires_at: Instant::now() + lifetime,
                });
                state.last_error = None;
                let mut recent = lock(&self.recent);
                recent.insert(0, token.clone());
                recent.truncate(REMEMBERED_TOKENS);
                Ok(token)
            }
            Err(error) => {
                state.last_error = Some(error.clone());
                // The old token is inside the margin but not expired yet:
                // better to use it than to fail the request outright.
                match &state.token {
                    Some(cached) if cached.expires_at > Instant::now() => {
                        warn!(%error, "failed to renew an oauth2 token; using the old one until it expires");
                        Ok(cached.token.clone())
                    }
                    _ => Err(error),
                }
            }
        }
    }

    async fn fetch(&self, fetcher: &dyn TokenFetcher) -> Result<(Secret, Duration), TokenError> {
        let mut body = String::from("grant_type=client_credentials");
        if let Some(scope) = &self.scope {
            body.push_str("&scope=");
            body.push_str(&crate::percent::encode_form(scope));
        }
        // RFC 6749 §2.3.1: id and secret are form-encoded before they are
        // joined, so that a ':' in the id cannot shift the split.
        let basic = format!(
            "{}:{}",
            crate::percent::encode_form(self.client_id.expose()),
            crate::percent::encode_form(self.client_secret.expose())
        );
        let mut auth = HeaderValue::try_from(format!("Basic {}", base64_encode(basic.as_bytes())))
            .expect("base64 is a valid header value");
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));

        let url = &self.shown_url;
        let (status, bytes) = match tokio::time::timeout(
            FETCH_TIMEOUT,
            fetcher.post_form(&self.token_url, headers, body),
        )
        .await
        {
            Err(_) => {
                return Err(TokenError::Timeout {
                    url: url.clone(),
                    timeout: FETCH_TIMEOUT,
                });
            }
            Ok(Err(reason)) => {
                return Err(TokenError::Fetch {
                    url: url.clone(),
                    reason: self.scrub(reason),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        let bad = |reason: String| TokenError::BadResponse {
            url: url.clone(),
            reason,
        };
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if !(200..300).contains(&status) {
            return Err(TokenError::Rejected {
                url: url.clone(),
                status,
                error: json
                    .as_ref()
                    .and_then(|j| j.get("error")?.as_str())
                    .and_then(|e| self.server_text(e)),
            });
        }
        // Field by field with fixed messages: serde's own errors quote the
        // input, which here is the token.
        let json = json.ok_or_else(|| bad("the body is not JSON".into()))?;
        let token = match json.get("access_token").and_then(|t| t.as_str()) {
            Some(t) if !t.is_empty() => Secret::new(t.to_owned()),
            _ => return Err(bad("no access_token string".into())),
        };
        let token_type = json.get("token_type").and_then(|t| t.as_str());
        // RFC 6749 §5.1: token_type is case-insensitive.
        if !token_type.is_some_and(|t| t.eq_ignore_ascii_case("bearer")) {
            let shown = token_type
                .and_then(|t| self.server_text(t))
                .map_or_else(|| "missing or unreadable".to_owned(), |t| format!("{t:?}"));
            return Err(bad(format!("token_type {shown} is not bearer")));
        }
        let lifetime = match json.get("expires_in") {
            None | Some(serde_json::Value::Null) => DEFAULT_LIFETIME,
            // Some servers send it as a string; the value is the same.
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str()?.parse().ok())
                .map(|s| Duration::from_secs(s).min(MAX_LIFETIME))
                .ok_or_else(|| bad("expires_in is not a number of seconds".into()))?,
        };
        Ok((token, lifetime))
    }

    /// Server-sent text fit for an error message: an RFC 6749 §5.2 style
    /// code (printable ASCII without `"` and `\`), short, and not holding the
    /// client secret (a broken server could echo the request).
    fn server_text(&self, text: &str) -> Option<String> {
        let ok = !text.is_empty()
            && text.len() <= MAX_ERROR_CODE_LEN
            && text
                .bytes()
                .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e))
            && !text.contains(self.client_secret.expose());
        ok.then(|| text.to_owned())
    }

    /// The fetcher's error text, with the client secret cut out should it be
    /// in there despite the trait's contract.
    fn scrub(&self, reason: String) -> String {
        match redact_bytes(reason.as_bytes(), std::slice::from_ref(&self.client_secret)) {
            Some(redacted) => String::from_utf8_lossy(&redacted).into_owned(),
            None => reason,
        }
    }
}

/// The token URL as errors show it: scheme, host, port and path. Userinfo
/// (`https://id:secret@host`) and the query could carry credentials.
pub(super) fn shown_url(url: &Uri) -> String {
    let host = url.host().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{host}{port}{}",
        url.scheme_str().unwrap_or("https"),
        url.path()
    )
}

/// The list is only ever pushed to and copied: a panic while it was held
/// cannot have left it half-written.
fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_url_leaves_out_userinfo_and_query() {
        let url: Uri = "https://id:pw@auth.example.com:8443/oauth/token?k=v"
            .parse()
            .unwrap();
        assert_eq!(shown_url(&url), "https://auth.example.com:8443/oauth/token");
    }

    #[test]
    fn server_text_is_kept_only_if_harmless() {
        let client = OAuth2Client::new(
            Uri::from_static("https://auth.example.com/token"),
            Secret::new("id".into()),
            Secret::new("client-secret".into()),
            None,
        );
        assert_eq!(
            client.server_text("invalid_scope").as_deref(),
            Some("invalid_scope")
        );
        assert_eq!(client.server_text(r"bad\"), None);
        assert_eq!(client.server_text(&"x".repeat(65)), None);
        assert_eq!(client.server_text("echo client-secret"), None);
        assert_eq!(
            client.scrub("tls error sending client-secret".into()),
            "tls error sending [redacted]"
        );
    }
}
