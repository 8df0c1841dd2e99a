//! Verifying a request-bound token the way a tool server must: signature,
//! issuer, audience, lifetime, scope, the binding to the request actually
//! received, and single use.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{Uri, body::Bytes};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
};
use thiserror::Error;

use super::{
    Claims, DEFAULT_LEEWAY, MAX_TTL, RequestBinding, normalize_htu, now_secs,
    replay::{DEFAULT_REPLAY_CAPACITY, ReplayCache, ReplayVerdict},
};

/// A JWKS is re-read for an unknown `kid` at most this often, so that tokens
/// with made-up key ids cannot make the verifier hammer the issuer.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// After a JWKS fetch fails, an unknown `kid` may try again this soon: an
/// issuer unreachable for a moment must not leave a key rotated meanwhile
/// unknown for the whole [`MIN_REFRESH_INTERVAL`].
const RETRY_AFTER_FAILED_FETCH: Duration = Duration::from_secs(1);
/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a token was refused. `InvalidToken` is RFC 6750 §3.1 `invalid_token`
/// (401), `InsufficientScope` is `insufficient_scope` (403). `Jwks` says
/// nothing about the token: the keys to check it with could not be read
/// (503).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("invalid_token: {0}")]
    InvalidToken(String),
    #[error("insufficient_scope: {0}")]
    InsufficientScope(String),
    #[error("jwks: {0}")]
    Jwks(String),
}

impl VerifyError {
    /// The HTTP status a resource server answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidToken(_) => 401,
            Self::InsufficientScope(_) => 403,
            Self::Jwks(_) => 503,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3), for the two errors that
    /// are about the token. A JWKS that cannot be fetched has none: RFC
    /// 6750 ties `invalid_token` to 401, and telling a client its (maybe
    /// good) token is invalid would make it throw the token away.
    pub fn www_authenticate(&self, scope: Option<&str>) -> Option<String> {
        let quoted = |s: &str| s.replace(['\\', '"'], "'");
        match self {
            Self::InvalidToken(reason) => Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                quoted(reason)
            )),
            Self::InsufficientScope(reason) => {
                let mut v = format!(
                    "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                    quoted(reason)
                );
                if let Some(s) = scope {
                    v.push_str(&format!(", scope=\"{}\"", quoted(s)));
                }
                Some(v)
            }
            Self::Jwks(_) => None,
        }
    }
}

fn invalid(reason: impl Into<String>) -> VerifyError {
    VerifyError::InvalidToken(reason.into())
}

/// Where the issuer's public keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document (`agentguard token jwks > jwks.json`).
    File(PathBuf),
    /// The issuer's JWKS endpoint.
    Url(Uri),
    /// Given in code; never refreshed.
    Static(JwkSet),
}

impl JwksSource {
    /// `http(s)://...` is a URL; anything else a file.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            s.parse()
                .map(Self::Url)
                .map_err(|e| format!("jwks url {s:?}: {e}"))
        } else {
            Ok(Self::File(PathBuf::from(s)))
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The `aud` this tool answers to.
    pub audience: String,
    /// The `iss` every token must carry (an agentguard's is
    /// `spiffe://<trust-domain>/agentguard`); `None` accepts any issuer the
    /// JWKS holds a key for, which is safe only while that JWKS is one
    /// issuer's alone.
    pub issuer: Option<String>,
    /// Space-separated scopes every token must grant.
    pub scope: Option<String>,
    pub leeway: Duration,
    pub replay_capacity: usize,
}

