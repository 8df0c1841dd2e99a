//! Verifying agentguard's request-bound tokens on the tool server's side:
//! signature, issuer, audience, lifetime, scope, the binding to the request
//! actually received (RFC 9449 `htm`/`htu` and agentguard's request hash),
//! and single use through a replay cache that may be shared by replicas.
//!
//! The crate's README (below) walks through a complete tool server.
//!
//! # Claims
//!
//! | claim        | value |
//! |--------------|-------|
//! | `iss`        | `spiffe://<trust-domain>/agentguard` |
//! | `sub`        | `spiffe://<trust-domain>/agent/<agent name>` |
//! | `aud`        | the credential's `audience` (for an MCP server: its canonical resource URI, RFC 8707) |
//! | `scope`      | the credential's `scope` (space-separated, RFC 8693 §4.2) |
//! | `iat`, `nbf` | when minted (seconds since the epoch) |
//! | `exp`        | `iat` + `ttl` (at most [`MAX_TTL`]) |
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
//! path exactly as sent (`/` when empty); `QUERY` the query string exactly
//! as sent, without `?` (empty when absent); `BODY` the body bytes as sent
//! (empty when absent). `htm`/`htu` are there for DPoP-aware verifiers;
//! `rh` is what binds query and body.
//!
//! # Origin binding
//!
//! A tool that runs as several instances under one audience should set
//! [`VerifierConfig::origin`] to the origin its clients use
//! (`https://tool.example.com`): `htu` and `rh` are then checked against
//! that origin rather than the `Host` the client sent, so a token captured
//! for one instance is refused at another that answers under another name.
//!
//! # Features
//!
//! - `fetch`: JWKS from an `https://` URL (or loopback `http://`), re-read
//!   for an unknown `kid`.
//! - `redis`: [`replay::RedisReplayStore`], a replay cache shared by
//!   replicas.
//! - `persistent`: [`replay::FileReplayStore`], a replay cache in a local
//!   file that survives restarts.
//! - `testing`: [`testing::TestIssuer`], which signs tokens for tests.
#![doc = include_str!("../README.md")]

mod binding;
mod challenge;
mod claims;
mod jwks;
pub mod metadata;
pub mod replay;
#[cfg(feature = "testing")]
pub mod testing;
mod verifier;

use std::time::Duration;

pub use binding::{Origin, RequestBinding, normalize_htu, request_hash};
pub use challenge::{BearerError, Challenge, bearer_token};
pub use claims::{Act, Claims, KernelClaims};
pub use jwks::{JwksError, JwksSource};
pub use verifier::{HeadChecked, Verifier, VerifierConfig, VerifyError};

/// The longest lifetime a token may have: a token is for one call.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// Clock skew tolerated on `exp`, `nbf` and `iat` unless configured.
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
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// base64url without padding (RFC 4648 §5), as JOSE uses it.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url(SHA-256(`body`)): the body's part of the request hash.
pub fn body_hash(body: &[u8]) -> String {
    use sha2::Digest as _;
    b64url(&sha2::Sha256::digest(body))
}
