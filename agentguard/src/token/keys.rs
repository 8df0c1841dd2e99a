//! The token signing keys: made on first start in `<state-dir>/token/`, with
//! the public keys of retired keys kept for the JWKS until their tokens have
//! expired.
//!
//! Two keys, one per kind of token ([`KeyRole`]), each with the algorithm
//! its verifiers take:
//!
//! - `signing.key`: signs request-bound tokens, which tool servers verify
//!   (agentguard-verify, PyJWT and jose take both algorithms): EdDSA
//!   (Ed25519, RFC 8037) for a new key, the cheaper to sign, or ES256
//!   (P-256, RFC 7518 §3.4) when asked; a key made before keeps its
//!   algorithm unless told otherwise.
//! - `identity.key`: signs identity tokens, which authorization servers
//!   verify: always ES256, which they take without being told (Authlib's
//!   joserfc, for one, refuses `EdDSA` unless it is allowed, as RFC 9864
//!   deprecates that name).
//! - `retired.json`, `identity-retired.json`: public JWKs of each key's
//!   predecessors, each with the time after which no token it signed can
//!   still be valid (mode 0600; public, but nothing else needs to read it).
//!
//! All private keys are PKCS#8 PEM, mode 0600. The `kid` is the key's JWK
//! thumbprint (RFC 7638), so it follows from the key and needs no file of
//! its own.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use jsonwebtoken::{
    Algorithm, EncodingKey,
    jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::now_secs;

const DIR_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is mode {mode:o}: a signing key must not be readable by group or others")]
    Insecure { path: PathBuf, mode: u32 },
    #[error("failed to generate a signing key: {0}")]
    Generate(String),
    #[error("{path}: not a usable ES256 or EdDSA key: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// How a signing key signs. agentguard-verify, PyJWT and jose verify both
/// (tests/tests/token_verifiers.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256: what JWT libraries and authorization
    /// servers verify without being told to.
    Es256,
    /// Ed25519: the cheaper to sign (7.0 µs against ES256's 11.9 µs a
    /// token, one core of the bench machine) and to verify.
    EdDsa,
}

impl SigningAlgorithm {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "es256" => Ok(Self::Es256),
            "eddsa" | "ed25519" => Ok(Self::EdDsa),
            _ => Err(format!("{s:?} is not a signing algorithm (es256, eddsa)")),
        }
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }
}

/// Which tokens a key signs: each kind has a key (and files) of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    /// Request-bound tokens, for tool servers.
    Request,
    /// Identity tokens, for authorization servers (token exchange,
    /// JWT-bearer grants).
    Identity,
}

impl KeyRole {
    fn key_file(self) -> &'static str {
        match self {
            // The name from before there were two keys, when this one
            // signed both kinds: a state directory made then keeps it.
            Self::Request => "signing.key",
            Self::Identity => "identity.key",
        }
    }

    fn retired_file(self) -> &'static str {
        match self {
            Self::Request => "retired.json",
            Self::Identity => "identity-retired.json",
        }
    }

    /// The algorithm of a new key when none is asked for.
    fn default_algorithm(self) -> SigningAlgorithm {
        match self {
            Self::Request => SigningAlgorithm::EdDsa,
            Self::Identity => SigningAlgorithm::Es256,
        }
    }
}

/// One signing key with its public JWK.
struct SigningKey {
    alg: SigningAlgorithm,
    kid: String,
    signer: Signer,
    jwk: Jwk,
    /// The JWS protected header every token this key signs carries
    /// (`alg`, `kid`, `typ`), base64url-encoded: made once with the key,
    /// not serialised and encoded again for every token.
    header: String,
}

/// The parsed private key, ready to sign.
enum Signer {
    Es256(aws_lc_rs::signature::EcdsaKeyPair),
    EdDsa(aws_lc_rs::signature::Ed25519KeyPair),
}

