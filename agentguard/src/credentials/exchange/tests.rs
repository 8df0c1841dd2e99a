//! Token exchange requests and responses against RFC 8693's own example
//! (§2.3), the JWT-bearer grant (RFC 7523 §2.1), client assertions, caching
//! per subject, and failures that never fall back.

use std::{
    collections::VecDeque,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
};

use base64::Engine as _;
use hyper::{HeaderMap, Uri, body::Bytes, header::AUTHORIZATION};

use super::*;
use crate::{
    credentials::{IdentityRequest, TokenFuture},
    policy::{ClientAuth, SecretRef, ValueSource},
};

/// RFC 8693 §2.3's client (`rs08`) and its secret.
const RFC_BASIC: &str = "Basic cnMwODpsb25nLXNlY3VyZS1yYW5kb20tc2VjcmV0";
/// RFC 8693 §2.3's subject token (an access token, not a JWT).
const RFC_SUBJECT: &str = "accVkjcJyb4BWCxGsndESCJQbdFMogUC5PbRDqceLTC";
/// RFC 8693 §2.3's successful response.
const RFC_RESPONSE: &str = r#"{
  "access_token":"eyJhbGciOiJFUzI1NiIsImtpZCI6IjllciJ9.eyJhdWQiOiJodHRwczovL2JhY2tlbmQuZXhhbXBsZS5jb20iLCJpc3MiOiJodHRwczovL2FzLmV4YW1wbGUuY29tIiwiZXhwIjoxNDQxOTE3NTkzLCJpYXQiOjE0NDE5MTc1MzMsInN1YiI6ImJkY0BleGFtcGxlLmNvbSIsInNjb3BlIjoiYXBpIn0.40y3ZgQedw6rxf59WlwHDD9jryFOr0_Wh3CGozQBihNBhnXEQgU85AI9x3KmsPottVMLPIWvmDCMy5-kdXjwhw",
  "issued_token_type":"urn:ietf:params:oauth:token-type:access_token",
  "token_type":"Bearer",
  "expires_in":60
}"#;

#[derive(Default)]
struct FakeFetcher {
    calls: Mutex<Vec<(Uri, HeaderMap, String)>>,
    answers: Mutex<VecDeque<(u16, String)>>,
}

impl FakeFetcher {
    fn new(answers: &[(u16, &str)]) -> Self {
        Self {
            answers: Mutex::new(answers.iter().map(|(s, b)| (*s, (*b).to_owned())).collect()),
            ..Self::default()
        }
    }

    fn calls(&self) -> Vec<(Uri, HeaderMap, String)> {
        self.calls.lock().unwrap().clone()
    }
}

impl TokenFetcher for FakeFetcher {
    fn post_form(&self, url: &Uri, headers: HeaderMap, body: String) -> TokenFuture<'_> {
        self.calls
            .lock()
            .unwrap()
            .push((url.clone(), headers, body));
        let answer = {
            let mut a = self.answers.lock().unwrap();
            if a.len() > 1 {
                a.pop_front()
            } else {
                a.front().cloned()
            }
        };
        Box::pin(async move {
            let (status, body) = answer.ok_or("no answer scripted")?;
            Ok((status, Bytes::from(body)))
        })
    }
}

/// Signs nothing: the identity token names who asked, so tests can see it.
struct FakeIssuer;

impl IdentityIssuer for FakeIssuer {
    fn identity_token(&self, req: &IdentityRequest<'_>) -> Result<String, String> {
        Ok(format!("identity-of-{}-for-{}", req.agent, req.audience))
    }
}

fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn form(body: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn exchange(dir: &Path, subject: Subject) -> TokenExchangeSource {
    TokenExchangeSource {
        token_url: Uri::from_static("https://as.example.com/as/token.oauth2"),
        client: ClientAuth::Secret {
            client_id: ValueSource::Literal("rs08".into()),
            secret: SecretRef::File(secret_file(dir, "client", "long-secure-random-secret\n")),
        },
        subject,
        audience: None,
        resource: Some("https://backend.example.com/api".into()),
        scope: None,
        requested_token_type: None,
        assertion_audience: "https://as.example.com/as/token.oauth2".into(),
    }
}

fn requester<'a>(agent: &'a str, person: &'a (dyn Fn() -> Option<String> + Sync)) -> Requester<'a> {
    Requester {
        agent,
        kernel: None,
        on_behalf_of: person,
        issuer: &FakeIssuer,
    }
}

#[tokio::test]
async fn the_rfc_8693_example_request_and_response() {
    let dir = tempfile::tempdir().unwrap();
    // The person's token, as the operator supplied it.
    let tokens = dir.path().join("people");
    std::fs::create_dir(&tokens).unwrap();
    secret_file(&tokens, "bdc@example.com", &format!("{RFC_SUBJECT}\n"));
    let source = exchange(dir.path(), Subject::OnBehalfOf { tokens });
    let exchanger = Exchanger::token_exchange(&source).unwrap();
    let fetcher = FakeFetcher::new(&[(200, RFC_RESPONSE)]);
    let person = || Some("bdc@example.com".to_owned());
    let token = exchanger
        .token(&requester("frontend", &person), &fetcher)
        .await
        .unwrap();
    assert!(
        token
            .expose()
            .starts_with("eyJhbGciOiJFUzI1NiIsImtpZCI6IjllciJ9.")
    );

    let calls = fetcher.calls();
    assert_eq!(calls.len(), 1);
    let (url, headers, body) = &calls[0];
    assert_eq!(url, "https://as.example.com/as/token.oauth2");
    assert_eq!(headers[AUTHORIZATION], RFC_BASIC);
    assert!(headers[AUTHORIZATION].is_sensitive());
    // §2.3's body, plus the agent as the actor (§2.1, delegation).
    assert_eq!(
        form(body),
        pairs(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ),
            ("resource", "https://backend.example.com/api"),
            ("subject_token", RFC_SUBJECT),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token"
            ),
            (
                "actor_token",
                "identity-of-frontend-for-https://as.example.com/as/token.oauth2"
            ),
            ("actor_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ])
    );
    // And the body is encoded as the RFC writes it.
    assert!(body.starts_with(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&resource=https%3A%2F%2Fbackend.example.com%2Fapi&subject_token=accVkjcJyb4BWCxGsndESCJQbdFMogUC5PbRDqceLTC&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
    ));
}

#[test]
fn the_rfc_8693_example_response_is_read_with_its_lifetime() {
    let (token, lifetime) = parse_token_response(200, &Bytes::from(RFC_RESPONSE), true).unwrap();
    assert!(token.expose().ends_with("-kdXjwhw"));
    assert_eq!(lifetime, Duration::from_secs(60));
    // §2.2.1: issued_token_type is required of an exchange.
    let without = RFC_RESPONSE.replace(
        r#""issued_token_type":"urn:ietf:params:oauth:token-type:access_token","#,
        "",
    );
    assert_eq!(
        parse_token_response(200, &Bytes::from(without), true).unwrap_err(),
        response::ResponseError::Bad("no issued_token_type (RFC 8693 §2.2.1)".into())
    );
    // N_A: the issued token is not an access token, but is what is sent.
    let na = RFC_RESPONSE.replace(r#""token_type":"Bearer""#, r#""token_type":"N_A""#);
    assert!(parse_token_response(200, &Bytes::from(na), true).is_ok());
    // §2.2.2: errors as in RFC 6749 §5.2, e.g. invalid_target.
    assert_eq!(
        parse_token_response(400, &Bytes::from(r#"{"error":"invalid_target"}"#), true).unwrap_err(),
        response::ResponseError::Rejected {
            status: 400,
            error: Some("invalid_target".into())
        }
    );
}

#[test]
fn a_jwt_without_expires_in_is_kept_until_its_exp() {
    let exp = crate::token::now_secs() + 600;
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
    let body = format!(
        r#"{{"access_token":"e30.{payload}.c2ln","issued_token_type":"urn:ietf:params:oauth:token-type:jwt","token_type":"N_A"}}"#
    );
    let (_, lifetime) = parse_token_response(200, &Bytes::from(body), true).unwrap();
    assert!(lifetime > Duration::from_secs(590) && lifetime <= Duration::from_secs(600));
}

#[tokio::test]
async fn the_agent_as_subject_is_cached_per_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = exchange(dir.path(), Subject::Agent);
    source.scope = Some("tickets:read".into());
    source.audience = Some("tickets".into());
    let exchanger = Exchanger::token_exchange(&source).unwrap();
    let fetcher = FakeFetcher::new(&[
        (
            200,
            r#"{"access_token":"tok-a","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"bearer","expires_in":3600}"#,
        ),
        (
            200,
            r#"{"access_token":"tok-b","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"bearer","expires_in":3600}"#,
        ),
        (
            200,
            r#"{"access_token":"tok-c","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"bearer","expires_in":3600}"#,
        ),
    ]);
    let nobody = || None;
    for _ in 0..3 {
        let t = exchanger
            .token(&requester("ops", &nobody), &fetcher)
            .await
            .unwrap();
        assert_eq!(t.expose(), "tok-a");
    }
    let t = exchanger
        .token(&requester("billing", &nobody), &fetcher)
        .await
        .unwrap();
    assert_eq!(t.expose(), "tok-b");
    assert_eq!(exchanger.exchanges(), 2);
    let (_, _, body) = &fetcher.calls()[0];
    let body = form(body);
    assert!(body.contains(&("audience".into(), "tickets".into())));
    assert!(body.contains(&("scope".into(), "tickets:read".into())));
    assert!(body.contains(&(
        "subject_token_type".into(),
        "urn:ietf:params:oauth:token-type:jwt".into()
    )));
    assert!(body.iter().all(|(k, _)| k != "actor_token"));
    // Revoking one agent drops only its tokens.
    exchanger.forget_agent("ops");
    let t = exchanger
        .token(&requester("ops", &nobody), &fetcher)
        .await
        .unwrap();
    assert_eq!(t.expose(), "tok-c");
    let t = exchanger
        .token(&requester("billing", &nobody), &fetcher)
        .await
        .unwrap();
    assert_eq!(t.expose(), "tok-b");
    let known: Vec<String> = exchanger
        .known_secrets()
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert!(known.contains(&"tok-b".into()) && known.contains(&"tok-c".into()));
    assert!(known.contains(&"long-secure-random-secret".into()));
}

#[tokio::test]
async fn failures_are_errors_never_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("people");
    std::fs::create_dir(&tokens).unwrap();
    let source = exchange(
        dir.path(),
        Subject::OnBehalfOf {
            tokens: tokens.clone(),
        },
    );
    let exchanger = Exchanger::token_exchange(&source).unwrap();
    let fetcher = FakeFetcher::new(&[(200, RFC_RESPONSE)]);
    // Not started for anyone: no exchange with the agent's own identity.
    let nobody = || None;
    let err = exchanger
        .token(&requester("a", &nobody), &fetcher)
        .await
        .unwrap_err();
    assert!(matches!(err, ExchangeError::NoOnBehalfOf), "{err}");
    // For someone without a token file, or whose name is no file name.
    for who in ["alice", "../client", "a/b"] {
        let person = move || Some(who.to_owned());
        let err = exchanger
            .token(&requester("a", &person), &fetcher)
            .await
            .unwrap_err();
        assert!(matches!(err, ExchangeError::NoSubjectToken { .. }), "{err}");
    }
    assert!(fetcher.calls().is_empty(), "nothing was sent");

    // The endpoint refuses: its error code, never an echoed secret.
    secret_file(&tokens, "alice", "alice-token");
    let person = || Some("alice".to_owned());
    for (status, body, want) in [
        (
            400,
            r#"{"error":"invalid_grant"}"#,
            "status 400 (error \"invalid_grant\")",
        ),
        (
            401,
            r#"{"error":"long-secure-random-secret"}"#,
            "status 401",
        ),
        (
            200,
            r#"{"access_token":"x","token_type":"mac","issued_token_type":"urn:x"}"#,
            "not Bearer",
        ),
    ] {
        let exchanger = Exchanger::token_exchange(&source).unwrap();
        let fetcher = FakeFetcher::new(&[(status, body)]);
        let err = exchanger
            .token(&requester("a", &person), &fetcher)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("long-secure-random-secret"), "{err}");
        assert!(
            err.contains("https://as.example.com/as/token.oauth2"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn jwt_bearer_with_a_private_key_jwt_client() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key_file = secret_file(dir.path(), "client.pem", &key.serialize_pem());
    let source = JwtBearerSource {
        token_url: Uri::from_static("https://idp.example.com/token"),
        client: ClientAuth::PrivateKeyJwt {
            client_id: ValueSource::Literal("agentguard".into()),
            key: SecretRef::File(key_file),
            key_id: Some("k1".into()),
        },
        scope: Some("inventory:read".into()),
        assertion_audience: "https://idp.example.com/token".into(),
    };
    let exchanger = Exchanger::jwt_bearer(&source).unwrap();
    let fetcher = FakeFetcher::new(&[(
        200,
        r#"{"access_token":"fed-token","token_type":"Bearer","expires_in":900}"#,
    )]);
    let nobody = || None;
    let t = exchanger
        .token(&requester("ops", &nobody), &fetcher)
        .await
        .unwrap();
    assert_eq!(t.expose(), "fed-token");
    let (_, headers, body) = &fetcher.calls()[0];
    assert!(headers.get(AUTHORIZATION).is_none());
    let body = form(body);
    let get = |k: &str| body.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("grant_type").unwrap(),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert_eq!(
        get("assertion").unwrap(),
        "identity-of-ops-for-https://idp.example.com/token"
    );
    assert_eq!(
        get("client_assertion_type").unwrap(),
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    // RFC 7523 §3: iss = sub = client id, aud = the token endpoint; signed
    // with the client's key.
    let assertion = get("client_assertion").unwrap();
    let header = jsonwebtoken::decode_header(&assertion).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some("k1"));
    let public = jsonwebtoken::DecodingKey::from_ec_der(key.public_key_raw());
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["https://idp.example.com/token"]);
    validation.set_issuer(&["agentguard"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&assertion, &public, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims["sub"], "agentguard");
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
}
