//! `cargo xtask run`: set up, build agentguard in release mode, and run the daemon
//! in the foreground with the workspace's example policies.
//!
//! The examples bind credentials to secret files and environment variables
//! that a fresh machine does not have, and the daemon (rightly) refuses to
//! start with a credential it cannot read. So that the first command of the
//! README starts a working daemon, missing secrets get clearly labelled demo
//! values: files are created root-owned with mode 0600 (never overwritten),
//! variables are set only for the daemon and only if unset. Real deployments
//! provide real secrets and run `agentguard run` directly.

use std::{
    convert::Infallible,
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result};

use crate::{cmd, paths, setup};

pub fn run(root: &Path, extra_args: &[String]) -> Result<Infallible> {
    setup::run()?;
    cmd::run(cmd::cargo(root).args(["build", "--release", "--locked", "-p", "agentguard"]))?;

    let policies = root.join("policies");
    let binary = paths::target_dir(root).join("release").join("agentguard");
    let mut daemon = cmd::new(&binary);
    for var in demo_secrets(&policies)? {
        daemon.env(&var, format!("agentguard-demo-{}", random_hex()?));
    }
    daemon
        .arg("run")
        .arg("--policies")
        .arg(&policies)
        .args(extra_args);
    Err(cmd::exec(&mut daemon))
}

/// Creates the secret files the policies name that do not exist yet, and
/// returns the environment variables they name that are unset.
fn demo_secrets(policies: &Path) -> Result<Vec<String>> {
    let mut unset_vars = Vec::new();
    let mut files: Vec<_> = fs::read_dir(policies)
        .with_context(|| format!("failed to read {}", policies.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for file in files {
        let text = fs::read_to_string(&file)?;
        for (kind, value) in secret_refs(&text) {
            match kind {
                "file" if !Path::new(&value).exists() => {
                    write_demo_secret(Path::new(&value))?;
                    println!(
                        "run: created demo secret {value} (mode 0600); replace it with the real one"
                    );
                }
                "env" if std::env::var_os(&value).is_none() && !unset_vars.contains(&value) => {
                    println!("run: {value} is unset; the daemon gets a demo value");
                    unset_vars.push(value);
                }
                _ => {}
            }
        }
    }
    Ok(unset_vars)
}

/// `{ file = "..." }` and `{ env = "..." }` in a policy's credential
/// sources (a plain scan: the daemon itself validates the policy).
fn secret_refs(text: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for kind in ["file", "env"] {
            let needle = format!("{kind} = \"");
            let mut from = 0;
            while let Some(at) = line[from..].find(&needle).map(|i| i + from) {
                let start = at + needle.len();
                let Some(len) = line[start..].find('"') else {
                    break;
                };
                // The key itself, not the end of another (placeholder_env).
                let standalone = !line[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                if standalone {
                    out.push((kind, line[start..start + len].to_owned()));
                }
                from = start + len;
            }
        }
    }
    out
}

fn write_demo_secret(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    writeln!(f, "agentguard-demo-{}", random_hex()?)?;
    Ok(())
}

fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("failed to read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_file_and_env_sources() {
        let text = r#"
# source = { file = "/commented/out" }
source = { file = "/etc/agentguard/secrets/a" }
client_id = { env = "CLIENT_ID" }
client_secret = { file = "/etc/agentguard/secrets/b" }
placeholder_env = "NOT_A_SOURCE"
"#;
        assert_eq!(
            secret_refs(text),
            vec![
                ("file", "/etc/agentguard/secrets/a".to_owned()),
                ("env", "CLIENT_ID".to_owned()),
                ("file", "/etc/agentguard/secrets/b".to_owned()),
            ]
        );
    }
}
