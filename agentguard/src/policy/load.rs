//! Reading and validating a policies folder (or a single file).

use std::{
    fs,
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::model::{
    AgentPolicy, CgroupRelPath, HostPattern, PassthroughRule, PolicyFile, PolicySet,
    validate_agent_name,
};

#[derive(Debug, Error)]
pub enum PolicyError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A problem at a known place in a file. `line` and `column` are 1-based.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: no policy files (*.toml) found")]
    NoPolicies { path: PathBuf },
}

/// All errors found in a policy set: operators fix them in one pass.
#[derive(Debug, Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl std::fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Loads a policy set from a folder (every `*.toml` in it, sorted by name) or
/// from one file. Every file is checked; any error refuses the whole set.
pub fn load_path(path: &Path) -> Result<PolicySet, PolicyErrors> {
    let files = policy_files(path).map_err(|e| PolicyErrors(vec![e]))?;
    let mut errors = Vec::new();
    let mut agents: Vec<(AgentPolicy, Span)> = Vec::new();
    let mut hasher = Sha256::new();

    for file in &files {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(source) => {
                errors.push(PolicyError::Read {
                    path: file.clone(),
                    source,
                });
                continue;
            }
        };
        // Name and length prefix each file so that moving bytes between files
        // changes the version.
        let name = file.file_name().unwrap_or_default().as_encoded_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update((text.len() as u64).to_le_bytes());
        hasher.update(text.as_bytes());

        match parse_file(file, &text) {
            Ok(agent) => agents.push(agent),
            Err(e) => errors.push(e),
        }
    }

    check_conflicts(&agents, &mut errors);
    if !errors.is_empty() {
        return Err(PolicyErrors(errors));
    }
    Ok(PolicySet {
        agents: agents.into_iter().map(|(a, _)| a).collect(),
        version: format!("{:x}", hasher.finalize()),
    })
}

fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "toml")
            && entry.file_type().is_ok_and(|t| !t.is_dir())
        {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::NoPolicies {
            path: path.to_owned(),
        });
    }
    Ok(files)
}

/// Where a value sits in its file, for errors found after parsing.
#[derive(Debug, Clone)]
struct Span {
    path: PathBuf,
    line: usize,
    column: usize,
}

fn span_of(path: &Path, text: &str, offset: usize) -> Span {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Span {
        path: path.to_owned(),
        line,
        column,
    }
}

fn invalid(span: &Span, message: String) -> PolicyError {
    PolicyError::Invalid {
        path: span.path.clone(),
        line: span.line,
        column: span.column,
        message,
    }
}

fn parse_file(path: &Path, text: &str) -> Result<(AgentPolicy, Span), PolicyError> {
    let parsed: PolicyFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        invalid(&span_of(path, text, offset), e.message().trim().to_owned())
    })?;
    let name_span = span_of(path, text, parsed.agent.name.span().start);
    let name = parsed.agent.name.into_inner();
    validate_agent_name(&name).map_err(|m| invalid(&name_span, format!("agent.name: {m}")))?;
    let cgroup_span = span_of(path, text, parsed.agent.cgroup.span().start);
    let cgroup = CgroupRelPath::parse(parsed.agent.cgroup.get_ref())
        .map_err(|m| invalid(&cgroup_span, format!("agent.cgroup: {m}")))?;
    let mut passthrough = Vec::new();
    for entry in parsed.passthrough {
        let span = span_of(path, text, entry.host.span().start);
        let host = HostPattern::parse(entry.host.get_ref())
            .map_err(|m| invalid(&span, format!("passthrough.host: {m}")))?;
        if entry
            .ports
            .as_ref()
            .is_some_and(|p| p.is_empty() || p.contains(&0))
        {
            return Err(invalid(
                &span,
                "passthrough.ports: list ports 1-65535, or leave ports out for any port".into(),
            ));
        }
        passthrough.push(PassthroughRule {
            host,
            ports: entry.ports,
        });
    }
    Ok((
        AgentPolicy {
            name,
            cgroup,
            passthrough,
            source: path.to_owned(),
        },
        name_span,
    ))
}

