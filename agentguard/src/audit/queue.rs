//! The queue between the emitters and the writer, and the three things that
//! keep it honest:
//!
//! - **Bounded in bytes as well as events.** Each place in the queue is
//!   taken with the most an event can weigh ([`MAX_EVENT_BYTES`]); all but
//!   the event's real weight is given back as it is queued, and the writer
//!   returns the rest once the event is committed. The events waiting for
//!   the store never hold more than the configured bytes, however long the
//!   agent made its path or intent.
//! - **Long fields cut before they enter the record** ([`limit_fields`]):
//!   every text field is at most [`FIELD_MAX`] bytes (the `rpc_calls`
//!   column [`RPC_CALLS_MAX`]), ending in a marker that says how much was
//!   cut.
//! - **Closed at once when the writer cannot commit** ([`Gate`]): while a
//!   commit fails, or has run for longer than one flush interval (a disk
//!   that stalls), new events wait. Emitters record before they answer the
//!   agent, so agents wait too, instead of being answered for events that
//!   may never become durable; after a `kill -9` the record misses at most
//!   what was admitted in about one flush interval, whatever state the
//!   store is in.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering, fence},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};

use super::event::{Event, format_time};

/// Longest text field an event keeps, in bytes.
pub const FIELD_MAX: usize = 2048;
/// Longest `rpc_calls` column kept, in bytes. It is a JSON array of the
/// body's calls, which a batch (or recorded arguments) makes longer than
/// any other field, and `policy replay` reads it whole: it gets more room.
/// Cut past this it no longer parses, and replay skips the event, as it
/// does any column it cannot read.
pub const RPC_CALLS_MAX: usize = 64 << 10;
/// The event's optional text fields (its `id` and `time` are the two
/// others, `rpc_calls` one more with its own bound). A test checks the
/// count against the event's serialised form, so a new field cannot slip
/// past the bound.
const OPTIONAL_TEXT_FIELDS: usize = 29;
/// The most one event weighs once its fields are limited.
pub const MAX_EVENT_BYTES: usize =
    std::mem::size_of::<Event>() + (OPTIONAL_TEXT_FIELDS + 2) * FIELD_MAX + RPC_CALLS_MAX;

/// An event on its way to the writer, with the bytes of the queue's budget
/// it holds until it is committed.
pub(super) struct Queued {
    /// Boxed: an event is ~800 bytes, and it moves from the request that
    /// made it through the queue to the writer.
    pub event: Box<Event>,
    pub bytes: usize,
}

/// The optional text fields shared between events: a connection's, the
/// version of the policy that decided, and a request's method, host and
/// what decided it (shared with the recent-requests view and the policy).
const SHARED_TEXT_FIELDS: usize = 13;

fn shared_text(e: &mut Event) -> [&mut Option<Arc<str>>; SHARED_TEXT_FIELDS] {
    [
        &mut e.agent,
        &mut e.cgroup_path,
        &mut e.exe,
        &mut e.comm,
        &mut e.src_ip,
        &mut e.dst_ip,
        &mut e.sni,
        &mut e.policy_version,
        &mut e.host,
        &mut e.method,
        &mut e.tool,
        &mut e.rule,
        &mut e.reason,
    ]
}

fn optional_text(
    e: &mut Event,
) -> [&mut Option<String>; OPTIONAL_TEXT_FIELDS - SHARED_TEXT_FIELDS] {
    [
        &mut e.on_behalf_of,
        &mut e.intent,
        &mut e.protocol,
        &mut e.path,
        &mut e.credential_id,
        &mut e.token_jti,
        // Well-formed only (55 bytes), but bounded like the rest.
        &mut e.traceparent,
        &mut e.rpc_method,
        &mut e.mcp_target,
        // A web user's name is bounded at login, but not by this module.
        &mut e.actor,
        &mut e.approval_id,
        &mut e.request_hash,
        // One of two fixed words, but bounded like the rest.
        &mut e.relay,
        // Read from the runtime's files, which its users write.
        &mut e.container_id,
        &mut e.container_name,
        &mut e.container_image,
    ]
}

