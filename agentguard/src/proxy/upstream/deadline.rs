//! Time limits on a request once the upstream is connected: its response
//! head, the gaps in its response body, and the agent's own gaps while it
//! sends the request body.
//!
//! An upstream that accepts and never answers used to hold the agent for
//! as long as the agent cared to wait. The response head must now come
//! within a limit counted from the moment the upstream has the whole
//! request (a slow upload is the agent's time, not the upstream's);
//! after the head, a streaming body flows for as long as it makes
//! progress, with a limit on each gap. What the agent sees: a `504` for a
//! late head, a body cut short (an aborted HTTP/2 stream, a closed
//! HTTP/1.1 connection) for a stalled one, and the reason in the record.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::BodyExt as _;
use hyper::{
    Request, Response,
    body::{Body, Bytes, Frame, SizeHint},
};
use thiserror::Error;
use tokio::time::{Instant, Sleep};

use super::{
    BodyError, ConnectError, Origin, ProxyBody, UpstreamBody, connect_error, describe_failure,
    pool::Failure,
};
use crate::proxy::{limits::UpstreamTimeouts, refusal::Refusal};

/// A limit the proxy enforced on a body, found again in hyper's errors.
#[derive(Debug, Error)]
pub enum BodyTimeout {
    #[error("the agent sent no request body bytes for {0:?}")]
    Agent(Duration),
    #[error("the upstream sent no response body bytes for {0:?}")]
    Upstream(Duration),
}

/// Why no response head came back.
#[derive(Debug)]
pub enum SendError {
    Failed(Failure),
    HeadTimeout(Duration),
}

impl SendError {
    /// What the agent is told.
    pub fn into_refusal(self) -> Refusal {
        match self {
            SendError::HeadTimeout(limit) => Refusal::UpstreamTimeout(format!(
                "upstream sent no response head within {limit:?} of the request (a tool's timeouts.response_head, or --upstream-response-timeout)"
            )),
            SendError::Failed(e) => {
                if let Some(c) = connect_error(&e) {
                    return match c {
                        ConnectError::ConnectTimeout(_) | ConnectError::HandshakeTimeout(_) => {
                            Refusal::UpstreamTimeout(c.to_string())
                        }
                        ConnectError::OutOfSockets => Refusal::Overloaded(c.to_string()),
                    };
                }
                if let Some(BodyTimeout::Agent(limit)) = body_timeout(&e) {
                    return Refusal::BodyTimeout(*limit);
                }
                let (certificate, reason) = describe_failure(&e);
                if certificate {
                    Refusal::UpstreamUnverified(reason)
                } else {
                    Refusal::UpstreamFailed(reason)
                }
            }
        }
    }
}

fn body_timeout<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            return Some(t);
        }
        source = e.source();
    }
    None
}

/// Sends `req` and waits for the response head, at most `limits.response_head`
/// from the end of the request body (the clock stops while the request
/// body waits for the agent, which has `agent_idle` for each gap).
pub async fn send(
    origin: &Origin,
    req: Request<ProxyBody>,
    limits: UpstreamTimeouts,
    agent_idle: Duration,
) -> Result<Response<UpstreamBody>, SendError> {
    let progress = Arc::new(Progress::new());
    let req = req.map(|inner| {
        Watched {
            inner,
            progress: progress.clone(),
            agent_idle,
            idle: None,
        }
        .boxed()
    });
    let pending = origin.request(req);
    tokio::pin!(pending);
    let limit = limits.response_head;
    loop {
        // While the body waits for the agent the upstream's clock stands;
        // look again a limit later.
        let deadline = if progress.waiting_on_agent() {
            Instant::now() + limit
        } else {
            progress.last_step() + limit
        };
        tokio::select! {
            result = &mut pending => return result.map_err(SendError::Failed),
            () = tokio::time::sleep_until(deadline) => {
                // The upstream's turn all along since the last step of the
                // request body: it had its full time.
                if !progress.waiting_on_agent() && progress.last_step() + limit <= Instant::now() {
                    return Err(SendError::HeadTimeout(limit));
                }
            }
        }
    }
}

/// What the request body last did, for the head's clock.
struct Progress {
    start: Instant,
    /// Milliseconds from `start` to the last frame handed to the upstream
    /// (or the end of the body).
    last_step_ms: AtomicU64,
    /// The body is waiting for the agent's next bytes.
    waiting_on_agent: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_step_ms: AtomicU64::new(0),
            waiting_on_agent: AtomicBool::new(false),
        }
    }

    fn step(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_step_ms.store(ms, Ordering::Release);
        self.waiting_on_agent.store(false, Ordering::Release);
    }

    fn last_step(&self) -> Instant {
        self.start + Duration::from_millis(self.last_step_ms.load(Ordering::Acquire))
    }

    fn waiting_on_agent(&self) -> bool {
        self.waiting_on_agent.load(Ordering::Acquire)
    }
}

/// The request body on its way to the upstream: reports its progress, and
/// fails when the agent leaves a gap longer than `agent_idle`.
struct Watched {
    inner: ProxyBody,
    progress: Arc<Progress>,
    agent_idle: Duration,
    idle: Option<Pin<Box<Sleep>>>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                this.progress
                    .waiting_on_agent
                    .store(true, Ordering::Release);
                let limit = this.agent_idle;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout::Agent(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                this.idle = None;
                this.progress.step();
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream's response body, failing when the upstream leaves a gap
/// longer than `limit` between two pieces. The clock runs only while the
/// agent is asking for the next piece: a slow reader is not a stalled
/// upstream.
pub fn idle_limited(body: UpstreamBody, limit: Duration) -> ProxyBody {
    IdleLimited {
        inner: body,
        limit,
        idle: None,
    }
    .boxed()
}

struct IdleLimited {
    inner: UpstreamBody,
    limit: Duration,
    idle: Option<Pin<Box<Sleep>>>,
}

impl Body for IdleLimited {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let limit = this.limit;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(Box::new(BodyTimeout::Upstream(limit)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(frame) => {
                this.idle = None;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::from)))
            }
        }
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

    /// A body that yields its frames with a pause before each.
    struct Paced {
        frames: Vec<(Duration, &'static str)>,
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl Body for Paced {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
            let this = &mut *self;
            let Some(&(pause, text)) = this.frames.first() else {
                return Poll::Ready(None);
            };
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
            this.frames.remove(0);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(text.as_bytes())))))
        }
    }

    fn watched(frames: Vec<(Duration, &'static str)>, agent_idle: Duration) -> Watched {
        Watched {
            inner: Paced {
                frames,
                sleep: None,
            }
            .boxed(),
            progress: Arc::new(Progress::new()),
            agent_idle,
            idle: None,
        }
    }

    #[tokio::test]
    async fn a_request_body_with_short_gaps_flows_and_a_long_gap_fails() {
        let ms = Duration::from_millis;
        let body = watched(vec![(ms(20), "a"), (ms(20), "b")], ms(500));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, "ab");

        let body = watched(vec![(ms(20), "a"), (ms(5000), "b")], ms(100));
        let err = body.collect().await.unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<BodyTimeout>(),
                Some(BodyTimeout::Agent(_))
            ),
            "{err}"
        );
    }

    #[test]
    fn a_step_ends_the_wait_on_the_agent() {
        let progress = Progress::new();
        progress.waiting_on_agent.store(true, Ordering::Release);
        assert!(progress.waiting_on_agent());
        std::thread::sleep(Duration::from_millis(5));
        progress.step();
        assert!(!progress.waiting_on_agent());
        assert!(progress.last_step() > progress.start);
    }
}