impl Signer {
    /// The JWS signature (RFC 7515) over `message`: ES256's fixed-width
    /// r || s (RFC 7518 §3.4), or Ed25519's.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            Signer::Es256(key) => key
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ES256 signing failed".to_owned()),
            Signer::EdDsa(key) => key
                .try_sign(message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "EdDSA signing failed".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RetiredKey {
    jwk: Jwk,
    /// Seconds since the epoch after which its tokens are all expired.
    retire_at: u64,
}

/// One role's current signing key and its retired public keys.
pub struct KeyStore {
    dir: PathBuf,
    role: KeyRole,
    /// What [`KeyStore::rotate`] makes.
    alg: SigningAlgorithm,
    current: SigningKey,
    retired: Vec<RetiredKey>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("role", &self.role)
            .field("kid", &self.current.kid)
            .field("retired", &self.retired.len())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Opens `role`'s key in `<state_dir>/token/`, making the folder and the
    /// key if absent: of `alg`, or the role's default when `alg` is None. An
    /// existing key of another algorithm than `alg` is rotated out (its
    /// tokens verify until they expire), so the daemon signs with what it
    /// was told; with `alg` None an existing key stays as it is, so that an
    /// upgrade does not change what the tools' verifiers receive.
    pub fn load_or_create(
        state_dir: &Path,
        role: KeyRole,
        alg: Option<SigningAlgorithm>,
    ) -> Result<Self, KeyError> {
        let dir = state_dir.join("token");
        match fs::DirBuilder::new().mode(DIR_MODE).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(KeyError::Io {
                    action: "create",
                    path: dir,
                    source,
                });
            }
        }
        let key_path = dir.join(role.key_file());
        let current = if exists(&key_path)? {
            read_key(&key_path)?
        } else {
            // Checked before it is written, as a rotation does: a key the
            // signer and the JWKS read differently never reaches the disk,
            // where every later start would refuse it.
            let pem = generate(alg.unwrap_or(role.default_algorithm()))?;
            let key = parse_key(&key_path, &pem)?;
            write_private(&key_path, pem.as_bytes())?;
            key
        };
        let retired = read_retired(&dir.join(role.retired_file()))?;
        let mut store = Self {
            dir,
            role,
            alg: alg.unwrap_or(current.alg),
            current,
            retired,
        };
        if store.current.alg != store.alg {
            store.rotate(super::MAX_TTL + super::DEFAULT_LEEWAY)?;
        }
        Ok(store)
    }

    /// Whether `role`'s key has been made in `state_dir`.
    pub fn exists(state_dir: &Path, role: KeyRole) -> Result<bool, KeyError> {
        exists(&state_dir.join("token").join(role.key_file()))
    }

