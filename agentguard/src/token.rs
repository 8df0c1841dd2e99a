//! Request-bound tokens, the minting side: JWTs that agentguard mints for
//! one call of one tool, the key that signs them, and the JWKS that
//! publishes its public half.
//!
//! A bearer token that a leaked log or a compromised agent can replay against
//! any tool is a universal pass. A token minted here is bound to the call it
//! was minted for; the claims, the `htu` normalisation and the request hash
//! (`rh`) are defined once, in the `agentguard-verify` crate that tool
//! servers use to check them (its crate docs give the exact construction),
//! and re-exported here so that minting and checking cannot drift apart.
//!
//! `keys` keeps the signing key, `mint` makes tokens, `identity` the
//! agents' identity tokens for token exchange, `obo` knows whom an agent
//! acts for, `serve` publishes the JWKS.

mod identity;
mod keys;
mod mint;
mod obo;
pub(crate) mod serve;

use std::time::Duration;

pub use agentguard_verify::{
    Act, Claims, DEFAULT_LEEWAY, JwksSource, KernelClaims, MAX_TTL, Origin, RequestBinding,
    Verifier, VerifierConfig, VerifyError, issuer, normalize_htu, request_hash, subject,
};
pub use keys::{KeyError, KeyRole, KeyStore, SigningAlgorithm, published_jwks};
pub use mint::{MintRequest, Minted, Minter};
pub use obo::{OnBehalfOf, validate_who};
pub use serve::{JWKS_PATH, JwksTls, read_certs, serve_jwks, tls_acceptor};

/// The trust domain in `sub` and `iss` unless `--trust-domain` says otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "agentguard.local";
/// A token's lifetime unless the credential names one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

pub(crate) use agentguard_verify::{b64url, now_secs};
