//! Reading a request body whole, up to a bound, for a decision that needs
//! it (a JSON-RPC body, or a body a condition reads). A longer body is
//! refused, never forwarded unchecked; it is still drained for a while so
//! that the client, still sending, reads the refusal instead of a reset.
//! The whole body must arrive within a time limit (the client timeout): an
//! agent that sends a head and then trickles, or stops, must not hold the
//! request, and its place among the agent's requests in flight, for ever.

use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::{
    HeaderMap,
    body::{Body, Bytes},
    header::CONTENT_LENGTH,
};
use tokio::time::Instant;

use crate::proxy::{refusal::Refusal, upstream::BodyError};

/// A body past the bound is drained (and dropped) up to this much or
/// [`DRAIN_TIME`].
const DRAIN_MAX: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// The most reserved up front for a declared `Content-Length`; a longer
/// body grows its buffer as it arrives.
const PREALLOC_MAX: u64 = 64 << 10;

/// The body, if it is at most `max` bytes and all of it arrives within
/// `limit`. A declared `Content-Length` over the bound refuses it before a
/// byte is kept; a body over it is refused with `too_large(max)`, in the
/// words of what bounds it (a tool's `max_body`, a held request, a signed
/// AWS body...).
pub async fn read_bounded<B>(
    mut body: B,
    max: usize,
    headers: &HeaderMap,
    limit: Duration,
    too_large: fn(usize) -> Refusal,
) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut over = declared.is_some_and(|n| n > max as u64);
    // Room for what the agent declared, within the bound and within
    // PREALLOC_MAX: the length is the agent's word, and a body refused
    // for it, or one that never comes, must not have reserved the bound.
    let room = declared.filter(|_| !over).unwrap_or(0).min(PREALLOC_MAX);
    let mut buf = Vec::with_capacity(room as usize);
    let mut seen: u64 = 0;
    let deadline = Instant::now() + limit;
    let drain_deadline = Instant::now() + DRAIN_TIME;
    loop {
        let frame = if over {
            match tokio::time::timeout_at(drain_deadline.min(deadline), body.frame()).await {
                Ok(f) => f,
                Err(_) => break,
            }
        } else {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(f) => f,
                Err(_) => return Err(Refusal::BodyTimeout(limit)),
            }
        };
        let Some(frame) = frame else { break };
        let frame = match frame {
            Ok(f) => f,
            Err(e) if !over => {
                return Err(Refusal::BodyUnreadable(super::agent_body::describe(&*e)));
            }
            Err(_) => break,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if !over && buf.len() + data.len() <= max {
            buf.extend_from_slice(&data);
        } else {
            over = true;
            buf = Vec::new();
            if seen > DRAIN_MAX {
                break;
            }
        }
    }
    if over {
        return Err(too_large(max));
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    use super::*;

    /// Longer than any of these tests takes.
    const LONG: Duration = Duration::from_secs(60);

    fn too_large(max: usize) -> Refusal {
        Refusal::BodyTooLarge { max }
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = BodyError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_up_to_the_bound_are_read_and_longer_ones_refused() {
        let none = HeaderMap::new();
        let body = read_bounded(chunks(&[b"{\"a\":", b"1}"]), 7, &none, LONG, too_large)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"a\":1}");
        let err = read_bounded(chunks(&[b"{\"a\":", b"12}"]), 7, &none, LONG, too_large)
            .await
            .unwrap_err();
        assert!(matches!(err, Refusal::BodyTooLarge { max: 7 }), "{err:?}");
        // A declared length over the bound is refused whatever comes.
        let mut declared = HeaderMap::new();
        declared.insert(CONTENT_LENGTH, "100".parse().unwrap());
        let err = read_bounded(
            Full::new(Bytes::from_static(b"x")).map_err(|n| match n {}),
            7,
            &declared,
            LONG,
            too_large,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Refusal::BodyTooLarge { .. }));
        assert!(
            read_bounded(chunks(&[]), 7, &none, LONG, too_large)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_refused_at_the_limit() {
        // One piece, then nothing: the agent went quiet mid-body.
        let first: Vec<Result<Frame<Bytes>, BodyError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"{\"a\":")))];
        let stalled = StreamBody::new(
            futures_util::stream::iter(first).chain(futures_util::stream::pending()),
        );
        let limit = Duration::from_millis(50);
        let err = read_bounded(stalled, 1024, &HeaderMap::new(), limit, too_large)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Refusal::BodyTimeout(l) if l == limit),
            "{err:?}"
        );
    }
}
