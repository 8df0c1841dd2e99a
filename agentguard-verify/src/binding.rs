//! The two request bindings: `htu` (RFC 9449 §4.2, normalised per RFC 3986
//! §6) and the request hash `rh`; and the origin a tool answers under.

use sha2::{Digest as _, Sha256};

use crate::b64url;

/// The parts of a request a token is bound to, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestBinding {
    pub method: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Host and port as in the URI or `Host`; normalised by [`Self::authority`].
    pub authority: String,
    pub path: String,
    /// Without the `?`; `None` when the URI has none.
    pub query: Option<String>,
    /// base64url(SHA-256(body)) ([`crate::body_hash`]).
    pub body_hash: String,
}

impl RequestBinding {
    /// The binding of a request for `uri` (origin-form URIs take
    /// `default_scheme` and an empty authority: see [`Self::from_parts`]).
    pub fn new(method: &str, uri: &http::Uri, default_scheme: &str, body: &[u8]) -> Self {
        Self {
            method: method.to_owned(),
            scheme: uri
                .scheme_str()
                .unwrap_or(default_scheme)
                .to_ascii_lowercase(),
            authority: uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            body_hash: crate::body_hash(body),
        }
    }

    /// The binding of a request a server received: the authority from the
    /// URI (HTTP/2 `:authority`, absolute-form) or else the `Host` header,
    /// the scheme `scheme` (the one clients used to reach the server). With
    /// an [`Origin`] configured, the verifier replaces both.
    pub fn from_parts(parts: &http::request::Parts, scheme: &str, body: &[u8]) -> Self {
        let mut b = Self::new(parts.method.as_str(), &parts.uri, scheme, body);
        if b.authority.is_empty() {
            b.authority = parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_owned();
        }
        b.scheme = scheme.to_ascii_lowercase();
        b
    }

    /// Parses an absolute URL (`--url` of `agentguard token verify`).
    pub fn from_url(method: &str, url: &str, body: &[u8]) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(format!("url {url:?} must be absolute (scheme and host)"));
        }
        Ok(Self::new(method, &uri, "https", body))
    }

    /// This binding as if the request had come for `origin`: the scheme and
    /// authority the tool answers under replace what the client said.
    pub fn at_origin(&self, origin: &Origin) -> Self {
        Self {
            scheme: origin.scheme.clone(),
            authority: origin.authority.clone(),
            ..self.clone()
        }
    }

    /// Lowercased host; the port only when it is not the scheme's default.
    pub fn authority(&self) -> String {
        normalize_authority(&self.scheme, &self.authority)
    }

    /// The `htu` of this request.
    pub fn htu(&self) -> Result<String, String> {
        normalize_htu(&format!(
            "{}://{}{}",
            self.scheme,
            self.authority,
            self.path_or_root()
        ))
    }

    fn path_or_root(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }

    /// The `rh` claim (see the crate docs).
    pub fn request_hash(&self) -> String {
        request_hash(
            &self.method,
            &self.authority(),
            self.path_or_root(),
            self.query.as_deref().unwrap_or(""),
            &self.body_hash,
        )
    }
}

/// The origin (RFC 6454: scheme, host, port) a tool answers under, which a
/// token's `htu` and `rh` must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    /// Normalised: lowercased host, no default port.
    authority: String,
}

