//! The secrets the proxy holds for agents, and the three things done with
//! them: put into a request the policy allows, looked for (as placeholders) in
//! what an agent sends, and cut out of what comes back.
//!
//! Agents never see a secret. They are given a placeholder
//! ([`placeholder_for`]) where an SDK insists on a key; the proxy finds it,
//! drops it, and injects the real value only into requests to the tool the
//! credential is bound to.
//!
//! `source` reads file and env secrets, `oauth2` fetches and caches tokens,
//! `exchange` gets delegated tokens (RFC 8693 token exchange, RFC 7523
//! JWT-bearer grant), `process` runs credential helpers, `cache` keeps what
//! those fetch until shortly before it expires, `store` holds every agent's
//! credentials, `inject`, `placeholder`, `placeholder_rewrite` and `redact`
//! work on requests and responses.

mod cache;
mod encoding;
mod exchange;
mod inject;
mod oauth2;
mod placeholder;
mod placeholder_rewrite;
pub mod process;
mod redact;
pub mod sigv4;
mod source;
mod store;

use std::{future::Future, pin::Pin, sync::Arc};

use hyper::{HeaderMap, Uri, body::Bytes};
use thiserror::Error;

pub use exchange::{ExchangeError, Requester};
pub use inject::{InjectError, inject};
pub use oauth2::TokenError;
pub use placeholder::find_placeholders;
pub use placeholder_rewrite::{Placement, RewriteError, place_secret};
pub use process::ProcessError;
pub use redact::{Redactor, StreamRedactor, redact_bytes, redact_headers};
pub use source::SourceError;
pub use store::CredentialStore;

/// What every placeholder starts with. Unusual enough never to occur by
/// accident in a request.
pub const PLACEHOLDER_PREFIX: &str = "agentguard-placeholder:";

/// The stand-in an agent is given instead of a credential's secret:
/// `agentguard-placeholder:<credential id>`.
pub fn placeholder_for(credential_id: &str) -> String {
    format!("{PLACEHOLDER_PREFIX}{credential_id}")
}

/// A secret value: an API key, a password, an access token.
///
/// Its `Debug` prints `Secret([redacted])` and it has no `Display` and no
/// `Serialize`, so that it cannot reach a log line or a status reply by
/// accident; [`Secret::expose`] is the one way to the bytes, easy to audit.
/// Shared (`Arc`), because every response is checked against every secret of
/// its agent. Not zeroed on drop: the crate has no `zeroize`, and the value
/// sits in request buffers the proxy does not control anyway.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Fetches OAuth2 tokens: the daemon implements it with its verified upstream
/// TLS client, so that token requests get the same certificate checks as any
/// other upstream connection.
pub trait TokenFetcher: Send + Sync + 'static {
    /// POSTs an `application/x-www-form-urlencoded` body to `url` with the
    /// given extra headers and returns (status, body). Errors are text, and
    /// must not contain the secret (the `authorization` header is marked
    /// sensitive).
    fn post_form(&self, url: &Uri, headers: HeaderMap, body: String) -> TokenFuture<'_>;
}

/// What an identity token is signed for: the agent (and the kernel's view
/// of the caller) and the party that will verify it.
#[derive(Debug, Clone, Copy)]
pub struct IdentityRequest<'a> {
    pub agent: &'a str,
    /// (cgroup path, uid), when known.
    pub kernel: Option<(&'a str, u32)>,
    /// The `aud`: the token endpoint that takes it.
    pub audience: &'a str,
}

/// Signs agents' identity tokens (the daemon's token minter does, with the
/// key its JWKS publishes), for token exchange and the JWT-bearer grant.
pub trait IdentityIssuer: Send + Sync {
    fn identity_token(&self, req: &IdentityRequest<'_>) -> Result<String, String>;
}

/// What [`TokenFetcher::post_form`] returns: (status, body), or an error as
/// text.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<(u16, Bytes), String>> + Send + 'a>>;

/// Everything that can go wrong with a credential. No variant holds a secret
/// value, only where it came from: these messages are logged and shown to
/// operators.
#[derive(Debug, Error)]
pub enum CredentialError {
    #[error("agent {agent}: credential {credential}: {what}: {source}")]
    Source {
        agent: String,
        credential: String,
        /// Which value of the credential: `secret`, `oauth2 client id` or
        /// `oauth2 client secret`.
        what: &'static str,
        #[source]
        source: SourceError,
    },
    #[error("agent {agent}: credential {credential}: {source}")]
    Token {
        agent: String,
        credential: String,
        #[source]
        source: TokenError,
    },
    /// A delegated token (token exchange, JWT-bearer grant) could not be
    /// had; a credential helper or AWS credentials likewise.
    #[error("agent {agent}: credential {credential}: {source}")]
    Exchange {
        agent: String,
        credential: String,
        #[source]
        source: ExchangeError,
    },
    #[error("agent {agent}: credential {credential}: credential helper: {source}")]
    Process {
        agent: String,
        credential: String,
        #[source]
        source: ProcessError,
    },
    #[error("agent {agent}: credential {credential}: {source}")]
    Aws {
        agent: String,
        credential: String,
        #[source]
        source: sigv4::AwsError,
    },
    #[error(
        "agent {agent}: credential {credential} signs AWS requests; it has no secret to inject"
    )]
    SignsAws { agent: String, credential: String },
    #[error("agent {agent}: credential {credential} is not an aws credential")]
    NotAws { agent: String, credential: String },
    #[error("agent {agent} is not in the policy set")]
    UnknownAgent { agent: String },
    #[error("agent {agent} has no credential {credential}")]
    UnknownCredential { agent: String, credential: String },
    #[error("agent {agent}: credential {credential} is a token minted for each request")]
    MintedPerRequest { agent: String, credential: String },
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
}

/// All errors found while loading a policy set's credentials: operators fix
/// them in one pass.
pub type CredentialErrors = crate::error_list::ErrorList<CredentialError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("sk-canary-1234".into());
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(s.expose(), "sk-canary-1234");
    }

    #[test]
    fn placeholder_has_prefix_and_id() {
        assert_eq!(placeholder_for("openai"), "agentguard-placeholder:openai");
    }
}
