//! Connections that send their ClientHello one byte at a time, for the
//! soak's slow-hello case: what waiting for a client's first message costs
//! the proxy. N connections each send a real ClientHello (made by rustls
//! for the name) at one byte per interval, spread evenly over the
//! interval; a connection the proxy closes (its first-bytes limit) is
//! opened again, so N stay open. When stdin closes it reports its counts.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Result, ensure};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

/// The longest a run may last, whatever the parent does.
const MAX_RUN: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub struct Args {
    /// Address to dial (an agent's: the kernel redirects it to agentguard).
    #[arg(long)]
    addr: SocketAddr,
    /// The name in the ClientHello.
    #[arg(long)]
    sni: String,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Milliseconds between two bytes of one connection.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

#[derive(Default)]
struct Counts {
    opened: AtomicU64,
    /// Closed by the proxy before the hello was complete.
    closed: AtomicU64,
    bytes: AtomicU64,
}

pub async fn run(args: Args) -> Result<()> {
    ensure!(
        args.addr.ip().is_loopback(),
        "the bench dials loopback addresses only"
    );
    let hello = Arc::new(client_hello(&args.sni)?);
    let counts = Arc::new(Counts::default());
    let interval = Duration::from_millis(args.interval_ms.max(1));
    for i in 0..args.connections {
        // Spread the connections over the interval, so that the proxy sees
        // a steady trickle rather than bursts.
        let offset = interval * u32::try_from(i).unwrap_or(u32::MAX)
            / u32::try_from(args.connections.max(1)).unwrap_or(u32::MAX);
        let (hello, counts, addr) = (hello.clone(), counts.clone(), args.addr);
        tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            loop {
                trickle_one(addr, &hello, interval, &counts).await;
            }
        });
    }
    // Ready once every connection has been opened once.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while counts.opened.load(Ordering::Relaxed) < args.connections as u64
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "{}",
        serde_json::json!({ "ready": true, "opened": counts.opened.load(Ordering::Relaxed) })
    );
    tokio::select! {
        () = crate::stdin_closed() => {}
        () = tokio::time::sleep(MAX_RUN) => {}
    }
    println!(
        "{}",
        serde_json::json!({
            "opened": counts.opened.load(Ordering::Relaxed),
            "closed_by_proxy": counts.closed.load(Ordering::Relaxed),
            "bytes_sent": counts.bytes.load(Ordering::Relaxed),
        })
    );
    Ok(())
}

/// One connection: the hello a byte per interval, until it is sent or the
/// proxy closes the connection; then a pause before the next.
async fn trickle_one(addr: SocketAddr, hello: &[u8], interval: Duration, counts: &Counts) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        tokio::time::sleep(interval).await;
        return;
    };
    let _ = stream.set_nodelay(true);
    counts.opened.fetch_add(1, Ordering::Relaxed);
    for byte in hello {
        if stream.write_all(&[*byte]).await.is_err() {
            counts.closed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        counts.bytes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(interval).await;
    }
}

/// A real ClientHello for `sni`, as rustls writes it.
fn client_hello(sni: &str) -> Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut out = Vec::new();
    conn.write_tls(&mut out)?;
    Ok(out)
}
