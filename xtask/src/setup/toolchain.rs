//! Rust toolchain pieces beyond the stable compiler.
//!
//! aya-build compiles the eBPF crate with nightly `-Z build-std=core`, which needs
//! nightly's `rust-src`; `cargo xtask test` lints with stable rustfmt and clippy and
//! lints the eBPF crate with nightly clippy.

use anyhow::{Context, Result};

use crate::cmd;

/// `None` is the active toolchain: the one plain `cargo fmt` and `cargo clippy` use.
const COMPONENTS: &[(Option<&str>, &str)] = &[
    (Some("nightly"), "rust-src"),
    (Some("nightly"), "clippy"),
    (None, "rustfmt"),
    (None, "clippy"),
];

pub fn ensure() -> Result<()> {
    let toolchains = cmd::output(cmd::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to install toolchain components (see https://rustup.rs)")?;
    if has_nightly(&toolchains) {
        println!("setup: nightly toolchain already present, skipping");
    } else {
        println!("setup: installing the nightly toolchain with rust-src");
        cmd::run(cmd::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }

    for &(toolchain, component) in COMPONENTS {
        let label = toolchain.unwrap_or("active");
        let mut list = cmd::new("rustup");
        list.args(["component", "list", "--installed"]);
        add_toolchain(&mut list, toolchain);
        if has_component(&cmd::output(&mut list)?, component) {
            println!("setup: {label} toolchain component {component} already present, skipping");
            continue;
        }
        println!("setup: installing {label} toolchain component {component}");
        let mut add = cmd::new("rustup");
        add.args(["component", "add", component]);
        add_toolchain(&mut add, toolchain);
        cmd::run(&mut add)?;
    }
    Ok(())
}

fn add_toolchain(cmd: &mut std::process::Command, toolchain: Option<&str>) {
    if let Some(toolchain) = toolchain {
        cmd.args(["--toolchain", toolchain]);
    }
}

/// Whether `rustup toolchain list` shows the floating `nightly-<host>` toolchain
/// that `cargo +nightly` resolves to; a dated `nightly-2025-01-01-<host>` is not it.
fn has_nightly(toolchains: &str) -> bool {
    toolchains.lines().any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|name| name.strip_prefix("nightly-"))
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// `rustup component list --installed` prints target-independent components bare
/// (`rust-src`) and the rest with the host triple (`clippy-x86_64-unknown-linux-gnu`).
fn has_component(installed: &str, component: &str) -> bool {
    let with_target = format!("{component}-");
    installed
        .lines()
        .map(str::trim)
        .any(|line| line == component || line.starts_with(&with_target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_floating_nightly_only() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2025-01-01-x86_64-unknown-linux-gnu\n";
        assert!(!has_nightly(list));
        assert!(has_nightly(&format!(
            "{list}nightly-x86_64-unknown-linux-gnu\n"
        )));
    }

    #[test]
    fn finds_components_with_and_without_target() {
        let installed = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\n\
                         rust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(installed, "rust-src"));
        assert!(has_component(installed, "clippy"));
        assert!(!has_component(installed, "rustfmt"));
        assert!(!has_component(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src"
        ));
    }
}
