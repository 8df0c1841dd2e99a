//! One audit event: what was decided, about whom, under which policy, and
//! what came of it. Every field but `id`, `time` and `kind` is optional, so
//! that one flat shape (one table row, one JSON object) serves connections,
//! HTTP requests, kernel refusals and the daemon's own events alike.
//!
//! The row layout lives here too ([`COLUMNS`], [`Event::to_row`],
//! [`Event::from_row`]): the store, the hash chain and the verifier all read
//! the same list, so they cannot drift apart.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use rusqlite::types::{Value, ValueRef};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The proxy's decision on one accepted connection: intercept,
    /// passthrough or refuse.
    #[default]
    Connection,
    /// One HTTP request read from an intercepted connection.
    Request,
    /// A socket the kernel programs refused (UDP, raw sockets, ...), recorded
    /// with the identity the kernel saw.
    KernelRefusal,
    /// A DNS query to agentguard's resolver: answered (allow) or refused
    /// by policy (deny).
    DnsQuery,
    /// A policy reload was accepted or rejected.
    PolicyReload,
    /// A credential's secret could not be had (file, env, OAuth 2.0 token).
    CredentialFailure,
    DaemonStart,
    DaemonStop,
    /// Events older than the retention period were removed up to a signed
    /// checkpoint, which stays as the chain's anchor.
    Retention,
    /// A tool-side `agentguard verify-proxy` verified (allow) or refused
    /// (deny) a request-bound token.
    TokenVerification,
    /// Someone logged in to the web view (allow) or failed to (deny); the
    /// `actor` is the name they gave.
    Login,
    /// A held request was approved (allow) or denied (deny: by an
    /// approver, by its timeout, or by the agent's revocation).
    Approval,
    /// An agent was revoked (deny) or restored (allow).
    Revocation,
    /// A step of a CA rotation (`agentguard ca rotate`, `activate`,
    /// `cancel`) carried out (accept) or refused (reject).
    CaRotation,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Connection,
        Kind::Request,
        Kind::KernelRefusal,
        Kind::DnsQuery,
        Kind::PolicyReload,
        Kind::CredentialFailure,
        Kind::DaemonStart,
        Kind::DaemonStop,
        Kind::Retention,
        Kind::TokenVerification,
        Kind::Login,
        Kind::Approval,
        Kind::Revocation,
        Kind::CaRotation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connection => "connection",
            Kind::Request => "request",
            Kind::KernelRefusal => "kernel_refusal",
            Kind::DnsQuery => "dns_query",
            Kind::PolicyReload => "policy_reload",
            Kind::CredentialFailure => "credential_failure",
            Kind::DaemonStart => "daemon_start",
            Kind::DaemonStop => "daemon_stop",
            Kind::Retention => "retention",
            Kind::TokenVerification => "token_verification",
            Kind::Login => "login",
            Kind::Approval => "approval",
            Kind::Revocation => "revocation",
            Kind::CaRotation => "ca_rotation",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The decision an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// A request a tool allows.
    Allow,
    /// A request the policy denies (enforce mode), or a socket the kernel
    /// refused by policy.
    Deny,
    /// Denied by the policy but let through: the agent runs in audit mode.
    WouldDeny,
    /// Refused by agentguard itself: malformed, misdirected, unattributable,
    /// credential unavailable, upstream unverifiable.
    Refuse,
    /// A connection whose TLS (or plain HTTP) the proxy reads.
    Intercept,
    /// A connection relayed untouched.
    Passthrough,
    /// A policy reload that took effect.
    Accept,
    /// A policy reload refused; the running policy stayed.
    Reject,
}

