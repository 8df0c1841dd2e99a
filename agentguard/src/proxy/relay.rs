//! Carrying bytes between the agent and its original destination.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::copy_bidirectional,
    net::TcpStream,
    time::{Instant, timeout},
};
use tracing::{info, warn};

use super::limits::fds;
use crate::{config::UPSTREAM_CONNECT_TIMEOUT_SECS, netns::Dial};

/// Dials `dst` (from the namespace `dial` names) and copies both ways until either side closes. The daemon's
/// own sockets are outside every guarded cgroup (and the kernel skips its
/// tgid), so this connect goes out directly.
///
/// tokio's copy_bidirectional moves data through a user-space buffer; splice
/// would save that copy, but the next issue replaces raw relaying with TLS
/// termination, where the bytes must pass through user space anyway.
pub async fn relay(mut inbound: TcpStream, dst: SocketAddr, dial: &Dial) {
    let start = Instant::now();
    // The upstream socket counts against the proxy's descriptor budget too.
    let Some(_socket) = fds::take() else {
        warn!("no socket left in the proxy's descriptor budget; passthrough connection closed");
        return;
    };
    let connect = timeout(
        Duration::from_secs(UPSTREAM_CONNECT_TIMEOUT_SECS),
        dial.connect(dst),
    )
    .await;
    let mut upstream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(error = %e, "upstream connect failed");
            return;
        }
        Err(_) => {
            warn!("upstream connect timed out");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match copy_bidirectional(&mut inbound, &mut upstream).await {
        Ok((up, down)) => {
            info!(bytes_up = up, bytes_down = down, dur = ?start.elapsed(), "connection closed")
        }
        Err(e) => info!(error = %e, dur = ?start.elapsed(), "connection ended with error"),
    }
}
