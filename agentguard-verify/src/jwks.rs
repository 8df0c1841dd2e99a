//! Where the issuer's public keys come from, reading them, and keeping them:
//! a JWKS file, a JWKS URL (feature `fetch`), or keys given in code; re-read
//! for a `kid` not seen before, at a bounded rate.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};
use thiserror::Error;

/// A JWKS is re-read for an unknown `kid` at most this often, so that tokens
/// with made-up key ids cannot make the verifier hammer the issuer.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// After a JWKS read fails, an unknown `kid` may try again this soon: an
/// issuer unreachable for a moment must not leave a key rotated meanwhile
/// unknown for the whole [`MIN_REFRESH_INTERVAL`].
pub(crate) const RETRY_AFTER_FAILED_FETCH: Duration = Duration::from_secs(1);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("jwks url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(
        "jwks url {0:?} is plain http to a host that is not loopback: the keys could be swapped on the way; use https (or allow plain http explicitly)"
    )]
    PlainHttp(String),
    #[error("jwks url {0:?}: this build has no `fetch` feature")]
    NoFetch(String),
    #[error("{0}")]
    Read(String),
}

/// Where the issuer's public keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document (`agentguard token jwks > jwks.json`).
    File(PathBuf),
    /// The issuer's JWKS endpoint, with CA certificates trusted for it
    /// beside the system roots (agentguard's own CA, for the daemon's).
    #[cfg(feature = "fetch")]
    Url {
        url: http::Uri,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
    /// Given in code; never re-read.
    Static(JwkSet),
}

impl JwksSource {
    /// `https://...` (or `http://` to a loopback host) is a URL; anything
    /// else a file. Plain `http://` elsewhere is refused: anyone on the path
    /// could hand the verifier keys of their own.
    pub fn parse(s: &str) -> Result<Self, JwksError> {
        Self::parse_with(s, false)
    }

    /// [`Self::parse`], with plain `http://` to any host allowed if
    /// `allow_http` (a network the operator trusts).
    pub fn parse_with(s: &str, allow_http: bool) -> Result<Self, JwksError> {
        let lower = s.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Ok(Self::File(PathBuf::from(s)));
        }
        let bad = |reason: String| JwksError::BadUrl {
            url: s.to_owned(),
            reason,
        };
        let url: http::Uri = s
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let host = url.host().ok_or_else(|| bad("no host".into()))?;
        if url.scheme_str() == Some("http") && !allow_http && !is_loopback(host) {
            return Err(JwksError::PlainHttp(s.to_owned()));
        }
        #[cfg(feature = "fetch")]
        {
            Ok(Self::Url {
                url,
                extra_roots: Vec::new(),
            })
        }
        #[cfg(not(feature = "fetch"))]
        {
            let _ = url;
            Err(JwksError::NoFetch(s.to_owned()))
        }
    }

    /// Trusts `certs` (DER) for an `https://` source beside the system
    /// roots; other sources are unchanged.
    #[cfg(feature = "fetch")]
    pub fn with_roots(mut self, certs: Vec<rustls::pki_types::CertificateDer<'static>>) -> Self {
        if let Self::Url { extra_roots, .. } = &mut self {
            extra_roots.extend(certs);
        }
        self
    }

    /// Reads the key set.
    pub async fn fetch(&self) -> Result<JwkSet, JwksError> {
        let bytes = match self {
            Self::Static(set) => return Ok(set.clone()),
            // A JWKS file is small and read at start and at most every few
            // seconds after: a blocking read is cheaper than a thread hop.
            Self::File(path) => std::fs::read(path)
                .map_err(|e| JwksError::Read(format!("failed to read {}: {e}", path.display())))?,
            #[cfg(feature = "fetch")]
            Self::Url { url, extra_roots } => fetch::get(url, extra_roots, MAX_JWKS_BYTES)
                .await
                .map_err(|e| JwksError::Read(format!("{url}: {e}")))?,
        };
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::Read("jwks larger than 1 MiB".into()));
        }
        serde_json::from_slice(&bytes).map_err(|e| JwksError::Read(format!("not a JWKS: {e}")))
    }

    fn refreshes(&self) -> bool {
        !matches!(self, Self::Static(_))
    }
}

