//! The chain status page's verification: the whole chain checked as
//! `agentguard audit verify` checks it (same code, the host's public key,
//! the exported checkpoints when `--audit-anchor-dir` is set), at start,
//! every [`EVERY`], and when someone asks; the latest result is kept.

use std::{
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::audit::{
    self, Store,
    signing::Verifier,
    verify::{self, Break, Report},
};

/// How often the chain is verified unasked.
pub const EVERY: Duration = Duration::from_secs(300);

/// One verification's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ChainCheck {
    /// RFC 3339: when it finished.
    pub time: String,
    pub duration_ms: u64,
    /// `intact`, `broken`, or `error` (the store or key could not be read).
    pub result: &'static str,
    pub report: Option<Report>,
    /// The first break: its sequence number and why.
    #[serde(rename = "break")]
    pub broken: Option<Break>,
    pub error: Option<String>,
    /// The key the checkpoints were checked against (hex).
    pub key_id: Option<String>,
    /// Exported checkpoints checked, if `--audit-anchor-dir` is set.
    pub anchors: usize,
}

pub struct ChainMonitor {
    db: PathBuf,
    public_key: PathBuf,
    anchor_dir: Option<PathBuf>,
    last: Mutex<Option<ChainCheck>>,
    /// One verification at a time.
    running: tokio::sync::Mutex<()>,
}

impl ChainMonitor {
    pub fn new(db: PathBuf, public_key: PathBuf, anchor_dir: Option<PathBuf>) -> Self {
        Self {
            db,
            public_key,
            anchor_dir,
            last: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn last(&self) -> Option<ChainCheck> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Verifies now (off the async threads) and keeps the result.
    pub async fn verify_now(self: &std::sync::Arc<Self>) -> ChainCheck {
        let _one = self.running.lock().await;
        let this = self.clone();
        let check = tokio::task::spawn_blocking(move || this.check())
            .await
            .unwrap_or_else(|e| {
                failed(Instant::now(), None, format!("verification panicked: {e}"))
            });
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(check.clone());
        check
    }

    /// At start and every [`EVERY`].
    pub async fn run(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            self.verify_now().await;
        }
    }

    fn check(&self) -> ChainCheck {
        let start = Instant::now();
        let key = match Verifier::load(&self.public_key) {
            Ok(k) => k,
            Err(e) => return failed(start, None, e.to_string()),
        };
        let key_id = Some(key.key_id());
        let anchors = match &self.anchor_dir {
            None => Vec::new(),
            Some(dir) => match audit::anchor::load(dir)
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    audit::anchor::check_signatures(&a, &key).map_err(|e| e.to_string())?;
                    Ok(a)
                }) {
                Ok(a) => a.into_iter().map(|(_, c)| c).collect(),
                Err(e) => return failed(start, key_id, e),
            },
        };
        let outcome = Store::open_read_only(&self.db)
            .and_then(|store| verify::verify_anchored(&store, &key, &anchors));
        let (result, report, broken, error) = match outcome {
            Ok(Ok(report)) => ("intact", Some(report), None, None),
            Ok(Err(b)) => ("broken", None, Some(b), None),
            Err(e) => ("error", None, None, Some(e.to_string())),
        };
        ChainCheck {
            time: now(),
            duration_ms: start.elapsed().as_millis() as u64,
            result,
            report,
            broken,
            error,
            key_id,
            anchors: anchors.len(),
        }
    }
}

fn failed(start: Instant, key_id: Option<String>, error: String) -> ChainCheck {
    ChainCheck {
        time: now(),
        duration_ms: start.elapsed().as_millis() as u64,
        result: "error",
        report: None,
        broken: None,
        error: Some(error),
        key_id,
        anchors: 0,
    }
}

fn now() -> String {
    audit::event::format_time(SystemTime::now())
}
