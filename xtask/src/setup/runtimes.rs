//! Language runtimes the end-to-end tests use as unmodified agents.
//!
//! python3 and node come with the machine image rather than from setup, so a
//! missing one is a warning here and a loud failure in the tests that need it.

use anyhow::Result;

use crate::cmd;

const RUNTIMES: &[&str] = &["python3", "node"];

/// Python packages the end-to-end tests import in their client scripts, with
/// the version pinned where a test depends on the API: the official MCP SDK
/// (client and streamable-HTTP server of the MCP tests; 2.x has `Client`
/// and `MCPServer`).
const PYTHON_PACKAGES: &[(&str, &str, Option<&str>)] = &[
    ("requests", "requests", None),
    ("mcp", "mcp", Some("2.3.0")),
];

pub fn check() -> Result<()> {
    for &runtime in RUNTIMES {
        match cmd::probe(cmd::new(runtime).arg("--version")) {
            Some(version) => {
                println!("setup: {runtime} ({version}) already present, skipping");
            }
            None => println!(
                "setup: warning: `{runtime} --version` does not run; the end-to-end \
                 tests that use {runtime} as a client will fail"
            ),
        }
    }
    for &(package, module, version) in PYTHON_PACKAGES {
        // Present, and at the pinned version if there is one.
        let check = match version {
            Some(v) => format!(
                "import {module}, importlib.metadata as m; assert m.version('{package}') == '{v}'"
            ),
            None => format!("import {module}"),
        };
        let spec = match version {
            Some(v) => format!("{package}=={v}"),
            None => package.to_owned(),
        };
        if cmd::probe(cmd::new("python3").args(["-c", &check])).is_some() {
            println!("setup: python package {spec} already present, skipping");
        } else {
            println!("setup: installing python package {spec} (used by the end-to-end tests)");
            cmd::run(cmd::new("python3").args(["-m", "pip", "install", "--quiet", &spec]))?;
        }
    }
    Ok(())
}
