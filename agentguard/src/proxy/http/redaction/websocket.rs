//! WebSocket frames from the upstream, with every secret cut out (RFC 6455
//! §5): after a 101 the proxy still reads what the upstream sends, frame by
//! frame, and redacts each message as one stream, across its fragments and
//! whatever control frames come between them.
//!
//! A redaction changes a message's length, so messages go to the agent
//! re-fragmented: each piece that is safe to release becomes a fragment as
//! soon as it is (§5.4 lets an intermediary re-fragment when no extension
//! is in use; none is, see `super::upgraded`). Control frames are
//! redacted whole and cut to the 125 bytes §5.5 allows. The agent's frames
//! go to the upstream untouched. Anything that is not plain RFC 6455 from
//! a server (masked frames, reserved bits or opcodes, a continuation with
//! no message) ends the connection: it could not be checked.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::credentials::{Redactor, StreamRedactor};

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("websocket i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream broke the websocket protocol: {0}")]
    Protocol(&'static str),
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;
/// §5.5: control frames carry at most 125 bytes.
const MAX_CONTROL: usize = 125;
/// How much is read from the upstream at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Relays an upgraded connection: the agent's bytes to the upstream as they
/// are, the upstream's frames to the agent redacted. Ends when both
/// directions have, or at once if the upstream's frames cannot be read.
pub async fn relay(agent: Upgraded, upstream: Upgraded, redactor: Arc<Redactor>) {
    let (mut agent_read, mut agent_write) = tokio::io::split(TokioIo::new(agent));
    let (mut upstream_read, mut upstream_write) = tokio::io::split(TokioIo::new(upstream));
    let up = async {
        let r = tokio::io::copy(&mut agent_read, &mut upstream_write).await;
        let _ = upstream_write.shutdown().await;
        r
    };
    let down = async {
        let r = redact_frames(&mut upstream_read, &mut agent_write, redactor).await;
        let _ = agent_write.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    let (up, down) = tokio::select! {
        down_done = &mut down => match down_done {
            // Unreadable frames: nothing more is relayed either way.
            Err(e) => {
                warn!(error = %e, "websocket closed");
                return;
            }
            Ok(d) => ((&mut up).await, Ok(d)),
        },
        up_done = &mut up => (up_done, (&mut down).await),
    };
    match (up, down) {
        (Ok(bytes_up), Ok((bytes_down, redacted))) => {
            if redacted > 0 {
                warn!(
                    redacted,
                    "upstream echoed a secret in websocket frames; redacted"
                );
            }
            info!(bytes_up, bytes_down, "upgraded connection closed");
        }
        (up, down) => debug!(?up, ?down, "upgraded connection ended with error"),
    }
}

/// A frame header (§5.2).
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
    /// Bytes the header took.
    size: usize,
}

/// The header at the start of `buf`, `None` if `buf` does not hold all of
/// it yet.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol(
            "reserved bits set, but no extension is in use",
        ));
    }
    // §5.1: a client closes the connection on a masked frame from a server.
    if b1 & 0x80 != 0 {
        return Err(FrameError::Protocol("a masked frame from the server"));
    }
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::Protocol("a reserved opcode"));
    }
    let (len, size) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let fin = b0 & 0x80 != 0;
    if opcode >= OP_CLOSE && (!fin || len > MAX_CONTROL as u64) {
        return Err(FrameError::Protocol(
            "a fragmented or oversized control frame",
        ));
    }
    Ok(Some(Header {
        fin,
        opcode,
        len,
        size,
    }))
}

/// A server frame: not masked.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push((u8::from(fin) << 7) | opcode);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// The message being relayed.
struct Message {
    opcode: u8,
    stream: StreamRedactor,
    /// Whether its first fragment went out (the rest are continuations).
    started: bool,
}

impl Message {
    fn next_opcode(&mut self) -> u8 {
        if std::mem::replace(&mut self.started, true) {
            OP_CONTINUATION
        } else {
            self.opcode
        }
    }
}

