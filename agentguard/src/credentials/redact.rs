//! Cutting secrets out of what upstreams send back: an upstream that echoes
//! the request (debug endpoints, error pages quoting headers, token
//! introspection, an LLM repeating its prompt) would otherwise hand the
//! agent the secret the proxy injected.
//!
//! A [`Redactor`] looks for every form in which a secret comes back without
//! effort on the agent's part ([`forms`]: raw, base64 at any alignment (so
//! inside HTTP Basic's `base64(user:secret)` too), percent-encoded,
//! JSON-escaped, hex), all at once (`set`: a Teddy or Aho-Corasick search
//! over every form), and replaces each with `[redacted]`. Whole values (headers, small bodies) go
//! through [`Redactor::redact`]; streams (chunked bodies, SSE, WebSocket
//! messages) through a [`StreamRedactor`], which holds back only bytes that
//! could still become a secret: at most the longest form minus one byte, and
//! nothing at all after an SSE event's blank line.
//!
//! What it cannot find: a secret the upstream cuts into pieces the agent
//! joins (SSE deltas, JSON fragments), or transforms further (encrypts,
//! compresses, reverses). Compressed bodies are therefore not relayed where
//! redaction applies (`proxy::http::response`).

mod cache;
mod forms;
mod set;
mod stream;
mod trigrams;

use std::sync::Arc;

use hyper::{HeaderMap, header::HeaderValue};

pub use stream::StreamRedactor;

use super::Secret;
use set::FormSet;

pub(super) const REDACTED: &[u8] = b"[redacted]";
/// Shorter secrets are not looked for: three bytes occur by chance in any
/// response, and replacing them would shred it while protecting little.
pub(super) const MIN_REDACT_LEN: usize = 4;

/// Finds every form of a set of secrets: the agent's (its form set built
/// once and shared) and the token minted for one request (built per
/// request, small). The two are searched one after the other, the token
/// first. Its `Debug` shows no secret.
pub struct Redactor {
    stages: Vec<Arc<FormSet>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<_> = self
            .stages
            .iter()
            .map(|s| format!("{} forms, longest {}, {}", s.len(), s.longest(), s.kind()))
            .collect();
        f.debug_struct("Redactor").field("stages", &stages).finish()
    }
}

impl Redactor {
    /// A redactor for the agent's `secrets` and those of one request
    /// (`per_request`: a minted token), or `None` when none is long enough
    /// to look for (nothing to redact). Shared: each stream it cuts holds
    /// it.
    pub fn new(secrets: &[Secret], per_request: &[Secret]) -> Option<Arc<Self>> {
        // The request's token first: a secret of the agent's that happens
        // to sit inside it must not cut it in two and leave the rest.
        let stages: Vec<_> = [
            FormSet::build_deferred(per_request).map(Arc::new),
            cache::form_set(secrets),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!stages.is_empty()).then(|| Arc::new(Self { stages }))
    }

    /// `haystack` with every form of every secret replaced, and how many
    /// were; `None` if there was none (so the common case copies nothing).
    pub fn redact(&self, haystack: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut current: Option<Vec<u8>> = None;
        let mut count = 0;
        for stage in &self.stages {
            if let Some((out, n)) = stage.redact(current.as_deref().unwrap_or(haystack)) {
                current = Some(out);
                count += n;
            }
        }
        current.map(|c| (c, count))
    }

    /// `base` (an agent's redactor, made once) with the secrets of one
    /// request searched first, as [`Redactor::new`] orders them.
    pub fn with_request(base: Option<&Arc<Self>>, per_request: &[Secret]) -> Option<Arc<Self>> {
        let stages: Vec<_> = FormSet::build_deferred(per_request)
            .map(Arc::new)
            .into_iter()
            .chain(base.into_iter().flat_map(|b| b.stages.iter().cloned()))
            .collect();
        (!stages.is_empty()).then(|| Arc::new(Self { stages }))
    }

    /// A stream holds back less than this many bytes.
    pub fn longest(&self) -> usize {
        self.stages.iter().map(|s| s.longest()).sum()
    }
}

/// Replaces every form of any secret in the header values with `[redacted]`;
/// returns how many were replaced.
pub fn redact_headers(headers: &mut HeaderMap, redactor: &Redactor) -> usize {
    let mut count = 0;
    for value in headers.values_mut() {
        if let Some((redacted, n)) = redactor.redact(value.as_bytes()) {
            // Bytes of a valid value with some replaced by visible ASCII:
            // still a valid value.
            if let Ok(mut new) = HeaderValue::from_bytes(&redacted) {
                new.set_sensitive(value.is_sensitive());
                *value = new;
                count += n;
            }
        }
    }
    count
}

