//! The CA itself: creating it, loading it from disk with its permissions
//! checked, and signing leaves with it.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{Issuer, KeyPair, PKCS_ECDSA_P256_SHA256, SerialNumber};
use rustls::{
    InconsistentKeys, RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    sign::CertifiedKey,
};
use rustls_pemfile::Item;
use thiserror::Error;
use time::OffsetDateTime;
use tracing::info;

use super::profile::{self, CA_LIFETIME, CLOCK_SKEW, InvalidServerName, ca_params};
use crate::atomic_file::{self, WriteError, Written};

pub(super) const CA_DIR: &str = "ca";
pub(super) const KEY_FILE: &str = "ca.key";
pub(super) const CERT_FILE: &str = "ca.crt";
/// The CA made by `agentguard ca rotate`: trusted (in the bundle), not yet
/// signing ([`super::rotation`]).
pub(super) const NEXT_KEY_FILE: &str = "next.key";
pub(super) const NEXT_CERT_FILE: &str = "next.crt";

/// Traversable by all, listable by none: agents read `ca.crt` and
/// `bundle.pem` by path, and nobody but the daemon can add or swap files.
const DIR_MODE: u32 = 0o711;
const KEY_MODE: u32 = 0o600;
pub(super) const PUBLIC_FILE_MODE: u32 = 0o644;
/// Permission bits that, on the key, would let someone else read or replace it.
const KEY_FORBIDDEN_BITS: u32 = 0o077;
/// Permission bits that, on the folder, would let someone else swap the files.
const DIR_FORBIDDEN_BITS: u32 = 0o022;

/// The self-check at load mints a leaf for this name. `.invalid` is reserved
/// (RFC 6761 section 6.4), so it can never be a real host.
const PROBE_NAME: &str = "self-check.agentguard.invalid";

/// RFC 5280 section 4.1.2.2: serials are positive and at most 20 octets;
/// CA/B Forum asks for at least 64 random bits. 16 bytes covers both.
const SERIAL_LEN: usize = 16;

