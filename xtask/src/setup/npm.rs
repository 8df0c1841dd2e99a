//! The tests' packages from the npm registry, each folder at the versions
//! its `package-lock.json` pins, installed into its `node_modules` with
//! `npm ci`:
//! - `tests/browser`: playwright-core, which the web view's browser test
//!   drives Chromium with. Chromium itself is Debian's (`chromium`, among
//!   the test packages); playwright's own browser downloads are never used.
//! - `tests/verifiers`: jose, the JWT library Node tool servers verify
//!   agentguard's tokens with (tests/tests/token_verifiers.rs).

use anyhow::Result;

use crate::{cmd, paths};

/// A test folder and the package whose pinned version tells whether the
/// folder's packages are installed.
struct Folder {
    dir: &'static str,
    package: &'static str,
    purpose: &'static str,
}

const FOLDERS: &[Folder] = &[
    Folder {
        dir: "tests/browser",
        package: "playwright-core",
        purpose: "the web view's browser test",
    },
    Folder {
        dir: "tests/verifiers",
        package: "jose",
        purpose: "the token verifier tests",
    },
];

pub fn ensure() -> Result<()> {
    FOLDERS.iter().try_for_each(install)
}

fn install(folder: &Folder) -> Result<()> {
    let dir = paths::workspace_root().join(folder.dir);
    let package = folder.package;
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package-lock.json"))?)?;
    let pinned = lock["packages"][format!("node_modules/{package}")]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let installed =
        std::fs::read_to_string(dir.join(format!("node_modules/{package}/package.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["version"].as_str().map(str::to_owned));
    if installed.as_deref() == Some(pinned.as_str()) {
        println!("setup: npm package {package} {pinned} already present, skipping");
        return Ok(());
    }
    println!(
        "setup: installing npm package {package} {pinned} ({})",
        folder.purpose
    );
    cmd::run(
        cmd::new("npm")
            // Pinned, and no package's install scripts run.
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
            // Playwright must never fetch a browser of its own.
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&dir),
    )
}
