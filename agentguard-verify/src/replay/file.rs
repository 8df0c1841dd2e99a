//! The replay store in a local file (redb: embedded, crash-safe, pure
//! Rust), so that a restarted verifier still refuses the tokens it accepted
//! before the restart.
//!
//! One writer thread takes every spend: it gathers those waiting, records
//! them in one transaction and commits it durably (fsync) before any of
//! them is answered, so a token accepted is on disk before the tool sees
//! its request, and many concurrent requests share one fsync.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
};

use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};
use tokio::sync::oneshot;

use super::{BoxFuture, ReplayError, ReplayStore, Spend};

/// jti → last valid second.
const SPENT: TableDefinition<&str, u64> = TableDefinition::new("spent");
/// (last valid second, jti): expiry order, to forget the expired.
const EXPIRIES: TableDefinition<(u64, &str), ()> = TableDefinition::new("expiries");
/// Spends recorded in one transaction at most.
const MAX_BATCH: usize = 1024;

struct Job {
    jti: String,
    last_valid: u64,
    now: u64,
    reply: oneshot::Sender<Result<Spend, ReplayError>>,
}

/// Spent `jti`s in a redb file, bounded to `capacity` unexpired ones.
pub struct FileReplayStore {
    db: Arc<Database>,
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for FileReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReplayStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileReplayStore {
    /// Opens (or creates) the store at `path`. One process at a time: a
    /// second one is refused (replicas share a Redis store instead).
    pub fn open(path: &Path, capacity: usize) -> Result<Self, ReplayError> {
        let open =
            |e: &dyn std::fmt::Display| ReplayError::Open(format!("{}: {e}", path.display()));
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(open(
                    &"in use by another process (each instance needs a file of its own; replicas share a Redis store)",
                ));
            }
            Err(e) => return Err(open(&e)),
        };
        // The tables exist before the first reader looks.
        let txn = db.begin_write().map_err(|e| open(&e))?;
        txn.open_table(SPENT).map_err(|e| open(&e))?;
        txn.open_table(EXPIRIES).map_err(|e| open(&e))?;
        txn.commit().map_err(|e| open(&e))?;
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            capacity: capacity.max(1) as u64,
        };
        std::thread::Builder::new()
            .name("replay-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open(&e))?;
        Ok(Self {
            db,
            path: path.to_owned(),
            jobs,
        })
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> ReplayError {
        ReplayError::Unavailable(format!("{}: {e}", self.path.display()))
    }

    fn seen_now(&self, jti: &str, now: u64) -> Result<bool, ReplayError> {
        let txn = self.db.begin_read().map_err(|e| self.unavailable(e))?;
        let table = txn.open_table(SPENT).map_err(|e| self.unavailable(e))?;
        let found = table.get(jti).map_err(|e| self.unavailable(e))?;
        Ok(found.is_some_and(|lv| lv.value() >= now))
    }
}

impl ReplayStore for FileReplayStore {
    fn spend<'a>(
        &'a self,
        jti: &'a str,
        last_valid: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Spend, ReplayError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.jobs
                .send(Job {
                    jti: jti.to_owned(),
                    last_valid,
                    now,
                    reply,
                })
                .map_err(|_| self.unavailable("writer stopped"))?;
            answer
                .await
                .map_err(|_| self.unavailable("writer stopped"))?
        })
    }

    fn seen<'a>(&'a self, jti: &'a str, now: u64) -> BoxFuture<'a, Result<bool, ReplayError>> {
        Box::pin(std::future::ready(self.seen_now(jti, now)))
    }
}