/// Reads more of the upstream into `buf`; `false` at its end.
async fn fill<R: AsyncRead + Unpin>(from: &mut R, buf: &mut BytesMut) -> std::io::Result<bool> {
    buf.reserve(READ_CHUNK);
    Ok(from.read_buf(buf).await? > 0)
}

/// Copies the upstream's frames to the agent, redacted; returns bytes
/// written and secrets cut.
async fn redact_frames<R, W>(
    from: &mut R,
    to: &mut W,
    redactor: Arc<Redactor>,
) -> Result<(u64, usize), FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut message: Option<Message> = None;
    let (mut written, mut redacted) = (0u64, 0usize);
    loop {
        let header = loop {
            if let Some(h) = parse_header(&buf)? {
                break h;
            }
            if !fill(from, &mut buf).await? {
                if buf.is_empty() && message.is_none() {
                    return Ok((written, redacted));
                }
                return Err(FrameError::Protocol("the connection ended inside a frame"));
            }
        };
        let _ = buf.split_to(header.size);
        if header.opcode >= OP_CLOSE {
            while (buf.len() as u64) < header.len {
                if !fill(from, &mut buf).await? {
                    return Err(FrameError::Protocol("the connection ended inside a frame"));
                }
            }
            let payload = buf.split_to(header.len as usize);
            let (payload, n) = match redactor.redact(&payload) {
                Some((clean, n)) => (clean, n),
                None => (payload.to_vec(), 0),
            };
            redacted += n;
            let out = frame(
                true,
                header.opcode,
                &control_payload(header.opcode, payload),
            );
            written += send(to, &out).await?;
            continue;
        }
        let current = match (header.opcode, message.as_mut()) {
            (OP_CONTINUATION, Some(m)) => m,
            (OP_CONTINUATION, None) => {
                return Err(FrameError::Protocol("a continuation frame with no message"));
            }
            (_, Some(_)) => {
                return Err(FrameError::Protocol(
                    "a new message inside a fragmented one",
                ));
            }
            (opcode, None) => message.insert(Message {
                opcode,
                stream: StreamRedactor::new(redactor.clone()),
                started: false,
            }),
        };
        let mut remaining = header.len;
        while remaining > 0 {
            if buf.is_empty() && !fill(from, &mut buf).await? {
                return Err(FrameError::Protocol("the connection ended inside a frame"));
            }
            let take = remaining.min(buf.len() as u64) as usize;
            remaining -= take as u64;
            let out: Bytes = current.stream.push(buf.split_to(take).freeze());
            if !out.is_empty() {
                let opcode = current.next_opcode();
                written += send(to, &frame(false, opcode, &out)).await?;
            }
        }
        if header.fin {
            let tail = current.stream.finish();
            redacted += current.stream.redacted();
            let opcode = current.next_opcode();
            written += send(to, &frame(true, opcode, &tail)).await?;
            message = None;
        }
    }
}

/// Writes a frame to the agent at once (a message's fragments flow as they
/// are released); returns its length.
async fn send<W: AsyncWrite + Unpin>(to: &mut W, frame: &[u8]) -> Result<u64, FrameError> {
    to.write_all(frame).await?;
    to.flush().await?;
    Ok(frame.len() as u64)
}

