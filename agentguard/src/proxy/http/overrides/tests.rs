//! Unit tests of override stripping.

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
