//! Committed records and checkpoints as an OTLP `ExportLogsServiceRequest`
//! (the OpenTelemetry project's own message types), in protobuf or OTLP
//! JSON, gzipped if asked.
//!
//! Every event field is its own typed log-record attribute (integers as
//! `intValue`, text as `stringValue`), named by the OpenTelemetry semantic
//! conventions where one fits (`process.pid`, `http.request.method`,
//! `url.path`, `server.address`, ...) and `agentguard.<field>` otherwise, so
//! a collector or backend can filter and aggregate without parsing a body.
//! A request's `traceparent` also fills the record's `trace_id`, `span_id`
//! and flags, which is what joins it to the agent's trace. The resource
//! names the host (`host.name`, `host.id`) and agentguard (`service.name`,
//! `service.version`).
//!
//! A checkpoint is a record of its own (`event_name`
//! `agentguard.checkpoint`) whose body is the exported checkpoint's JSON
//! ([`super::super::anchor::to_json`]): saved as a file, it is an
//! `audit verify --anchor`.

use std::{io::Write as _, sync::Arc};

use flate2::{Compression as Level, write::GzEncoder};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    resource::v1::Resource,
};
use prost::Message as _;

use super::{
    super::{Decision, anchor, event::Event, store::Checkpoint, store::Record, traceparent},
    config::{Compression, Protocol},
};

const SCOPE: &str = "agentguard.audit";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What one export request carries.
pub struct Batch<'a> {
    pub records: &'a [Arc<Record>],
    pub checkpoints: &'a [Arc<Checkpoint>],
}

/// The body to POST, for `protocol` and `compression`.
pub fn body(
    request: &ExportLogsServiceRequest,
    protocol: Protocol,
    compression: Compression,
) -> Vec<u8> {
    let raw = match protocol {
        Protocol::Protobuf => request.encode_to_vec(),
        // Strings, integers and bytes as hex: serialising cannot fail.
        Protocol::Json => serde_json::to_vec(request).unwrap_or_default(),
    };
    match compression {
        Compression::None => raw,
        Compression::Gzip => {
            let mut gz = GzEncoder::new(Vec::with_capacity(raw.len() / 4), Level::default());
            // Writing to a Vec cannot fail.
            let _ = gz.write_all(&raw);
            gz.finish().unwrap_or_default()
        }
    }
}

/// The resource: this host and this agentguard, then `extra`
/// (`OTEL_RESOURCE_ATTRIBUTES`), which may rename the service.
pub fn resource(extra: &[(String, String)]) -> Resource {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let mut attributes = vec![
        string("service.name", "agentguard"),
        string("service.version", VERSION),
        string("host.name", &read("/proc/sys/kernel/hostname")),
        string("os.type", "linux"),
    ];
    let machine_id = read("/etc/machine-id");
    if !machine_id.is_empty() {
        attributes.push(string("host.id", &machine_id));
    }
    for (k, v) in extra {
        // Ours name the host and the version; the operator's may not
        // overwrite those, but may name the service.
        if matches!(k.as_str(), "host.name" | "host.id" | "service.version") {
            continue;
        }
        attributes.retain(|a| &a.key != k);
        attributes.push(string(k, v));
    }
    Resource {
        attributes,
        ..Resource::default()
    }
}

pub fn request(resource: &Resource, batch: &Batch<'_>) -> ExportLogsServiceRequest {
    let mut log_records: Vec<LogRecord> = batch.records.iter().map(|r| log_record(r)).collect();
    log_records.extend(batch.checkpoints.iter().map(|c| checkpoint_record(c)));
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: VERSION.into(),
                    ..InstrumentationScope::default()
                }),
                log_records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

