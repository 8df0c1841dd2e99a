//! The one task that writes the store: it takes events from the bounded
//! queue, gives each its sequence number and chain hashes, commits them in
//! batches, signs checkpoints, applies retention, and then hands the
//! committed records to followers (`audit tail -f`, OTLP).
//!
//! It runs on its own thread: SQLite calls block, and an fsync must never
//! stall a proxy worker. A batch is committed when it holds
//! `batch_max` events or its first event has waited `flush_interval`, so
//! after a `kill -9` at most the batch being collected (and whatever sat in
//! the queue behind it) is missing, and everything committed still verifies.
//!
//! It tells the queue's gate when a commit starts, fails and succeeds
//! (`queue::Gate`): while it cannot commit, emitters wait instead of
//! filling the queue with events agents were already answered for.

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{broadcast, mpsc, watch};
use tracing::{error, info, warn};

use super::{
    anchor,
    chain::{Hash, hash_refs, to_hex},
    event::{Event, Kind, format_time},
    queue::{BatchReady, Bytes, Gate, Queued},
    signing::Signer,
    store::{Checkpoint, Record, Store},
};

/// How the writer batches, checkpoints and prunes.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The longest an event waits in a batch before the batch is committed.
    pub flush_interval: Duration,
    /// A batch is committed as soon as it holds this many events.
    pub batch_max: usize,
    /// A checkpoint is signed after this many events...
    pub checkpoint_every: u64,
    /// ...or this long after the last one, whichever comes first (and only
    /// if events were written since).
    pub checkpoint_interval: Duration,
    /// Events older than this are removed (up to a checkpoint); `None` keeps
    /// everything.
    pub retention: Option<Duration>,
    /// The oldest events are removed (up to a checkpoint) while the events
    /// take more than this many bytes; `None`: no size limit.
    pub max_bytes: Option<u64>,
}

/// How often retention looks for old events.
const RETENTION_CHECK: Duration = Duration::from_secs(60);
/// A failed commit is retried after this, doubling up to [`MAX_BACKOFF`];
/// meanwhile the queue fills and the proxy waits: nothing is dropped.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At shutdown a failing store gets this long before the writer gives up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Counters the daemon reports (`status`, metrics).
#[derive(Debug, Default)]
pub struct Stats {
    pub written: AtomicU64,
    pub last_seq: AtomicI64,
    pub last_checkpoint_seq: AtomicI64,
    pub write_errors: AtomicU64,
}

/// Where committed records and checkpoints go.
pub(super) struct Outlets {
    /// Followers (`audit tail -f`, OTLP).
    pub records: broadcast::Sender<Arc<Record>>,
    /// Checkpoints, for the OTLP exporter.
    pub checkpoints: broadcast::Sender<Arc<Checkpoint>>,
    /// The anchor folder and command, if configured.
    pub anchors: Option<anchor::Exporter>,
}

/// How long the last checkpoint's export gets at shutdown: within the
/// daemon's own wait for the writer (15 s).
const ANCHOR_GRACE: Duration = Duration::from_secs(10);

/// What the writer gives back to the sink's backpressure.
pub(super) struct Backpressure {
    /// The queue's byte budget: committed events give theirs back.
    pub bytes: Bytes,
    /// Whether the writer commits in time.
    pub gate: Gate,
}

pub(super) struct Writer {
    store: Store,
    signer: Signer,
    cfg: WriterConfig,
    stats: Arc<Stats>,
    hub: broadcast::Sender<Arc<Record>>,
    bytes: Bytes,
    gate: Gate,
    checkpoint_hub: broadcast::Sender<Arc<Checkpoint>>,
    anchors: Option<anchor::Exporter>,
    next_seq: i64,
    last_hash: Hash,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    last_retention_at: Option<Instant>,
}

impl Writer {
    pub(super) fn new(
        store: Store,
        signer: Signer,
        cfg: WriterConfig,
        stats: Arc<Stats>,
        outlets: Outlets,
        backpressure: Backpressure,
    ) -> Result<Self, super::store::StoreError> {
        let Backpressure { bytes, gate } = backpressure;
        let tail = store.tail()?;
        // The newest checkpoint leaves again: a target configured since,
        // or one that was away at the last export, gets it now.
        if let (Some(anchors), Some(last)) = (&outlets.anchors, store.last_checkpoint()?) {
            anchors.offer(&last);
        }
        stats.last_seq.store(tail.last_seq, Ordering::Relaxed);
        stats
            .last_checkpoint_seq
            .store(tail.last_checkpoint_seq, Ordering::Relaxed);
        Ok(Self {
            store,
            signer,
            cfg,
            stats,
            bytes,
            gate,
            hub: outlets.records,
            checkpoint_hub: outlets.checkpoints,
            anchors: outlets.anchors,
            next_seq: tail.last_seq + 1,
            last_hash: tail.last_hash,
            // Events after the last checkpoint (a crash left them unsigned)
            // count towards the next one.
            since_checkpoint: u64::try_from(tail.last_seq - tail.last_checkpoint_seq).unwrap_or(0),
            last_checkpoint_at: Instant::now(),
            last_retention_at: None,
        })
    }

