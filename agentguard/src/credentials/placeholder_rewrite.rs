//! Putting a bound credential's secret where the client put its placeholder.
//!
//! SDKs move keys between `Authorization: Bearer`, vendor headers
//! (`x-api-key`, `api-key`, `x-goog-api-key`), Basic auth and query
//! parameters, and change that between versions. A policy that names one of
//! those places would refuse the others; so, for the credential the policy
//! binds to the request, its placeholder is replaced by the secret in place,
//! wherever in the head it stands: inside any header value (a `Bearer`
//! token, a vendor header, a cookie), inside the base64 of `Basic`
//! credentials (user or password), and in query parameters (raw or
//! percent-encoded). The path is never rewritten: a secret in a path ends up
//! in every access log on the way.
//!
//! When the agent sent no placeholder, the credential is injected as the
//! policy says ([`super::inject`]). Either way, what the agent itself sent
//! in the policy's place for the credential is not forwarded beside it.
//! Placeholders of other credentials are left alone here; the caller
//! refuses them (`find_placeholders`).

use base64::Engine as _;
use hyper::{
    header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, PROXY_AUTHORIZATION},
    http::{
        request::Parts,
        uri::{self, PathAndQuery, Uri},
    },
};
use thiserror::Error;

use super::{
    CredentialError, InjectError, PLACEHOLDER_PREFIX, Secret, inject, placeholder::find_prefix,
};
use crate::policy::Injection;

#[derive(Debug, Error)]
pub enum RewriteError {
    /// The secret holds a byte a header may not: only the header is named.
    #[error("the secret is not valid in header {header}, where the agent put its placeholder")]
    InvalidHeaderValue { header: String },
    #[error("failed to rebuild the request URI with the secret in its query")]
    InvalidUri,
}

/// Where the secret went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In place of the agent's placeholders, at these locations
    /// (`header <name>`, `query`).
    Rewritten(Vec<String>),
    /// Added as the policy's `inject` says: the agent sent no placeholder.
    Injected,
}

