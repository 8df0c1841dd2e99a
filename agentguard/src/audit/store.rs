//! The SQLite database that holds the audit record.
//!
//! ```text
//! <state-dir>/audit/           0700
//! <state-dir>/audit/audit.db   0600  (and its -wal and -shm, same mode)
//! ```
//!
//! Tables: `events` (one row per event: `seq`, the [`COLUMNS`], `prev_hash`,
//! `hash`), `event_spans` (per committed batch, its first and last `seq` and
//! its earliest and latest `time`: see [`Store::since_clause`]),
//! `checkpoints` (signed `(seq, hash, time)`), `meta` (schema and chain
//! versions). WAL mode lets `audit query` and `audit verify` read while
//! the daemon writes; `synchronous = FULL` makes each committed batch survive
//! a power cut, not only a crash.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{
    Connection, OpenFlags, OptionalExtension as _, Row, params, params_from_iter,
    types::{ToSqlOutput, Value, ValueRef},
};
use thiserror::Error;
use tracing::info;

use super::{
    chain::{GENESIS, Hash, from_hex},
    event::{BASE_COLUMNS, COLUMN_COUNT, COLUMNS, Decision, Event},
};

pub const DB_FILE: &str = "audit.db";
/// Bumped when the table layout changes. 2 added the extension columns
/// (`traceparent`); a version 1 store is migrated when the daemon opens it
/// and read as it is by `audit query` and `audit verify`.
const SCHEMA_VERSION: &str = "2";

/// The decisions the store indexes: all but `allow`, which most events
/// carry. Allowing a request, the common case, then spares the writer's
/// insert a third index (about 5k of its ~58k instructions a row,
/// callgrind); a query for allowed events reads the table in order, where
/// most rows match anyway. SQLite uses a partial index only for a query
/// whose WHERE names its condition word for word: queries filter by
/// decision through [`decision_clause`].
macro_rules! indexed_decisions {
    () => {
        "decision <> 'allow'"
    };
}

/// The condition for events with decision `d` (its value bound to the
/// `?`), in the words that let SQLite use the decision index.
pub fn decision_clause(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "decision = ?",
        _ => concat!("decision = ? AND ", indexed_decisions!()),
    }
}
/// The last `seq` a span holds, 0 for none (SQL).
macro_rules! last_spanned {
    () => {
        "coalesce((SELECT last_seq FROM event_spans ORDER BY first_seq DESC LIMIT 1), 0)"
    };
}

/// How a query finds the events of a time range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeLookup {
    /// Through `event_spans`: each span bounds the `seq` of its events by
    /// time. Spans follow each other in `seq` without overlap, and every
    /// event up to the last span lies in one: the writer adds one per
    /// batch, in the batch's transaction, and the migration spans what
    /// lies past the last. Events past the last span (an earlier
    /// agentguard, rolled back to, wrote them) are not bounded at all.
    Spans,
    /// Through the index of `time` that agentguard before the spans kept,
    /// and, when rolled back to, makes again: while it is there, events
    /// may have been written without a span.
    TimeIndex,
}

/// Versions this agentguard reads.
const READABLE_VERSIONS: &[&str] = &["1", "2"];
/// How long a reader or writer waits for a lock before giving up: readers
/// never block WAL writers, but checkpoints of the WAL file can briefly.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Columns stored as INTEGER; the others are TEXT.
const INTEGER_COLUMNS: &[&str] = &[
    "cgroup_id",
    "pid",
    "uid",
    "gid",
    "src_port",
    "dst_port",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_us",
];

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("failed to prepare audit directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("audit database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("no audit database at {0} (has the daemon run with this --state-dir?)")]
    Missing(PathBuf),
    #[error(
        "audit database {path} has schema version {found}, this agentguard reads 1 and {SCHEMA_VERSION}"
    )]
    Schema { path: PathBuf, found: String },
}

/// One stored event with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
    pub prev_hash: String,
    pub hash: String,
}

/// A signed statement that the chain's event `seq` has hash `hash`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub time: String,
    pub signature: String,
    /// Hex of the public key that signed.
    pub key_id: String,
}

/// Where the chain ends: the next event gets `last_seq + 1` and `last_hash`
/// as its `prev_hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub last_seq: i64,
    pub last_hash: Hash,
    pub last_checkpoint_seq: i64,
}