    /// Runs until `stop` turns true (or its sender goes), then commits what
    /// is queued, signs a final checkpoint and returns.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Queued>,
        batch_ready: BatchReady,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut batch: Vec<Queued> = Vec::with_capacity(self.cfg.batch_max);
        loop {
            self.maintain();
            if *stop.borrow() {
                break;
            }
            let idle = self.until_checkpoint_due();
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                n = rx.recv_many(&mut batch, self.cfg.batch_max) => {
                    if n == 0 {
                        break;
                    }
                }
                () = tokio::time::sleep(idle) => {
                    self.checkpoint_if_due(false);
                    continue;
                }
            }
            // Gather the rest of the batch until it is full or its first
            // event has waited the flush interval. The writer sleeps
            // through it: waiting on the queue itself would wake its
            // thread, across threads, for every event the proxy sends
            // (measured: 8% of the daemon's CPU, and most of its context
            // switches); the emitter whose event completes the batch rings.
            let deadline = tokio::time::Instant::now() + self.cfg.flush_interval;
            loop {
                let open = drain(&mut rx, &mut batch, self.cfg.batch_max);
                // A byte budget without room for another event is given
                // back only by committing what it holds: the batch is as
                // full as the queue can make it.
                if !open || batch.len() >= self.cfg.batch_max || self.bytes.full() {
                    break;
                }
                // A queue smaller than the batch rings when it is full.
                let wanted = (self.cfg.batch_max - batch.len()).min(rx.max_capacity());
                let complete = || rx.len() >= wanted || self.bytes.full();
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {
                        drain(&mut rx, &mut batch, self.cfg.batch_max);
                        break;
                    }
                    () = batch_ready.sleep_unless(wanted, complete) => {}
                    _ = stop.changed() => break,
                }
            }
            // Not gathering: emitters stop ringing until the next batch.
            batch_ready.gathered();
            self.commit(std::mem::take(&mut batch), false);
            batch.reserve(self.cfg.batch_max);
        }
        // Shutting down: what the proxy already queued is part of the record.
        rx.close();
        while let Some(e) = rx.recv().await {
            batch.push(e);
            if batch.len() >= self.cfg.batch_max {
                self.commit(std::mem::take(&mut batch), false);
            }
        }
        self.commit(batch, true);
        // Nothing commits any more: whoever waits at the gate goes on to
        // find the queue closed, and says so.
        self.gate.done();
        if let Some(anchors) = self.anchors.take() {
            anchors.finish(ANCHOR_GRACE);
        }
        info!(
            last_seq = self.next_seq - 1,
            "audit writer stopped; final checkpoint signed"
        );
    }

    fn until_checkpoint_due(&self) -> Duration {
        let retention = if self.cfg.retention.is_some() || self.cfg.max_bytes.is_some() {
            RETENTION_CHECK
        } else {
            Duration::MAX
        };
        let checkpoint = if self.since_checkpoint > 0 {
            self.cfg
                .checkpoint_interval
                .saturating_sub(self.last_checkpoint_at.elapsed())
        } else {
            Duration::MAX
        };
        // tokio's timer wants a bounded duration.
        checkpoint.min(retention).min(Duration::from_secs(3600))
    }

    /// Chains and commits `events`; signs a checkpoint with them when one is
    /// due (or `last`). Retries until the store takes them.
    fn commit(&mut self, queued: Vec<Queued>, last: bool) {
        let held: usize = queued.iter().map(|q| q.bytes).sum();
        let events = queued.into_iter().map(|q| q.event);
        let mut records = Vec::with_capacity(events.len());
        let (mut seq, mut prev) = (self.next_seq, self.last_hash);
        for event in events {
            // Hashed as borrowed from the event; the store binds the same
            // values from it again (`Store::append`).
            let hash = match hash_refs(seq, &prev, event.row_refs()) {
                Ok(h) => h,
                // Only REAL/BLOB values fail, and events have none.
                Err(e) => unreachable!("event values are text and integers: {e}"),
            };
            records.push(Record {
                seq,
                event: *event,
                prev_hash: to_hex(&prev),
                hash: to_hex(&hash),
            });
            prev = hash;
            seq += 1;
        }
        let pending = self.since_checkpoint + records.len() as u64;
        let due = pending >= self.cfg.checkpoint_every
            || (pending > 0 && self.last_checkpoint_at.elapsed() >= self.cfg.checkpoint_interval)
            || (last && pending > 0);
        let checkpoint = due.then(|| self.checkpoint_for(seq - 1, &prev));
        if records.is_empty() && checkpoint.is_none() {
            return;
        }

        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        self.gate.running();
        while let Err(e) = self.store.append(&records, checkpoint.as_ref()) {
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            self.gate.failed(e.to_string());
            if last && started.elapsed() > SHUTDOWN_GRACE {
                error!(error = %e, events = records.len(), "audit store unwritable at shutdown; the last events are lost");
                return;
            }
            error!(error = %e, events = records.len(), retry_in = ?backoff, "audit commit failed; the proxy waits until the store takes events again");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.gate.done();
        self.bytes.release(held);

        let n = records.len() as u64;
        self.next_seq = seq;
        self.last_hash = prev;
        self.stats.written.fetch_add(n, Ordering::Relaxed);
        self.stats.last_seq.store(seq - 1, Ordering::Relaxed);
        if let Some(c) = &checkpoint {
            self.since_checkpoint = 0;
            self.last_checkpoint_at = Instant::now();
            self.stats
                .last_checkpoint_seq
                .store(c.seq, Ordering::Relaxed);
            // Committed: now it may leave the host.
            if let Some(anchors) = &self.anchors {
                anchors.offer(c);
            }
        } else {
            self.since_checkpoint = pending;
        }
        // Followers are few and most often none: no record is copied into
        // an `Arc` for nobody (one allocation and an ~800-byte copy per
        // event). A follower that subscribes after this check reads these
        // records from the store: followers subscribe before they read
        // their backlog (admin/stream.rs, web/live.rs).
        if self.hub.receiver_count() > 0 {
            for r in records {
                // A follower gone since is no error.
                let _ = self.hub.send(Arc::new(r));
            }
        }
        if let Some(c) = checkpoint {
            let _ = self.checkpoint_hub.send(Arc::new(c));
        }
    }

    fn checkpoint_for(&self, seq: i64, hash: &Hash) -> Checkpoint {
        let time = format_time(SystemTime::now());
        Checkpoint {
            seq,
            hash: to_hex(hash),
            signature: self.signer.sign(seq, hash, &time),
            time,
            key_id: self.signer.key_id(),
        }
    }

    fn checkpoint_if_due(&mut self, last: bool) {
        self.commit(Vec::new(), last);
    }

    /// Retention by age and by size: at most once a [`RETENTION_CHECK`].
    fn maintain(&mut self) {
        if self.cfg.retention.is_none() && self.cfg.max_bytes.is_none() {
            return;
        }
        if self
            .last_retention_at
            .is_some_and(|t| t.elapsed() < RETENTION_CHECK)
        {
            return;
        }
        self.last_retention_at = Some(Instant::now());
        if let Some(keep) = self.cfg.retention {
            let cutoff = format_time(SystemTime::now() - keep);
            let why = format!("older than {}", humantime::format_duration(keep));
            let pruned = self.store.prune_before(&cutoff);
            self.pruned(pruned, &why);
        }
        if let Some(max) = self.cfg.max_bytes {
            let pruned = self.store.prune_to_size(max);
            self.pruned(pruned, &format!("to keep the store under {max} bytes"));
        }
    }

    /// Records a pruning in the chain itself: removal is an event too.
    fn pruned(&mut self, result: Result<Option<(i64, i64)>, super::store::StoreError>, why: &str) {
        match result {
            Ok(Some((first, anchor))) => {
                info!(first, anchor, why, "audit retention removed old events");
                let mut event = Event::new(Kind::Retention);
                event.reason = Some(format!(
                    "removed events {first}..={anchor} {why}; signed checkpoint {anchor} is the anchor the chain continues from"
                ).into());
                self.commit(
                    vec![Queued {
                        event: Box::new(event),
                        bytes: 0,
                    }],
                    false,
                );
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "audit retention failed; will retry"),
        }
    }
}

/// Moves what the queue holds into `batch`, up to `max` events; false once
/// the queue is closed and empty.
fn drain(rx: &mut mpsc::Receiver<Queued>, batch: &mut Vec<Queued>, max: usize) -> bool {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(event) => batch.push(event),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    true
}
