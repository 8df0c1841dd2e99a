//! OCSF 1.x ([schema](https://schema.ocsf.io)) renderings of audit records,
//! for SIEM ingestion (`agentguard audit query --format ocsf`):
//!
//! | event kind              | OCSF class                      |
//! |-------------------------|---------------------------------|
//! | request                 | HTTP Activity (4002)            |
//! | connection, kernel refusal | Network Activity (4001)      |
//! | daemon start/stop       | Application Lifecycle (6002)    |
//! | reload, credential failure, retention | Base Event (0)    |
//!
//! Every object carries the base required attributes (`activity_id`,
//! `category_uid`, `class_uid`, `type_uid`, `severity_id`, `time`, and
//! `metadata` with `product` and `version`), each class's own constraint
//! (an endpoint for 4001, `http_request` for 4002, `app` for 6002), the
//! security-control `action`/`disposition` where a decision was made, and
//! everything agentguard-specific (agent, cgroup, tool, rule, credential id,
//! policy version, chain position) under `unmapped`.

use serde_json::{Map, Value, json};

use super::{
    event::{Decision, Event, Kind},
    store::Record,
};

/// The OCSF schema version these objects follow.
pub const OCSF_VERSION: &str = "1.3.0";

pub const CLASS_NETWORK_ACTIVITY: u64 = 4001;
/// OCSF DNS Activity.
const CLASS_DNS_ACTIVITY: u64 = 4003;
pub const CLASS_HTTP_ACTIVITY: u64 = 4002;
pub const CLASS_APPLICATION_LIFECYCLE: u64 = 6002;
pub const CLASS_BASE_EVENT: u64 = 0;

pub fn render(record: &Record) -> Value {
    let e = &record.event;
    let (class_uid, category_uid, activity_id) = classify(e);
    let mut o = Map::new();
    o.insert("class_uid".into(), json!(class_uid));
    o.insert("category_uid".into(), json!(category_uid));
    o.insert("activity_id".into(), json!(activity_id));
    o.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    let (severity_id, severity) = severity(e);
    o.insert("severity_id".into(), json!(severity_id));
    o.insert("severity".into(), json!(severity));
    o.insert("time".into(), json!(epoch_ms(&e.time)));
    o.insert("time_dt".into(), json!(e.time));
    o.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "uid": e.id,
            "sequence": record.seq,
            "log_name": "agentguard-audit",
            "product": {
                "name": "agentguard",
                "vendor_name": "agentguard",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "profiles": ["security_control"],
        }),
    );
    if let Some(reason) = &e.reason {
        o.insert("message".into(), json!(reason));
    }
    if let Some(d) = e.decision {
        let (action_id, action, disposition_id, disposition) = action(d);
        o.insert("action_id".into(), json!(action_id));
        o.insert("action".into(), json!(action));
        o.insert("disposition_id".into(), json!(disposition_id));
        o.insert("disposition".into(), json!(disposition));
        let failed = matches!(d, Decision::Deny | Decision::Refuse | Decision::Reject);
        o.insert("status_id".into(), json!(if failed { 2 } else { 1 }));
        o.insert(
            "status".into(),
            json!(if failed { "Failure" } else { "Success" }),
        );
    }
    if e.pid.is_some() || e.agent.is_some() {
        o.insert("actor".into(), actor(e));
    }
    if e.src_ip.is_some() {
        o.insert(
            "src_endpoint".into(),
            json!({ "ip": e.src_ip, "port": e.src_port }),
        );
    }
    if e.dst_ip.is_some() || e.host.is_some() || e.sni.is_some() {
        o.insert(
            "dst_endpoint".into(),
            json!({
                "ip": e.dst_ip,
                "port": e.dst_port,
                "hostname": e.host.as_ref().or(e.sni.as_ref()),
            }),
        );
    }
    if matches!(class_uid, CLASS_NETWORK_ACTIVITY | CLASS_HTTP_ACTIVITY) {
        let transport = match e.protocol.as_deref() {
            Some("udp") => "udp",
            Some("raw") => "raw",
            _ => "tcp",
        };
        o.insert(
            "connection_info".into(),
            json!({ "protocol_name": transport, "direction_id": 2, "direction": "Outbound" }),
        );
        if e.bytes_in.is_some() || e.bytes_out.is_some() {
            // OCSF counts from the initiator: bytes_out leave the agent.
            o.insert(
                "traffic".into(),
                json!({ "bytes_out": e.bytes_in, "bytes_in": e.bytes_out }),
            );
        }
    }
    if let Some(us) = e.duration_us {
        o.insert("duration".into(), json!(us / 1000));
    }
    if class_uid == CLASS_HTTP_ACTIVITY {
        let scheme = if e.sni.is_some() { "https" } else { "http" };
        let (path, query) = match e.path.as_deref().unwrap_or_default().split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (e.path.clone().unwrap_or_default(), None),
        };
        let host = e.host.clone().unwrap_or_default();
        o.insert(
            "http_request".into(),
            json!({
                "uid": e.id,
                "http_method": e.method,
                "version": e.protocol,
                "url": {
                    "scheme": scheme,
                    "hostname": host,
                    "port": e.dst_port,
                    "path": path,
                    "query_string": query,
                    "url_string": format!("{scheme}://{host}{}", e.path.as_deref().unwrap_or_default()),
                },
            }),
        );
        if let Some(status) = e.status {
            o.insert("http_response".into(), json!({ "code": status }));
            o.insert("http_status".into(), json!(status));
        }
    }
    if class_uid == CLASS_APPLICATION_LIFECYCLE {
        o.insert(
            "app".into(),
            json!({ "name": "agentguard", "vendor_name": "agentguard", "version": env!("CARGO_PKG_VERSION") }),
        );
    }
    o.insert(
        "unmapped".into(),
        json!({
            "agentguard": {
                "kind": e.kind.as_str(),
                "decision": e.decision.map(Decision::as_str),
                "agent": e.agent,
                "cgroup_path": e.cgroup_path,
                "cgroup_id": e.cgroup_id,
                "tool": e.tool,
                "rule": e.rule,
                "credential_id": e.credential_id,
                "token_jti": e.token_jti,
                "policy_version": e.policy_version,
                "intent": e.intent,
                "on_behalf_of": e.on_behalf_of,
                "sni": e.sni,
                "seq": record.seq,
                "hash": record.hash,
            }
        }),
    );
    Value::Object(o)
}

