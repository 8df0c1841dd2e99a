//! OCSF 1.x ([schema](https://schema.ocsf.io)) renderings of audit records,
//! for SIEM ingestion (`agentguard audit query --format ocsf`):
//!
//! | event kind              | OCSF class                      |
//! |-------------------------|---------------------------------|
//! | request, token verification | HTTP Activity (4002)        |
//! | connection, kernel refusal | Network Activity (4001)      |
//! | DNS query               | DNS Activity (4003), `query`, `rcode`, `answers` |
//! | daemon start/stop       | Application Lifecycle (6002)    |
//! | web view login          | Authentication (3002), `user`   |
//! | agent revoked, restored | Account Change (3001), `user` the agent, `actor.user` who |
//! | reload, credential failure, retention, approval | Base Event (0) |
//!
//! Every object carries the base required attributes (`activity_id`,
//! `category_uid`, `class_uid`, `type_uid`, `severity_id`, `time`, and
//! `metadata` with `product` and `version`), each class's own (a
//! `dst_endpoint` for 4001, `http_request` for 4002, `app` for 6002), and
//! declares the profiles whose attributes it uses: `security_control`
//! (`action`, `disposition`) where a decision was made, `host` (`actor`,
//! `device`) where the kernel named a process, `datetime` (`time_dt`).
//! Endpoints say what the event knows: a Unix socket by its path (or
//! `@name`) as the endpoint's `name`, a refused socket option (set before
//! the socket has any destination) as an unconnected endpoint, the agent's
//! host as `src_endpoint.hostname` where no address was recorded.
//! `connection_info.protocol_name` is the IANA transport (`tcp` under TLS
//! and HTTP, `udp`, `icmp`, `ipv6-icmp`), left out where there is none
//! (Unix sockets) or it is unknown. Absent values are left out, never
//! `null` (the schema has no null). Everything agentguard-specific (agent,
//! cgroup, tool, rule, credential id, policy version, chain position) is
//! under `unmapped`. The tests validate every kind against the OCSF schema
//! with `ocsf-json-schema` and `jsonschema`.

use serde_json::{Map, Value, json};

use super::{
    event::{Decision, Event, Kind},
    store::Record,
};

/// The OCSF schema version these objects follow.
pub const OCSF_VERSION: &str = "1.3.0";

