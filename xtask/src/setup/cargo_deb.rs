//! cargo-deb, which `cargo xtask package` builds the Debian package with.

use anyhow::{Result, bail};

use crate::cmd;

/// A release checked to build with rustc 1.95 (its own `rust-version` is
/// 1.85); `--locked` uses the lockfile it was released with.
const VERSION: &str = "3.8.0";

pub fn ensure() -> Result<()> {
    if let Some(version) = installed_version() {
        println!("setup: cargo-deb ({version}) already present, skipping");
        return Ok(());
    }
    println!("setup: installing cargo-deb {VERSION} (takes a few minutes)");
    cmd::run(cmd::new("cargo").args(["install", "cargo-deb", "--locked", "--version", VERSION]))?;
    let Some(version) = installed_version() else {
        bail!("cargo install cargo-deb succeeded but `cargo deb --version` does not run");
    };
    println!("setup: installed {version}");
    Ok(())
}

fn installed_version() -> Option<String> {
    let out = cmd::probe(cmd::new("cargo").args(["deb", "--version"]))?;
    Some(out.lines().next().unwrap_or_default().to_owned())
}