/// (class_uid, category_uid, activity_id)
fn classify(e: &Event) -> (u64, u64, u64) {
    match e.kind {
        Kind::Request | Kind::TokenVerification => {
            (CLASS_HTTP_ACTIVITY, 4, http_activity(e.method.as_deref()))
        }
        // 1 Open, 5 Refuse.
        Kind::Connection => {
            let refused = e.decision == Some(Decision::Refuse);
            (CLASS_NETWORK_ACTIVITY, 4, if refused { 5 } else { 1 })
        }
        Kind::KernelRefusal => (CLASS_NETWORK_ACTIVITY, 4, 5),
        // 1 Query.
        Kind::DnsQuery => (CLASS_DNS_ACTIVITY, 4, 1),
        // 3 Start, 4 Stop.
        Kind::DaemonStart => (CLASS_APPLICATION_LIFECYCLE, 6, 3),
        Kind::DaemonStop => (CLASS_APPLICATION_LIFECYCLE, 6, 4),
        Kind::PolicyReload | Kind::CredentialFailure | Kind::Retention => (CLASS_BASE_EVENT, 0, 99),
    }
}

/// HTTP Activity's activity ids follow the method.
fn http_activity(method: Option<&str>) -> u64 {
    match method {
        Some("CONNECT") => 1,
        Some("DELETE") => 2,
        Some("GET") => 3,
        Some("HEAD") => 4,
        Some("OPTIONS") => 5,
        Some("POST") => 6,
        Some("PUT") => 7,
        Some("TRACE") => 8,
        Some("PATCH") => 9,
        Some(_) => 99,
        None => 0,
    }
}

fn severity(e: &Event) -> (u64, &'static str) {
    match e.decision {
        Some(Decision::Deny | Decision::Refuse | Decision::Reject) => (3, "Medium"),
        Some(Decision::WouldDeny) => (2, "Low"),
        _ if e.kind == Kind::CredentialFailure => (3, "Medium"),
        _ => (1, "Informational"),
    }
}

