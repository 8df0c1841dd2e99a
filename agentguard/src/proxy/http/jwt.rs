//! Request-bound tokens in the proxy: the body is read whole (bounded in
//! size and in time) so that the token can bind its hash, then a token is
//! minted for exactly the request the upstream will receive and put where
//! the credential says.

use hyper::{body::Bytes, http::request::Parts};

use super::ConnMeta;
use crate::{
    credentials::{Secret, inject},
    policy::Injection,
    proxy::{ProxyContext, refusal::Refusal, upstream::ProxyBody},
    token::{MintRequest, RequestBinding},
};

/// The stretch of the minted token's signature that is redacted if echoed
/// ([`redacted_part`]), and its `jti`.
pub(super) struct Bound {
    pub body: Bytes,
    pub redact: Secret,
    pub jti: String,
    pub on_behalf_of: Option<String>,
}

pub(super) struct JwtSpec<'a> {
    pub audience: &'a str,
    pub scope: &'a str,
    pub ttl: std::time::Duration,
    pub inject: &'a Injection,
}

/// `parts` must already be the upstream's request head (absolute URI with
/// the normalised path): that is what the token binds.
pub(super) async fn bind(
    parts: &mut Parts,
    body: ProxyBody,
    spec: &JwtSpec<'_>,
    meta: &ConnMeta,
    ctx: &ProxyContext,
) -> Result<Bound, Refusal> {
    // Bounded in size and in time like every body read whole (`body`).
    let max = ctx.jwt_max_body;
    let limit = ctx.limits.options().client_timeout;
    let body = super::body::read_bounded(body, max, &parts.headers, limit, |max| {
        Refusal::JwtBodyTooLarge { max }
    })
    .await?;
    let on_behalf_of = meta.on_behalf_of.clone();
    let binding = RequestBinding::new(parts.method.as_str(), &parts.uri, "https", &body);
    let minted = ctx
        .minter
        .mint(&MintRequest {
            agent: &meta.identity.agent,
            audience: spec.audience,
            scope: spec.scope,
            ttl: spec.ttl,
            binding: &binding,
            on_behalf_of: on_behalf_of.as_deref(),
            kernel: Some((&meta.identity.cgroup, meta.identity.uid)),
        })
        .map_err(Refusal::TokenMint)?;
    let redact = redacted_part(&minted.token);
    let token = Secret::new(minted.token);
    inject(spec.inject, &token, parts).map_err(|e| Refusal::TokenInjection(Box::new(e)))?;
    Ok(Bound {
        body,
        redact,
        jti: minted.claims.jti,
        on_behalf_of,
    })
}

/// What of a minted token the response is searched for: the first
/// [`REDACTED_SIGNATURE_CHARS`] characters of its signature (the JWS's
/// third part), in every form the redactor knows.
///
/// Redaction keeps an upstream that echoes the request from handing the
/// agent a credential it was never to hold. What makes a minted token one
/// is its signature alone: the header and claims say who asked for which
/// request (the agent, its own call's method, URL and body hash, the
/// audience and scope of its policy), nothing the agent does not know
/// already, and without the signature no verifier accepts them. Nor
/// without part of it: with 132 of its bits cut out, the rest of an ES256
/// or EdDSA signature leaves 2^132 candidates to try against the public
/// key, as hopeless as forging one. Every form of the whole token holds the
/// same form of any stretch of its signature (base64 and percent-encoding
/// go byte by byte, hex too, and the redactor looks for base64 at each of
/// the three alignments), so searching for the stretch finds every echo
/// the whole token's forms would, and cuts the signature in each.
///
/// Neither this nor cutting the whole signature withstands an upstream
/// that echoes the token cut short: an echo that stops inside the searched
/// stretch is not found, and beside a whole echo (which loses only the
/// stretch) it leaves to guess only the characters of the stretch it did
/// not reach; cutting the whole signature left as little to a single echo
/// cut short of its last characters. Redaction finds what comes back
/// whole (see [`crate::credentials::Redactor`]).
///
/// What it saves: the token is new on every request, so its forms and
/// their searcher are built on every request, and those of a stretch of 22
/// characters are a quarter of those of the whole 86-character signature
/// (itself a tenth of the ~700-character token); a stream also holds back
/// less while a form could still be completing.
fn redacted_part(token: &str) -> Secret {
    match token.rsplit_once('.') {
        Some((_, signature)) if !signature.is_empty() => {
            // Base64url, so ASCII: the cut is on a character boundary
            // (and were it not, the whole signature is taken).
            let stretch = signature
                .get(..REDACTED_SIGNATURE_CHARS)
                .unwrap_or(signature);
            Secret::new(stretch.to_owned())
        }
        // Not a JWS (it always is): the whole of it.
        _ => Secret::new(token.to_owned()),
    }
}