impl Decision {
    pub const ALL: [Decision; 8] = [
        Decision::Allow,
        Decision::Deny,
        Decision::WouldDeny,
        Decision::Refuse,
        Decision::Intercept,
        Decision::Passthrough,
        Decision::Accept,
        Decision::Reject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would-deny",
            Decision::Refuse => "refuse",
            Decision::Intercept => "intercept",
            Decision::Passthrough => "passthrough",
            Decision::Accept => "accept",
            Decision::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// One audit event, as emitters build it. The writer gives it its sequence
/// number and chain hashes ([`super::Record`]).
///
/// The caller's identity and the connection's addresses are shared
/// (`Arc<str>`): every request event of a connection starts as a copy of
/// one template ([`Event::like`]), and copying them was an allocation each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// UUIDv7: unique, and sortable by creation time.
    pub id: String,
    /// RFC 3339, UTC, microseconds: when the decision was made (for a
    /// request: when it arrived; its duration runs from there).
    pub time: String,
    pub kind: Kind,
    pub agent: Option<Arc<str>>,
    /// cgroup path relative to the cgroup v2 mount.
    pub cgroup_path: Option<Arc<str>>,
    pub cgroup_id: Option<u64>,
    pub pid: Option<u32>,
    pub exe: Option<Arc<str>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub comm: Option<Arc<str>>,
    /// The principal the agent acts for (a delegated token's subject); none
    /// until agents can present one.
    pub on_behalf_of: Option<String>,
    /// What the agent said it is doing (`x-agentguard-intent`). The agent's
    /// own words: recorded, never trusted for a decision.
    pub intent: Option<String>,
    /// The agent's end of the connection.
    pub src_ip: Option<Arc<str>>,
    pub src_port: Option<u16>,
    /// The original destination the agent dialled.
    pub dst_ip: Option<Arc<str>>,
    pub dst_port: Option<u16>,
    pub sni: Option<Arc<str>>,
    /// Host from `Host`/`:authority`.
    pub host: Option<Arc<str>>,
    /// `tls`, `http`, `tcp`, `udp`, `raw` for connections; `HTTP/1.1` or
    /// `HTTP/2` for requests.
    pub protocol: Option<String>,
    pub method: Option<Arc<str>>,
    /// Normalised path, with the query; a query parameter that carries an
    /// injected credential shows `[redacted]`.
    pub path: Option<String>,
    pub tool: Option<Arc<str>>,
    /// The rule that decided: `tool:<name>`, `default-deny`,
    /// `passthrough:<host>`, or a short code for agentguard's own refusals.
    pub rule: Option<Arc<str>>,
    pub decision: Option<Decision>,
    pub reason: Option<Arc<str>>,
    /// The credential's id, never its value.
    pub credential_id: Option<String>,
    /// The `jti` of a token minted for the call.
    pub token_jti: Option<String>,
    pub policy_version: Option<Arc<str>>,
    /// HTTP status the agent received.
    pub status: Option<u16>,
    /// Body bytes from the agent (request).
    pub bytes_in: Option<u64>,
    /// Body bytes to the agent (response).
    pub bytes_out: Option<u64>,
    pub duration_us: Option<u64>,
    /// The request's W3C `traceparent` (only a well-formed one), so that an
    /// agent's traces join agentguard's decisions. An extension column:
    /// stores written before it existed read it as `None`.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// Who acted, for what people do: the web view's user (a login, an
    /// approval, a revocation) or the admin socket's caller; on a request
    /// that was held, its approver.
    #[serde(default)]
    pub actor: Option<String>,
    /// The id of the approval a request waited for (its request event and
    /// its approval event share it).
    #[serde(default)]
    pub approval_id: Option<String>,
    /// The hash of the exact request an approval is bound to (method, URL,
    /// body: the `rh` of request-bound tokens).
    #[serde(default)]
    pub request_hash: Option<String>,
    /// The JSON-RPC method of the request's body (`tools/call`, ...); for a
    /// batch, its members' methods in order, joined by `,`. Extension.
    #[serde(default)]
    pub rpc_method: Option<String>,
    /// The MCP tool, prompt or resource URI the call names (a batch's,
    /// joined by `,`). Extension.
    #[serde(default)]
    pub mcp_target: Option<String>,
    /// Each JSON-RPC message of the body as decided, a JSON array of
    /// [`super::RpcCall`]: the arguments only where the policy records
    /// them, else their SHA-256. Extension.
    #[serde(default)]
    pub rpc_calls: Option<String>,
    /// How a passthrough connection's bytes went: `kernel` (the two
    /// sockets spliced by the kernel) or `userspace` (copied by the
    /// proxy). Extension.
    #[serde(default)]
    pub relay: Option<String>,
    /// The container the process runs in, when a policy selected it by
    /// container (`[agent.containers]`): the runtime's full id. Extension.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The container's name, as its runtime knows it. Extension.
    #[serde(default)]
    pub container_name: Option<String>,
    /// The image the container was created from (its name, as given to
    /// the runtime). Extension.
    #[serde(default)]
    pub container_image: Option<String>,
}

impl Event {
    /// A fresh event of `kind`, stamped now.
    pub fn new(kind: Kind) -> Self {
        let now = SystemTime::now();
        Self {
            id: uuid_v7(now),
            time: format_time(now),
            kind,
            ..Self::default()
        }
    }

