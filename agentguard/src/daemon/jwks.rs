//! How the daemon's JWKS endpoint speaks TLS: the operator's certificate,
//! or leaves from agentguard's own CA (which tool servers on the host trust
//! through `<state-dir>/ca/ca.crt`) for `localhost`, the listen address and
//! the names the operator adds.

use std::{net::SocketAddr, sync::Arc};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use crate::{
    ca::{CaStore, LeafCache},
    config::JwksTlsOptions,
    token::JwksTls,
};

/// Leaves for a fixed set of names, refreshed before they expire (the leaf
/// cache does that); a hello without SNI (a client that dialled an IP
/// address) gets the listen address's.
#[derive(Debug)]
struct JwksCerts {
    leaves: LeafCache,
    names: Vec<String>,
    default: String,
}

impl ResolvesServerCert for JwksCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Never a leaf for a name a client made up: the cache would mint
        // one for anything.
        let name = hello
            .server_name()
            .filter(|n| self.names.iter().any(|m| m.eq_ignore_ascii_case(n)))
            .unwrap_or(&self.default);
        self.leaves.get(name).ok()
    }
}

/// The JWKS endpoint's TLS for a listener bound to `bound`.
pub fn tls(
    options: &JwksTlsOptions,
    ca: &Arc<CaStore>,
    bound: SocketAddr,
) -> Result<JwksTls, String> {
    if options.plain_http {
        return Ok(JwksTls::Off);
    }
    if let Some((cert, key)) = &options.cert_and_key {
        return crate::token::tls_acceptor(cert, key).map(JwksTls::On);
    }
    let ip = bound.ip();
    // An unspecified address answers on loopback too.
    let default = if ip.is_unspecified() {
        if ip.is_ipv4() { "127.0.0.1" } else { "::1" }.to_owned()
    } else {
        ip.to_string()
    };
    let mut names = vec!["localhost".to_owned(), default.clone()];
    names.extend(options.names.iter().cloned());
    let certs = JwksCerts {
        leaves: LeafCache::new(ca.clone(), names.len() + 1),
        names,
        default,
    };
    // Mint now: a name the CA cannot sign for stops the start, not a
    // handshake later.
    for name in &certs.names {
        certs
            .leaves
            .get(name)
            .map_err(|e| format!("name {name:?}: {e}"))?;
    }
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(certs));
    Ok(JwksTls::On(tokio_rustls::TlsAcceptor::from(Arc::new(
        config,
    ))))
}
