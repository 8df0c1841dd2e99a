//! `agentguard policy test --cases` and `policy schema`, run as a policy
//! author runs them: the real binary on the shipped examples. Needs no
//! privilege.

use std::process::Command;

use crate::common::{AGENTGUARD, text};

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");

#[test]
fn shipped_cases_pass_and_a_wrong_expectation_fails() {
    let cases = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/tests/github-mcp-agent.toml"
    );
    let out = Command::new(AGENTGUARD)
        .args(["policy", "test", "--policies", POLICIES, "--cases", cases])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("PASS never delete_repo (deny)"), "{stdout}");
    assert!(
        stdout.contains("PASS the 21st write in a minute for one person (rate-limited)"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        r#"
[[case]]
name = "delete_repo is allowed (it is not)"
agent = "github-mcp-agent"
method = "POST"
url = "https://api.githubcopilot.com/mcp/"
mcp = { tool = "delete_repo", arguments = { owner = "acme", repo = "widgets" } }
expect = "allow"

[[case]]
name = "list_issues in acme"
agent = "github-mcp-agent"
method = "POST"
url = "https://api.githubcopilot.com/mcp/"
mcp = { tool = "list_issues", arguments = { owner = "acme", repo = "widgets" } }
expect = "allow"
"#,
    )
    .unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["policy", "test", "--policies", POLICIES, "--cases"])
        .arg(&wrong)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let results: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["passed"], false);
    assert_eq!(results[0]["got"][0]["decision"], "deny");
    assert_eq!(results[0]["got"][0]["rule"], "call-not-allowed");
    assert_eq!(results[1]["passed"], true);
    assert!(text(&out.stderr).contains("1 passed, 1 failed"));

    // A case file that does not parse is an input error (2), not a failure.
    std::fs::write(&wrong, "[[case]]\nagent = 1\n").unwrap();
    let out = Command::new(AGENTGUARD)
        .args(["policy", "test", "--policies", POLICIES, "--cases"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("wrong.toml:2:"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn schema_is_json_schema_of_the_format() {
    let out = Command::new(AGENTGUARD)
        .args(["policy", "schema"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let tool = &schema["$defs"]["ToolSection"]["properties"];
    for key in [
        "protocol",
        "mcp_tools",
        "mcp_tools_except",
        "when",
        "rate",
        "rate_per",
        "record_arguments",
    ] {
        assert!(tool.get(key).is_some(), "{key} missing");
    }
}