    /// A fresh event (new id, stamped now) with every other field as in
    /// `template`: for the events of one connection, which share the
    /// caller's identity and addresses.
    pub fn like(template: &Event) -> Self {
        let now = SystemTime::now();
        Self {
            id: uuid_v7(now),
            time: format_time(now),
            ..template.clone()
        }
    }

    pub fn with_src(mut self, addr: SocketAddr) -> Self {
        self.src_ip = Some(addr.ip().to_canonical().to_string().into());
        self.src_port = Some(addr.port());
        self
    }

    pub fn with_dst(mut self, addr: SocketAddr) -> Self {
        self.dst_ip = Some(addr.ip().to_canonical().to_string().into());
        self.dst_port = Some(addr.port());
        self
    }

    pub fn with_decision(mut self, decision: Decision, reason: impl Into<Arc<str>>) -> Self {
        self.decision = Some(decision);
        self.reason = Some(reason.into());
        self
    }
}

/// RFC 3339 in UTC with exactly six fractional digits: fixed width, so that
/// comparing the text compares the times (the store's time filters rely on
/// it).
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// A UUIDv7 (RFC 9562 §5.7): 48 bits of Unix milliseconds, then random bits.
fn uuid_v7(now: SystemTime) -> String {
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut b = [0u8; 16];
    random_bytes(&mut b[6..]);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    // Into buffers, not hex::encode and pushes: that collects a String
    // char by char (measured: 1.5k instructions an id, one id a request).
    let mut h = [0u8; 32];
    hex::encode_to_slice(b, &mut h).expect("32 hex digits for 16 bytes");
    let mut id = [b'-'; 36];
    id[0..8].copy_from_slice(&h[0..8]);
    id[9..13].copy_from_slice(&h[8..12]);
    id[14..18].copy_from_slice(&h[12..16]);
    id[19..23].copy_from_slice(&h[16..20]);
    id[24..36].copy_from_slice(&h[20..32]);
    String::from_utf8(id.to_vec()).expect("hex digits and dashes are ASCII")
}

/// Random bytes for an id. A failing system RNG leaves them zero: ids then
/// stay unique only by their millisecond, but the sequence number, not the
/// id, is what the chain orders and checks, and an event is never lost for
/// want of an id.
fn random_bytes(out: &mut [u8]) {
    if crate::random::fill(out).is_err() {
        out.fill(0);
    }
}

/// A field's conversion to and from an SQLite value.
trait Column: Sized {
    /// The value borrowed from the field: what the writer hashes and binds
    /// (no copy of the text per row).
    fn to_ref(&self) -> ValueRef<'_>;
    fn to_value(&self) -> Value {
        self.to_ref().into()
    }
    fn from_value(v: Value) -> Result<Self, String>;
}

impl Column for String {
    fn to_ref(&self) -> ValueRef<'_> {
        ValueRef::Text(self.as_bytes())
    }
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl Column for Kind {
    fn to_ref(&self) -> ValueRef<'_> {
        ValueRef::Text(self.as_str().as_bytes())
    }
    fn from_value(v: Value) -> Result<Self, String> {
        let s = String::from_value(v)?;
        Kind::parse(&s).ok_or_else(|| format!("unknown kind {s:?}"))
    }
}

