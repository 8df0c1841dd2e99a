//! `agentguard oci-runtime`: a runc wrapper that puts `agentguard
//! oci-hook` into a container's bundle, for runtimes that have no hooks
//! folder of their own: Docker, and containerd's CRI (Kubernetes). dockerd
//! is given it as a runtime (`daemon.json`, `"runtimes"`, with
//! `runtimeArgs` ending in `--`); containerd runs it as its runc
//! (`BinaryName`, a two-line script that adds the arguments). It runs for
//! every runc command of those containers. For `create` and
//! `run` it adds two hooks to the bundle's `config.json` (createRuntime:
//! report the container before its program runs; poststop: forget it),
//! then, for every command, it becomes runc with the same arguments
//! (exec: same pid, descriptors, exit code), as NVIDIA's container
//! runtime does.
//!
//! What happens at createRuntime is the hook's (see `oci_hook`): a
//! container no policy selects starts untouched; one that is selected
//! starts only once the daemon has attached to it; if the daemon cannot
//! be reached, the container does not start. The hook is told the
//! container is Docker's and where dockerd keeps its record
//! (`--docker-root`), or a pod's and where the CRI answers
//! (`--cri-socket`), so the daemon reads that record and nothing the
//! container's own configuration could point elsewhere.
//!
//! A runc command line it cannot read for certain (an unknown command, an
//! argument that is not UTF-8) is refused, not passed on: passing it on
//! might create a container without the hook.

use std::{
    ffi::OsString,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
};

use serde_json::{Value, json};
use thiserror::Error;

use crate::containers::RuntimeSource;

#[derive(Debug, Error)]
pub enum OciRuntimeError {
    #[error(
        "runc command {0:?} is not one agentguard knows; refused rather than risk creating a container without the hook"
    )]
    UnknownCommand(String),
    #[error("an argument for runc is not UTF-8; refused rather than misread it")]
    NotUtf8,
    #[error("{flag} {path} must be an absolute UTF-8 path")]
    RecordPath { flag: &'static str, path: PathBuf },
    #[error("failed to read the bundle's {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bundle's {path} is not a valid OCI configuration: {why}")]
    Config { path: PathBuf, why: String },
    #[error("failed to find agentguard's own path for the hook: {0}")]
    OwnPath(std::io::Error),
    #[error(transparent)]
    Write(#[from] crate::atomic_file::WriteError),
    #[error("failed to run {runc}: {source}")]
    Exec {
        runc: PathBuf,
        source: std::io::Error,
    },
}

/// runc's global options that take a value (`runc --help`, 1.1); the
/// others are flags. The first argument that is neither is the command.
const GLOBAL_WITH_VALUE: [&str; 5] = ["root", "log", "log-format", "criu", "rootless"];

/// The commands that create a container (and run its createRuntime
/// hooks): they get the hook.
const CREATING: [&str; 3] = ["create", "run", "restore"];

/// runc's other commands (1.1), passed on as they are. Anything else is
/// refused: an option this wrapper does not know, taking a value, would
/// otherwise make it read the value as the command and let a `create`
/// after it through without the hook.
const PASSED_ON: [&str; 16] = [
    "checkpoint",
    "delete",
    "events",
    "exec",
    "features",
    "help",
    "h",
    "init",
    "kill",
    "list",
    "pause",
    "ps",
    "resume",
    "spec",
    "start",
    "state",
];

/// What the wrapper does to runc's arguments: where the bundle is, if the
/// command creates a container.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The bundle whose config.json gets the hooks; `None`: runc as is.
    pub bundle: Option<PathBuf>,
}