    /// Reads `role`'s keys without creating anything (`agentguard token
    /// jwks`); `None` if that key was never made.
    pub fn load(state_dir: &Path, role: KeyRole) -> Result<Option<Self>, KeyError> {
        let dir = state_dir.join("token");
        let key_path = dir.join(role.key_file());
        // Only the identity key can be missing from a state directory the
        // daemon has run on: one made before it existed.
        if role == KeyRole::Identity && !exists(&key_path)? {
            return Ok(None);
        }
        let current = read_key(&key_path)?;
        let retired = read_retired(&dir.join(role.retired_file()))?;
        Ok(Some(Self {
            dir,
            role,
            alg: current.alg,
            current,
            retired,
        }))
    }

    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// The algorithm of the current key (the JWS `alg` it signs with).
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.current.alg
    }

    /// The current key's JWS protected header, base64url-encoded.
    pub(super) fn encoded_header(&self) -> &str {
        &self.current.header
    }

    /// The JWS signature over `message` with the current key
    /// ([`Signer::sign`]).
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.current.signer.sign(message)
    }

    /// Replaces the signing key with a new one. The old public key stays in
    /// the JWKS for `keep_for` (the longest token lifetime plus leeway), so
    /// tokens it signed verify until they expire, and no longer.
    pub fn rotate(&mut self, keep_for: Duration) -> Result<(), KeyError> {
        let pem = generate(self.alg)?;
        let key_path = self.dir.join(self.role.key_file());
        let next = parse_key(&key_path, &pem)?;
        let now = now_secs();
        let mut retired: Vec<RetiredKey> = self
            .retired
            .iter()
            .filter(|r| r.retire_at > now)
            .cloned()
            .collect();
        retired.push(RetiredKey {
            jwk: self.current.jwk.clone(),
            retire_at: now + keep_for.as_secs(),
        });
        let retired_path = self.dir.join(self.role.retired_file());
        let json = serde_json::to_vec_pretty(&retired).map_err(|e| KeyError::Io {
            action: "serialise",
            path: retired_path.clone(),
            source: e.into(),
        })?;
        // Retired list first: a crash between the two writes leaves the old
        // key signing and also listed, never a key whose tokens cannot verify.
        write_private(&retired_path, &json)?;
        write_private(&key_path, pem.as_bytes())?;
        self.current = next;
        self.retired = retired;
        Ok(())
    }

    /// The public keys this role's tokens may be verified with: the current
    /// key and the retired keys whose tokens may still be valid. (The daemon
    /// publishes both roles' together: `Minter::jwks`, [`published_jwks`].)
    #[cfg(test)]
    pub fn jwks(&self) -> JwkSet {
        let mut keys = Vec::new();
        self.publish_into(&mut keys);
        JwkSet { keys }
    }

    /// Appends [`KeyStore::jwks`]'s keys to `keys`, the current one first.
    pub fn publish_into(&self, keys: &mut Vec<Jwk>) {
        let now = now_secs();
        keys.push(self.current.jwk.clone());
        keys.extend(
            self.retired
                .iter()
                .filter(|r| r.retire_at > now)
                .map(|r| r.jwk.clone()),
        );
    }
}

/// The JWKS of a state directory as the daemon publishes it: the
/// request-bound tokens' keys first, then the identity tokens' (`agentguard
/// token jwks`).
pub fn published_jwks(state_dir: &Path) -> Result<JwkSet, KeyError> {
    let mut keys = Vec::new();
    for role in [KeyRole::Request, KeyRole::Identity] {
        if let Some(store) = KeyStore::load(state_dir, role)? {
            store.publish_into(&mut keys);
        }
    }
    Ok(JwkSet { keys })
}

fn generate(alg: SigningAlgorithm) -> Result<String, KeyError> {
    match alg {
        SigningAlgorithm::Es256 => {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(pair.serialize_pem())
        }
        // A PKCS#8 v1 key (RFC 8410 §7: the seed only), which is what
        // jsonwebtoken reads; aws-lc's and dalek's own encodings are v2 (with
        // the public key) and are refused there.
        SigningAlgorithm::EdDsa => {
            use ed25519_dalek::pkcs8::{
                EncodePrivateKey as _, KeypairBytes, spki::der::pem::LineEnding,
            };
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| KeyError::Generate(e.to_string()))?;
            let pem = KeypairBytes {
                secret_key: seed,
                public_key: None,
            }
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
            Ok(pem.to_string())
        }
    }
}

