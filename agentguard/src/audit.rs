//! The audit record: one event per decision, in an embedded, hash-chained,
//! signed SQLite store that auditors can query, follow, verify and export.
//!
//! - `event`: what an event holds, and its row layout.
//! - `chain`: the canonical serialisation and the hash chain.
//! - `signing`: the Ed25519 checkpoint key, kept apart from the store.
//! - `anchor`: checkpoints leaving the host as they are signed.
//! - `store`: the database (`<state-dir>/audit/audit.db`).
//! - `writer`: the single writer task (batches, checkpoints, retention).
//! - `verify`, `query`, `ocsf`: what the `agentguard audit` commands do.
//! - `otlp`: export to an OpenTelemetry collector.
//! - `traceparent`: the W3C trace context a request's event keeps.
//! - `rpc_call`: a JSON-RPC message of a request, as its event keeps it.
//!
//! Emitters hold an [`AuditSink`]: [`AuditSink::record`] waits while the
//! queue is full (in events or in bytes) or the writer cannot commit
//! (`queue`), and never drops an event. The writer assigns sequence numbers
//! in the order events reach it, so the chain's order is the order of
//! recording.

pub mod anchor;
pub mod chain;
pub mod event;
pub mod ocsf;
pub mod otlp;
pub mod query;
mod queue;
pub mod rpc_call;
pub mod signing;
pub mod sse;
pub mod store;
pub mod traceparent;
pub mod verify;
mod writer;

use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc, watch};
use tracing::{error, info};

pub use event::{Decision, Event, Kind};
use queue::Queued;
pub use queue::{CommitHealth, FIELD_MAX, MAX_EVENT_BYTES, limit_fields};
pub use rpc_call::RpcCall;
pub use signing::SigningError;
pub use store::{Checkpoint, Record, Store, StoreError};
pub use writer::{Stats, WriterConfig};

/// The audit directory inside the state dir.
pub fn audit_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}

/// The database inside the state dir.
pub fn db_path(state_dir: &Path) -> PathBuf {
    audit_dir(state_dir).join(store::DB_FILE)
}

/// Committed records as the writer hands them to followers. Slow followers
/// miss the oldest (they are told how many); the store never does.
const FOLLOW_BUFFER: usize = 16_384;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    Anchor(#[from] anchor::AnchorError),
    #[error("failed to start the audit writer thread: {0}")]
    Thread(std::io::Error),
}

/// Everything about the audit store the daemon is configured with.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub writer: WriterConfig,
    /// Events the queue holds before `record` waits.
    pub queue: usize,
    /// Bytes the queued (not yet committed) events may hold before
    /// `record` waits; at least [`MAX_EVENT_BYTES`].
    pub queue_bytes: usize,
    /// The checkpoint signing key; `None`: [`signing::default_key_path`].
    pub signing_key: Option<PathBuf>,
    /// Where checkpoints are exported as they are signed.
    pub anchors: anchor::AnchorConfig,
}

/// Something to run for each event as it is recorded (metrics, the admin
/// API's recent-decision views): synchronous and cheap.
pub type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

/// Where events go. Cheap to clone; every clone feeds the same queue.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

struct Shared {
    bytes: queue::Bytes,
    batch_ready: queue::BatchReady,
    gate: queue::Gate,
    stats: Arc<Stats>,
    hub: broadcast::Sender<Arc<Record>>,
    checkpoints: broadcast::Sender<Arc<Checkpoint>>,
    anchor_stats: Arc<anchor::AnchorStats>,
    key_id: String,
    observers: Vec<Observer>,
    db_path: PathBuf,
}

/// A reserved place in the queue: recording through it cannot wait or fail.
pub struct Permit {
    permit: mpsc::OwnedPermit<Queued>,
    bytes: OwnedSemaphorePermit,
    shared: Arc<Shared>,
}

