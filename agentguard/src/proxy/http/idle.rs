//! Closing agent connections that wait with no request in progress.
//!
//! hyper limits the time to read an HTTP/1.1 request head only once the
//! first byte has arrived, and HTTP/2 not at all: a connection that never
//! sent a request after its TLS handshake, or never sent the HTTP/2
//! preface, stayed open for ever (the issue held ~20,000 of them), and an
//! HTTP/2 client that answers pings could keep an idle one for ever too.
//! Here each connection counts its requests in flight (from the request
//! head to the end of the response body); when none has been in flight for
//! the client timeout, the connection is shut down, whatever it speaks and
//! whether or not it ever sent a request.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::sync::Notify;
use tracing::debug;

/// The requests in flight on one connection.
#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    in_flight: AtomicUsize,
    /// Told when the count changes.
    changed: Notify,
}

/// One request in flight; the count goes down when it is dropped (with the
/// response body).
pub struct Busy {
    inner: Arc<Inner>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.inner.changed.notify_one();
    }
}

impl Activity {
    /// A request has arrived.
    pub fn begin(&self) -> Busy {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        self.inner.changed.notify_one();
        Busy {
            inner: self.inner.clone(),
        }
    }

    /// Resolves once no request has been in flight for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            if self.inner.in_flight.load(Ordering::Acquire) > 0 {
                self.inner.changed.notified().await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(limit) => {
                    if self.inner.in_flight.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                () = self.inner.changed.notified() => {}
            }
        }
    }
}

/// Runs `conn` until it ends (`Some`), or until `activity` has been idle
/// for `limit` (`None`: the caller shuts it down).
pub async fn until_idle<C: Future>(
    conn: Pin<&mut C>,
    activity: &Activity,
    limit: Duration,
) -> Option<C::Output> {
    tokio::select! {
        out = conn => Some(out),
        () = activity.idle_for(limit) => {
            debug!(?limit, "closing a connection with no request in flight");
            None
        }
    }
}

/// A response body that keeps `held` (the connection's and the agent's
/// count of requests in flight) until it is dropped.
pub struct Holding<B, H> {
    inner: B,
    _held: H,
}

impl<B, H> Holding<B, H> {
    pub fn new(inner: B, held: H) -> Self {
        Self { inner, _held: held }
    }
}

impl<B, H> Body for Holding<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    H: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_only_when_nothing_is_in_flight_for_the_whole_limit() {
        let activity = Activity::default();
        let limit = Duration::from_millis(100);
        // Nothing ever came: idle after the limit.
        tokio::time::timeout(Duration::from_secs(5), activity.idle_for(limit))
            .await
            .unwrap();

        // A request in flight keeps it busy however long it takes.
        let busy = activity.begin();
        let waiting = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(limit).await }
        });
        tokio::time::sleep(limit * 5).await;
        assert!(!waiting.is_finished());
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