impl Origin {
    /// `https://tool.example.com` or `http://127.0.0.1:8080`: scheme and
    /// authority only (a `/` alone may follow).
    pub fn parse(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("origin {s:?}: {e}"))?;
        let scheme = uri
            .scheme_str()
            .map(str::to_ascii_lowercase)
            .filter(|s| default_port(s).is_some())
            .ok_or_else(|| format!("origin {s:?}: scheme must be http or https"))?;
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| format!("origin {s:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("origin {s:?} must not carry user information"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "origin {s:?} must be scheme://host[:port] without a path"
            ));
        }
        Ok(Self {
            authority: normalize_authority(&scheme, authority.as_str()),
            scheme,
        })
    }

    /// The origin of an absolute URI (e.g. a canonical resource URI).
    pub fn of_uri(uri: &str) -> Result<Self, String> {
        let parsed: http::Uri = uri.parse().map_err(|e| format!("{uri:?}: {e}"))?;
        let (Some(scheme), Some(authority)) = (parsed.scheme_str(), parsed.authority()) else {
            return Err(format!("{uri:?} is not an absolute URI"));
        };
        Self::parse(&format!("{scheme}://{authority}"))
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Host, and port when not the scheme's default.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// `rh` = base64url(SHA-256(method \n authority \n path \n query \n body_hash)).
pub fn request_hash(
    method: &str,
    authority: &str,
    path: &str,
    query: &str,
    body_hash: &str,
) -> String {
    let mut h = Sha256::new();
    for (i, part) in [method, authority, path, query, body_hash]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            h.update(b"\n");
        }
        h.update(part.as_bytes());
    }
    b64url(&h.finalize())
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn normalize_authority(scheme: &str, authority: &str) -> String {
    // Userinfo has no place in a target URI (RFC 9110 §4.2.4).
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match hostport.rfind(':') {
        // An IPv6 literal's colons are inside the brackets.
        Some(i) if !hostport[i..].contains(']') => (&hostport[..i], Some(&hostport[i + 1..])),
        _ => (hostport, None),
    };
    let host = host.to_ascii_lowercase();
    match port.filter(|p| !p.is_empty()) {
        Some(p) if p.parse::<u16>().ok() != default_port(scheme) => format!("{host}:{p}"),
        _ => host,
    }
}