/// The event insert, every parameter bound by position (`seq`, the
/// [`COLUMNS`], `prev_hash`, `hash`); made once, prepared once per
/// connection (`prepare_cached`).
static INSERT_EVENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO events (seq, {}, prev_hash, hash) VALUES ({})",
        COLUMNS.join(", "),
        vec!["?"; COLUMNS.len() + 3].join(", ")
    )
});

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The [`COLUMNS`] as a select list; a column an older store lacks
    /// reads as NULL.
    select_list: String,
    times: TimeLookup,
}

impl Store {
    /// Opens (creating if needed) the daemon's database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir_err = |source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let path = dir.join(DB_FILE);
        // Created 0600 before SQLite opens it: SQLite gives the -wal and -shm
        // files the database file's mode.
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(dir_err)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(dir_err)?;
        let conn = Connection::open(&path).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut store = Self {
            conn,
            path,
            select_list: COLUMNS.join(", "),
            times: TimeLookup::TimeIndex,
        };
        store.init().map_err(|e| store.err(e))?;
        store.check_schema()?;
        store.migrate().map_err(|e| store.err(e))?;
        store.select_list = store.select_list().map_err(|e| store.err(e))?;
        store.times = store.time_lookup().map_err(|e| store.err(e))?;
        Ok(store)
    }

    /// Opens an existing database for reading only (query, verify): works
    /// while the daemon writes, and cannot change a byte.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
        let mut store = Self {
            conn,
            path: path.to_owned(),
            select_list: COLUMNS.join(", "),
            times: TimeLookup::TimeIndex,
        };
        store
            .conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| store.err(e))?;
        store.check_schema()?;
        store.select_list = store.select_list().map_err(|e| store.err(e))?;
        store.times = store.time_lookup().map_err(|e| store.err(e))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn init(&self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        let columns: Vec<String> = COLUMNS
            .iter()
            .map(|c| {
                let ty = if INTEGER_COLUMNS.contains(c) {
                    "INTEGER"
                } else {
                    "TEXT"
                };
                let not_null = if matches!(*c, "id" | "time" | "kind") {
                    " NOT NULL"
                } else {
                    ""
                };
                format!("{c} {ty}{not_null}")
            })
            .collect();
        self.conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
             INSERT OR IGNORE INTO meta (key, value) VALUES ('chain', 'agentguard-audit-v1');
             CREATE TABLE IF NOT EXISTS events (
                 seq INTEGER PRIMARY KEY,
                 {},
                 prev_hash TEXT NOT NULL,
                 hash TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS events_agent ON events (agent, seq);
             CREATE TABLE IF NOT EXISTS event_spans (
                 first_seq INTEGER PRIMARY KEY,
                 last_seq INTEGER NOT NULL,
                 min_time TEXT NOT NULL,
                 max_time TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS event_spans_max_time ON event_spans (max_time);
             CREATE TABLE IF NOT EXISTS checkpoints (
                 seq INTEGER PRIMARY KEY,
                 hash TEXT NOT NULL,
                 time TEXT NOT NULL,
                 signature TEXT NOT NULL,
                 key_id TEXT NOT NULL
             );",
            columns.join(",\n                 "),
        ))
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let found: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match found {
            Some(v) if READABLE_VERSIONS.contains(&v.as_str()) => Ok(()),
            found => Err(StoreError::Schema {
                path: self.path.clone(),
                found: found.unwrap_or_else(|| "none".into()),
            }),
        }
    }

    /// Brings an older store to [`SCHEMA_VERSION`] in one transaction: adds
    /// the extension columns it lacks (NULL in every existing row, which
    /// therefore hashes as before), replaces the index of every decision
    /// with that of the decisions other than allow, and the index of times
    /// with spans (both built once, from the rows: a large store takes a
    /// moment at its first open after the upgrade, which the log says). No
    /// row changes.
    fn migrate(&mut self) -> rusqlite::Result<()> {
        let present = self.event_columns()?;
        // Immediate: what is found here is still so when it is changed.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let indexed = in_schema(&tx, "index", "events_decision_notable")?;
        // An earlier agentguard, started on this store since (a rollback),
        // made the index of every decision again: it goes at each open,
        // else every insert would keep paying for both.
        tx.execute_batch("DROP INDEX IF EXISTS events_decision")?;
        if !indexed {
            // Whether there is anything to index, not how much: counting
            // would read the whole table once more before the index does.
            let has_rows: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))?;
            if has_rows {
                info!("audit store: indexing the decisions other than allow, once");
            }
            tx.execute_batch(concat!(
                "CREATE INDEX events_decision_notable ON events (decision, seq) WHERE ",
                indexed_decisions!(),
                ";"
            ))?;
        }
        if in_schema(&tx, "index", "events_time")? {
            span_unspanned_events(&tx)?;
            tx.execute_batch("DROP INDEX events_time")?;
        }
        for column in &COLUMNS[BASE_COLUMNS..] {
            if !present.iter().any(|p| p == column) {
                let ty = if INTEGER_COLUMNS.contains(column) {
                    "INTEGER"
                } else {
                    "TEXT"
                };
                tx.execute_batch(&format!("ALTER TABLE events ADD COLUMN {column} {ty}"))?;
            }
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [SCHEMA_VERSION],
        )?;
        tx.commit()
    }

    /// Spans, if the store keeps them for every event.
    fn time_lookup(&self) -> rusqlite::Result<TimeLookup> {
        let spans = in_schema(&self.conn, "table", "event_spans")?;
        Ok(
            if spans && !in_schema(&self.conn, "index", "events_time")? {
                TimeLookup::Spans
            } else {
                TimeLookup::TimeIndex
            },
        )
    }

    /// The condition for events at or after a time (bound to its `?`, which
    /// it names twice). Through the spans it bounds `seq` from below by the
    /// first span that reaches the time (or, if none does, the first event
    /// past the last span), so SQLite reads the table from there instead
    /// of from the start; the comparison of `time` itself then keeps
    /// exactly the events that match, since an event's time need not grow
    /// with its `seq` (an event is written when its response ends).
    pub fn since_clause(&self) -> &'static str {
        match self.times {
            TimeLookup::Spans => concat!(
                "seq >= min(coalesce((SELECT min(first_seq) FROM event_spans WHERE max_time >= ?), ",
                "9223372036854775807), ",
                last_spanned!(),
                " + 1) AND time >= ?"
            ),
            TimeLookup::TimeIndex => "time >= ?",
        }
    }

    /// The condition for events at or before a time: `seq` bounded from
    /// above by the last span that starts by then (spans follow each other
    /// in `seq`, so it ends after every span that does), unless events lie
    /// past the last span.
    pub fn until_clause(&self) -> &'static str {
        match self.times {
            TimeLookup::Spans => concat!(
                "seq <= CASE WHEN coalesce((SELECT max(seq) FROM events), 0) > ",
                last_spanned!(),
                " THEN 9223372036854775807 ELSE ",
                "(SELECT last_seq FROM event_spans WHERE min_time <= ? ORDER BY first_seq DESC LIMIT 1) ",
                "END AND time <= ?"
            ),
            TimeLookup::TimeIndex => "time <= ?",
        }
    }

    fn event_columns(&self) -> rusqlite::Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info('events')")?;
        let names = stmt.query_map([], |r| r.get(0))?;
        names.collect()
    }

    fn select_list(&self) -> rusqlite::Result<String> {
        let present = self.event_columns()?;
        Ok(COLUMNS
            .iter()
            .map(|c| {
                if present.iter().any(|p| p == c) {
                    (*c).to_owned()
                } else {
                    format!("NULL AS {c}")
                }
            })
            .collect::<Vec<_>>()
            .join(", "))
    }

    /// The end of the chain: the last event, or, when retention removed
    /// every event, the anchor checkpoint.
    pub fn tail(&self) -> Result<Tail, StoreError> {
        let last_event: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let last_checkpoint = self.last_checkpoint()?;
        let (last_seq, last_hash) = match (last_event, &last_checkpoint) {
            (Some((seq, hash)), _) => (seq, from_hex(&hash).unwrap_or(GENESIS)),
            (None, Some(c)) => (c.seq, from_hex(&c.hash).unwrap_or(GENESIS)),
            (None, None) => (0, GENESIS),
        };
        Ok(Tail {
            last_seq,
            last_hash,
            last_checkpoint_seq: last_checkpoint.map_or(0, |c| c.seq),
        })
    }

    pub fn last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        self.conn
            .query_row(
                "SELECT seq, hash, time, signature, key_id FROM checkpoints ORDER BY seq DESC LIMIT 1",
                [],
                read_checkpoint,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, hash, time, signature, key_id FROM checkpoints ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], read_checkpoint)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    /// Appends `records` (already chained) and, if given, a checkpoint, in
    /// one transaction: after a crash either all of it is there or none.
    ///
    /// Each row is bound value by value from the event itself
    /// ([`Event::row_refs`], the row the writer hashed) into the one cached
    /// insert: no row is copied or collected first.
    pub fn append(
        &mut self,
        records: &[Record],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut stmt = tx.prepare_cached(INSERT_EVENT.as_str()).map_err(err)?;
            // What the previous row bound. SQLite keeps a statement's
            // bindings from one execution to the next (the cache clears
            // them only when the statement goes back to it), so a value
            // equal to the previous row's in its column is still bound and
            // is not bound again: consecutive events mostly share their
            // agent, process, host, tool and decision, and each text bind
            // costs SQLite an allocation, a copy and the release of the
            // value before.
            let mut bound: Option<[ValueRef<'_>; COLUMN_COUNT]> = None;
            for r in records {
                stmt.raw_bind_parameter(1, r.seq).map_err(err)?;
                let row = r.event.row_refs();
                for (i, v) in row.iter().enumerate() {
                    if bound.as_ref().is_some_and(|b| b[i] == *v) {
                        continue;
                    }
                    stmt.raw_bind_parameter(i + 2, ToSqlOutput::Borrowed(*v))
                        .map_err(err)?;
                }
                bound = Some(row);
                stmt.raw_bind_parameter(COLUMNS.len() + 2, r.prev_hash.as_str())
                    .map_err(err)?;
                stmt.raw_bind_parameter(COLUMNS.len() + 3, r.hash.as_str())
                    .map_err(err)?;
                stmt.raw_execute().map_err(err)?;
            }
            if let Some(span) = Span::of(records) {
                tx.prepare_cached(
                    "INSERT INTO event_spans (first_seq, last_seq, min_time, max_time) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![span.first_seq, span.last_seq, span.min_time, span.max_time])
                })
                .map_err(err)?;
            }
            if let Some(c) = checkpoint {
                tx.execute(
                    "INSERT INTO checkpoints (seq, hash, time, signature, key_id) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![c.seq, c.hash, c.time, c.signature, c.key_id],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Removes the events older than `cutoff` (an RFC 3339 time in the
    /// store's format) up to the newest checkpoint that is itself older,
    /// keeping that checkpoint as the anchor the remaining chain starts from.
    /// Returns the removed range, if any.
    pub fn prune_before(&mut self, cutoff: &str) -> Result<Option<(i64, i64)>, StoreError> {
        let anchor: Option<i64> = self
            .conn
            .query_row(
                "SELECT c.seq FROM checkpoints c JOIN events e ON e.seq = c.seq
                 WHERE e.time < ?1 ORDER BY c.seq DESC LIMIT 1",
                [cutoff],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        self.prune_through(anchor)
    }

    /// Removes the oldest events, up to a checkpoint, until the events take
    /// at most `max_bytes` (estimated from the database's used pages). The
    /// newest checkpoint is never passed: the events after it are the ones
    /// only the chain protects.
    pub fn prune_to_size(&mut self, max_bytes: u64) -> Result<Option<(i64, i64)>, StoreError> {
        let pragma = |name: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(|e| self.err(e))
        };
        let used = (pragma("page_count")? - pragma("freelist_count")?) * pragma("page_size")?;
        let count = self.count()?;
        if used as u64 <= max_bytes || count == 0 {
            return Ok(None);
        }
        // Remove enough events, at the average size, to get a tenth under
        // the limit, so pruning does not run at every check.
        let per_event = (used / count).max(1) as u64;
        let excess = (used as u64 - max_bytes * 9 / 10).div_ceil(per_event) as i64;
        let first: i64 = self
            .conn
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let anchor: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM checkpoints WHERE seq < ?1 AND seq < (SELECT MAX(seq) FROM checkpoints)
                 ORDER BY seq DESC LIMIT 1",
                [first + excess],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        // Not even one checkpoint's worth: cut at the oldest that helps.
        let anchor = match anchor {
            Some(a) => Some(a),
            None => self
                .conn
                .query_row(
                    "SELECT seq FROM checkpoints WHERE seq >= ?1 AND seq < (SELECT MAX(seq) FROM checkpoints)
                     ORDER BY seq LIMIT 1",
                    [first],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?,
        };
        self.prune_through(anchor)
    }

    /// Deletes events up to and including `anchor` and the checkpoints
    /// before it, in one transaction; the anchor checkpoint stays.
    fn prune_through(&mut self, anchor: Option<i64>) -> Result<Option<(i64, i64)>, StoreError> {
        let path = self.path.clone();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let first: Option<i64> = tx
            .query_row("SELECT MIN(seq) FROM events", [], |r| r.get(0))
            .map_err(err)?;
        let (Some(anchor), Some(first)) = (anchor, first) else {
            return Ok(None);
        };
        if anchor < first {
            return Ok(None);
        }
        tx.execute("DELETE FROM events WHERE seq <= ?1", [anchor])
            .map_err(err)?;
        tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [anchor])
            .map_err(err)?;
        // A span that reaches past the anchor stays: it still bounds the
        // events left.
        tx.execute(
            "DELETE FROM event_spans WHERE first_seq <= ?1 AND last_seq <= ?1",
            [anchor],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Some((first, anchor)))
    }

    /// Every event in sequence order, as raw rows, for the verifier: `f`
    /// sees `(seq, values, prev_hash, hash)` and may stop early with `false`.
    pub fn scan(
        &self,
        mut f: impl FnMut(i64, Vec<Value>, String, String) -> bool,
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT seq, {}, prev_hash, hash FROM events ORDER BY seq",
                self.select_list
            ))
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let (seq, values, prev, hash) = raw_row(row).map_err(|e| self.err(e))?;
            if !f(seq, values, prev, hash) {
                break;
            }
        }
        Ok(())
    }

    /// Records matching an SQL condition over the events table (built by
    /// [`super::query`] from typed filters, values bound as parameters).
    pub fn select(
        &self,
        condition: &str,
        params: &[Value],
        limit: Option<u64>,
    ) -> Result<Vec<Record>, StoreError> {
        // The newest `limit` matches, returned oldest first.
        let limit = limit.map_or(-1, |n| n.min(i64::MAX as u64) as i64);
        let sql = format!(
            "SELECT * FROM (SELECT seq, {cols}, prev_hash, hash FROM events WHERE {condition}
             ORDER BY seq DESC LIMIT {limit}) ORDER BY seq",
            cols = self.select_list
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params_from_iter(params.iter()))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let (seq, values, prev_hash, hash) = raw_row(row).map_err(|e| self.err(e))?;
            // A row the verifier would flag still shows in queries, as it is:
            // the query is not the place that judges it.
            let event = Event::from_row(values).map_err(|e| {
                self.err(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("event {seq}: {e}").into(),
                ))
            })?;
            out.push(Record {
                seq,
                event,
                prev_hash,
                hash,
            });
        }
        Ok(out)
    }

    pub fn count(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

/// A committed batch's place in the sequence and in time.
struct Span<'a> {
    first_seq: i64,
    last_seq: i64,
    min_time: &'a str,
    max_time: &'a str,
}

