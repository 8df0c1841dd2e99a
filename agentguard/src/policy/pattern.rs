//! Host and path patterns, and the normalisation a request path goes through
//! before it is matched.

/// A host name pattern: `api.example.com` (exact) or `*.example.com` (any
/// name below example.com, at any depth, but not example.com itself).
/// Compared case-insensitively, without a trailing dot (RFC 4343).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        // An IP literal (as an agent may dial one) is kept in canonical form.
        if let Ok(ip) = raw
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            return Ok(Self::Exact(ip.to_string()));
        }
        let lower = raw.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "host {raw:?} must be a DNS name, optionally starting with \"*.\""
            ));
        }
        Ok(if wildcard {
            Self::Suffix(format!(".{name}"))
        } else {
            Self::Exact(name.to_owned())
        })
    }

    pub fn matches(&self, host: &str) -> bool {
        let host = if host.ends_with('.') {
            host.trim_end_matches('.')
        } else {
            host
        };
        // The pattern is lower case (`parse`), and so is nearly every host
        // an agent sends: a plain comparison decides most matches, and the
        // byte-by-byte case folding runs only where it differs. A request
        // is matched against every tool that may take its method, fifty
        // of them in the bench's MCP policy (measured in the commit that
        // made this).
        let folded_eq = |a: &[u8], b: &[u8]| a == b || a.eq_ignore_ascii_case(b);
        match self {
            Self::Exact(name) => {
                host.len() == name.len() && folded_eq(host.as_bytes(), name.as_bytes())
            }
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && folded_eq(
                        &host.as_bytes()[host.len() - suffix.len()..],
                        suffix.as_bytes(),
                    )
            }
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Suffix(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// A path pattern: `/api/v2/tickets` matches exactly that path;
/// `/api/v2/tickets/*` matches any path below it (one or more segments), not
/// the path itself. Patterns are matched against normalised paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    Below(String),
}

impl PathPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("path {raw:?} must start with '/'"));
        }
        let (below, base) = match raw.strip_suffix("/*") {
            Some(base) => (true, base),
            None => (false, raw),
        };
        if base.contains('*') {
            return Err(format!(
                "path {raw:?}: '*' is only allowed as a final \"/*\" segment"
            ));
        }
        let normalized = normalize_path(if base.is_empty() { "/" } else { base })
            .map_err(|e| format!("path {raw:?}: {e}"))?;
        if normalized != base && !(base.is_empty() && normalized == "/") {
            return Err(format!(
                "path {raw:?} is not in normal form (write it as {normalized:?})"
            ));
        }
        Ok(if below {
            Self::Below(format!("{}/", base.trim_end_matches('/')))
        } else {
            Self::Exact(base.to_owned())
        })
    }

    /// `path` must already be normalised.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => path == p,
            Self::Below(prefix) => path.len() > prefix.len() && path.starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(p) => f.write_str(p),
            Self::Below(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Normalises a request path (without query) for matching and forwarding
/// (RFC 3986 §6.2.2): percent-encoded octets are decoded, `.` and `..`
/// segments removed (§5.2.4), and the result re-encoded in one canonical
/// form. Encodings whose meaning servers disagree on are refused outright:
/// an encoded `/` or `\`, NUL and control characters, and invalid UTF-8.
/// So `/api/v2/tickets/../admin` and `/api/v2/tickets/%2e%2e/admin` both
/// become `/api/admin`.
pub fn normalize_path(raw: &str) -> Result<String, String> {
    // Most paths are already canonical: no escape to decode, no byte to
    // encode, no dot segment to resolve. They are their own normal form
    // (the test below checks it against the full resolution), without the
    // four allocations a request the full resolution makes.
    if raw.starts_with('/')
        && crate::percent::is_canonical_path(raw)
        && !raw.split('/').any(|s| s.starts_with('.'))
    {
        return Ok(raw.to_owned());
    }
    resolve_path(raw)
}

/// [`normalize_path`] in full: decoded, resolved, encoded again.
fn resolve_path(raw: &str) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err("path must start with '/'".into());
    }
    let mut segments: Vec<String> = Vec::new();
    let raw_segments: Vec<&str> = raw[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in raw_segments.iter().enumerate() {
        let decoded = percent_decode(seg)?;
        // Servers such as Tomcat and Jetty strip ";params" before resolving
        // dot segments, so "..;x" climbs a level there while looking like a
        // plain name here. Refuse the ambiguity.
        if decoded.starts_with("..;") || decoded.starts_with(".;") {
            return Err("a dot segment with path parameters (\"..;\") is refused".into());
        }
        match decoded.as_str() {
            "." => trailing_slash = i == last,
            ".." => {
                segments.pop();
                trailing_slash = i == last;
            }
            "" if i == last => trailing_slash = true,
            // Empty segments ("//") are kept: servers differ on them, so
            // they must not silently collapse onto an allowed path.
            _ => {
                segments.push(decoded);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(raw.len());
    for seg in &segments {
        out.push('/');
        percent_encode_segment(seg, &mut out);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

fn percent_decode(seg: &str) -> Result<String, String> {
    let out = crate::percent::decode_strict(seg)
        .ok_or_else(|| format!("invalid percent-encoding in {seg:?}"))?;
    // A segment holds no raw '/', so one after decoding was encoded; so was
    // any '\\' beyond the raw ones.
    if out.contains(&b'/') || bytecount(&out, b'\\') > bytecount(seg.as_bytes(), b'\\') {
        return Err("encoded '/' or '\\' in a path segment is refused".into());
    }
    if out.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("control characters in the path are refused".into());
    }
    if out.contains(&b'\\') {
        return Err("'\\' in the path is refused".into());
    }
    String::from_utf8(out).map_err(|_| "path is not valid UTF-8 after decoding".into())
}

/// Unreserved characters and sub-delims, ':' and '@' stay as they are
/// (RFC 3986 §3.3 pchar); everything else is percent-encoded, upper-case.
fn percent_encode_segment(seg: &str, out: &mut String) {
    out.push_str(&crate::percent::encode_path_segment(seg));
}

fn bytecount(bytes: &[u8], b: u8) -> usize {
    bytes.iter().filter(|&&c| c == b).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_exact_and_below() {
        let exact = HostPattern::parse("PyPI.org.").unwrap();
        assert!(exact.matches("pypi.org"));
        assert!(exact.matches("PYPI.ORG."));
        assert!(!exact.matches("files.pypi.org"));
        let wild = HostPattern::parse("*.example.org").unwrap();
        assert!(wild.matches("a.example.org"));
        assert!(wild.matches("a.b.EXAMPLE.org"));
        assert!(!wild.matches("example.org"));
        assert!(!wild.matches("badexample.org"));
        assert!(HostPattern::parse("::1").unwrap().matches("::1"));
        assert!(HostPattern::parse("[::1]").unwrap().matches("::1"));
        assert!(
            HostPattern::parse("127.0.0.2")
                .unwrap()
                .matches("127.0.0.2")
        );
        for bad in [
            "",
            "*.",
            "a..b",
            "exa mple.org",
            "*.*.x",
            "http://x",
            "*.::1",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_canonical_path_is_its_own_normal_form() {
        // Every path of up to five bytes over an alphabet with each kind of
        // byte the resolution treats apart: the shortcut agrees with it.
        const ALPHABET: &[u8] = b"/.a%2;\\~";
        let mut checked = 0;
        for len in 0..=5u32 {
            for n in 0..ALPHABET.len().pow(len) {
                let mut path = vec![b'/'];
                let mut k = n;
                for _ in 0..len {
                    path.push(ALPHABET[k % ALPHABET.len()]);
                    k /= ALPHABET.len();
                }
                let path = String::from_utf8(path).unwrap();
                assert_eq!(normalize_path(&path), resolve_path(&path), "{path:?}");
                checked += 1;
            }
        }
        assert!(checked > 30_000);
        assert_eq!(
            normalize_path("/v1/chat/completions").unwrap(),
            "/v1/chat/completions"
        );
        assert_eq!(normalize_path("a/b"), resolve_path("a/b"));
    }

    #[test]
    fn dot_segments_and_encodings_are_resolved() {
        let cases = [
            ("/api/v2/tickets", "/api/v2/tickets"),
            ("/api/v2/tickets/../admin", "/api/v2/admin"),
            ("/api/v2/tickets/%2e%2e/admin", "/api/v2/admin"),
            ("/api/v2/tickets/%2E%2E/%2e%2E/x", "/api/x"),
            ("/a/./b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/../../etc", "/etc"),
            ("/%61pi", "/api"),
            ("/a%20b", "/a%20b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/", "/"),
            ("/a//b", "/a//b"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw).unwrap(), want, "{raw}");
        }
        for bad in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/a%zz",
            "/%ff",
            "x",
            "/api/v2/tickets/..;/admin",
            "/api/v2/tickets/..%3B/admin",
            "/a/.;x/b",
        ] {
            assert!(normalize_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn path_patterns_match_normalised_paths() {
        let exact = PathPattern::parse("/api/v2/tickets").unwrap();
        let below = PathPattern::parse("/api/v2/tickets/*").unwrap();
        assert!(exact.matches("/api/v2/tickets"));
        assert!(!exact.matches("/api/v2/tickets/1"));
        assert!(below.matches("/api/v2/tickets/1"));
        assert!(below.matches("/api/v2/tickets/1/comments"));
        assert!(!below.matches("/api/v2/tickets"));
        assert!(!below.matches("/api/v2/ticketsX"));
        let escaped = normalize_path("/api/v2/tickets/../admin").unwrap();
        assert!(!below.matches(&escaped));
        let root = PathPattern::parse("/*").unwrap();
        assert!(root.matches("/anything"));
        for bad in ["api", "/a/*/b", "/a*", "/a/../b", "/a/%2e%2e"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
