//! A response body with every secret cut out as it streams: chunked
//! bodies, HTTP/2 DATA frames and SSE events flow as they arrive, less
//! only the few bytes that could still become a secret (see
//! `credentials::StreamRedactor`). Trailers are redacted like headers.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use hyper::{
    HeaderMap,
    body::{Body, Bytes, Frame, SizeHint},
};
use tracing::warn;

use crate::{
    credentials::{Redactor, StreamRedactor, redact_headers},
    proxy::upstream::{BodyError, ProxyBody},
};

pub struct RedactedBody {
    inner: ProxyBody,
    redactor: Arc<Redactor>,
    stream: StreamRedactor,
    /// Trailers wait here while the held bytes go out first.
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The request's span, for the one log line at the end.
    span: tracing::Span,
}

impl RedactedBody {
    pub fn new(inner: ProxyBody, redactor: Arc<Redactor>) -> Self {
        Self {
            inner,
            stream: StreamRedactor::new(redactor.clone()),
            redactor,
            trailers: None,
            ended: false,
            span: tracing::Span::current(),
        }
    }

    /// The end of the upstream's body: what was held back, then trailers.
    fn end(&mut self) -> Option<Frame<Bytes>> {
        if !self.ended {
            self.ended = true;
            let tail = self.stream.finish();
            let redacted = self.stream.redacted();
            if redacted > 0 {
                let _span = self.span.enter();
                warn!(
                    redacted,
                    "upstream echoed a secret in the response body; redacted"
                );
            }
            if !tail.is_empty() {
                return Some(Frame::data(tail));
            }
        }
        self.trailers.take().map(Frame::trailers)
    }
}

impl Body for RedactedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(this.end().map(Ok));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => return Poll::Ready(this.end().map(Ok)),
                // A failed body is cut short: what was held back (a piece
                // of a possible secret) is dropped with it.
                Some(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.stream.push(data);
                        // Everything held back: read on rather than send
                        // an empty frame.
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            let n = redact_headers(&mut trailers, &this.redactor);
                            if n > 0 {
                                let _span = this.span.enter();
                                warn!(
                                    redacted = n,
                                    "upstream echoed a secret in response trailers; redacted"
                                );
                            }
                            this.trailers = Some(trailers);
                        }
                        return Poll::Ready(this.end().map(Ok));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.trailers.is_none()
    }

    /// Unknown: a redaction changes the length.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
