//! Idle TLS connections for the resident-memory measurement: open N, each
//! with a completed handshake, report, then hold them until stdin closes
//! (xtask reads the proxy's VmRSS meanwhile).

use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinSet;

use crate::{Target, client};

/// The longest a hold may last, whatever the parent does.
const MAX_HOLD: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

pub async fn run(args: Args) -> Result<()> {
    let tls = client::connector(&args.target)?;
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    let mut first_error = None;
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while held.len() + failed < args.count {
        while started < args.count && tasks.len() < args.concurrency.max(1) {
            let (target, tls) = (args.target.clone(), tls.clone());
            tasks.spawn(async move { client::connect(&target, &tls).await });
            started += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(stream))) => held.push(stream),
            Some(Ok(Err(e))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Some(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            None => break,
        }
    }
    println!(
        "{}",
        serde_json::json!({ "open": held.len(), "failed": failed, "error": first_error })
    );
    tokio::select! {
        () = crate::stdin_closed() => {}
        () = tokio::time::sleep(MAX_HOLD) => {}
    }
    drop(held);
    Ok(())
}
