//! Export of committed audit records to an OpenTelemetry collector as logs:
//! OTLP/HTTP with the JSON encoding (`POST <endpoint>/v1/logs`, an
//! `ExportLogsServiceRequest`), which every collector accepts on its HTTP
//! receiver.
//!
//! The exporter reads what the writer has committed, never the proxy's
//! queue, so a slow or dead collector cannot hold up a request. Its buffer is
//! bounded: when the collector is away for long, the oldest buffered records
//! are dropped from the export (counted in `agentguard_otlp_dropped_total`),
//! never from the local store, which stays the system of record.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, Uri, body::Bytes, header};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::{Notify, broadcast};
use tracing::{debug, warn};

use super::store::Record;

/// Records held for export at most; beyond it the oldest go.
pub const BUFFER: usize = 8192;
/// Records per export request.
const BATCH: usize = 512;
/// How long records wait to fill a batch.
const INTERVAL: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint {0:?}: expected an http:// or https:// URL")]
    Endpoint(String),
    #[error("OTLP TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Exporter counters.
#[derive(Debug, Default)]
pub struct OtlpStats {
    exported: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct OtlpSnapshot {
    pub exported: u64,
    pub dropped: u64,
    pub failures: u64,
}

impl OtlpStats {
    pub fn snapshot(&self) -> OtlpSnapshot {
        OtlpSnapshot {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

/// `<endpoint>/v1/logs`, as OTLP/HTTP specifies for a base endpoint.
pub fn logs_url(endpoint: &str) -> Result<Uri, OtlpError> {
    let bad = || OtlpError::Endpoint(endpoint.to_owned());
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(bad());
    }
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/logs") {
        base.to_owned()
    } else {
        format!("{base}/v1/logs")
    };
    url.parse().map_err(|_| bad())
}

/// Starts exporting what `records` delivers to `url`. Runs until the
/// record stream closes.
pub fn spawn(
    url: Uri,
    records: broadcast::Receiver<Arc<Record>>,
    stats: Arc<OtlpStats>,
) -> Result<(), OtlpError> {
    let buffer = Arc::new(Buffer::default());
    tokio::spawn(fill(records, buffer.clone(), stats.clone()));
    let client = client()?;
    tokio::spawn(export(url, client, buffer, stats));
    Ok(())
}

#[derive(Default)]
struct Buffer {
    records: Mutex<VecDeque<Arc<Record>>>,
    ready: Notify,
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

fn client() -> Result<HttpClient, OtlpError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Moves committed records into the bounded buffer, dropping the oldest
/// when it is full.
async fn fill(
    mut records: broadcast::Receiver<Arc<Record>>,
    buffer: Arc<Buffer>,
    stats: Arc<OtlpStats>,
) {
    loop {
        match records.recv().await {
            Ok(r) => {
                let mut q = buffer.records.lock().unwrap_or_else(|p| p.into_inner());
                if q.len() >= BUFFER {
                    q.pop_front();
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                q.push_back(r);
                if q.len() >= BATCH {
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
        }
    }
}

async fn export(url: Uri, client: HttpClient, buffer: Arc<Buffer>, stats: Arc<OtlpStats>) {
    let mut backoff = INTERVAL;
    loop {
        let _ = tokio::time::timeout(INTERVAL, buffer.ready.notified()).await;
        loop {
            let batch: Vec<Arc<Record>> = {
                let q = buffer.records.lock().unwrap_or_else(|p| p.into_inner());
                q.iter().take(BATCH).cloned().collect()
            };
            let Some(last) = batch.last().map(|r| r.seq) else {
                break;
            };
            match post(&client, &url, &batch).await {
                Ok(()) => {
                    stats
                        .exported
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    backoff = INTERVAL;
                    // Only what was sent goes; overflow may have already
                    // dropped some of it.
                    let mut q = buffer.records.lock().unwrap_or_else(|p| p.into_inner());
                    while q.front().is_some_and(|r| r.seq <= last) {
                        q.pop_front();
                    }
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, retry_in = ?backoff, buffered = batch.len(), "OTLP export failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn post(client: &HttpClient, url: &Uri, batch: &[Arc<Record>]) -> Result<(), String> {
    let body = serde_json::to_vec(&request_body(batch)).map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "collector did not answer in time".to_owned())?
        .map_err(|e| format!("collector unreachable: {e}"))?;
    let status = resp.status();
    // Read the answer so the connection can be reused.
    let _ = resp.into_body().collect().await;
    if status.is_success() {
        debug!(records = batch.len(), "exported to OTLP collector");
        Ok(())
    } else {
        Err(format!("collector answered {status}"))
    }
}

/// An `ExportLogsServiceRequest` in OTLP's JSON encoding (64-bit integers as
/// strings, enums as numbers).
pub fn request_body(batch: &[Arc<Record>]) -> Value {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let records: Vec<Value> = batch.iter().map(|r| log_record(r)).collect();
    json!({
        "resourceLogs": [{
            "resource": { "attributes": [
                attr_str("service.name", "agentguard"),
                attr_str("service.version", env!("CARGO_PKG_VERSION")),
                attr_str("host.name", &host),
            ]},
            "scopeLogs": [{
                "scope": { "name": "agentguard.audit", "version": env!("CARGO_PKG_VERSION") },
                "logRecords": records,
            }],
        }],
    })
}

fn log_record(r: &Record) -> Value {
    let e = &r.event;
    let nanos = humantime::parse_rfc3339(&e.time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    // SeverityNumber: 9 INFO, 13 WARN.
    let warn = matches!(
        e.decision,
        Some(
            super::Decision::Deny
                | super::Decision::Refuse
                | super::Decision::Reject
                | super::Decision::WouldDeny
        )
    );
    let mut attributes = vec![
        attr_str("agentguard.kind", e.kind.as_str()),
        attr_int("agentguard.seq", r.seq),
        attr_str("agentguard.hash", &r.hash),
    ];
    let mut opt = |key: &str, v: &Option<String>| {
        if let Some(v) = v {
            attributes.push(attr_str(key, v));
        }
    };
    opt("agentguard.agent", &e.agent);
    opt(
        "agentguard.decision",
        &e.decision.map(|d| d.as_str().to_owned()),
    );
    opt("agentguard.tool", &e.tool);
    opt("server.address", &e.host.clone().or_else(|| e.sni.clone()));
    opt("http.request.method", &e.method);
    if let Some(pid) = e.pid {
        attributes.push(attr_int("process.pid", i64::from(pid)));
    }
    if let Some(status) = e.status {
        attributes.push(attr_int("http.response.status_code", i64::from(status)));
    }
    json!({
        "timeUnixNano": nanos.to_string(),
        "observedTimeUnixNano": nanos.to_string(),
        "severityNumber": if warn { 13 } else { 9 },
        "severityText": if warn { "WARN" } else { "INFO" },
        "eventName": format!("agentguard.{}", e.kind.as_str()),
        "body": { "stringValue": serde_json::to_string(r).unwrap_or_default() },
        "attributes": attributes,
    })
}

fn attr_str(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

fn attr_int(key: &str, value: i64) -> Value {
    json!({ "key": key, "value": { "intValue": value.to_string() } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Decision, Event, Kind};

    #[test]
    fn endpoints_get_the_logs_path() {
        assert_eq!(
            logs_url("http://127.0.0.1:4318").unwrap().to_string(),
            "http://127.0.0.1:4318/v1/logs"
        );
        assert_eq!(
            logs_url("https://c.example/v1/logs").unwrap().to_string(),
            "https://c.example/v1/logs"
        );
        assert!(logs_url("127.0.0.1:4318").is_err());
    }

    #[test]
    fn bodies_follow_the_otlp_json_shape() {
        let mut e = Event::new(Kind::Request).with_decision(Decision::Allow, "ok");
        e.agent = Some("bot".into());
        let r = Arc::new(Record {
            seq: 3,
            event: e,
            prev_hash: String::new(),
            hash: "ab".into(),
        });
        let body = request_body(&[r]);
        let rec = &body["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["severityNumber"], 9);
        assert!(rec["timeUnixNano"].as_str().unwrap().len() > 15);
        assert!(
            rec["body"]["stringValue"]
                .as_str()
                .unwrap()
                .contains("\"agent\":\"bot\"")
        );
        assert!(
            rec["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["key"] == "agentguard.seq" && a["value"]["intValue"] == "3")
        );
    }
}
