//! The bench CA and the upstream's leaf, made in code at every run (no PEM
//! is checked in). The same leaf serves nginx, which presents it to clients.

use std::{fs, net::IpAddr, path::Path};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Makes a CA and a leaf for `names` and `ip`, writes `ca.pem`,
/// `leaf.pem` (leaf then CA) and `leaf.key` (PKCS#8) into `dir`, and returns
/// the leaf for the in-process server.
pub fn make(dir: &Path, names: &[String], ip: IpAddr) -> Result<Leaf> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "agentguard bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    // The IP too: mitmproxy and nginx may check the upstream by address.
    params.subject_alt_names.push(SanType::IpAddress(ip));
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().map_or("bench", |n| n));
    let leaf = params.signed_by(&key, &issuer)?;

    let write = |name: &str, text: String| {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))
    };
    write("ca.pem", ca_cert.pem())?;
    write("leaf.pem", format!("{}{}", leaf.pem(), ca_cert.pem()))?;
    write("leaf.key", key.serialize_pem())?;
    Ok(Leaf {
        chain: vec![leaf.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// A root store holding the certificates in the PEM file `path`.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore> {
    let pem = fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    anyhow::ensure!(!roots.is_empty(), "no certificate in {}", path.display());
    Ok(roots)
}
