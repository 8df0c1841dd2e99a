//! The audit record's life with the daemon: the store opens before the
//! proxy serves, `daemon_start` is the first event of a run and
//! `daemon_stop` the last, and the writer commits everything queued before
//! the daemon exits. Metrics and the OTLP exporter hang off the same sink.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tracing::info;

use super::DaemonError;
use crate::{
    admin::MetricsSource,
    audit::{
        self, AuditSink, AuditWriter, Decision, Event, Kind,
        otlp::{self, OtlpStats},
    },
    config::RunConfig,
    live::Live,
    metrics::Metrics,
};

/// What the kernel guards on this host; the start event names each gap.
#[derive(Debug, Clone, Copy)]
pub struct Guarded {
    pub unix_sockets: bool,
    pub processes: bool,
}

/// How long the writer gets at shutdown to commit what is queued.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

pub struct AuditRuntime {
    pub sink: AuditSink,
    pub metrics: Arc<Metrics>,
    pub otlp: Option<Arc<OtlpStats>>,
    /// Events handed to the writer so far: against its `events_written`,
    /// the systemd watchdog sees whether it keeps up (daemon::notify).
    pub recorded: Arc<AtomicU64>,
    writer: AuditWriter,
}

/// Opens the store, starts the writer and, if configured, the OTLP exporter.
pub fn start(cfg: &RunConfig) -> Result<AuditRuntime, DaemonError> {
    let metrics = Arc::new(Metrics::new());
    let observer: audit::Observer = {
        let metrics = metrics.clone();
        Arc::new(move |e: &Event| metrics.observe(e))
    };
    let recorded = Arc::new(AtomicU64::new(0));
    let counter: audit::Observer = {
        let recorded = recorded.clone();
        Arc::new(move |_: &Event| {
            recorded.fetch_add(1, Ordering::Relaxed);
        })
    };
    let (sink, writer) = audit::start(
        &cfg.state_dir,
        cfg.audit.to_config(),
        vec![observer, counter],
    )?;
    let otlp = match &cfg.otlp {
        Some(otlp_cfg) => {
            let stats = Arc::new(OtlpStats::default());
            otlp::spawn(
                otlp_cfg.clone(),
                sink.subscribe(),
                sink.subscribe_checkpoints(),
                sink.last_checkpoint(),
                stats.clone(),
            )
            .map_err(crate::config::ConfigError::from)?;
            info!(collector = %otlp_cfg, "exporting audit records and checkpoints to OTLP collector");
            Some(stats)
        }
        None => None,
    };
    info!(db = %sink.db_path().display(), last_seq = sink.status().last_seq, "audit store open");
    Ok(AuditRuntime {
        sink,
        metrics,
        otlp,
        recorded,
        writer,
    })
}

impl AuditRuntime {
    /// Serves `/metrics` on `listener` too (`--metrics-listen`), bound by
    /// the daemon before it guarded anyone.
    pub fn serve_metrics(
        &self,
        addr: SocketAddr,
        listener: TcpListener,
        source: Arc<MetricsSource>,
    ) {
        info!(%addr, "serving metrics");
        tokio::spawn(crate::admin::serve_metrics_tcp(listener, source));
    }

    pub async fn record_start(&self, live: &Live, proxy_port: u16, guarded: Guarded) {
        let state = live.load();
        let mut e = Event::new(Kind::DaemonStart);
        e.pid = Some(std::process::id());
        e.policy_version = Some(state.policy.version.clone());
        // An auditor reading the record must see the gap, not only the log.
        let unix = if guarded.unix_sockets {
            ""
        } else {
            "; UNIX SOCKETS NOT GUARDED: the kernel lacks cgroup/connect_unix (--allow-unguarded-unix-sockets)"
        };
        let processes = if guarded.processes {
            ""
        } else {
            "; PROCESSES NOT GUARDED: the BPF LSM is not active, agents may ptrace other processes of their uid (--allow-unguarded-processes)"
        };
        e.reason = Some(
            format!(
                "agentguard {} started: {} agent(s), proxy port {proxy_port}{unix}{processes}",
                env!("CARGO_PKG_VERSION"),
                state.policy.agents.len()
            )
            .into(),
        );
        self.sink.record(e).await;
    }

    /// Records the stop and waits for the writer to commit everything.
    pub async fn stop(self, why: &str, live: &Live) {
        let mut e = Event::new(Kind::DaemonStop);
        e.pid = Some(std::process::id());
        e.policy_version = Some(live.load().policy.version.clone());
        e.reason = Some(why.into());
        // Bounded: a store that cannot commit holds recording back, and
        // must not hold back the stop too.
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.sink.record(e))
            .await
            .is_err()
        {
            tracing::error!("audit store not committing; daemon_stop not recorded");
        }
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.shutdown(SHUTDOWN_TIMEOUT)).await;
    }
}

/// The event for one reload attempt.
pub fn reload_event(trigger: &str, outcome: Result<(&str, &str), (&str, &str)>) -> Event {
    let mut e = Event::new(Kind::PolicyReload);
    match outcome {
        Ok((from, to)) => {
            e.decision = Some(Decision::Accept);
            e.policy_version = Some(to.into());
            e.reason = Some(
                if from == to {
                    format!("{trigger}: policy unchanged")
                } else {
                    format!("{trigger}: policy {from} replaced by {to}")
                }
                .into(),
            );
        }
        Err((running, error)) => {
            e.decision = Some(Decision::Reject);
            e.policy_version = Some(running.into());
            e.reason = Some(format!("{trigger}: {error}; the running policy stays").into());
        }
    }
    e.rule = Some(format!("reload:{trigger}").into());
    e
}