struct Writer {
    db: Arc<Database>,
    capacity: u64,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Job>) {
        // Ends when the store (the only sender) is dropped.
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            match self.record(&batch) {
                Ok(verdicts) => {
                    for (job, verdict) in batch.into_iter().zip(verdicts) {
                        let _ = job.reply.send(Ok(verdict));
                    }
                }
                // Nothing of the batch is on disk: none of it is fresh.
                Err(e) => {
                    for job in batch {
                        let _ = job.reply.send(Err(ReplayError::Unavailable(e.clone())));
                    }
                }
            }
        }
    }

    /// One transaction for the batch, committed (fsync) before returning.
    fn record(&self, batch: &[Job]) -> Result<Vec<Spend>, String> {
        let now = batch.iter().map(|j| j.now).max().unwrap_or(0);
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let mut verdicts = Vec::with_capacity(batch.len());
        {
            let mut spent = txn.open_table(SPENT).map_err(|e| e.to_string())?;
            let mut expiries = txn.open_table(EXPIRIES).map_err(|e| e.to_string())?;
            forget_expired(&mut spent, &mut expiries, now).map_err(|e| e.to_string())?;
            for job in batch {
                let known = spent
                    .get(job.jti.as_str())
                    .map_err(|e| e.to_string())?
                    .map(|lv| lv.value());
                let verdict = match known {
                    Some(lv) if lv >= job.now => Spend::Replayed,
                    _ if spent.len().map_err(|e| e.to_string())? >= self.capacity => Spend::Full,
                    _ => {
                        spent
                            .insert(job.jti.as_str(), job.last_valid)
                            .map_err(|e| e.to_string())?;
                        expiries
                            .insert((job.last_valid, job.jti.as_str()), ())
                            .map_err(|e| e.to_string())?;
                        Spend::Fresh
                    }
                };
                verdicts.push(verdict);
            }
        }
        txn.commit().map_err(|e| e.to_string())?;
        Ok(verdicts)
    }
}

/// Drops the entries whose tokens can no longer verify (last valid second
/// before `now`).
fn forget_expired(
    spent: &mut redb::Table<&str, u64>,
    expiries: &mut redb::Table<(u64, &str), ()>,
    now: u64,
) -> Result<(), redb::StorageError> {
    loop {
        let first = expiries.first()?.map(|(k, _)| {
            let (lv, jti) = k.value();
            (lv, jti.to_owned())
        });
        let Some((lv, jti)) = first else {
            return Ok(());
        };
        if lv >= now {
            return Ok(());
        }
        expiries.remove((lv, jti.as_str()))?;
        let current = spent.get(jti.as_str())?.map(|v| v.value());
        if current == Some(lv) {
            spent.remove(jti.as_str())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spent_tokens_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.redb");
        {
            let s = FileReplayStore::open(&path, 10).unwrap();
            assert_eq!(s.spend("a", 100, 50).await, Ok(Spend::Fresh));
            assert_eq!(s.spend("a", 100, 60).await, Ok(Spend::Replayed));
            assert_eq!(s.spend("b", 200, 60).await, Ok(Spend::Fresh));
            // A second process (here: a second open) is refused.
            let e = FileReplayStore::open(&path, 10).unwrap_err();
            assert!(e.to_string().contains("in use"), "{e}");
        }
        // The writer thread lets go of the file once the store is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let s = loop {
            match FileReplayStore::open(&path, 10) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(s.seen("a", 100).await, Ok(true));
        assert_eq!(s.spend("a", 100, 100).await, Ok(Spend::Replayed));
        // From second 101 a's token is refused as expired: forgotten.
        assert_eq!(s.seen("a", 101).await, Ok(false));
        assert_eq!(s.spend("c", 300, 101).await, Ok(Spend::Fresh));
        assert_eq!(s.spend("b", 200, 101).await, Ok(Spend::Replayed));
    }

    #[tokio::test]
    async fn the_file_is_bounded_and_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileReplayStore::open(&dir.path().join("r.redb"), 2).unwrap();
        assert_eq!(s.spend("a", 100, 0).await, Ok(Spend::Fresh));
        assert_eq!(s.spend("b", 200, 0).await, Ok(Spend::Fresh));
        assert_eq!(s.spend("c", 200, 0).await, Ok(Spend::Full));
        assert_eq!(s.spend("a", 100, 1).await, Ok(Spend::Replayed));
        assert_eq!(s.spend("c", 200, 101).await, Ok(Spend::Fresh));
    }

    #[tokio::test]
    async fn concurrent_spends_of_one_token_are_fresh_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(FileReplayStore::open(&dir.path().join("r.redb"), 100).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.spend("same", 100, 0).await.unwrap() })
            })
            .collect();
        let mut fresh = 0;
        for t in tasks {
            if t.await.unwrap() == Spend::Fresh {
                fresh += 1;
            }
        }
        assert_eq!(fresh, 1);
    }
}
