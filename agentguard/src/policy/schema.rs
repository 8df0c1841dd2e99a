//! The JSON Schema of the policy format (`agentguard policy schema`), for
//! editors that validate TOML as it is written (taplo and the editors built
//! on it read JSON Schema). Derived from the serde types the loader parses,
//! so a key the loader accepts is a key the schema knows; what the schema
//! cannot say (a CEL expression compiles, a credential id exists) the loader
//! checks.

use serde_json::Value;

use super::{cases::CaseFile, model::PolicyFile};

/// The schema of a policy file (JSON Schema 2020-12).
pub fn policy_schema() -> Value {
    let mut schema = schemars::schema_for!(PolicyFile);
    schema.insert("title".into(), "agentguard policy".into());
    schema.insert(
        "description".into(),
        "One agent's policy: its cgroup, credentials, tools and passthrough hosts (see README, Policies).".into(),
    );
    schema.to_value()
}

/// The schema of a `policy test --cases` file.
pub fn cases_schema() -> Value {
    let mut schema = schemars::schema_for!(CaseFile);
    schema.insert("title".into(), "agentguard policy test cases".into());
    schema.to_value()
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use super::*;

    /// Validates TOML files against a schema with Python's `jsonschema`
    /// (an independent implementation of the standard), reading TOML with
    /// `tomllib`. Returns the failures, one line each.
    fn validate(schema: &Value, files: &[std::path::PathBuf]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let schema_path = dir.path().join("schema.json");
        std::fs::write(&schema_path, serde_json::to_vec(schema).unwrap()).unwrap();
        let script = r#"
import json, sys, tomllib
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema)
for path in sys.argv[2:]:
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    for e in v.iter_errors(doc):
        print(f"{path}: {e.json_path}: {e.message}")
"#;
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&schema_path)
            .args(files)
            .output()
            .expect("python3 runs (it is part of the machine's setup)");
        assert!(
            out.status.success(),
            "the validator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn tomls(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_example_validates_against_the_schema() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let policies = tomls(&root);
        assert!(policies.len() >= 7);
        assert_eq!(validate(&policy_schema(), &policies), Vec::<String>::new());
        let cases = tomls(&root.join("tests"));
        assert!(!cases.is_empty());
        assert_eq!(validate(&cases_schema(), &cases), Vec::<String>::new());
    }

    #[test]
    fn an_agent_that_is_a_systemd_unit_needs_no_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bot.toml");
        std::fs::write(
            &p,
            "[agent]\nname = \"bot\"\nsystemd_unit = \"support-bot.service\"\n",
        )
        .unwrap();
        assert!(crate::policy::load_path(&p).is_ok());
        assert_eq!(validate(&policy_schema(), &[p]), Vec::<String>::new());
    }

    #[test]
    fn the_schema_refuses_what_the_loader_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let head = "[agent]\nname = \"a\"\ncgroup = \"agentguard/a\"\n";
        let tool =
            "[[tool]]\nname = \"t\"\nhost = \"x.org\"\nmethods = [\"POST\"]\npaths = [\"/\"]\n";
        let bad = [
            format!("{head}mdoe = \"audit\"\n"),
            format!("{head}mode = \"relaxed\"\n"),
            "[agent]\nname = \"a\"\n".to_owned(),
            "[agent]\nname = \"a\"\nsystemd_unit = \"a.socket\"\n".to_owned(),
            format!("{head}{tool}protocol = \"grpc\"\n"),
            format!("{head}{tool}rate = \"20 a minute\"\n"),
            format!("{head}{tool}rate_per = \"user\"\n"),
            format!("{head}{tool}mcp_tols = [\"x\"]\n"),
            format!("{head}{tool}record_arguments = \"yes\"\n"),
            format!(
                "{head}[[credential]]\nid = \"k\"\nsource = {{ vault = \"x\" }}\ninject = {{ header = \"x\" }}\n"
            ),
        ];
        let mut files = Vec::new();
        for (i, text) in bad.iter().enumerate() {
            let p = dir.path().join(format!("{i}.toml"));
            std::fs::write(&p, text).unwrap();
            // The loader refuses each of them too.
            assert!(crate::policy::load_path(&p).is_err(), "{text}");
            files.push(p);
        }
        let failures = validate(&policy_schema(), &files);
        for (i, text) in bad.iter().enumerate() {
            let name = format!("{i}.toml:");
            assert!(
                failures.iter().any(|f| f.contains(&name)),
                "the schema accepted:\n{text}\n{failures:#?}"
            );
        }
    }
}
