//! How agentguard authenticates itself to a token endpoint: as a client
//! with a secret (`client_secret_basic`, RFC 6749 §2.3.1) or with a JWT
//! signed by its key (`private_key_jwt`, RFC 7523 §2.2 and OpenID Connect
//! Core §9), or not at all.

use base64::Engine as _;
use hyper::{
    HeaderMap,
    header::{AUTHORIZATION, HeaderValue},
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use thiserror::Error;

use crate::{
    credentials::{Secret, redact_bytes, source},
    policy::{ClientAuth, ValueSource},
};

/// RFC 7523 §2.2.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// A client assertion is used once, right away.
const ASSERTION_TTL_SECS: u64 = 60;
/// RFC 6749 §5.2 error codes are short; anything longer is not one.
const MAX_ERROR_CODE_LEN: usize = 64;

/// Why the client's credentials are unusable. Names files and variables,
/// never values.
#[derive(Debug, Clone, Error)]
pub enum ClientError {
    #[error("client id: {0}")]
    Id(String),
    #[error("client secret: {0}")]
    Secret(String),
    #[error("client key: {0}")]
    Key(String),
    #[error("failed to sign the client assertion: {0}")]
    Assertion(String),
}

enum Auth {
    None,
    Secret(Secret),
    Key {
        key: EncodingKey,
        alg: Algorithm,
        kid: Option<String>,
        /// The PEM, for redaction: a key is a secret too.
        pem: Secret,
    },
}

pub(super) struct Client {
    id: Option<Secret>,
    auth: Auth,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

fn value(v: &ValueSource) -> Result<Secret, String> {
    match v {
        ValueSource::Literal(v) => Ok(Secret::new(v.clone())),
        ValueSource::Secret(r) => source::resolve(r).map_err(|e| e.to_string()),
    }
}

/// A private key in PEM (PKCS#8 or SEC1 EC, PKCS#1 or PKCS#8 RSA, PKCS#8
/// Ed25519) and the algorithm it signs with.
fn load_key(pem: &Secret) -> Result<(EncodingKey, Algorithm), String> {
    let bytes = pem.expose().as_bytes();
    if let Ok(key) = EncodingKey::from_ec_pem(bytes) {
        return Ok((key, Algorithm::ES256));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(bytes) {
        return Ok((key, Algorithm::EdDSA));
    }
    if let Ok(key) = EncodingKey::from_rsa_pem(bytes) {
        return Ok((key, Algorithm::RS256));
    }
    Err("not a PEM private key (EC P-256, Ed25519 or RSA)".into())
}

impl Client {
    pub(super) fn load(auth: &ClientAuth) -> Result<Self, ClientError> {
        Ok(match auth {
            ClientAuth::None { client_id } => Self {
                id: client_id
                    .as_ref()
                    .map(value)
                    .transpose()
                    .map_err(ClientError::Id)?,
                auth: Auth::None,
            },
            ClientAuth::Secret { client_id, secret } => Self {
                id: Some(value(client_id).map_err(ClientError::Id)?),
                auth: Auth::Secret(
                    source::resolve(secret).map_err(|e| ClientError::Secret(e.to_string()))?,
                ),
            },
            ClientAuth::PrivateKeyJwt {
                client_id,
                key,
                key_id,
            } => {
                let pem = source::resolve(key).map_err(|e| ClientError::Key(e.to_string()))?;
                let (key, alg) = load_key(&pem).map_err(ClientError::Key)?;
                Self {
                    id: Some(value(client_id).map_err(ClientError::Id)?),
                    auth: Auth::Key {
                        key,
                        alg,
                        kid: key_id.clone(),
                        pem,
                    },
                }
            }
        })
    }

    /// The client secret or key, for redaction.
    pub(super) fn secret(&self) -> Option<Secret> {
        match &self.auth {
            Auth::None => None,
            Auth::Secret(s) => Some(s.clone()),
            Auth::Key { pem, .. } => Some(pem.clone()),
        }
    }

    /// Adds the client's authentication to a token request to `token_url`.
    pub(super) fn authenticate(
        &self,
        token_url: &str,
        headers: &mut HeaderMap,
        form: &mut Vec<(&'static str, String)>,
    ) -> Result<(), ClientError> {
        match (&self.auth, &self.id) {
            (Auth::None, Some(id)) => form.push(("client_id", id.expose().to_owned())),
            (Auth::None, None) => {}
            (Auth::Secret(secret), Some(id)) => {
                // RFC 6749 §2.3.1: id and secret are form-encoded before
                // they are joined, so that a ':' in the id cannot shift the
                // split.
                let pair = format!(
                    "{}:{}",
                    form_urlencoded::byte_serialize(id.expose().as_bytes()).collect::<String>(),
                    form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect::<String>()
                );
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
                    .expect("base64 is a valid header value");
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            (Auth::Key { key, alg, kid, .. }, Some(id)) => {
                let now = crate::token::now_secs();
                let mut jti = [0u8; 16];
                getrandom::fill(&mut jti).map_err(|e| ClientError::Assertion(e.to_string()))?;
                let claims = AssertionClaims {
                    iss: id.expose(),
                    sub: id.expose(),
                    aud: token_url,
                    jti: crate::token::b64url(&jti),
                    iat: now,
                    exp: now + ASSERTION_TTL_SECS,
                };
                let mut header = Header::new(*alg);
                header.kid = kid.clone();
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| ClientError::Assertion(e.to_string()))?;
                form.push(("client_id", id.expose().to_owned()));
                form.push(("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()));
                form.push(("client_assertion", assertion));
            }
            // load() gives every authenticated client an id.
            (_, None) => return Err(ClientError::Id("missing".into())),
        }
        Ok(())
    }

    /// Server-sent text fit for an error message: a short RFC 6749 §5.2
    /// style code (printable ASCII without `"` and `\`), without the client
    /// secret (a broken server could echo the request).
    pub(super) fn server_text(&self, text: &str) -> Option<String> {
        let printable = !text.is_empty()
            && text.len() <= MAX_ERROR_CODE_LEN
            && text
                .bytes()
                .all(|b| matches!(b, 0x20..=0x21 | 0x23..=0x5b | 0x5d..=0x7e));
        let echoes = self.secret().is_some_and(|s| text.contains(s.expose()));
        (printable && !echoes).then(|| text.to_owned())
    }

    /// The fetcher's error text, with the client secret cut out should it
    /// be there.
    pub(super) fn scrub(&self, reason: String) -> String {
        let Some(secret) = self.secret() else {
            return reason;
        };
        match redact_bytes(reason.as_bytes(), std::slice::from_ref(&secret)) {
            Some(redacted) => String::from_utf8_lossy(&redacted).into_owned(),
            None => reason,
        }
    }
}
