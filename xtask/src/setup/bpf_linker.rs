//! bpf-linker, which rustc uses to link the eBPF crate for the bpf target.
//!
//! It must be built against the LLVM rustc uses (22). A plain
//! `cargo install bpf-linker` builds against a bundled LLVM of another major and
//! fails here, hence the feature flags and `LLVM_PREFIX` pointing at Debian's LLVM 22.

use anyhow::{Result, bail};

use crate::{cmd, paths};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn ensure() -> Result<()> {
    if let Some(version) = installed_version() {
        println!("setup: bpf-linker ({version}) already present, skipping");
    } else {
        println!("setup: installing bpf-linker built against LLVM 22 (takes a few minutes)");
        cmd::run(cmd::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            "llvm-22",
        ]))?;
        let Some(version) = installed_version() else {
            bail!("cargo install bpf-linker succeeded but `bpf-linker --version` does not run");
        };
        println!("setup: installed {version}");
    }
    // xtask adds cargo's bin directory to the PATH of what it runs; a plain
    // `cargo build` by hand does not, and aya-build would not find the linker.
    if !paths::on_caller_path("bpf-linker") {
        println!(
            "setup: warning: bpf-linker is not on your PATH; add cargo's bin directory \
             (usually ~/.cargo/bin) to PATH to build agentguard without xtask"
        );
    }
    Ok(())
}

/// The first line of `bpf-linker --version`, looked up in PATH and cargo's bin dir.
fn installed_version() -> Option<String> {
    let out = cmd::probe(cmd::new("bpf-linker").arg("--version"))?;
    Some(out.lines().next().unwrap_or_default().to_owned())
}
