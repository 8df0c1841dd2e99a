//! Identity tokens: a short-lived JWT in which agentguard asserts which
//! agent (and, from the kernel, which cgroup and uid) is asking, for an
//! authorization server that exchanges it (RFC 8693 `subject_token` or
//! `actor_token`) or takes it as a grant (RFC 7523 §2.1 `assertion`).
//!
//! Signed with a key of its own, ES256 whatever request-bound tokens use
//! (`keys.rs`), and published in the same JWKS, so that an authorization
//! server verifies it through agentguard's JWKS. It carries
//! no request binding: it is spent at the token endpoint, never sent to a
//! tool, and lives [`IDENTITY_TTL`].

use std::time::Duration;

use serde::Serialize;

use super::{KernelClaims, Minter, b64url, now_secs, subject};
use crate::credentials::{IdentityIssuer, IdentityRequest};

/// Long enough to reach the token endpoint, short enough that a token
/// copied from its logs is worth nothing.
pub const IDENTITY_TTL: Duration = Duration::from_secs(60);

/// RFC 7523 §3 and RFC 7519 §4.1 claims.
#[derive(Debug, Serialize)]
struct IdentityClaims<'a> {
    iss: String,
    sub: String,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    agentguard: Option<KernelClaims>,
}

impl IdentityIssuer for Minter {
    fn identity_token(&self, req: &IdentityRequest<'_>) -> Result<String, String> {
        let now = now_secs();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| format!("no randomness for jti: {e}"))?;
        let claims = IdentityClaims {
            iss: self.issuer(),
            sub: subject(self.trust_domain(), req.agent),
            aud: req.audience,
            iat: now,
            nbf: now,
            exp: now + IDENTITY_TTL.as_secs(),
            jti: b64url(&jti),
            agentguard: req.kernel.map(|(cgroup, uid)| KernelClaims {
                agent: req.agent.to_owned(),
                cgroup: cgroup.to_owned(),
                uid,
            }),
        };
        self.sign_identity(&claims)
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};

    use super::*;
    use crate::token::{KeyRole, KeyStore, SigningAlgorithm};

    /// Signed with the identity key (ES256), not with the request-bound
    /// tokens' key (EdDSA by default), and verifiable through the JWKS.
    #[test]
    fn identity_tokens_verify_through_the_jwks_and_name_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let minter = Minter::new(
            KeyStore::load_or_create(dir.path(), KeyRole::Request, None).unwrap(),
            KeyStore::load_or_create(dir.path(), KeyRole::Identity, Some(SigningAlgorithm::Es256))
                .unwrap(),
            "example.org",
        );
        assert_eq!(minter.algorithm(), jsonwebtoken::Algorithm::EdDSA);
        let token = minter
            .identity_token(&IdentityRequest {
                agent: "ops",
                kernel: Some(("agentguard/ops", 1000)),
                audience: "https://idp.example.org/token",
            })
            .unwrap();
        let jwks: JwkSet = minter.jwks();
        let header = decode_header(&token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
        let kid = header.kid.unwrap();
        assert_eq!(kid, minter.identity_kid());
        assert_ne!(kid, minter.kid());
        let key = DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["https://idp.example.org/token"]);
        validation.set_issuer(&["spiffe://example.org/agentguard"]);
        let claims = decode::<serde_json::Value>(&token, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "spiffe://example.org/agent/ops");
        assert_eq!(claims["agentguard"]["cgroup"], "agentguard/ops");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        // No request binding: it is for the token endpoint only.
        assert!(claims.get("htu").is_none() && claims.get("rh").is_none());
    }
}
