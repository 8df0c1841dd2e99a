//! Checkpoints leave the host as they are signed, so that the record can be
//! checked against something its host cannot rewrite.
//!
//! Every anchor kept beside the data can be cut or replaced with it: an
//! intruder who deletes the tail of the chain together with the checkpoints
//! after the cut, or swaps in a freshly made chain, leaves a store that is
//! consistent in itself. A checkpoint exported elsewhere (another mount, a
//! write-once target, a collector) fixes the chain's hash at its sequence
//! number for good: `agentguard audit verify --anchor` then finds every
//! event up to it missing, or the chain replaced.
//!
//! Each checkpoint is exported, once committed, as one JSON object
//! ([`Exported`]): a new file `checkpoint-<seq>-<hash prefix>.json` in
//! `--audit-anchor-dir` (written whole, then linked exclusively, never overwritten,
//! so an append-only or write-once target works), the standard input of
//! `--audit-anchor-command` (run by `/bin/sh -c`, bounded in time), and an
//! OTLP log record (see [`super::otlp`]). The export runs on its own thread
//! and never holds up the writer: when it falls behind, the newest
//! checkpoint replaces the one waiting (the newest is the one that covers
//! the most).

use std::{
    fs,
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, error, warn};

use super::{chain::from_hex, signing::Verifier, store::Checkpoint};

/// What an exported checkpoint says it is.
pub const FORMAT: &str = "agentguard-audit-checkpoint-v1";
/// The longest `--audit-anchor-command` may run for one checkpoint.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// What is kept of the command's error output for the log.
const STDERR_KEPT: u64 = 4096;
/// Anchor files larger than this are not checkpoints.
const MAX_ANCHOR_FILE: u64 = 64 * 1024;

#[derive(Debug, Error)]
pub enum AnchorError {
    #[error("--audit-anchor-dir {0}: not a directory (is the mount it lives on there?)")]
    NotADir(PathBuf),
    #[error("failed to read anchor {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not an exported agentguard checkpoint: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "anchor {path} (checkpoint {seq}) is not signed by the trusted public key {key_id}: forged, damaged, or from another key"
    )]
    Unsigned {
        path: PathBuf,
        seq: i64,
        key_id: String,
    },
    #[error("no exported checkpoint (checkpoint-*.json) in {0}")]
    Empty(PathBuf),
    #[error("failed to start the checkpoint export thread: {0}")]
    Thread(io::Error),
}

/// Where checkpoints go as they are signed.
#[derive(Debug, Clone, Default)]
pub struct AnchorConfig {
    /// A folder (on another mount, or a write-once target) that gets one
    /// new file per checkpoint.
    pub dir: Option<PathBuf>,
    /// A shell command that gets each checkpoint on its standard input.
    pub command: Option<String>,
}

impl AnchorConfig {
    pub fn is_empty(&self) -> bool {
        self.dir.is_none() && self.command.is_none()
    }

    /// Refuses a folder that is not there: exporting into the empty mount
    /// point of a missing file system would keep the anchors on the host.
    pub fn validate(&self) -> Result<(), AnchorError> {
        match &self.dir {
            Some(dir) if !dir.is_dir() => Err(AnchorError::NotADir(dir.clone())),
            _ => Ok(()),
        }
    }
}

/// A checkpoint as it leaves the host: the anchor file, the command's
/// input, the OTLP log record's body. `audit verify --anchor` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub format: String,
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
}

/// The JSON text of `c` as exported.
pub fn to_json(c: &Checkpoint) -> String {
    let exported = Exported {
        format: FORMAT.to_owned(),
        checkpoint: c.clone(),
    };
    // Strings and integers only: serialising cannot fail.
    serde_json::to_string(&exported).unwrap_or_default()
}

/// `checkpoint-<seq, 20 digits>-<16 hex of the hash>.json`: names sort by
/// sequence number, and two different chains never share one.
pub fn file_name(c: &Checkpoint) -> String {
    let prefix: String = c.hash.chars().take(16).collect();
    format!("checkpoint-{:020}-{prefix}.json", c.seq)
}

/// The exported checkpoints at `path`: the one file, or every
/// `checkpoint-*.json` in the folder, ordered by sequence number.
pub fn load(path: &Path) -> Result<Vec<(PathBuf, Checkpoint)>, AnchorError> {
    let read_err = |source| AnchorError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mut out = Vec::new();
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("checkpoint-") && name.ends_with(".json") {
                out.push(read_one(&entry.path())?);
            }
        }
        if out.is_empty() {
            return Err(AnchorError::Empty(path.to_owned()));
        }
    } else {
        out.push(read_one(path)?);
    }
    out.sort_by_key(|(_, c)| c.seq);
    Ok(out)
}

