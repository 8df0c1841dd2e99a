//! `agentguard-bench`: the pieces of `cargo xtask bench` that are not
//! off-the-shelf tools: the loopback HTTPS upstream every path is measured
//! against (with a DNS stand-in for the passthrough path), a client that
//! holds idle TLS connections open (resident memory per connection), and a
//! client that times the first Server-Sent Event.
//!
//! Everything listens on and dials loopback addresses only.

mod certs;
mod client;
mod dns;
mod flood;
mod idle;
mod sse;
mod trickle;
mod upstream;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agentguard-bench", about = "Helpers for cargo xtask bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTPS (HTTP/1.1 and HTTP/2) and DNS until stdin closes.
    Upstream(upstream::Args),
    /// Open N TLS connections, then hold them idle until stdin closes.
    Idle(idle::Args),
    /// Time from request sent to the first SSE event byte, several times.
    Sse(sse::Args),
    /// Hold N connections, each sending a ClientHello one byte at a time.
    Trickle(trickle::Args),
    /// Flood one HTTP/2 connection with frames (rapid reset, ...).
    Flood(flood::Args),
}

/// How a client reaches the server: where to dial, the TLS name, the CA
/// it trusts, and an explicit HTTP proxy (CONNECT) to go through.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// Address to dial (for agents: the original destination, which the
    /// kernel redirects to agentguard).
    #[arg(long)]
    addr: SocketAddr,
    /// TLS server name (SNI), and the name the certificate is checked for.
    #[arg(long)]
    sni: String,
    /// CA certificate (PEM) to trust.
    #[arg(long)]
    ca: PathBuf,
    /// Explicit HTTP proxy to CONNECT through (mitmproxy's regular mode).
    #[arg(long)]
    proxy: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // One worker: the upstream shares its CPU with the proxy under test
        // (xtask pins both), and a client should not need more.
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Upstream(args) => upstream::run(args).await,
            Command::Idle(args) => idle::run(args).await,
            Command::Sse(args) => sse::run(args).await,
            Command::Trickle(args) => trickle::run(args).await,
            Command::Flood(args) => flood::run(args).await,
        }
    })
}

/// Resolves when stdin reaches EOF: the parent (xtask) closed it or died, so
/// no helper outlives the benchmark that started it.
async fn stdin_closed() {
    use tokio::io::AsyncReadExt as _;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}
