//! Signing tokens for tests, examples and benchmarks (feature `testing`).
//! In production agentguard mints them; this issuer signs the same claims
//! the same way (JWS compact, ES256 or EdDSA, `kid` the key's RFC 7638
//! thumbprint) with a key that lives only in memory.

use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};

use crate::{Claims, RequestBinding, b64url, now_secs};

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// An issuer with one fresh key.
pub struct TestIssuer {
    issuer: String,
    kid: String,
    key: Key,
    jwk: Jwk,
}

impl TestIssuer {
    /// An ES256 issuer named `issuer`.
    pub fn es256(issuer: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a key ring just made");
        // Uncompressed point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        });
        Self::new(issuer, Key::Es256(pair), jwk)
    }

    /// An EdDSA (Ed25519) issuer named `issuer`.
    pub fn eddsa(issuer: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a key ring just made");
        let jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "x": b64url(pair.public_key().as_ref()),
        });
        Self::new(issuer, Key::EdDsa(pair), jwk)
    }

    fn new(issuer: &str, key: Key, jwk: serde_json::Value) -> Self {
        let mut jwk: Jwk = serde_json::from_value(jwk).expect("a JWK");
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).expect("thumbprint");
        jwk.common.key_id = Some(kid.clone());
        Self {
            issuer: issuer.to_owned(),
            kid,
            key,
            jwk,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as a JWKS.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk.clone()],
        }
    }

    /// Claims as agentguard mints them for `agent` calling `binding` at
    /// `audience`: now, for `ttl_secs`, a fresh `jti`.
    pub fn claims(
        &self,
        agent: &str,
        audience: &str,
        scope: &str,
        binding: &RequestBinding,
        ttl_secs: u64,
    ) -> Claims {
        let now = now_secs();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).expect("randomness for a jti");
        Claims {
            iss: self.issuer.clone(),
            sub: format!("spiffe://agentguard.test/agent/{agent}"),
            aud: audience.to_owned(),
            scope: scope.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl_secs,
            jti: b64url(&jti),
            htm: binding.method.clone(),
            htu: binding.htu().expect("an http(s) binding"),
            rh: binding.request_hash(),
            act: None,
            agentguard: None,
        }
    }

    /// A token for `binding` ([`Self::claims`], 60 s).
    pub fn mint(&self, audience: &str, scope: &str, binding: &RequestBinding) -> String {
        self.sign(&self.claims("bot", audience, scope, binding, 60))
    }

    /// Signs any claims (expired, doctored, ...).
    pub fn sign(&self, claims: &Claims) -> String {
        self.sign_with_header(
            &serde_json::json!({ "typ": "JWT", "alg": self.alg(), "kid": self.kid }),
            claims,
        )
    }

    /// Signs `claims` under any header (a missing `kid`, a wrong `alg`).
    pub fn sign_with_header(&self, header: &serde_json::Value, claims: &Claims) -> String {
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(header).expect("json")),
            b64url(&serde_json::to_vec(claims).expect("json"))
        );
        let signature = match &self.key {
            Key::Es256(k) => k
                .sign(&SystemRandom::new(), input.as_bytes())
                .expect("ES256 signing")
                .as_ref()
                .to_vec(),
            Key::EdDsa(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64url(&signature))
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::EdDsa(_) => "EdDSA",
        }
    }
}
