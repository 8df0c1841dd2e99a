//! Tests of the case runner, and every case file shipped in
//! policies/tests/ run against policies/.

use std::path::Path;

use super::*;
use crate::policy::load_path;

const POLICY: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[tool]]
name = "mcp"
host = "mcp.example"
methods = ["POST", "GET"]
paths = ["/mcp"]
protocol = "mcp"
mcp_tools = ["echo"]
when = 'mcp.arguments.text != "forbidden"'
rate = "3/min"
"#;

fn set() -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bot.toml"), POLICY).unwrap();
    load_path(dir.path()).unwrap()
}

fn cases(text: &str) -> Vec<Case> {
    toml::from_str::<CaseFile>(text).unwrap().cases
}

#[test]
fn cases_pass_and_fail_as_they_should() {
    let results = run_cases(
        &set(),
        &cases(
            r#"
[[case]]
name = "echo"
agent = "bot"
method = "POST"
url = "https://mcp.example/mcp"
mcp = { tool = "echo", arguments = { text = "hi" } }
expect = "allow"
tool = "mcp"

[[case]]
name = "forbidden text"
agent = "bot"
method = "POST"
url = "https://mcp.example/mcp"
mcp = { tool = "echo", arguments = { text = "forbidden" } }
expect = "deny"
rule = "condition"

[[case]]
name = "the rate: three fit, the fourth is limited"
agent = "bot"
method = "POST"
url = "https://mcp.example/mcp"
mcp = { tool = "echo", arguments = { text = "x" } }
time = "2026-01-01T00:00:00Z"
repeat = 4
expect = "rate-limited"

[[case]]
name = "a batch"
agent = "bot"
method = "POST"
url = "https://mcp.example/mcp"
time = "2026-01-01T01:00:00Z"
body = '[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"rm"}}]'
expect = ["allow", "deny"]

[[case]]
name = "headers that disagree"
agent = "bot"
method = "POST"
url = "https://mcp.example/mcp"
headers = { "Mcp-Method" = "tools/list" }
mcp = { tool = "echo", arguments = { text = "x" } }
expect = "refuse"

[[case]]
name = "the event stream"
agent = "bot"
method = "GET"
url = "https://mcp.example/mcp"
expect = "allow"

[[case]]
name = "this one is wrong on purpose"
agent = "bot"
method = "POST"
url = "https://mcp.example/mcp"
mcp = { tool = "rm" }
expect = "allow"
"#,
        ),
    );
    let summary: Vec<(String, bool)> = results.iter().map(|r| (r.name.clone(), r.passed)).collect();
    let failed: Vec<&CaseResult> = results.iter().filter(|r| !r.passed).collect();
    assert_eq!(failed.len(), 1, "{summary:?}\n{failed:#?}");
    assert_eq!(failed[0].name, "this one is wrong on purpose");
    assert!(
        failed[0].mismatches[0].contains("expected allow, got deny"),
        "{:?}",
        failed[0].mismatches
    );
    // The limited one says when to retry.
    let limited = &results[2].got[0];
    assert_eq!(limited.retry_after_secs, Some(60));
}

#[test]
fn detail_expectations_are_checked() {
    let results = run_cases(
        &set(),
        &cases(
            r#"
[[case]]
agent = "bot"
method = "POST"
url = "https://mcp.example/mcp"
mcp = { tool = "echo", arguments = { text = "x" } }
expect = "allow"
tool = "other"
credential = "none"
reason = "no such text"

[[case]]
agent = "nobody"
method = "GET"
url = "https://mcp.example/mcp"
expect = "allow"
"#,
        ),
    );
    assert!(!results[0].passed);
    assert_eq!(
        results[0].mismatches.len(),
        3,
        "{:?}",
        results[0].mismatches
    );
    assert!(!results[1].passed);
    assert!(results[1].mismatches[0].contains("no agent named"));
}

#[test]
fn bad_case_files_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[[case]]\nagent = \"a\"\nmethod = \"GET\"\nurl = \"https://x/\"\nexpect = \"maybe\"\n",
    )
    .unwrap();
    let err = read_cases(&path).unwrap_err();
    assert!(
        err.contains("c.toml:5:") || err.contains("c.toml:1:"),
        "{err}"
    );
    std::fs::write(&path, "[[case]]\nagnet = \"a\"\n").unwrap();
    assert!(read_cases(&path).unwrap_err().contains("agnet"));
}

/// Every case file in policies/tests/ passes against policies/, and every
/// example agent has cases there.
#[test]
fn every_shipped_case_file_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let set = load_path(&root).unwrap();
    let mut agents = std::collections::BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        files += 1;
        let file = read_cases(&path).unwrap();
        for result in run_cases(&set, &file.cases) {
            assert!(
                result.passed,
                "{}: {}: {:?}\n{:#?}",
                path.display(),
                result.name,
                result.mismatches,
                result.got
            );
        }
        agents.extend(file.cases.iter().map(|c| c.agent.clone()));
    }
    assert!(files >= 1);
    let all: std::collections::BTreeSet<String> =
        set.agents.iter().map(|a| a.name.clone()).collect();
    assert_eq!(agents, all, "every example agent has cases");
}
