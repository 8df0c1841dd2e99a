//! Replacing the local CA without breaking the agents that trust it.
//!
//! Agents read the trust bundle once, when they start, so a new CA must be
//! in their bundle before it signs the leaves they are shown. A rotation is
//! two steps, each an `agentguard ca` command that the running daemon
//! carries out ([`super::CaStore`]):
//!
//! 1. `rotate` makes a new CA (`next.key`, `next.crt`) whose certificate
//!    goes into the trust bundle beside the current one; leaves are still
//!    the current CA's. Agents started from then on trust both.
//! 2. Once every agent has been restarted, `activate` makes the new CA the
//!    one that signs: it replaces `ca.key` and `ca.crt`, so the old key is
//!    gone and the old certificate leaves the bundle.
//!
//! `cancel` drops a staged CA instead. A crash in any step leaves a folder
//! the next start completes or cleans up ([`finish_interrupted_step`]):
//! the files are renamed in an order where each half-done state says which
//! step it came from.

use std::{fs, io, path::Path};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use tracing::info;

use super::authority::{
    CERT_FILE, CaError, KEY_FILE, LocalCa, NEXT_CERT_FILE, NEXT_KEY_FILE, io_error, pair_present,
};
use crate::atomic_file;

#[derive(Debug, Error)]
pub enum RotationError {
    #[error(
        "a next CA is already staged ({0}): activate it with `agentguard ca activate` once every agent has been restarted, or drop it with `agentguard ca cancel`"
    )]
    AlreadyStaged(String),
    #[error("no next CA is staged: make one with `agentguard ca rotate`")]
    NothingStaged,
    #[error(
        "the trust bundle {0} does not hold the staged CA yet, so agents could not verify its leaves; nothing was changed"
    )]
    NotInBundle(String),
    #[error(
        "{next_cert} is there without {next_key}, but {key} does not belong to it either; refusing to guess which CA is which: an operator must look"
    )]
    Inconsistent {
        next_cert: String,
        next_key: String,
        key: String,
    },
}

/// A step of a rotation, as `agentguard ca` asks the daemon for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Rotate,
    Activate,
    Cancel,
}

impl Step {
    /// From the last part of the admin route (`/v1/ca/rotate`, ...).
    pub fn from_route(name: &str) -> Option<Self> {
        match name {
            "rotate" => Some(Step::Rotate),
            "activate" => Some(Step::Activate),
            "cancel" => Some(Step::Cancel),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Rotate => "rotate",
            Step::Activate => "activate",
            Step::Cancel => "cancel",
        }
    }
}

/// Makes the next CA in `dir` (the `ca` folder), unless one is staged.
pub(super) fn stage(dir: &Path) -> Result<(), CaError> {
    if pair_present(dir, NEXT_KEY_FILE, NEXT_CERT_FILE)? {
        return Err(
            RotationError::AlreadyStaged(dir.join(NEXT_CERT_FILE).display().to_string()).into(),
        );
    }
    let next = LocalCa::generate(dir.to_owned(), NEXT_KEY_FILE, NEXT_CERT_FILE)?;
    info!(cert = %next.cert_path().display(), "staged a next CA: trusted from now on, signing once activated");
    Ok(())
}

/// Makes the staged CA the one that signs. `bundle` is the trust bundle's
/// path: the staged certificate must be in it already.
pub(super) fn activate(dir: &Path, bundle: &Path) -> Result<(), CaError> {
    if !pair_present(dir, NEXT_KEY_FILE, NEXT_CERT_FILE)? {
        return Err(RotationError::NothingStaged.into());
    }
    // Self-checked: a CA that cannot sign verifiable leaves never signs.
    let next = LocalCa::read_pair(dir.to_owned(), NEXT_KEY_FILE, NEXT_CERT_FILE)?;
    let in_bundle = fs::read_to_string(bundle)
        .map_err(io_error("read", bundle))?
        .contains(next.cert_pem().trim());
    if !in_bundle {
        return Err(RotationError::NotInBundle(bundle.display().to_string()).into());
    }
    // Key first: until the certificate follows, `next.crt` without
    // `next.key` says that an activation was cut short here.
    rename(dir, NEXT_KEY_FILE, KEY_FILE)?;
    rename(dir, NEXT_CERT_FILE, CERT_FILE)?;
    info!(cert = %dir.join(CERT_FILE).display(), "activated the next CA: it signs every new leaf; the old key is deleted");
    Ok(())
}

