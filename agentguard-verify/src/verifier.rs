//! Verifying a request-bound token the way a tool server must: signature,
//! issuer, audience, lifetime, scope, the binding to the request actually
//! received, and single use.

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, Validation, decode, decode_header, errors::ErrorKind};
use thiserror::Error;

use crate::{
    BearerError, Challenge, Claims, DEFAULT_LEEWAY, MAX_TTL, Origin, RequestBinding,
    jwks::{JwksError, JwksSource, KeyCache},
    normalize_htu, now_secs,
    replay::{DEFAULT_REPLAY_CAPACITY, MemoryReplayStore, ReplayError, ReplayStore, Spend},
};

/// Why a token was refused. `MissingToken` and `InvalidToken` are 401 (RFC
/// 6750 §3.1; a request without a token gets a challenge without an error
/// code), `InsufficientScope` is 403. `Jwks` and `ReplayStore` say nothing
/// about the token: what is needed to check it could not be had (503).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("no bearer token")]
    MissingToken,
    #[error("invalid_token: {0}")]
    InvalidToken(String),
    #[error("insufficient_scope: {0}")]
    InsufficientScope(String),
    #[error("jwks: {0}")]
    Jwks(#[from] JwksError),
    #[error("{0}")]
    ReplayStore(#[from] ReplayError),
}

impl VerifyError {
    /// The HTTP status a resource server answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingToken | Self::InvalidToken(_) => 401,
            Self::InsufficientScope(_) => 403,
            Self::Jwks(_) | Self::ReplayStore(_) => 503,
        }
    }

    /// Whether the refusal is about the token (401, 403) rather than the
    /// verifier being unable to check it (503).
    pub fn is_about_the_token(&self) -> bool {
        self.status() != 503
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3), for the errors that
    /// are about the token; `scope` is what the resource needs, and
    /// `resource_metadata` where its RFC 9728 metadata is. A verifier that
    /// cannot check tokens has none: RFC 6750 ties `invalid_token` to 401,
    /// and telling a client its (maybe good) token is invalid would make
    /// it throw the token away.
    pub fn challenge<'a>(
        &'a self,
        scope: Option<&'a str>,
        resource_metadata: Option<&'a str>,
    ) -> Option<Challenge<'a>> {
        let (error, description, scope) = match self {
            Self::MissingToken => (None, None, None),
            Self::InvalidToken(reason) => {
                (Some(BearerError::InvalidToken), Some(reason.as_str()), None)
            }
            Self::InsufficientScope(reason) => (
                Some(BearerError::InsufficientScope),
                Some(reason.as_str()),
                scope,
            ),
            Self::Jwks(_) | Self::ReplayStore(_) => return None,
        };
        Some(Challenge {
            error,
            description,
            scope,
            resource_metadata,
        })
    }

    /// [`Self::challenge`] as a header value.
    pub fn www_authenticate(&self, scope: Option<&str>) -> Option<String> {
        self.challenge(scope, None).map(|c| c.to_string())
    }
}

fn invalid(reason: impl Into<String>) -> VerifyError {
    VerifyError::InvalidToken(reason.into())
}

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The `aud` this tool answers to. For an MCP server: its canonical
    /// resource URI (RFC 8707 §2, e.g. `https://tool.example.com/mcp`).
    pub audience: String,
    /// The `iss` every token must carry (an agentguard's is
    /// `spiffe://<trust-domain>/agentguard`); `None` accepts any issuer the
    /// JWKS holds a key for, which is safe only while that JWKS is one
    /// issuer's alone.
    pub issuer: Option<String>,
    /// Space-separated scopes every token must grant.
    pub scope: Option<String>,
    /// The origin clients reach this tool under. When set, `htu` and `rh`
    /// are checked against it, not against the scheme and `Host` of the
    /// request: a token minted for one instance is refused at another that
    /// shares the audience but answers under another name.
    pub origin: Option<Origin>,
    pub leeway: Duration,
    /// Bound of the default in-memory replay store.
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
            origin: None,
            leeway: DEFAULT_LEEWAY,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
        }
    }
}

/// Checks tokens for one audience. Cheap to share (`Arc`). Single use is
/// only as wide as its replay store: give replicas one shared store
/// ([`crate::replay::RedisReplayStore`]), or a token spent at one can be
/// spent again at another.
pub struct Verifier {
    cfg: VerifierConfig,
    keys: KeyCache,
    replay: Arc<dyn ReplayStore>,
    /// Validation per algorithm, made once.
    es256: Validation,
    eddsa: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("cfg", &self.cfg)
            .field("source", self.keys.source())
            .field("replay", &self.replay)
            .finish_non_exhaustive()
    }
}

/// A token whose every check but the body's hash and single use passed
/// ([`Verifier::check_head`]); [`Verifier::finish`] completes it.
#[derive(Debug, Clone)]
pub struct HeadChecked {
    claims: Claims,
}

impl HeadChecked {
    pub fn claims(&self) -> &Claims {
        &self.claims
    }
}

impl Verifier {
    /// Loads the JWKS once (a source that cannot be read is an error now
    /// rather than a refusal of every request later), with an in-memory
    /// replay store.
    pub async fn new(cfg: VerifierConfig, source: JwksSource) -> Result<Arc<Self>, VerifyError> {
        let store = Arc::new(MemoryReplayStore::new(cfg.replay_capacity));
        Self::with_replay_store(cfg, source, store).await
    }

