//! The audit pipeline end to end, without a daemon: sink → writer → store →
//! verify, tampering included.

use std::time::Duration;

use rusqlite::Connection;

use super::{
    signing::{PUBLIC_KEY_FILE, Verifier},
    verify::verify,
    *,
};

pub(crate) fn config(checkpoint_every: u64) -> AuditConfig {
    AuditConfig {
        writer: WriterConfig {
            flush_interval: Duration::from_millis(20),
            batch_max: 64,
            checkpoint_every,
            checkpoint_interval: Duration::from_secs(3600),
            retention: None,
            max_bytes: None,
        },
        queue: 16,
        queue_bytes: 1 << 20,
        signing_key: None,
        anchors: anchor::AnchorConfig::default(),
    }
}

fn event(i: usize) -> Event {
    let mut e = Event::new(Kind::Request).with_decision(Decision::Allow, "ok");
    e.agent = Some("bot".into());
    e.path = Some(format!("/item/{i}"));
    e.pid = Some(1000 + i as u32);
    e
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Asks `done` every 10 ms until it holds, for at most five seconds.
pub(crate) async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the sink's count of committed events until it reaches `n`, for
/// at most five seconds; returns the count it saw last.
async fn written(sink: &AuditSink, n: u64) -> u64 {
    eventually(|| sink.status().events_written >= n).await;
    sink.status().events_written
}

/// Takes every place in the queue (by count or by bytes, whichever runs
/// out first) and uses none: a recorder now waits.
pub(crate) async fn fill_queue(sink: &AuditSink) -> Vec<Permit> {
    let mut places = Vec::new();
    while let Ok(place) = tokio::time::timeout(Duration::from_millis(200), sink.reserve()).await {
        places.push(place.unwrap());
        assert!(
            places.len() <= sink.status().queue_capacity,
            "the queue never filled"
        );
    }
    places
}

/// Records `n` events through a fresh writer on `state` and stops it.
fn write(state: &std::path::Path, n: usize, checkpoint_every: u64) {
    let rt = runtime();
    let (sink, writer) = start(state, config(checkpoint_every), vec![]).unwrap();
    rt.block_on(async {
        // More events than the queue holds: record waits, nothing drops.
        for i in 0..n {
            sink.record(event(i)).await;
        }
    });
    writer.shutdown(Duration::from_secs(10));
}

fn check(state: &std::path::Path) -> Result<verify::Report, verify::Break> {
    let store = Store::open_read_only(&db_path(state)).unwrap();
    let key = Verifier::load(&audit_dir(state).join(PUBLIC_KEY_FILE)).unwrap();
    verify(&store, &key).unwrap()
}

fn tamper(state: &std::path::Path, sql: &str) {
    let conn = Connection::open(db_path(state)).unwrap();
    conn.execute_batch(sql).unwrap();
}

#[test]
fn every_event_is_stored_in_order_and_the_chain_verifies() {
    let state = tempfile::tempdir().unwrap();
    write(state.path(), 200, 50);
    let report = check(state.path()).unwrap();
    assert_eq!(report.events, 200);
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(200)));
    assert_eq!(report.last_checkpoint_seq, Some(200));
    let store = Store::open_read_only(&db_path(state.path())).unwrap();
    let all = query::Filter::default().select(&store, None).unwrap();
    let paths: Vec<String> = all.iter().map(|r| r.event.path.clone().unwrap()).collect();
    let expected: Vec<String> = (0..200).map(|i| format!("/item/{i}")).collect();
    assert_eq!(paths, expected);

    // A restart continues the sequence and the chain.
    write(state.path(), 10, 50);
    let report = check(state.path()).unwrap();
    assert_eq!(report.last_seq, Some(210));
}

#[test]
fn an_edited_field_is_found_at_its_seq() {
    let state = tempfile::tempdir().unwrap();
    write(state.path(), 30, 1000);
    tamper(
        state.path(),
        "UPDATE events SET decision = 'deny' WHERE seq = 12",
    );
    assert_eq!(check(state.path()).unwrap_err().seq, 12);
}

