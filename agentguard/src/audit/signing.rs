//! The Ed25519 key that signs checkpoints, where it lives, and what a
//! checkpoint signature covers.
//!
//! ```text
//! <state-dir>/audit-key/            0700  (or --audit-signing-key elsewhere)
//! <state-dir>/audit-key/signing.key 0600  PKCS#8 PEM (what `openssl pkey` reads)
//! <state-dir>/audit-key/signing.pub 0644  SubjectPublicKeyInfo PEM
//! <state-dir>/audit/signing.pub     0644  a copy, for an unpinned `audit verify`
//! ```
//!
//! The key is kept apart from the store: never in the audit directory, so
//! that whatever can replace or copy that directory (a backup, a restore, a
//! process that may write the database) does not carry the means to sign a
//! chain of its own. `--audit-signing-key` puts it on another mount or under
//! another owner. Up to commit e057790 the key lived at
//! `<state-dir>/audit/signing.key`; [`migrate_key`] moves it on the first
//! start of a newer daemon.
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
    #[error(
        "the audit signing key {key} is inside the audit directory {audit}: keep it apart from the store (--audit-signing-key)"
    )]
    BesideStore { key: PathBuf, audit: PathBuf },
    #[error(
        "two audit signing keys: {old} (where earlier versions kept it) and {new} differ; remove the one that did not sign the store's checkpoints"
    )]
    TwoKeys { old: PathBuf, new: PathBuf },
}

/// The key's folder inside the state dir, beside (not inside) the audit
/// directory.
pub const KEY_DIR: &str = "audit-key";

/// Where the key is kept unless `--audit-signing-key` says otherwise.
pub fn default_key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_DIR).join(KEY_FILE)
}

/// The public key file beside a private key file.
pub fn public_key_path(key: &Path) -> PathBuf {
    key.with_extension("pub")
}

/// Moves a key from where older versions kept it (`audit_dir/signing.key`)
/// to `key`, once. Returns whether it moved one. A key at both places is
/// fine only if it is the same key (the old copy goes); two different keys
/// stop the start, since only one can have signed the store.
pub fn migrate_key(audit_dir: &Path, key: &Path) -> Result<bool, SigningError> {
    let old = audit_dir.join(KEY_FILE);
    let old_pem = match fs::read(&old) {
        Ok(pem) => pem,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(SigningError::Read { path: old, source }),
    };
    match fs::read(key) {
        Ok(new_pem) if new_pem == old_pem => {}
        Ok(_) => {
            return Err(SigningError::TwoKeys {
                old,
                new: key.to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            make_key_dir(key)?;
            // Written whole and synced before the old one goes: a crash
            // between the two leaves two equal keys, which the next start
            // resolves as above.
            write_file(key, &old_pem, 0o600)?;
        }
        Err(source) => {
            return Err(SigningError::Read {
                path: key.to_owned(),
                source,
            });
        }
    }
    fs::remove_file(&old).map_err(|source| SigningError::Write {
        path: old.clone(),
        source,
    })?;
    Ok(true)
}

/// `path` with symbolic links resolved as far as it exists, and `.` and
/// `..` resolved in the rest.
fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .components()
    {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => {
                out.push(c);
                if let Ok(real) = fs::canonicalize(&out) {
                    out = real;
                }
            }
        }
    }
    out
}

/// The key's folder, 0700, if it does not exist yet.
fn make_key_dir(key: &Path) -> Result<(), SigningError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SigningError::Write {
            path: dir.to_owned(),
            source,
        })
}

/// Refuses a key path inside the audit directory.
pub fn check_apart(audit_dir: &Path, key: &Path) -> Result<(), SigningError> {
    let (audit, k) = (resolved(audit_dir), resolved(key));
    if k.starts_with(&audit) {
        return Err(SigningError::BesideStore { key: k, audit });
    }
    Ok(())
}

/// The daemon's checkpoint signer.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// Loads the key at `path`, or makes it if absent; (re)writes its public
    /// key beside it and in each of `public_copies`.
    pub fn load_or_create(path: &Path, public_copies: &[PathBuf]) -> Result<Self, SigningError> {
        let path = path.to_owned();
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
                make_key_dir(&path)?;
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
        // Beside the key: a key the operator put on a read-only mount may
        // come without its public half, and need not stop the start for it.
        let beside = public_key_path(&path);
        match write_file(&beside, public.as_bytes(), 0o644) {
            Ok(()) => {}
            Err(e) if fs::read(&beside).is_ok_and(|b| b == public.as_bytes()) => {
                tracing::debug!(error = %e, "public key beside the signing key already current");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the public key beside the signing key")
            }
        }
        for public_path in public_copies {
            write_file(public_path, public.as_bytes(), 0o644)?;
        }
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
        let signer = Signer::load_or_create(&dir.path().join(KEY_FILE), &[]).unwrap();
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
        let again = Signer::load_or_create(&dir.path().join(KEY_FILE), &[]).unwrap();
        assert_eq!(again.key_id(), signer.key_id());
    }

    #[test]
    fn an_exposed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(KEY_FILE);
        Signer::load_or_create(&key, &[]).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Signer::load_or_create(&key, &[]),
            Err(SigningError::Exposed { .. })
        ));
    }

    #[test]
    fn an_old_key_moves_out_of_the_audit_directory_once() {
        let state = tempfile::tempdir().unwrap();
        let audit = state.path().join("audit");
        fs::create_dir(&audit).unwrap();
        // Where agentguard up to commit e057790 made it.
        let old = Signer::load_or_create(&audit.join(KEY_FILE), &[]).unwrap();
        let new_path = default_key_path(state.path());
        assert!(migrate_key(&audit, &new_path).unwrap());
        assert!(!audit.join(KEY_FILE).exists());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&new_path), 0o600);
        assert_eq!(mode(new_path.parent().unwrap()), 0o700);
        let moved = Signer::load_or_create(&new_path, &[]).unwrap();
        assert_eq!(moved.key_id(), old.key_id());
        // Nothing left to move.
        assert!(!migrate_key(&audit, &new_path).unwrap());
        // A different key where the old one was stops the start.
        let other = tempfile::tempdir().unwrap();
        Signer::load_or_create(&other.path().join(KEY_FILE), &[]).unwrap();
        fs::copy(other.path().join(KEY_FILE), audit.join(KEY_FILE)).unwrap();
        assert!(matches!(
            migrate_key(&audit, &new_path),
            Err(SigningError::TwoKeys { .. })
        ));
    }

    #[test]
    fn a_key_inside_the_audit_directory_is_refused() {
        let audit = Path::new("/var/lib/agentguard/audit");
        assert!(check_apart(audit, Path::new("/var/lib/agentguard/audit/k.key")).is_err());
        assert!(check_apart(audit, Path::new("/var/lib/agentguard/audit/../audit/k")).is_err());
        assert!(
            check_apart(
                audit,
                Path::new("/var/lib/agentguard/audit-key/signing.key")
            )
            .is_ok()
        );
    }
}
