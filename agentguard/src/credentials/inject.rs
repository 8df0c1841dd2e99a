//! Putting a secret into a request, in place of whatever the agent sent there.

use hyper::{
    header::{AUTHORIZATION, HeaderValue},
    http::{
        request::Parts,
        uri::{self, PathAndQuery, Uri},
    },
};
use thiserror::Error;

use super::{CredentialError, Secret, encoding::base64_encode};
use crate::{percent, policy::Injection};

#[derive(Debug, Error)]
pub enum InjectError {
    /// The secret holds a byte a header may not (a control character): the
    /// value is never shown, only where it was going.
    #[error("the secret, formatted, is not a valid value for header {header}")]
    InvalidHeaderValue { header: String },
    #[error("failed to rebuild the request URI with the query parameter {param}")]
    InvalidUri { param: String },
    #[error("an aws credential signs requests; it is not injected")]
    SignedNotInjected,
}

/// Puts `secret` into the request as `inject` says, after removing whatever
/// the agent sent there: the agent must not be able to pick which value the
/// upstream sees (a second header or parameter is read first by some servers,
/// last by others).
///
/// After a query injection the URI carries the secret: log the request target
/// from before the call, never `parts.uri` after it.
pub fn inject(
    inject: &Injection,
    secret: &Secret,
    parts: &mut Parts,
) -> Result<(), CredentialError> {
    match inject {
        Injection::Header { name, format } => {
            let text = format.replace("{secret}", secret.expose());
            let value =
                sensitive(text.as_bytes()).ok_or_else(|| InjectError::InvalidHeaderValue {
                    header: name.to_string(),
                })?;
            // `insert` drops every value the agent sent under this name.
            parts.headers.insert(name.clone(), value);
        }
        Injection::Basic { username } => {
            // RFC 7617 §2: base64 of user-id ":" password.
            let credentials = format!("{username}:{}", secret.expose());
            let text = format!("Basic {}", base64_encode(credentials.as_bytes()));
            let value =
                sensitive(text.as_bytes()).ok_or_else(|| InjectError::InvalidHeaderValue {
                    header: AUTHORIZATION.to_string(),
                })?;
            parts.headers.insert(AUTHORIZATION, value);
        }
        Injection::Query { param } => {
            parts.uri = with_query_param(&parts.uri, param, secret).ok_or_else(|| {
                InjectError::InvalidUri {
                    param: param.clone(),
                }
            })?;
        }
        // AWS requests are signed again (`sigv4`), never given a secret.
        Injection::AwsSigV4 { .. } => return Err(InjectError::SignedNotInjected.into()),
    }
    Ok(())
}

/// Marked sensitive, so that hyper's HPACK encoder never indexes it (RFC 7541
/// §7.1.3) and `Debug` of the headers hides it.
fn sensitive(bytes: &[u8]) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_bytes(bytes).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// `uri` with every `param` removed from its query and `param=<secret>`
/// appended; the path and the other parameters, in order, untouched.
fn with_query_param(uri: &Uri, param: &str, secret: &Secret) -> Option<Uri> {
    let path = uri.path();
    let mut query: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && !names_param(pair, param))
        .collect();
    let ours = format!(
        "{}={}",
        percent::encode(param),
        percent::encode(secret.expose())
    );
    query.push(&ours);
    let path_and_query = PathAndQuery::try_from(format!("{path}?{}", query.join("&"))).ok()?;
    let mut parts = uri::Parts::from(uri.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

/// Whether a `name=value` pair sets `param`, however the agent spelled the
/// name: `api%5Fkey` is `api_key` to every server. `+` is a space to form
/// decoders and a plus to RFC 3986 ones; the pair goes if either reading
/// makes it `param`.
fn names_param(pair: &str, param: &str) -> bool {
    let name = pair.split_once('=').map_or(pair, |(name, _)| name);
    percent::decode(name.as_bytes()) == param.as_bytes()
        || percent::decode(name.replace('+', " ").as_bytes()) == param.as_bytes()
}

#[cfg(test)]
mod tests {
    use hyper::{Request, header::HeaderName};

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_replaces_every_agent_value() {
        let mut p = parts(
            "https://api.example.com/v1",
            &[
                ("authorization", "Bearer agentguard-placeholder:openai"),
                ("authorization", "Bearer stolen"),
                ("x-other", "kept"),
            ],
        );
        let injection = Injection::Header {
            name: HeaderName::from_static("authorization"),
            format: "Bearer {secret}".into(),
        };
        inject(&injection, &Secret::new("sk-real".into()), &mut p).unwrap();
        let values: Vec<_> = p.headers.get_all("authorization").iter().collect();
        assert_eq!(values, ["Bearer sk-real"]);
        assert!(values[0].is_sensitive());
        assert_eq!(p.headers["x-other"], "kept");
    }

    #[test]
    fn header_with_control_character_is_refused_without_the_value() {
        let mut p = parts("/", &[]);
        let injection = Injection::Header {
            name: HeaderName::from_static("x-api-key"),
            format: "{secret}".into(),
        };
        let err = inject(&injection, &Secret::new("sk\nbad".into()), &mut p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x-api-key"), "{msg}");
        assert!(!msg.contains("sk"), "{msg}");
    }

    #[test]
    fn basic_matches_rfc_7617_example() {
        let mut p = parts("/", &[("authorization", "Basic Zm9vOmJhcg==")]);
        let injection = Injection::Basic {
            username: "Aladdin".into(),
        };
        inject(&injection, &Secret::new("open sesame".into()), &mut p).unwrap();
        let values: Vec<_> = p.headers.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(values, ["Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="]);
        assert!(values[0].is_sensitive());
    }

    #[test]
    fn query_replaces_agent_param_in_any_spelling() {
        let mut p = parts(
            "https://maps.example.com/geo/a%20b?q=1&api_key=mine&x=y%26z&api%5Fkey=again&api+key=3&z",
            &[],
        );
        let injection = Injection::Query {
            param: "api_key".into(),
        };
        inject(&injection, &Secret::new("s3cr&t =+/".into()), &mut p).unwrap();
        assert_eq!(p.uri.scheme_str(), Some("https"));
        assert_eq!(p.uri.host(), Some("maps.example.com"));
        assert_eq!(p.uri.path(), "/geo/a%20b");
        assert_eq!(
            p.uri.query(),
            Some("q=1&x=y%26z&api+key=3&z&api_key=s3cr%26t%20%3D%2B%2F")
        );
    }

    #[test]
    fn query_is_added_to_a_uri_without_one() {
        let mut p = parts("/v1/items", &[]);
        let injection = Injection::Query {
            param: "key".into(),
        };
        inject(&injection, &Secret::new("abc".into()), &mut p).unwrap();
        assert_eq!(p.uri.to_string(), "/v1/items?key=abc");
    }
}
