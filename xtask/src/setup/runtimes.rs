//! Language runtimes the end-to-end tests use as unmodified agents.
//!
//! python3 and node come with the machine image rather than from setup, so a
//! missing one is a warning here and a loud failure in the tests that need it.

use anyhow::Result;

use crate::cmd;

const RUNTIMES: &[&str] = &["python3", "node"];

/// Python packages the end-to-end tests import in their client scripts.
const PYTHON_PACKAGES: &[&str] = &["requests"];

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
    for &package in PYTHON_PACKAGES {
        let import = format!("import {package}");
        if cmd::probe(cmd::new("python3").args(["-c", &import])).is_some() {
            println!("setup: python package {package} already present, skipping");
        } else {
            println!("setup: installing python package {package} (used by the end-to-end tests)");
            cmd::run(cmd::new("python3").args(["-m", "pip", "install", "--quiet", package]))?;
        }
    }
    Ok(())
}
