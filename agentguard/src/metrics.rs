//! The daemon's Prometheus metrics (OpenMetrics text), served at `GET
//! /metrics` on the admin socket and, with `--metrics-listen`, on a TCP
//! address.
//!
//! Served in the format the scraper asks for: OpenMetrics to one whose
//! `Accept` names it (Prometheus does), else the Prometheus text format
//! 0.0.4 (curl, `promtool check metrics`, older scrapers), which names a
//! counter's HELP and TYPE after its `_total` sample and has no `# EOF`.
//!
//! Decision counters are fed from the audit sink as events are recorded, so
//! every decision that reaches the audit record is counted, whoever emits
//! it. Counters kept elsewhere (audit writer, leaf cache, OTLP exporter) are
//! brought up to date at each scrape.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::audit::{AuditStatus, Event, Kind, otlp::OtlpSnapshot};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of [`to_prometheus_text`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition for a scraper that sent `accept`, and its content type.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (String, &'static str) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (openmetrics, CONTENT_TYPE)
    } else {
        (to_prometheus_text(&openmetrics), PROMETHEUS_CONTENT_TYPE)
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter family
/// is named by its `_total` samples, `# UNIT` and `# EOF` go. Samples and
/// the other types read the same in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    relay: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaLabels {
    role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The event's own name, shared: counting a request allocates nothing.
    agent: Arc<str>,
    decision: &'static str,
}