impl VerifierConfig {
    /// `issuer` has no default: accepting any issuer is a choice the caller
    /// makes explicitly, with `None`.
    pub fn new(audience: &str, issuer: Option<&str>) -> Self {
        Self {
            audience: audience.to_owned(),
            issuer: issuer.map(str::to_owned),
            scope: None,
            leeway: DEFAULT_LEEWAY,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }
}

/// Checks tokens for one audience. Cheap to share (`Arc`); the replay cache
/// is per verifier, so a tool with several instances needs them to share
/// one verify-proxy (or tokens could be replayed once per instance).
pub struct Verifier {
    cfg: VerifierConfig,
    source: JwksSource,
    keys: RwLock<JwkSet>,
    refresh: Mutex<RefreshState>,
    refresh_lock: tokio::sync::Mutex<()>,
    replay: ReplayCache,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("cfg", &self.cfg)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the JWKS once; a source that cannot be read is an error now
    /// rather than a 401 for every request later.
    pub async fn new(cfg: VerifierConfig, source: JwksSource) -> Result<Arc<Self>, VerifyError> {
        let keys = fetch(&source).await?;
        Ok(Arc::new(Self {
            replay: ReplayCache::new(cfg.replay_capacity),
            cfg,
            source,
            keys: RwLock::new(keys),
            // The first unknown kid may refresh at once (a key rotated
            // since start); later ones are rate-limited.
            refresh: Mutex::new(RefreshState::default()),
            refresh_lock: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.cfg
    }

    /// Verifies `token` and, if `binding` is given, that it was minted for
    /// exactly that request. A token that passes is recorded and refused
    /// from then on, for as long as it could still verify.
    pub async fn verify(
        &self,
        token: &str,
        binding: Option<&RequestBinding>,
    ) -> Result<Claims, VerifyError> {
        self.verify_at(token, binding, now_secs()).await
    }

    /// [`Self::verify`] at `now` (seconds since the epoch): one clock
    /// reading decides both whether the token is still valid and how long
    /// its `jti` is remembered, so the two cannot disagree.
    async fn verify_at(
        &self,
        token: &str,
        binding: Option<&RequestBinding>,
        now: u64,
    ) -> Result<Claims, VerifyError> {
        let claims = self.check_at(token, binding, now).await?;
        self.spend(claims, now)
    }

    /// Every check but single use (`agentguard token verify` shows a token
    /// without spending it... in a process that ends anyway).
    pub async fn check(
        &self,
        token: &str,
        binding: Option<&RequestBinding>,
    ) -> Result<Claims, VerifyError> {
        self.check_at(token, binding, now_secs()).await
    }

    async fn check_at(
        &self,
        token: &str,
        binding: Option<&RequestBinding>,
        now: u64,
    ) -> Result<Claims, VerifyError> {
        let header = decode_header(token).map_err(|e| invalid(format!("malformed token: {e}")))?;
        // Only asymmetric algorithms: "none" and HMAC (with the public key as
        // the secret) are the classic confusions.
        if !matches!(header.alg, Algorithm::ES256 | Algorithm::EdDSA) {
            return Err(invalid(format!("algorithm {:?} not accepted", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| invalid("token header has no kid"))?;
        let jwk = match self.find(&kid) {
            Some(jwk) => jwk,
            None => {
                self.refresh().await?;
                self.find(&kid)
                    .ok_or_else(|| invalid(format!("unknown key id {kid:?}")))?
            }
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| invalid(format!("key {kid:?}: {e}")))?;
        let mut validation = Validation::new(header.alg);
        // exp, nbf and iat are checked below against `now`, not against
        // jsonwebtoken's own clock (see verify_at).
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_audience(&[&self.cfg.audience]);
        if let Some(iss) = &self.cfg.issuer {
            validation.set_issuer(&[iss]);
        }
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| {
                invalid(match e.kind() {
                    ErrorKind::InvalidAudience => {
                        format!("token is not for audience {:?}", self.cfg.audience)
                    }
                    ErrorKind::InvalidIssuer => "token from another issuer".to_owned(),
                    ErrorKind::InvalidSignature => "bad signature".to_owned(),
                    _ => format!("malformed token: {e}"),
                })
            })?
            .claims;
        self.check_lifetime(&claims, now)?;
        // A token is for one call: a long-lived one would also make the
        // replay cache hold it for long.
        if claims.exp.saturating_sub(claims.iat) > MAX_TTL.as_secs() {
            return Err(invalid("token lifetime exceeds the maximum"));
        }
        if claims.jti.is_empty() {
            return Err(invalid("token has no jti"));
        }
        if let Some(b) = binding {
            check_binding(&claims, b)?;
        }
        if let Some(scope) = &self.cfg.scope
            && !claims.has_scopes(scope)
        {
            return Err(VerifyError::InsufficientScope(format!(
                "token scope {:?} does not include {scope:?}",
                claims.scope
            )));
        }
        Ok(claims)
    }

    /// verify-proxy's first step, before it reads the body: every check
    /// but the body's hash and single use, and also that the token is bound
    /// to `head`'s method and URI and has not been used. A client without
    /// such a token cannot make the proxy wait for, and buffer, a body.
    /// (`head.body_hash` is not looked at.)
    pub(super) async fn check_head(
        &self,
        token: &str,
        head: &RequestBinding,
    ) -> Result<Claims, VerifyError> {
        let now = now_secs();
        let claims = self.check_at(token, None, now).await?;
        check_target(&claims, head)?;
        if self.replay.contains(&claims.jti, now) {
            return Err(invalid("token already used (replay)"));
        }
        Ok(claims)
    }

    /// verify-proxy's second step, with the body read: the whole binding,
    /// the lifetime again (the body took time to arrive), and single use.
    pub(super) fn finish(
        &self,
        claims: Claims,
        binding: &RequestBinding,
    ) -> Result<Claims, VerifyError> {
        let now = now_secs();
        self.check_lifetime(&claims, now)?;
        check_binding(&claims, binding)?;
        self.spend(claims, now)
    }

    /// The last second (since the epoch) in which a token that expires at
    /// `exp` still verifies: the lifetime check and the replay cache both
    /// use it.
    fn last_valid(&self, exp: u64) -> u64 {
        exp.saturating_add(self.cfg.leeway.as_secs())
    }

    /// `exp`, `nbf` and `iat` with the configured leeway each way: valid
    /// while `now <= exp + leeway` and `nbf, iat <= now + leeway` (the
    /// bounds jsonwebtoken uses).
    fn check_lifetime(&self, claims: &Claims, now: u64) -> Result<(), VerifyError> {
        let leeway = self.cfg.leeway.as_secs();
        if now > self.last_valid(claims.exp) {
            return Err(invalid("token expired"));
        }
        if claims.nbf > now.saturating_add(leeway) {
            return Err(invalid("token not yet valid"));
        }
        if claims.iat > now.saturating_add(leeway) {
            return Err(invalid("token issued in the future"));
        }
        Ok(())
    }

    /// Records the token's `jti` through the last second it verifies in; a
    /// token seen before is refused.
    fn spend(&self, claims: Claims, now: u64) -> Result<Claims, VerifyError> {
        match self
            .replay
            .check(&claims.jti, self.last_valid(claims.exp), now)
        {
            ReplayVerdict::Fresh => Ok(claims),
            ReplayVerdict::Replayed => Err(invalid("token already used (replay)")),
            ReplayVerdict::Full => Err(invalid("replay cache is full; try again shortly")),
        }
    }

    fn find(&self, kid: &str) -> Option<Jwk> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .find(kid)
            .cloned()
    }

    /// Re-reads the JWKS (a rotated key), at most every
    /// [`MIN_REFRESH_INTERVAL`], or [`RETRY_AFTER_FAILED_FETCH`] after a
    /// fetch that failed.
    async fn refresh(&self) -> Result<(), VerifyError> {
        if matches!(self.source, JwksSource::Static(_)) {
            return Ok(());
        }
        let _one = self.refresh_lock.lock().await;
        {
            let state = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
            if state.next.is_some_and(|t| Instant::now() < t) {
                // Too soon to ask again. If the last fetch failed, the
                // keys are still unavailable as far as we know: saying
                // "unknown key id" would blame a token that may be good.
                return state.failure.clone().map_or(Ok(()), Err);
            }
        }
        let fetched = fetch(&self.source).await;
        let mut state = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        match fetched {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
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

/// When an unknown `kid` may next make [`Verifier::refresh`] fetch the
/// JWKS, and why the last fetch failed if it did.
#[derive(Debug, Default)]
struct RefreshState {
    /// `None`: at once.
    next: Option<Instant>,
    failure: Option<VerifyError>,
}

/// The token must name the request it arrived with.
fn check_binding(claims: &Claims, b: &RequestBinding) -> Result<(), VerifyError> {
    check_target(claims, b)?;
    if claims.rh != b.request_hash() {
        return Err(invalid(
            "request hash does not match: method, authority, path, query or body changed",
        ));
    }
    Ok(())
}

/// The parts of the binding known before the body: method and URI.
fn check_target(claims: &Claims, b: &RequestBinding) -> Result<(), VerifyError> {
    if claims.htm != b.method {
        return Err(invalid(format!(
            "token is bound to method {}, request is {}",
            claims.htm, b.method
        )));
    }
    let want = b.htu().map_err(invalid)?;
    let got = normalize_htu(&claims.htu).map_err(|e| invalid(format!("htu: {e}")))?;
    if got != want {
        return Err(invalid(format!(
            "token is bound to {got}, request is for {want}"
        )));
    }
    Ok(())
}

async fn fetch(source: &JwksSource) -> Result<JwkSet, VerifyError> {
    let err = |e: String| VerifyError::Jwks(e);
    let bytes = match source {
        JwksSource::Static(set) => return Ok(set.clone()),
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| err(format!("failed to read {}: {e}", path.display())))?,
        JwksSource::Url(url) => tokio::time::timeout(FETCH_TIMEOUT, get(url))
            .await
            .map_err(|_| err(format!("{url}: timed out")))?
            .map_err(|e| err(format!("{url}: {e}")))?,
    };
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(err("jwks larger than 1 MiB".into()));
    }
    serde_json::from_slice(&bytes).map_err(|e| err(format!("not a JWKS: {e}")))
}

/// HTTP or HTTPS (verified against the system roots) to JWKS endpoints and
/// verify-proxy's upstream.
/// `extra` are more trusted CA certificates (DER), beside the system roots.
pub(super) fn https_connector(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for cert in extra {
        let _ = roots.add(cert.clone());
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build()
}

async fn get(url: &Uri) -> Result<Vec<u8>, String> {
    let connector = https_connector(&[]);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let resp = client.get(url.clone()).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{KeyStore, MintRequest, Minter, SigningAlgorithm};

    fn setup() -> (tempfile::TempDir, Minter) {
        setup_with(SigningAlgorithm::Es256)
    }

    fn setup_with(alg: SigningAlgorithm) -> (tempfile::TempDir, Minter) {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::load_or_create(dir.path(), alg).unwrap();
        (dir, Minter::new(keys, "example.org"))
    }

    fn binding(method: &str, url: &str, body: &[u8]) -> RequestBinding {
        RequestBinding::from_url(method, url, body).unwrap()
    }

    const URL: &str = "https://tool.example/v1/tickets?dry=1";

    fn mint(m: &Minter, aud: &str, scope: &str, b: &RequestBinding) -> String {
        m.mint(&MintRequest {
            agent: "bot",
            audience: aud,
            scope,
            ttl: Duration::from_secs(60),
            binding: b,
            on_behalf_of: Some("alice@example.org"),
            kernel: Some(("agentguard/bot", 1000)),
        })
        .unwrap()
        .token
    }

    async fn verifier(m: &Minter, scope: Option<&str>) -> Arc<Verifier> {
        let mut cfg = VerifierConfig::new("itsm", Some(&m.issuer()));
        cfg.scope = scope.map(Into::into);
        Verifier::new(cfg, JwksSource::Static(m.jwks()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn eddsa_tokens_verify_and_bind_like_es256_ones() {
        let (_d, m) = setup_with(SigningAlgorithm::EdDsa);
        let b = binding("POST", URL, b"{}");
        let t = mint(&m, "itsm", "tickets:write", &b);
        let header = decode_header(&t).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        let v = verifier(&m, Some("tickets:write")).await;
        let other = binding("POST", URL, b"{\"x\":1}");
        let err = v.verify(&t, Some(&other)).await.unwrap_err();
        assert!(
            matches!(&err, VerifyError::InvalidToken(r) if r.contains("request hash")),
            "{err}"
        );
        v.verify(&t, Some(&b)).await.unwrap();
    }

    #[tokio::test]
    async fn a_bound_token_verifies_once() {
        let (_d, m) = setup();
        let b = binding("POST", URL, b"{}");
        let t = mint(&m, "itsm", "tickets:write", &b);
        let v = verifier(&m, Some("tickets:write")).await;
        let c = v.verify(&t, Some(&b)).await.unwrap();
        assert_eq!(c.sub, "spiffe://example.org/agent/bot");
        assert_eq!(c.iss, "spiffe://example.org/agentguard");
        assert_eq!(c.aud, "itsm");
        assert_eq!(c.htm, "POST");
        assert_eq!(c.htu, "https://tool.example/v1/tickets");
        assert_eq!(c.act.unwrap().sub, "alice@example.org");
        assert_eq!(c.agentguard.unwrap().uid, 1000);
        assert!(c.exp - c.iat == 60 && c.nbf == c.iat);
        let again = v.verify(&t, Some(&b)).await.unwrap_err();
        assert!(matches!(&again, VerifyError::InvalidToken(r) if r.contains("replay")));
        assert_eq!(again.status(), 401);
    }

    #[tokio::test]
    async fn a_token_is_refused_as_a_replay_in_the_last_second_it_verifies() {
        let (_d, m) = setup();
        let b = binding("POST", URL, b"{}");
        let minted = m
            .mint(&MintRequest {
                agent: "bot",
                audience: "itsm",
                scope: "",
                ttl: Duration::from_secs(60),
                binding: &b,
                on_behalf_of: None,
                kernel: None,
            })
            .unwrap();
        let v = verifier(&m, None).await;
        // jsonwebtoken's rule, and ours: valid while now <= exp + leeway.
        let last = minted.claims.exp + DEFAULT_LEEWAY.as_secs();
        v.verify_at(&minted.token, Some(&b), last).await.unwrap();
        let again = v
            .verify_at(&minted.token, Some(&b), last)
            .await
            .unwrap_err();
        assert!(again.to_string().contains("replay"), "{again}");
        let later = v
            .verify_at(&minted.token, Some(&b), last + 1)
            .await
            .unwrap_err();
        assert!(later.to_string().contains("expired"), "{later}");
    }

    #[tokio::test]
    async fn each_binding_is_checked() {
        let (_d, m) = setup();
        let b = binding("POST", URL, b"{}");
        let v = verifier(&m, None).await;
        for (other, what) in [
            (binding("PUT", URL, b"{}"), "method"),
            (
                binding("POST", "https://tool.example/v1/other?dry=1", b"{}"),
                "path",
            ),
            (
                binding("POST", "https://tool.example/v1/tickets?dry=0", b"{}"),
                "query",
            ),
            (
                binding("POST", "https://evil.example/v1/tickets?dry=1", b"{}"),
                "host",
            ),
            (binding("POST", URL, b"{\"x\":1}"), "body"),
        ] {
            let t = mint(&m, "itsm", "", &b);
            let e = v.verify(&t, Some(&other)).await.unwrap_err();
            assert!(matches!(e, VerifyError::InvalidToken(_)), "{what}: {e}");
        }
    }

    #[tokio::test]
    async fn audience_issuer_lifetime_scope_and_signature_are_checked() {
        let (_d, m) = setup();
        let b = binding("GET", URL, b"");
        let v = verifier(&m, Some("tickets:write")).await;
        let t = mint(&m, "other-tool", "tickets:write", &b);
        let e = v.verify(&t, Some(&b)).await.unwrap_err();
        assert!(e.to_string().contains("audience"), "{e}");

        let t = mint(&m, "itsm", "tickets:read", &b);
        let e = v.verify(&t, Some(&b)).await.unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(
            e.www_authenticate(Some("tickets:write"))
                .unwrap()
                .starts_with("Bearer error=\"insufficient_scope\"")
        );

        let good = m
            .mint(&MintRequest {
                agent: "bot",
                audience: "itsm",
                scope: "tickets:write",
                ttl: Duration::from_secs(60),
                binding: &b,
                on_behalf_of: None,
                kernel: None,
            })
            .unwrap()
            .claims;
        let now = now_secs();
        let doctored = |f: &dyn Fn(&mut Claims)| {
            let mut c = good.clone();
            c.jti = format!("{}-{}", c.jti, now_secs());
            f(&mut c);
            m.sign(&c).unwrap()
        };
        for (token, want) in [
            (
                doctored(&|c| {
                    c.iat = now - 120;
                    c.nbf = now - 120;
                    c.exp = now - 60;
                }),
                "expired",
            ),
            (doctored(&|c| c.nbf = now + 600), "not yet valid"),
            (
                doctored(&|c| c.iss = "spiffe://evil/agentguard".into()),
                "issuer",
            ),
            (doctored(&|c| c.exp = now + 3600), "lifetime"),
        ] {
            let e = v.verify(&token, Some(&b)).await.unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
            assert_eq!(e.status(), 401);
        }

        // A token signed by a key not in the JWKS.
        let (_d2, stranger) = setup();
        let t = mint(&stranger, "itsm", "tickets:write", &b);
        let e = v.verify(&t, Some(&b)).await.unwrap_err();
        assert!(e.to_string().contains("unknown key id"), "{e}");
        // A flipped signature byte.
        let mut t = mint(&m, "itsm", "tickets:write", &b).into_bytes();
        let last = t.len() - 2;
        t[last] = if t[last] == b'A' { b'B' } else { b'A' };
        let e = v
            .verify(std::str::from_utf8(&t).unwrap(), Some(&b))
            .await
            .unwrap_err();
        assert_eq!(e.status(), 401);
        // alg "none" is refused before any key is looked at.
        let none = format!(
            "{}.{}.",
            crate::token::b64url(br#"{"alg":"none","typ":"JWT"}"#),
            crate::token::b64url(&serde_json::to_vec(&good).unwrap())
        );
        assert_eq!(v.verify(&none, Some(&b)).await.unwrap_err().status(), 401);
    }

    /// A token signed by `m` with claims a minted one's changed by `f`
    /// (the lifetime set relative to `now` first: iat = nbf = now, exp =
    /// now + 60).
    fn doctored(m: &Minter, b: &RequestBinding, now: u64, f: impl Fn(&mut Claims)) -> String {
        let mut c = m
            .mint(&MintRequest {
                agent: "bot",
                audience: "itsm",
                scope: "",
                ttl: Duration::from_secs(60),
                binding: b,
                on_behalf_of: None,
                kernel: None,
            })
            .unwrap()
            .claims;
        (c.iat, c.nbf, c.exp) = (now, now, now + 60);
        f(&mut c);
        m.sign(&c).unwrap()
    }

    #[tokio::test]
    async fn lifetimes_within_the_leeway_are_accepted_and_beyond_it_refused() {
        let (_d, m) = setup();
        let b = binding("GET", URL, b"");
        let v = verifier(&m, None).await;
        let now = now_secs();
        let leeway = DEFAULT_LEEWAY.as_secs();
        assert_eq!(leeway, 5);
        for (what, f, want) in [
            (
                "expired 3 s ago",
                Box::new(|c: &mut Claims| (c.iat, c.exp) = (now - 60, now - 3))
                    as Box<dyn Fn(&mut Claims)>,
                None,
            ),
            (
                "expired 6 s ago",
                Box::new(|c: &mut Claims| (c.iat, c.exp) = (now - 60, now - 6)),
                Some("expired"),
            ),
            (
                "valid from in 3 s",
                Box::new(|c: &mut Claims| c.nbf = now + 3),
                None,
            ),
            (
                "valid from in 6 s",
                Box::new(|c: &mut Claims| c.nbf = now + 6),
                Some("not yet valid"),
            ),
            (
                "issued in 3 s",
                Box::new(|c: &mut Claims| c.iat = now + 3),
                None,
            ),
        ] {
            let t = doctored(&m, &b, now, f);
            match (v.verify_at(&t, Some(&b), now).await, want) {
                (Ok(_), None) => {}
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{what}: {e}"),
                (got, _) => panic!("{what}: {got:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_token_issued_in_the_future_is_refused() {
        let (_d, m) = setup();
        let b = binding("GET", URL, b"");
        let v = verifier(&m, None).await;
        let now = now_secs();
        // nbf says now, but iat is beyond the leeway: a minter with a clock
        // far ahead, or a forgery.
        let t = doctored(&m, &b, now, |c| c.iat = now + DEFAULT_LEEWAY.as_secs() + 1);
        let e = v.verify_at(&t, Some(&b), now).await.unwrap_err();
        assert!(e.to_string().contains("issued in the future"), "{e}");
        assert_eq!(e.status(), 401);
    }

    #[tokio::test]
    async fn a_token_with_an_empty_jti_is_refused() {
        let (_d, m) = setup();
        let b = binding("GET", URL, b"");
        let v = verifier(&m, None).await;
        let now = now_secs();
        // Without a jti, single use cannot be enforced.
        let t = doctored(&m, &b, now, |c| c.jti.clear());
        let e = v.verify_at(&t, Some(&b), now).await.unwrap_err();
        assert!(e.to_string().contains("no jti"), "{e}");
        assert_eq!(e.status(), 401);
    }

    #[tokio::test]
    async fn a_token_without_a_kid_is_refused() {
        let (_d, m) = setup();
        let b = binding("GET", URL, b"");
        let v = verifier(&m, None).await;
        let t = mint(&m, "itsm", "", &b);
        // The same claims and signature under a header without kid.
        let (_, rest) = t.split_once('.').unwrap();
        let header = crate::token::b64url(br#"{"typ":"JWT","alg":"ES256"}"#);
        let e = v
            .verify(&format!("{header}.{rest}"), Some(&b))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no kid"), "{e}");
        assert_eq!(e.status(), 401);
    }

    #[tokio::test]
    async fn an_hmac_token_keyed_with_the_public_key_is_refused() {
        use base64::Engine as _;
        let (_d, m) = setup();
        let b = binding("GET", URL, b"");
        let v = verifier(&m, None).await;
        let claims = m
            .mint(&MintRequest {
                agent: "bot",
                audience: "itsm",
                scope: "",
                ttl: Duration::from_secs(60),
                binding: &b,
                on_behalf_of: None,
                kernel: None,
            })
            .unwrap()
            .claims;
        // What an attacker has of the key: the published JWK, and the
        // public point in it (0x04 || x || y, the form a verifier that
        // took alg from the token would use as the HMAC secret).
        let jwk = serde_json::to_value(&m.jwks().keys[0]).unwrap();
        let coordinate = |c: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[c].as_str().unwrap())
                .unwrap()
        };
        let point = [vec![4u8], coordinate("x"), coordinate("y")].concat();
        let header = serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": m.kid() });
        for secret in [point, serde_json::to_vec(&jwk).unwrap()] {
            let input = format!(
                "{}.{}",
                crate::token::b64url(&serde_json::to_vec(&header).unwrap()),
                crate::token::b64url(&serde_json::to_vec(&claims).unwrap())
            );
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let mac = ring::hmac::sign(&key, input.as_bytes());
            let t = format!("{input}.{}", crate::token::b64url(mac.as_ref()));
            let e = v.verify(&t, Some(&b)).await.unwrap_err();
            assert!(e.to_string().contains("HS256 not accepted"), "{e}");
            assert_eq!(e.status(), 401);
        }
    }

    #[tokio::test]
    async fn rotated_keys_verify_until_retired() {
        let dir = tempfile::tempdir().unwrap();
        let m = Minter::new(
            KeyStore::load_or_create(dir.path(), SigningAlgorithm::Es256).unwrap(),
            "x",
        );
        let b = binding("GET", URL, b"");
        let before = mint(&m, "itsm", "", &b);
        m.rotate().unwrap();
        let after = mint(&m, "itsm", "", &b);
        // A JWKS file, as `agentguard token jwks` writes it.
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, serde_json::to_vec(&m.jwks()).unwrap()).unwrap();
        let v = Verifier::new(
            VerifierConfig::new("itsm", Some(&m.issuer())),
            JwksSource::File(file),
        )
        .await
        .unwrap();
        v.verify(&before, Some(&b)).await.unwrap();
        v.verify(&after, Some(&b)).await.unwrap();
        // Once the old key is retired, its tokens no longer verify.
        // (Time passes: the retired key's last token has expired.)
        let list = dir.path().join("token/retired.json");
        let mut retired: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
        retired[0]["retire_at"] = now_secs().saturating_sub(1).into();
        std::fs::write(&list, serde_json::to_vec(&retired).unwrap()).unwrap();
        let retired = KeyStore::load(dir.path()).unwrap().jwks();
        assert_eq!(retired.keys.len(), 1);
        let v = Verifier::new(
            VerifierConfig::new("itsm", Some(&m.issuer())),
            JwksSource::Static(retired),
        )
        .await
        .unwrap();
        let e = v.verify(&before, Some(&b)).await.unwrap_err();
        assert!(e.to_string().contains("unknown key id"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_jwks_fetch_holds_back_the_next_only_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let m = Minter::new(
            KeyStore::load_or_create(dir.path(), SigningAlgorithm::Es256).unwrap(),
            "x",
        );
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, serde_json::to_vec(&m.jwks()).unwrap()).unwrap();
        let v = Verifier::new(
            VerifierConfig::new("itsm", Some(&m.issuer())),
            JwksSource::File(file.clone()),
        )
        .await
        .unwrap();
        // A key rotated since the verifier read the JWKS, which is then
        // unreadable for a moment.
        m.rotate().unwrap();
        let b = binding("GET", URL, b"");
        let t = mint(&m, "itsm", "", &b);
        std::fs::remove_file(&file).unwrap();
        let e = v.verify(&t, Some(&b)).await.unwrap_err();
        assert_eq!(e.status(), 503, "{e}");
        std::fs::write(&file, serde_json::to_vec(&m.jwks()).unwrap()).unwrap();
        // Right after the failure the rate limit still holds (and says the
        // keys are unavailable, not that the token is bad)...
        let e = v.verify(&t, Some(&b)).await.unwrap_err();
        assert_eq!(e.status(), 503, "{e}");
        // ...but only for a moment, not the whole refresh interval.
        tokio::time::sleep(RETRY_AFTER_FAILED_FETCH + Duration::from_millis(200)).await;
        v.verify(&t, Some(&b)).await.unwrap();
        // A fetch that worked holds the next back for the whole interval:
        // made-up key ids cannot make the verifier hammer the issuer.
        std::fs::remove_file(&file).unwrap();
        let (_d2, stranger) = setup();
        let e = v
            .verify(&mint(&stranger, "itsm", "", &b), Some(&b))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("unknown key id"), "{e}");
    }

    #[test]
    fn www_authenticate_follows_rfc_6750() {
        let e = invalid("token \"expired\"");
        assert_eq!(
            e.www_authenticate(None).as_deref(),
            Some("Bearer error=\"invalid_token\", error_description=\"token 'expired'\"")
        );
        assert_eq!(
            VerifyError::Jwks("unreachable".into()).www_authenticate(None),
            None
        );
    }
}
