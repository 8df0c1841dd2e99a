//! The events page's live stream: committed audit records as Server-Sent
//! Events, filtered as the page's filters say. The page asks for what came
//! after the newest record it shows (`after=SEQ`): those are read from the
//! store first, then the committed stream follows, each record once, in
//! order. A page too slow for the stream is told (`event: lagged`) and
//! reloads.

use std::{path::PathBuf, sync::Arc};

use hyper::body::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::query::{EventFilter, MAX_LIMIT};
use crate::audit::{
    AuditSink, Record, Store,
    sse::{self, SseBody, event},
};

pub fn open(sink: &AuditSink, filter: EventFilter) -> SseBody {
    // Subscribed before the store is read: nothing falls between the two.
    let live = sink.subscribe();
    let (tx, body) = sse::channel();
    tokio::spawn(pump(sink.db_path().to_owned(), live, filter, tx));
    body
}

async fn pump(
    db: PathBuf,
    live: broadcast::Receiver<Arc<Record>>,
    filter: EventFilter,
    tx: mpsc::Sender<Bytes>,
) {
    let mut last = filter.after.unwrap_or(0);
    if filter.after.is_some() {
        let f = filter.clone();
        let rows = tokio::task::spawn_blocking(move || {
            Store::open_read_only(&db).and_then(|s| f.select(&s, MAX_LIMIT))
        })
        .await;
        if let Ok(Ok(rows)) = rows {
            for r in rows {
                last = r.seq;
                if tx.send(event(&r)).await.is_err() {
                    return;
                }
            }
        }
    }
    sse::follow(live, tx, last, |r| filter.matches(r.seq, &r.event)).await;
}
