//! `agentguard audit verify | query | tail`, and the audit flags of
//! `agentguard run`.
//!
//! `verify` and `query` open the store read-only (they work while the daemon
//! writes, thanks to WAL); `tail` follows the daemon's live stream over the
//! admin socket.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::SystemTime,
};

use clap::{Args, Subcommand, ValueEnum};
use thiserror::Error;

use crate::{
    admin::{AdminClient, AdminError},
    audit::{
        self, Decision, Kind, Record, StoreError,
        query::{Filter, QueryError, parse_time},
        signing::{self, PUBLIC_KEY_FILE, SigningError, Verifier},
    },
    config::{
        AuditOptions, ConfigError, DEFAULT_AUDIT_BATCH_MAX, DEFAULT_AUDIT_CHECKPOINT_EVERY,
        DEFAULT_AUDIT_CHECKPOINT_INTERVAL, DEFAULT_AUDIT_FLUSH_INTERVAL, DEFAULT_AUDIT_QUEUE,
        DEFAULT_AUDIT_QUEUE_BYTES, DEFAULT_STATE_DIR, parse_duration, parse_size,
    },
};

#[derive(Debug, Error)]
pub enum AuditCliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Signing(#[from] SigningError),
    #[error(transparent)]
    Anchor(#[from] audit::anchor::AnchorError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("unknown decision {0:?} ({names})", names = names(Decision::ALL.map(Decision::as_str)))]
    Decision(String),
    #[error("unknown kind {0:?} ({names})", names = names(Kind::ALL.map(Kind::as_str)))]
    Kind(String),
    #[error("failed to write output: {0}")]
    Output(std::io::Error),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The accepted values, for error messages; from the enums, so they never
/// drift from what parses.
fn names<const N: usize>(all: [&str; N]) -> String {
    all.join(", ")
}

/// The audit store's flags on `agentguard run`.
#[derive(Debug, Args)]
pub struct AuditRunArgs {
    /// The longest an audit event waits before its batch is committed.
    #[arg(long, default_value = DEFAULT_AUDIT_FLUSH_INTERVAL, value_name = "DURATION")]
    audit_flush_interval: String,
    /// Commit an audit batch as soon as it holds this many events.
    #[arg(long, default_value_t = DEFAULT_AUDIT_BATCH_MAX)]
    audit_batch_max: usize,
    /// Audit events queued before the proxy waits for the writer.
    #[arg(long, default_value_t = DEFAULT_AUDIT_QUEUE)]
    audit_queue: usize,
    /// Bytes the queued audit events may hold before the proxy waits for
    /// the writer (long fields are cut to 2 KiB first).
    #[arg(long, default_value = DEFAULT_AUDIT_QUEUE_BYTES, value_name = "SIZE")]
    audit_queue_bytes: String,
    /// Sign a checkpoint after this many events...
    #[arg(long, default_value_t = DEFAULT_AUDIT_CHECKPOINT_EVERY)]
    audit_checkpoint_every: u64,
    /// ...or this long after the last one.
    #[arg(long, default_value = DEFAULT_AUDIT_CHECKPOINT_INTERVAL, value_name = "DURATION")]
    audit_checkpoint_interval: String,
    /// Remove events older than this (e.g. 90d), up to a signed checkpoint
    /// that stays as the chain's anchor. Default: keep everything.
    #[arg(long, value_name = "DURATION")]
    audit_retention: Option<String>,
    /// Remove the oldest events, up to a signed checkpoint, while the events
    /// take more than this (e.g. 10G). Default: no limit.
    #[arg(long, value_name = "SIZE")]
    audit_max_size: Option<String>,
    /// Also serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The checkpoint key and exports (boxed: the run command's flags are
    /// many, and clap keeps them all on the stack).
    #[command(flatten)]
    export: Box<ExportArgs>,
}

/// Where the record's key lives and where it goes beyond the store.
#[derive(Debug, Args)]
struct ExportArgs {
    /// The checkpoint signing key (PKCS#8 PEM; made if absent), kept apart
    /// from the store: put it on another mount or under another owner.
    /// Default: <state-dir>/audit-key/signing.key.
    #[arg(long, value_name = "FILE")]
    audit_signing_key: Option<PathBuf>,
    /// Write each signed checkpoint as a new file into this folder: on
    /// another mount, or a write-once target. It must exist.
    #[arg(long, value_name = "DIR")]
    audit_anchor_dir: Option<PathBuf>,
    /// Run this shell command for each signed checkpoint, with the
    /// checkpoint (JSON) on its standard input, e.g. to ship it to another
    /// host.
    #[arg(long, value_name = "COMMAND")]
    audit_anchor_command: Option<String>,
    /// Export audit records to this OpenTelemetry collector (OTLP/HTTP,
    /// e.g. http://collector:4318); or set OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// http/protobuf (default) or http/json; or OTEL_EXPORTER_OTLP_PROTOCOL.
    #[arg(long, value_name = "PROTOCOL")]
    otlp_protocol: Option<String>,
    /// CA certificates (PEM) to verify the collector with, instead of the
    /// system's; or OTEL_EXPORTER_OTLP_CERTIFICATE.
    #[arg(long, value_name = "FILE")]
    otlp_ca: Option<PathBuf>,
    /// gzip or none (default); or OTEL_EXPORTER_OTLP_COMPRESSION.
    #[arg(long, value_name = "gzip|none")]
    otlp_compression: Option<String>,
}

impl AuditRunArgs {
    /// The OTLP exporter's settings: these flags, then the daemon's
    /// `OTEL_EXPORTER_OTLP_*` environment.
    pub fn otlp(&self) -> Result<Option<audit::otlp::OtlpConfig>, ConfigError> {
        let flags = audit::otlp::OtlpFlags {
            endpoint: self.export.otlp_endpoint.clone(),
            protocol: self.export.otlp_protocol.clone(),
            ca: self
                .export
                .otlp_ca
                .clone()
                .map(|p| std::path::absolute(&p).unwrap_or(p)),
            compression: self.export.otlp_compression.clone(),
        };
        Ok(audit::otlp::OtlpConfig::resolve(&flags, |name| {
            std::env::var(name).ok()
        })?)
    }

    pub fn options(&self) -> Result<AuditOptions, ConfigError> {
        Ok(AuditOptions {
            flush_interval: parse_duration("--audit-flush-interval", &self.audit_flush_interval)?,
            batch_max: self.audit_batch_max,
            queue: self.audit_queue,
            queue_bytes: parse_size("--audit-queue-bytes", &self.audit_queue_bytes)?,
            checkpoint_every: self.audit_checkpoint_every,
            checkpoint_interval: parse_duration(
                "--audit-checkpoint-interval",
                &self.audit_checkpoint_interval,
            )?,
            retention: self
                .audit_retention
                .as_deref()
                .map(|r| parse_duration("--audit-retention", r))
                .transpose()?,
            max_bytes: self
                .audit_max_size
                .as_deref()
                .map(|s| parse_size("--audit-max-size", s))
                .transpose()?,
            signing_key: self.export.audit_signing_key.clone(),
            anchors: audit::anchor::AnchorConfig {
                dir: self.export.audit_anchor_dir.clone(),
                command: self.export.audit_anchor_command.clone(),
            },
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and checkpoint signatures. Exit 0 when intact;
    /// 1, naming the first bad sequence number, when broken; 2 when it
    /// could not be checked (no store, no key).
    Verify {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The public key to trust (default: the host's own copy, in
        /// <state-dir>/audit-key/ or <state-dir>/audit/). Pin a copy kept
        /// away from the host: a chain signed by any other key then fails.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// An exported checkpoint (a file from --audit-anchor-dir, or an
        /// OTLP `agentguard.checkpoint` record's body), or a folder of them:
        /// the chain must hold every event each one covers, unchanged, so a
        /// record cut or replaced after the export fails.
        #[arg(long, value_name = "FILE|DIR")]
        anchor: Option<PathBuf>,
    },
    /// Print stored events, oldest first.
    Query {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[command(flatten)]
        filter: FilterArgs,
        /// Request host or connection SNI.
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        tool: Option<String>,
        /// A duration ago (15m, 2h, 7d) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Only the newest N matching events.
        #[arg(long)]
        limit: Option<u64>,
        /// `--format` is the old spelling.
        #[arg(short = 'o', long = "output", alias = "format", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print the latest events from the running daemon; with -f, keep
    /// following.
    Tail {
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many past events to show first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
        #[command(flatten)]
        filter: FilterArgs,
        /// `--format` is the old spelling.
        #[arg(short = 'o', long = "output", alias = "format", value_enum, default_value_t = Format::Json)]
        format: Format,
    },
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    #[arg(long)]
    agent: Option<String>,
    /// allow, deny, would-deny, refuse, intercept, passthrough, accept,
    /// reject.
    #[arg(long)]
    decision: Option<String>,
    /// connection, request, kernel_refusal, dns_query, policy_reload,
    /// credential_failure, daemon_start, daemon_stop, retention.
    #[arg(long)]
    kind: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter, AuditCliError> {
        Ok(Filter {
            agent: self.agent.clone(),
            decision: self
                .decision
                .as_deref()
                .map(|d| Decision::parse(d).ok_or_else(|| AuditCliError::Decision(d.into())))
                .transpose()?,
            kind: self
                .kind
                .as_deref()
                .map(|k| Kind::parse(k).ok_or_else(|| AuditCliError::Kind(k.into())))
                .transpose()?,
            ..Filter::default()
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON object per line.
    Json,
    /// One OCSF 1.x JSON object per line.
    Ocsf,
}

pub fn run(command: AuditCommand, admin_socket: &Path) -> Result<ExitCode, AuditCliError> {
    match command {
        AuditCommand::Verify {
            state_dir,
            public_key,
            anchor,
        } => verify(&state_dir, public_key.as_deref(), anchor.as_deref()),
        AuditCommand::Query {
            state_dir,
            filter,
            host,
            tool,
            since,
            until,
            limit,
            format,
        } => {
            let now = SystemTime::now();
            let filter = Filter {
                host,
                tool,
                since: since.as_deref().map(|s| parse_time(s, now)).transpose()?,
                until: until.as_deref().map(|u| parse_time(u, now)).transpose()?,
                ..filter.filter()?
            };
            let store = audit::Store::open_read_only(&audit::db_path(&state_dir))?;
            let records = filter.select(&store, limit)?;
            print(&records, format)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Tail {
            follow,
            lines,
            filter,
            format,
        } => tail(admin_socket, &filter, lines, follow, format),
    }
}

fn verify(
    state_dir: &Path,
    public_key: Option<&Path>,
    anchor: Option<&Path>,
) -> Result<ExitCode, AuditCliError> {
    let key_path = public_key.map(Path::to_owned).unwrap_or_else(|| {
        // The host's own copies: beside the private key, else beside the
        // store (where earlier versions kept it, and where a copy of
        // a store brings it).
        let beside_key = signing::public_key_path(&signing::default_key_path(state_dir));
        if beside_key.exists() {
            beside_key
        } else {
            audit::audit_dir(state_dir).join(PUBLIC_KEY_FILE)
        }
    });
    let key = Verifier::load(&key_path)?;
    let anchors = match anchor {
        Some(path) => {
            let anchors = audit::anchor::load(path)?;
            audit::anchor::check_signatures(&anchors, &key)?;
            anchors.into_iter().map(|(_, c)| c).collect()
        }
        None => Vec::new(),
    };
    // What this run could not see, said where a script's parsing of stdout
    // is not disturbed.
    if public_key.is_none() {
        eprintln!(
            "agentguard: note: public key read from this host ({}), not pinned: a chain made anew with another key would pass; pass --public-key with a copy kept elsewhere",
            key_path.display()
        );
    }
    if anchor.is_none() {
        eprintln!(
            "agentguard: note: no --anchor: events cut from the end together with their checkpoints, or a chain made anew, are not visible from the store alone"
        );
    }
    let store = audit::Store::open_read_only(&audit::db_path(state_dir))?;
    match audit::verify::verify_anchored(&store, &key, &anchors)? {
        Ok(report) => {
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            println!("{broken}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn tail(
    admin_socket: &Path,
    filter: &FilterArgs,
    lines: u64,
    follow: bool,
    format: Format,
) -> Result<ExitCode, AuditCliError> {
    let f = filter.filter()?;
    let mut route = format!("/v1/audit/stream?backlog={lines}");
    if let Some(a) = &f.agent {
        route.push_str(&format!("&agent={}", encode(a)));
    }
    if let Some(d) = f.decision {
        route.push_str(&format!("&decision={}", d.as_str()));
    }
    if let Some(k) = f.kind {
        route.push_str(&format!("&kind={}", k.as_str()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AuditCliError::Runtime)?;
    let client = AdminClient::new(admin_socket);
    let mut shown = 0u64;
    let mut failure = None;
    rt.block_on(client.stream(&route, |event, data| {
        if event == Some("following") {
            if follow {
                eprintln!("agentguard: following the audit stream (interrupt to stop)");
            }
            return follow;
        }
        if event == Some("lagged") {
            eprintln!("agentguard: {data} events skipped (the follower fell behind; the store has them all)");
            return true;
        }
        match serde_json::from_str::<Record>(data) {
            Ok(r) => {
                if let Err(e) = print(std::slice::from_ref(&r), format) {
                    failure = Some(e);
                    return false;
                }
                shown += 1;
            }
            Err(e) => eprintln!("agentguard: unreadable event from the daemon: {e}"),
        }
        // Without -f, stop after the backlog (which the daemon sends first).
        follow || shown < lines
    }))?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(ExitCode::SUCCESS)
}

fn encode(s: &str) -> String {
    crate::percent::encode(s)
}

fn print(records: &[Record], format: Format) -> Result<(), AuditCliError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write = |out: &mut std::io::StdoutLock<'_>, line: String| {
        writeln!(out, "{line}").map_err(AuditCliError::Output)
    };
    for r in records {
        match format {
            Format::Json => write(&mut out, serde_json::to_string(r).unwrap_or_default())?,
            Format::Ocsf => write(
                &mut out,
                serde_json::to_string(&audit::ocsf::render(r)).unwrap_or_default(),
            )?,
            Format::Table => write(&mut out, table_row(r))?,
        }
    }
    out.flush().map_err(AuditCliError::Output)
}

/// One terminal line: seq, time, kind, agent, pid, decision, status, what,
/// why.
fn table_row(r: &Record) -> String {
    let e = &r.event;
    let what = match e.kind {
        Kind::Request => format!(
            "{} {}{}",
            e.method.as_deref().unwrap_or("-"),
            e.host.as_deref().unwrap_or(""),
            e.path.as_deref().unwrap_or("")
        ),
        _ => match (&e.sni, &e.dst_ip, e.dst_port) {
            (Some(sni), _, Some(port)) => format!("{sni}:{port}"),
            (None, Some(ip), Some(port)) => format!("{ip}:{port}"),
            _ => String::new(),
        },
    };
    let why = e
        .tool
        .as_deref()
        .or(e.reason.as_deref())
        .unwrap_or_default();
    format!(
        "{:>7} {} {:<17} {:<14} {:>7} {:<11} {:>3} {:<48} {}",
        r.seq,
        &e.time[..e.time.len().min(23)],
        e.kind.as_str(),
        clip(e.agent.as_deref().unwrap_or("-"), 14),
        e.pid.map_or("-".into(), |p| p.to_string()),
        e.decision.map_or("-", Decision::as_str),
        e.status.map_or("-".into(), |s| s.to_string()),
        clip(&what, 48),
        why
    )
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
