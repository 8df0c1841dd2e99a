//! The trust bundle for unmodified agents: the system's trusted roots plus the
//! agentguard CA (and, during a rotation, the next one), in one PEM file that runtimes are pointed at with
//! `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `NODE_EXTRA_CA_CERTS` and the like.
//!
//! The system roots must be in it too: those variables replace a runtime's
//! trust store rather than add to it, and connections that policy passes
//! through untouched still present the real server's certificate.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use tracing::{debug, warn};

use super::authority::{CaError, LocalCa, PUBLIC_FILE_MODE};
use crate::atomic_file;

const BUNDLE_FILE: &str = "bundle.pem";

/// Where distributions keep their PEM bundle of trusted roots, in the order
/// tried: Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, Arch/BSD-style.
const SYSTEM_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

impl LocalCa {
    /// Writes `<state_dir>/ca/bundle.pem` (mode 0644): the first system trust
    /// store found, followed by the agentguard CA certificate and the staged
    /// next CA's, if one is staged ([`super::rotation`]). With no system
    /// store, the bundle holds only the agentguard CA (with a warning).
    /// Replaced atomically, so an agent starting meanwhile reads either the
    /// old bundle or the new one, never half of one. Returns its path.
    pub fn write_trust_bundle(&self) -> Result<PathBuf, CaError> {
        self.write_trust_bundle_from(&SYSTEM_BUNDLES.map(Path::new))
    }

    fn write_trust_bundle_from(&self, system_bundles: &[&Path]) -> Result<PathBuf, CaError> {
        let mut bundle = match read_first(system_bundles)? {
            Some((path, pem)) => {
                debug!(system_bundle = %path.display(), "building the trust bundle");
                pem
            }
            None => {
                warn!(
                    tried = ?system_bundles,
                    "no system trust store found: agents given the trust bundle will trust only \
                     certificates from agentguard"
                );
                Vec::new()
            }
        };
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        for pem in std::iter::once(self.cert_pem()).chain(self.next().map(|n| n.pem.as_str())) {
            bundle.extend_from_slice(pem.as_bytes());
            if !bundle.ends_with(b"\n") {
                bundle.push(b'\n');
            }
        }

        let path = self.bundle_path();
        atomic_file::replace(&path, &bundle, PUBLIC_FILE_MODE)?;
        Ok(path)
    }

    /// `<state_dir>/ca/bundle.pem`, written or not.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir().join(BUNDLE_FILE)
    }
}

/// The contents of the first of `paths` that exists. Any error other than
/// "not found" is reported: a store that exists but cannot be read should be
/// fixed, not silently skipped for the next one.
fn read_first<'a>(paths: &[&'a Path]) -> Result<Option<(&'a Path, Vec<u8>)>, CaError> {
    for path in paths {
        match fs::read(path) {
            Ok(pem) => return Ok(Some((path, pem))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CaError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";

    #[test]
    fn bundle_holds_the_system_roots_and_the_ca() {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        let path = ca.write_trust_bundle().unwrap();
        assert_eq!(path, state.path().join("ca/bundle.pem"));

        let bundle = fs::read_to_string(&path).unwrap();
        assert!(bundle.ends_with(ca.cert_pem()), "the CA is not last");
        // This Debian machine has a system store.
        assert!(bundle.matches(BEGIN).count() > 1);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );

        // Writing again replaces it, and leaves no temporary file behind.
        ca.write_trust_bundle().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), bundle);
        let names: Vec<_> = fs::read_dir(state.path().join("ca"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn without_a_system_store_the_bundle_is_the_ca_alone() {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        let missing = state.path().join("no-such-bundle.pem");
        let path = ca.write_trust_bundle_from(&[&missing]).unwrap();
        let bundle = fs::read_to_string(path).unwrap();
        assert_eq!(bundle.matches(BEGIN).count(), 1);
        assert_eq!(bundle, ca.cert_pem());
    }

    #[test]
    fn first_existing_store_wins_and_gets_a_newline() {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        let missing = state.path().join("missing.pem");
        let first = state.path().join("first.pem");
        let second = state.path().join("second.pem");
        fs::write(&first, "# first, no trailing newline").unwrap();
        fs::write(&second, "# second\n").unwrap();
        let path = ca
            .write_trust_bundle_from(&[&missing, &first, &second])
            .unwrap();
        let bundle = fs::read_to_string(path).unwrap();
        assert_eq!(
            bundle,
            format!("# first, no trailing newline\n{}", ca.cert_pem())
        );
    }
}
