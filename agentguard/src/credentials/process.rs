//! Credential helpers: the convention of AWS's `credential_process`, git
//! credential helpers and kubectl exec plugins, so that Vault, 1Password,
//! cloud CLIs and in-house brokers plug in without agentguard speaking each
//! one's API.
//!
//! The helper is an executable owned by root (the daemon's user) that no
//! one else may change, nor the folders it sits in. It runs as the daemon
//! does, outside every agent's cgroup (the daemon refuses to run inside
//! one, and children stay in their parent's cgroup), in a process group of
//! its own, with standard input closed, `/` as its working folder and an
//! environment holding only `PATH`, `AGENTGUARD_AGENT` and
//! `AGENTGUARD_CREDENTIAL`: nothing of an agent's reaches it. It has
//! `timeout` to finish, or its group is killed. Its standard output is the
//! secret: printed whole (one trailing newline dropped) or as JSON
//! `{"secret": "...", "expires_at": "<RFC 3339>"}` (or `"expires_in":
//! seconds`). That output is never logged: only the exit status and the
//! last line of standard error appear in errors.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, SystemTime},
};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::Secret;
use crate::policy::ProcessSource;

/// One helper credential of one agent, with its output cached until it
/// expires (or for the source's `ttl`).
pub(super) struct Helper {
    source: ProcessSource,
    cache: super::cache::ExpiringCache<(), Secret, ProcessError>,
}

impl std::fmt::Debug for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper")
            .field("command", &self.source.command[0])
            .finish_non_exhaustive()
    }
}

impl Helper {
    /// Checks the executable now (see [`check_executable`]).
    pub(super) fn new(source: &ProcessSource) -> Result<Self, ProcessError> {
        check_executable(source)?;
        Ok(Self {
            source: source.clone(),
            cache: super::cache::ExpiringCache::new(1),
        })
    }

    pub(super) async fn secret(&self, agent: &str, id: &str) -> Result<Secret, ProcessError> {
        self.cache
            .get(&(), || async {
                let output = run(&self.source, agent, id).await?;
                parse_secret(&self.source, &output)
            })
            .await
    }

    pub(super) fn known_secrets(&self) -> Vec<Secret> {
        self.cache.current()
    }

    pub(super) fn forget(&self) {
        self.cache.forget(|_| true);
    }

    pub(super) fn runs(&self) -> u64 {
        self.cache.fetches()
    }
}

/// What a helper may print: far more than any secret or credential JSON.
const MAX_OUTPUT: u64 = 64 * 1024;
/// How much of standard error is kept for an error message.
const MAX_STDERR_SHOWN: usize = 200;
/// The only variable a helper inherits from the daemon's world.
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a helper gave no secret. Never holds its standard output.
#[derive(Debug, Clone, Error)]
pub enum ProcessError {
    #[error("refusing to run {path}: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("failed to start {path}: {reason}")]
    Spawn { path: PathBuf, reason: String },
    #[error("{path} did not finish within {} s and was killed", .timeout.as_secs())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("{path} failed ({status}){}", .stderr.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    Failed {
        path: PathBuf,
        status: String,
        /// The last line of its standard error, cut and made printable.
        stderr: Option<String>,
    },
    #[error("{path} printed more than {MAX_OUTPUT} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}'s output is unusable: {reason}")]
    BadOutput { path: PathBuf, reason: String },
}