/// `localhost` or a loopback address literal: traffic that never leaves the
/// host.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A key ready to check signatures with, and the one algorithm it is for.
#[derive(Clone)]
pub(crate) struct Key {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The keys by `kid`, parsed once rather than for every token.
pub(crate) struct KeyCache {
    source: JwksSource,
    keys: RwLock<HashMap<String, Key>>,
    refresh: Mutex<RefreshState>,
    /// One JWKS read at a time; the others wait for its result.
    refresh_lock: tokio::sync::Mutex<()>,
}

/// When an unknown `kid` may next make [`KeyCache::refresh`] read the JWKS,
/// and why the last read failed if it did.
#[derive(Debug, Default)]
struct RefreshState {
    /// `None`: at once.
    next: Option<Instant>,
    failure: Option<JwksError>,
}

impl KeyCache {
    /// Reads the keys once: a source that cannot be read is an error now,
    /// rather than a refusal of every token later.
    pub async fn load(source: JwksSource) -> Result<Self, JwksError> {
        let set = source.fetch().await?;
        Ok(Self {
            source,
            keys: RwLock::new(index(&set)),
            refresh: Mutex::new(RefreshState::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    pub fn get(&self, kid: &str) -> Option<Key> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kid)
            .cloned()
    }

    /// Re-reads the JWKS (a rotated key), at most every
    /// [`MIN_REFRESH_INTERVAL`], or [`RETRY_AFTER_FAILED_FETCH`] after a
    /// read that failed.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        if !self.source.refreshes() {
            return Ok(());
        }
        let _one = self.refresh_lock.lock().await;
        {
            let state = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
            if state.next.is_some_and(|t| Instant::now() < t) {
                // Too soon to ask again. If the last read failed, the keys
                // are still unavailable as far as we know: saying "unknown
                // key id" would blame a token that may be good.
                return state.failure.clone().map_or(Ok(()), Err);
            }
        }
        let fetched = self.source.fetch().await;
        let mut state = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        match fetched {
            Ok(set) => {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = index(&set);
                *state = RefreshState {
                    next: Some(Instant::now() + MIN_REFRESH_INTERVAL),
                    failure: None,
                };
                Ok(())
            }
            Err(e) => {
                *state = RefreshState {
                    next: Some(Instant::now() + RETRY_AFTER_FAILED_FETCH),
                    failure: Some(e.clone()),
                };
                Err(e)
            }
        }
    }
}

/// The usable keys of `set` by `kid`: P-256 (ES256) and Ed25519 (EdDSA)
/// keys with an id. Anything else cannot check an agentguard token, and a
/// key that does not parse is left out rather than failing the set.
fn index(set: &JwkSet) -> HashMap<String, Key> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let alg = match &jwk.algorithm {
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Algorithm::EdDSA
                }
                _ => return None,
            };
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, Key { alg, key }))
        })
        .collect()
}

#[cfg(feature = "fetch")]
mod fetch {
    //! GET over HTTP or HTTPS (verified against the system roots and the
    //! extra ones), bounded in time and size.

    use std::{sync::Arc, time::Duration};

    use http_body_util::{BodyExt as _, Empty, Limited};
    use hyper::body::Bytes;
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

    pub async fn get(
        url: &http::Uri,
        extra_roots: &[rustls::pki_types::CertificateDer<'static>],
        max: usize,
    ) -> Result<Vec<u8>, String> {
        let connector = connector(extra_roots)?;
        let client: Client<_, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(connector);
        let fetch = async {
            let resp = client.get(url.clone()).await.map_err(|e| {
                // hyper-util's error hides the cause (a certificate that
                // does not verify) one level down.
                let cause = std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                format!("{e}{cause}")
            })?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), max)
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    fn connector(
        extra: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        String,
    > {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for cert in extra {
            roots
                .add(cert.clone())
                .map_err(|e| format!("extra CA certificate: {e}"))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_unless_loopback_or_allowed() {
        for ok in [
            "http://127.0.0.1:9477/.well-known/jwks.json",
            "http://127.0.0.9/j",
            "http://[::1]:9/j",
            "http://LOCALHOST/j",
        ] {
            let parsed = JwksSource::parse(ok);
            #[cfg(feature = "fetch")]
            assert!(
                matches!(parsed, Ok(JwksSource::Url { .. })),
                "{ok}: {parsed:?}"
            );
            #[cfg(not(feature = "fetch"))]
            assert!(matches!(parsed, Err(JwksError::NoFetch(_))), "{ok}");
        }
        for bad in [
            "http://issuer.example/j",
            "http://10.0.0.1/j",
            "HTTP://[::2]/j",
        ] {
            assert!(
                matches!(JwksSource::parse(bad), Err(JwksError::PlainHttp(_))),
                "{bad}"
            );
            assert!(
                !matches!(
                    JwksSource::parse_with(bad, true),
                    Err(JwksError::PlainHttp(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            JwksSource::parse("jwks.json"),
            Ok(JwksSource::File(_))
        ));
        assert!(JwksSource::parse("https://").is_err());
    }
}
