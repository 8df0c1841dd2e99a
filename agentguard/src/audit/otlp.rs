//! Export of committed audit records (and checkpoints) to an OpenTelemetry
//! collector as OTLP/HTTP logs: `POST <endpoint>/v1/logs` with an
//! `ExportLogsServiceRequest`, in protobuf (the default) or OTLP JSON,
//! optionally gzipped, with the headers, CA and client certificate the
//! operator gives (see [`config`] for the flags and `OTEL_EXPORTER_OTLP_*`
//! variables).
//!
//! The exporter reads what the writer has committed, never the proxy's
//! queue, so a slow or dead collector cannot hold up a request. Its buffer
//! is bounded in records and in bytes: when the collector is away for long,
//! the oldest buffered records are dropped from the export (counted in
//! `agentguard_otlp_dropped_total`), never from the local store, which stays
//! the system of record. Failures are handled as OTLP specifies
//! ([`retry`]): 429/502/503/504 and unreachable collectors are retried with
//! backoff (or after `Retry-After`); any other refusal drops the batch
//! (`agentguard_otlp_rejected_total`), as do the records a collector
//! rejects in a partial success.

pub mod config;
mod encode;
mod retry;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{HeaderMap, Method, Request, body::Bytes, header};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceResponse, resource::v1::Resource,
};
use prost::Message as _;
use thiserror::Error;
use tokio::sync::{Notify, broadcast};
use tracing::{debug, warn};

use config::{Compression, Protocol};
pub use config::{OtlpConfig, OtlpFlags, logs_url};
use retry::Outcome;

use super::store::{Checkpoint, Record};