/// Base64url characters of a minted token's signature that an echo loses:
/// 6 bits each, 132 bits.
const REDACTED_SIGNATURE_CHARS: usize = 22;

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::credentials::Redactor;

    /// An echo of the whole token, raw or in any of the forms the
    /// redactor knows, loses a stretch of its signature, so that no echo
    /// holds the whole signature in any form; the token is useless without.
    #[test]
    fn an_echoed_token_loses_its_signature_in_every_form() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        // A JOSE ES256 signature: r || s, 64 bytes, 86 base64url characters.
        let raw: Vec<u8> = (0..64u32).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        let signature = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(signature.len(), 86);
        let token = format!(
            "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhZ2VudCIsImp0aSI6IngifQ.{signature}"
        );
        let part = redacted_part(&token);
        assert_eq!(part.expose(), &signature[..REDACTED_SIGNATURE_CHARS]);
        let r = Redactor::new(&[], std::slice::from_ref(&part)).unwrap();

        let every_byte = |s: &str, upper: bool| -> String {
            s.bytes()
                .map(|b| {
                    if upper {
                        format!("%{b:02X}")
                    } else {
                        format!("%{b:02x}")
                    }
                })
                .collect()
        };
        let unicode = |s: &str, upper: bool| -> String {
            s.chars()
                .map(|c| {
                    let u = c as u32;
                    if upper {
                        format!("\\u{u:04X}")
                    } else {
                        format!("\\u{u:04x}")
                    }
                })
                .collect()
        };
        // Each echo, and the same form of the whole signature in it.
        let mut echoes = vec![
            (format!("raw {token} end"), signature.clone()),
            (
                format!(r#"{{"authorization":"Bearer {token}"}}"#),
                signature.clone(),
            ),
            (hex::encode(&token), hex::encode(&signature)),
            (hex::encode_upper(&token), hex::encode_upper(&signature)),
        ];
        for upper in [false, true] {
            echoes.push((every_byte(&token, upper), every_byte(&signature, upper)));
            echoes.push((unicode(&token, upper), unicode(&signature, upper)));
        }
        // Base64 dumps, in both alphabets, with the token at each
        // alignment: the characters that encode only signature bits.
        for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
            for prefix in ["Authorization: Bearer ", "x", "xy"] {
                let text = format!("{prefix}{token}");
                let start = text.len() - signature.len();
                let dump = engine.encode(&text);
                let whole = &dump[(8 * start).div_ceil(6)..8 * text.len() / 6];
                echoes.push((format!("dump {dump}"), whole.to_owned()));
            }
        }
        for (echo, whole) in echoes {
            assert!(echo.contains(&whole), "{echo} lacks {whole}");
            let (out, n) = r
                .redact(echo.as_bytes())
                .unwrap_or_else(|| panic!("not found in {echo}"));
            assert_eq!(n, 1, "{echo}");
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains("[redacted]") && !out.contains(&whole), "{out}");
        }
        assert_eq!(redacted_part("opaque").expose(), "opaque");
    }
}
