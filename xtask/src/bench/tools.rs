//! What the bench needs beyond `cargo xtask setup`, installed the same way
//! (idempotent: each is checked first and skipped when present):
//! oha from crates.io, nginx, h2load and valgrind (callgrind, for the
//! instruction counts) from Debian, and mitmproxy from
//! PyPI into a virtualenv inside the workspace's target directory (so
//! nothing lands in the machine's Python, and `cargo clean` removes it).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::{cmd, setup::apt::Apt};

/// The newest oha whose rust-version (1.88) fits the workspace's rustc.
const OHA_VERSION: &str = "1.16.0";
/// The newest mitmproxy that supports the machine's Python 3.11.
const MITMPROXY_VERSION: &str = "11.0.2";
/// nginx, h2load (in nghttp2-client) for HTTP/2, and valgrind for the
/// instruction counts (`super::instructions`).
const APT_PACKAGES: &[&str] = &["nginx", "nghttp2-client", "valgrind"];

pub struct Tools {
    pub oha: PathBuf,
    pub mitmdump: PathBuf,
}

pub fn ensure(target: &Path) -> Result<Tools> {
    Apt::default().ensure(APT_PACKAGES)?;
    let oha = ensure_oha()?;
    let mitmdump = ensure_mitmproxy(&target.join("bench").join("tools"))?;
    Ok(Tools { oha, mitmdump })
}

fn ensure_oha() -> Result<PathBuf> {
    let wanted = format!("oha {OHA_VERSION}");
    match cmd::probe(cmd::new("oha").arg("--version")) {
        Some(v) if v.trim() == wanted => println!("bench: {wanted} already present, skipping"),
        found => {
            if let Some(v) = found {
                println!("bench: found {v}, installing {wanted}");
            } else {
                println!("bench: installing {wanted} from crates.io (a few minutes)");
            }
            cmd::run(cmd::new("cargo").args([
                "install",
                "oha",
                "--version",
                OHA_VERSION,
                "--locked",
            ]))?;
        }
    }
    which("oha")
}

fn ensure_mitmproxy(tools: &Path) -> Result<PathBuf> {
    let venv = tools.join("mitmproxy-venv");
    let mitmdump = venv.join("bin").join("mitmdump");
    let wanted = format!("Mitmproxy: {MITMPROXY_VERSION}");
    let version = cmd::probe(cmd::new(&mitmdump).arg("--version"));
    if version
        .as_deref()
        .is_some_and(|v| v.lines().next() == Some(&wanted))
    {
        println!("bench: mitmproxy {MITMPROXY_VERSION} already present, skipping");
        return Ok(mitmdump);
    }
    println!(
        "bench: installing mitmproxy {MITMPROXY_VERSION} from PyPI into {}",
        venv.display()
    );
    std::fs::create_dir_all(tools)?;
    cmd::run(cmd::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(
        cmd::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet"])
            .arg(format!("mitmproxy=={MITMPROXY_VERSION}")),
    )?;
    if cmd::probe(cmd::new(&mitmdump).arg("--version")).is_none() {
        bail!(
            "mitmproxy installed but `{} --version` does not run",
            mitmdump.display()
        );
    }
    Ok(mitmdump)
}

/// The full path of `name` in the PATH xtask gives its commands.
fn which(name: &str) -> Result<PathBuf> {
    let path = crate::paths::tool_path();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{name} is not in PATH after installing it"))
}