#[derive(Debug, Error)]
pub enum CaError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to {action}: {source}")]
    Rcgen {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("failed to {action}: {source}")]
    Rustls {
        action: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("failed to parse {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error(
        "refusing to use {path}: its mode {mode:04o} lets group or others read the CA key; \
         if anyone else may have read it, remove the ca folder so that the daemon makes a new CA, \
         otherwise chmod 600 it"
    )]
    InsecureKey { path: PathBuf, mode: u32 },
    #[error(
        "refusing to use {path}: its mode {mode:04o} lets group or others replace the CA files \
         in it (chmod 711 it)"
    )]
    InsecureDir { path: PathBuf, mode: u32 },
    #[error("refusing to use {path}: it is owned by uid {owner}, not by this process's uid {euid}")]
    ForeignOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("no agentguard CA at {path}: start the daemon once to create it")]
    Missing { path: PathBuf },
    #[error(
        "{present} exists but {missing} does not; refusing to make a new CA over half of one: \
         restore {missing}, or remove {present} to start over with a new CA"
    )]
    HalfPresent { present: PathBuf, missing: PathBuf },
    #[error(transparent)]
    InvalidServerName(#[from] InvalidServerName),
    #[error("the CA in {path} failed its self-check: {reason}")]
    SelfCheck { path: PathBuf, reason: String },
    #[error(transparent)]
    Rotation(#[from] super::rotation::RotationError),
}

impl From<WriteError> for CaError {
    fn from(e: WriteError) -> Self {
        CaError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

pub(super) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CaError {
    let path = path.to_owned();
    move |source| CaError::Io {
        action,
        path,
        source,
    }
}

fn rcgen_error(action: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError::Rcgen { action, source }
}

fn rustls_error(action: &'static str) -> impl FnOnce(rustls::Error) -> CaError {
    move |source| CaError::Rustls { action, source }
}

/// The local CA: a P-256 key and a self-signed certificate, kept in
/// `<state_dir>/ca/`, that signs a leaf per intercepted host, and the other
/// CA certificates agents must trust while it is being replaced
/// ([`super::rotation`]). Leaves carry an authority key identifier, so
/// clients can tell two CAs with the same name apart.
pub struct LocalCa {
    /// Signs leaves. Built from the same constants as the CA certificate
    /// (rcgen reads a certificate back only with its `x509-parser` feature);
    /// `self_check` proves at load that the two agree.
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    /// SHA-256 of `cert_der` ([`LocalCa::id`]).
    id: [u8; 32],
    dir: PathBuf,
    cert_path: PathBuf,
    /// The staged next CA's certificate, if one is staged: trusted beside
    /// this one, signing nothing yet.
    next: Option<NextCert>,
    /// Always ring, never the process default: the binary is built without
    /// aws-lc, and a default installed elsewhere must not change what signs.
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for LocalCa {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// The staged CA's certificate ([`super::rotation`]).
#[derive(Debug, Clone)]
pub(super) struct NextCert {
    pub(super) pem: String,
    pub(super) der: CertificateDer<'static>,
}

/// A freshly signed leaf and its validity, which the cache needs to know when
/// to replace it.
pub(super) struct MintedLeaf {
    pub(super) key: Arc<CertifiedKey>,
    pub(super) not_before: OffsetDateTime,
    pub(super) not_after: OffsetDateTime,
}

impl LocalCa {
    /// Loads the CA from `<state_dir>/ca/`, or creates it on first start.
    ///
    /// `state_dir` must exist; `ca/` is created (mode 0711) if absent. A key
    /// that group or others could read, or that another user owns, is
    /// refused, never used. If only one of `ca.key` and `ca.crt` exists, this
    /// fails rather than overwrite it: an operator must look.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, CaError> {
        let dir = state_dir.join(CA_DIR);
        prepare_dir(&dir)?;
        super::rotation::finish_interrupted_step(&dir)?;
        if both_present(&dir)? {
            Self::read(dir)
        } else {
            let ca = Self::generate(dir, KEY_FILE, CERT_FILE)?;
            info!(cert = %ca.cert_path.display(), "created a new local CA");
            Ok(ca)
        }
    }

    /// Loads the CA without creating anything, finishing a rotation step
    /// a crash cut short (the daemon, after each step: [`super::CaStore`]).
    pub fn load(state_dir: &Path) -> Result<Self, CaError> {
        let dir = state_dir.join(CA_DIR);
        if !both_present(&dir)? {
            return Err(CaError::Missing {
                path: dir.join(CERT_FILE),
            });
        }
        let meta = fs::metadata(&dir).map_err(io_error("read", &dir))?;
        check_dir(&dir, &meta)?;
        super::rotation::finish_interrupted_step(&dir)?;
        Self::read(dir)
    }

    /// The certificates of `state_dir`'s CA, PEM, read without its key and
    /// without changing anything (for `agentguard ca export`, which may run
    /// while the daemon is in the middle of a rotation step): the one that
    /// signs, then, with `with_next`, a staged next CA's, if there is one.
    pub fn read_certs(state_dir: &Path, with_next: bool) -> Result<Vec<String>, CaError> {
        let dir = state_dir.join(CA_DIR);
        let cert_path = dir.join(CERT_FILE);
        if !cert_path
            .try_exists()
            .map_err(io_error("check", &cert_path))?
        {
            return Err(CaError::Missing { path: cert_path });
        }
        let meta = fs::metadata(&dir).map_err(io_error("read", &dir))?;
        check_dir(&dir, &meta)?;
        let mut pems = Vec::new();
        let files: &[&str] = if with_next {
            &[CERT_FILE, NEXT_CERT_FILE]
        } else {
            &[CERT_FILE]
        };
        for file in files {
            let path = dir.join(file);
            let pem = match fs::read_to_string(&path) {
                Ok(pem) => pem,
                Err(e) if e.kind() == io::ErrorKind::NotFound && *file == NEXT_CERT_FILE => {
                    continue;
                }
                Err(e) => return Err(io_error("read", &path)(e)),
            };
            parse_cert(&path, &pem)?;
            pems.push(pem);
        }
        Ok(pems)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: what a cached leaf remembers of the
    /// CA that signed it (not the CA itself, whose key must not outlive an
    /// activation in memory).
    pub(super) fn id(&self) -> &[u8; 32] {
        &self.id
    }

    /// `<state_dir>/ca/ca.crt`.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// `<state_dir>/ca/`.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The staged next CA's certificate, which agents trust already.
    pub(super) fn next(&self) -> Option<&NextCert> {
        self.next.as_ref()
    }

    /// The staged next CA's certificate, PEM, during a rotation.
    pub fn next_cert_pem(&self) -> Option<&str> {
        self.next.as_ref().map(|n| n.pem.as_str())
    }

    /// Mints a leaf for `server_name` (a DNS name, or an IP literal for an IP
    /// SAN), signed by this CA. The chain is `[leaf, CA]`.
    pub fn mint_leaf(&self, server_name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        self.mint(server_name).map(|leaf| leaf.key)
    }

    pub(super) fn mint(&self, server_name: &str) -> Result<MintedLeaf, CaError> {
        let now = OffsetDateTime::now_utc();
        let params = profile::leaf_params(server_name, now, random_serial(&self.provider)?)?;
        let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_error("generate a leaf key"))?;
        let cert = params
            .signed_by(&key_pair, &self.issuer)
            .map_err(rcgen_error("sign a leaf certificate"))?;
        let key = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key_pair.serialize_der(),
            )))
            .map_err(rustls_error("load a leaf key"))?;
        Ok(MintedLeaf {
            key: Arc::new(CertifiedKey::new(
                vec![cert.der().clone(), self.cert_der.clone()],
                key,
            )),
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }

    /// Makes a new CA and writes it to `key_file` and `cert_file` in `dir`,
    /// neither of which may exist.
    pub(super) fn generate(dir: PathBuf, key_file: &str, cert_file: &str) -> Result<Self, CaError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_error("generate the CA key"))?;
        let mut params = ca_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial(&provider)?);
        let cert = params
            .self_signed(&key_pair)
            .map_err(rcgen_error("sign the CA certificate"))?;
        let cert_path = dir.join(cert_file);
        let ca = Self::assemble(
            dir,
            cert_path,
            key_pair,
            cert.der().clone(),
            cert.pem(),
            provider,
        );
        ca.self_check()?;

        // Both files are written under temporary names and linked into place
        // only when complete: a crash leaves at worst one of the two (refused
        // at the next start), never a truncated key. A hard link, unlike a
        // rename, fails if the target exists, so a CA that another process
        // created meanwhile is never overwritten.
        let key_path = ca.dir.join(key_file);
        let key_pem = ca.issuer.key().serialize_pem();
        let key = Written::new(&ca.dir, key_file, key_pem.as_bytes(), KEY_MODE)?;
        let cert = Written::new(&ca.dir, cert_file, ca.cert_pem.as_bytes(), PUBLIC_FILE_MODE)?;
        // The key's link is on disk before the certificate's: a certificate
        // without its key would read as an activation cut short
        // (`super::rotation::finish_interrupted_step`).
        key.link_to(&key_path)?;
        atomic_file::sync_dir(&ca.dir)?;
        cert.link_to(&ca.cert_path)?;
        atomic_file::sync_dir(&ca.dir)?;
        Ok(ca)
    }

    /// The signing CA of `dir`, and the staged next CA's certificate (its
    /// key checked against it: a staged CA that could not sign is refused
    /// now, not when it is activated).
    fn read(dir: PathBuf) -> Result<Self, CaError> {
        let mut ca = Self::read_pair(dir, KEY_FILE, CERT_FILE)?;
        if pair_present(&ca.dir, NEXT_KEY_FILE, NEXT_CERT_FILE)? {
            let next = Self::read_pair(ca.dir.clone(), NEXT_KEY_FILE, NEXT_CERT_FILE)?;
            ca.next = Some(NextCert {
                pem: next.cert_pem,
                der: next.cert_der,
            });
        }
        Ok(ca)
    }

    /// The CA whose key is `key_file` and certificate `cert_file` in `dir`,
    /// self-checked.
    pub(super) fn read_pair(
        dir: PathBuf,
        key_file: &str,
        cert_file: &str,
    ) -> Result<Self, CaError> {
        let key_path = dir.join(key_file);
        let cert_path = dir.join(cert_file);
        let key_pem = read_key_file(&key_path)?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_error("read", &cert_path))?;
        let cert_der = parse_cert(&cert_path, &cert_pem)?;
        let key_der = parse_key(&key_path, &key_pem)?;
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Pem {
                path: key_path.clone(),
                message: format!("not a P-256 key: {e}"),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = Self::assemble(dir, cert_path, key_pair, cert_der, cert_pem, provider);
        ca.self_check()?;
        Ok(ca)
    }

    fn assemble(
        dir: PathBuf,
        cert_path: PathBuf,
        key_pair: KeyPair,
        cert_der: CertificateDer<'static>,
        cert_pem: String,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        let mut id = [0u8; 32];
        id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &cert_der).as_ref());
        Self {
            issuer: Issuer::new(ca_params(), key_pair),
            id,
            cert_der,
            cert_pem,
            cert_path,
            dir,
            next: None,
            provider,
        }
    }

    /// Proves that leaves signed with this CA verify against `ca.crt`, so a
    /// mismatch fails here, at start, and not in every agent's handshake.
    fn self_check(&self) -> Result<(), CaError> {
        let failed = |reason: String| CaError::SelfCheck {
            path: self.dir.clone(),
            reason,
        };
        let ca_key = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                self.issuer.key().serialize_der(),
            )))
            .map_err(rustls_error("load the CA key"))?;
        match CertifiedKey::new(vec![self.cert_der.clone()], ca_key).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(failed(format!("{KEY_FILE} does not belong to {CERT_FILE}")));
            }
            Err(e) => {
                return Err(failed(format!(
                    "{CERT_FILE} is not a usable certificate: {e}"
                )));
            }
        }
        // The issuer name in leaves comes from CA_COMMON_NAME and
        // CA_ORGANIZATION, not from ca.crt: it must match ca.crt's subject
        // byte for byte, or clients cannot chain the leaf to the CA.
        let probe = self.mint(PROBE_NAME)?;
        verify_chain(&self.cert_der, &probe.key.cert, PROBE_NAME, &self.provider)
            .map_err(|e| failed(format!("a leaf it signed does not verify: {e}")))
    }
}

