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
    /// store, the bundle holds only the agentguard CA (with a warning). An
    /// agentguard CA in the system store that is neither of these (one
    /// installed host-wide before a rotation) is left out, with a warning:
    /// a rotation must end the old CA's trust.
    /// Replaced atomically, so an agent starting meanwhile reads either the
    /// old bundle or the new one, never half of one. Returns its path.
    pub fn write_trust_bundle(&self) -> Result<PathBuf, CaError> {
        self.write_trust_bundle_from(&SYSTEM_BUNDLES.map(Path::new))
    }

    fn write_trust_bundle_from(&self, system_bundles: &[&Path]) -> Result<PathBuf, CaError> {
        let mut bundle = match read_first(system_bundles)? {
            Some((path, pem)) => {
                debug!(system_bundle = %path.display(), "building the trust bundle");
                self.without_stale_cas(path, pem)
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

    /// `system` (the store read from `path`) without the agentguard CA
    /// certificates that are neither the one that signs nor the staged one:
    /// certificates under this CA's subject name, which every agentguard CA
    /// shares.
    fn without_stale_cas(&self, path: &Path, system: Vec<u8>) -> Vec<u8> {
        let subject = |der: &[u8]| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, cert)| cert.tbs_certificate.subject.as_raw().to_vec())
        };
        let Some(ours) = subject(self.cert_der()) else {
            return system;
        };
        let current: Vec<&[u8]> = std::iter::once(self.cert_der().as_ref())
            .chain(self.next().map(|n| n.der.as_ref()))
            .collect();
        let mut kept = Vec::with_capacity(system.len());
        let mut rest = system.as_slice();
        let mut dropped = 0;
        while let Some(start) = find(rest, PEM_BEGIN) {
            let Some(len) = find(&rest[start..], PEM_END).map(|i| i + PEM_END.len()) else {
                break;
            };
            let block = &rest[start..start + len];
            let der = rustls_pemfile::certs(&mut &block[..])
                .next()
                .and_then(Result::ok);
            let stale = der.is_some_and(|der| {
                subject(&der).as_ref() == Some(&ours) && !current.contains(&der.as_ref())
            });
            if stale {
                kept.extend_from_slice(&rest[..start]);
                dropped += 1;
            } else {
                kept.extend_from_slice(&rest[..start + len]);
            }
            rest = &rest[start + len..];
        }
        kept.extend_from_slice(rest);
        if dropped > 0 {
            warn!(
                system_bundle = %path.display(),
                dropped,
                "the system trust store holds an agentguard CA that no longer signs: left out of the agents' bundle; remove it from the host's store (/usr/local/share/ca-certificates, then update-ca-certificates)"
            );
        }
        kept
    }

    /// `<state_dir>/ca/bundle.pem`, written or not.
    pub fn bundle_path(&self) -> PathBuf {
        self.dir().join(BUNDLE_FILE)
    }
}

const PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
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

    /// A system store that holds an agentguard CA from before a rotation
    /// (installed host-wide) does not carry it into the agents' bundle;
    /// everything else in the store, and the current CA, stays.
    #[test]
    fn a_former_agentguard_ca_in_the_system_store_is_left_out() {
        let state = tempfile::tempdir().unwrap();
        let store = crate::ca::CaStore::load_or_create(state.path()).unwrap();
        store.current().write_trust_bundle().unwrap();
        let old = store.current().cert_pem().to_owned();
        store.apply(crate::ca::Step::Rotate).unwrap();
        store.apply(crate::ca::Step::Activate).unwrap();
        let ca = store.current();
        let other = fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
        let other = &other[..other.find("-----END CERTIFICATE-----").unwrap() + 26];
        let system = state.path().join("system.pem");
        fs::write(
            &system,
            format!(
                "# a root\n{other}# agentguard, host-wide\n{old}{}",
                ca.cert_pem()
            ),
        )
        .unwrap();
        let path = ca.write_trust_bundle_from(&[&system]).unwrap();
        let bundle = fs::read_to_string(path).unwrap();
        assert!(!bundle.contains(&old), "the old CA stayed trusted");
        assert!(bundle.contains(other));
        assert!(bundle.contains("# agentguard, host-wide"));
        assert!(bundle.contains(ca.cert_pem()));
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
