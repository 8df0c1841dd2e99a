//! The verifier's checks, one by one, on tokens a [`TestIssuer`] signs.

use super::*;
use crate::{b64url, jwks::RETRY_AFTER_FAILED_FETCH, testing::TestIssuer};

const ISS: &str = "spiffe://example.org/agentguard";
const URL: &str = "https://tool.example/v1/tickets?dry=1";

fn binding(method: &str, url: &str, body: &[u8]) -> RequestBinding {
    RequestBinding::from_url(method, url, body).unwrap()
}

async fn verifier(i: &TestIssuer, scope: Option<&str>) -> Arc<Verifier> {
    let mut cfg = VerifierConfig::new("itsm", Some(ISS));
    cfg.scope = scope.map(Into::into);
    Verifier::new(cfg, JwksSource::Static(i.jwks()))
        .await
        .unwrap()
}

/// A token signed by `i` with claims a fresh one's changed by `f` (the
/// lifetime first set relative to `now`: iat = nbf = now, exp = now + 60).
fn doctored(i: &TestIssuer, b: &RequestBinding, now: u64, f: impl Fn(&mut Claims)) -> String {
    let mut c = i.claims("bot", "itsm", "", b, 60);
    (c.iat, c.nbf, c.exp) = (now, now, now + 60);
    f(&mut c);
    i.sign(&c)
}

#[tokio::test]
async fn eddsa_tokens_verify_and_bind_like_es256_ones() {
    let i = TestIssuer::eddsa(ISS);
    let b = binding("POST", URL, b"{}");
    let t = i.mint("itsm", "tickets:write", &b);
    assert_eq!(decode_header(&t).unwrap().alg, Algorithm::EdDSA);
    let v = verifier(&i, Some("tickets:write")).await;
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
    let i = TestIssuer::es256(ISS);
    let b = binding("POST", URL, b"{}");
    let t = i.mint("itsm", "tickets:write", &b);
    let v = verifier(&i, Some("tickets:write")).await;
    let c = v.verify(&t, Some(&b)).await.unwrap();
    assert_eq!(c.iss, ISS);
    assert_eq!(c.aud, "itsm");
    assert_eq!(c.htm, "POST");
    assert_eq!(c.htu, "https://tool.example/v1/tickets");
    let again = v.verify(&t, Some(&b)).await.unwrap_err();
    assert!(matches!(&again, VerifyError::InvalidToken(r) if r.contains("replay")));
    assert_eq!(again.status(), 401);
}

#[tokio::test]
async fn a_token_is_refused_as_a_replay_in_the_last_second_it_verifies() {
    let i = TestIssuer::es256(ISS);
    let b = binding("POST", URL, b"{}");
    let c = i.claims("bot", "itsm", "", &b, 60);
    let t = i.sign(&c);
    let v = verifier(&i, None).await;
    // jsonwebtoken's rule, and ours: valid while now <= exp + leeway.
    let last = c.exp + DEFAULT_LEEWAY.as_secs();
    v.verify_at(&t, Some(&b), last).await.unwrap();
    let again = v.verify_at(&t, Some(&b), last).await.unwrap_err();
    assert!(again.to_string().contains("replay"), "{again}");
    let later = v.verify_at(&t, Some(&b), last + 1).await.unwrap_err();
    assert!(later.to_string().contains("expired"), "{later}");
}

#[tokio::test]
async fn each_binding_is_checked() {
    let i = TestIssuer::es256(ISS);
    let b = binding("POST", URL, b"{}");
    let v = verifier(&i, None).await;
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
        let t = i.mint("itsm", "", &b);
        let e = v.verify(&t, Some(&other)).await.unwrap_err();
        assert!(matches!(e, VerifyError::InvalidToken(_)), "{what}: {e}");
    }
}

#[tokio::test]
async fn with_an_origin_the_host_the_client_sent_does_not_count() {
    let i = TestIssuer::es256(ISS);
    let mut cfg = VerifierConfig::new("itsm", Some(ISS));
    cfg.origin = Some(Origin::parse("https://tool.example").unwrap());
    let v = Verifier::new(cfg, JwksSource::Static(i.jwks()))
        .await
        .unwrap();
    // Minted for the public name; received by an instance that a client
    // reached by its own address (the request's Host says so).
    let minted = binding("POST", URL, b"{}");
    let received = binding("POST", "http://10.0.0.7:8080/v1/tickets?dry=1", b"{}");
    v.verify(&i.mint("itsm", "", &minted), Some(&received))
        .await
        .unwrap();
    // A token minted for another instance's name (same audience, Host set
    // to match it) is refused: the origin decides, not the Host.
    let elsewhere = binding(
        "POST",
        "https://replica-2.tool.example/v1/tickets?dry=1",
        b"{}",
    );
    let e = v
        .verify(&i.mint("itsm", "", &elsewhere), Some(&elsewhere))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bound to"), "{e}");
}