fn random_serial(provider: &CryptoProvider) -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    provider
        .secure_random
        .fill(&mut bytes)
        .map_err(|e| rustls_error("generate a serial number")(e.into()))?;
    // Positive, and never zero (RFC 5280 section 4.1.2.2).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Verifies `chain` (leaf first) for `name` with `ca` as the only root, the
/// way a client that trusts only agentguard would.
pub(super) fn verify_chain(
    ca: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    name: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    let server_name =
        ServerName::try_from(name).map_err(|e| rustls::Error::General(format!("{name:?}: {e}")))?;
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or(rustls::Error::NoCertificatesPresented)?;
    verifier
        .verify_server_cert(
            end_entity,
            intermediates,
            &server_name,
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

/// Whether `ca.key` and `ca.crt` both exist (true) or neither does (false).
/// Half a CA is an error: making a new one would overwrite what is left.
fn both_present(dir: &Path) -> Result<bool, CaError> {
    pair_present(dir, KEY_FILE, CERT_FILE)
}

/// Whether `key_file` and `cert_file` both exist in `dir` (true) or neither
/// does (false); one without the other is an error.
pub(super) fn pair_present(dir: &Path, key_file: &str, cert_file: &str) -> Result<bool, CaError> {
    let key_path = dir.join(key_file);
    let cert_path = dir.join(cert_file);
    let exists = |path: &Path| path.try_exists().map_err(io_error("check", path));
    match (exists(&key_path)?, exists(&cert_path)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (true, false) => Err(CaError::HalfPresent {
            present: key_path,
            missing: cert_path,
        }),
        (false, true) => Err(CaError::HalfPresent {
            present: cert_path,
            missing: key_path,
        }),
    }
}

/// Creates `ca/` if absent and makes sure nobody else can swap files in it.
fn prepare_dir(dir: &Path) -> Result<(), CaError> {
    match fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => info!(path = %dir.display(), "created the CA folder"),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(io_error("create", dir)(source)),
    }
    let meta = fs::metadata(dir).map_err(io_error("read", dir))?;
    check_dir(dir, &meta)?;
    // The umask may have taken o+x away at creation, or an operator may have
    // made the folder 0700; agents then could not read the bundle by path.
    if meta.mode() & 0o7777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_error("set permissions on", dir))?;
    }
    Ok(())
}

