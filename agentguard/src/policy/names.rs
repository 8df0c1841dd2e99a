//! Name patterns for MCP tools, prompts, resource URIs and JSON-RPC
//! methods: an exact name, or a pattern where `*` stands for any run of
//! characters (`search_*`, `repo://acme/*`, `*`). Case-sensitive, as MCP
//! names are.

/// Longest pattern or name accepted in a policy.
const MAX_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    raw: String,
    /// The literal pieces between `*`s; one piece means no `*`.
    pieces: Vec<String>,
}

impl NamePattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("a name pattern must not be empty".into());
        }
        if raw.len() > MAX_LEN {
            return Err(format!("name pattern longer than {MAX_LEN} bytes"));
        }
        if raw.chars().any(char::is_control) {
            return Err(format!("name pattern {raw:?} has control characters"));
        }
        Ok(Self {
            raw: raw.to_owned(),
            pieces: raw.split('*').map(str::to_owned).collect(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether `name` matches: linear in its length (the first piece is a
    /// prefix, the last a suffix, the ones between are found left to right,
    /// which is enough for `*` patterns: a leftmost match never loses one).
    pub fn matches(&self, name: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("split yields one piece");
        let Some((last, middle)) = rest.split_last() else {
            return name == first;
        };
        if name.len() < first.len() + last.len()
            || !name.starts_with(first.as_str())
            || !name.ends_with(last.as_str())
        {
            return false;
        }
        let mut hay = &name[first.len()..name.len() - last.len()];
        for piece in middle {
            match hay.find(piece.as_str()) {
                Some(at) => hay = &hay[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Whether any pattern of `list` matches `name`.
pub fn any_matches(list: &[NamePattern], name: &str) -> bool {
    list.iter().any(|p| p.matches(name))
}

/// A resource URI whose path climbs with `.` or `..` segments (plain or
/// percent-encoded) could leave the prefix a pattern allows once a server
/// resolves it (`file:///projects/../etc/passwd` against
/// `file:///projects/*`): such URIs are refused whatever the patterns say.
pub fn uri_has_dot_segments(uri: &str) -> bool {
    let lower = uri.to_ascii_lowercase().replace("%2e", ".");
    let path = lower.split(['?', '#']).next().unwrap_or_default();
    path.split(['/', '\\']).any(|seg| seg == "." || seg == "..")
        || lower.contains("%2f")
        || lower.contains("%5c")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NamePattern {
        NamePattern::parse(s).unwrap()
    }

    #[test]
    fn exact_and_glob_matching() {
        assert!(p("list_issues").matches("list_issues"));
        assert!(!p("list_issues").matches("list_issues2"));
        assert!(!p("list_issues").matches("List_issues"));
        assert!(p("*").matches(""));
        assert!(p("*").matches("anything/at:all"));
        assert!(p("list_*").matches("list_"));
        assert!(p("list_*").matches("list_pull_requests"));
        assert!(!p("list_*").matches("get_list_x"));
        assert!(p("*_issue").matches("create_issue"));
        assert!(p("repo://acme/*").matches("repo://acme/widgets/README.md"));
        assert!(!p("repo://acme/*").matches("repo://acme-evil/x"));
        assert!(p("a*b*c").matches("abc"));
        assert!(p("a*b*c").matches("a-b-b-c"));
        assert!(!p("a*b*c").matches("acb"));
        assert!(!p("ab*ba").matches("aba"));
        assert!(p("*delete*").matches("delete_repo"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "a\nb", &"x".repeat(MAX_LEN + 1)] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dot_segments_in_uris() {
        for bad in [
            "file:///projects/../etc/passwd",
            "file:///projects/%2E%2E/etc",
            "repo://acme/./x",
            "repo://acme/..",
            "file:///projects/a%2f..%2fb",
            "file:///p/..\\x",
        ] {
            assert!(uri_has_dot_segments(bad), "{bad}");
        }
        for ok in [
            "file:///projects/a.b/..c/x",
            "repo://acme/widgets?x=..",
            "https://x/y",
        ] {
            assert!(!uri_has_dot_segments(ok), "{ok}");
        }
    }
}