impl Column for Option<Decision> {
    fn to_ref(&self) -> ValueRef<'_> {
        self.map_or(ValueRef::Null, |d| ValueRef::Text(d.as_str().as_bytes()))
    }
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => {
                let s = String::from_value(v)?;
                Decision::parse(&s)
                    .map(Some)
                    .ok_or_else(|| format!("unknown decision {s:?}"))
            }
        }
    }
}

impl Column for Option<String> {
    fn to_ref(&self) -> ValueRef<'_> {
        self.as_ref()
            .map_or(ValueRef::Null, |s| ValueRef::Text(s.as_bytes()))
    }
    fn from_value(v: Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => String::from_value(v).map(Some),
        }
    }
}

impl Column for Option<Arc<str>> {
    fn to_ref(&self) -> ValueRef<'_> {
        self.as_ref()
            .map_or(ValueRef::Null, |s| ValueRef::Text(s.as_bytes()))
    }
    fn from_value(v: Value) -> Result<Self, String> {
        Ok(Option::<String>::from_value(v)?.map(Arc::from))
    }
}

macro_rules! integer_column {
    ($($t:ty),*) => {$(
        impl Column for Option<$t> {
            fn to_ref(&self) -> ValueRef<'_> {
                self.map_or(ValueRef::Null, |n| ValueRef::Integer(n as i64))
            }
            fn from_value(v: Value) -> Result<Self, String> {
                match v {
                    Value::Null => Ok(None),
                    Value::Integer(n) => <$t>::try_from(n)
                        .map(Some)
                        .map_err(|_| format!("integer {n} out of range")),
                    other => Err(format!("expected an integer, found {other:?}")),
                }
            }
        }
    )*};
}
integer_column!(u16, u32, u64);

/// Declares the column lists once; `to_row` and `from_row` follow them.
macro_rules! columns {
    (base: [$($field:ident),* $(,)?], extension: [$($ext:ident),* $(,)?] $(,)?) => {
        /// Every event column, in the order rows are stored and hashed: the
        /// [`BASE_COLUMNS`] first, then the extension columns.
        pub const COLUMNS: &[&str] = &[$(stringify!($field),)* $(stringify!($ext)),*];

        /// How many of [`COLUMNS`] are the chain's base columns, hashed in
        /// every row whatever their value. Columns added later are
        /// extensions: hashed only where not NULL, tagged with their name
        /// (see [`super::chain`]), so that every row written before a
        /// column existed hashes exactly as it did. Never insert a column
        /// among the base ones: append an extension.
        pub const BASE_COLUMNS: usize = [$(stringify!($field)),*].len();

        /// `COLUMNS.len()`, as the length of [`Event::row_refs`].
        pub const COLUMN_COUNT: usize = COLUMNS.len();

        impl Event {
            pub fn to_row(&self) -> Vec<Value> {
                vec![$(self.$field.to_value(),)* $(self.$ext.to_value()),*]
            }

            /// The row borrowed from the event, in [`COLUMNS`] order: what
            /// the writer hashes and inserts, without copying a field.
            pub fn row_refs(&self) -> [ValueRef<'_>; COLUMN_COUNT] {
                [$(self.$field.to_ref(),)* $(self.$ext.to_ref()),*]
            }

            /// Rebuilds an event from a row in [`COLUMNS`] order.
            pub fn from_row(row: Vec<Value>) -> Result<Self, String> {
                if row.len() != COLUMNS.len() {
                    return Err(format!("expected {} columns, found {}", COLUMNS.len(), row.len()));
                }
                let mut values = row.into_iter();
                Ok(Self {
                    $($field: Column::from_value(values.next().unwrap_or(Value::Null))
                        .map_err(|e| format!("column {}: {e}", stringify!($field)))?,)*
                    $($ext: Column::from_value(values.next().unwrap_or(Value::Null))
                        .map_err(|e| format!("column {}: {e}", stringify!($ext)))?,)*
                })
            }
        }
    };
}