/// Cuts every text field of `e` to [`FIELD_MAX`] bytes (on a character
/// boundary), ending it with a marker saying how long it was; returns
/// what the event then weighs, in bytes.
pub fn limit_fields(e: &mut Event) -> usize {
    let mut weight = std::mem::size_of::<Event>();
    for field in [&mut e.id, &mut e.time] {
        weight += cut(field, FIELD_MAX);
    }
    if let Some(calls) = &mut e.rpc_calls {
        weight += cut(calls, RPC_CALLS_MAX);
    }
    for field in optional_text(e).into_iter().flatten() {
        weight += cut(field, FIELD_MAX);
    }
    // Counted whole in every event that shares them: an upper bound.
    for field in shared_text(e).into_iter().flatten() {
        if field.len() > FIELD_MAX {
            let mut own = field.to_string();
            cut(&mut own, FIELD_MAX);
            *field = own.into();
        }
        weight += field.len();
    }
    weight
}

fn cut(field: &mut String, max: usize) -> usize {
    if field.len() > max {
        let marker = format!("…[cut: {} bytes in all]", field.len());
        let mut end = max - marker.len();
        while !field.is_char_boundary(end) {
            end -= 1;
        }
        field.truncate(end);
        field.push_str(&marker);
        // The cut string keeps its old allocation otherwise.
        field.shrink_to_fit();
    }
    field.len()
}

/// The queue's byte budget.
#[derive(Clone)]
pub(super) struct Bytes {
    budget: Arc<Semaphore>,
    capacity: usize,
}

impl Bytes {
    /// At least one largest event must fit, or nothing could be queued.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(MAX_EVENT_BYTES);
        Self {
            budget: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Room for one event of any size; waits while the queue is full.
    pub async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.budget
            .clone()
            .acquire_many_owned(MAX_EVENT_BYTES as u32)
            .await
            .ok()
    }

    pub fn try_reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.budget
            .clone()
            .try_acquire_many_owned(MAX_EVENT_BYTES as u32)
            .ok()
    }

    /// Keeps `weight` of a reservation for the queued event, gives the
    /// rest back now.
    pub fn keep(mut reserved: OwnedSemaphorePermit, weight: usize) -> usize {
        let weight = weight.min(reserved.num_permits());
        if let Some(kept) = reserved.split(weight) {
            kept.forget();
        }
        weight
    }

    /// The writer committed events holding `bytes`.
    pub fn release(&self, bytes: usize) {
        self.budget.add_permits(bytes);
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn queued(&self) -> usize {
        self.capacity - self.budget.available_permits()
    }

    /// Whether the next event must wait for the writer to commit what the
    /// budget holds: [`Bytes::reserve`] takes a largest event's bytes.
    pub fn full(&self) -> bool {
        self.budget.available_permits() < MAX_EVENT_BYTES
    }
}

/// The writer's doorbell: rung by an emitter whose event completes the
/// batch the writer is gathering (what it holds plus what the queue
/// holds), or leaves the byte budget without room for another event, so
/// the writer sleeps until then or its flush deadline, not on a short
/// tick. A tick woke the writer's thread hundreds of times a second
/// whatever the load: at 200 requests a second, one more context switch
/// per request than nginx's.
#[derive(Clone)]
pub(super) struct BatchReady {
    shared: Arc<Bell>,
}

struct Bell {
    notify: Notify,
    /// How many queued events complete the batch being gathered: the
    /// writer sets it before it sleeps, emitters compare the queue to it.
    wanted: AtomicUsize,
}