/// Two agents may not share a name or a cgroup, and one agent's cgroup may
/// not contain another's (the kernel hooks of the outer one would also run for
/// the inner one, so the connection's agent would be ambiguous).
fn check_conflicts(agents: &[(AgentPolicy, Span)], errors: &mut Vec<PolicyError>) {
    for (i, (a, a_span)) in agents.iter().enumerate() {
        for (b, _) in &agents[..i] {
            if a.name == b.name {
                errors.push(invalid(
                    a_span,
                    format!(
                        "agent.name: agent {:?} is already defined in {}",
                        a.name,
                        b.source.display()
                    ),
                ));
            } else if a.cgroup.contains(&b.cgroup) || b.cgroup.contains(&a.cgroup) {
                errors.push(invalid(
                    a_span,
                    format!(
                        "agent.cgroup: {} overlaps agent {:?}'s cgroup {} ({}); agents' cgroups must be disjoint",
                        a.cgroup,
                        b.name,
                        b.cgroup,
                        b.source.display()
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn loads_a_folder_and_versions_it() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n",
        );
        write(
            dir.path(),
            "b.toml",
            "[agent]\nname = \"b\"\ncgroup = \"agentguard/b\"\n",
        );
        write(dir.path(), "README.md", "not a policy");
        let set = load_path(dir.path()).unwrap();
        assert_eq!(set.agents.len(), 2);
        assert_eq!(set.agent("b").unwrap().cgroup.as_str(), "agentguard/b");
        assert_eq!(set.version.len(), 64);

        let before = set.version;
        write(
            dir.path(),
            "b.toml",
            "[agent]\nname = \"b\"\ncgroup = \"agentguard/bb\"\n",
        );
        assert_ne!(load_path(dir.path()).unwrap().version, before);
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "bad.toml",
            "[agent]\nname = \"a\"\ncgroup = agentguard/a\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.toml:3:"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "typo.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\nmdoe = \"enforce\"\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("typo.toml:4:"), "{err}");
        assert!(err.contains("mdoe"), "{err}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "x.toml",
            "[agent]\nname = \"x\"\ncgroup = \"/abs\"\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("x.toml:3:10: agent.cgroup"), "{err}");
    }

    #[test]
    fn duplicate_and_nested_agents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n",
        );
        write(
            dir.path(),
            "b.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/b\"\n",
        );
        write(
            dir.path(),
            "c.toml",
            "[agent]\nname = \"c\"\ncgroup = \"agentguard/a/c\"\n",
        );
        let errs = load_path(dir.path()).unwrap_err();
        assert_eq!(errs.0.len(), 2, "{errs}");
        let text = errs.to_string();
        assert!(text.contains("already defined"), "{text}");
        assert!(text.contains("must be disjoint"), "{text}");
    }

    #[test]
    fn passthrough_entries_are_parsed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n\n\
             [[passthrough]]\nhost = \"pypi.org\"\n\n\
             [[passthrough]]\nhost = \"*.example.org\"\nports = [8443]\n",
        );
        let set = load_path(dir.path()).unwrap();
        assert!(set.is_passthrough("a", "pypi.org", 443));
        assert!(set.is_passthrough("a", "x.example.org", 8443));
        assert!(!set.is_passthrough("a", "x.example.org", 443));
        assert!(!set.is_passthrough("b", "pypi.org", 443));

        write(
            dir.path(),
            "a.toml",
            "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n[[passthrough]]\nhost = \"bad host\"\n",
        );
        let err = load_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.toml:5:8: passthrough.host"), "{err}");
    }

    #[test]
    fn an_empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_path(dir.path()).unwrap_err().0[..],
            [PolicyError::NoPolicies { .. }]
        ));
    }

    /// Every example shipped in policies/ must stay valid.
    #[test]
    fn every_example_policy_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = load_path(&dir).unwrap_or_else(|e| panic!("policies/ invalid:\n{e}"));
        let files = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "toml")
            })
            .count();
        assert_eq!(
            set.agents.len(),
            files,
            "every policy file defines one agent"
        );
        assert!(files >= 2);
    }
}