fn log_record(r: &Record) -> LogRecord {
    let e = &r.event;
    let nanos = unix_nanos(&e.time);
    let warn = matches!(
        e.decision,
        Some(Decision::Deny | Decision::Refuse | Decision::Reject | Decision::WouldDeny)
    );
    let mut record = LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        // SeverityNumber 9 INFO, 13 WARN.
        severity_number: if warn { 13 } else { 9 },
        severity_text: if warn { "WARN" } else { "INFO" }.into(),
        event_name: format!("agentguard.{}", e.kind.as_str()),
        body: Some(text(e.reason.as_deref().unwrap_or(e.kind.as_str()))),
        attributes: attributes(r),
        ..LogRecord::default()
    };
    if let Some(t) = e
        .traceparent
        .as_deref()
        .and_then(|t| traceparent::parse(t.as_bytes()))
    {
        record.trace_id = t.trace_id.to_vec();
        record.span_id = t.span_id.to_vec();
        // LogRecordFlags: the low byte holds the W3C trace flags.
        record.flags = u32::from(t.flags);
    }
    record
}

/// Every field of the event (and its place in the chain), typed.
fn attributes(r: &Record) -> Vec<KeyValue> {
    let e: &Event = &r.event;
    let mut a = vec![
        string("agentguard.kind", e.kind.as_str()),
        int("agentguard.seq", r.seq),
        string("agentguard.hash", &r.hash),
        string("agentguard.prev_hash", &r.prev_hash),
        string("agentguard.event.id", &e.id),
        string("agentguard.time", &e.time),
    ];
    let mut s = |key: &str, v: Option<&str>| {
        if let Some(v) = v {
            a.push(string(key, v));
        }
    };
    s("agentguard.agent", e.agent.as_deref());
    s("agentguard.cgroup.path", e.cgroup_path.as_deref());
    s("process.executable.path", e.exe.as_deref());
    s(
        "process.executable.name",
        e.exe.as_deref().and_then(|p| p.rsplit('/').next()),
    );
    s("agentguard.comm", e.comm.as_deref());
    // OpenTelemetry's container semantic conventions.
    s("container.id", e.container_id.as_deref());
    s("container.name", e.container_name.as_deref());
    s("container.image.name", e.container_image.as_deref());
    s("agentguard.on_behalf_of", e.on_behalf_of.as_deref());
    s("agentguard.intent", e.intent.as_deref());
    s("source.address", e.src_ip.as_deref());
    s("destination.address", e.dst_ip.as_deref());
    s("agentguard.sni", e.sni.as_deref());
    s("server.address", e.host.as_deref().or(e.sni.as_deref()));
    s("agentguard.protocol", e.protocol.as_deref());
    s("http.request.method", e.method.as_deref());
    s("agentguard.path", e.path.as_deref());
    if let Some(path) = e.path.as_deref() {
        let (p, q) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        s("url.path", Some(p));
        s("url.query", q);
    }
    s("agentguard.tool", e.tool.as_deref());
    s("agentguard.rule", e.rule.as_deref());
    s("agentguard.decision", e.decision.map(Decision::as_str));
    s("agentguard.reason", e.reason.as_deref());
    s("agentguard.credential_id", e.credential_id.as_deref());
    s("agentguard.token_jti", e.token_jti.as_deref());
    s("agentguard.policy_version", e.policy_version.as_deref());
    s("agentguard.traceparent", e.traceparent.as_deref());
    s("agentguard.actor", e.actor.as_deref());
    s("agentguard.approval_id", e.approval_id.as_deref());
    s("agentguard.request_hash", e.request_hash.as_deref());
    s("agentguard.rpc_method", e.rpc_method.as_deref());
    s("agentguard.mcp_target", e.mcp_target.as_deref());
    s("agentguard.rpc_calls", e.rpc_calls.as_deref());
    s("agentguard.relay", e.relay.as_deref());
    if let Some(version) = e.protocol.as_deref().and_then(|p| p.strip_prefix("HTTP/")) {
        a.push(string("network.protocol.name", "http"));
        a.push(string("network.protocol.version", version));
    }
    let mut n = |key: &str, v: Option<u64>| {
        if let Some(v) = v {
            // Every value the store holds fits an i64 (SQLite's INTEGER).
            a.push(int(key, i64::try_from(v).unwrap_or(i64::MAX)));
        }
    };
    n("agentguard.cgroup.id", e.cgroup_id);
    n("process.pid", e.pid.map(u64::from));
    n("process.real_user.id", e.uid.map(u64::from));
    n("agentguard.gid", e.gid.map(u64::from));
    n("source.port", e.src_port.map(u64::from));
    n("destination.port", e.dst_port.map(u64::from));
    n("server.port", e.dst_port.map(u64::from));
    n("http.response.status_code", e.status.map(u64::from));
    n("agentguard.bytes_in", e.bytes_in);
    n("agentguard.bytes_out", e.bytes_out);
    n("agentguard.duration_us", e.duration_us);
    a
}