impl BatchReady {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Bell {
                notify: Notify::new(),
                wanted: AtomicUsize::new(usize::MAX),
            }),
        }
    }

    /// Emitter, after it queued through `tx` within `bytes`. Places
    /// reserved but not yet filled count as queued: a writer woken early
    /// finds fewer and sleeps again, until its deadline at the latest.
    pub fn queued<T>(&self, tx: &mpsc::Sender<T>, bytes: &Bytes) {
        // Pairs with the fence in `sleep_unless`: either this emitter sees
        // what the writer wants, or the writer sees this event queued.
        fence(Ordering::SeqCst);
        let wanted = self.shared.wanted.load(Ordering::Relaxed);
        let gathering = wanted != usize::MAX;
        if tx.max_capacity() - tx.capacity() >= wanted || (gathering && bytes.full()) {
            self.shared.notify.notify_one();
        }
    }

    /// Writer, holding part of a batch: returns at once if `complete()`
    /// (`wanted` more events queued, or the byte budget full), else once
    /// an emitter rings. A ring while the writer was not waiting is kept
    /// for its next wait, so none is missed.
    pub async fn sleep_unless(&self, wanted: usize, complete: impl Fn() -> bool) {
        self.shared.wanted.store(wanted.max(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if complete() {
            return;
        }
        self.shared.notify.notified().await;
    }

    /// Writer: the batch is complete or due; no emitter rings (a ring now
    /// would only make the next batch's first sleep return at once) until
    /// [`BatchReady::sleep_unless`] says what that batch wants.
    pub fn gathered(&self) {
        self.shared.wanted.store(usize::MAX, Ordering::Relaxed);
    }
}

/// What the writer's commits are doing, as emitters need to know it.
#[derive(Debug, Clone, Default)]
enum Commit {
    /// Between commits, or committing for less than a flush interval.
    #[default]
    Idle,
    Running(Instant),
    /// The last attempt failed; the writer retries the same batch.
    Failing {
        since: SystemTime,
        error: String,
    },
}

/// The writer's side opens and closes it; emitters wait at it.
#[derive(Clone)]
pub(super) struct Gate {
    tx: Arc<watch::Sender<Commit>>,
    /// A commit running longer than this closes the gate.
    stall: Duration,
}

/// What `status` shows of the writer's commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitHealth {
    /// `ok`, `stalled` (a commit running longer than a flush interval) or
    /// `failing`.
    pub state: String,
    /// Since when (RFC 3339), for `failing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Gate {
    pub fn new(stall: Duration) -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(Commit::Idle)),
            stall,
        }
    }

    /// Writer: a commit starts.
    pub fn running(&self) {
        self.tx.send_if_modified(|c| {
            // A retry after a failure stays "failing" until it succeeds.
            if matches!(c, Commit::Failing { .. }) {
                return false;
            }
            *c = Commit::Running(Instant::now());
            true
        });
    }

    /// Writer: the commit failed; it will be retried.
    pub fn failed(&self, error: String) {
        self.tx.send_modify(|c| {
            let since = match c {
                Commit::Failing { since, .. } => *since,
                _ => SystemTime::now(),
            };
            *c = Commit::Failing { since, error };
        });
    }

    /// Writer: the commit is durable.
    pub fn done(&self) {
        self.tx.send_replace(Commit::Idle);
    }

    fn admits(&self, c: &Commit) -> bool {
        match c {
            Commit::Idle => true,
            Commit::Running(started) => started.elapsed() <= self.stall,
            Commit::Failing { .. } => false,
        }
    }

    /// Emitters: waits while the writer cannot commit.
    pub async fn open(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|c| self.admits(c)).await;
    }

    pub fn is_open(&self) -> bool {
        self.admits(&self.tx.borrow())
    }

    pub fn health(&self) -> CommitHealth {
        match &*self.tx.borrow() {
            c @ (Commit::Idle | Commit::Running(_)) if self.admits(c) => CommitHealth {
                state: "ok".into(),
                since: None,
                error: None,
            },
            Commit::Failing { since, error } => CommitHealth {
                state: "failing".into(),
                since: Some(format_time(*since)),
                error: Some(error.clone()),
            },
            _ => CommitHealth {
                state: "stalled".into(),
                since: None,
                error: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Kind;

    #[test]
    fn long_fields_are_cut_with_a_marker_on_a_character_boundary() {
        let mut e = Event::new(Kind::Request);
        e.path = Some(format!("/{}", "é".repeat(5000)));
        e.intent = Some("short".into());
        // A field the connection's events share is cut in the event's own
        // copy; the shared one is left as it is.
        let exe: std::sync::Arc<str> = format!("/{}", "x".repeat(3000)).into();
        e.exe = Some(exe.clone());
        e.comm = Some("curl".into());
        let weight = limit_fields(&mut e);
        let cut_exe = e.exe.as_deref().unwrap();
        assert!(cut_exe.len() <= FIELD_MAX, "{}", cut_exe.len());
        assert!(cut_exe.ends_with("…[cut: 3001 bytes in all]"), "{cut_exe}");
        assert_eq!(exe.len(), 3001);
        assert_eq!(e.comm.as_deref(), Some("curl"));
        let path = e.path.as_deref().unwrap();
        assert!(path.len() <= FIELD_MAX, "{}", path.len());
        assert!(path.ends_with("…[cut: 10001 bytes in all]"), "{path}");
        assert!(path.starts_with("/éé"));
        assert_eq!(e.intent.as_deref(), Some("short"));
        assert!(weight <= MAX_EVENT_BYTES);
    }

    /// Every text field the event has is one `limit_fields` cuts: an event
    /// whose every field that takes text is huge comes out within the
    /// bound. A field added to `Event` but not here fails this test.
    #[test]
    fn every_text_field_is_bounded() {
        let long = "x".repeat(100_000);
        let serde_json::Value::Object(fields) =
            serde_json::to_value(Event::new(Kind::Request)).unwrap()
        else {
            panic!("an event serialises as an object");
        };
        let mut huge = serde_json::Map::new();
        let mut text_fields = 0;
        for (name, value) in &fields {
            let mut candidate = huge.clone();
            candidate.insert(name.clone(), serde_json::Value::String(long.clone()));
            for (n, v) in &fields {
                candidate.entry(n.clone()).or_insert_with(|| v.clone());
            }
            if serde_json::from_value::<Event>(serde_json::Value::Object(candidate)).is_ok() {
                huge.insert(name.clone(), serde_json::Value::String(long.clone()));
                text_fields += 1;
            } else {
                huge.insert(name.clone(), value.clone());
            }
        }
        assert_eq!(text_fields, OPTIONAL_TEXT_FIELDS + 3);
        let mut e: Event = serde_json::from_value(serde_json::Value::Object(huge)).unwrap();
        let weight = limit_fields(&mut e);
        assert!(weight <= MAX_EVENT_BYTES, "{weight}");
        let calls = e.rpc_calls.take().unwrap();
        assert!(calls.len() <= RPC_CALLS_MAX, "{}", calls.len());
        assert!(calls.ends_with("…[cut: 100000 bytes in all]"));
        let serialised = serde_json::to_string(&e).unwrap();
        assert!(!serialised.contains(&"x".repeat(FIELD_MAX + 1)));
    }

    #[tokio::test]
    async fn the_byte_budget_keeps_only_the_real_weight() {
        let bytes = Bytes::new(MAX_EVENT_BYTES * 2);
        let a = bytes.try_reserve().unwrap();
        let b = bytes.try_reserve().unwrap();
        // Two largest events fill it.
        assert!(bytes.try_reserve().is_none());
        let kept = Bytes::keep(a, 1000);
        assert_eq!(kept, 1000);
        drop(b);
        assert_eq!(bytes.queued(), 1000);
        // Room for one more largest event, not two.
        let c = bytes.try_reserve().unwrap();
        assert!(bytes.try_reserve().is_none());
        drop(c);
        bytes.release(1000);
        assert_eq!(bytes.queued(), 0);
    }

    #[tokio::test]
    async fn the_gate_closes_on_failure_and_on_a_stalled_commit() {
        let gate = Gate::new(Duration::from_millis(50));
        assert!(gate.is_open());
        gate.running();
        assert!(gate.is_open(), "a fresh commit does not close it");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !gate.is_open(),
            "a commit running past the flush interval does"
        );
        assert_eq!(gate.health().state, "stalled");
        gate.failed("disk full".into());
        assert_eq!(gate.health().state, "failing");
        assert_eq!(gate.health().error.as_deref(), Some("disk full"));
        gate.running();
        assert!(!gate.is_open(), "a retry does not reopen it");
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.open().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        gate.done();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gate.health().state, "ok");
    }
}