/// Normalises an `htu` (or a request's target URI) for comparison, as RFC
/// 9449 §4.3 asks: RFC 3986 §6.2.2 syntax-based (case of scheme and host,
/// percent-encoding case, unreserved characters decoded, dot segments
/// removed) and §6.2.3 scheme-based (default port dropped, empty path is
/// `/`). Query and fragment are dropped (§4.2: "without query and fragment
/// parts").
pub fn normalize_htu(url: &str) -> Result<String, String> {
    let url = url.split('#').next().unwrap_or(url);
    let url = url.split('?').next().unwrap_or(url);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not an absolute URI"))?;
    let scheme = scheme.to_ascii_lowercase();
    if default_port(&scheme).is_none() {
        return Err(format!("{url:?}: scheme must be http or https"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let path = remove_dot_segments(&normalize_percent(path)?);
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Ok(format!(
        "{scheme}://{}{path}",
        normalize_authority(&scheme, authority)
    ))
}

/// Uppercases percent-encodings and decodes those of unreserved characters
/// (RFC 3986 §6.2.2.1, §6.2.2.2).
fn normalize_percent(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = path
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("bad percent-encoding in {path:?}"))?;
            let byte = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                out.push(byte as char);
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4, for the absolute paths of http(s) URIs.
fn remove_dot_segments(path: &str) -> String {
    let Some(rest) = path.strip_prefix('/') else {
        return path.to_owned();
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                // "/a/b/.." is the directory "/a/".
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_normalisation_follows_rfc_3986_section_6() {
        for (raw, want) in [
            // RFC 9449 §4.2's examples.
            (
                "https://server.example.com/token",
                "https://server.example.com/token",
            ),
            (
                "https://resource.example.org/protectedresource",
                "https://resource.example.org/protectedresource",
            ),
            // Query and fragment are not part of htu (RFC 9449 §4.2).
            (
                "https://server.example.com/token?x=1#frag",
                "https://server.example.com/token",
            ),
            // Case of scheme and host (RFC 3986 §6.2.2.1).
            (
                "HTTPS://Server.Example.COM/Token",
                "https://server.example.com/Token",
            ),
            // Default port and empty path (RFC 3986 §6.2.3).
            ("http://example.com:80", "http://example.com/"),
            ("https://example.com:443/a", "https://example.com/a"),
            ("https://example.com:8443/a", "https://example.com:8443/a"),
            // Percent-encoding (RFC 3986 §6.2.2.1/2): hex uppercased,
            // unreserved decoded.
            (
                "https://a.example/%7efoo/%2f%3a",
                "https://a.example/~foo/%2F%3A",
            ),
            // Dot segments (RFC 3986 §6.2.2.3, §5.4's examples).
            (
                "https://a.example/./b/../b/%63/%7bfoo%7d",
                "https://a.example/b/c/%7Bfoo%7D",
            ),
            ("https://a.example/b/c/./../../g", "https://a.example/g"),
            ("https://a.example/b/c/..", "https://a.example/b/"),
            ("https://[::1]:443/x", "https://[::1]/x"),
            ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ] {
            assert_eq!(normalize_htu(raw).unwrap(), want, "{raw}");
        }
        for bad in ["/relative", "ftp://x/y", "https:///x", "https://a/%zz"] {
            assert!(normalize_htu(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn dot_segments_are_removed_per_rfc_3986_5_2_4() {
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("/../a"), "/a");
        assert_eq!(remove_dot_segments("/a/"), "/a/");
        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments(""), "");
    }

    #[test]
    fn request_hash_covers_each_part() {
        let body = b"{\"x\":1}";
        let b =
            RequestBinding::from_url("POST", "https://Tool.Example:443/v1/x?a=1", body).unwrap();
        assert_eq!(b.authority(), "tool.example");
        assert_eq!(b.htu().unwrap(), "https://tool.example/v1/x");
        // The exact construction the crate docs give.
        let want = b64url(&Sha256::digest(
            format!(
                "POST\ntool.example\n/v1/x\na=1\n{}",
                b64url(&Sha256::digest(body))
            )
            .as_bytes(),
        ));
        assert_eq!(b.request_hash(), want);
        let other = |m: &str, u: &str, body: &[u8]| {
            RequestBinding::from_url(m, u, body).unwrap().request_hash()
        };
        let u = "https://tool.example/v1/x?a=1";
        assert_eq!(other("POST", u, body), want);
        assert_ne!(other("PUT", u, body), want);
        assert_ne!(other("POST", "https://tool.example/v1/y?a=1", body), want);
        assert_ne!(other("POST", "https://tool.example/v1/x?a=2", body), want);
        assert_ne!(other("POST", "https://tool.example/v1/x", body), want);
        assert_ne!(other("POST", "https://other.example/v1/x?a=1", body), want);
        assert_ne!(
            other("POST", "https://tool.example:8443/v1/x?a=1", body),
            want
        );
        assert_ne!(other("POST", u, b"{\"x\":2}"), want);
    }

    #[test]
    fn origins_are_scheme_and_authority_only() {
        let o = Origin::parse("HTTPS://Tool.Example.COM:443/").unwrap();
        assert_eq!(o.to_string(), "https://tool.example.com");
        assert_eq!(
            Origin::parse("http://127.0.0.1:8080").unwrap().authority(),
            "127.0.0.1:8080"
        );
        for bad in [
            "tool.example.com",
            "ftp://tool.example.com",
            "https://tool.example.com/mcp",
            "https://tool.example.com/?x=1",
            "https://user@tool.example.com",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            Origin::of_uri("https://Tool.Example/mcp")
                .unwrap()
                .to_string(),
            "https://tool.example"
        );
        // A binding at an origin takes its scheme and authority, and keeps
        // the rest.
        let b = RequestBinding::from_url("GET", "http://10.0.0.7:8080/x?y=1", b"").unwrap();
        let at = b.at_origin(&o);
        assert_eq!(at.htu().unwrap(), "https://tool.example.com/x");
        assert_eq!(at.query.as_deref(), Some("y=1"));
        assert_ne!(at.request_hash(), b.request_hash());
    }
}
