//! Request overrides from the agent: headers that make a server run another
//! method or path than the request line shows, or trust another client
//! (`policy::overrides` lists them), are stripped before the request goes
//! upstream, and `_method` in the query is refused on tools that bind a
//! credential, unless the tool's `allow_overrides` names them. The policy
//! decides on the request line; the upstream must run that, not what a
//! header asks for.

use hyper::HeaderMap;

use crate::policy::overrides::{METHOD_PARAM, allows_header, is_override_header};

/// Removes every override header the tool does not allow; returns the names
/// removed (for the log).
pub fn strip(headers: &mut HeaderMap, allowed: &[String]) -> Vec<String> {
    let names: Vec<_> = headers
        .keys()
        .filter(|n| is_override_header(n.as_str()) && !allows_header(allowed, n.as_str()))
        .cloned()
        .collect();
    for name in &names {
        headers.remove(name);
    }
    names.into_iter().map(|n| n.as_str().to_owned()).collect()
}

/// Whether the query sets `_method`, however the name is spelt: `%5Fmethod`
/// is `_method` to every server, and a `+` is a space to form decoders.
pub fn has_method_param(query: Option<&str>) -> bool {
    query.unwrap_or_default().split(['&', ';']).any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        let decoded = |s: &str| -> Vec<u8> { percent_encoding::percent_decode_str(s).collect() };
        decoded(name).eq_ignore_ascii_case(METHOD_PARAM.as_bytes())
            || decoded(&name.replace('+', " ")).eq_ignore_ascii_case(METHOD_PARAM.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn override_headers_go_unless_allowed() {
        let mut h = HeaderMap::new();
        for name in [
            "x-http-method-override",
            "X-HTTP-Method",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-request-id",
            "authorization",
        ] {
            h.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        h.append("x-forwarded-for", HeaderValue::from_static("w"));
        let mut all = h.clone();
        let mut stripped = strip(&mut all, &[]);
        stripped.sort();
        assert_eq!(stripped.len(), 8, "{stripped:?}");
        let mut left: Vec<_> = all.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "x-request-id"]);

        let allowed = vec![
            "x-http-method-override".to_owned(),
            "x-forwarded-*".to_owned(),
        ];
        strip(&mut h, &allowed);
        assert!(h.contains_key("x-http-method-override"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 2);
        assert!(h.contains_key("x-forwarded-host"));
        assert!(!h.contains_key("x-http-method"));
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn method_parameter_in_any_spelling() {
        for q in [
            "_method=DELETE",
            "a=1&_method=PUT",
            "%5Fmethod=DELETE",
            "%5fMETHOD=x",
            "a=1;_method=x",
            "_method",
        ] {
            assert!(has_method_param(Some(q)), "{q}");
        }
        for q in ["method=DELETE", "a=_method", "x_method=1", ""] {
            assert!(!has_method_param(Some(q)), "{q}");
        }
        assert!(!has_method_param(None));
    }
}
