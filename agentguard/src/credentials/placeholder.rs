//! Finding placeholders in what an agent sends. A placeholder in a request
//! that no tool bound to its credential allows shows an agent trying a
//! credential where it may not go; the caller decides what to do with that.
//! Only the request head is looked at, not the body.

use std::sync::LazyLock;

use hyper::{
    header::{AUTHORIZATION, PROXY_AUTHORIZATION},
    http::request::Parts,
};
use memchr::memmem;

use super::{PLACEHOLDER_PREFIX, encoding::base64_decode};
use crate::percent;

/// How many times a value is percent-decoded. Once is what a server does;
/// twice catches `%2561` for servers (and proxies in front of them) that
/// decode again.
const DECODE_ROUNDS: usize = 2;

/// Where placeholders appear in a request: (location, credential id) pairs,
/// each once. Locations are `header <name>`, `path` and `query`.
///
/// Header values and the path and query are scanned raw and percent-decoded
/// (so `%61gentguard-placeholder:` is caught), and Basic credentials are
/// base64-decoded first, since SDKs put an API key there as the password.
/// The id runs from after the prefix up to the first byte that is not
/// `[A-Za-z0-9._-]`; it may be empty.
pub fn find_placeholders(parts: &Parts) -> Vec<(String, String)> {
    let mut found = Vec::new();
    // Runs per request: the location is only spelt out for a hit.
    let mut add = |location: &dyn Fn() -> String, ids: Vec<String>| {
        for id in ids {
            let hit = (location(), id);
            if !found.contains(&hit) {
                found.push(hit);
            }
        }
    };
    for (name, value) in &parts.headers {
        let location = || format!("header {name}");
        add(&location, scan_decoded(value.as_bytes()));
        if (name == AUTHORIZATION || name == PROXY_AUTHORIZATION)
            && let Some(decoded) = basic_credentials(value.as_bytes())
        {
            add(&location, scan_decoded(&decoded));
        }
    }
    add(
        &|| "path".to_owned(),
        scan_decoded(parts.uri.path().as_bytes()),
    );
    if let Some(query) = parts.uri.query() {
        add(&|| "query".to_owned(), scan_decoded(query.as_bytes()));
    }
    found
}

/// The decoded user-id:password of `Basic <base64>`, if it is that.
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = value.split_at_checked(6)?;
    // RFC 7617 §2: the scheme name is case-insensitive.
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    base64_decode(rest.trim_ascii())
}

/// Ids found in `bytes`, raw and after each round of percent-decoding.
fn scan_decoded(bytes: &[u8]) -> Vec<String> {
    let mut ids = scan(bytes);
    if !bytes.contains(&b'%') {
        return ids;
    }
    let mut current = bytes.to_vec();
    for _ in 0..DECODE_ROUNDS {
        if !current.contains(&b'%') {
            break;
        }
        current = percent::decode(&current);
        ids.extend(scan(&current));
    }
    ids
}

/// Where the first [`PLACEHOLDER_PREFIX`] in `bytes` starts. Every header
/// value and target of every request is searched for it, twice: SIMD
/// (memchr's), where a window compared at each position called memcmp for
/// each byte.
pub(super) fn find_prefix(bytes: &[u8]) -> Option<usize> {
    static FINDER: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(PLACEHOLDER_PREFIX));
    FINDER.find(bytes)
}

fn scan(bytes: &[u8]) -> Vec<String> {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    let mut ids = Vec::new();
    let mut rest = bytes;
    while let Some(at) = find_prefix(rest) {
        rest = &rest[at + prefix.len()..];
        let len = rest
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
            .unwrap_or(rest.len());
        // Only ASCII was taken, so this is valid UTF-8.
        ids.push(String::from_utf8_lossy(&rest[..len]).into_owned());
        rest = &rest[len..];
    }
    ids
}

#[cfg(test)]
mod tests {
    use hyper::Request;

    use super::*;
    use crate::credentials::{encoding::base64_encode, placeholder_for};

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn hit(location: &str, id: &str) -> (String, String) {
        (location.to_owned(), id.to_owned())
    }

    #[test]
    fn clean_request_has_none() {
        let p = parts(
            "https://api.example.com/v1/chat?model=x&agentguard=1",
            &[
                ("authorization", "Bearer sk-real"),
                ("x-note", "agentguard-placeholder"),
            ],
        );
        assert!(find_placeholders(&p).is_empty());
    }

    #[test]
    fn found_in_header() {
        let value = format!("Bearer {}", placeholder_for("openai"));
        let p = parts("/", &[("authorization", &value), ("x-api-key", "a")]);
        assert_eq!(
            find_placeholders(&p),
            [hit("header authorization", "openai")]
        );
    }

    #[test]
    fn found_in_basic_credentials() {
        let creds = format!("user:{}", placeholder_for("jira.cloud"));
        let value = format!("basic {}", base64_encode(creds.as_bytes()));
        let p = parts("/", &[("authorization", &value)]);
        assert_eq!(
            find_placeholders(&p),
            [hit("header authorization", "jira.cloud")]
        );
    }

    #[test]
    fn found_in_query_with_id_ending_at_separator() {
        let p = parts("/search?q=1&key=agentguard-placeholder:maps_v2&x=2", &[]);
        assert_eq!(find_placeholders(&p), [hit("query", "maps_v2")]);
        // Encoded colon: found after decoding.
        let p = parts("/search?key=agentguard-placeholder%3Amaps", &[]);
        assert_eq!(find_placeholders(&p), [hit("query", "maps")]);
    }

    #[test]
    fn found_percent_encoded_in_path() {
        let p = parts("/v1/%61gentguard-placeholder%3Agithub/repos", &[]);
        assert_eq!(find_placeholders(&p), [hit("path", "github")]);
        // Encoded twice.
        let p = parts("/v1/%2561gentguard-placeholder:github/repos", &[]);
        assert_eq!(find_placeholders(&p), [hit("path", "github")]);
    }

    #[test]
    fn several_places_each_reported_once() {
        let p = parts(
            "/agentguard-placeholder:a?x=agentguard-placeholder:b",
            &[("x-k", "agentguard-placeholder:a agentguard-placeholder:a")],
        );
        assert_eq!(
            find_placeholders(&p),
            [hit("header x-k", "a"), hit("path", "a"), hit("query", "b")]
        );
    }
}