/// Puts `secret`, the secret of credential `id`, into the request: in place
/// of its placeholders if the agent sent any, else as `inject` says.
pub fn place_secret(
    id: &str,
    injection: &Injection,
    secret: &Secret,
    parts: &mut Parts,
) -> Result<Placement, CredentialError> {
    let needle = super::placeholder_for(id);
    let mut locations = Vec::new();
    let rewritten_headers = rewrite_headers(&mut parts.headers, &needle, secret)?;
    for name in &rewritten_headers {
        locations.push(format!("header {name}"));
    }
    let rewritten_params = match parts.uri.query() {
        Some(query) => match rewrite_query(query, &needle, secret) {
            Some((query, names)) => {
                parts.uri = with_query(&parts.uri, &query).ok_or(RewriteError::InvalidUri)?;
                locations.push("query".to_owned());
                names
            }
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    if locations.is_empty() {
        inject(injection, secret, parts)?;
        return Ok(Placement::Injected);
    }
    // The agent's own values in the policy's place for this credential do
    // not travel beside the secret: the upstream sees the policy's
    // credential there, or nothing.
    match injection {
        Injection::Header { name, .. } => {
            drop_unrewritten(&mut parts.headers, name, secret);
        }
        Injection::Basic { .. } => drop_unrewritten(&mut parts.headers, &AUTHORIZATION, secret),
        Injection::AwsSigV4 { .. } => return Err(InjectError::SignedNotInjected.into()),
        Injection::Query { param } => {
            if !rewritten_params.iter().any(|p| p == param)
                && let Some(query) = parts.uri.query()
            {
                let kept = without_param(query, param);
                parts.uri = with_query(&parts.uri, &kept).ok_or(RewriteError::InvalidUri)?;
            }
        }
    }
    Ok(Placement::Rewritten(locations))
}

/// Replaces the placeholder in every header value, returning the names of
/// the headers changed.
fn rewrite_headers(
    headers: &mut HeaderMap,
    needle: &str,
    secret: &Secret,
) -> Result<Vec<HeaderName>, RewriteError> {
    let names: Vec<HeaderName> = headers
        .iter()
        .filter(|(name, value)| {
            contains_placeholder(value.as_bytes(), needle)
                || (is_credentials_header(name)
                    && basic_credentials(value.as_bytes())
                        .is_some_and(|(_, decoded)| contains_placeholder(&decoded, needle)))
        })
        .map(|(name, _)| name.clone())
        .collect();
    let mut changed = Vec::new();
    for name in names {
        if changed.contains(&name) {
            continue;
        }
        let mut values = Vec::new();
        for value in headers.get_all(&name) {
            values.push(rewrite_value(&name, value, needle, secret)?);
        }
        headers.remove(&name);
        for value in values {
            headers.append(name.clone(), value);
        }
        changed.push(name);
    }
    Ok(changed)
}

fn rewrite_value(
    name: &HeaderName,
    value: &HeaderValue,
    needle: &str,
    secret: &Secret,
) -> Result<HeaderValue, RewriteError> {
    let invalid = || RewriteError::InvalidHeaderValue {
        header: name.to_string(),
    };
    let bytes = value.as_bytes();
    let new = if is_credentials_header(name)
        && let Some((scheme, decoded)) = basic_credentials(bytes)
        && contains_placeholder(&decoded, needle)
    {
        // RFC 7617 §2: base64 of user-id ":" password; the scheme as sent.
        let replaced = replace_placeholder(&decoded, needle, secret.expose().as_bytes());
        let mut out = scheme.to_vec();
        out.push(b' ');
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(replaced)
                .as_bytes(),
        );
        out
    } else if contains_placeholder(bytes, needle) {
        replace_placeholder(bytes, needle, secret.expose().as_bytes())
    } else {
        return Ok(value.clone());
    };
    let mut new = HeaderValue::from_bytes(&new).map_err(|_| invalid())?;
    // Never indexed by HPACK (RFC 7541 §7.1.3), hidden from Debug.
    new.set_sensitive(true);
    Ok(new)
}

fn is_credentials_header(name: &HeaderName) -> bool {
    name == AUTHORIZATION || name == PROXY_AUTHORIZATION
}

/// `Basic <base64>`: the scheme as sent and the decoded credentials.
fn basic_credentials(value: &[u8]) -> Option<(&[u8], Vec<u8>)> {
    let (scheme, rest) = value.split_at_checked(6)?;
    // RFC 7617 §2: the scheme name is case-insensitive.
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    Some((&scheme[..5], decoded))
}

/// Whether `bytes` holds `needle` as a whole placeholder: the id ends where
/// `needle` ends (`...:openai` is not `...:openai-2`).
fn contains_placeholder(bytes: &[u8], needle: &str) -> bool {
    find_all(bytes, needle.as_bytes()).next().is_some()
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Start offsets of every whole placeholder `needle` (a
/// [`super::placeholder_for`]) in `bytes`: where the prefix every
/// placeholder starts with is found, whether `needle` is there.
fn find_all<'a>(bytes: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    debug_assert!(needle.starts_with(PLACEHOLDER_PREFIX.as_bytes()));
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(found) = find_prefix(&bytes[from..]) {
            let at = from + found;
            if !bytes[at..].starts_with(needle) {
                from = at + 1;
                continue;
            }
            from = at + needle.len();
            if bytes.get(from).is_none_or(|&b| !is_id_byte(b)) {
                return Some(at);
            }
        }
        None
    })
}

fn replace_placeholder(bytes: &[u8], needle: &str, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + with.len());
    let mut last = 0;
    for at in find_all(bytes, needle.as_bytes()).collect::<Vec<_>>() {
        out.extend_from_slice(&bytes[last..at]);
        out.extend_from_slice(with);
        last = at + needle.len();
    }
    out.extend_from_slice(&bytes[last..]);
    out
}

/// The query with the placeholder replaced in every parameter value, and
/// the (decoded) names of the parameters changed; `None` if there was none.
///
/// A value is looked at percent-decoded (`agentguard-placeholder%3Aid` is
/// the placeholder to every server), and only the bytes that spelt the
/// placeholder are replaced, by the percent-encoded secret: the rest of the
/// value stays exactly as the agent wrote it.
fn rewrite_query(query: &str, needle: &str, secret: &Secret) -> Option<(String, Vec<String>)> {
    if !query.contains(PLACEHOLDER_PREFIX) && !query.contains('%') {
        return None;
    }
    // Only RFC 3986 §2.3 unreserved characters stay as they are, so that a
    // secret holding `&`, `=`, `+` or `#` cannot split or end the query.
    let encoded_secret = crate::percent::encode(secret.expose());
    let mut names = Vec::new();
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, value) = match pair.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (pair, None),
            };
            let Some(value) = value else {
                return pair.to_owned();
            };
            match rewrite_encoded(value, needle, &encoded_secret) {
                Some(value) => {
                    names.push(decode_name(name));
                    format!("{name}={value}")
                }
                None => pair.to_owned(),
            }
        })
        .collect();
    (!names.is_empty()).then(|| (pairs.join("&"), names))
}

