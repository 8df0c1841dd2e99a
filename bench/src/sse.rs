//! Time to first SSE event: on an established TLS connection, from the
//! moment the request is written to the moment the first `data:` byte
//! arrives. A proxy that buffers the stream shows here, however fast it is
//! otherwise.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Target, client};

/// Bound on one sample: the upstream sends its first event at once.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Samples, each on a new connection.
    #[arg(long, default_value_t = 10)]
    samples: usize,
}

pub async fn run(args: Args) -> Result<()> {
    let tls = client::connector(&args.target)?;
    let authority = format!("{}:{}", args.target.sni, args.target.addr.port());
    let request = format!(
        "GET /sse HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    let mut micros = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        let mut stream = client::connect(&args.target, &tls).await?;
        let sent = Instant::now();
        stream.write_all(request.as_bytes()).await?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let first = tokio::time::timeout(SAMPLE_TIMEOUT, async {
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    bail!("connection closed before the first event");
                }
                seen.extend_from_slice(&buf[..n]);
                if find(&seen, b"data:").is_some() {
                    return Ok(sent.elapsed());
                }
            }
        })
        .await??;
        if !seen.starts_with(b"HTTP/1.1 200") {
            let line = String::from_utf8_lossy(&seen);
            bail!("/sse answered {}", line.lines().next().unwrap_or(""));
        }
        micros.push(first.as_micros());
    }
    println!("{}", serde_json::json!({ "ttfe_us": micros }));
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
