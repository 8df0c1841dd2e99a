//! cargo-fuzz, the cargo subcommand that builds and runs the fuzz targets
//! in `fuzz/` under libFuzzer (with nightly, which setup installs first).

use anyhow::{Result, bail};

use crate::cmd;

pub fn ensure() -> Result<()> {
    if let Some(version) = installed_version() {
        println!("setup: cargo-fuzz ({version}) already present, skipping");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz");
    cmd::run(cmd::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    let Some(version) = installed_version() else {
        bail!("cargo install cargo-fuzz succeeded but `cargo fuzz --version` does not run");
    };
    println!("setup: installed {version}");
    Ok(())
}

/// `cargo fuzz --version`, e.g. `cargo-fuzz 0.13.1`.
fn installed_version() -> Option<String> {
    cmd::probe(cmd::new("cargo").args(["fuzz", "--version"]))
}