fn read_one(path: &Path) -> Result<(PathBuf, Checkpoint), AnchorError> {
    let format_err = |reason: String| AnchorError::Format {
        path: path.to_owned(),
        reason,
    };
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_ANCHOR_FILE).read_to_string(&mut text))
        .map_err(|source| AnchorError::Read {
            path: path.to_owned(),
            source,
        })?;
    let exported: Exported =
        serde_json::from_str(text.trim()).map_err(|e| format_err(e.to_string()))?;
    if exported.format != FORMAT {
        return Err(format_err(format!(
            "format {:?}, expected {FORMAT:?}",
            exported.format
        )));
    }
    let c = exported.checkpoint;
    if c.seq < 1 || from_hex(&c.hash).is_none() {
        return Err(format_err("no valid sequence number and hash".into()));
    }
    Ok((path.to_owned(), c))
}

/// Each anchor must be signed by the trusted key: an anchor is only worth
/// what its signature is, and an unsigned one could claim anything.
pub fn check_signatures(
    anchors: &[(PathBuf, Checkpoint)],
    key: &Verifier,
) -> Result<(), AnchorError> {
    for (path, c) in anchors {
        let signed =
            from_hex(&c.hash).is_some_and(|h| key.verify(c.seq, &h, &c.time, &c.signature));
        if !signed {
            return Err(AnchorError::Unsigned {
                path: path.clone(),
                seq: c.seq,
                key_id: key.key_id(),
            });
        }
    }
    Ok(())
}

/// Export counters (`status`, metrics).
#[derive(Debug, Default)]
pub struct AnchorStats {
    /// The newest checkpoint exported to every configured target; 0: none.
    pub last_exported_seq: AtomicI64,
    pub failures: AtomicU64,
}

#[derive(Default)]
struct Slot {
    pending: Option<Checkpoint>,
    closed: bool,
}

type Shared = Arc<(Mutex<Slot>, Condvar)>;

/// The export thread.
pub struct Exporter {
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    pub fn start(cfg: AnchorConfig, stats: Arc<AnchorStats>) -> Result<Self, AnchorError> {
        cfg.validate()?;
        let shared: Shared = Arc::default();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("audit-anchor".into())
                .spawn(move || run(&cfg, &shared, &stats))
                .map_err(AnchorError::Thread)?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Hands `c` to the export thread; never waits.
    pub fn offer(&self, c: &Checkpoint) {
        let (slot, ready) = &*self.shared;
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(older) = slot.pending.replace(c.clone()) {
            debug!(
                skipped = older.seq,
                newer = c.seq,
                "checkpoint export behind; the newer checkpoint replaces the waiting one"
            );
        }
        ready.notify_one();
    }

    /// Exports what is waiting and stops, within `timeout`.
    pub fn finish(mut self, timeout: Duration) {
        {
            let (slot, ready) = &*self.shared;
            slot.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            ready.notify_one();
        }
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() > deadline {
                error!(
                    "checkpoint export did not finish in time; the last checkpoint may not have left the host"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
    }
}

fn run(cfg: &AnchorConfig, shared: &Shared, stats: &AnchorStats) {
    let (slot, ready) = &**shared;
    loop {
        let next = {
            let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
            while s.pending.is_none() && !s.closed {
                s = ready.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            match s.pending.take() {
                Some(c) => c,
                None => return,
            }
        };
        match export(cfg, &next) {
            Ok(()) => {
                stats
                    .last_exported_seq
                    .fetch_max(next.seq, Ordering::Relaxed);
                debug!(seq = next.seq, "checkpoint exported");
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                warn!(seq = next.seq, error = %e, "checkpoint export failed; the next checkpoint will be tried");
            }
        }
    }
}

/// One checkpoint to every configured target; the first failure wins, but
/// every target is tried.
fn export(cfg: &AnchorConfig, c: &Checkpoint) -> Result<(), String> {
    let json = to_json(c);
    let mut result = Ok(());
    if let Some(dir) = &cfg.dir
        && let Err(e) = write_anchor(dir, c, &json)
    {
        result = Err(e);
    }
    if let Some(command) = &cfg.command
        && let Err(e) = run_command(command, c, &json)
    {
        result = result.and(Err(e));
    }
    result
}

/// Written whole under a hidden name, synced, then linked to its final
/// name, which fails rather than overwrite (a write-once target would
/// refuse anyway): a reader listing the folder (`audit verify --anchor
/// DIR`, a shipper) never sees a `checkpoint-*.json` that is still being
/// written. The folder is synced before it counts as exported. The same
/// checkpoint exported again (at a restart) is fine.
fn write_anchor(dir: &Path, c: &Checkpoint, json: &str) -> Result<(), String> {
    let name = file_name(c);
    let path = dir.join(&name);
    let partial = dir.join(format!(".{name}.partial"));
    let content = format!("{json}\n");
    // A partial file left by a crash mid-write is ours to replace.
    match fs::remove_file(&partial) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&partial)(e)),
        _ => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&partial)
        .map_err(at(&partial))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(at(&partial))?;
    let linked = fs::hard_link(&partial, &path);
    let _ = fs::remove_file(&partial);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let existing = fs::read_to_string(&path).map_err(at(&path))?;
            if existing != content {
                return Err(format!(
                    "{} exists with other content: a different checkpoint {} was exported before",
                    path.display(),
                    c.seq
                ));
            }
        }
        Err(e) => return Err(at(&path)(e)),
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(at(dir))
}

