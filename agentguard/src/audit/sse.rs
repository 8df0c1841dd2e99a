//! Committed audit records as Server-Sent Events: one `data:` line of JSON
//! per record, its `id:` the sequence number. Shared by the admin socket's
//! `GET /v1/audit/stream` and the web view's live events page, which differ
//! only in what they read from the store first and which records they
//! keep.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Bytes, Frame};
use tokio::sync::{broadcast, mpsc};

use super::Record;

/// A comment line this often tells proxies and clients the stream is alive,
/// and tells us when the client has gone.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A stream's body, and the sender its pump writes frames to.
pub fn channel() -> (mpsc::Sender<Bytes>, SseBody) {
    let (tx, rx) = mpsc::channel(256);
    (tx, SseBody { rx })
}

/// One record as an SSE frame.
pub fn event(r: &Record) -> Bytes {
    let json = serde_json::to_string(r).unwrap_or_default();
    Bytes::from(format!("id: {}\ndata: {json}\n\n", r.seq))
}

/// Sends each committed record after `last` that `keep` accepts, in
/// order, until the client goes or the stream ends. A client too slow for
/// the stream is told how many records it missed (`event: lagged`).
pub async fn follow(
    mut live: broadcast::Receiver<Arc<Record>>,
    tx: mpsc::Sender<Bytes>,
    mut last: i64,
    keep: impl Fn(&Record) -> bool,
) {
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        let frame = tokio::select! {
            r = live.recv() => match r {
                Ok(r) if r.seq > last && keep(&r) => {
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
