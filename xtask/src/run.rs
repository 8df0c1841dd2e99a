//! `cargo xtask run`: set up, build agentguard in release mode, and run the daemon
//! in the foreground with the workspace's example policies.

use std::convert::Infallible;
use std::path::Path;

use anyhow::Result;

use crate::{cmd, paths, setup};

pub fn run(root: &Path, extra_args: &[String]) -> Result<Infallible> {
    setup::run()?;
    cmd::run(cmd::cargo(root).args(["build", "--release", "--locked", "-p", "agentguard"]))?;

    let binary = paths::target_dir(root).join("release").join("agentguard");
    let mut daemon = cmd::new(&binary);
    daemon
        .arg("run")
        .arg("--policies")
        .arg(root.join("policies"))
        .args(extra_args);
    Err(cmd::exec(&mut daemon))
}