impl Permit {
    pub fn record(self, event: impl Into<Box<Event>>) {
        let mut event = event.into();
        let weight = limit_fields(&mut event);
        let bytes = queue::Bytes::keep(self.bytes, weight);
        for observe in &self.shared.observers {
            // An observer (metrics, a view) that panics must not take the
            // event with it: the store is what the audit promises. Its
            // panic is said, and the event goes on to be stored.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| observe(&event))).is_err() {
                error!(
                    id = %event.id,
                    "an audit observer panicked on this event; the event is stored all the same"
                );
            }
        }
        let tx = self.permit.send(Queued { event, bytes });
        self.shared.batch_ready.queued(&tx, &self.shared.bytes);
    }
}

/// What `agentguard status` shows about the audit store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditStatus {
    pub db_path: String,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Bytes the queued events hold, and the most they may.
    #[serde(default)]
    pub queue_bytes: usize,
    #[serde(default)]
    pub queue_bytes_capacity: usize,
    /// Whether the writer is committing: while it is not, recording (and
    /// so every agent request) waits.
    #[serde(default)]
    pub commit: Option<CommitHealth>,
    pub events_written: u64,
    pub last_seq: i64,
    pub last_checkpoint_seq: i64,
    pub write_errors: u64,
    /// The public key that signs checkpoints (hex), to pin in
    /// `audit verify --public-key`.
    #[serde(default)]
    pub key_id: String,
    /// The newest checkpoint exported by `--audit-anchor-dir` /
    /// `--audit-anchor-command`; 0: none (or no export configured).
    #[serde(default)]
    pub anchor_last_exported_seq: i64,
    #[serde(default)]
    pub anchor_failures: u64,
}

impl AuditSink {
    /// Queues `event`, waiting while the queue is full. Never drops it
    /// while it runs: if the writer has stopped (the daemon is shutting
    /// down), the event is logged as lost, loudly. A caller that may be
    /// dropped while it waits, and whose event must outlive it, uses
    /// [`AuditSink::record_even_if_dropped`].
    pub async fn record(&self, event: impl Into<Box<Event>>) {
        self.record_when_placed(&mut Some(event.into())).await;
    }