/// Checks that `source`'s executable is one only root can change: a
/// regular, executable file owned by this process's user (root, for the
/// daemon), writable by no one else, in folders no one else can change
/// entries of (a sticky folder such as `/tmp` is enough). Run at load, so
/// that `policy check` and a reload refuse an unsafe helper, and again
/// before each run.
pub fn check_executable(source: &ProcessSource) -> Result<(), ProcessError> {
    let path = Path::new(&source.command[0]);
    let unsafe_ = |reason: String| ProcessError::Unsafe {
        path: path.to_owned(),
        reason,
    };
    let euid = nix::unistd::geteuid().as_raw();
    let meta = std::fs::metadata(path).map_err(|e| unsafe_(e.to_string()))?;
    if !meta.is_file() {
        return Err(unsafe_("it is not a regular file".into()));
    }
    if meta.uid() != euid {
        return Err(unsafe_(format!(
            "it is owned by uid {}, not by root (this process's uid {euid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_(format!(
            "its mode {:04o} lets group or others change it",
            meta.mode() & 0o7777
        )));
    }
    if meta.mode() & 0o100 == 0 {
        return Err(unsafe_("it is not executable by its owner".into()));
    }
    // Whoever may rename entries in a folder on the way could put another
    // program in its place.
    for dir in path.ancestors().skip(1) {
        let meta =
            std::fs::metadata(dir).map_err(|e| unsafe_(format!("{}: {e}", dir.display())))?;
        let owner_ok = meta.uid() == euid || meta.uid() == 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if !owner_ok || (meta.mode() & 0o022 != 0 && !sticky) {
            return Err(unsafe_(format!(
                "folder {} may be changed by uid {} or by group or others (mode {:04o})",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Runs the helper once for `agent`'s credential `id` and returns its
/// standard output (a secret: never logged).
pub async fn run(source: &ProcessSource, agent: &str, id: &str) -> Result<Secret, ProcessError> {
    check_executable(source)?;
    let path = PathBuf::from(&source.command[0]);
    let mut command = tokio::process::Command::new(&path);
    command
        .args(&source.command[1..])
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("AGENTGUARD_AGENT", agent)
        .env("AGENTGUARD_CREDENTIAL", id)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: on timeout, whatever it started goes too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| ProcessError::Spawn {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let pid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let kill_group = || {
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    let finished = tokio::time::timeout(source.timeout, async {
        let out = async {
            let out = read_bounded(stdout).await;
            if out.is_err() {
                // Past the bound: stopped now, not waited for (it may be
                // blocked writing the rest, holding standard error open).
                kill_group();
            }
            out
        };
        let (out, err) = tokio::join!(out, read_bounded(stderr));
        (out, err, child.wait().await)
    })
    .await;
    let (stdout, stderr, status) = match finished {
        Ok(done) => done,
        Err(_) => {
            kill_group();
            return Err(ProcessError::Timeout {
                path,
                timeout: source.timeout,
            });
        }
    };
    if stdout.is_err() {
        return Err(ProcessError::TooLarge { path });
    }
    let status = status.map_err(|e| ProcessError::Spawn {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !status.success() {
        return Err(ProcessError::Failed {
            path,
            status: status.to_string(),
            stderr: stderr.ok().as_deref().and_then(last_line),
        });
    }
    let stdout = stdout.map_err(|_| ProcessError::TooLarge { path: path.clone() })?;
    let text = String::from_utf8(stdout).map_err(|_| ProcessError::BadOutput {
        path: path.clone(),
        reason: "it is not UTF-8".into(),
    })?;
    Ok(Secret::new(text))
}

/// The helper's output as a secret and how long it may be used: JSON
/// (`secret` with `expires_at` or `expires_in`) or the whole text, used for
/// `default_ttl`.
pub fn parse_secret(
    source: &ProcessSource,
    output: &Secret,
) -> Result<(Secret, Duration), ProcessError> {
    let bad = |reason: &str| ProcessError::BadOutput {
        path: PathBuf::from(&source.command[0]),
        reason: reason.to_owned(),
    };
    let text = output.expose();
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if !text.trim_start().starts_with('{') {
        if text.is_empty() {
            return Err(bad("it printed nothing"));
        }
        return Ok((Secret::new(text.to_owned()), source.ttl));
    }
    // Field by field with fixed messages: serde's own errors quote input.
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|_| bad("it is not valid JSON"))?;
    let secret = match json.get("secret").and_then(|s| s.as_str()) {
        Some(s) if !s.is_empty() => Secret::new(s.to_owned()),
        _ => return Err(bad("the JSON has no \"secret\" string")),
    };
    let lifetime = lifetime(&json, "expires_at", "expires_in")
        .map_err(|r| bad(&r))?
        .unwrap_or(source.ttl);
    Ok((secret, lifetime))
}

/// AWS credentials as `credential_process` prints them (`Version` 1).
#[derive(Clone)]
pub struct AwsProcessCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub lifetime: Option<Duration>,
}

/// Parses AWS's `credential_process` JSON (`Version`, `AccessKeyId`,
/// `SecretAccessKey`, optional `SessionToken` and `Expiration`).
pub fn parse_aws(
    source: &ProcessSource,
    output: &Secret,
) -> Result<AwsProcessCredentials, ProcessError> {
    let bad = |reason: &str| ProcessError::BadOutput {
        path: PathBuf::from(&source.command[0]),
        reason: reason.to_owned(),
    };
    let json: serde_json::Value = serde_json::from_str(output.expose())
        .map_err(|_| bad("it is not credential_process JSON"))?;
    if json.get("Version").and_then(|v| v.as_u64()) != Some(1) {
        return Err(bad("credential_process JSON must have \"Version\": 1"));
    }
    let field = |name: &str| -> Option<Secret> {
        json.get(name)
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.to_owned()))
    };
    Ok(AwsProcessCredentials {
        access_key_id: field("AccessKeyId").ok_or_else(|| bad("no AccessKeyId"))?,
        secret_access_key: field("SecretAccessKey").ok_or_else(|| bad("no SecretAccessKey"))?,
        session_token: field("SessionToken"),
        lifetime: lifetime(&json, "Expiration", "").map_err(|r| bad(&r))?,
    })
}

/// The time left until `at` (RFC 3339) or `in_` (seconds), if given.
fn lifetime(json: &serde_json::Value, at: &str, in_: &str) -> Result<Option<Duration>, String> {
    if let Some(v) = json.get(at).filter(|v| !v.is_null()) {
        let when = v
            .as_str()
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
            .ok_or_else(|| format!("{at} is not an RFC 3339 time"))?;
        return match when.duration_since(SystemTime::now()) {
            Ok(left) if left >= Duration::from_secs(1) => Ok(Some(left)),
            _ => Err(format!("{at} is already past")),
        };
    }
    if let Some(v) = json.get(in_).filter(|v| !v.is_null() && !in_.is_empty()) {
        let secs = v
            .as_u64()
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("{in_} is not a positive number of seconds"))?;
        return Ok(Some(Duration::from_secs(secs)));
    }
    Ok(None)
}

async fn read_bounded(pipe: Option<impl AsyncRead + Unpin>) -> Result<Vec<u8>, ()> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        pipe.take(MAX_OUTPUT + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|_| ())?;
    }
    if buf.len() as u64 > MAX_OUTPUT {
        return Err(());
    }
    Ok(buf)
}

/// The last non-empty line, cut short, control characters replaced: for
/// an error message an operator reads.
fn last_line(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    let mut shown: String = line
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_STDERR_SHOWN)
        .collect();
    if line.chars().count() > MAX_STDERR_SHOWN {
        shown.push('…');
    }
    Some(shown)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A helper script in a fresh root-owned folder, mode 0700.
    fn helper(dir: &Path, body: &str) -> ProcessSource {
        let path = dir.join("helper");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        ProcessSource {
            command: vec![path.display().to_string(), "itsm".into()],
            timeout: Duration::from_secs(5),
            ttl: Duration::from_secs(300),
        }
    }

    fn tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[tokio::test]
    async fn plain_output_is_the_secret_and_the_environment_is_clean() {
        let dir = tempdir();
        // It prints its argument, what it can see of the daemon's
        // environment, and its working folder.
        let source = helper(
            dir.path(),
            "printf 'tok-%s|%s|%s|%s|%s\\n' \"$1\" \"$AGENTGUARD_AGENT\" \"$AGENTGUARD_CREDENTIAL\" \"$(env | sort | tr '\\n' ,)\" \"$PWD\"",
        );
        let out = run(&source, "bot", "itsm-token").await.unwrap();
        let (secret, ttl) = parse_secret(&source, &out).unwrap();
        let fields: Vec<&str> = secret.expose().split('|').collect();
        assert_eq!(fields[..3], ["tok-itsm", "bot", "itsm-token"]);
        let env: Vec<&str> = fields[3].split(',').filter(|v| !v.is_empty()).collect();
        for var in &env {
            let name = var.split('=').next().unwrap();
            // sh itself sets PWD, SHLVL and _.
            assert!(
                [
                    "PATH",
                    "AGENTGUARD_AGENT",
                    "AGENTGUARD_CREDENTIAL",
                    "PWD",
                    "SHLVL",
                    "_"
                ]
                .contains(&name),
                "{var} leaked into the helper's environment"
            );
        }
        assert_eq!(fields[4], "/");
        assert_eq!(ttl, Duration::from_secs(300));
    }

    #[tokio::test]
    async fn json_output_gives_secret_and_expiry() {
        let dir = tempdir();
        let source = helper(dir.path(), r#"echo '{"secret":"s3cr:t","expires_in":120}'"#);
        let out = run(&source, "bot", "x").await.unwrap();
        let (secret, ttl) = parse_secret(&source, &out).unwrap();
        assert_eq!((secret.expose(), ttl), ("s3cr:t", Duration::from_secs(120)));

        let at = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(600));
        let out = Secret::new(format!(r#"{{"secret":"v","expires_at":"{at}"}}"#));
        let (_, ttl) = parse_secret(&source, &out).unwrap();
        assert!(ttl > Duration::from_secs(590) && ttl <= Duration::from_secs(600));

        for (bad, why) in [
            (r#"{"secret":""}"#, "no \"secret\""),
            (
                r#"{"secret":"v","expires_at":"2001-01-01T00:00:00Z"}"#,
                "already past",
            ),
            (r#"{"secret":"v","expires_in":"soon"}"#, "seconds"),
            ("{not json", "not valid JSON"),
            ("", "printed nothing"),
        ] {
            let err = parse_secret(&source, &Secret::new(bad.into()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("\"v\""), "{err}");
        }
    }

    #[tokio::test]
    async fn failure_shows_status_and_last_stderr_line_never_stdout() {
        let dir = tempdir();
        let source = helper(
            dir.path(),
            "echo leaked-stdout-value; echo 'vault: first' >&2; echo 'vault: permission denied' >&2; exit 3",
        );
        let err = run(&source, "bot", "x").await.unwrap_err().to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.ends_with("vault: permission denied"), "{err}");
        assert!(!err.contains("leaked-stdout-value"), "{err}");
    }

    #[tokio::test]
    async fn a_helper_over_its_time_is_killed_with_what_it_started() {
        let dir = tempdir();
        let marker = dir.path().join("still-running");
        let mut source = helper(
            dir.path(),
            &format!("(sleep 3; touch {}) & sleep 30", marker.display()),
        );
        source.timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let err = run(&source, "bot", "x").await.unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The background child was in its group and died with it.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!marker.exists(), "the helper's child outlived the timeout");
    }

    #[tokio::test]
    async fn output_past_the_bound_is_refused() {
        let dir = tempdir();
        let source = helper(dir.path(), "head -c 70000 /dev/zero | tr '\\0' a");
        assert!(matches!(
            run(&source, "bot", "x").await,
            Err(ProcessError::TooLarge { .. })
        ));
    }

    #[test]
    fn only_root_owned_unwritable_helpers_run() {
        // chown to another user needs root; without it this fails rather
        // than pass having proved nothing.
        assert!(
            nix::unistd::geteuid().is_root(),
            "run as root: `sudo -E cargo xtask test`"
        );
        let dir = tempdir();
        let source = helper(dir.path(), "echo x");
        assert!(check_executable(&source).is_ok());
        let path = Path::new(&source.command[0]);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o722)).unwrap();
        let err = check_executable(&source).unwrap_err().to_string();
        assert!(err.contains("0722"), "{err}");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = check_executable(&source).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        // A folder others may change.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_executable(&source).unwrap_err().to_string();
        assert!(err.contains("folder"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let missing = ProcessSource {
            command: vec![dir.path().join("nope").display().to_string()],
            ..source
        };
        assert!(check_executable(&missing).is_err());
    }

    #[test]
    fn aws_credential_process_json() {
        let source = ProcessSource {
            command: vec!["/bin/true".into()],
            timeout: Duration::from_secs(1),
            ttl: Duration::from_secs(60),
        };
        let at = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(900));
        let out = Secret::new(format!(
            r#"{{"Version":1,"AccessKeyId":"AKIDEXAMPLE","SecretAccessKey":"sk","SessionToken":"st","Expiration":"{at}"}}"#
        ));
        let c = parse_aws(&source, &out).unwrap();
        assert_eq!(c.access_key_id.expose(), "AKIDEXAMPLE");
        assert_eq!(c.session_token.unwrap().expose(), "st");
        assert!(c.lifetime.unwrap() > Duration::from_secs(890));
        let err = parse_aws(&source, &Secret::new(r#"{"Version":2}"#.into()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("Version"), "{err}");
    }
}