/// Reads runc's command line (urfave/cli's: `-x` and `--x` alike, a
/// value after the option or after `=`).
pub fn plan(args: &[OsString], cwd: &Path) -> Result<Plan, OciRuntimeError> {
    let text: Vec<&str> = args
        .iter()
        .map(|a| a.to_str().ok_or(OciRuntimeError::NotUtf8))
        .collect::<Result<_, _>>()?;
    let option = |arg: &str| -> Option<String> {
        let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
        (!name.is_empty()).then(|| name.to_owned())
    };
    let mut i = 0;
    let command = loop {
        let Some(arg) = text.get(i) else {
            // Options alone (`--version`, `--help`): nothing is created.
            return Ok(Plan { bundle: None });
        };
        match option(arg) {
            Some(name) => {
                i += if !name.contains('=') && GLOBAL_WITH_VALUE.contains(&name.as_str()) {
                    2
                } else {
                    1
                };
            }
            None => break *arg,
        }
    };
    if PASSED_ON.contains(&command) {
        return Ok(Plan { bundle: None });
    }
    if !CREATING.contains(&command) {
        return Err(OciRuntimeError::UnknownCommand(command.to_owned()));
    }
    let rest = &text[i + 1..];
    let mut bundle = None;
    for (j, arg) in rest.iter().enumerate() {
        let Some(name) = option(arg) else { continue };
        match name.split_once('=') {
            Some(("bundle" | "b", value)) => bundle = Some(PathBuf::from(value)),
            None if name == "bundle" || name == "b" => {
                if let Some(value) = rest.get(j + 1) {
                    bundle = Some(PathBuf::from(value));
                }
            }
            _ => {}
        }
    }
    // runc's default bundle is the folder it runs in.
    let bundle = match bundle {
        Some(b) if b.is_relative() => cwd.join(b),
        Some(b) => b,
        None => cwd.to_owned(),
    };
    Ok(Plan {
        bundle: Some(bundle),
    })
}

/// The bundle's configuration with the hooks added (once: a config that
/// has them already is left as it is).
pub fn with_hooks(mut config: Value, hook: &Value) -> Result<Value, String> {
    let root = config
        .as_object_mut()
        .ok_or("the configuration is not a JSON object")?;
    let hooks = root
        .entry("hooks")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or("`hooks` is not an object")?;
    for stage in ["createRuntime", "poststop"] {
        let list = hooks
            .entry(stage)
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .ok_or_else(|| format!("`hooks.{stage}` is not a list"))?;
        if !list.contains(hook) {
            list.push(hook.clone());
        }
    }
    Ok(config)
}

/// What the added hook is told.
pub struct Hook<'a> {
    pub admin_socket: &'a Path,
    pub wait: &'a str,
    pub source: &'a RuntimeSource,
    pub exempt_namespaces: &'a [String],
}

impl Hook<'_> {
    /// The hook entry of the OCI configuration: this agentguard's
    /// `oci-hook`, told whose the container is (Docker's, or a Kubernetes
    /// pod's) and where that runtime's record of it is.
    fn entry(&self, own: &Path) -> Result<Value, OciRuntimeError> {
        let (flag, path) = match self.source {
            RuntimeSource::Docker(p) => ("--docker-root", p),
            RuntimeSource::Cri(p) => ("--cri-socket", p),
        };
        let path = path
            .to_str()
            .filter(|_| path.is_absolute())
            .ok_or_else(|| OciRuntimeError::RecordPath {
                flag,
                path: path.to_owned(),
            })?;
        let mut args = vec![
            json!("agentguard"),
            json!("--admin-socket"),
            json!(self.admin_socket),
            json!("oci-hook"),
            json!("--wait"),
            json!(self.wait),
            json!(flag),
            json!(path),
        ];
        for ns in self.exempt_namespaces {
            args.extend([json!("--exempt-namespace"), json!(ns)]);
        }
        Ok(json!({ "path": own, "args": args }))
    }
}

/// Adds the hooks where runc creates a container, then becomes runc.
/// Returns only on failure.
pub fn run(
    hook: &Hook<'_>,
    runc: &Path,
    args: &[OsString],
) -> Result<std::convert::Infallible, OciRuntimeError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    if let Some(bundle) = plan(args, &cwd)?.bundle {
        let own = std::env::current_exe().map_err(OciRuntimeError::OwnPath)?;
        add_hooks(&bundle.join("config.json"), &hook.entry(&own)?)?;
    }
    let source = std::process::Command::new(runc).args(args).exec();
    Err(OciRuntimeError::Exec {
        runc: runc.to_owned(),
        source,
    })
}

fn add_hooks(path: &Path, hook: &Value) -> Result<(), OciRuntimeError> {
    let read_err = |source| OciRuntimeError::Read {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read(path).map_err(read_err)?;
    let mode = std::fs::metadata(path)
        .map_err(read_err)?
        .permissions()
        .mode()
        & 0o7777;
    let bad = |why: String| OciRuntimeError::Config {
        path: path.to_owned(),
        why,
    };
    let config: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let config = with_hooks(config, hook).map_err(bad)?;
    let text = serde_json::to_vec(&config).map_err(|e| bad(e.to_string()))?;
    crate::atomic_file::replace(path, &text, mode)?;
    Ok(())
}

#[cfg(test)]
mod tests;