pub const CLASS_NETWORK_ACTIVITY: u64 = 4001;
/// OCSF DNS Activity.
pub const CLASS_DNS_ACTIVITY: u64 = 4003;
pub const CLASS_HTTP_ACTIVITY: u64 = 4002;
pub const CLASS_APPLICATION_LIFECYCLE: u64 = 6002;
pub const CLASS_BASE_EVENT: u64 = 0;
/// OCSF Authentication: a login to the web view.
pub const CLASS_AUTHENTICATION: u64 = 3002;
/// OCSF Account Change: an agent, the account the kernel and the proxy
/// know, revoked (Disable) or restored (Enable).
pub const CLASS_ACCOUNT_CHANGE: u64 = 3001;

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
    let iam = matches!(class_uid, CLASS_AUTHENTICATION | CLASS_ACCOUNT_CHANGE);
    // IAM classes say success or failure in `status` (set below), not as
    // a security control's action.
    let security_control = e.decision.is_some()
        && class_uid != CLASS_APPLICATION_LIFECYCLE
        && class_uid != CLASS_BASE_EVENT
        && !iam;
    let host_profile =
        (e.pid.is_some() || e.agent.is_some()) && class_uid != CLASS_BASE_EVENT && !iam;
    let mut profiles = vec!["datetime"];
    if security_control {
        profiles.push("security_control");
    }
    if host_profile {
        profiles.push("host");
    }
    if e.container_id.is_some() && e.pid.is_some() {
        profiles.push("container");
    }
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
            "profiles": profiles,
        }),
    );
    if let Some(reason) = &e.reason {
        o.insert("message".into(), json!(reason));
    }
    if let Some(d) = e.decision {
        if security_control {
            let (action_id, action, disposition_id, disposition) = action(d);
            o.insert("action_id".into(), json!(action_id));
            o.insert("action".into(), json!(action));
            o.insert("disposition_id".into(), json!(disposition_id));
            o.insert("disposition".into(), json!(disposition));
        }
        let failed = matches!(d, Decision::Deny | Decision::Refuse | Decision::Reject);
        o.insert("status_id".into(), json!(if failed { 2 } else { 1 }));
        o.insert(
            "status".into(),
            json!(if failed { "Failure" } else { "Success" }),
        );
    }
    if host_profile {
        o.insert("actor".into(), actor(e));
        o.insert(
            "device".into(),
            json!({ "hostname": hostname(), "type_id": 1, "type": "Server" }),
        );
    }
    if iam {
        people(e, class_uid, &mut o);
    }
    if matches!(
        class_uid,
        CLASS_NETWORK_ACTIVITY | CLASS_HTTP_ACTIVITY | CLASS_DNS_ACTIVITY
    ) {
        endpoints(e, &mut o);
        let mut info = json!({ "direction_id": 2, "direction": "Outbound" });
        if let Some((name, number)) = transport(e) {
            info["protocol_name"] = json!(name);
            info["protocol_num"] = json!(number);
        }
        o.insert("connection_info".into(), info);
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
        let host = e.host.as_deref().or(e.sni.as_deref()).unwrap_or_default();
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
    if class_uid == CLASS_DNS_ACTIVITY {
        dns(e, &mut o);
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
                "gid": e.gid,
                "tool": e.tool,
                "rule": e.rule,
                "protocol": e.protocol,
                "credential_id": e.credential_id,
                "token_jti": e.token_jti,
                "policy_version": e.policy_version,
                "intent": e.intent,
                "on_behalf_of": e.on_behalf_of,
                "sni": e.sni,
                "traceparent": e.traceparent,
                "actor": e.actor,
                "approval_id": e.approval_id,
                "request_hash": e.request_hash,
                "rpc_method": e.rpc_method,
                "mcp_target": e.mcp_target,
                "relay": e.relay,
                "container_image": e.container_image,
                "rpc_calls": e.rpc_calls.as_deref().and_then(|c| serde_json::from_str::<Value>(c).ok()),
                "seq": record.seq,
                "hash": record.hash,
            }
        }),
    );
    let mut v = Value::Object(o);
    prune_nulls(&mut v);
    v
}

/// The people in an IAM event: who logged in (Authentication's `user`),
/// or which agent was revoked by whom (Account Change's `user` and
/// `actor.user`).
fn people(e: &Event, class_uid: u64, o: &mut Map<String, Value>) {
    let who = json!({ "name": e.actor.clone().unwrap_or_else(|| "unknown".into()) });
    if class_uid == CLASS_AUTHENTICATION {
        o.insert("user".into(), who);
        // What was signed in to (the class wants a service or a
        // destination).
        o.insert("service".into(), json!({ "name": "agentguard web view" }));
        if e.src_ip.is_some() {
            o.insert(
                "src_endpoint".into(),
                json!({ "ip": e.src_ip, "port": e.src_port }),
            );
        }
    } else {
        o.insert(
            "user".into(),
            json!({ "name": e.agent.clone().unwrap_or_default(), "type_id": 99, "type": "agent" }),
        );
        o.insert("actor".into(), json!({ "user": who }));
    }
}

