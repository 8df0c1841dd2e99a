//! Cutting secrets out of responses: an upstream that echoes the request
//! (debug endpoints, error pages quoting headers, token-introspection APIs)
//! would otherwise hand the agent the secret the proxy injected.
//!
//! Only the exact bytes of a secret are found, not encoded forms of it
//! (base64, percent- or JSON-escaped). A body must be given whole: a secret
//! split across two calls is not found.

use hyper::{HeaderMap, header::HeaderValue};

use super::Secret;

pub(super) const REDACTED: &[u8] = b"[redacted]";
/// Shorter secrets are not looked for: three bytes occur by chance in any
/// response, and replacing them would shred it while protecting little.
pub(super) const MIN_REDACT_LEN: usize = 4;

/// Replaces every occurrence of any secret in the header values with
/// `[redacted]`; returns how many were replaced.
pub fn redact_headers(headers: &mut HeaderMap, secrets: &[Secret]) -> usize {
    let needles = needles(secrets);
    if needles.is_empty() {
        return 0;
    }
    let mut count = 0;
    for value in headers.values_mut() {
        if let Some((redacted, n)) = replace_all(value.as_bytes(), &needles) {
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

/// [`redact_headers`] over a body: the redacted copy, or `None` if no secret
/// was in it.
pub fn redact_bytes(body: &[u8], secrets: &[Secret]) -> Option<Vec<u8>> {
    replace_all(body, &needles(secrets)).map(|(redacted, _)| redacted)
}

/// The secrets to look for, longest first: where one secret contains another,
/// the longer is cut whole, not left with a hole in it.
fn needles(secrets: &[Secret]) -> Vec<&[u8]> {
    let mut needles: Vec<&[u8]> = secrets
        .iter()
        .map(|s| s.expose().as_bytes())
        .filter(|s| s.len() >= MIN_REDACT_LEN)
        .collect();
    needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
    needles.dedup();
    needles
}

/// `haystack` with every needle replaced, and the count; `None` if none was
/// found (so the common case copies nothing).
fn replace_all(haystack: &[u8], needles: &[&[u8]]) -> Option<(Vec<u8>, usize)> {
    let mut current: Option<Vec<u8>> = None;
    let mut count = 0;
    for needle in needles {
        let hay = current.as_deref().unwrap_or(haystack);
        if find(hay, needle).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(hay.len());
        let mut rest = hay;
        while let Some(at) = find(rest, needle) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(REDACTED);
            rest = &rest[at + needle.len()..];
            count += 1;
        }
        out.extend_from_slice(rest);
        current = Some(out);
    }
    current.map(|c| (c, count))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut start = 0;
    while start + needle.len() <= hay.len() {
        let at = start
            + hay[start..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if &hay[at..at + needle.len()] == needle {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(values: &[&str]) -> Vec<Secret> {
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
        let n = redact_headers(&mut h, &secrets(&["sk-real-123", "tok-abcdef", "abc"]));
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
    }

    #[test]
    fn overlapping_and_edge_occurrences() {
        let out = redact_bytes(b"aaaaaaaaa", &secrets(&["aaaa"])).unwrap();
        assert_eq!(out, b"[redacted][redacted]a");
        let out = redact_bytes(b"tokentoken", &secrets(&["token"])).unwrap();
        assert_eq!(out, b"[redacted][redacted]");
    }
}
