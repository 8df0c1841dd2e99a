//! Delegated tokens: RFC 8693 token exchange and the RFC 7523 JWT-bearer
//! grant, with the agent's identity (an identity token agentguard signs,
//! verifiable through its JWKS) as what is exchanged.
//!
//! Token exchange sends the agent's identity token as `subject_token`; or,
//! for an agent acting for a person (`exec --on-behalf-of WHO`), that
//! person's token (the operator's file `<subject_tokens>/<WHO>`) as
//! `subject_token` and the agent's identity token as `actor_token`
//! (RFC 8693 §1.1 delegation). The JWT-bearer grant sends the agent's
//! identity token as `assertion` (how workload identity federation works at
//! the large clouds). The client authenticates by secret
//! (`client_secret_basic`) or by a JWT signed with its key
//! (`private_key_jwt`, RFC 7523 §2.2).
//!
//! Tokens are cached per (agent, subject) for each credential (whose
//! audience, resource and scope are fixed) until 30 s before they expire.
//! A failure is an error for the request: never a fallback to another
//! subject or to a token of broader reach.

mod client;
mod response;

use std::time::Duration;

use hyper::{
    HeaderMap, Uri,
    header::{ACCEPT, HeaderValue},
};
use thiserror::Error;

use client::Client;
pub use client::ClientError;
use response::parse_token_response;

use super::{IdentityIssuer, IdentityRequest, Secret, TokenFetcher, cache::ExpiringCache};
use crate::policy::{JwtBearerSource, Subject, TOKEN_EXCHANGE_GRANT, TokenExchangeSource};

/// RFC 7523 §2.1.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// RFC 8693 §3 token type identifiers.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The token endpoint must answer within this; the fetch holds every
/// request waiting for the same token.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// (agent, subject) pairs cached per credential.
const CACHE_ENTRIES: usize = 1024;

/// Why no delegated token could be had. `Clone`: callers waiting on one
/// exchange share its outcome. Holds no token and no secret.
#[derive(Debug, Clone, Error)]
pub enum ExchangeError {
    #[error("failed to sign the agent's identity token: {0}")]
    Identity(String),
    #[error(
        "the credential exchanges the token of the person the agent acts for, and this process was not started with `agentguard exec --on-behalf-of`"
    )]
    NoOnBehalfOf,
    #[error("no usable token for {who:?} (the person the agent acts for): {reason}")]
    NoSubjectToken { who: String, reason: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("failed to reach the token endpoint {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("the token endpoint {url} did not answer within {} s", .timeout.as_secs())]
    Timeout { url: String, timeout: Duration },
    #[error(
        "the token endpoint {url} refused the exchange with status {status}{}",
        .error.as_ref().map(|e| format!(" (error {e:?})")).unwrap_or_default()
    )]
    Rejected {
        url: String,
        status: u16,
        error: Option<String>,
    },
    #[error("the token endpoint {url} sent an unusable response: {reason}")]
    BadResponse { url: String, reason: String },
}

/// Who asks for a delegated token.
pub struct Requester<'a> {
    pub agent: &'a str,
    /// The kernel's view of the caller (cgroup, uid).
    pub kernel: Option<(&'a str, u32)>,
    /// Whom the caller acts for, if anyone (looked up only when needed).
    pub on_behalf_of: &'a (dyn Fn() -> Option<String> + Sync),
    pub issuer: &'a dyn IdentityIssuer,
}

enum Grant {
    Exchange(TokenExchangeSource),
    JwtBearer(JwtBearerSource),
}

/// One exchange or JWT-bearer credential of one agent, with its cache.
pub(super) struct Exchanger {
    grant: Grant,
    client: Client,
    shown_url: String,
    cache: ExpiringCache<String, Secret, ExchangeError>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("token_url", &self.shown_url)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    pub(super) fn token_exchange(source: &TokenExchangeSource) -> Result<Self, ClientError> {
        Ok(Self {
            client: Client::load(&source.client)?,
            shown_url: super::oauth2::shown_url(&source.token_url),
            grant: Grant::Exchange(source.clone()),
            cache: ExpiringCache::new(CACHE_ENTRIES),
        })
    }

    pub(super) fn jwt_bearer(source: &JwtBearerSource) -> Result<Self, ClientError> {
        Ok(Self {
            client: Client::load(&source.client)?,
            shown_url: super::oauth2::shown_url(&source.token_url),
            grant: Grant::JwtBearer(source.clone()),
            cache: ExpiringCache::new(CACHE_ENTRIES),
        })
    }

    fn token_url(&self) -> &Uri {
        match &self.grant {
            Grant::Exchange(s) => &s.token_url,
            Grant::JwtBearer(s) => &s.token_url,
        }
    }