    /// [`Self::new`] with spent tokens kept in `replay`.
    pub async fn with_replay_store(
        cfg: VerifierConfig,
        source: JwksSource,
        replay: Arc<dyn ReplayStore>,
    ) -> Result<Arc<Self>, VerifyError> {
        let keys = KeyCache::load(source).await?;
        let validation = |alg| {
            let mut v = Validation::new(alg);
            // exp, nbf and iat are checked against one reading of the clock
            // that also decides how long the jti is kept (check_lifetime).
            v.validate_exp = false;
            v.validate_nbf = false;
            v.set_audience(&[&cfg.audience]);
            if let Some(iss) = &cfg.issuer {
                v.set_issuer(&[iss]);
            }
            v.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
            v
        };
        Ok(Arc::new(Self {
            es256: validation(Algorithm::ES256),
            eddsa: validation(Algorithm::EdDSA),
            cfg,
            keys,
            replay,
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

    /// Verifies the request a server received: its one bearer token, bound
    /// to this method, URI (at the configured origin, or else `scheme` and
    /// the request's authority or `Host`) and body, and spends it.
    pub async fn verify_request(
        &self,
        parts: &http::request::Parts,
        scheme: &str,
        body: &[u8],
    ) -> Result<Claims, VerifyError> {
        let token = crate::bearer_token(&parts.headers)
            .map_err(invalid)?
            .ok_or(VerifyError::MissingToken)?;
        let binding = RequestBinding::from_parts(parts, scheme, body);
        self.verify(token, Some(&binding)).await
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
        self.spend(claims, now).await
    }

    /// Every check but single use (`agentguard token verify` shows a token
    /// without spending it).
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
        let validation = match header.alg {
            Algorithm::ES256 => &self.es256,
            Algorithm::EdDSA => &self.eddsa,
            alg => return Err(invalid(format!("algorithm {alg:?} not accepted"))),
        };
        let kid = header
            .kid
            .ok_or_else(|| invalid("token header has no kid"))?;
        let key = match self.keys.get(&kid) {
            Some(key) => key,
            None => {
                self.keys.refresh().await?;
                self.keys
                    .get(&kid)
                    .ok_or_else(|| invalid(format!("unknown key id {kid:?}")))?
            }
        };
        // A key is for one algorithm: an ES256 key id under "alg": "EdDSA"
        // is a forgery attempt, not a key to try.
        if key.alg != header.alg {
            return Err(invalid(format!("key {kid:?} is not for {:?}", header.alg)));
        }
        let claims = decode::<Claims>(token, &key.key, validation)
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
        // replay store hold it for long.
        if claims.exp.saturating_sub(claims.iat) > MAX_TTL.as_secs() {
            return Err(invalid("token lifetime exceeds the maximum"));
        }
        if claims.jti.is_empty() {
            return Err(invalid("token has no jti"));
        }
        if let Some(b) = binding {
            self.check_binding(&claims, b)?;
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

    /// A proxy's first step, before it reads the body: every check but the
    /// body's hash and single use, and also that the token is bound to
    /// `head`'s method and URI and has not been used. A client without such
    /// a token cannot make the proxy wait for, and buffer, a body.
    /// (`head.body_hash` is not looked at.)
    pub async fn check_head(
        &self,
        token: &str,
        head: &RequestBinding,
    ) -> Result<HeadChecked, VerifyError> {
        let now = now_secs();
        let claims = self.check_at(token, None, now).await?;
        self.check_target(&claims, head)?;
        if self.replay.seen(&claims.jti, now).await? {
            return Err(invalid("token already used (replay)"));
        }
        Ok(HeadChecked { claims })
    }

    /// The second step, with the body read: the whole binding, the lifetime
    /// again (the body took time to arrive), and single use.
    pub async fn finish(
        &self,
        checked: HeadChecked,
        binding: &RequestBinding,
    ) -> Result<Claims, VerifyError> {
        let now = now_secs();
        let claims = checked.claims;
        self.check_lifetime(&claims, now)?;
        self.check_binding(&claims, binding)?;
        self.spend(claims, now).await
    }

    /// The last second (since the epoch) in which a token that expires at
    /// `exp` still verifies: the lifetime check and the replay store both
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
    async fn spend(&self, claims: Claims, now: u64) -> Result<Claims, VerifyError> {
        match self
            .replay
            .spend(&claims.jti, self.last_valid(claims.exp), now)
            .await?
        {
            Spend::Fresh => Ok(claims),
            Spend::Replayed => Err(invalid("token already used (replay)")),
            Spend::Full => Err(invalid("replay cache is full; try again shortly")),
        }
    }

    /// The binding as checked: at the configured origin when there is one.
    fn at_origin<'a>(&self, b: &'a RequestBinding) -> std::borrow::Cow<'a, RequestBinding> {
        match &self.cfg.origin {
            Some(o) => std::borrow::Cow::Owned(b.at_origin(o)),
            None => std::borrow::Cow::Borrowed(b),
        }
    }

    /// The token must name the request it arrived with.
    fn check_binding(&self, claims: &Claims, b: &RequestBinding) -> Result<(), VerifyError> {
        self.check_target(claims, b)?;
        if claims.rh != self.at_origin(b).request_hash() {
            return Err(invalid(
                "request hash does not match: method, authority, path, query or body changed",
            ));
        }
        Ok(())
    }

    /// The parts of the binding known before the body: method and URI.
    fn check_target(&self, claims: &Claims, b: &RequestBinding) -> Result<(), VerifyError> {
        if claims.htm != b.method {
            return Err(invalid(format!(
                "token is bound to method {}, request is {}",
                claims.htm, b.method
            )));
        }
        let want = self.at_origin(b).htu().map_err(invalid)?;
        let got = normalize_htu(&claims.htu).map_err(|e| invalid(format!("htu: {e}")))?;
        if got != want {
            return Err(invalid(format!(
                "token is bound to {got}, request is for {want}"
            )));
        }
        Ok(())
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests;