/// Values read from elsewhere at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub audit: Option<AuditStatus>,
    /// Entries in each kernel map (name, count), and its capacity.
    pub kernel_maps: Vec<(&'static str, u64, u64)>,
    /// Kernel event records lost to a full ring buffer.
    pub kernel_events_lost: u64,
    pub leaf_hits: u64,
    pub leaf_misses: u64,
    /// Each trusted CA's role (`active`, `next`) and expiry, seconds since
    /// the epoch.
    pub ca_expiry: Vec<(&'static str, i64)>,
    pub otlp: Option<OtlpSnapshot>,
}

pub struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    passthrough_relays: Family<RelayLabels, Counter>,
    passthrough_direct: Counter,
    passthrough_direct_bytes: Counter,
    passthrough_idle_closed: Counter,
    kernel_records_expired: Counter,
    requests: Family<RequestLabels, Counter>,
    kernel_refusals: Family<ConnectionLabels, Counter>,
    upstream_latency: Histogram,
    audit_queue_depth: Gauge,
    kernel_map_entries: Family<MapLabels, Gauge>,
    ca_expiry: Family<CaLabels, Gauge>,
    kernel_map_capacity: Family<MapLabels, Gauge>,
    kernel_events_lost: Counter,
    audit_last_checkpoint_seq: Gauge,
    audit_anchor_exported_seq: Gauge,
    // Mirrors of counters kept elsewhere, advanced by the difference at
    // each scrape (OpenMetrics counters only go up).
    mirrored: Mutex<()>,
    audit_events_written: Counter,
    audit_write_errors: Counter,
    leaf_hits: Counter,
    leaf_misses: Counter,
    otlp_exported: Counter,
    otlp_dropped: Counter,
    otlp_failures: Counter,
    otlp_rejected: Counter,
    otlp_checkpoints: Counter,
    audit_anchor_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("agentguard");
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Connections the proxy decided on, by decision (intercept, passthrough, refuse)",
            connections.clone(),
        );
        let passthrough_relays = Family::<RelayLabels, Counter>::default();
        registry.register(
            "passthrough_relays",
            "Passthrough connections relayed, by path: kernel (the agent's sends straight into the upstream socket) or userspace (copied by the proxy)",
            passthrough_relays.clone(),
        );
        let passthrough_direct = Counter::default();
        registry.register(
            "passthrough_direct",
            "Spliced passthrough connections whose agent sends went straight into the upstream socket (the kernel's message redirect), skipping the proxy's socket",
            passthrough_direct.clone(),
        );
        let passthrough_direct_bytes = Counter::default();
        registry.register_with_unit(
            "passthrough_direct",
            "Bytes agents sent straight into upstream sockets on spliced passthrough connections (counted when a connection ends)",
            prometheus_client::registry::Unit::Bytes,
            passthrough_direct_bytes.clone(),
        );
        let passthrough_idle_closed = Counter::default();
        registry.register(
            "passthrough_idle_closed",
            "Passthrough connections closed because no byte moved either way for --passthrough-idle-timeout",
            passthrough_idle_closed.clone(),
        );
        let kernel_records_expired = Counter::default();
        registry.register(
            "kernel_records_expired",
            "Kernel connection records forgotten because the proxy had not accepted their connection within --kernel-record-max-wait",
            kernel_records_expired.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests decided, by agent and decision (allow, deny, would-deny, refuse)",
            requests.clone(),
        );
        let kernel_refusals = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "kernel_refusals",
            "Sockets refused in the kernel, by decision",
            kernel_refusals.clone(),
        );
        // 1 ms to ~65 s.
        let upstream_latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "upstream_latency_seconds",
            "Time from forwarding a request to the upstream's response head",
            upstream_latency.clone(),
        );
        let ca_expiry = Family::<CaLabels, Gauge>::default();
        registry.register_with_unit(
            "ca_expiry_timestamp",
            "When each CA agents trust expires (role: active signs the leaves, next is staged by agentguard ca rotate), seconds since the epoch",
            prometheus_client::registry::Unit::Seconds,
            ca_expiry.clone(),
        );
        let kernel_map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "kernel_map_entries",
            "Entries in agentguard's kernel maps (an LRU map that stays at capacity is evicting)",
            kernel_map_entries.clone(),
        );
        let kernel_map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register(
            "kernel_map_capacity",
            "Capacity of agentguard's kernel maps",
            kernel_map_capacity.clone(),
        );
        let audit_queue_depth = Gauge::default();
        registry.register(
            "audit_queue_depth",
            "Audit events queued, not yet committed",
            audit_queue_depth.clone(),
        );
        let audit_last_checkpoint_seq = Gauge::default();
        registry.register(
            "audit_last_checkpoint_seq",
            "Sequence number of the last signed audit checkpoint",
            audit_last_checkpoint_seq.clone(),
        );
        let audit_anchor_exported_seq = Gauge::default();
        registry.register(
            "audit_anchor_exported_seq",
            "Sequence number of the newest checkpoint exported to the anchor folder or command (0: none)",
            audit_anchor_exported_seq.clone(),
        );
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let audit_events_written = counter(
            "audit_events_written",
            "Audit events committed to the store",
        );
        let audit_write_errors = counter(
            "audit_write_errors",
            "Failed audit commits (retried; the proxy waits meanwhile)",
        );
        let leaf_hits = counter(
            "leaf_cache_hits",
            "TLS handshakes served a cached leaf certificate",
        );
        let leaf_misses = counter(
            "leaf_cache_misses",
            "Leaf certificates minted (cache miss or near expiry)",
        );
        let otlp_exported = counter(
            "otlp_exported",
            "Audit events accepted by the OTLP collector",
        );
        let otlp_dropped = counter(
            "otlp_dropped",
            "Audit events dropped from the OTLP export buffer (oldest first; the local store keeps them)",
        );
        let otlp_failures = counter(
            "otlp_failures",
            "Failed OTLP export attempts that are retried (429, 502, 503, 504, unreachable, timeout)",
        );
        let otlp_rejected = counter(
            "otlp_rejected",
            "Audit events the OTLP collector refused for good (another status, or a partial success); not sent again",
        );
        let otlp_checkpoints = counter(
            "otlp_checkpoints_exported",
            "Signed audit checkpoints accepted by the OTLP collector",
        );
        let audit_anchor_failures = counter(
            "audit_anchor_failures",
            "Checkpoints the anchor folder or command failed to take",
        );
        let kernel_events_lost = counter(
            "kernel_events_lost",
            "Kernel event records lost to a full ring buffer (the refusals still happened)",
        );
        Self {
            kernel_map_entries,
            ca_expiry,
            kernel_map_capacity,
            kernel_events_lost,
            registry,
            connections,
            passthrough_relays,
            passthrough_direct,
            passthrough_direct_bytes,
            passthrough_idle_closed,
            kernel_records_expired,
            requests,
            kernel_refusals,
            upstream_latency,
            audit_queue_depth,
            audit_last_checkpoint_seq,
            mirrored: Mutex::new(()),
            audit_events_written,
            audit_write_errors,
            leaf_hits,
            leaf_misses,
            otlp_exported,
            otlp_dropped,
            otlp_failures,
            otlp_rejected,
            otlp_checkpoints,
            audit_anchor_exported_seq,
            audit_anchor_failures,
        }
    }

    /// Counts one recorded audit event.
    pub fn observe(&self, e: &Event) {
        let decision = e.decision.map_or("none", |d| d.as_str());
        match e.kind {
            Kind::Connection => {
                self.connections
                    .get_or_create(&ConnectionLabels { decision })
                    .inc();
                if let Some(relay) = &e.relay {
                    self.passthrough_relays
                        .get_or_create(&RelayLabels {
                            relay: relay.clone(),
                        })
                        .inc();
                }
            }
            Kind::Request => {
                let agent = e.agent.clone().unwrap_or_else(|| Arc::from(""));
                self.requests
                    .get_or_create(&RequestLabels { agent, decision })
                    .inc();
            }
            Kind::KernelRefusal => {
                self.kernel_refusals
                    .get_or_create(&ConnectionLabels { decision })
                    .inc();
            }
            _ => {}
        }
    }

    /// Counts a spliced connection whose agent sends now go straight out
    /// of the upstream socket.
    pub fn observe_passthrough_direct(&self) {
        self.passthrough_direct.inc();
    }

    /// Counts bytes a spliced connection's agent sent the direct way.
    pub fn observe_passthrough_direct_bytes(&self, bytes: u64) {
        self.passthrough_direct_bytes.inc_by(bytes);
    }

    /// Counts a passthrough connection closed for idleness.
    pub fn observe_passthrough_idle_closed(&self) {
        self.passthrough_idle_closed.inc();
    }

    /// Counts kernel connection records forgotten unaccepted.
    pub fn observe_kernel_records_expired(&self, n: u64) {
        self.kernel_records_expired.inc_by(n);
    }

    pub fn observe_upstream_latency(&self, d: Duration) {
        self.upstream_latency.observe(d.as_secs_f64());
    }

    /// The OpenMetrics text, with `snapshot` folded in.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        {
            let _one_scrape_at_a_time = self.mirrored.lock().unwrap_or_else(|p| p.into_inner());
            let advance = |c: &Counter, to: u64| {
                let now = c.get();
                if to > now {
                    c.inc_by(to - now);
                }
            };
            if let Some(a) = &snapshot.audit {
                self.audit_queue_depth.set(a.queue_depth as i64);
                self.audit_last_checkpoint_seq.set(a.last_checkpoint_seq);
                advance(&self.audit_events_written, a.events_written);
                advance(&self.audit_write_errors, a.write_errors);
                self.audit_anchor_exported_seq
                    .set(a.anchor_last_exported_seq);
                advance(&self.audit_anchor_failures, a.anchor_failures);
            }
            advance(&self.leaf_hits, snapshot.leaf_hits);
            advance(&self.kernel_events_lost, snapshot.kernel_events_lost);
            for (map, entries, capacity) in &snapshot.kernel_maps {
                let labels = MapLabels {
                    map: (*map).to_owned(),
                };
                self.kernel_map_entries
                    .get_or_create(&labels)
                    .set(*entries as i64);
                self.kernel_map_capacity
                    .get_or_create(&labels)
                    .set(*capacity as i64);
            }
            advance(&self.leaf_misses, snapshot.leaf_misses);
            // A staged CA that was activated or dropped leaves the family.
            self.ca_expiry.clear();
            for (role, at) in &snapshot.ca_expiry {
                self.ca_expiry.get_or_create(&CaLabels { role }).set(*at);
            }
            if let Some(o) = &snapshot.otlp {
                advance(&self.otlp_exported, o.exported);
                advance(&self.otlp_dropped, o.dropped);
                advance(&self.otlp_failures, o.failures);
                advance(&self.otlp_rejected, o.rejected);
                advance(&self.otlp_checkpoints, o.checkpoints);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Decision;

    #[test]
    fn decisions_and_snapshots_show_up() {
        let m = Metrics::new();
        let mut e = Event::new(Kind::Request).with_decision(Decision::Deny, "x");
        e.agent = Some("bot".into());
        m.observe(&e);
        m.observe(&e);
        m.observe(&Event::new(Kind::Connection).with_decision(Decision::Intercept, "x"));
        let mut spliced = Event::new(Kind::Connection).with_decision(Decision::Passthrough, "x");
        spliced.relay = Some("kernel".into());
        m.observe(&spliced);
        m.observe_passthrough_direct();
        m.observe_passthrough_direct_bytes(4096);
        m.observe_passthrough_idle_closed();
        m.observe_kernel_records_expired(3);
        m.observe_upstream_latency(Duration::from_millis(3));
        let text = m.render(&Snapshot {
            leaf_hits: 5,
            leaf_misses: 2,
            ca_expiry: vec![("active", 1_900_000_000)],
            ..Snapshot::default()
        });
        assert!(
            text.contains(r#"agentguard_requests_total{agent="bot",decision="deny"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"agentguard_connections_total{decision="intercept"} 1"#));
        assert!(
            text.contains(r#"agentguard_passthrough_relays_total{relay="kernel"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("agentguard_passthrough_direct_total 1"),
            "{text}"
        );
        assert!(
            text.contains("agentguard_passthrough_direct_bytes_total 4096"),
            "{text}"
        );
        assert!(
            text.contains("agentguard_passthrough_idle_closed_total 1"),
            "{text}"
        );
        assert!(
            text.contains("agentguard_kernel_records_expired_total 3"),
            "{text}"
        );
        assert!(text.contains("agentguard_leaf_cache_hits_total 5"));
        assert!(
            text.contains(r#"agentguard_ca_expiry_timestamp_seconds{role="active"} 1900000000"#),
            "{text}"
        );
        assert!(text.contains("agentguard_upstream_latency_seconds_count 1"));
        assert!(text.ends_with("# EOF\n"));
        let (plain, content_type) = negotiate(text.clone(), Some("*/*"));
        assert_eq!(content_type, PROMETHEUS_CONTENT_TYPE);
        assert!(plain.contains("# TYPE agentguard_requests_total counter\n"));
        assert!(plain.contains("# HELP agentguard_requests_total HTTP requests"));
        assert!(plain.contains("# TYPE agentguard_upstream_latency_seconds histogram\n"));
        assert!(!plain.contains("# EOF"));
        let (same, _) = negotiate(
            text.clone(),
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
        );
        assert_eq!(same, text);
        // Mirrors never go backwards or double count.
        let again = m.render(&Snapshot {
            leaf_hits: 5,
            leaf_misses: 2,
            ..Snapshot::default()
        });
        assert!(again.contains("agentguard_leaf_cache_hits_total 5"));
    }
}