/// [`Redactor::redact`] for a one-off text: the redacted copy, or `None` if
/// no secret was in it.
pub fn redact_bytes(body: &[u8], secrets: &[Secret]) -> Option<Vec<u8>> {
    FormSet::build_deferred(secrets)?
        .redact(body)
        .map(|(r, _)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn secrets(values: &[&str]) -> Vec<Secret> {
        values.iter().map(|v| Secret::new((*v).into())).collect()
    }

    #[test]
    fn headers_are_redacted_and_counted() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo",
            HeaderValue::from_static("key=sk-real-123; again sk-real-123"),
        );
        h.append("set-cookie", HeaderValue::from_static("t=tok-abcdef"));
        h.insert("x-fine", HeaderValue::from_static("nothing here"));
        let r = Redactor::new(&secrets(&["sk-real-123", "tok-abcdef", "abc"]), &[]).unwrap();
        let n = redact_headers(&mut h, &r);
        assert_eq!(n, 3);
        assert_eq!(h["x-echo"], "key=[redacted]; again [redacted]");
        assert_eq!(h["set-cookie"], "t=[redacted]");
        assert_eq!(h["x-fine"], "nothing here");
    }

    #[test]
    fn bytes_are_redacted_longest_first() {
        let body = br#"{"auth":"Bearer sk-real-123","short":"abc","part":"sk-real"}"#;
        let out = redact_bytes(body, &secrets(&["sk-real", "sk-real-123", "abc"])).unwrap();
        assert_eq!(
            out,
            br#"{"auth":"Bearer [redacted]","short":"abc","part":"[redacted]"}"#
        );
    }

    /// A token minted for the request that holds one of the agent's
    /// secrets is cut whole, not in two around it.
    #[test]
    fn a_token_holding_a_secret_is_cut_whole() {
        let r = Redactor::new(
            &secrets(&["sk-real-123"]),
            &secrets(&["eyJ.tok-sk-real-123-en.sig"]),
        )
        .unwrap();
        let (out, n) = r
            .redact(b"t=eyJ.tok-sk-real-123-en.sig k=sk-real-123")
            .unwrap();
        assert_eq!((out.as_slice(), n), (&b"t=[redacted] k=[redacted]"[..], 2));
    }

    #[test]
    fn nothing_found_is_none() {
        assert!(redact_bytes(b"hello world", &secrets(&["sk-real-123"])).is_none());
        assert!(redact_bytes(b"", &secrets(&["sk-real-123"])).is_none());
        assert!(redact_bytes(b"abc abc", &secrets(&["abc"])).is_none());
        assert!(redact_bytes(b"sk-real-12", &secrets(&["sk-real-123"])).is_none());
        assert!(Redactor::new(&secrets(&["abc"]), &secrets(&["xy"])).is_none());
        assert!(Redactor::new(&[], &[]).is_none());
    }

    #[test]
    fn overlapping_and_edge_occurrences() {
        let out = redact_bytes(b"aaaaaaaaa", &secrets(&["aaaa"])).unwrap();
        assert_eq!(out, b"[redacted][redacted]a");
        let out = redact_bytes(b"tokentoken", &secrets(&["token"])).unwrap();
        assert_eq!(out, b"[redacted][redacted]");
    }

    #[test]
    fn encoded_forms_are_redacted() {
        use base64::Engine as _;
        let secret = "s3cr/t+k<e>y é";
        let r = Redactor::new(&secrets(&[secret]), &[]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut texts = vec![
            format!(
                "Authorization: Basic {}",
                b64.encode(format!("user:{secret}"))
            ),
            format!(
                "Authorization: Basic {}",
                b64.encode(format!("us:{secret}"))
            ),
            format!("Authorization: Basic {}", b64.encode(format!("u:{secret}"))),
            format!(
                "url-safe {}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("xy{secret}"))
            ),
            "s3cr%2Ft%2Bk%3Ce%3Ey%20%C3%A9".to_owned(),
            "s3cr%2ft%2bk%3ce%3ey+%c3%a9".to_owned(),
            r#"{"k":"s3cr\/t+k<e>y \u00e9"}"#.to_owned(),
            r#"{"k":"s3cr/t+k\u003ce\u003ey é"}"#.to_owned(),
            hex::encode(secret),
            hex::encode_upper(secret),
        ];
        // The minted token's stage too.
        let r2 = Redactor::new(&secrets(&["sk-other-key"]), &secrets(&[secret])).unwrap();
        assert_eq!(
            r2.redact(b"sk-other-key s3cr/t+k<e>y \xc3\xa9").unwrap().1,
            2
        );
        let all_u: String = secret
            .encode_utf16()
            .map(|u| format!("\\u{u:04X}"))
            .collect();
        texts.push(all_u);
        let every: String = secret.bytes().map(|b| format!("%{b:02x}")).collect();
        texts.push(every);
        for text in texts {
            let (out, n) = r
                .redact(text.as_bytes())
                .unwrap_or_else(|| panic!("not found in {text}"));
            assert!(n >= 1, "{text}");
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains("[redacted]"), "{out}");
        }
    }
}