/// A control frame's payload cut to what §5.5 allows; a close frame keeps
/// its status code and a reason that is still UTF-8 (§5.5.1).
fn control_payload(opcode: u8, mut payload: Vec<u8>) -> Vec<u8> {
    if payload.len() <= MAX_CONTROL {
        return payload;
    }
    payload.truncate(MAX_CONTROL);
    if opcode == OP_CLOSE {
        while payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
            payload.pop();
        }
    }
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;

    fn redactor() -> Arc<Redactor> {
        Redactor::new(&[Secret::new("sk-ws-secret-42".into())], &[]).unwrap()
    }

    /// Parses server frames back into (fin, opcode, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let h = parse_header(bytes).unwrap().unwrap();
            let end = h.size + h.len as usize;
            out.push((h.fin, h.opcode, bytes[h.size..end].to_vec()));
            bytes = &bytes[end..];
        }
        out
    }

    /// Joins data frames into messages, as a client does.
    fn messages(frames: &[(bool, u8, Vec<u8>)]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut current: Option<(u8, Vec<u8>)> = None;
        for (fin, opcode, payload) in frames {
            if *opcode >= OP_CLOSE {
                out.push((*opcode, payload.clone()));
                continue;
            }
            let m = current.get_or_insert_with(|| (*opcode, Vec::new()));
            assert!(*opcode == OP_CONTINUATION || m.1.is_empty() && m.0 == *opcode);
            m.1.extend_from_slice(payload);
            if *fin {
                out.push(current.take().unwrap());
            }
        }
        assert!(current.is_none());
        out
    }

    async fn run(input: Vec<u8>, read_size: usize) -> Result<Vec<u8>, FrameError> {
        let (mut up_w, mut up_r) = tokio::io::duplex(read_size);
        let (mut agent_w, mut agent_r) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(read_size) {
                // Fails once the relay has given up and stopped reading.
                if up_w.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let r = redact_frames(&mut up_r, &mut agent_w, redactor()).await;
        drop(up_r);
        writer.await.unwrap();
        drop(agent_w);
        let mut out = Vec::new();
        agent_r.read_to_end(&mut out).await.unwrap();
        r.map(|_| out)
    }

    #[tokio::test]
    async fn messages_are_redacted_across_fragments_and_control_frames() {
        let mut input = Vec::new();
        input.extend(frame(false, OP_TEXT, b"token: sk-ws-se"));
        input.extend(frame(true, OP_PING, b"sk-ws-secret-42"));
        input.extend(frame(false, OP_CONTINUATION, b"cret"));
        input.extend(frame(true, OP_CONTINUATION, b"-42 end"));
        input.extend(frame(
            true,
            OP_BINARY,
            &[b"x".repeat(70_000), b"sk-ws-secret-42".to_vec()].concat(),
        ));
        let mut close = 1000u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye sk-ws-secret-42");
        input.extend(frame(true, OP_CLOSE, &close));
        for read_size in [1, 3, 64, 1 << 16] {
            let out = run(input.clone(), read_size).await.unwrap();
            let got = messages(&frames(&out));
            let mut close_want = 1000u16.to_be_bytes().to_vec();
            close_want.extend_from_slice(b"bye [redacted]");
            assert_eq!(
                got,
                vec![
                    (OP_PING, b"[redacted]".to_vec()),
                    (OP_TEXT, b"token: [redacted] end".to_vec()),
                    (
                        OP_BINARY,
                        [b"x".repeat(70_000), b"[redacted]".to_vec()].concat()
                    ),
                    (OP_CLOSE, close_want),
                ],
                "read size {read_size}"
            );
        }
    }

    #[tokio::test]
    async fn what_cannot_be_checked_ends_the_connection() {
        for bad in [
            vec![0x81 | 0x40, 0x01, b'a'],      // RSV1 (compressed)
            vec![0x81, 0x81, 1, 2, 3, 4, b'a'], // masked
            vec![0x83, 0x00],                   // reserved opcode
            vec![0x80, 0x01, b'a'],             // continuation, no message
            vec![0x01, 0x01, b'a', 0x81, 0x00], // new message inside one
            vec![0x09, 0x00],                   // fragmented ping
            vec![0x81, 0x05, b'a'],             // ends inside a frame
        ] {
            assert!(run(bad.clone(), 1).await.is_err(), "{bad:?}");
        }
        let long_close = [&1000u16.to_be_bytes()[..], "é".repeat(70).as_bytes()].concat();
        let cut = control_payload(OP_CLOSE, long_close);
        assert!(cut.len() <= MAX_CONTROL);
        assert!(std::str::from_utf8(&cut[2..]).is_ok());
    }
}