/// (action_id, action, disposition_id, disposition)
fn action(d: Decision) -> (u64, &'static str, u64, &'static str) {
    match d {
        Decision::Allow | Decision::Intercept | Decision::Passthrough | Decision::Accept => {
            (1, "Allowed", 1, "Allowed")
        }
        // Let through, but flagged.
        Decision::WouldDeny => (1, "Allowed", 15, "Detected"),
        Decision::Deny | Decision::Refuse | Decision::Reject => (2, "Denied", 2, "Blocked"),
    }
}

fn actor(e: &Event) -> Value {
    let exe_name = e
        .exe
        .as_deref()
        .and_then(|p| p.rsplit('/').next())
        .map(str::to_owned);
    json!({
        "app_name": e.agent,
        "process": {
            "pid": e.pid,
            "name": e.comm,
            "file": e.exe.as_ref().map(|p| json!({ "path": p, "name": exe_name, "type_id": 1 })),
            "user": e.uid.map(|u| json!({ "uid": u.to_string() })),
            "group": e.gid.map(|g| json!({ "uid": g.to_string() })),
        },
        "user": e.uid.map(|u| json!({ "uid": u.to_string() })),
    })
}

fn epoch_ms(time: &str) -> u64 {
    humantime::parse_rfc3339(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// The attributes OCSF requires of every event, and of each class this
/// module emits. Used by tests, and handy for anyone checking an export.
pub fn missing_required(o: &Value) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for key in [
        "activity_id",
        "category_uid",
        "class_uid",
        "severity_id",
        "time",
        "type_uid",
    ] {
        if o.get(key).is_none_or(Value::is_null) {
            missing.push(key);
        }
    }
    if o.pointer("/metadata/version").is_none_or(Value::is_null) {
        missing.push("metadata.version");
    }
    if o.pointer("/metadata/product/vendor_name")
        .is_none_or(Value::is_null)
    {
        missing.push("metadata.product.vendor_name");
    }
    let class = o.get("class_uid").and_then(Value::as_u64);
    let lacks = |a: &str, b: &str| o.get(a).is_none() && o.get(b).is_none();
    if class == Some(CLASS_NETWORK_ACTIVITY) && lacks("src_endpoint", "dst_endpoint") {
        missing.push("src_endpoint or dst_endpoint");
    }
    if class == Some(CLASS_HTTP_ACTIVITY) && lacks("http_request", "http_response") {
        missing.push("http_request or http_response");
    }
    if class == Some(CLASS_APPLICATION_LIFECYCLE) && o.get("app").is_none() {
        missing.push("app");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: Event) -> Record {
        Record {
            seq: 7,
            event,
            prev_hash: "0".repeat(64),
            hash: "1".repeat(64),
        }
    }

    #[test]
    fn requests_are_http_activity_with_required_fields() {
        let mut e = Event::new(Kind::Request).with_decision(Decision::Deny, "no tool");
        e.method = Some("POST".into());
        e.host = Some("api.example.com".into());
        e.path = Some("/v1/x?a=1".into());
        e.status = Some(403);
        e.pid = Some(10);
        e.uid = Some(1000);
        let o = render(&record(e));
        assert_eq!(o["class_uid"], 4002);
        assert_eq!(o["type_uid"], 400206);
        assert_eq!(o["action"], "Denied");
        assert_eq!(o["http_request"]["url"]["path"], "/v1/x");
        assert_eq!(o["actor"]["process"]["pid"], 10);
        assert!(
            missing_required(&o).is_empty(),
            "{:?}",
            missing_required(&o)
        );
    }

    #[test]
    fn every_kind_renders_with_required_fields() {
        for kind in Kind::ALL {
            let mut e = Event::new(kind);
            e.dst_ip = Some("127.0.0.1".into());
            let o = render(&record(e));
            assert!(missing_required(&o).is_empty(), "{kind:?}: {o}");
        }
        let refused = render(&record(
            Event::new(Kind::Connection).with_decision(Decision::Refuse, "x"),
        ));
        assert_eq!(refused["type_uid"], 400105);
    }
}