/// Whether `path` exists; an error (a directory that cannot be searched) is
/// not taken for "no".
fn exists(path: &Path) -> Result<bool, KeyError> {
    path.try_exists().map_err(|source| KeyError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn read_key(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = fs::metadata(path).map_err(|source| KeyError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    let pem = fs::read_to_string(path).map_err(|source| KeyError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    parse_key(path, &pem)
}

fn parse_key(path: &Path, pem: &str) -> Result<SigningKey, KeyError> {
    let invalid = |reason: String| KeyError::Invalid {
        path: path.to_owned(),
        reason,
    };
    // The PEM label is PRIVATE KEY for both (PKCS#8): the key's own
    // algorithm identifier tells them apart, which each parser checks.
    let (alg, encoding) = match EncodingKey::from_ec_pem(pem.as_bytes()) {
        Ok(key) => (SigningAlgorithm::Es256, key),
        Err(ec) => match EncodingKey::from_ed_pem(pem.as_bytes()) {
            Ok(key) => (SigningAlgorithm::EdDsa, key),
            Err(ed) => return Err(invalid(format!("as ES256: {ec}; as EdDSA: {ed}"))),
        },
    };
    let mut jwk =
        Jwk::from_encoding_key(&encoding, alg.jwt()).map_err(|e| invalid(e.to_string()))?;
    let der = match rustls_pemfile::private_key(&mut pem.as_bytes()) {
        Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(der))) => der,
        _ => return Err(invalid("not a PKCS#8 private key".into())),
    };
    let signer = match alg {
        SigningAlgorithm::Es256 => aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.secret_pkcs8_der(),
        )
        .map(Signer::Es256),
        // v1 (seed only), as generate() writes it and as
        // Jwk::from_encoding_key above requires.
        SigningAlgorithm::EdDsa => {
            aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
                .map(Signer::EdDsa)
        }
    }
    .map_err(|e| invalid(e.to_string()))?;
    check_signer_matches(&signer, &jwk, alg).map_err(invalid)?;
    let kid = thumbprint(&jwk).map_err(invalid)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    let mut header = jsonwebtoken::Header::new(alg.jwt());
    header.kid = Some(kid.clone());
    let header = serde_json::to_vec(&header).map_err(|e| invalid(e.to_string()))?;
    Ok(SigningKey {
        alg,
        kid,
        signer,
        jwk,
        header: super::b64url(&header),
    })
}

/// Signs a probe with `signer` and verifies it with `jwk` as a tool's
/// verifier would (jsonwebtoken): the key that signs tokens (aws-lc-rs) and
/// the public key published for them (made by jsonwebtoken from the same
/// PEM) are read by two libraries, and a key they read differently would
/// have the daemon mint tokens no verifier accepts. Refused at start-up,
/// not discovered by the tools.
fn check_signer_matches(signer: &Signer, jwk: &Jwk, alg: SigningAlgorithm) -> Result<(), String> {
    const PROBE: &[u8] = b"agentguard signing key self-check";
    let signature = signer.sign(PROBE)?;
    let public = jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    match jsonwebtoken::crypto::verify(&super::b64url(&signature), PROBE, &public, alg.jwt()) {
        Ok(true) => Ok(()),
        Ok(false) => Err("its signature does not verify with its published public key".into()),
        Err(e) => Err(format!("its published public key does not verify: {e}")),
    }
}

/// The `kid` of a key: its JWK SHA-256 thumbprint (RFC 7638 §3), so that a
/// verifier can recompute it from the public key alone.
fn thumbprint(jwk: &Jwk) -> Result<String, String> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| e.to_string())
}

