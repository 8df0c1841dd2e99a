//! The Ed25519 key that signs checkpoints, and what a checkpoint signature
//! covers.
//!
//! ```text
//! <state-dir>/audit/signing.key  0600  PKCS#8 PEM (what `openssl pkey` reads)
//! <state-dir>/audit/signing.pub  0644  SubjectPublicKeyInfo PEM
//! ```
//!
//! The key is made on the daemon's first start. An auditor who keeps a copy
//! of `signing.pub` elsewhere can verify a store without trusting the host's
//! copy (`agentguard audit verify --public-key FILE`).
//!
//! A checkpoint signs:
//!
//! ```text
//! "agentguard-audit-checkpoint-v1\n" || seq as 8 bytes big-endian
//!                                     || hash of event seq (32 bytes)
//!                                     || time (RFC 3339, UTF-8)
//! ```

use std::{
    fs, io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use ed25519_dalek::{
    Signature, Signer as _, SigningKey, VerifyingKey,
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        spki::der::pem::LineEnding,
    },
};
use thiserror::Error;

use super::chain::{Hash, from_hex, to_hex};

pub const KEY_FILE: &str = "signing.key";
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
const DOMAIN: &[u8] = b"agentguard-audit-checkpoint-v1\n";

#[derive(Debug, Error)]
pub enum SigningError {
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is not a PKCS#8 Ed25519 key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path} is readable by group or others (mode {mode:o}); the signing key must be 0600")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("no randomness for a new signing key: {0}")]
    Random(getrandom::Error),
}

/// The daemon's checkpoint signer.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// Loads `dir/signing.key`, or makes it (and `signing.pub`) if absent.
    pub fn load_or_create(dir: &Path) -> Result<Self, SigningError> {
        let path = dir.join(KEY_FILE);
        let key = match fs::read_to_string(&path) {
            Ok(pem) => {
                let mode = fs::metadata(&path)
                    .map_err(|source| SigningError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(SigningError::Exposed {
                        path,
                        mode: mode & 0o777,
                    });
                }
                SigningKey::from_pkcs8_pem(&pem).map_err(|e| SigningError::BadKey {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(SigningError::Random)?;
                let key = SigningKey::from_bytes(&seed);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| SigningError::BadKey {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                write_file(&path, pem.as_bytes(), 0o600)?;
                key
            }
            Err(source) => return Err(SigningError::Read { path, source }),
        };
        // Rewritten at every start, so a deleted or replaced public key file
        // is put back from the key that actually signs.
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SigningError::BadKey {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        write_file(&dir.join(PUBLIC_KEY_FILE), public.as_bytes(), 0o644)?;
        Ok(Self { key })
    }

    /// Hex signature over checkpoint `(seq, hash, time)`.
    pub fn sign(&self, seq: i64, hash: &Hash, time: &str) -> String {
        let sig = self.key.sign(&message(seq, hash, time));
        hex::encode(sig.to_bytes())
    }

    /// Hex of the public key, stored with each checkpoint so a rotated key
    /// is recognisable.
    pub fn key_id(&self) -> String {
        to_hex(&self.key.verifying_key().to_bytes())
    }
}

/// A public key that checks checkpoint signatures.
pub struct Verifier {
    key: VerifyingKey,
}

impl Verifier {
    pub fn load(path: &Path) -> Result<Self, SigningError> {
        let pem = fs::read_to_string(path).map_err(|source| SigningError::Read {
            path: path.to_owned(),
            source,
        })?;
        let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| SigningError::BadKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self { key })
    }

    pub fn key_id(&self) -> String {
        to_hex(&self.key.to_bytes())
    }

    /// Whether `signature` (hex) is this key's over `(seq, hash, time)`.
    pub fn verify(&self, seq: i64, hash: &Hash, time: &str, signature: &str) -> bool {
        let Some(bytes) = hex_64(signature) else {
            return false;
        };
        let sig = Signature::from_bytes(&bytes);
        self.key
            .verify_strict(&message(seq, hash, time), &sig)
            .is_ok()
    }
}

fn message(seq: i64, hash: &Hash, time: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 8 + 32 + time.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(time.as_bytes());
    m
}

fn hex_64(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    let (a, b) = s.split_at(64);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&from_hex(a)?);
    out[32..].copy_from_slice(&from_hex(b)?);
    Some(out)
}

/// Written to a temporary file and renamed, so a crash never leaves half a
/// key; created with its final mode, so it is never briefly readable.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SigningError> {
    crate::atomic_file::replace(path, bytes, mode).map_err(|e| SigningError::Write {
        path: path.to_owned(),
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_with_the_public_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let verifier = Verifier::load(&dir.path().join(PUBLIC_KEY_FILE)).unwrap();
        assert_eq!(verifier.key_id(), signer.key_id());
        let hash = [7u8; 32];
        let sig = signer.sign(10, &hash, "2026-01-01T00:00:00.000000Z");
        assert!(verifier.verify(10, &hash, "2026-01-01T00:00:00.000000Z", &sig));
        assert!(!verifier.verify(11, &hash, "2026-01-01T00:00:00.000000Z", &sig));
        assert!(!verifier.verify(10, &[8; 32], "2026-01-01T00:00:00.000000Z", &sig));
        assert!(!verifier.verify(10, &hash, "2026-01-01T00:00:01.000000Z", &sig));
        assert!(!verifier.verify(10, &hash, "2026-01-01T00:00:00.000000Z", "00"));

        // The same key comes back on the next start.
        let again = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(again.key_id(), signer.key_id());
    }

    #[test]
    fn an_exposed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Signer::load_or_create(dir.path()).unwrap();
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Signer::load_or_create(dir.path()),
            Err(SigningError::Exposed { .. })
        ));
    }
}