impl<'a> Span<'a> {
    fn of(records: &'a [Record]) -> Option<Self> {
        let (first, last) = (records.first()?, records.last()?);
        let mut span = Span {
            first_seq: first.seq,
            last_seq: last.seq,
            min_time: &first.event.time,
            max_time: &first.event.time,
        };
        // Times in the store's fixed-width format order as text, as SQLite
        // compares them.
        for r in records {
            span.min_time = span.min_time.min(r.event.time.as_str());
            span.max_time = span.max_time.max(r.event.time.as_str());
        }
        Some(span)
    }
}

/// Gives the events that no span holds yet (all of them in a store made
/// before spans; those an earlier agentguard, rolled back to, wrote since)
/// spans of at most [`SPANNED_AT_ONCE`] events, from the rows.
fn span_unspanned_events(conn: &Connection) -> rusqlite::Result<()> {
    let spanned_through = last_spanned!();
    let unspanned: bool = conn.query_row(
        &format!("SELECT EXISTS (SELECT 1 FROM events WHERE seq > {spanned_through})"),
        [],
        |r| r.get(0),
    )?;
    if !unspanned {
        return Ok(());
    }
    info!("audit store: summarising the times of events written before spans, once");
    conn.execute(
        &format!(
            "INSERT INTO event_spans (first_seq, last_seq, min_time, max_time)
             SELECT min(seq), max(seq), min(time), max(time) FROM events
             WHERE seq > {spanned_through} GROUP BY seq / {SPANNED_AT_ONCE}"
        ),
        [],
    )?;
    Ok(())
}