#[tokio::test]
async fn audience_issuer_lifetime_scope_and_signature_are_checked() {
    let i = TestIssuer::es256(ISS);
    let b = binding("GET", URL, b"");
    let v = verifier(&i, Some("tickets:write")).await;
    let e = v
        .verify(&i.mint("other-tool", "tickets:write", &b), Some(&b))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("audience"), "{e}");

    let e = v
        .verify(&i.mint("itsm", "tickets:read", &b), Some(&b))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 403);
    assert!(
        e.www_authenticate(Some("tickets:write"))
            .unwrap()
            .starts_with("Bearer error=\"insufficient_scope\"")
    );

    let now = now_secs();
    for (token, want) in [
        (
            doctored(&i, &b, now, |c| {
                c.scope = "tickets:write".into();
                (c.iat, c.nbf, c.exp) = (now - 120, now - 120, now - 60);
            }),
            "expired",
        ),
        (
            doctored(&i, &b, now, |c| {
                c.scope = "tickets:write".into();
                c.nbf = now + 600;
            }),
            "not yet valid",
        ),
        (
            doctored(&i, &b, now, |c| {
                c.scope = "tickets:write".into();
                c.iss = "spiffe://evil/agentguard".into();
            }),
            "issuer",
        ),
        (
            doctored(&i, &b, now, |c| {
                c.scope = "tickets:write".into();
                c.exp = now + 3600;
            }),
            "lifetime",
        ),
    ] {
        let e = v.verify(&token, Some(&b)).await.unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(e.status(), 401);
    }

    // A token signed by a key not in the JWKS.
    let stranger = TestIssuer::es256(ISS);
    let e = v
        .verify(&stranger.mint("itsm", "tickets:write", &b), Some(&b))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown key id"), "{e}");
    // A flipped signature byte.
    let mut t = i.mint("itsm", "tickets:write", &b).into_bytes();
    let last = t.len() - 2;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    let e = v
        .verify(std::str::from_utf8(&t).unwrap(), Some(&b))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 401);
    // alg "none" is refused before any key is looked at.
    let good = i.claims("bot", "itsm", "tickets:write", &b, 60);
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(&serde_json::to_vec(&good).unwrap())
    );
    assert_eq!(v.verify(&none, Some(&b)).await.unwrap_err().status(), 401);
}

#[tokio::test]
async fn lifetimes_within_the_leeway_are_accepted_and_beyond_it_refused() {
    let i = TestIssuer::es256(ISS);
    let b = binding("GET", URL, b"");
    let v = verifier(&i, None).await;
    let now = now_secs();
    assert_eq!(DEFAULT_LEEWAY.as_secs(), 5);
    type Change<'a> = Box<dyn Fn(&mut Claims) + 'a>;
    for (what, f, want) in [
        (
            "expired 3 s ago",
            Box::new(|c: &mut Claims| (c.iat, c.exp) = (now - 60, now - 3)) as Change,
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
        (
            "issued in 6 s",
            Box::new(|c: &mut Claims| c.iat = now + 6),
            Some("issued in the future"),
        ),
        (
            "no jti",
            Box::new(|c: &mut Claims| c.jti.clear()),
            Some("no jti"),
        ),
    ] {
        let t = doctored(&i, &b, now, f);
        match (v.verify_at(&t, Some(&b), now).await, want) {
            (Ok(_), None) => {}
            (Err(e), Some(want)) => {
                assert!(e.to_string().contains(want), "{what}: {e}");
                assert_eq!(e.status(), 401, "{what}");
            }
            (got, _) => panic!("{what}: {got:?}"),
        }
    }
}

#[tokio::test]
async fn a_header_without_kid_or_with_another_algorithm_is_refused() {
    let i = TestIssuer::es256(ISS);
    let b = binding("GET", URL, b"");
    let v = verifier(&i, None).await;
    let c = i.claims("bot", "itsm", "", &b, 60);
    let t = i.sign_with_header(&serde_json::json!({ "typ": "JWT", "alg": "ES256" }), &c);
    let e = v.verify(&t, Some(&b)).await.unwrap_err();
    assert!(e.to_string().contains("no kid"), "{e}");
    // The ES256 key's id under EdDSA: refused before any signature check.
    let t = i.sign_with_header(
        &serde_json::json!({ "typ": "JWT", "alg": "EdDSA", "kid": i.kid() }),
        &c,
    );
    let e = v.verify(&t, Some(&b)).await.unwrap_err();
    assert!(e.to_string().contains("is not for EdDSA"), "{e}");
}

#[tokio::test]
async fn an_hmac_token_keyed_with_the_public_key_is_refused() {
    use base64::Engine as _;
    let i = TestIssuer::es256(ISS);
    let b = binding("GET", URL, b"");
    let v = verifier(&i, None).await;
    let claims = i.claims("bot", "itsm", "", &b, 60);
    // What an attacker has of the key: the published JWK, and the public
    // point in it (0x04 || x || y, the form a verifier that took alg from
    // the token would use as the HMAC secret).
    let jwk = serde_json::to_value(&i.jwks().keys[0]).unwrap();
    let coordinate = |c: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[c].as_str().unwrap())
            .unwrap()
    };
    let point = [vec![4u8], coordinate("x"), coordinate("y")].concat();
    let header = serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": i.kid() });
    for secret in [point, serde_json::to_vec(&jwk).unwrap()] {
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).unwrap()),
            b64url(&serde_json::to_vec(&claims).unwrap())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let mac = ring::hmac::sign(&key, input.as_bytes());
        let t = format!("{input}.{}", b64url(mac.as_ref()));
        let e = v.verify(&t, Some(&b)).await.unwrap_err();
        assert!(e.to_string().contains("HS256 not accepted"), "{e}");
        assert_eq!(e.status(), 401);
    }
}