    /// A token for `who`, from the cache or exchanged now.
    pub(super) async fn token(
        &self,
        who: &Requester<'_>,
        fetcher: &dyn TokenFetcher,
    ) -> Result<Secret, ExchangeError> {
        let person = match &self.grant {
            Grant::Exchange(TokenExchangeSource {
                subject: Subject::OnBehalfOf { tokens },
                ..
            }) => {
                let person = (who.on_behalf_of)().ok_or(ExchangeError::NoOnBehalfOf)?;
                Some((person, tokens))
            }
            _ => None,
        };
        let key = match &person {
            Some((person, _)) => format!("{}\0person:{person}", who.agent),
            None => who.agent.to_owned(),
        };
        self.cache
            .get(&key, || async {
                let form =
                    self.form(who, person.as_ref().map(|(p, d)| (p.as_str(), d.as_path())))?;
                self.post(form, fetcher).await
            })
            .await
    }

    /// Every token held now, and the client secret (for redaction).
    pub(super) fn known_secrets(&self) -> Vec<Secret> {
        let mut secrets = self.cache.current();
        secrets.extend(self.client.secret());
        secrets
    }

    /// Drops `agent`'s cached tokens (all its subjects).
    pub(super) fn forget_agent(&self, agent: &str) {
        self.cache.forget(|key| {
            key == agent
                || key
                    .strip_prefix(agent)
                    .is_some_and(|rest| rest.starts_with('\0'))
        });
    }

    pub(super) fn exchanges(&self) -> u64 {
        self.cache.fetches()
    }

    /// The request body (RFC 8693 §2.1 or RFC 7523 §2.1), without client
    /// authentication.
    fn form(
        &self,
        who: &Requester<'_>,
        person: Option<(&str, &std::path::Path)>,
    ) -> Result<Vec<(&'static str, String)>, ExchangeError> {
        let identity = |audience: &str| {
            who.issuer
                .identity_token(&IdentityRequest {
                    agent: who.agent,
                    kernel: who.kernel,
                    audience,
                })
                .map_err(ExchangeError::Identity)
        };
        let mut form = Vec::new();
        match &self.grant {
            Grant::Exchange(s) => {
                form.push(("grant_type", TOKEN_EXCHANGE_GRANT.to_owned()));
                if let Some(r) = &s.resource {
                    form.push(("resource", r.clone()));
                }
                if let Some(a) = &s.audience {
                    form.push(("audience", a.clone()));
                }
                if let Some(scope) = &s.scope {
                    form.push(("scope", scope.clone()));
                }
                if let Some(t) = &s.requested_token_type {
                    form.push(("requested_token_type", t.clone()));
                }
                let agent_token = identity(&s.assertion_audience)?;
                match person {
                    None => {
                        form.push(("subject_token", agent_token));
                        form.push(("subject_token_type", TOKEN_TYPE_JWT.to_owned()));
                    }
                    Some((person, dir)) => {
                        let token = person_token(person, dir)?;
                        let kind = if looks_like_jwt(token.expose()) {
                            TOKEN_TYPE_JWT
                        } else {
                            TOKEN_TYPE_ACCESS_TOKEN
                        };
                        form.push(("subject_token", token.expose().to_owned()));
                        form.push(("subject_token_type", kind.to_owned()));
                        form.push(("actor_token", agent_token));
                        form.push(("actor_token_type", TOKEN_TYPE_JWT.to_owned()));
                    }
                }
            }
            Grant::JwtBearer(s) => {
                form.push(("grant_type", JWT_BEARER_GRANT.to_owned()));
                form.push(("assertion", identity(&s.assertion_audience)?));
                if let Some(scope) = &s.scope {
                    form.push(("scope", scope.clone()));
                }
            }
        }
        Ok(form)
    }

    async fn post(
        &self,
        mut form: Vec<(&'static str, String)>,
        fetcher: &dyn TokenFetcher,
    ) -> Result<(Secret, Duration), ExchangeError> {
        let url = &self.shown_url;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        self.client
            .authenticate(&self.token_url().to_string(), &mut headers, &mut form)?;
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let (status, bytes) = match tokio::time::timeout(
            FETCH_TIMEOUT,
            fetcher.post_form(self.token_url(), headers, body),
        )
        .await
        {
            Err(_) => {
                return Err(ExchangeError::Timeout {
                    url: url.clone(),
                    timeout: FETCH_TIMEOUT,
                });
            }
            Ok(Err(reason)) => {
                return Err(ExchangeError::Fetch {
                    url: url.clone(),
                    reason: self.client.scrub(reason),
                });
            }
            Ok(Ok(answer)) => answer,
        };
        let exchange = matches!(self.grant, Grant::Exchange(_));
        parse_token_response(status, &bytes, exchange).map_err(|e| e.at(url, &self.client))
    }
}

/// A compact JWS: three base64url parts.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The operator's token for `person`: the file `<dir>/<person>`, root-owned
/// and private like any secret file. Names that are not plain file names
/// have no token.
fn person_token(person: &str, dir: &std::path::Path) -> Result<Secret, ExchangeError> {
    let plain = !person.is_empty()
        && person != "."
        && person != ".."
        && person
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b'-' | b'+'));
    let no = |reason: String| ExchangeError::NoSubjectToken {
        who: person.to_owned(),
        reason,
    };
    if !plain {
        return Err(no(
            "the name is not a plain file name, so it has no token file".into(),
        ));
    }
    super::source::read_file(&dir.join(person)).map_err(|e| no(e.to_string()))
}

#[cfg(test)]
mod tests;
