//! What the web view's browser test drives Chromium with: playwright-core
//! from the npm registry, at the version `tests/browser/package-lock.json`
//! pins, installed into `tests/browser/node_modules` with `npm ci`. Chromium
//! itself is Debian's (`chromium`, among the test packages); playwright's
//! own browser downloads are never used.

use anyhow::Result;

use crate::{cmd, paths};

pub fn ensure() -> Result<()> {
    let dir = paths::workspace_root().join("tests/browser");
    let lock: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("package-lock.json"))?)?;
    let pinned = lock["packages"]["node_modules/playwright-core"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let installed = std::fs::read_to_string(dir.join("node_modules/playwright-core/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned));
    if installed.as_deref() == Some(pinned.as_str()) {
        println!("setup: npm package playwright-core {pinned} already present, skipping");
        return Ok(());
    }
    println!(
        "setup: installing npm package playwright-core {pinned} (the web view's browser test)"
    );
    cmd::run(
        cmd::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            // Playwright must never fetch a browser of its own.
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .current_dir(&dir),
    )
}
