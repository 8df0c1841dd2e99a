//! The agent's request body on its way upstream, watched for failures: a
//! malformed chunked body (or an agent that goes away mid-body) makes the
//! upstream request fail, and that failure is the agent's, answered with a
//! 400 that says so, not a 502 that blames the upstream.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use hyper::body::{Body, Bytes, Frame, SizeHint};

use crate::proxy::upstream::{BodyError, ProxyBody};

/// Why the agent's body could not be read, once it could not.
pub type BodyFailure = Arc<OnceLock<String>>;

/// `body`, noting in the returned slot why reading it failed, if it does.
pub fn watch(body: ProxyBody) -> (Watched, BodyFailure) {
    let failure = BodyFailure::default();
    (
        Watched {
            inner: body,
            failure: failure.clone(),
        },
        failure,
    )
}

pub struct Watched {
    inner: ProxyBody,
    failure: BodyFailure,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            let _ = self.failure.set(describe(&**e));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// hyper's error with its causes ("error reading a body from connection:
/// invalid chunk size line"): what was wrong with the bytes the agent sent.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
