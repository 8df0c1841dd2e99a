//! Cutting secrets out of what upstreams send back: an upstream that echoes
//! the request (debug endpoints, error pages quoting headers, token
//! introspection, an LLM repeating its prompt) would otherwise hand the
//! agent the secret the proxy injected.
//!
//! A [`Redactor`] looks for every form in which a secret comes back without
//! effort on the agent's part ([`forms`]: raw, base64 at any alignment (so
//! inside HTTP Basic's `base64(user:secret)` too), percent-encoded,
//! JSON-escaped, hex), all at once with one Aho-Corasick automaton, and
//! replaces each with `[redacted]`. Whole values (headers, small bodies) go
//! through [`Redactor::redact`]; streams (chunked bodies, SSE, WebSocket
//! messages) through a [`StreamRedactor`], which holds back only bytes that
//! could still become a secret: at most the longest form minus one byte, and
//! nothing at all after an SSE event's blank line.
//!
//! What it cannot find: a secret the upstream cuts into pieces the agent
//! joins (SSE deltas, JSON fragments), or transforms further (encrypts,
//! compresses, reverses). Compressed bodies are therefore not relayed where
//! redaction applies (`proxy::http::response`).

mod forms;
mod stream;

use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use hyper::{HeaderMap, header::HeaderValue};

pub use stream::StreamRedactor;

use super::Secret;

pub(super) const REDACTED: &[u8] = b"[redacted]";
/// Shorter secrets are not looked for: three bytes occur by chance in any
/// response, and replacing them would shred it while protecting little.
pub(super) const MIN_REDACT_LEN: usize = 4;

/// Finds every form of a set of secrets. Built once per response from the
/// agent's secrets (and the request's minted token); its `Debug` shows no
/// secret.
pub struct Redactor {
    matcher: AhoCorasick,
    /// Every form, sorted: which suffixes of a chunk could still grow into
    /// one ([`Redactor::hold_from`]).
    sorted: Vec<Box<[u8]>>,
    /// Whether any form starts with this byte: most positions are ruled
    /// out by one lookup.
    starts: [bool; 256],
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("forms", &self.sorted.len())
            .field("longest", &self.longest)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for `secrets`, or `None` when none is long enough to look
    /// for (nothing to redact). Shared: each stream it cuts holds it.
    pub fn new(secrets: &[Secret]) -> Option<Arc<Self>> {
        let mut sorted: Vec<Box<[u8]>> = secrets
            .iter()
            .filter(|s| s.expose().len() >= MIN_REDACT_LEN)
            .flat_map(|s| forms::forms(s.expose()))
            .map(Vec::into_boxed_slice)
            .collect();
        sorted.sort();
        sorted.dedup();
        if sorted.is_empty() {
            return None;
        }
        // Leftmost-longest: where one form contains another (a secret that
        // contains another secret), the longer is cut whole, not left with
        // a hole in it; and the result is the same however a stream is cut.
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&sorted)
            .ok()?;
        let mut starts = [false; 256];
        for form in &sorted {
            starts[usize::from(form[0])] = true;
        }
        let longest = sorted.iter().map(|f| f.len()).max().unwrap_or(0);
        Some(Arc::new(Self {
            matcher,
            sorted,
            starts,
            longest,
        }))
    }

    /// `haystack` with every form of every secret replaced, and how many
    /// were; `None` if there was none (so the common case copies nothing).
    pub fn redact(&self, haystack: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out: Option<Vec<u8>> = None;
        let mut count = 0;
        let mut pos = 0;
        for m in self.matcher.find_iter(haystack) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(haystack.len()));
            o.extend_from_slice(&haystack[pos..m.start()]);
            o.extend_from_slice(REDACTED);
            pos = m.end();
            count += 1;
        }
        out.map(|mut o| {
            o.extend_from_slice(&haystack[pos..]);
            (o, count)
        })
    }

    /// The longest form, in bytes: a stream holds back less than this.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// The first position at or after `from` from which the rest of `buf`
    /// is a proper prefix of some form (it could become one with more
    /// bytes), or `buf.len()` if there is none.
    fn hold_from(&self, buf: &[u8], from: usize) -> usize {
        let earliest = from.max(buf.len().saturating_sub(self.longest - 1));
        (earliest..buf.len())
            .find(|&p| self.starts[usize::from(buf[p])] && self.is_proper_prefix(&buf[p..]))
            .unwrap_or(buf.len())
    }

    fn is_proper_prefix(&self, tail: &[u8]) -> bool {
        // The forms that start with `tail` sort together, from the first
        // one not less than it; if that one is `tail` itself, a longer one
        // may follow.
        let at = self.sorted.partition_point(|f| &f[..] < tail);
        self.sorted[at..]
            .iter()
            .take(2)
            .any(|f| f.len() > tail.len() && f.starts_with(tail))
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
    Redactor::new(secrets)?.redact(body).map(|(r, _)| r)
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
        let r = Redactor::new(&secrets(&["sk-real-123", "tok-abcdef", "abc"])).unwrap();
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

    #[test]
    fn nothing_found_is_none() {
        assert!(redact_bytes(b"hello world", &secrets(&["sk-real-123"])).is_none());
        assert!(redact_bytes(b"", &secrets(&["sk-real-123"])).is_none());
        assert!(redact_bytes(b"abc abc", &secrets(&["abc"])).is_none());
        assert!(redact_bytes(b"sk-real-12", &secrets(&["sk-real-123"])).is_none());
        assert!(Redactor::new(&secrets(&["abc"])).is_none());
        assert!(Redactor::new(&[]).is_none());
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
        let r = Redactor::new(&secrets(&[secret])).unwrap();
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