fn checkpoint_record(c: &Checkpoint) -> LogRecord {
    let nanos = unix_nanos(&c.time);
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number: 9,
        severity_text: "INFO".into(),
        event_name: "agentguard.checkpoint".into(),
        body: Some(text(&anchor::to_json(c))),
        attributes: vec![
            int("agentguard.checkpoint.seq", c.seq),
            string("agentguard.checkpoint.hash", &c.hash),
            string("agentguard.checkpoint.time", &c.time),
            string("agentguard.checkpoint.signature", &c.signature),
            string("agentguard.checkpoint.key_id", &c.key_id),
        ],
        ..LogRecord::default()
    }
}

fn unix_nanos(time: &str) -> u64 {
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn text(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(text(value)),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Decision, Kind};

    fn record() -> Arc<Record> {
        let mut e = Event::new(Kind::Request).with_decision(Decision::Deny, "no tool");
        e.agent = Some("bot".into());
        e.pid = Some(42);
        e.path = Some("/v1/x?a=1".into());
        e.protocol = Some("HTTP/2".into());
        e.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        Arc::new(Record {
            seq: 3,
            event: e,
            prev_hash: "00".repeat(32),
            hash: "ab".repeat(32),
        })
    }

    fn find<'a>(r: &'a LogRecord, key: &str) -> &'a any_value::Value {
        r.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .unwrap_or_else(|| panic!("{key} missing"))
    }

    #[test]
    fn fields_are_typed_attributes_and_the_trace_joins() {
        let records = [record()];
        let req = request(
            &resource(&[]),
            &Batch {
                records: &records,
                checkpoints: &[],
            },
        );
        let r = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(find(r, "process.pid"), &any_value::Value::IntValue(42));
        assert_eq!(find(r, "agentguard.seq"), &any_value::Value::IntValue(3));
        assert_eq!(
            find(r, "agentguard.agent"),
            &any_value::Value::StringValue("bot".into())
        );
        assert_eq!(
            find(r, "url.query"),
            &any_value::Value::StringValue("a=1".into())
        );
        assert_eq!(
            find(r, "network.protocol.version"),
            &any_value::Value::StringValue("2".into())
        );
        assert_eq!(r.severity_number, 13);
        assert_eq!(hex::encode(&r.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex::encode(&r.span_id), "b7ad6b7169203331");
        assert_eq!(r.flags, 1);
        let res = &req.resource_logs[0].resource.as_ref().unwrap().attributes;
        assert!(res.iter().any(|a| a.key == "host.name"));
        assert!(res.iter().any(|a| a.key == "service.version"));
    }

    #[test]
    fn bodies_decode_back_in_each_encoding() {
        let records = [record()];
        let req = request(
            &resource(&[("service.name".into(), "guard".into())]),
            &Batch {
                records: &records,
                checkpoints: &[],
            },
        );
        let proto = body(&req, Protocol::Protobuf, Compression::None);
        assert_eq!(ExportLogsServiceRequest::decode(&proto[..]).unwrap(), req);
        let gz = body(&req, Protocol::Protobuf, Compression::Gzip);
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        assert_eq!(raw, proto);
        let json: serde_json::Value =
            serde_json::from_slice(&body(&req, Protocol::Json, Compression::None)).unwrap();
        let rec = &json["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["traceId"], "0af7651916cd43dd8448eb211c80319c");
        assert!(rec["timeUnixNano"].is_string() || rec["timeUnixNano"].is_u64());
        assert!(
            json["resourceLogs"][0]["resource"]["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["key"] == "service.name" && a["value"]["stringValue"] == "guard")
        );
    }
}