/// Drops the staged CA.
pub(super) fn cancel(dir: &Path) -> Result<(), CaError> {
    if !pair_present(dir, NEXT_KEY_FILE, NEXT_CERT_FILE)? {
        return Err(RotationError::NothingStaged.into());
    }
    // Certificate first: `next.key` alone is a stage or cancel cut short,
    // which the next start removes; `next.crt` alone would read as an
    // activation cut short.
    remove(dir, NEXT_CERT_FILE)?;
    remove(dir, NEXT_KEY_FILE)?;
    info!("dropped the staged next CA");
    Ok(())
}

/// Completes or cleans up a step a crash cut short, before the CA is read:
/// - `next.crt` without `next.key`: an activation that had moved the key;
///   the certificate follows it, if the key in `ca.key` is its own.
/// - `next.key` without `next.crt`: a stage or a cancel cut short; the
///   key, never trusted by anyone, is removed.
/// - a key's temporary copy (`.ca.key.tmp-…`, `.next.key.tmp-…`), left by
///   a crash between writing a key and linking it into place: removed, so
///   no copy of a key outlives the key.
///
/// Only the daemon calls it (through [`LocalCa::load_or_create`] and
/// [`LocalCa::load`]), one step at a time: `ca export` reads without it.
pub(super) fn finish_interrupted_step(dir: &Path) -> Result<(), CaError> {
    remove_key_copies(dir)?;
    let exists = |file: &str| {
        let path = dir.join(file);
        path.try_exists().map_err(io_error("check", &path))
    };
    match (exists(NEXT_KEY_FILE)?, exists(NEXT_CERT_FILE)?) {
        (false, true) => {
            if LocalCa::read_pair(dir.to_owned(), KEY_FILE, NEXT_CERT_FILE).is_err() {
                return Err(RotationError::Inconsistent {
                    next_cert: dir.join(NEXT_CERT_FILE).display().to_string(),
                    next_key: dir.join(NEXT_KEY_FILE).display().to_string(),
                    key: dir.join(KEY_FILE).display().to_string(),
                }
                .into());
            }
            rename(dir, NEXT_CERT_FILE, CERT_FILE)?;
            info!("completed an activation of the next CA that was cut short");
        }
        (true, false) => {
            remove(dir, NEXT_KEY_FILE)?;
            info!("removed the key of a next CA whose staging or cancelling was cut short");
        }
        _ => {}
    }
    Ok(())
}

fn remove_key_copies(dir: &Path) -> Result<(), CaError> {
    let entries = fs::read_dir(dir).map_err(io_error("read", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error("read", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let copy = [KEY_FILE, NEXT_KEY_FILE]
            .iter()
            .any(|key| name.starts_with(&format!(".{key}.tmp-")));
        if copy {
            remove(dir, &name)?;
            info!(file = %name, "removed a CA key's temporary copy left by a crash");
        }
    }
    Ok(())
}

fn rename(dir: &Path, from: &str, to: &str) -> Result<(), CaError> {
    let (from, to) = (dir.join(from), dir.join(to));
    fs::rename(&from, &to).map_err(io_error("rename", &from))?;
    Ok(atomic_file::sync_dir(dir)?)
}

fn remove(dir: &Path, file: &str) -> Result<(), CaError> {
    let path = dir.join(file);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove", &path)(e)),
    }
    Ok(atomic_file::sync_dir(dir)?)
}

/// What a trusted CA is for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaRole {
    /// Signs the leaves.
    Active,
    /// Staged by `agentguard ca rotate`: trusted, not signing yet.
    Next,
}

impl CaRole {
    pub fn as_str(self) -> &'static str {
        match self {
            CaRole::Active => "active",
            CaRole::Next => "next",
        }
    }
}

/// One CA the agents trust, as `agentguard ca` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CaInfo {
    pub role: CaRole,
    /// SHA-256 of the certificate (DER), as `openssl x509 -fingerprint
    /// -sha256` prints it.
    pub sha256: String,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
}

impl LocalCa {
    /// The signing CA and the staged one, if any.
    pub fn describe(&self) -> Vec<CaInfo> {
        let mut all = vec![info_of(CaRole::Active, self.cert_der())];
        if let Some(next) = self.next() {
            all.push(info_of(CaRole::Next, &next.der));
        }
        all
    }

