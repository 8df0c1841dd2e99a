//! `allow_overrides`: the request-override headers (and the `_method` query
//! parameter) a tool lets through to its upstream.
//!
//! Many servers and frameworks run another method or path than the request
//! line names when a request carries one of these (`X-HTTP-Method-Override:
//! DELETE` on a POST, `X-Original-URL: /admin` on an allowed path), or trust
//! `Forwarded`/`X-Forwarded-*` for the client's address and scheme. The
//! policy decides on the request line, so by default the proxy strips them
//! (and refuses `_method` on tools that bind a credential); a tool whose API
//! needs one names it here.

/// Headers that make a server run another method or path, or trust another
/// client, than the request shows. `x-forwarded-*` (any header with that
/// prefix) is the family of de-facto proxy headers.
pub const OVERRIDE_HEADERS: [&str; 6] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "forwarded",
];

/// The prefix of the `X-Forwarded-*` family.
pub const FORWARDED_PREFIX: &str = "x-forwarded-";

/// The query parameter Rails, Laravel and Rack's `MethodOverride` read as
/// the request's method.
pub const METHOD_PARAM: &str = "_method";

/// Whether `name` (a lowercase header name) is one the proxy strips unless
/// allowed.
pub fn is_override_header(name: &str) -> bool {
    OVERRIDE_HEADERS.contains(&name)
        || name
            .strip_prefix(FORWARDED_PREFIX)
            .is_some_and(|rest| !rest.is_empty())
}

/// The canonical (lowercase) form of an `allow_overrides` entry, or why it
/// is not one: a header [`is_override_header`] names, `x-forwarded-*` for
/// the whole family, or `_method`.
pub fn parse_entry(entry: &str) -> Result<String, String> {
    let lower = entry.to_ascii_lowercase();
    if lower == METHOD_PARAM || lower == "x-forwarded-*" || is_override_header(&lower) {
        Ok(lower)
    } else {
        Err(format!(
            "{entry:?} is not an override agentguard strips; name one of {}, \"x-forwarded-*\" (or one X-Forwarded- header), or \"_method\"",
            OVERRIDE_HEADERS.join(", ")
        ))
    }
}

/// Whether the tool's `allow_overrides` list lets header `name` (lowercase)
/// through.
pub fn allows_header(allowed: &[String], name: &str) -> bool {
    allowed
        .iter()
        .any(|a| a == name || (a == "x-forwarded-*" && name.starts_with(FORWARDED_PREFIX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_known_overrides_in_any_case() {
        assert_eq!(
            parse_entry("X-HTTP-Method-Override").unwrap(),
            "x-http-method-override"
        );
        assert_eq!(parse_entry("_method").unwrap(), "_method");
        assert_eq!(parse_entry("X-Forwarded-*").unwrap(), "x-forwarded-*");
        assert_eq!(
            parse_entry("x-forwarded-proto").unwrap(),
            "x-forwarded-proto"
        );
        for bad in [
            "authorization",
            "x-forwarded-",
            "x-http-method-overide",
            "",
            "*",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_family_entry_allows_every_forwarded_header() {
        let allowed = vec!["x-forwarded-*".to_owned(), "forwarded".to_owned()];
        assert!(allows_header(&allowed, "x-forwarded-for"));
        assert!(allows_header(&allowed, "forwarded"));
        assert!(!allows_header(&allowed, "x-original-url"));
        let one = vec!["x-forwarded-proto".to_owned()];
        assert!(allows_header(&one, "x-forwarded-proto"));
        assert!(!allows_header(&one, "x-forwarded-for"));
        assert!(is_override_header("x-forwarded-host"));
        assert!(!is_override_header("x-forwarded-"));
        assert!(!is_override_header("x-request-id"));
    }

    #[test]
    fn the_policy_key_is_optional_checked_and_lowercased() {
        let head = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n[[tool]]\nname = \"t\"\nhost = \"api.example.com\"\nmethods = [\"POST\"]\npaths = [\"/*\"]\n";
        let load = |extra: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("a.toml"), format!("{head}{extra}")).unwrap();
            crate::policy::load_path(dir.path())
        };
        let set = load("").unwrap();
        assert!(set.agents[0].tools[0].allow_overrides.is_empty());
        let set = load("allow_overrides = [\"X-HTTP-Method-Override\", \"_method\"]\n").unwrap();
        assert_eq!(
            set.agents[0].tools[0].allow_overrides,
            ["x-http-method-override", "_method"]
        );
        let err = load("allow_overrides = [\"authorization\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.toml:9:") && err.contains("tool.allow_overrides"),
            "{err}"
        );
    }
}
