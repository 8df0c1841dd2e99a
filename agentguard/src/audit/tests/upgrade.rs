//! A store written by an older agentguard keeps verifying after the
//! upgrade: read as it is, migrated when the daemon opens it, and extended
//! with rows that use the new columns.
//!
//! `testdata/store-v1.sql` is the `sqlite3 .dump` of a store that the
//! agentguard of commit e057790 (schema 1, before extension columns)
//! wrote: a daemon start, a guarded curl's connection, allowed and denied
//! requests, nscd probes refused in the kernel, and a clean stop, with two
//! signed checkpoints. `testdata/store-v1.pub` is that run's public key (its
//! private key was not kept).

use rusqlite::Connection;

use super::super::{
    chain::{hash_row, to_hex},
    signing::Verifier,
    store::{Record, Store},
    verify::verify,
    *,
};

const DUMP: &str = include_str!("../testdata/store-v1.sql");
const PUBLIC_KEY: &str = include_str!("../testdata/store-v1.pub");

/// The old store, restored into `dir/audit/audit.db`, and its key.
fn restore(dir: &std::path::Path) -> Verifier {
    let audit = audit_dir(dir);
    std::fs::create_dir_all(&audit).unwrap();
    Connection::open(audit.join(store::DB_FILE))
        .unwrap()
        .execute_batch(DUMP)
        .unwrap();
    let key = dir.join("store-v1.pub");
    std::fs::write(&key, PUBLIC_KEY).unwrap();
    Verifier::load(&key).unwrap()
}

#[test]
fn a_store_written_by_the_old_code_verifies_read_migrated_and_extended() {
    let dir = tempfile::tempdir().unwrap();
    let key = restore(dir.path());
    let db = db_path(dir.path());

    // Read as it is (audit verify and query on a store not yet migrated).
    let old = Store::open_read_only(&db).unwrap();
    let report = verify(&old, &key).unwrap().unwrap();
    assert_eq!((report.events, report.checkpoints), (10, 2), "{report}");
    let records = query::Filter::default().select(&old, None).unwrap();
    assert!(records.iter().all(|r| r.event.traceparent.is_none()));
    assert_eq!(records[4].event.path.as_deref(), Some("/public/a?q=1"));
    // Found by time through the old index of times.
    let between = query::Filter {
        since: Some(records[3].event.time.clone()),
        until: Some(records[7].event.time.clone()),
        ..Default::default()
    };
    let seqs = |records: Vec<Record>| records.iter().map(|r| r.seq).collect::<Vec<_>>();
    let found_between = seqs(between.select(&old, None).unwrap());
    assert!(
        !found_between.is_empty() && found_between.len() < 10,
        "{found_between:?}"
    );
    drop(old);

    // Migrated, as the daemon's writer opens it.
    let mut store = Store::open(&audit_dir(dir.path())).unwrap();
    let version: String = store
        .conn()
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "2");
    assert_eq!(verify(&store, &key).unwrap().unwrap().events, 10);
    // The same events by time, through the spans made from the rows.
    let index_of_times: bool = store
        .conn()
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'events_time'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!index_of_times);
    assert_eq!(seqs(between.select(&store, None).unwrap()), found_between);

    // Extended: new rows, one with a traceparent, chained after the old.
    let tail = store.tail().unwrap();
    let (mut seq, mut prev) = (tail.last_seq + 1, tail.last_hash);
    let mut records = Vec::new();
    for traceparent in [
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        None,
    ] {
        let mut event = Event::new(Kind::Request).with_decision(Decision::Allow, "ok");
        event.traceparent = traceparent.map(str::to_owned);
        let row = event.to_row();
        let hash = hash_row(seq, &prev, &row).unwrap();
        records.push(Record {
            seq,
            event,
            prev_hash: to_hex(&prev),
            hash: to_hex(&hash),
        });
        (seq, prev) = (seq + 1, hash);
    }
    store.append(&records, None).unwrap();
    drop(store);
    let store = Store::open_read_only(&db).unwrap();
    assert_eq!(verify(&store, &key).unwrap().unwrap().events, 12);
    let back = query::Filter::default().select(&store, None).unwrap();
    assert_eq!(
        back[10].event.traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );

    // The new column is inside the hash: editing it breaks the chain.
    Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE events SET traceparent = NULL WHERE seq = 11")
        .unwrap();
    let broken = verify(&store, &key).unwrap().unwrap_err();
    assert_eq!(broken.seq, 11, "{broken}");
    // And setting it on an old row too.
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "UPDATE events SET traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' WHERE seq = 11;
             UPDATE events SET traceparent = 'x' WHERE seq = 3;",
        )
        .unwrap();
    assert_eq!(verify(&store, &key).unwrap().unwrap_err().seq, 3);
}
