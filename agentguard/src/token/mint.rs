//! Minting a token for one request.

use std::{sync::RwLock, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::JwkSet;

use super::{
    Act, Claims, KernelClaims, KeyError, KeyRole, KeyStore, MAX_TTL, RequestBinding,
    SigningAlgorithm, b64url, issuer, now_secs, subject,
};

/// Signs request-bound tokens with one key and identity tokens
/// (`identity.rs`) with another ([`super::KeyRole`]).
#[derive(Debug)]
pub struct Minter {
    trust_domain: String,
    keys: RwLock<KeyStore>,
    identity_keys: RwLock<KeyStore>,
}

/// What a token is minted for.
#[derive(Debug, Clone)]
pub struct MintRequest<'a> {
    pub agent: &'a str,
    pub audience: &'a str,
    pub scope: &'a str,
    pub ttl: Duration,
    pub binding: &'a RequestBinding,
    pub on_behalf_of: Option<&'a str>,
    /// The kernel's view of the caller (cgroup path, uid), when known.
    pub kernel: Option<(&'a str, u32)>,
}

/// A signed token and the claims in it.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub claims: Claims,
}

impl Minter {
    /// `keys` signs request-bound tokens, `identity_keys` identity tokens.
    pub fn new(keys: KeyStore, identity_keys: KeyStore, trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            keys: RwLock::new(keys),
            identity_keys: RwLock::new(identity_keys),
        }
    }

    /// The minter of a state directory: its request-bound token key (of
    /// `alg`; see [`KeyStore::load_or_create`] for None) and its identity
    /// token key, always ES256.
    pub fn load_or_create(
        state_dir: &std::path::Path,
        alg: Option<SigningAlgorithm>,
        trust_domain: &str,
    ) -> Result<Self, KeyError> {
        // A state directory from before identity tokens had a key of their
        // own signed them with the request-bound tokens' key.
        let upgraded = KeyStore::exists(state_dir, KeyRole::Request)?
            && !KeyStore::exists(state_dir, KeyRole::Identity)?;
        let keys = KeyStore::load_or_create(state_dir, KeyRole::Request, alg)?;
        let identity =
            KeyStore::load_or_create(state_dir, KeyRole::Identity, Some(SigningAlgorithm::Es256))?;
        if upgraded {
            tracing::warn!(
                identity_kid = identity.kid(),
                "identity tokens now have a signing key of their own: an authorization server that keeps a copy of the JWKS (a file, a pinned key) must take the new key"
            );
        }
        Ok(Self::new(keys, identity, trust_domain))
    }

    pub fn issuer(&self) -> String {
        issuer(&self.trust_domain)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The JWS `alg` of the current request-bound token key (ES256 or
    /// EdDSA).
    pub fn algorithm(&self) -> jsonwebtoken::Algorithm {
        read(&self.keys).algorithm().jwt()
    }

    /// The current request-bound token key's id.
    pub fn kid(&self) -> String {
        read(&self.keys).kid().to_owned()
    }

    /// The current identity token key's id.
    pub fn identity_kid(&self) -> String {
        read(&self.identity_keys).kid().to_owned()
    }

    /// Both keys' public halves, the request-bound tokens' first (as
    /// [`super::published_jwks`] reads them from the state directory).
    pub fn jwks(&self) -> JwkSet {
        let mut keys = Vec::new();
        read(&self.keys).publish_into(&mut keys);
        read(&self.identity_keys).publish_into(&mut keys);
        JwkSet { keys }
    }

    /// Switches both keys to new ones; tokens signed by the old ones keep
    /// verifying until they expire (kept as long for both: an authorization
    /// server may allow more clock skew than a token's lifetime). Each key's
    /// rotation stands alone: should the second fail, the first is done,
    /// and the error names the file that was not written.
    pub fn rotate(&self) -> Result<(), KeyError> {
        let keep_for = MAX_TTL + super::DEFAULT_LEEWAY;
        write(&self.keys).rotate(keep_for)?;
        write(&self.identity_keys).rotate(keep_for)
    }

    pub fn mint(&self, req: &MintRequest<'_>) -> Result<Minted, String> {
        let now = now_secs();
        let ttl = req.ttl.min(MAX_TTL).as_secs().max(1);
        let mut jti = [0u8; 16];
        // Unpredictable and never repeated, or no token: a replay store
        // keys on it.
        crate::random::fill(&mut jti).map_err(|e| format!("no randomness for jti: {e}"))?;
        let claims = Claims {
            iss: self.issuer(),
            sub: subject(&self.trust_domain, req.agent),
            aud: req.audience.to_owned(),
            scope: req.scope.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            jti: b64url(&jti),
            htm: req.binding.method.clone(),
            htu: req.binding.htu()?,
            rh: req.binding.request_hash(),
            act: req.on_behalf_of.map(|who| Act {
                sub: who.to_owned(),
            }),
            agentguard: req.kernel.map(|(cgroup, uid)| KernelClaims {
                agent: req.agent.to_owned(),
                cgroup: cgroup.to_owned(),
                uid,
            }),
        };
        let token = self.sign(&claims)?;
        Ok(Minted { token, claims })
    }

    /// Signs arbitrary claims with the current request-bound token key:
    /// request-bound tokens, and the expired and otherwise doctored tokens
    /// of tests.
    pub fn sign<C: serde::Serialize>(&self, claims: &C) -> Result<String, String> {
        sign_with(&read(&self.keys), claims)
    }

    /// Signs claims with the current identity token key (`identity.rs`).
    pub(super) fn sign_identity<C: serde::Serialize>(&self, claims: &C) -> Result<String, String> {
        sign_with(&read(&self.identity_keys), claims)
    }
}

fn read(keys: &RwLock<KeyStore>) -> std::sync::RwLockReadGuard<'_, KeyStore> {
    keys.read().unwrap_or_else(|p| p.into_inner())
}

fn write(keys: &RwLock<KeyStore>) -> std::sync::RwLockWriteGuard<'_, KeyStore> {
    keys.write().unwrap_or_else(|p| p.into_inner())
}

/// A JWS of `claims` signed with `keys`' current key.
fn sign_with<C: serde::Serialize>(keys: &KeyStore, claims: &C) -> Result<String, String> {
    // JWS compact serialisation (RFC 7515 §7.1), signed with the parsed key
    // the store keeps (see KeyStore::sign for why not jsonwebtoken::encode),
    // under the header made once with the key. Verification stays with
    // jsonwebtoken.
    let claims = serde_json::to_vec(claims).map_err(|e| format!("failed to sign a token: {e}"))?;
    let header = keys.encoded_header();
    let mut token = String::with_capacity(header.len() + claims.len() * 4 / 3 + 100);
    token.push_str(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&claims, &mut token);
    let signature = keys
        .sign(token.as_bytes())
        .map_err(|e| format!("failed to sign a token: {e}"))?;
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(&signature, &mut token);
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `token rotate` makes new keys for both kinds of token, the old ones
    /// still published.
    #[test]
    fn rotation_replaces_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let minter = Minter::load_or_create(dir.path(), None, "example.org").unwrap();
        let (kid, identity_kid) = (minter.kid(), minter.identity_kid());
        assert_ne!(kid, identity_kid);
        minter.rotate().unwrap();
        assert_ne!(minter.kid(), kid);
        assert_ne!(minter.identity_kid(), identity_kid);
        let published: Vec<String> = minter
            .jwks()
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(
            published,
            vec![minter.kid(), kid, minter.identity_kid(), identity_kid]
        );
    }
}