fn read_retired(path: &Path) -> Result<Vec<RetiredKey>, KeyError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(KeyError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Written beside and renamed over, so a reader never sees half a key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    crate::atomic_file::replace(path, bytes, KEY_MODE).map_err(|e| KeyError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a =
            KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(SigningAlgorithm::Es256))
                .unwrap();
        let mode = fs::metadata(dir.path().join("token/signing.key"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b =
            KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(SigningAlgorithm::Es256))
                .unwrap();
        assert_eq!(a.kid(), b.kid());
        let jwks = a.jwks();
        assert_eq!(jwks.keys.len(), 1);
        assert_eq!(jwks.keys[0].common.key_id.as_deref(), Some(a.kid()));
        // Only the public half is published.
        let text = serde_json::to_string(&jwks).unwrap();
        assert!(!text.contains("\"d\""), "{text}");
    }

    #[test]
    fn rotation_keeps_the_old_key_until_its_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys =
            KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(SigningAlgorithm::Es256))
                .unwrap();
        let old = keys.kid().to_owned();
        keys.rotate(Duration::from_secs(120)).unwrap();
        assert_ne!(keys.kid(), old);
        let kids = |k: &KeyStore| -> Vec<String> {
            k.jwks()
                .keys
                .iter()
                .filter_map(|j| j.common.key_id.clone())
                .collect()
        };
        assert_eq!(kids(&keys), vec![keys.kid().to_owned(), old.clone()]);
        // A restart sees the same.
        let again = KeyStore::load(dir.path(), KeyRole::Request)
            .unwrap()
            .unwrap();
        assert_eq!(kids(&again), kids(&keys));
        // A key retired with nothing left to keep is not published.
        let second = keys.kid().to_owned();
        keys.rotate(Duration::ZERO).unwrap();
        assert!(!kids(&keys).contains(&second));
        assert_eq!(kids(&keys), vec![keys.kid().to_owned(), old]);
    }

    #[test]
    fn eddsa_keys_sign_and_a_change_of_algorithm_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let es =
            KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(SigningAlgorithm::Es256))
                .unwrap();
        assert_eq!(es.algorithm(), SigningAlgorithm::Es256);
        assert_eq!(
            es.jwks().keys[0].common.key_algorithm,
            Some(jsonwebtoken::jwk::KeyAlgorithm::ES256)
        );
        let ed =
            KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(SigningAlgorithm::EdDsa))
                .unwrap();
        assert_eq!(ed.algorithm(), SigningAlgorithm::EdDsa);
        let jwks = ed.jwks();
        assert_eq!(
            jwks.keys.len(),
            2,
            "the ES256 key stays until its tokens expire"
        );
        assert_eq!(
            jwks.keys[0].common.key_algorithm,
            Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA)
        );
        assert_eq!(jwks.keys[1].common.key_id.as_deref(), Some(es.kid()));
        // Reloaded as it is, whatever was asked before.
        let again = KeyStore::load(dir.path(), KeyRole::Request)
            .unwrap()
            .unwrap();
        assert_eq!(again.algorithm(), SigningAlgorithm::EdDsa);
        assert_eq!(again.kid(), ed.kid());
        assert_eq!(
            SigningAlgorithm::parse("EdDSA"),
            Ok(SigningAlgorithm::EdDsa)
        );
        assert!(SigningAlgorithm::parse("RS256").is_err());
    }

    #[test]
    fn a_new_request_key_is_eddsa_and_an_existing_one_keeps_its_algorithm() {
        let fresh = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_create(fresh.path(), KeyRole::Request, None).unwrap();
        assert_eq!(keys.algorithm(), SigningAlgorithm::EdDsa);
        // A state directory whose key is ES256 (made by an earlier
        // agentguard, whose default that was, or asked for): started with
        // no algorithm named, it signs as before, with the same key.
        let dir = tempfile::tempdir().unwrap();
        let es =
            KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(SigningAlgorithm::Es256))
                .unwrap();
        let kept = KeyStore::load_or_create(dir.path(), KeyRole::Request, None).unwrap();
        assert_eq!(kept.algorithm(), SigningAlgorithm::Es256);
        assert_eq!(kept.kid(), es.kid());
        assert_eq!(kept.jwks().keys.len(), 1);
        // Its rotations stay ES256 too.
        let mut kept = kept;
        kept.rotate(Duration::from_secs(60)).unwrap();
        assert_eq!(kept.algorithm(), SigningAlgorithm::Es256);
        assert_ne!(kept.kid(), es.kid());
    }

    #[test]
    fn identity_tokens_have_a_key_of_their_own_published_beside_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let request = KeyStore::load_or_create(dir.path(), KeyRole::Request, None).unwrap();
        // A state directory from before the identity key: none to publish.
        assert!(
            KeyStore::load(dir.path(), KeyRole::Identity)
                .unwrap()
                .is_none()
        );
        let kids = |set: JwkSet| -> Vec<String> {
            set.keys
                .iter()
                .filter_map(|j| j.common.key_id.clone())
                .collect()
        };
        assert_eq!(
            kids(published_jwks(dir.path()).unwrap()),
            vec![request.kid()]
        );

        let mut identity =
            KeyStore::load_or_create(dir.path(), KeyRole::Identity, Some(SigningAlgorithm::Es256))
                .unwrap();
        assert_eq!(identity.algorithm(), SigningAlgorithm::Es256);
        assert_ne!(identity.kid(), request.kid());
        let path = dir.path().join("token/identity.key");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            kids(published_jwks(dir.path()).unwrap()),
            vec![request.kid(), identity.kid()]
        );
        // Rotating one leaves the other, and its retired list, alone.
        let old = identity.kid().to_owned();
        identity.rotate(Duration::from_secs(60)).unwrap();
        assert!(dir.path().join("token/identity-retired.json").exists());
        assert!(!dir.path().join("token/retired.json").exists());
        let reread = KeyStore::load(dir.path(), KeyRole::Request)
            .unwrap()
            .unwrap();
        assert_eq!(reread.kid(), request.kid());
        assert_eq!(
            kids(published_jwks(dir.path()).unwrap()),
            vec![request.kid(), identity.kid(), old.as_str()]
        );
    }

    /// Each algorithm's signature verifies with the published JWK
    /// (jsonwebtoken, as agentguard-verify checks it).
    #[test]
    fn signatures_verify_with_the_published_key() {
        for alg in [SigningAlgorithm::EdDsa, SigningAlgorithm::Es256] {
            let dir = tempfile::tempdir().unwrap();
            let keys = KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(alg)).unwrap();
            let claims = super::super::b64url(br#"{"sub":"x","exp":4102444800}"#);
            let input = format!("{}.{claims}", keys.encoded_header());
            let signature = super::super::b64url(&keys.sign(input.as_bytes()).unwrap());
            let token = format!("{input}.{signature}");
            let key = jsonwebtoken::DecodingKey::from_jwk(&keys.jwks().keys[0]).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg.jwt());
            validation.required_spec_claims.clear();
            jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            // One bit off, refused.
            let mut bad = token.into_bytes();
            let last = bad.len() - 2;
            bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(
                jsonwebtoken::decode::<serde_json::Value>(&bad, &key, &validation).is_err(),
                "{alg:?}"
            );
        }
    }

    /// The start-up self-check refuses a signer and a published key that
    /// are not one key's halves.
    #[test]
    fn a_signer_must_match_its_published_key() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let path = Path::new("signing.key");
            let a = parse_key(path, &generate(alg).unwrap()).unwrap();
            let b = parse_key(path, &generate(alg).unwrap()).unwrap();
            assert_eq!(check_signer_matches(&a.signer, &a.jwk, alg), Ok(()));
            let err = check_signer_matches(&a.signer, &b.jwk, alg).unwrap_err();
            assert!(err.contains("does not verify"), "{alg:?}: {err}");
        }
    }

    #[test]
    fn a_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(SigningAlgorithm::Es256))
            .unwrap();
        let path = dir.path().join("token/signing.key");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyStore::load(dir.path(), KeyRole::Request),
            Err(KeyError::Insecure { .. })
        ));
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        let jwk = |v: serde_json::Value| serde_json::from_value::<Jwk>(v).unwrap();
        // RFC 8037 §A.3: the Ed25519 key of §A.2.
        let ed = jwk(serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        }));
        assert_eq!(
            thumbprint(&ed).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        // RFC 7638 §3.1: an RSA key (members other than the required ones
        // do not count).
        let rsa = jwk(serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        }));
        assert_eq!(
            thumbprint(&rsa).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        // The keys agentguard makes, by RFC 7638 §3.2's method done by
        // hand: the required members in lexicographic order, no
        // whitespace, SHA-256, base64url.
        use sha2::{Digest as _, Sha256};
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let dir = tempfile::tempdir().unwrap();
            let keys = KeyStore::load_or_create(dir.path(), KeyRole::Request, Some(alg)).unwrap();
            let public = serde_json::to_value(&keys.jwks().keys[0]).unwrap();
            let member = |m: &str| public[m].as_str().unwrap().to_owned();
            let canonical = match alg {
                SigningAlgorithm::Es256 => format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                    member("x"),
                    member("y")
                ),
                SigningAlgorithm::EdDsa => {
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, member("x"))
                }
            };
            let want = crate::token::b64url(&Sha256::digest(canonical.as_bytes()));
            assert_eq!(keys.kid(), want, "{alg:?}: {public}");
            assert_eq!(member("kid"), want, "{alg:?}");
        }
    }
}
