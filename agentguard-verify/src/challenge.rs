//! The bearer side of HTTP: taking the token from a request (RFC 6750 §2.1)
//! and the `WWW-Authenticate` challenge a refusal carries (RFC 6750 §3,
//! with RFC 9728 §5.1's `resource_metadata`).

use std::fmt;

/// RFC 6750 §3.1 error codes a resource server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    InvalidToken,
    InsufficientScope,
}

impl BearerError {
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
        }
    }
}

/// A `WWW-Authenticate: Bearer ...` value. Without an `error` it is the
/// answer to a request that carried no token (RFC 6750 §3.1: "the resource
/// server SHOULD NOT include an error code").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub error: Option<BearerError>,
    pub description: Option<&'a str>,
    /// The scopes needed (with `insufficient_scope`).
    pub scope: Option<&'a str>,
    /// Where the RFC 9728 Protected Resource Metadata is, so a client can
    /// find the authorization server (the MCP authorization spec asks for
    /// it on every 401).
    pub resource_metadata: Option<&'a str>,
}

impl fmt::Display for Challenge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // quoted-string (RFC 9110 §5.6.4) without escapes: the characters
        // that would need one are replaced, so no value can close the
        // quote early and add parameters of its own.
        let quoted = |s: &str| -> String {
            s.chars()
                .map(|c| match c {
                    '"' | '\\' => '\'',
                    c if c.is_control() => ' ',
                    c => c,
                })
                .collect()
        };
        let mut params = Vec::new();
        if let Some(e) = self.error {
            params.push(format!("error=\"{}\"", e.code()));
        }
        if let Some(d) = self.description {
            params.push(format!("error_description=\"{}\"", quoted(d)));
        }
        if let Some(s) = self.scope {
            params.push(format!("scope=\"{}\"", quoted(s)));
        }
        if let Some(m) = self.resource_metadata {
            params.push(format!("resource_metadata=\"{}\"", quoted(m)));
        }
        if params.is_empty() {
            f.write_str("Bearer")
        } else {
            write!(f, "Bearer {}", params.join(", "))
        }
    }
}

/// The bearer token of a request: `Ok(None)` when it has no `Authorization`
/// header, or one of another scheme; an error when it has more than one, or
/// an empty token. RFC 6750 §2.1: the header form, `Bearer` case-insensitive.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, String> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        return if headers.contains_key(http::header::AUTHORIZATION) {
            Err("more than one Authorization header".into())
        } else {
            Ok(None)
        };
    };
    let value = value
        .to_str()
        .map_err(|_| "Authorization header is not visible ASCII".to_owned())?;
    let Some(scheme) = value.get(..7) else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer ") {
        return Ok(None);
    }
    let token = value[7..].trim();
    if token.is_empty() {
        return Err("empty bearer token".into());
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750_and_9728() {
        assert_eq!(
            Challenge {
                resource_metadata: Some("https://t.example/.well-known/oauth-protected-resource"),
                ..Default::default()
            }
            .to_string(),
            "Bearer resource_metadata=\"https://t.example/.well-known/oauth-protected-resource\""
        );
        assert_eq!(
            Challenge {
                error: Some(BearerError::InsufficientScope),
                description: Some("needs \"x\"\r\nSet-Cookie: a"),
                scope: Some("x y"),
                resource_metadata: None,
            }
            .to_string(),
            "Bearer error=\"insufficient_scope\", error_description=\"needs 'x'  Set-Cookie: a\", scope=\"x y\""
        );
        assert_eq!(Challenge::default().to_string(), "Bearer");
    }

    #[test]
    fn the_bearer_token_is_taken_from_exactly_one_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), Ok(None));
        h.insert("authorization", "bEaReR abc ".parse().unwrap());
        assert_eq!(bearer_token(&h), Ok(Some("abc")));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&h), Ok(None));
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert!(bearer_token(&h).is_err());
        h.insert("authorization", "Bearer a".parse().unwrap());
        h.append("authorization", "Bearer b".parse().unwrap());
        assert!(bearer_token(&h).is_err());
    }
}