    /// As [`AuditSink::record`], and should the caller's future be dropped
    /// while it waits (its agent went away), the event is queued as
    /// [`AuditSink::record_detached`] queues it: for an event that must
    /// not depend on its request living on.
    pub async fn record_even_if_dropped(&self, event: impl Into<Box<Event>>) {
        /// Holds the event until a place takes it.
        struct Owed<'a>(&'a AuditSink, Option<Box<Event>>);
        impl Drop for Owed<'_> {
            fn drop(&mut self) {
                if let Some(event) = self.1.take() {
                    self.0.record_detached(event);
                }
            }
        }
        let mut owed = Owed(self, Some(event.into()));
        self.record_when_placed(&mut owed.1).await;
    }

    /// Waits for a place in the queue, then queues the event `owed` holds.
    /// The event stays in `owed` until it has its place: whoever holds
    /// `owed` knows, should this future be dropped, that it never left.
    async fn record_when_placed(&self, owed: &mut Option<Box<Event>>) {
        let permit = self.reserve().await;
        let Some(event) = owed.take() else { return };
        match permit {
            Some(permit) => permit.record(event),
            None => not_stored(&event, "audit writer has stopped"),
        }
    }

    /// Waits until the writer commits, then for a place in the queue.
    /// `None` once the writer has stopped.
    pub fn reserve(&self) -> Pin<Box<dyn Future<Output = Option<Permit>> + Send + 'static>> {
        let (tx, shared) = (self.tx.clone(), self.shared.clone());
        Box::pin(async move {
            shared.gate.open().await;
            let bytes = shared.bytes.reserve().await?;
            let permit = tx.reserve_owned().await.ok()?;
            Some(Permit {
                permit,
                bytes,
                shared,
            })
        })
    }

    /// Waits while the writer cannot commit: what an emitter calls before
    /// it acts on something it will record (the proxy, before it forwards
    /// a request).
    pub fn committing(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        // Boxed (as `reserve`): the gate's wait, inlined into the proxy's
        // request future, trips rustc's check that the future is `Send`.
        let shared = self.shared.clone();
        Box::pin(async move { shared.gate.open().await })
    }

    /// Whether the writer commits now: [`AuditSink::committing`] would not
    /// wait.
    pub fn is_committing(&self) -> bool {
        self.shared.gate.is_open()
    }

    /// For code that cannot wait (a `Drop`): queued now if there is room,
    /// else by a task that waits for room. Dropped only if the daemon stops
    /// before that task queues it, and then logged with the event's id.
    pub fn record_detached(&self, event: impl Into<Box<Event>>) {
        let event = event.into();
        let room = if self.shared.gate.is_open() {
            self.shared.bytes.try_reserve()
        } else {
            None
        };
        let reserved = match room {
            Some(bytes) => self
                .tx
                .clone()
                .try_reserve_owned()
                .map(|permit| (permit, bytes))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                    mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
                }),
            None => Err(mpsc::error::TrySendError::Full(())),
        };
        match reserved {
            Ok((permit, bytes)) => Permit {
                permit,
                bytes,
                shared: self.shared.clone(),
            }
            .record(event),
            Err(mpsc::error::TrySendError::Full(())) => {
                /// The event a waiting task holds: should the runtime drop
                /// the task before it found a place (the daemon stopping),
                /// the loss is said, not silent.
                struct Waiting(Option<Box<Event>>);
                impl Drop for Waiting {
                    fn drop(&mut self) {
                        if let Some(event) = self.0.take() {
                            not_stored(
                                &event,
                                "the daemon stopped before the event could be queued",
                            );
                        }
                    }
                }
                let sink = self.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let mut waiting = Waiting(Some(event));
                        rt.spawn(async move { sink.record_when_placed(&mut waiting.0).await });
                    }
                    Err(_) => not_stored(&event, "no runtime to queue an audit event from"),
                }
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                not_stored(&event, "audit writer has stopped");
            }
        }
    }

    /// Committed records from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Record>> {
        self.shared.hub.subscribe()
    }

    /// The newest signed checkpoint in the store, if any (read-only).
    pub fn last_checkpoint(&self) -> Option<Checkpoint> {
        Store::open_read_only(&self.shared.db_path)
            .and_then(|s| s.last_checkpoint())
            .ok()
            .flatten()
    }

    /// Checkpoints as they are committed, from now on.
    pub fn subscribe_checkpoints(&self) -> broadcast::Receiver<Arc<Checkpoint>> {
        self.shared.checkpoints.subscribe()
    }

    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn db_path(&self) -> &Path {
        &self.shared.db_path
    }

    pub fn status(&self) -> AuditStatus {
        let s = &self.shared.stats;
        AuditStatus {
            db_path: self.shared.db_path.display().to_string(),
            queue_depth: self.queue_depth(),
            queue_capacity: self.tx.max_capacity(),
            queue_bytes: self.shared.bytes.queued(),
            queue_bytes_capacity: self.shared.bytes.capacity(),
            commit: Some(self.shared.gate.health()),
            events_written: s.written.load(Ordering::Relaxed),
            last_seq: s.last_seq.load(Ordering::Relaxed),
            last_checkpoint_seq: s.last_checkpoint_seq.load(Ordering::Relaxed),
            write_errors: s.write_errors.load(Ordering::Relaxed),
            key_id: self.shared.key_id.clone(),
            anchor_last_exported_seq: self
                .shared
                .anchor_stats
                .last_exported_seq
                .load(Ordering::Relaxed),
            anchor_failures: self.shared.anchor_stats.failures.load(Ordering::Relaxed),
        }
    }
}

