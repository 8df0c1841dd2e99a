//! Running external commands: each one is printed before it runs, and a failure
//! names the command and its exit status, so a broken step is obvious in CI logs.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::paths;

/// A command for `program`, searched for in [`paths::tool_path`].
pub fn new(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    // On Unix a PATH set with `env` is also the one `program` is looked up in.
    cmd.env("PATH", paths::tool_path());
    cmd
}

/// `cargo` run from the workspace root.
///
/// This is the rustup proxy found in PATH, not `$CARGO` (the toolchain's own
/// binary), because only the proxy understands `+nightly`.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = new("cargo");
    cmd.current_dir(root);
    cmd
}

/// Runs `cmd` to completion with inherited stdio, failing unless it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("+ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` silently and returns its trimmed stdout, failing unless it exits with 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `cmd` silently to see whether a tool is there: its trimmed stdout, or
/// `None` if it could not start or did not exit with 0.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Replaces this process with `cmd` (execve). Only returns if that fails.
///
/// exec rather than spawn-and-wait: the program then receives Ctrl-C and SIGTERM
/// itself, and its exit status is the status `cargo xtask` exits with.
pub fn exec(cmd: &mut Command) -> anyhow::Error {
    let shown = display(cmd);
    println!("+ exec {shown}");
    let err: io::Error = cmd.exec();
    anyhow::Error::new(err).context(format!("failed to exec `{shown}`"))
}

/// The command as a shell line: env overrides (except PATH), program, arguments.
fn display(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            let _ = write!(
                line,
                "{}={} ",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            );
        }
    }
    line.push_str(&quote(&cmd.get_program().to_string_lossy()));
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(&arg.to_string_lossy()));
    }
    line
}

/// Single-quotes `word` if a shell would otherwise split or expand it, so a
/// printed command can be copied and re-run.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_shows_env_program_and_quoted_args() {
        let mut cmd = new("dpkg-query");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-W", "-f=${Status}", "curl"]);
        assert_eq!(
            display(&cmd),
            "DEBIAN_FRONTEND=noninteractive dpkg-query -W '-f=${Status}' curl"
        );
    }

    #[test]
    fn quote_escapes_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn failure_names_the_command_and_status() {
        let err = run(new("false").arg("--flag")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`false --flag` failed"), "{msg}");
        assert!(msg.contains("exit status: 1"), "{msg}");
    }
}
