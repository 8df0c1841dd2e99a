//! Closing a passthrough connection on which nothing moves.
//!
//! The proxy does not see every byte of a passthrough connection: with the
//! kernel relay the agent's sends go straight into the upstream socket.
//! That socket carries every byte both ways, and the kernel keeps when it
//! last sent and last received data (`tcpi_last_data_sent`,
//! `tcpi_last_data_recv`, in milliseconds). The watch reads those instead
//! of touching the copy loops, and sleeps until the moment the connection
//! would reach its limit if nothing moved in the meantime: a connection in
//! use costs one `getsockopt` per limit period, and no work per byte. The
//! kernel counts in clock ticks, so the limit holds to a tick (1–10 ms).

use std::{io, os::fd::RawFd, time::Duration};

use crate::proxy::tcp_state::tcp_info;

/// Returns once no data has been sent or received on `upstream` for
/// `limit`, with how long nothing had moved; an error if the kernel would
/// not say. `upstream` must stay open while the future lives.
pub async fn until_idle(upstream: RawFd, limit: Duration) -> io::Result<Duration> {
    loop {
        let quiet = quiet_for(upstream)?;
        if quiet >= limit {
            return Ok(quiet);
        }
        tokio::time::sleep(limit - quiet).await;
    }
}

/// How long ago `fd` last sent or received data, whichever is later.
fn quiet_for(fd: RawFd) -> io::Result<Duration> {
    let info = tcp_info(fd)?;
    let ms = info.tcpi_last_data_sent.min(info.tcpi_last_data_recv);
    Ok(Duration::from_millis(u64::from(ms)))
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsRawFd as _, time::Instant};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    /// Long enough that a stalled test thread (a loaded machine) does not
    /// look like a quiet connection.
    const LIMIT: Duration = Duration::from_secs(1);

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// Bytes one way only keep the socket from being idle; once they stop,
    /// the watch returns after the limit and not before.
    #[tokio::test]
    async fn traffic_either_way_keeps_a_connection_and_silence_ends_it() {
        for near_sends in [true, false] {
            let (mut near, mut far) = pair().await;
            let watch = until_idle(near.as_raw_fd(), LIMIT);
            tokio::pin!(watch);
            // Twice the limit with a byte every sixth of it.
            let mut last = Instant::now();
            for _ in 0..12 {
                tokio::select! {
                    idle = &mut watch => panic!("idle after {idle:?} with traffic (near sends: {near_sends})"),
                    () = tokio::time::sleep(LIMIT / 6) => {}
                }
                // Before the byte: the kernel's idle time starts after it.
                last = Instant::now();
                let mut byte = [0u8];
                if near_sends {
                    near.write_all(b"x").await.unwrap();
                    far.read_exact(&mut byte).await.unwrap();
                } else {
                    far.write_all(b"x").await.unwrap();
                    near.read_exact(&mut byte).await.unwrap();
                }
            }
            let quiet = tokio::time::timeout(Duration::from_secs(10), &mut watch)
                .await
                .expect("still not idle 10 s after the last byte")
                .unwrap();
            assert!(quiet >= LIMIT, "{quiet:?}");
            // The kernel counts in clock ticks (1-10 ms): its idle time may
            // run up to a tick ahead of this clock.
            let tick = Duration::from_millis(10);
            assert!(
                last.elapsed() + tick >= LIMIT,
                "returned {:?} after the last byte",
                last.elapsed()
            );
        }
    }
}