/// `raw` with every placeholder, as it reads once percent-decoded, replaced
/// by `with`; `None` if it holds none.
fn rewrite_encoded(raw: &str, needle: &str, with: &str) -> Option<String> {
    // Each decoded byte and the raw span it came from.
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut spans = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            decoded.push((h * 16 + l) as u8);
            spans.push(i..i + 3);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            spans.push(i..i + 1);
            i += 1;
        }
    }
    let hits: Vec<usize> = find_all(&decoded, needle.as_bytes()).collect();
    if hits.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(raw.len() + with.len());
    let mut last = 0;
    for at in hits {
        let start = spans[at].start;
        let end = spans[at + needle.len() - 1].end;
        out.push_str(&raw[last..start]);
        out.push_str(with);
        last = end;
    }
    out.push_str(&raw[last..]);
    Some(out)
}

fn decode_name(name: &str) -> String {
    String::from_utf8_lossy(&crate::percent::decode(name.as_bytes())).into_owned()
}

/// The query without any `param` (however its name is spelt).
fn without_param(query: &str, param: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty()
                && decode_name(name) != param
                && decode_name(&name.replace('+', " ")) != param
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Drops the values of header `name` that do not carry the secret: the
/// agent's own.
fn drop_unrewritten(headers: &mut HeaderMap, name: &HeaderName, secret: &Secret) {
    let kept: Vec<HeaderValue> = headers
        .get_all(name)
        .iter()
        .filter(|v| {
            let bytes = v.as_bytes();
            let secret = secret.expose().as_bytes();
            bytes.windows(secret.len()).any(|w| w == secret)
                || basic_credentials(bytes)
                    .is_some_and(|(_, d)| d.windows(secret.len()).any(|w| w == secret))
        })
        .cloned()
        .collect();
    headers.remove(name);
    for value in kept {
        headers.append(name.clone(), value);
    }
}

fn with_query(uri: &Uri, query: &str) -> Option<Uri> {
    let path_and_query = if query.is_empty() {
        PathAndQuery::try_from(uri.path()).ok()?
    } else {
        PathAndQuery::try_from(format!("{}?{query}", uri.path())).ok()?
    };
    let mut parts = uri::Parts::from(uri.clone());
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use hyper::Request;

    use super::*;
    use crate::credentials::{find_placeholders, placeholder_for};

    const SECRET: &str = "sk-real+/=&secret";

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn bearer() -> Injection {
        Injection::Header {
            name: AUTHORIZATION,
            format: "Bearer {secret}".into(),
        }
    }

    fn place(inject: &Injection, p: &mut Parts) -> Placement {
        place_secret("openai", inject, &Secret::new(SECRET.into()), p).unwrap()
    }

    #[test]
    fn placeholder_in_another_header_is_replaced_there_and_nothing_injected() {
        let ph = placeholder_for("openai");
        let mut p = parts(
            "https://api.example.com/v1",
            &[("x-api-key", &ph), ("authorization", "Bearer agent-own")],
        );
        assert_eq!(
            place(&bearer(), &mut p),
            Placement::Rewritten(vec!["header x-api-key".into()])
        );
        assert_eq!(p.headers["x-api-key"], SECRET);
        assert!(p.headers["x-api-key"].is_sensitive());
        // The agent's own value in the policy's place does not travel.
        assert!(p.headers.get(AUTHORIZATION).is_none());
        assert!(find_placeholders(&p).is_empty());
    }

    #[test]
    fn inside_bearer_keeps_the_scheme_and_drops_the_agents_other_values() {
        let mut p = parts(
            "/",
            &[
                (
                    "authorization",
                    &format!("token {}", placeholder_for("openai")),
                ),
                ("authorization", "Bearer stolen"),
            ],
        );
        place(&bearer(), &mut p);
        let values: Vec<_> = p.headers.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(values, [format!("token {SECRET}").as_str()]);
    }

    #[test]
    fn inside_basic_user_or_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for (sent, want) in [
            (
                format!("x-access-token:{}", placeholder_for("openai")),
                format!("x-access-token:{SECRET}"),
            ),
            (
                format!("{}:", placeholder_for("openai")),
                format!("{SECRET}:"),
            ),
        ] {
            let mut p = parts("/", &[("authorization", &format!("basic {}", b64(&sent)))]);
            assert_eq!(
                place(&bearer(), &mut p),
                Placement::Rewritten(vec!["header authorization".into()])
            );
            assert_eq!(
                p.headers[AUTHORIZATION].to_str().unwrap(),
                format!("basic {}", b64(&want))
            );
        }
    }

    #[test]
    fn in_the_query_raw_or_encoded_and_only_there() {
        let mut p = parts(
            "https://maps.example.com/geo?q=a+b&key=agentguard-placeholder%3Aopenai&x=%41",
            &[],
        );
        assert_eq!(
            place(&bearer(), &mut p),
            Placement::Rewritten(vec!["query".into()])
        );
        assert_eq!(
            p.uri.query(),
            Some("q=a+b&key=sk-real%2B%2F%3D%26secret&x=%41")
        );
        assert_eq!(p.uri.host(), Some("maps.example.com"));
        // Inject would have added Authorization: the agent sent the key.
        assert!(p.headers.get(AUTHORIZATION).is_none());

        // Only the bytes that spelt it change; the id ends at a byte no id
        // may hold (here an encoded comma).
        let mut p = parts("/v1?k=pre.agentguard-placeholder%3aopenai%2Cpost", &[]);
        place(&bearer(), &mut p);
        assert_eq!(
            p.uri.query(),
            Some("k=pre.sk-real%2B%2F%3D%26secret%2Cpost")
        );
    }

    #[test]
    fn the_agents_own_query_param_goes_when_the_key_went_elsewhere() {
        let injection = Injection::Query {
            param: "api_key".into(),
        };
        let mut p = parts(
            "/v1?api_key=agent-own&x=1",
            &[("x-goog-api-key", &placeholder_for("openai"))],
        );
        place(&injection, &mut p);
        assert_eq!(p.uri.query(), Some("x=1"));
        assert_eq!(p.headers["x-goog-api-key"], SECRET);
    }

    #[test]
    fn without_a_placeholder_the_policy_injects() {
        let mut p = parts("/", &[("authorization", "Bearer agent-own")]);
        assert_eq!(place(&bearer(), &mut p), Placement::Injected);
        assert_eq!(
            p.headers[AUTHORIZATION],
            format!("Bearer {SECRET}").as_str()
        );
    }

    #[test]
    fn other_ids_and_longer_ids_are_left_for_refusal() {
        let mut p = parts(
            "/v1/agentguard-placeholder:openai?k=agentguard-placeholder:openai-2",
            &[("x-other", &placeholder_for("github"))],
        );
        assert_eq!(place(&bearer(), &mut p), Placement::Injected);
        let left: Vec<String> = find_placeholders(&p)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        // The path is never rewritten; the others are not this credential.
        assert_eq!(left, ["github", "openai", "openai-2"]);
    }

    #[test]
    fn a_secret_unfit_for_a_header_is_refused_without_the_value() {
        let mut p = parts("/", &[("x-api-key", &placeholder_for("openai"))]);
        let err = place_secret(
            "openai",
            &bearer(),
            &Secret::new("bad\nvalue".into()),
            &mut p,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("x-api-key") && !err.contains("bad"), "{err}");
    }

    /// Every way of putting placeholders, their prefix, longer ids and
    /// other text together: the placeholders found are those a window
    /// compared at each position finds.
    #[test]
    fn placeholders_are_found_where_a_window_search_finds_them() {
        let needle = placeholder_for("openai");
        let window = |bytes: &[u8]| -> Vec<usize> {
            let n = needle.as_bytes();
            let mut out = Vec::new();
            let mut from = 0;
            while let Some(at) = bytes[from..].windows(n.len()).position(|w| w == n) {
                let at = from + at;
                from = at + n.len();
                if bytes.get(from).is_none_or(|&b| !is_id_byte(b)) {
                    out.push(at);
                }
            }
            out
        };
        let pieces = [
            needle.clone(),
            placeholder_for("openai-2"),
            placeholder_for("open"),
            PLACEHOLDER_PREFIX.to_owned(),
            "agentguard-place".to_owned(),
            "x".to_owned(),
            " ".to_owned(),
        ];
        // Every sequence of up to four pieces (2,801 texts).
        let mut layer = vec![String::new()];
        let mut texts = layer.clone();
        for _ in 0..4 {
            layer = layer
                .iter()
                .flat_map(|t| pieces.iter().map(move |p| format!("{t}{p}")))
                .collect();
            texts.extend(layer.iter().cloned());
        }
        assert_eq!(texts.len(), 2801);
        for text in &texts {
            let found: Vec<usize> = find_all(text.as_bytes(), needle.as_bytes()).collect();
            assert_eq!(found, window(text.as_bytes()), "{text:?}");
        }
    }
}