/// An I/O error with the path it happened at.
fn at(path: &Path) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// `/bin/sh -c COMMAND` with the checkpoint on standard input and in
/// `AGENTGUARD_CHECKPOINT_*`; it must exit 0 within [`COMMAND_TIMEOUT`].
fn run_command(command: &str, c: &Checkpoint, json: &str) -> Result<(), String> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("AGENTGUARD_CHECKPOINT_SEQ", c.seq.to_string())
        .env("AGENTGUARD_CHECKPOINT_HASH", &c.hash)
        .env("AGENTGUARD_CHECKPOINT_FILE", file_name(c))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("--audit-anchor-command: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input still gets to run.
        let _ = stdin.write_all(format!("{json}\n").as_bytes());
    }
    let stderr = child.stderr.take();
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "--audit-anchor-command did not finish within {COMMAND_TIMEOUT:?}; killed"
                ));
            }
            Err(e) => return Err(format!("--audit-anchor-command: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut said = String::new();
    if let Some(err) = stderr {
        let _ = err.take(STDERR_KEPT).read_to_string(&mut said);
    }
    Err(format!(
        "--audit-anchor-command exited with {status}: {}",
        said.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::signing::{KEY_FILE, Signer, public_key_path};

    fn checkpoint(signer: &Signer, seq: i64) -> Checkpoint {
        let hash = [seq as u8; 32];
        let time = "2026-01-01T00:00:00.000000Z".to_owned();
        Checkpoint {
            seq,
            hash: crate::audit::chain::to_hex(&hash),
            signature: signer.sign(seq, &hash, &time),
            time,
            key_id: signer.key_id(),
        }
    }

    #[test]
    fn checkpoints_reach_the_folder_and_the_command_and_load_back() {
        let keys = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&keys.path().join(KEY_FILE), &[]).unwrap();
        let key = Verifier::load(&public_key_path(&keys.path().join(KEY_FILE))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let cfg = AnchorConfig {
            dir: Some(dir.path().to_owned()),
            command: Some(format!(
                "cat > {}/cmd-$AGENTGUARD_CHECKPOINT_SEQ.json",
                out.path().display()
            )),
        };
        let stats = Arc::new(AnchorStats::default());
        let exporter = Exporter::start(cfg.clone(), stats.clone()).unwrap();
        for seq in [5, 10] {
            exporter.offer(&checkpoint(&signer, seq));
            // One at a time, so neither replaces the other.
            let deadline = Instant::now() + Duration::from_secs(10);
            while stats.last_exported_seq.load(Ordering::Relaxed) < seq {
                assert!(Instant::now() < deadline, "not exported");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Exported again (a restart): fine.
        exporter.offer(&checkpoint(&signer, 10));
        exporter.finish(Duration::from_secs(10));
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0);

        let anchors = load(dir.path()).unwrap();
        assert_eq!(
            anchors.iter().map(|(_, c)| c.seq).collect::<Vec<_>>(),
            [5, 10]
        );
        check_signatures(&anchors, &key).unwrap();
        let by_command = load(&out.path().join("cmd-10.json")).unwrap();
        assert_eq!(by_command[0].1, anchors[1].1);

        // Edited: no longer signed.
        let mut forged = anchors[1].1.clone();
        forged.seq = 11;
        let forged_path = dir.path().join("checkpoint-forged.json");
        fs::write(&forged_path, to_json(&forged)).unwrap();
        assert!(matches!(
            check_signatures(&load(dir.path()).unwrap(), &key),
            Err(AnchorError::Unsigned { seq: 11, .. })
        ));
        // A different checkpoint under an exported one's name is a failure.
        let mut other = checkpoint(&signer, 10);
        other.time = "2026-01-02T00:00:00.000000Z".into();
        assert!(write_anchor(dir.path(), &other, &to_json(&other)).is_err());
    }

    #[test]
    fn a_failing_command_and_a_missing_folder_are_reported() {
        let keys = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(&keys.path().join(KEY_FILE), &[]).unwrap();
        let cfg = AnchorConfig {
            dir: None,
            command: Some("echo nope >&2; exit 3".into()),
        };
        let err = export(&cfg, &checkpoint(&signer, 1)).unwrap_err();
        assert!(err.contains("nope"), "{err}");
        let missing = AnchorConfig {
            dir: Some("/nonexistent/agentguard-anchors".into()),
            command: None,
        };
        assert!(matches!(missing.validate(), Err(AnchorError::NotADir(_))));
        assert!(matches!(
            load(Path::new("/nonexistent/anchor.json")),
            Err(AnchorError::Read { .. })
        ));
    }
}
