//! The tokens agentguard mints, verified by the JWT libraries tool servers
//! are written with, configured as a server would be: the JWKS as
//! `agentguard token jwks` prints it, one allowed algorithm, the issuer and
//! the audience. PyJWT (Python) and jose (Node) are run unmodified on the
//! scripts in tests/verifiers; `agentguard token verify` is the
//! agentguard-verify crate's check. Each accepts the default key's tokens
//! (EdDSA) and ES256's, refuses a token whose signature was changed, and
//! refuses one of an algorithm it does not allow.

use std::{path::Path, process::Command};

use serde_json::Value;

use super::tokens::{AGENT, Setup, claims, minted, part, policy, setup_with, token_verify};
use crate::common::text;

/// The tokens' lifetime: longer than the checks take.
const TTL: &str = "5m";

fn verifiers_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/verifiers")
}

/// What one verifier said of a token: the claims it accepted, or why not.
fn verify(verifier: &str, s: &Setup, token: &str, alg: &str) -> Result<Value, String> {
    let dir = verifiers_dir();
    let mut cmd = match verifier {
        "pyjwt" => {
            let mut c = Command::new("python3");
            c.arg(dir.join("verify_token.py"));
            c
        }
        "jose" => {
            assert!(
                dir.join("node_modules/jose").exists(),
                "jose is not installed in tests/verifiers: run `cargo xtask setup`"
            );
            let mut c = Command::new("node");
            c.arg(dir.join("verify_token.mjs"));
            c
        }
        other => panic!("no verifier {other}"),
    };
    let out = cmd
        .arg(&s.jwks)
        .args([token, &s.issuer, "itsm", alg])
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    match out.status.code() {
        Some(0) => Ok(serde_json::from_str(text(&out.stdout).trim())
            .unwrap_or_else(|e| panic!("{verifier}: {e}: {said}"))),
        Some(1) if said.starts_with("refused:") => Err(said),
        _ => panic!("{verifier} failed to run: {said}"),
    }
}

/// `agentguard token verify` (agentguard-verify's checks, the binding
/// too): the call as [`agent_call_at`] made it, to the URL the token names.
fn agentguard_verifies(s: &Setup, token: &str) -> bool {
    let htu = claims(token)["htu"].as_str().unwrap().to_owned();
    let body = s.dir.path().join("body.json");
    token_verify(s, &format!("{htu}?dry=1"), &body, token)
        .status
        .success()
}

/// The token with one character of its signature changed.
fn tampered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    let i = bytes.len() - 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn check(s: &Setup, alg: &str, other: &str) {
    let token = minted(s, r#"{"title":"printer on fire"}"#);
    assert_eq!(part(&token, 0)["alg"], alg);
    for verifier in ["pyjwt", "jose"] {
        let accepted = verify(verifier, s, &token, alg)
            .unwrap_or_else(|e| panic!("{verifier} refused a {alg} token: {e}"));
        let claims = accepted.get("claims").unwrap_or(&accepted);
        assert_eq!(claims["aud"], "itsm", "{verifier}: {accepted}");
        assert_eq!(
            claims["sub"],
            format!("spiffe://agentguard.local/agent/{AGENT}"),
            "{verifier}: {accepted}"
        );
        let why = verify(verifier, s, &tampered(&token), alg)
            .expect_err(&format!("{verifier} accepted a changed signature"));
        assert!(why.contains("ignature"), "{verifier}: {why}");
        let why = verify(verifier, s, &token, other).expect_err(&format!(
            "{verifier} accepted {alg} where only {other} is allowed"
        ));
        assert!(
            why.contains("alg") && why.contains("allowed"),
            "{verifier}: {why}"
        );
    }
    assert!(
        agentguard_verifies(s, &token),
        "agentguard token verify refused it"
    );
    assert!(!agentguard_verifies(s, &tampered(&token)));
}

#[test]
fn pyjwt_jose_and_agentguard_verify_the_default_eddsa_tokens() {
    let s = setup_with(&policy(TTL), &[]);
    check(&s, "EdDSA", "ES256");
}

#[test]
fn pyjwt_jose_and_agentguard_verify_es256_tokens() {
    let s = setup_with(&policy(TTL), &["--token-algorithm", "es256"]);
    check(&s, "ES256", "EdDSA");
}