    /// When the signing CA's certificate expires; None if it cannot be
    /// read back (it was self-checked at load, so this is not expected).
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        not_after(self.cert_der())
    }

    /// Each trusted CA's expiry, seconds since the epoch (for the metrics).
    pub fn expiries(&self) -> Vec<(CaRole, i64)> {
        let mut all = vec![(CaRole::Active, self.cert_der().as_ref())];
        if let Some(next) = self.next() {
            all.push((CaRole::Next, next.der.as_ref()));
        }
        all.into_iter()
            .filter_map(|(role, der)| Some((role, not_after(der)?.unix_timestamp())))
            .collect()
    }
}

fn info_of(role: CaRole, der: &[u8]) -> CaInfo {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let sha256 = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let expiry = not_after(der);
    CaInfo {
        role,
        sha256,
        not_after: expiry
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| "unknown".to_owned()),
        days_left: expiry.map_or(0, |t| (t - OffsetDateTime::now_utc()).whole_days()),
    }
}

fn not_after(der: &[u8]) -> Option<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, sync::Arc};

    use super::*;
    use crate::ca::{CaStore, authority::verify_chain};

    /// A daemon's CA store in a fresh state folder, its bundle written.
    fn fresh() -> (tempfile::TempDir, CaStore) {
        let state = tempfile::tempdir().unwrap();
        let store = CaStore::load_or_create(state.path()).unwrap();
        store.current().write_trust_bundle().unwrap();
        (state, store)
    }

    fn files(state: &tempfile::TempDir) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(state.path().join("ca"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn bundle(state: &tempfile::TempDir) -> String {
        fs::read_to_string(state.path().join("ca/bundle.pem")).unwrap()
    }

    fn roles(trusted: &[CaInfo]) -> Vec<CaRole> {
        trusted.iter().map(|c| c.role).collect()
    }

    #[test]
    fn a_rotation_stages_a_trusted_ca_then_makes_it_sign() {
        let (state, store) = fresh();
        let old = store.current();
        let trusted = store.apply(Step::Rotate).unwrap();
        assert_eq!(roles(&trusted), [CaRole::Active, CaRole::Next]);
        assert_eq!(trusted[0].sha256, old.describe()[0].sha256);
        assert_ne!(trusted[1].sha256, trusted[0].sha256);
        assert!(trusted[1].days_left >= 729, "{trusted:?}");
        assert_eq!(
            files(&state),
            ["bundle.pem", "ca.crt", "ca.key", "next.crt", "next.key"]
        );
        // Staged: the old CA still signs, and both are in the bundle.
        let staged = store.current();
        assert_eq!(staged.cert_der(), old.cert_der());
        let next_pem = staged.next_cert_pem().unwrap().to_owned();
        let b = bundle(&state);
        assert!(b.contains(old.cert_pem()) && b.contains(&next_pem));
        assert_eq!(
            fs::metadata(state.path().join("ca/next.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );

        let trusted = store.apply(Step::Activate).unwrap();
        assert_eq!(roles(&trusted), [CaRole::Active]);
        let new = store.current();
        assert_eq!(new.cert_pem(), next_pem);
        assert_eq!(files(&state), ["bundle.pem", "ca.crt", "ca.key"]);
        let b = bundle(&state);
        assert!(b.contains(&next_pem) && !b.contains(old.cert_pem()));
        // The new key signs leaves that verify against the new certificate
        // only (ca.key and ca.crt belong together).
        let leaf = new.mint_leaf("api.example.com").unwrap();
        let ring = Arc::new(rustls::crypto::ring::default_provider());
        verify_chain(new.cert_der(), &leaf.cert, "api.example.com", &ring).unwrap();
        verify_chain(old.cert_der(), &leaf.cert, "api.example.com", &ring).unwrap_err();
        // And a restart reads the same.
        let reloaded = LocalCa::load(state.path()).unwrap();
        assert_eq!(reloaded.cert_pem(), new.cert_pem());
        assert!(reloaded.next_cert_pem().is_none());
    }

    #[test]
    fn steps_out_of_order_are_refused_and_change_nothing() {
        let (state, store) = fresh();
        let before = (files(&state), bundle(&state));
        for step in [Step::Activate, Step::Cancel] {
            let err = store.apply(step).unwrap_err();
            assert!(
                matches!(err, CaError::Rotation(RotationError::NothingStaged)),
                "{err}"
            );
        }
        assert_eq!((files(&state), bundle(&state)), before);
        store.apply(Step::Rotate).unwrap();
        let staged = (files(&state), bundle(&state));
        let err = store.apply(Step::Rotate).unwrap_err();
        assert!(
            matches!(err, CaError::Rotation(RotationError::AlreadyStaged(_))),
            "{err}"
        );
        assert!(err.to_string().contains("agentguard ca activate"), "{err}");
        assert_eq!((files(&state), bundle(&state)), staged);
        // Cancel drops it, from the folder and the bundle.
        let trusted = store.apply(Step::Cancel).unwrap();
        assert_eq!(roles(&trusted), [CaRole::Active]);
        assert_eq!((files(&state), bundle(&state)), before);
    }

    /// A staged CA the agents' bundle does not hold (its write failed, or
    /// someone rewrote it) is not activated: agents could not verify it.
    #[test]
    fn a_ca_missing_from_the_bundle_is_not_activated() {
        let (state, store) = fresh();
        store.apply(Step::Rotate).unwrap();
        let old = store.current();
        let path = state.path().join("ca/bundle.pem");
        fs::write(&path, old.cert_pem()).unwrap();
        let err = store.apply(Step::Activate).unwrap_err();
        assert!(
            matches!(err, CaError::Rotation(RotationError::NotInBundle(_))),
            "{err}"
        );
        assert_eq!(store.current().cert_der(), old.cert_der());
        assert!(state.path().join("ca/next.key").exists());
    }

    /// Each state a crash can leave is completed or cleaned up at the next
    /// load, and the CA that results signs verifiable leaves.
    #[test]
    fn a_step_cut_short_is_finished_at_the_next_load() {
        // Activation cut after the key moved: the certificate follows.
        let (state, store) = fresh();
        store.apply(Step::Rotate).unwrap();
        let next_pem = store.current().next_cert_pem().unwrap().to_owned();
        let dir = state.path().join("ca");
        fs::rename(dir.join("next.key"), dir.join("ca.key")).unwrap();
        let ca = LocalCa::load(state.path()).unwrap();
        assert_eq!(ca.cert_pem(), next_pem);
        assert_eq!(files(&state), ["bundle.pem", "ca.crt", "ca.key"]);

        // A stage or cancel cut short (the key alone): the key goes.
        let (state, store) = fresh();
        let old_pem = store.current().cert_pem().to_owned();
        store.apply(Step::Rotate).unwrap();
        let dir = state.path().join("ca");
        fs::remove_file(dir.join("next.crt")).unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        assert_eq!(ca.cert_pem(), old_pem);
        assert!(ca.next_cert_pem().is_none());
        assert_eq!(files(&state), ["bundle.pem", "ca.crt", "ca.key"]);
    }

    /// A key's temporary copy that a crash left beside the CA is removed
    /// at the next load; nothing else is.
    #[test]
    fn a_keys_temporary_copy_is_removed_at_the_next_load() {
        let (state, _store) = fresh();
        let dir = state.path().join("ca");
        fs::copy(dir.join("ca.key"), dir.join(".next.key.tmp-1-0")).unwrap();
        fs::write(dir.join(".bundle.pem.tmp-1-0"), "not a key").unwrap();
        LocalCa::load(state.path()).unwrap();
        assert_eq!(
            files(&state),
            [".bundle.pem.tmp-1-0", "bundle.pem", "ca.crt", "ca.key"]
        );
    }

    /// `next.crt` alone whose key is not `ca.key` is no state a step
    /// leaves: nothing is renamed, and the CA is not used.
    #[test]
    fn a_next_certificate_without_its_key_is_refused() {
        let (state, store) = fresh();
        store.apply(Step::Rotate).unwrap();
        let dir = state.path().join("ca");
        fs::remove_file(dir.join("next.key")).unwrap();
        let before = files(&state);
        let err = LocalCa::load(state.path()).unwrap_err();
        assert!(
            matches!(err, CaError::Rotation(RotationError::Inconsistent { .. })),
            "{err}"
        );
        assert_eq!(files(&state), before);
    }

    #[test]
    fn the_fingerprint_is_openssls() {
        let (state, store) = fresh();
        let info = &store.current().describe()[0];
        let out = std::process::Command::new("openssl")
            .args([
                "x509",
                "-noout",
                "-fingerprint",
                "-sha256",
                "-enddate",
                "-in",
            ])
            .arg(state.path().join("ca/ca.crt"))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains(&format!("Fingerprint={}", info.sha256)),
            "{text}"
        );
        // notAfter=Dec  5 16:02:03 2028 GMT against 2028-12-05T16:02:03Z.
        let year = &info.not_after[..4];
        assert!(text.contains(&format!(" {year} GMT")), "{text} / {info:?}");
    }
}