#[test]
fn a_deleted_row_is_found_at_its_seq() {
    let state = tempfile::tempdir().unwrap();
    write(state.path(), 30, 1000);
    tamper(state.path(), "DELETE FROM events WHERE seq = 7");
    let b = check(state.path()).unwrap_err();
    assert_eq!(b.seq, 7, "{b}");
    // The first row too.
    tamper(state.path(), "DELETE FROM events WHERE seq = 1");
    assert_eq!(check(state.path()).unwrap_err().seq, 1);
}

#[test]
fn swapped_rows_are_found_at_the_first() {
    let state = tempfile::tempdir().unwrap();
    write(state.path(), 30, 1000);
    tamper(
        state.path(),
        "UPDATE events SET seq = -1 WHERE seq = 20;
         UPDATE events SET seq = 20 WHERE seq = 21;
         UPDATE events SET seq = 21 WHERE seq = -1;",
    );
    assert_eq!(check(state.path()).unwrap_err().seq, 20);
}

#[test]
fn a_rewritten_chain_fails_its_checkpoint_and_a_truncated_one_too() {
    let state = tempfile::tempdir().unwrap();
    write(state.path(), 30, 10);
    // Rehashing the edited row hides the edit from the row itself; the
    // next row's link (and the signed checkpoint) still see it.
    let store = Store::open_read_only(&db_path(state.path())).unwrap();
    let rows = query::Filter::default().select(&store, None).unwrap();
    let mut e = rows[4].event.clone();
    e.decision = Some(Decision::Deny);
    let prev = chain::from_hex(&rows[4].prev_hash).unwrap();
    let h = chain::to_hex(&chain::hash_row(5, &prev, &e.to_row()).unwrap());
    tamper(
        state.path(),
        &format!("UPDATE events SET decision = 'deny', hash = '{h}' WHERE seq = 5"),
    );
    assert_eq!(check(state.path()).unwrap_err().seq, 6);

    let state = tempfile::tempdir().unwrap();
    write(state.path(), 30, 10);
    tamper(state.path(), "DELETE FROM events WHERE seq > 25");
    assert_eq!(check(state.path()).unwrap_err().seq, 26);

    let state = tempfile::tempdir().unwrap();
    write(state.path(), 30, 10);
    tamper(
        state.path(),
        "UPDATE checkpoints SET time = '2000-01-01T00:00:00.000000Z' WHERE seq = 30",
    );
    assert_eq!(check(state.path()).unwrap_err().seq, 30);
}

#[test]
fn retention_keeps_the_chain_verifiable_from_its_anchor() {
    let state = tempfile::tempdir().unwrap();
    // Four runs: each ends with a signed checkpoint (10, 20, 30, 40).
    for _ in 0..4 {
        write(state.path(), 10, 1000);
    }
    // Age the first 25 events; retention may only cut at the last
    // checkpoint among them.
    tamper(
        state.path(),
        "UPDATE events SET time = '2000-01-01T00:00:00.000000Z' WHERE seq <= 25",
    );
    // The edit broke their hashes; re-chain them as the writer would have.
    rechain(state.path());
    let mut store = Store::open(&audit_dir(state.path())).unwrap();
    let anchor = store
        .checkpoints()
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .filter(|&s| s <= 25)
        .max()
        .expect("a checkpoint among the first 25 events");
    let cut = store.prune_before("2001-01-01T00:00:00.000000Z").unwrap();
    assert_eq!(cut, Some((1, anchor)));
    drop(store);
    let report = check(state.path()).unwrap();
    assert_eq!(report.anchor_seq, Some(anchor));
    assert_eq!(report.first_seq, Some(anchor + 1));
    // And the chain goes on from there.
    write(state.path(), 5, 10);
    assert_eq!(check(state.path()).unwrap().last_seq, Some(45));
}

