//! The events page's live stream: committed audit records as Server-Sent
//! Events, filtered as the page's filters say. The page asks for what came
//! after the newest record it shows (`after=SEQ`): those are read from the
//! store first, then the committed stream follows, each record once, in
//! order. A page too slow for the stream is told (`event: lagged`) and
//! reloads.

use std::{
    convert::Infallible,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Bytes, Frame};
use tokio::sync::{broadcast, mpsc};

use super::query::{EventFilter, MAX_LIMIT};
use crate::audit::{AuditSink, Record, Store};

/// A comment this often keeps proxies from closing an idle stream, and
/// tells us when the page has gone.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn open(sink: &AuditSink, filter: EventFilter) -> SseBody {
    // Subscribed before the store is read: nothing falls between the two.
    let live = sink.subscribe();
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(pump(sink.db_path().to_owned(), live, filter, tx));
    SseBody { rx }
}

async fn pump(
    db: PathBuf,
    mut live: broadcast::Receiver<Arc<Record>>,
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
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let frame = tokio::select! {
            r = live.recv() => match r {
                Ok(r) if r.seq > last && filter.matches(r.seq, &r.event) => {
                    last = r.seq;
                    event(&r)
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    Bytes::from(format!("event: lagged\ndata: {n}\n\n"))
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
        };
        if tx.send(frame).await.is_err() {
            return;
        }
    }
}

fn event(r: &Record) -> Bytes {
    let json = serde_json::to_string(r).unwrap_or_default();
    Bytes::from(format!("id: {}\ndata: {json}\n\n", r.seq))
}

pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