/// Events per span made from rows: about a full batch's.
const SPANNED_AT_ONCE: i64 = 1024;

/// Whether the store has the table or index (`kind`) `name`.
fn in_schema(conn: &Connection, kind: &str, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = ?1 AND name = ?2",
        [kind, name],
        |r| r.get(0),
    )
}

fn raw_row(row: &Row<'_>) -> rusqlite::Result<(i64, Vec<Value>, String, String)> {
    let seq: i64 = row.get(0)?;
    let mut values = Vec::with_capacity(COLUMNS.len());
    for i in 0..COLUMNS.len() {
        values.push(row.get::<_, Value>(i + 1)?);
    }
    // Read as values: a tampered hash column of another type must show up
    // as a mismatch in verify, not as a read error.
    let text = |v: Value| match v {
        Value::Text(s) => s,
        other => format!("{other:?}"),
    };
    let prev = text(row.get::<_, Value>(COLUMNS.len() + 1)?);
    let hash = text(row.get::<_, Value>(COLUMNS.len() + 2)?);
    Ok((seq, values, prev, hash))
}

fn read_checkpoint(r: &Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: r.get(0)?,
        hash: r.get(1)?,
        time: r.get(2)?,
        signature: r.get(3)?,
        key_id: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row `sql` returns, each read by `row`.
    fn rows<T>(
        store: &Store,
        sql: &str,
        row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Vec<T> {
        let mut stmt = store.conn.prepare(sql).unwrap();
        let read = stmt.query_map([], row).unwrap();
        read.collect::<Result<_, _>>().unwrap()
    }

    /// How SQLite runs the newest ten events under `clause`, its `?` bound
    /// to `value`.
    fn query_plan(store: &Store, clause: &str, value: &str) -> String {
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE {} ORDER BY seq DESC LIMIT 10",
            clause.replace('?', "?1")
        );
        let mut stmt = store.conn.prepare(&sql).unwrap();
        let steps = stmt.query_map([value], |r| r.get::<_, String>(3)).unwrap();
        steps.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
    }

    /// A batch whose rows share some values with the row before and not
    /// others, NULL included: every row reads back as it was written, so a
    /// value left bound from the previous row (`append`) is never one the
    /// row does not hold.
    #[test]
    fn rows_of_a_batch_read_back_as_written_whatever_they_share() {
        use super::super::event::Kind;
        let state = tempfile::tempdir().unwrap();
        let mut store = Store::open(&state.path().join("audit")).unwrap();
        let event =
            |agent: Option<&str>, path: Option<&str>, pid: Option<u32>, tool: Option<&str>| {
                let mut e = Event::new(Kind::Request).with_decision(Decision::Allow, "ok");
                e.agent = agent.map(Into::into);
                e.path = path.map(Into::into);
                e.pid = pid;
                e.tool = tool.map(Into::into);
                e
            };
        let events = [
            event(Some("a"), Some("/x"), Some(1), Some("t")),
            // The same but the path gone and the tool changed.
            event(Some("a"), None, Some(1), Some("u")),
            // Everything changed, the path back.
            event(Some("b"), Some("/y"), None, None),
            // The same again.
            event(Some("b"), Some("/y"), None, None),
            // Only the NULLs and the empty text changed.
            event(Some(""), Some("/y"), Some(0), Some("")),
            event(None, None, None, None),
            event(Some("a"), Some("/x"), Some(1), Some("t")),
        ];
        let records: Vec<Record> = events
            .iter()
            .enumerate()
            .map(|(i, e)| Record {
                seq: i as i64 + 1,
                event: e.clone(),
                prev_hash: format!("p{i}"),
                hash: format!("h{i}"),
            })
            .collect();
        store.append(&records, None).unwrap();
        // A second batch starts from no bound values at all.
        let later: Vec<Record> = records[..2]
            .iter()
            .map(|r| Record {
                seq: r.seq + 100,
                ..r.clone()
            })
            .collect();
        store.append(&later, None).unwrap();
        let read = store.select("1", &[], None).unwrap();
        assert_eq!(read.len(), records.len() + later.len());
        for (got, want) in read.iter().zip(records.iter().chain(&later)) {
            assert_eq!(got.seq, want.seq);
            assert_eq!(
                got.event.row_refs(),
                want.event.row_refs(),
                "seq {}",
                want.seq
            );
            assert_eq!((&got.prev_hash, &got.hash), (&want.prev_hash, &want.hash));
        }
    }

    #[test]
    fn files_are_private_and_wal_is_on() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("audit");
        let store = Store::open(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
        let journal: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        assert_eq!(
            store.tail().unwrap(),
            Tail {
                last_seq: 0,
                last_hash: GENESIS,
                last_checkpoint_seq: 0
            }
        );
        assert!(matches!(
            Store::open_read_only(&state.path().join("nope.db")),
            Err(StoreError::Missing(_))
        ));
    }

    #[test]
    fn decisions_other_than_allow_are_found_through_the_partial_index() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("audit");
        // A store made before: every decision indexed.
        Store::open(&dir)
            .unwrap()
            .conn
            .execute_batch(
                "DROP INDEX events_decision_notable;
                 CREATE INDEX events_decision ON events (decision, seq);",
            )
            .unwrap();
        let indexes = |store: &Store| -> Vec<String> {
            rows(
                store,
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name",
                |r| r.get(0),
            )
        };
        let only_notable = ["events_agent", "events_decision_notable"];
        let store = Store::open(&dir).unwrap();
        assert_eq!(indexes(&store), only_notable);
        // An earlier agentguard started on it since (a rollback) makes the
        // index of every decision again beside the partial one; the next
        // open drops it.
        store
            .conn
            .execute_batch("CREATE INDEX IF NOT EXISTS events_decision ON events (decision, seq)")
            .unwrap();
        drop(store);
        let store = Store::open(&dir).unwrap();
        assert_eq!(indexes(&store), only_notable);
        let plan = |d: Decision| query_plan(&store, decision_clause(d), d.as_str());
        for d in [Decision::Deny, Decision::WouldDeny, Decision::Refuse] {
            assert!(plan(d).contains("events_decision_notable"), "{}", plan(d));
        }
        assert!(
            !plan(Decision::Allow).contains("events_decision"),
            "{}",
            plan(Decision::Allow)
        );
    }

    /// A time of the tests' minute, at second `t`.
    fn at(t: &str) -> String {
        format!("2026-03-01T12:00:{t}.000000Z")
    }

    /// Allowed events at `times`, numbered from `first`, chained with
    /// made-up hashes: what the time lookup reads does not depend on them.
    fn at_times(first: i64, times: &[&str]) -> Vec<Record> {
        use super::super::event::Kind;
        times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut event = Event::new(Kind::Request).with_decision(Decision::Allow, "ok");
                event.time = at(t);
                Record {
                    seq: first + i as i64,
                    event,
                    prev_hash: String::new(),
                    hash: String::new(),
                }
            })
            .collect()
    }

    /// The seqs a time filter selects, through the store's conditions.
    fn seqs_between(store: &Store, since: Option<&str>, until: Option<&str>) -> Vec<i64> {
        let filter = super::super::query::Filter {
            since: since.map(at),
            until: until.map(at),
            ..Default::default()
        };
        let records = filter.select(store, None).unwrap();
        records.iter().map(|r| r.seq).collect()
    }

    /// Every range of times, against the events whose time is in it: the
    /// spans bound the seqs, the time decides, out of order or not.
    fn assert_time_ranges_exact(store: &Store, events: &[Record]) {
        let seconds = ["00", "10", "15", "20", "30", "40", "45", "50", "59"];
        let bounds = std::iter::once(None).chain(seconds.iter().map(|s| Some(*s)));
        for since in bounds.clone() {
            for until in bounds.clone() {
                let want: Vec<i64> = events
                    .iter()
                    .filter(|r| since.is_none_or(|s| r.event.time >= at(s)))
                    .filter(|r| until.is_none_or(|u| r.event.time <= at(u)))
                    .map(|r| r.seq)
                    .collect();
                assert_eq!(
                    seqs_between(store, since, until),
                    want,
                    "since {since:?} until {until:?}"
                );
            }
        }
    }

    #[test]
    fn a_time_range_finds_exactly_its_events_through_spans_and_the_seq() {
        let state = tempfile::tempdir().unwrap();
        let mut store = Store::open(&state.path().join("audit")).unwrap();
        assert_eq!(store.times, TimeLookup::Spans);
        // Times out of order within a batch and across batches (an event
        // is written when its response ends), and one batch of one.
        let batches = [
            at_times(1, &["20", "10", "30"]),
            at_times(4, &["15", "40", "40"]),
            at_times(7, &["45"]),
            at_times(8, &["50", "20"]),
        ];
        for b in &batches {
            store.append(b, None).unwrap();
        }
        let events: Vec<Record> = batches.concat();
        assert_time_ranges_exact(&store, &events);
        let spans: Vec<(i64, i64, String, String)> = rows(
            &store,
            "SELECT * FROM event_spans ORDER BY first_seq",
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        );
        assert_eq!(
            spans,
            [
                (1, 3, at("10"), at("30")),
                (4, 6, at("15"), at("40")),
                (7, 7, at("45"), at("45")),
                (8, 9, at("20"), at("50")),
            ]
        );
        // SQLite reads the events from the spans' seq on, not all of them.
        for clause in [store.since_clause(), store.until_clause()] {
            let plan = query_plan(&store, clause, &at("30"));
            assert!(
                plan.contains("SEARCH events USING INTEGER PRIMARY KEY"),
                "{plan}"
            );
        }
        // Retention keeps the spans of the events left.
        store.prune_through(Some(5)).unwrap();
        let spanned: Vec<i64> = rows(
            &store,
            "SELECT first_seq FROM event_spans ORDER BY first_seq",
            |r| r.get(0),
        );
        assert_eq!(spanned, [4, 7, 8]);
        assert_time_ranges_exact(&store, &events[5..]);
    }

    /// A store with the index of times (made before spans, or by an
    /// earlier agentguard rolled back to, which writes no spans) is read
    /// through that index, and gets spans for every event at the daemon's
    /// next start, which drops the index.
    #[test]
    fn events_written_without_spans_are_found_and_spanned_at_the_next_start() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("audit");
        let mut store = Store::open(&dir).unwrap();
        let first = at_times(1, &["20", "10", "30"]);
        store.append(&first, None).unwrap();
        // The rollback: the index again, and events without a span.
        let later: Vec<Record> = (0..1100)
            .map(|i| at_times(4 + i, &[["45", "15", "50"][i as usize % 3]]).remove(0))
            .collect();
        store.append(&later, None).unwrap();
        store
            .conn
            .execute_batch(
                "CREATE INDEX events_time ON events (time);
                 DELETE FROM event_spans WHERE first_seq = 4;",
            )
            .unwrap();
        drop(store);
        let events: Vec<Record> = [first, later].concat();
        let mut read = Store::open_read_only(&dir.join(DB_FILE)).unwrap();
        assert_eq!(read.times, TimeLookup::TimeIndex);
        assert_time_ranges_exact(&read, &events);
        // A reader that chose the spans just before the earlier agentguard
        // started still finds what it wrote past the last span.
        read.times = TimeLookup::Spans;
        assert_time_ranges_exact(&read, &events);
        drop(read);

        let store = Store::open(&dir).unwrap();
        assert_eq!(store.times, TimeLookup::Spans);
        assert!(!in_schema(&store.conn, "index", "events_time").unwrap());
        let spans: Vec<(i64, i64)> = rows(
            &store,
            "SELECT first_seq, last_seq FROM event_spans ORDER BY first_seq",
            |r| Ok((r.get(0)?, r.get(1)?)),
        );
        // The old span, then the rows in groups of at most 1,024 seqs.
        assert_eq!(spans, [(1, 3), (4, 1023), (1024, 1103)]);
        assert_time_ranges_exact(&store, &events);
        let read = Store::open_read_only(&dir.join(DB_FILE)).unwrap();
        assert_eq!(read.times, TimeLookup::Spans);
        assert_time_ranges_exact(&read, &events);
    }
}