/// Source and destination as far as the event knows them.
fn endpoints(e: &Event, o: &mut Map<String, Value>) {
    if e.src_ip.is_some() {
        o.insert(
            "src_endpoint".into(),
            json!({ "ip": e.src_ip, "port": e.src_port }),
        );
    } else if e.pid.is_some() {
        // The kernel saw the process on this host; no address was bound.
        o.insert("src_endpoint".into(), json!({ "hostname": hostname() }));
    }
    let unix = e.protocol.as_deref() == Some("unix");
    let sockopt = e.protocol.as_deref() == Some("sockopt");
    let dst = if unix {
        // A Unix socket has no address but its path (or abstract name).
        json!({ "name": e.path })
    } else if e.dst_ip.is_some() || e.host.is_some() || e.sni.is_some() {
        json!({
            "ip": e.dst_ip,
            "port": e.dst_port,
            "hostname": e.host.as_deref().or(e.sni.as_deref()),
        })
    } else if sockopt || e.kind == Kind::KernelRefusal {
        // Refused before the socket had any destination.
        json!({ "name": "unconnected" })
    } else if e.kind == Kind::DnsQuery {
        // Agentguard's own resolver, on this host.
        json!({ "hostname": hostname(), "svc_name": "agentguard resolver" })
    } else {
        Value::Null
    };
    if !dst.is_null() {
        o.insert("dst_endpoint".into(), dst);
    }
}

/// The IANA transport protocol (name, number) under the event's protocol.
fn transport(e: &Event) -> Option<(&'static str, u8)> {
    match e.protocol.as_deref()? {
        "tls" | "http" | "tcp" | "dns/tcp" => Some(("tcp", 6)),
        p if p.starts_with("HTTP/") => Some(("tcp", 6)),
        "udp" | "dns/udp" => Some(("udp", 17)),
        "icmp" if e.dst_ip.as_deref().is_some_and(|ip| ip.contains(':')) => Some(("ipv6-icmp", 58)),
        "icmp" => Some(("icmp", 1)),
        // unix, sockopt, raw, other: no transport, or none known.
        _ => None,
    }
}

/// DNS Activity's own: the question, the response code and the answers
/// (as the resolver recorded them: `<rcode> (<answers>)[: detail]`).
fn dns(e: &Event, o: &mut Map<String, Value>) {
    o.insert(
        "query".into(),
        json!({
            "hostname": e.host.clone().unwrap_or_default(),
            "type": e.method,
            "class": "IN",
        }),
    );
    let reason = e.reason.as_deref().unwrap_or_default();
    let (rcode, rest) = reason.split_once(" (").unwrap_or((reason, ""));
    let (rcode_id, caption) = rcode_id(rcode);
    o.insert("rcode_id".into(), json!(rcode_id));
    o.insert("rcode".into(), json!(caption.unwrap_or(rcode)));
    let answers = rest.split_once(')').map_or("", |(a, _)| a);
    if !answers.is_empty() && answers != "no records" {
        let answers: Vec<Value> = answers
            .split(", ")
            .map(|rdata| json!({ "rdata": rdata }))
            .collect();
        o.insert("answers".into(), Value::Array(answers));
    }
}

/// OCSF's `rcode_id` for the response code the resolver recorded (the
/// hickory-proto names), and its OCSF caption.
fn rcode_id(rcode: &str) -> (u64, Option<&'static str>) {
    match rcode {
        "No Error" => (0, Some("NoError")),
        "Form Error" => (1, Some("FormError")),
        "Server Failure" => (2, Some("ServError")),
        "Non-Existent Domain" => (3, Some("NXDomain")),
        "Not Implemented" => (4, Some("NotImp")),
        "Query Refused" => (5, Some("Refused")),
        _ => (99, None),
    }
}

fn hostname() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into())
    })
}

