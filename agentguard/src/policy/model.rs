//! The policy file format and the validated in-memory form.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// What a policy file may contain. Unknown keys are an error: a typo in a
/// security policy must not be silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub agent: AgentSection,
    #[serde(default)]
    pub passthrough: Vec<PassthroughSection>,
}

/// `[[passthrough]]`: TLS to these hosts is relayed untouched (pinned
/// clients, non-HTTP protocols over TLS); the proxy never sees inside.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PassthroughSection {
    pub host: Spanned<String>,
    pub ports: Option<Vec<u16>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentSection {
    pub name: Spanned<String>,
    pub cgroup: Spanned<String>,
}

/// A cgroup path relative to the cgroup v2 mount, e.g. `agentguard/support-bot`.
/// Validated: no leading `/`, no empty, `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupRelPath(String);

impl CgroupRelPath {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("cgroup must not be empty".into());
        }
        if raw.starts_with('/') {
            return Err(format!(
                "cgroup {raw:?} must be relative to the cgroup v2 mount (no leading '/')"
            ));
        }
        for component in raw.split('/') {
            if component.is_empty() || component == "." || component == ".." {
                return Err(format!(
                    "cgroup {raw:?} has an empty, '.' or '..' path component"
                ));
            }
            if !component
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!(
                    "cgroup {raw:?}: components may only use ASCII letters, digits, '-', '_' and '.'"
                ));
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `self` is `other` or one of its ancestors. Programs attached to
    /// a cgroup also run for its descendants, so nested agents would be
    /// ambiguous.
    pub fn contains(&self, other: &CgroupRelPath) -> bool {
        other.0 == self.0
            || other
                .0
                .strip_prefix(&self.0)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl std::fmt::Display for CgroupRelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Agent names appear in paths, logs and URLs: keep them boring.
pub(super) fn validate_agent_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "agent name {name:?} must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
    }
}

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
        let host = host.trim_end_matches('.');
        match self {
            Self::Exact(name) => host.eq_ignore_ascii_case(name),
            Self::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// A host whose TLS is relayed without interception.
#[derive(Debug, Clone)]
pub struct PassthroughRule {
    pub host: HostPattern,
    /// `None`: any port.
    pub ports: Option<Vec<u16>>,
}

impl PassthroughRule {
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.host.matches(host) && self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }
}

/// One agent's validated policy.
#[derive(Debug, Clone)]
pub struct AgentPolicy {
    pub name: String,
    pub cgroup: CgroupRelPath,
    pub passthrough: Vec<PassthroughRule>,
    /// The file it came from, for error messages and `status`.
    pub source: PathBuf,
}

/// Every agent's policy, accepted as a whole.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub agents: Vec<AgentPolicy>,
    /// SHA-256 over the files' names and contents (sorted by name), hex. It
    /// names the policy that made each decision.
    pub version: String,
}

impl PolicySet {
    pub fn agent(&self, name: &str) -> Option<&AgentPolicy> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// Whether `agent`'s policy relays TLS to `host:port` untouched.
    pub fn is_passthrough(&self, agent: &str, host: &str, port: u16) -> bool {
        self.agent(agent)
            .is_some_and(|a| a.passthrough.iter().any(|r| r.matches(host, port)))
    }

    pub fn sources(&self) -> impl Iterator<Item = &Path> {
        self.agents.iter().map(|a| a.source.as_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_are_relative_and_clean() {
        assert!(CgroupRelPath::parse("agentguard/support-bot").is_ok());
        for bad in [
            "",
            "/agentguard/x",
            "agentguard//x",
            "agentguard/../x",
            "a/./b",
            "a b",
        ] {
            assert!(CgroupRelPath::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn containment_is_by_component() {
        let a = CgroupRelPath::parse("agentguard/a").unwrap();
        assert!(a.contains(&CgroupRelPath::parse("agentguard/a").unwrap()));
        assert!(a.contains(&CgroupRelPath::parse("agentguard/a/child").unwrap()));
        assert!(!a.contains(&CgroupRelPath::parse("agentguard/ab").unwrap()));
    }

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
        for bad in ["", "*.", "a..b", "exa mple.org", "*.*.x", "http://x"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passthrough_ports_are_optional() {
        let any = PassthroughRule {
            host: HostPattern::parse("x.org").unwrap(),
            ports: None,
        };
        assert!(any.matches("x.org", 8443));
        let only = PassthroughRule {
            ports: Some(vec![443]),
            ..any
        };
        assert!(only.matches("x.org", 443));
        assert!(!only.matches("x.org", 8443));
    }

    #[test]
    fn agent_names_are_restricted() {
        assert!(validate_agent_name("support-bot").is_ok());
        for bad in ["", "Support", "-x", "a/b", &"x".repeat(64)] {
            assert!(validate_agent_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