columns!(
    // The chain's first version: never reorder, never add here.
    base: [
        id,
        time,
        kind,
        agent,
        cgroup_path,
        cgroup_id,
        pid,
        exe,
        uid,
        gid,
        comm,
        on_behalf_of,
        intent,
        src_ip,
        src_port,
        dst_ip,
        dst_port,
        sni,
        host,
        protocol,
        method,
        path,
        tool,
        rule,
        decision,
        reason,
        credential_id,
        token_jti,
        policy_version,
        status,
        bytes_in,
        bytes_out,
        duration_us,
    ],
    // Appended since; each must be optional (NULL in older rows).
    extension: [
        traceparent,
        actor,
        approval_id,
        request_hash,
        rpc_method,
        mcp_target,
        rpc_calls,
        relay,
        container_id,
        container_name,
        container_image,
    ],
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7_and_distinct() {
        let now = SystemTime::now();
        let ids: Vec<String> = (0..1000).map(|_| uuid_v7(now)).collect();
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('7'), "version 7: {id}");
            assert!(
                matches!(&parts[3][..1], "8" | "9" | "a" | "b"),
                "variant: {id}"
            );
        }
        // Same millisecond, different random bits, across refills of the
        // per-thread pool (1000 ids × 10 bytes > one batch).
        let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert_eq!(&ids[0][..8], &format!("{:012x}", ms)[..8]);
    }

    #[test]
    fn rows_round_trip() {
        let mut e = Event::new(Kind::Request).with_decision(Decision::WouldDeny, "no tool");
        e.agent = Some("bot".into());
        e.pid = Some(42);
        e.dst_port = Some(443);
        e.bytes_out = Some(u64::from(u32::MAX) + 1);
        let back = Event::from_row(e.to_row()).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.to_row().len(), COLUMNS.len());
        // The borrowed row is the same row.
        let owned: Vec<Value> = e.row_refs().into_iter().map(Value::from).collect();
        assert_eq!(owned, e.to_row());
    }

    #[test]
    fn bad_rows_are_refused() {
        let mut row = Event::new(Kind::Connection).to_row();
        row[2] = Value::Text("nonsense".into());
        assert!(Event::from_row(row).unwrap_err().contains("kind"));
        assert!(Event::from_row(vec![]).is_err());
    }

    #[test]
    fn events_like_a_template_are_new_events_with_its_fields() {
        let mut template = Event {
            kind: Kind::Request,
            ..Event::default()
        };
        template.agent = Some("bot".into());
        template.src_port = Some(4242);
        let a = Event::like(&template);
        let b = Event::like(&template);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 36);
        assert_eq!(a.time.len(), 27, "{}", a.time);
        assert_eq!(
            Event {
                id: String::new(),
                time: String::new(),
                ..a
            },
            template
        );
    }

    #[test]
    fn ids_are_v7_and_times_fixed_width() {
        let e = Event::new(Kind::DaemonStart);
        assert_eq!(e.id.len(), 36);
        assert_eq!(&e.id[14..15], "7");
        assert_ne!(e.id, Event::new(Kind::DaemonStart).id);
        // 2026-01-01T00:00:00.000000Z
        assert_eq!(e.time.len(), 27, "{}", e.time);
        assert!(e.time.ends_with('Z'));
    }

    #[test]
    fn names_parse_back() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        for d in Decision::ALL {
            assert_eq!(Decision::parse(d.as_str()), Some(d));
        }
        assert_eq!(
            serde_json::to_string(&Decision::WouldDeny).unwrap(),
            "\"would-deny\""
        );
    }
}