#[test]
fn size_retention_cuts_at_a_checkpoint_and_the_rest_verifies() {
    let state = tempfile::tempdir().unwrap();
    for _ in 0..4 {
        write(state.path(), 50, 1000);
    }
    let mut store = Store::open(&audit_dir(state.path())).unwrap();
    let used = |s: &Store| -> i64 {
        let q = |n: &str| -> i64 {
            s.conn()
                .query_row(&format!("PRAGMA {n}"), [], |r| r.get(0))
                .unwrap()
        };
        (q("page_count") - q("freelist_count")) * q("page_size")
    };
    let before = used(&store);
    // Far above: nothing to do.
    assert_eq!(store.prune_to_size(before as u64 * 2).unwrap(), None);
    let cut = store.prune_to_size(before as u64 / 2).unwrap();
    let (first, anchor) = cut.expect("pruned");
    assert_eq!(first, 1);
    assert!([50, 100, 150].contains(&anchor), "{anchor}");
    drop(store);
    let report = check(state.path()).unwrap();
    assert_eq!(report.anchor_seq, Some(anchor));
    assert_eq!(report.last_seq, Some(200));
}

/// Recomputes every hash and re-signs every checkpoint (test set-up only).
fn rechain(state: &std::path::Path) {
    let signer = signing::Signer::load_or_create(&signing::default_key_path(state), &[]).unwrap();
    let conn = Connection::open(db_path(state)).unwrap();
    let store = Store::open_read_only(&db_path(state)).unwrap();
    let mut prev = chain::GENESIS;
    let mut rows = Vec::new();
    store
        .scan(|seq, values, _, _| {
            rows.push((seq, values));
            true
        })
        .unwrap();
    for (seq, values) in rows {
        let h = chain::hash_row(seq, &prev, &values).unwrap();
        conn.execute(
            "UPDATE events SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![chain::to_hex(&prev), chain::to_hex(&h), seq],
        )
        .unwrap();
        let time: Option<String> = conn
            .query_row("SELECT time FROM checkpoints WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .ok();
        if let Some(time) = time {
            conn.execute(
                "UPDATE checkpoints SET hash = ?1, signature = ?2 WHERE seq = ?3",
                rusqlite::params![chain::to_hex(&h), signer.sign(seq, &h, &time), seq],
            )
            .unwrap();
        }
        prev = h;
    }
}

#[test]
fn followers_see_committed_records() {
    let state = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (sink, writer) = start(state.path(), config(100), vec![]).unwrap();
    let mut follow = sink.subscribe();
    rt.block_on(async {
        sink.record(event(1)).await;
        let r = tokio::time::timeout(Duration::from_secs(5), follow.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.seq, 1);
        assert_eq!(r.event.path.as_deref(), Some("/item/1"));
    });
    assert_eq!(sink.status().events_written, 1);
    writer.shutdown(Duration::from_secs(5));
}

/// An observer that panics (a bug in metrics or a view) loses no event:
/// the event is stored, and the observers after it still see it.
#[test]
fn an_observer_that_panics_does_not_lose_the_event() {
    let state = tempfile::tempdir().unwrap();
    let rt = runtime();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = seen.clone();
    let observers: Vec<Observer> = vec![
        Arc::new(|e: &Event| panic!("observer bug on {:?}", e.path)),
        Arc::new(move |_: &Event| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }),
    ];
    let (sink, writer) = start(state.path(), config(100), observers).unwrap();
    rt.block_on(async {
        sink.record(event(1)).await;
        sink.record(event(2)).await;
        assert_eq!(written(&sink, 2).await, 2);
    });
    writer.shutdown(Duration::from_secs(5));
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    let paths: Vec<String> = Connection::open(db_path(state.path()))
        .unwrap()
        .prepare("SELECT path FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(paths, ["/item/1", "/item/2"]);
    assert!(check(state.path()).is_ok());
}

/// The store's checkpoints, as `--audit-anchor-dir` would have exported
/// them.
fn exported(state: &std::path::Path) -> Vec<Checkpoint> {
    Store::open_read_only(&db_path(state))
        .unwrap()
        .checkpoints()
        .unwrap()
}

fn check_anchored(
    state: &std::path::Path,
    anchors: &[Checkpoint],
) -> Result<verify::Report, verify::Break> {
    let store = Store::open_read_only(&db_path(state)).unwrap();
    let key = Verifier::load(&audit_dir(state).join(PUBLIC_KEY_FILE)).unwrap();
    verify::verify_anchored(&store, &key, anchors).unwrap()
}

#[test]
fn a_cut_after_an_exported_checkpoint_is_found_only_with_the_anchor() {
    let state = tempfile::tempdir().unwrap();
    write(state.path(), 100, 25);
    let anchors = exported(state.path());
    assert_eq!(anchors.last().unwrap().seq, 100);
    let report = check_anchored(state.path(), &anchors).unwrap();
    assert_eq!(report.anchor.unwrap().newest_seq, 100);

    // The tail and the checkpoints after the cut go together: the store
    // alone is consistent again.
    tamper(
        state.path(),
        "DELETE FROM events WHERE seq > 60; DELETE FROM checkpoints WHERE seq > 60;",
    );
    check(state.path()).expect("undetectable from the store alone");
    let broken = check_anchored(state.path(), &anchors).unwrap_err();
    assert_eq!(broken.seq, 61, "{broken}");
    assert!(
        broken.reason.contains("events 61..=100 are missing"),
        "{broken}"
    );
}

#[test]
fn a_chain_made_anew_with_the_same_key_is_found_only_with_the_anchor() {
    let state = tempfile::tempdir().unwrap();
    write(state.path(), 50, 25);
    let anchors = exported(state.path());
    // Replaced: the same key (the intruder read it) signs a fresh chain
    // of as many events.
    let key = signing::default_key_path(state.path());
    let fresh = tempfile::tempdir().unwrap();
    let fresh_key = signing::default_key_path(fresh.path());
    std::fs::create_dir_all(fresh_key.parent().unwrap()).unwrap();
    std::fs::copy(&key, &fresh_key).unwrap();
    write(fresh.path(), 60, 25);
    std::fs::copy(db_path(fresh.path()), db_path(state.path())).unwrap();
    check(state.path()).expect("undetectable from the store alone");
    let broken = check_anchored(state.path(), &anchors).unwrap_err();
    assert_eq!(broken.seq, anchors[0].seq, "{broken}");
    assert!(broken.reason.contains("replaced"), "{broken}");

    // Emptied: every exported event is missing.
    tamper(state.path(), "DELETE FROM events; DELETE FROM checkpoints;");
    let broken = check_anchored(state.path(), &anchors).unwrap_err();
    assert_eq!(broken.seq, 1);
    assert!(
        broken.reason.contains("the store holds no events"),
        "{broken}"
    );
}

mod upgrade;

#[test]
fn an_event_whose_recorder_is_dropped_while_it_waits_is_still_stored() {
    let state = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (sink, writer) = start(state.path(), config(100), vec![]).unwrap();
    rt.block_on(async {
        let places = fill_queue(&sink).await;
        let mut recording = Box::pin(sink.record_even_if_dropped(event(7)));
        let waker = std::task::Waker::noop();
        let polled = recording
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        assert!(polled.is_pending());
        // Its request went away; then the queue has room again.
        drop(recording);
        drop(places);
        assert_eq!(written(&sink, 1).await, 1);
    });
    writer.shutdown(Duration::from_secs(5));
    let stored: String = Connection::open(db_path(state.path()))
        .unwrap()
        .query_row("SELECT path FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, "/item/7");
}

/// A full batch is committed as soon as it is complete (the emitter whose
/// event completes it rings the writer), counting what the writer already
/// took, and a lone event at its flush deadline.
#[test]
fn a_full_batch_is_committed_at_once_and_a_partial_one_at_its_deadline() {
    let state = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(1000);
    cfg.writer.batch_max = 8;
    cfg.writer.flush_interval = Duration::from_secs(4);
    let (sink, writer) = start(state.path(), cfg, vec![]).unwrap();
    rt.block_on(async {
        let started = tokio::time::Instant::now();
        sink.record(event(0)).await;
        // The writer takes the first event and gathers the rest of its
        // batch: the queue alone never holds a whole batch.
        eventually(|| sink.queue_depth() == 0).await;
        assert_eq!(
            sink.queue_depth(),
            0,
            "the writer never took the first event"
        );
        for i in 1..8 {
            sink.record(event(i)).await;
        }
        assert_eq!(written(&sink, 8).await, 8);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "a full batch waited for its deadline: {:?}",
            started.elapsed()
        );
        let lone = tokio::time::Instant::now();
        sink.record(event(8)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            sink.status().events_written,
            8,
            "committed before its deadline"
        );
        assert_eq!(written(&sink, 9).await, 9);
        assert!(lone.elapsed() >= Duration::from_secs(4));
    });
    writer.shutdown(Duration::from_secs(5));
}

/// A byte budget that holds one or two events at a time is given back at
/// once: the writer commits as soon as the budget cannot take another
/// event (one event: it finds so when it takes it), and the emitter that
/// leaves it so rings (two: the writer sleeps after the first), however
/// far the batch is from full or its flush deadline.
#[test]
fn a_batch_the_byte_budget_cannot_grow_is_committed_at_once() {
    let weight = queue::limit_fields(&mut event(0));
    for (events, budget) in [
        (1, queue::MAX_EVENT_BYTES),
        (2, queue::MAX_EVENT_BYTES + weight),
    ] {
        let state = tempfile::tempdir().unwrap();
        let rt = runtime();
        let mut cfg = config(1000);
        cfg.writer.batch_max = 64;
        cfg.writer.flush_interval = Duration::from_secs(30);
        cfg.queue_bytes = budget;
        let (sink, writer) = start(state.path(), cfg, vec![]).unwrap();
        rt.block_on(async {
            // Each batch fills the budget, so none waits for its deadline.
            let n = 2 * events;
            let recorded = tokio::time::timeout(Duration::from_secs(10), async {
                for i in 0..n {
                    sink.record(event(i)).await;
                    // Taken by the writer before the next: it gathers the
                    // rest of its batch asleep, until a ring or deadline.
                    eventually(|| sink.queue_depth() == 0).await;
                }
            })
            .await;
            assert!(
                recorded.is_ok(),
                "budget of {events} event(s): an event waited for the batch before it to reach its deadline"
            );
            assert_eq!(written(&sink, n as u64).await, n as u64, "budget of {events} event(s)");
        });
        writer.shutdown(Duration::from_secs(5));
    }
}

/// What the daemon logs, kept for a test to read.
#[derive(Clone, Default)]
struct Logged(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An event queued from a `Drop` while the queue is full waits in a task;
/// should the daemon stop (its runtime drop the task) before the queue has
/// room, the loss is logged with the event's id, not silent.
#[test]
fn an_event_still_waiting_for_room_when_the_daemon_stops_is_said_lost() {
    let state = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (sink, writer) = start(state.path(), config(100), vec![]).unwrap();
    let logged = Logged::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer({
            let logged = logged.clone();
            move || logged.clone()
        })
        .finish();
    let (id, places) = tracing::subscriber::with_default(subscriber, || {
        let (id, places) = rt.block_on(async {
            let places = fill_queue(&sink).await;
            let lost = event(9);
            let id = lost.id.clone();
            sink.record_detached(lost);
            // The task starts, and waits for room.
            tokio::task::yield_now().await;
            (id, places)
        });
        // The daemon stops: its runtime drops the waiting task, which the
        // queue had no room for yet.
        drop(rt);
        (id, places)
    });
    drop(places);
    let log = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.matches("the daemon stopped before the event could be queued; audit event not stored")
            .count()
            == 1
            && log.contains(&id),
        "{log}"
    );
    writer.shutdown(Duration::from_secs(5));
    assert_eq!(sink.status().events_written, 0);
}

/// A batch larger than the queue: the emitter that fills the queue rings,
/// and the writer takes the queue's worth again and again, well before the
/// flush deadline.
#[test]
fn a_queue_smaller_than_the_batch_rings_when_it_is_full() {
    let state = tempfile::tempdir().unwrap();
    let rt = runtime();
    let mut cfg = config(1000);
    cfg.writer.batch_max = 64;
    cfg.writer.flush_interval = Duration::from_secs(30);
    assert_eq!(cfg.queue, 16);
    let (sink, writer) = start(state.path(), cfg, vec![]).unwrap();
    rt.block_on(async {
        // Four queues' worth: each wait for room ends when the writer
        // takes what the queue holds, which it does only when rung.
        let recording = async {
            for i in 0..64 {
                sink.record(event(i)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), recording)
            .await
            .expect("recording waited for the flush deadline");
        assert_eq!(written(&sink, 64).await, 64);
    });
    writer.shutdown(Duration::from_secs(5));
}