/// Records held for export at most; beyond it the oldest go.
pub const BUFFER: usize = 8192;
/// And at most about this many bytes of them (event fields are bounded,
/// but not small).
pub const BUFFER_BYTES: usize = 16 << 20;
/// Checkpoints held for export at most; the newest covers the most.
const CHECKPOINTS_HELD: usize = 64;
/// Records per export request.
const BATCH: usize = 512;
/// How long records wait to fill a batch.
const INTERVAL: Duration = Duration::from_secs(1);
/// What is read of a collector's answer (a partial success, an error).
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum OtlpError {
    #[error("OTLP endpoint {0:?}: expected an http:// or https:// URL")]
    Endpoint(String),
    #[error(
        "OTLP protocol {0:?}: agentguard exports OTLP/HTTP, \"http/protobuf\" or \"http/json\""
    )]
    Protocol(String),
    #[error("OTLP compression {0:?}: expected \"gzip\" or \"none\"")]
    Compression(String),
    #[error("OTEL_EXPORTER_OTLP_TIMEOUT {0:?}: expected milliseconds, at least 1")]
    Timeout(String),
    #[error("OTEL_EXPORTER_OTLP_HEADERS: {0}")]
    Header(String),
    #[error("{var}: {reason} (expected key=value,key2=value2)")]
    Pairs { var: &'static str, reason: String },
    #[error("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together")]
    ClientCertificate,
    #[error("OTLP TLS {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("OTLP TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Exporter counters.
#[derive(Debug, Default)]
pub struct OtlpStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    failures: AtomicU64,
    checkpoints: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct OtlpSnapshot {
    /// Records the collector accepted.
    pub exported: u64,
    /// Records dropped from the full buffer (oldest first).
    pub dropped: u64,
    /// Records the collector refused for good (a non-retryable status, or
    /// rejected in a partial success).
    #[serde(default)]
    pub rejected: u64,
    /// Export attempts that failed and were retried.
    pub failures: u64,
    /// Checkpoints the collector accepted.
    #[serde(default)]
    pub checkpoints: u64,
}

impl OtlpStats {
    pub fn snapshot(&self) -> OtlpSnapshot {
        OtlpSnapshot {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
        }
    }
}

/// Starts exporting what `records` and `checkpoints` deliver, after
/// `latest` (the store's newest checkpoint at start: a collector configured
/// since, or away at the last export, gets it). Runs until the record
/// stream closes.
pub fn spawn(
    cfg: OtlpConfig,
    records: broadcast::Receiver<Arc<Record>>,
    checkpoints: broadcast::Receiver<Arc<Checkpoint>>,
    latest: Option<Checkpoint>,
    stats: Arc<OtlpStats>,
) -> Result<(), OtlpError> {
    let client = client(&cfg)?;
    let buffer = Arc::new(Buffer::default());
    if let Some(c) = latest {
        buffer.lock().checkpoints.push_back(Arc::new(c));
    }
    tokio::spawn(fill(records, checkpoints, buffer.clone(), stats.clone()));
    let exporter = Exporter {
        resource: encode::resource(&cfg.resource),
        cfg,
        client,
        buffer,
        stats,
    };
    tokio::spawn(exporter.run());
    Ok(())
}

#[derive(Default)]
struct Buffer {
    inner: Mutex<Held>,
    ready: Notify,
}

#[derive(Default)]
struct Held {
    /// Each record with its estimated size.
    records: VecDeque<(Arc<Record>, usize)>,
    bytes: usize,
    checkpoints: VecDeque<Arc<Checkpoint>>,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client(cfg: &OtlpConfig) -> Result<HttpClient, OtlpError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca {
        // The operator's CA replaces the system's: a collector with a
        // private CA is trusted for exactly that.
        Some(ca) => {
            for cert in read_certs(ca)? {
                roots.add(cert)?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let tls = match &cfg.client_cert {
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let pem_err = |reason: String| OtlpError::Pem {
                path: key.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(key).map_err(|e| pem_err(e.to_string()))?;
            let key = rustls_pemfile::private_key(&mut &bytes[..])
                .map_err(|e| pem_err(e.to_string()))?
                .ok_or_else(|| pem_err("no private key".into()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

fn read_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, OtlpError> {
    let pem_err = |reason: String| OtlpError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| pem_err(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut &bytes[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no PEM certificate".into()));
    }
    Ok(certs)
}

/// A record's share of the buffer: its text fields and a fixed overhead.
fn size_of_record(r: &Record) -> usize {
    let e = &r.event;
    let shared = [
        &e.agent,
        &e.cgroup_path,
        &e.exe,
        &e.comm,
        &e.src_ip,
        &e.dst_ip,
        &e.sni,
        &e.policy_version,
        &e.host,
        &e.method,
        &e.tool,
        &e.rule,
        &e.reason,
    ]
    .iter()
    .map(|f| f.as_deref().map_or(0, str::len))
    .sum::<usize>();
    let text = [
        &e.on_behalf_of,
        &e.intent,
        &e.path,
        &e.credential_id,
        &e.token_jti,
        &e.traceparent,
        &e.actor,
        &e.approval_id,
        &e.request_hash,
        &e.rpc_method,
        &e.mcp_target,
        &e.rpc_calls,
        &e.relay,
        &e.container_id,
        &e.container_name,
        &e.container_image,
    ]
    .iter()
    .map(|f| f.as_ref().map_or(0, String::len))
    .sum::<usize>();
    shared + text + 512
}

/// Moves committed records and checkpoints into the bounded buffer,
/// dropping the oldest when it is full.
async fn fill(
    mut records: broadcast::Receiver<Arc<Record>>,
    mut checkpoints: broadcast::Receiver<Arc<Checkpoint>>,
    buffer: Arc<Buffer>,
    stats: Arc<OtlpStats>,
) {
    let mut checkpoints_open = true;
    loop {
        tokio::select! {
            r = records.recv() => match r {
                Ok(r) => {
                    let size = size_of_record(&r);
                    let mut held = buffer.lock();
                    while !held.records.is_empty()
                        && (held.records.len() >= BUFFER || held.bytes + size > BUFFER_BYTES)
                    {
                        if let Some((_, s)) = held.records.pop_front() {
                            held.bytes -= s;
                        }
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    held.records.push_back((r, size));
                    held.bytes += size;
                    if held.records.len() >= BATCH {
                        buffer.ready.notify_one();
                    }
                }
                // The writer's own follow buffer overflowed first.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    stats.dropped.fetch_add(n, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => {
                    buffer.ready.notify_one();
                    return;
                }
            },
            c = checkpoints.recv(), if checkpoints_open => match c {
                Ok(c) => {
                    let mut held = buffer.lock();
                    if held.checkpoints.len() >= CHECKPOINTS_HELD {
                        held.checkpoints.pop_front();
                    }
                    held.checkpoints.push_back(c);
                    // A checkpoint should leave the host as it is signed.
                    buffer.ready.notify_one();
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => checkpoints_open = false,
            },
        }
    }
}

struct Exporter {
    cfg: OtlpConfig,
    client: HttpClient,
    buffer: Arc<Buffer>,
    stats: Arc<OtlpStats>,
    resource: Resource,
}

impl Exporter {
    async fn run(self) {
        let mut backoff = retry::FIRST_BACKOFF;
        loop {
            let _ = tokio::time::timeout(INTERVAL, self.buffer.ready.notified()).await;
            loop {
                let (records, checkpoints): (Vec<Arc<Record>>, Vec<Arc<Checkpoint>>) = {
                    let held = self.buffer.lock();
                    (
                        held.records
                            .iter()
                            .take(BATCH)
                            .map(|(r, _)| r.clone())
                            .collect(),
                        held.checkpoints.iter().cloned().collect(),
                    )
                };
                if records.is_empty() && checkpoints.is_empty() {
                    break;
                }
                let outcome = self.post(&records, &checkpoints).await;
                let sent = records.len() as u64;
                match outcome {
                    Outcome::Accepted { rejected } => {
                        backoff = retry::FIRST_BACKOFF;
                        let rejected = rejected.min(sent + checkpoints.len() as u64);
                        if rejected > 0 {
                            warn!(
                                rejected,
                                "OTLP collector rejected some records (partial success); they are not sent again"
                            );
                        }
                        self.stats
                            .exported
                            .fetch_add(sent.saturating_sub(rejected), Ordering::Relaxed);
                        self.stats.rejected.fetch_add(rejected, Ordering::Relaxed);
                        self.stats
                            .checkpoints
                            .fetch_add(checkpoints.len() as u64, Ordering::Relaxed);
                        self.forget(&records, &checkpoints);
                    }
                    Outcome::Drop { why } => {
                        backoff = retry::FIRST_BACKOFF;
                        warn!(records = sent, checkpoints = checkpoints.len(), %why, "OTLP export refused; batch dropped (the local store keeps it)");
                        self.stats.rejected.fetch_add(sent, Ordering::Relaxed);
                        self.forget(&records, &checkpoints);
                    }
                    Outcome::Retry { why, after } => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        let wait = retry::wait(after, backoff);
                        warn!(%why, retry_in = ?wait, buffered = records.len(), "OTLP export failed; retrying");
                        tokio::time::sleep(wait).await;
                        backoff = retry::next_backoff(backoff);
                    }
                }
            }
        }
    }

    /// Removes what was sent; overflow may have dropped some of it already.
    fn forget(&self, records: &[Arc<Record>], checkpoints: &[Arc<Checkpoint>]) {
        let mut held = self.buffer.lock();
        if let Some(last) = records.last().map(|r| r.seq) {
            while held.records.front().is_some_and(|(r, _)| r.seq <= last) {
                if let Some((_, s)) = held.records.pop_front() {
                    held.bytes -= s;
                }
            }
        }
        if let Some(last) = checkpoints.last().map(|c| c.seq) {
            held.checkpoints.retain(|c| c.seq > last);
        }
    }

    async fn post(&self, records: &[Arc<Record>], checkpoints: &[Arc<Checkpoint>]) -> Outcome {
        let request = encode::request(
            &self.resource,
            &encode::Batch {
                records,
                checkpoints,
            },
        );
        let body = encode::body(&request, self.cfg.protocol, self.cfg.compression);
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.cfg.url.clone())
            .header(
                header::CONTENT_TYPE,
                match self.cfg.protocol {
                    Protocol::Protobuf => "application/x-protobuf",
                    Protocol::Json => "application/json",
                },
            )
            .header(
                header::USER_AGENT,
                concat!("agentguard/", env!("CARGO_PKG_VERSION")),
            );
        if self.cfg.compression == Compression::Gzip {
            req = req.header(header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &self.cfg.headers {
            req = req.header(k, v);
        }
        let req = match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Drop {
                    why: format!("request not built: {e}"),
                };
            }
        };
        let resp = match tokio::time::timeout(self.cfg.timeout, self.client.request(req)).await {
            Err(_) => {
                return Outcome::Retry {
                    why: "collector did not answer in time".into(),
                    after: None,
                };
            }
            Ok(Err(e)) => {
                return Outcome::Retry {
                    why: format!("collector unreachable: {e}"),
                    after: None,
                };
            }
            Ok(Ok(resp)) => resp,
        };
        let (parts, body) = resp.into_parts();
        // Read (bounded) so the connection can be reused, and for a
        // partial success.
        let bytes =
            tokio::time::timeout(self.cfg.timeout, Limited::new(body, MAX_RESPONSE).collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|c| c.to_bytes())
                .unwrap_or_default();
        if parts.status.is_success() {
            debug!(
                records = records.len(),
                checkpoints = checkpoints.len(),
                "exported to OTLP collector"
            );
            Outcome::Accepted {
                rejected: rejected_in(&parts.headers, &bytes),
            }
        } else {
            retry::classify_failure(parts.status, &parts.headers, SystemTime::now())
        }
    }
}

/// `partial_success.rejected_log_records` of a success answer, in either
/// encoding; 0 when absent or unreadable.
fn rejected_in(headers: &HeaderMap, body: &[u8]) -> u64 {
    if body.is_empty() {
        return 0;
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let partial = if json {
        serde_json::from_slice::<ExportLogsServiceResponse>(body).ok()
    } else {
        ExportLogsServiceResponse::decode(body).ok()
    }
    .and_then(|r| r.partial_success);
    match partial {
        Some(p) => {
            if !p.error_message.is_empty() {
                warn!(message = %p.error_message, "OTLP collector: partial success");
            }
            u64::try_from(p.rejected_log_records).unwrap_or(0)
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;

    #[test]
    fn partial_success_is_read_in_both_encodings() {
        let resp = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess {
                rejected_log_records: 3,
                error_message: "too old".into(),
            }),
        };
        let mut json = HeaderMap::new();
        json.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(rejected_in(&HeaderMap::new(), &resp.encode_to_vec()), 3);
        assert_eq!(rejected_in(&json, &serde_json::to_vec(&resp).unwrap()), 3);
        assert_eq!(rejected_in(&json, b"{}"), 0);
        assert_eq!(rejected_in(&HeaderMap::new(), b""), 0);
    }

    /// The buffer's bound counts what a record holds: its addresses too.
    #[test]
    fn a_record_is_counted_with_its_addresses() {
        use super::super::Event;
        let record = |event| Record {
            seq: 1,
            event,
            prev_hash: String::new(),
            hash: String::new(),
        };
        let bare = size_of_record(&record(Event::default()));
        let (src, dst) = ("2001:db8::1", "203.0.113.7");
        let addressed = Event {
            src_ip: Some(src.into()),
            dst_ip: Some(dst.into()),
            ..Event::default()
        };
        assert_eq!(
            size_of_record(&record(addressed)),
            bare + src.len() + dst.len()
        );
    }
}
