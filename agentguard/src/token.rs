//! Request-bound tokens: JWTs that agentguard mints for one call of one tool,
//! and the means for tool servers to verify them.
//!
//! A bearer token that a leaked log or a compromised agent can replay against
//! any tool is a universal pass. A token minted here is bound to the call it
//! was minted for, and [`Verifier`] checks all of the binding, not only the
//! signature and expiry (the known misapplication).
//!
//! # Claims
//!
//! | claim        | value |
//! |--------------|-------|
//! | `iss`        | `spiffe://<trust-domain>/agentguard` |
//! | `sub`        | `spiffe://<trust-domain>/agent/<agent name>` |
//! | `aud`        | the credential's `audience` |
//! | `scope`      | the credential's `scope` (space-separated, RFC 8693 §4.2) |
//! | `iat`, `nbf` | now (seconds since the epoch) |
//! | `exp`        | now + `ttl` (default 60 s, capped at [`MAX_TTL`]) |
//! | `jti`        | 128 random bits, base64url: unique per token |
//! | `htm`        | the request method (RFC 9449 §4.2) |
//! | `htu`        | the target URI without query and fragment, normalised ([`normalize_htu`]) |
//! | `rh`         | the request hash (below) |
//! | `act`        | `{ "sub": WHO }` (RFC 8693 §4.1) when the agent acts for someone |
//! | `agentguard` | `{ "agent", "cgroup", "uid" }`: the kernel's view of the caller |
//!
//! # The request hash (`rh`)
//!
//! ```text
//! rh = base64url(SHA-256(METHOD "\n" AUTHORITY "\n" PATH "\n" QUERY "\n" base64url(SHA-256(BODY))))
//! ```
//!
//! base64url without padding (RFC 4648 §5). `METHOD` is the method as sent
//! (case kept); `AUTHORITY` the lowercased host, with `:port` only when the
//! port is not the scheme's default (IPv6 literals in brackets); `PATH` the
//! path exactly as sent upstream (`/` when empty); `QUERY` the query string
//! exactly as sent, without `?` (empty when absent); `BODY` the body bytes as
//! sent (empty when absent). agentguard normalises the path before deciding
//! and sends the normalised one, so what is hashed is what the tool receives.
//! `htm`/`htu` are there for DPoP-aware verifiers; `rh` is what binds query
//! and body.
//!
//! `keys` keeps the signing key, `mint` makes tokens, `verify` and `replay`
//! check them.

mod claims;
mod keys;
mod mint;
mod obo;
mod replay;
mod report;
mod serve;
mod verify;

use std::time::Duration;

pub use claims::{Act, Claims, KernelClaims, RequestBinding, normalize_htu, request_hash};
pub use keys::{KeyError, KeyStore, SigningAlgorithm};
pub use mint::{MintRequest, Minted, Minter};
pub use obo::{OnBehalfOf, validate_who};
pub use replay::ReplayCache;
pub use report::{REPORT_ROUTE, Reporter, VerifyReport};
pub use serve::{JWKS_PATH, ProxyTimeouts, VerifyProxy, read_certs, serve_jwks, tls_acceptor};
pub use verify::{JwksSource, Verifier, VerifierConfig, VerifyError};

/// The trust domain in `sub` and `iss` unless `--trust-domain` says otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "agentguard.local";
/// A token's lifetime unless the credential names one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// The longest lifetime a credential may ask for: a token is for one call.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Clock skew tolerated on `exp`, `nbf` and `iat` by [`Verifier`].
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// The issuer URI of an agentguard in `trust_domain`.
pub fn issuer(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/agentguard")
}

/// The subject URI of `agent` in `trust_domain` (a SPIFFE ID).
pub fn subject(trust_domain: &str, agent: &str) -> String {
    format!("spiffe://{trust_domain}/agent/{agent}")
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// base64url without padding (RFC 4648 §5), as JOSE uses it.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
