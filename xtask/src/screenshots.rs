//! `cargo xtask screenshots`: the web view's pages as the browser test sees
//! them, written to `docs/web/` (the README shows them). The test itself
//! takes them, against a real daemon, so they are never of anything but
//! the code that runs.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{cmd, setup};

/// The browser test (tests/tests/web_view.rs).
const TEST: &str = "web_view::the_web_view_in_chromium";

pub fn run(root: &Path, with_setup: bool) -> Result<()> {
    if with_setup {
        setup::run()?;
    }
    let out = root.join("docs/web");
    cmd::run(
        cmd::cargo(root)
            .args([
                "test",
                "--locked",
                "-p",
                "agentguard",
                "--test",
                "integration",
                "--",
            ])
            .args([TEST, "--test-threads=1"])
            .env("AGENTGUARD_SCREENSHOTS", &out),
    )
    .context("the browser test failed; no screenshots were updated")?;
    println!("screenshots: written to {}", out.display());
    Ok(())
}