fn check_dir(dir: &Path, meta: &fs::Metadata) -> Result<(), CaError> {
    if !meta.is_dir() {
        return Err(io_error("use", dir)(io::ErrorKind::NotADirectory.into()));
    }
    check_owner(dir, meta)?;
    let mode = meta.mode() & 0o7777;
    if mode & DIR_FORBIDDEN_BITS != 0 {
        return Err(CaError::InsecureDir {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Another user owning a file could chmod it or replace its contents.
fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<(), CaError> {
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(CaError::ForeignOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    Ok(())
}

/// Reads the key, checking owner and mode on the open file: what is checked is
/// what is read, even if the path is swapped in between.
fn read_key_file(path: &Path) -> Result<String, CaError> {
    let file = fs::File::open(path).map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("read", path))?;
    check_owner(path, &meta)?;
    let mode = meta.mode() & 0o7777;
    if mode & KEY_FORBIDDEN_BITS != 0 {
        return Err(CaError::InsecureKey {
            path: path.to_owned(),
            mode,
        });
    }
    io::read_to_string(file).map_err(io_error("read", path))
}

/// Exactly one certificate and nothing else: whatever else sat in ca.crt
/// (a private key, say) would be published in the trust bundle.
pub(super) fn parse_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, CaError> {
    match <[Item; 1]>::try_from(read_pem_items(path, pem)?) {
        Ok([Item::X509Certificate(cert)]) => Ok(cert),
        _ => Err(CaError::Pem {
            path: path.to_owned(),
            message: "expected exactly one certificate (BEGIN CERTIFICATE) and nothing else"
                .to_owned(),
        }),
    }
}

fn parse_key(path: &Path, pem: &str) -> Result<PrivatePkcs8KeyDer<'static>, CaError> {
    match <[Item; 1]>::try_from(read_pem_items(path, pem)?) {
        Ok([Item::Pkcs8Key(key)]) => Ok(key),
        _ => Err(CaError::Pem {
            path: path.to_owned(),
            message: "expected exactly one PKCS#8 private key (BEGIN PRIVATE KEY) and nothing else"
                .to_owned(),
        }),
    }
}

fn read_pem_items(path: &Path, pem: &str) -> Result<Vec<Item>, CaError> {
    rustls_pemfile::read_all(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    fn ring() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    #[test]
    fn create_then_load_gives_the_same_ca_with_safe_modes() {
        let state = tempfile::tempdir().unwrap();
        let created = LocalCa::load_or_create(state.path()).unwrap();
        let dir = state.path().join("ca");
        assert_eq!(created.cert_path(), dir.join("ca.crt"));
        assert!(
            created
                .cert_pem()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );

        let reloaded = LocalCa::load_or_create(state.path()).unwrap();
        assert_eq!(reloaded.cert_pem(), created.cert_pem());
        assert_eq!(reloaded.cert_der(), created.cert_der());
        let loaded = LocalCa::load(state.path()).unwrap();
        assert_eq!(loaded.cert_pem(), created.cert_pem());

        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir.join("ca.crt")), 0o644);
        assert_eq!(mode(&dir), 0o711);
        // No temporary files are left behind.
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "ca.key"]);
    }

    #[test]
    fn load_without_a_ca_says_how_to_make_one_and_creates_nothing() {
        let state = tempfile::tempdir().unwrap();
        let err = LocalCa::load(state.path()).unwrap_err();
        assert!(matches!(err, CaError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("start the daemon once"), "{err}");
        assert!(!state.path().join("ca").exists());
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        let state = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(state.path()).unwrap();
        let key = state.path().join("ca/ca.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();

        for err in [
            LocalCa::load_or_create(state.path()).unwrap_err(),
            LocalCa::load(state.path()).unwrap_err(),
        ] {
            assert!(
                matches!(&err, CaError::InsecureKey { mode: 0o644, .. }),
                "{err}"
            );
            let message = err.to_string();
            assert!(message.contains("0644"), "{message}");
            assert!(message.contains(&key.display().to_string()), "{message}");
        }
    }

    #[test]
    fn writable_ca_folder_is_refused() {
        let state = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(state.path()).unwrap();
        let dir = state.path().join("ca");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = LocalCa::load_or_create(state.path()).unwrap_err();
        assert!(
            matches!(err, CaError::InsecureDir { mode: 0o777, .. }),
            "{err}"
        );
    }

    #[test]
    fn too_strict_ca_folder_is_opened_for_traversal() {
        let state = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(state.path()).unwrap();
        let dir = state.path().join("ca");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        LocalCa::load_or_create(state.path()).unwrap();
        assert_eq!(mode(&dir), 0o711);
    }

    #[test]
    fn half_a_ca_is_refused_and_left_alone() {
        let state = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(state.path()).unwrap();
        let cert = state.path().join("ca/ca.crt");
        fs::remove_file(&cert).unwrap();

        let err = LocalCa::load_or_create(state.path()).unwrap_err();
        assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");
        assert!(
            !cert.exists(),
            "a new certificate was written over half a CA"
        );
        let err = LocalCa::load(state.path()).unwrap_err();
        assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");
    }

    #[test]
    fn key_of_another_ca_is_refused() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(one.path()).unwrap();
        LocalCa::load_or_create(two.path()).unwrap();
        fs::copy(one.path().join("ca/ca.key"), two.path().join("ca/ca.key")).unwrap();

        let err = LocalCa::load(two.path()).unwrap_err();
        assert!(matches!(err, CaError::SelfCheck { .. }), "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn garbage_certificate_is_refused() {
        let state = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(state.path()).unwrap();
        let ca = state.path().join("ca");
        // A key in the certificate file would end up in the public bundle.
        fs::copy(ca.join("ca.key"), ca.join("ca.crt")).unwrap();
        let err = LocalCa::load(state.path()).unwrap_err();
        assert!(matches!(err, CaError::Pem { .. }), "{err}");
    }

    #[test]
    fn minted_leaf_verifies_for_its_name_only() {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        let leaf = ca.mint_leaf("api.example.com").unwrap();
        assert_eq!(leaf.cert.len(), 2);
        assert_eq!(&leaf.cert[1], ca.cert_der());
        leaf.keys_match().unwrap();

        verify_chain(ca.cert_der(), &leaf.cert, "api.example.com", &ring()).unwrap();
        let err = verify_chain(ca.cert_der(), &leaf.cert, "other.example.com", &ring());
        assert!(
            matches!(
                err,
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{err:?}"
        );

        // A leaf from another CA does not verify against this one.
        let other_state = tempfile::tempdir().unwrap();
        let other = LocalCa::load_or_create(other_state.path()).unwrap();
        let foreign = other.mint_leaf("api.example.com").unwrap();
        verify_chain(ca.cert_der(), &foreign.cert, "api.example.com", &ring()).unwrap_err();
    }

    #[test]
    fn ip_literal_gets_an_ip_san() {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        for ip in ["127.0.0.1", "::1"] {
            let leaf = ca.mint_leaf(ip).unwrap();
            verify_chain(ca.cert_der(), &leaf.cert, ip, &ring()).unwrap();
        }
    }

    #[test]
    fn invalid_server_names_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        for name in ["", "not a name", "*.example.com", "a..b", "exa\nmple.com"] {
            let err = ca.mint_leaf(name).unwrap_err();
            assert!(
                matches!(err, CaError::InvalidServerName(_)),
                "{name:?}: {err}"
            );
        }
    }

    #[test]
    fn serials_are_positive_and_differ() {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        let a = random_serial(&ca.provider).unwrap().to_bytes();
        let b = random_serial(&ca.provider).unwrap().to_bytes();
        assert_eq!(a.len(), SERIAL_LEN);
        assert_eq!(a[0] & 0x80, 0);
        assert_ne!(a, b);
    }
}