/// OCSF has no null: an absent value is a missing key.
fn prune_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for v in map.values_mut() {
                prune_nulls(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
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
        // 2 Response: the event records agentguard's answer to a query.
        Kind::DnsQuery => (CLASS_DNS_ACTIVITY, 4, 2),
        // 3 Start, 4 Stop.
        Kind::DaemonStart => (CLASS_APPLICATION_LIFECYCLE, 6, 3),
        Kind::DaemonStop => (CLASS_APPLICATION_LIFECYCLE, 6, 4),
        // 1 Logon.
        Kind::Login => (CLASS_AUTHENTICATION, 3, 1),
        // 5 Disable, 2 Enable.
        Kind::Revocation => {
            let revoked = e.decision == Some(Decision::Deny);
            (CLASS_ACCOUNT_CHANGE, 3, if revoked { 5 } else { 2 })
        }
        Kind::PolicyReload
        | Kind::CredentialFailure
        | Kind::Retention
        | Kind::Approval
        | Kind::CaRotation => (CLASS_BASE_EVENT, 0, 99),
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
    // OCSF 1.3's Container object (the `container` profile), under the
    // process it holds. Its `image` requires the image's uid, which the
    // record does not keep: the image's name is under `unmapped`.
    let container = e.container_id.as_ref().map(|id| {
        json!({
            "uid": id,
            "name": e.container_name,
        })
    });
    // OCSF 1.3's process has no group: the gid is under `unmapped`.
    let process = e.pid.map(|pid| {
        json!({
            "pid": pid,
            "name": e.comm,
            "file": e.exe.as_ref().map(|p| json!({ "path": p, "name": exe_name, "type_id": 1 })),
            "user": e.uid.map(|u| json!({ "uid": u.to_string() })),
            "container": container,
        })
    });
    json!({
        "app_name": e.agent,
        "process": process,
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
    if class == Some(CLASS_NETWORK_ACTIVITY) && o.get("dst_endpoint").is_none() {
        missing.push("dst_endpoint");
    }
    if class == Some(CLASS_DNS_ACTIVITY) && o.pointer("/query/hostname").is_none() {
        missing.push("query.hostname");
    }
    if class == Some(CLASS_HTTP_ACTIVITY) && lacks("http_request", "http_response") {
        missing.push("http_request or http_response");
    }
    if class == Some(CLASS_APPLICATION_LIFECYCLE) && o.get("app").is_none() {
        missing.push("app");
    }
    if matches!(class, Some(CLASS_AUTHENTICATION | CLASS_ACCOUNT_CHANGE)) && o.get("user").is_none()
    {
        missing.push("user");
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

    /// A selected container's request: its container is the process's,
    /// under the `container` profile, and the whole object passes the
    /// OCSF schema (the validator the exports test uses: PyPI's
    /// ocsf-json-schema with jsonschema).
    #[test]
    fn a_containers_request_names_it_and_validates() {
        let mut e = Event::new(Kind::Request).with_decision(Decision::Allow, "tool");
        e.method = Some("GET".into());
        e.host = Some("api.example.com".into());
        e.path = Some("/v1/x".into());
        e.status = Some(200);
        e.agent = Some("dev".into());
        e.pid = Some(10);
        e.uid = Some(0);
        e.container_id = Some("87105dbf885f".into());
        e.container_name = Some("dev-agent-1".into());
        e.container_image = Some("localhost/dev-agent:latest".into());
        let o = render(&record(e));
        assert_eq!(o["actor"]["process"]["container"]["uid"], "87105dbf885f");
        assert_eq!(o["actor"]["process"]["container"]["name"], "dev-agent-1");
        assert_eq!(
            o["unmapped"]["agentguard"]["container_image"],
            "localhost/dev-agent:latest"
        );
        assert!(
            o["metadata"]["profiles"]
                .as_array()
                .unwrap()
                .contains(&json!("container"))
        );
        let validator = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/validators/ocsf_validate.py"
        );
        let mut child = std::process::Command::new("python3")
            .arg(validator)
            .arg(OCSF_VERSION)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs (it is part of the machine's setup)");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{o}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
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

    #[test]
    fn the_transport_is_the_iana_protocol_or_nothing() {
        let with = |protocol: &str, dst: Option<&str>| {
            let mut e = Event::new(Kind::KernelRefusal).with_decision(Decision::Refuse, "x");
            e.protocol = Some(protocol.into());
            e.dst_ip = dst.map(Into::into);
            render(&record(e))["connection_info"].clone()
        };
        assert_eq!(with("icmp", Some("127.0.0.1"))["protocol_name"], "icmp");
        assert_eq!(with("icmp", Some("::1"))["protocol_num"], 58);
        assert_eq!(with("tls", None)["protocol_name"], "tcp");
        assert_eq!(with("dns/udp", None)["protocol_num"], 17);
        assert!(with("unix", None).get("protocol_name").is_none());
        assert!(with("raw", None).get("protocol_name").is_none());
    }
}