#[tokio::test]
async fn a_failed_jwks_read_holds_back_the_next_only_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestIssuer::es256(ISS);
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, serde_json::to_vec(&first.jwks()).unwrap()).unwrap();
    let v = Verifier::new(
        VerifierConfig::new("itsm", Some(ISS)),
        JwksSource::File(file.clone()),
    )
    .await
    .unwrap();
    // A key rotated since the verifier read the JWKS, which is then
    // unreadable for a moment.
    let rotated = TestIssuer::es256(ISS);
    let b = binding("GET", URL, b"");
    let t = rotated.mint("itsm", "", &b);
    std::fs::remove_file(&file).unwrap();
    let e = v.verify(&t, Some(&b)).await.unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    let both = jsonwebtoken::jwk::JwkSet {
        keys: [first.jwks().keys, rotated.jwks().keys].concat(),
    };
    std::fs::write(&file, serde_json::to_vec(&both).unwrap()).unwrap();
    // Right after the failure the rate limit still holds (and says the
    // keys are unavailable, not that the token is bad)...
    let e = v.verify(&t, Some(&b)).await.unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    assert!(e.challenge(None, None).is_none());
    // ...but only for a moment, not the whole refresh interval.
    tokio::time::sleep(RETRY_AFTER_FAILED_FETCH + Duration::from_millis(200)).await;
    v.verify(&t, Some(&b)).await.unwrap();
    // A read that worked holds the next back for the whole interval:
    // made-up key ids cannot make the verifier hammer the issuer.
    std::fs::remove_file(&file).unwrap();
    let stranger = TestIssuer::es256(ISS);
    let e = v
        .verify(&stranger.mint("itsm", "", &b), Some(&b))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown key id"), "{e}");
}

/// A store that cannot be reached.
#[derive(Debug)]
struct Down;

impl ReplayStore for Down {
    fn spend<'a>(
        &'a self,
        _: &'a str,
        _: u64,
        _: u64,
    ) -> crate::replay::BoxFuture<'a, Result<Spend, ReplayError>> {
        Box::pin(std::future::ready(Err(ReplayError::Unavailable(
            "connection refused".into(),
        ))))
    }

    fn seen<'a>(
        &'a self,
        _: &'a str,
        _: u64,
    ) -> crate::replay::BoxFuture<'a, Result<bool, ReplayError>> {
        Box::pin(std::future::ready(Err(ReplayError::Unavailable(
            "connection refused".into(),
        ))))
    }
}

#[tokio::test]
async fn a_replay_store_that_cannot_answer_refuses_the_token() {
    let i = TestIssuer::es256(ISS);
    let v = Verifier::with_replay_store(
        VerifierConfig::new("itsm", Some(ISS)),
        JwksSource::Static(i.jwks()),
        Arc::new(Down),
    )
    .await
    .unwrap();
    let b = binding("GET", URL, b"");
    let e = v
        .verify(&i.mint("itsm", "", &b), Some(&b))
        .await
        .unwrap_err();
    assert_eq!(e.status(), 503, "{e}");
    assert!(!e.is_about_the_token());
    assert!(e.challenge(None, None).is_none());
}

#[tokio::test]
async fn verify_request_takes_the_token_and_binding_from_the_request() {
    let i = TestIssuer::es256(ISS);
    let v = verifier(&i, None).await;
    let b = binding("POST", "http://tool.example:8080/x?y=1", b"hi");
    let request = |token: Option<&str>| {
        let mut r = http::Request::post("/x?y=1").header("host", "tool.example:8080");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(()).unwrap().into_parts().0
    };
    let e = v
        .verify_request(&request(None), "http", b"hi")
        .await
        .unwrap_err();
    assert_eq!(e, VerifyError::MissingToken);
    assert_eq!(
        e.challenge(None, Some("https://m")).unwrap().to_string(),
        "Bearer resource_metadata=\"https://m\""
    );
    let t = i.mint("itsm", "", &b);
    let e = v
        .verify_request(&request(Some(&t)), "http", b"ho")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("request hash"), "{e}");
    v.verify_request(&request(Some(&t)), "http", b"hi")
        .await
        .unwrap();
}

#[test]
fn www_authenticate_follows_rfc_6750() {
    let e = invalid("token \"expired\"");
    assert_eq!(
        e.www_authenticate(None).as_deref(),
        Some("Bearer error=\"invalid_token\", error_description=\"token 'expired'\"")
    );
    assert_eq!(
        VerifyError::Jwks(JwksError::Read("unreachable".into())).www_authenticate(None),
        None
    );
}
