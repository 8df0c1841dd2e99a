//! Sending verify-proxy's decisions to the daemon's audit record when it
//! runs beside one (`--admin-socket`); the wire format is
//! `admin::report`.

use std::{path::Path, sync::Arc};

use tokio::sync::mpsc;
use tracing::warn;

use crate::admin::{
    AdminClient,
    report::{REPORT_ROUTE, VerifyReport},
};

/// Reports waiting for the daemon; beyond this they are dropped (counted
/// and logged) rather than held in memory without bound.
const QUEUE: usize = 1024;

/// Sends reports to the daemon, in order, from one task, without holding
/// up requests: a daemon that is down or slow costs a warning and a count,
/// never a tool call.
pub struct Reporter {
    queue: mpsc::Sender<VerifyReport>,
}

impl Reporter {
    /// Starts the sending task (call inside a Tokio runtime).
    pub fn new(admin_socket: &Path) -> Arc<Self> {
        let (queue, mut rx) = mpsc::channel::<VerifyReport>(QUEUE);
        let client = AdminClient::new(admin_socket);
        tokio::spawn(async move {
            let mut failed = 0u64;
            while let Some(report) = rx.recv().await {
                let route = format!("{REPORT_ROUTE}?{}", report.to_query());
                if let Err(e) = client.post::<serde_json::Value>(&route).await {
                    failed += 1;
                    warn!(error = %e, failed, "could not record a decision in the daemon's audit record");
                }
            }
        });
        Arc::new(Self { queue })
    }

    pub fn report(&self, report: VerifyReport) {
        if self.queue.try_send(report.bounded()).is_err() {
            warn!(
                "the daemon is not taking decisions fast enough; one was not recorded there (it is in this log)"
            );
        }
    }
}