/// Says, loudly, that `event` will not be in the record, and why.
fn not_stored(event: &Event, why: &str) {
    error!(kind = event.kind.as_str(), id = %event.id, "{why}; audit event not stored");
}

/// The running writer; [`AuditWriter::shutdown`] commits what is queued and
/// signs a final checkpoint.
pub struct AuditWriter {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl AuditWriter {
    /// Blocks until the writer has committed everything queued before the
    /// call, or `timeout` passed.
    pub fn shutdown(mut self, timeout: Duration) {
        let _ = self.stop.send(true);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + timeout;
        while !thread.is_finished() {
            if std::time::Instant::now() > deadline {
                error!("audit writer did not finish in time; the last events may be missing");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = thread.join();
    }
}

/// Checkpoints held for slow followers (the OTLP exporter); the newest
/// covers the most, so losing older ones to lag costs little.
const CHECKPOINT_BUFFER: usize = 64;

/// Opens the store in `state_dir`, loads (or makes) the signing key, apart
/// from the store (moving it there from where older versions kept it), and
/// starts the writer thread and the checkpoint export.
pub fn start(
    state_dir: &Path,
    cfg: AuditConfig,
    observers: Vec<Observer>,
) -> Result<(AuditSink, AuditWriter), AuditError> {
    let dir = audit_dir(state_dir);
    let key_path = cfg
        .signing_key
        .clone()
        .unwrap_or_else(|| signing::default_key_path(state_dir));
    signing::check_apart(&dir, &key_path)?;
    cfg.anchors.validate()?;
    let store = Store::open(&dir)?;
    if signing::migrate_key(&dir, &key_path)? {
        info!(
            from = %dir.join(signing::KEY_FILE).display(),
            to = %key_path.display(),
            "moved the audit signing key out of the audit directory"
        );
    }
    let signer = signing::Signer::load_or_create(&key_path, &[dir.join(signing::PUBLIC_KEY_FILE)])?;
    let key_id = signer.key_id();
    let stats = Arc::new(Stats::default());
    let anchor_stats = Arc::new(anchor::AnchorStats::default());
    let anchors = if cfg.anchors.is_empty() {
        None
    } else {
        Some(anchor::Exporter::start(
            cfg.anchors.clone(),
            anchor_stats.clone(),
        )?)
    };
    let (hub, _) = broadcast::channel(FOLLOW_BUFFER);
    let bytes = queue::Bytes::new(cfg.queue_bytes);
    // A commit that runs longer than one flush interval holds back new
    // events: the loss after a crash stays about one interval's worth.
    let gate = queue::Gate::new(cfg.writer.flush_interval);
    let batch_ready = queue::BatchReady::new();
    let (checkpoints, _) = broadcast::channel(CHECKPOINT_BUFFER);
    let writer = writer::Writer::new(
        store,
        signer,
        cfg.writer,
        stats.clone(),
        writer::Outlets {
            records: hub.clone(),
            checkpoints: checkpoints.clone(),
            anchors,
        },
        writer::Backpressure {
            bytes: bytes.clone(),
            gate: gate.clone(),
        },
    )?;
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let batch_ready_rx = batch_ready.clone();
    let (stop, stop_rx) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            // Its own small runtime: the writer's waits are async (queue,
            // flush deadline), its commits block this thread only.
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt.block_on(writer.run(rx, batch_ready_rx, stop_rx)),
                Err(e) => error!(error = %e, "audit writer runtime failed to start"),
            }
        })
        .map_err(AuditError::Thread)?;
    let sink = AuditSink {
        tx,
        shared: Arc::new(Shared {
            bytes,
            batch_ready,
            gate,
            stats,
            hub,
            checkpoints,
            anchor_stats,
            key_id,
            observers,
            db_path: dir.join(store::DB_FILE),
        }),
    };
    Ok((
        sink,
        AuditWriter {
            stop,
            thread: Some(thread),
        },
    ))
}

#[cfg(test)]
pub(crate) mod tests;
