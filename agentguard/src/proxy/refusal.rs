//! agentguard's own refusals, as types: each one knows its HTTP status, its
//! rule code (the `rule` of the audit record and of the agent's error body)
//! and its reason (its `Display`). The table of what is refused, and how, is
//! here; how a refusal is written for the agent is [`super::respond`], and
//! the one place that turns a request's refusal into a response and its
//! record is `Outcome::refuse` (`http/record.rs`).
//!
//! Call sites build a variant and nothing else: the status (`429` with
//! `Retry-After` over a rate) and the rendering (a JSON body, or JSON-RPC
//! errors with the request's ids for MCP and JSON-RPC calls, chosen per
//! request by [`super::respond::Render`]) follow from it.

use std::net::IpAddr;

use hyper::StatusCode;
use thiserror::Error;

use super::sniff::SniffError;
use crate::{
    audit::Decision,
    credentials::CredentialError,
    identity::IdentityError,
    mcp::{self, HeaderMismatch, McpError},
};

/// JSON-RPC 2.0 §5.1 "Internal error".
const INTERNAL_ERROR: i64 = -32603;

/// Why agentguard answers a request itself instead of forwarding it.
#[derive(Debug, Error)]
pub enum Refusal {
    /// No usable Host/`:authority`, or a request target that cannot be
    /// rebuilt for the upstream.
    #[error("{0}")]
    BadRequest(String),
    /// The agent's request body is malformed (a bad chunked encoding) or
    /// ended early: the agent's fault, whatever the upstream had begun.
    #[error("the request body could not be read: {0}")]
    BodyUnreadable(String),
    /// The path does not normalise (encoded `/`, control characters, ...).
    #[error("request path refused: {0}")]
    Path(String),
    /// SNI, Host and port disagree, or plain HTTP goes to an address the
    /// host was not resolved to.
    #[error("{0}")]
    Misdirected(String),
    /// The policy was reloaded without the agent since the connection was
    /// attributed.
    #[error("agent {0:?} is no longer in the policy")]
    UnknownAgent(String),
    /// The policy denies the request or call (enforce mode); `rule` is the
    /// kind of denial (`default-deny`, `call-not-allowed`, `condition`, ...).
    #[error("{reason}")]
    Denied { rule: &'static str, reason: String },
    /// Over a tool's rate (or the limiter is full): try again in
    /// `retry_after_secs`.
    #[error("{reason}")]
    RateLimited {
        rule: &'static str,
        reason: String,
        retry_after_secs: u64,
    },
    /// A body the policy reads to decide is longer than the bound: refused,
    /// never forwarded unchecked.
    #[error(
        "request body is larger than {max} bytes, the most read to decide this call (max_body); refused rather than forwarded unchecked"
    )]
    BodyTooLarge { max: usize },
    /// A JSON-RPC endpoint's POST must carry JSON.
    #[error("a JSON-RPC request must have a JSON content type (application/json)")]
    NotJson,
    /// A JSON body a condition reads is not JSON agentguard accepts.
    #[error("request body: {0}")]
    BodyJson(String),
    /// A JSON-RPC body agentguard cannot read (parse error, invalid
    /// request).
    #[error("{0}")]
    JsonRpc(#[source] McpError),
    /// The MCP headers disagree with the body (SEP-2243).
    #[error("{0}")]
    HeaderMismatch(#[source] HeaderMismatch),
    /// The upstream's list response could not be filtered: it is not passed
    /// on unfiltered.
    #[error("the upstream's list response could not be filtered: {0}")]
    ListUnfiltered(String),
    /// After a 101 nothing more is decided: only WebSocket is relayed.
    #[error("only WebSocket upgrades are relayed")]
    UpgradeRefused,
    /// `_method` in the query of a tool that binds a credential: a server
    /// that honours it runs another method than the policy allowed.
    #[error(
        "the _method query parameter is refused on tool {tool:?}, which binds a credential (allow it with allow_overrides = [\"_method\"])"
    )]
    MethodOverride { tool: String },
    #[error("tool {tool:?} binds credential {credential:?}, which is only sent over TLS")]
    CredentialOverPlainHttp { tool: String, credential: String },
    #[error("credential {id:?} is unavailable: {source}")]
    CredentialUnavailable {
        id: String,
        source: Box<CredentialError>,
    },
    /// A delegated token, a credential helper's secret or AWS credentials
    /// could not be had from what serves them (token endpoint, helper,
    /// STS): the request is not sent with anything else instead.
    #[error("credential {id:?} could not be fetched: {source}")]
    CredentialFetch {
        id: String,
        source: Box<CredentialError>,
    },
    #[error("could not inject credential {id:?}: {source}")]
    CredentialInjection {
        id: String,
        source: Box<CredentialError>,
    },
    #[error("could not inject the token: {0}")]
    TokenInjection(#[source] Box<CredentialError>),
    #[error("{0}")]
    TokenMint(String),
    /// A placeholder the policy does not bind to this request must not
    /// leave the machine.
    #[error(
        "placeholder for credential {id:?} in {location} is not bound to this request by the policy"
    )]
    Placeholder { id: String, location: String },
    #[error(
        "request body is larger than {max} bytes: a JWT-bound tool's body is hashed into its token, and is refused rather than sent unbound"
    )]
    JwtBodyTooLarge { max: usize },
    /// An AWS request agentguard does not re-sign (presigned URLs, SigV4a,
    /// streaming signed payloads, bodies past the bound), with the reason.
    #[error("AWS request refused: {0}")]
    AwsRefused(String),
    /// The upstream's certificate did not verify for the host: nothing was
    /// sent.
    #[error("{0}")]
    UpstreamUnverified(String),
    #[error("{0}")]
    UpstreamFailed(String),
    /// An operator revoked the agent (`agentguard revoke`, the web view).
    #[error("agent {agent:?} is revoked: {reason}")]
    Revoked { agent: String, reason: String },
    /// The request waited for approval and an approver said no.
    #[error("request {id} was denied by {by}: {reason}")]
    ApprovalDenied {
        id: String,
        by: String,
        reason: String,
    },
    #[error("request {id} was not approved within {}s", after.as_secs())]
    ApprovalTimedOut {
        id: String,
        after: std::time::Duration,
    },
    /// The agent closed its connection while its request waited for
    /// approval: nobody waits for the answer, so nothing is forwarded.
    #[error(
        "request {id} was withdrawn: the agent closed its connection while it waited for approval"
    )]
    ApprovalWithdrawn { id: String },
    /// The request waited for the audit store to commit again, and its
    /// agent closed its connection meanwhile.
    #[error(
        "the agent closed its connection while its request waited for the audit store: not forwarded"
    )]
    AgentLeft,
    /// The queue of held requests is full (per agent, or in total).
    #[error("{0}")]
    ApprovalQueueFull(#[source] crate::approvals::ApprovalError),
    #[error(
        "request body is larger than {max} bytes: a request that needs approval is read whole, to show it and bind the approval to it"
    )]
    ApprovalBodyTooLarge { max: usize },
    /// The upstream's TLS handshake or response head did not come in time.
    #[error("{0}")]
    UpstreamTimeout(String),
    /// The agent has as many requests in flight as it may.
    #[error(
        "agent has {max} requests in flight, as many as it may (agent.limits.requests or --agent-max-requests); retry when one ends"
    )]
    TooManyRequests { max: u32 },
    /// The proxy holds every socket its descriptor budget allows.
    #[error("{0}")]
    Overloaded(String),
    /// A body the proxy reads whole (to hash it into a token) did not
    /// arrive in time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The upstream's reply is coded so that secrets in it could not be
    /// found (compressed although identity was asked for, a WebSocket
    /// extension): not relayed.
    #[error("{0}")]
    UpstreamUnredactable(String),
}

/// 499, nginx's code for a request whose client closed the connection
/// before the answer: what the record of a withdrawn request says (no one
/// receives it).
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_)
            | Refusal::BodyUnreadable(_)
            | Refusal::Path(_)
            | Refusal::BodyJson(_)
            | Refusal::JsonRpc(_)
            | Refusal::HeaderMismatch(_)
            | Refusal::AwsRefused(_) => StatusCode::BAD_REQUEST,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::ListUnfiltered(_) => StatusCode::BAD_GATEWAY,
            Refusal::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::UnknownAgent(_)
            | Refusal::Denied { .. }
            | Refusal::UpgradeRefused
            | Refusal::MethodOverride { .. }
            | Refusal::CredentialOverPlainHttp { .. }
            | Refusal::Placeholder { .. }
            | Refusal::Revoked { .. }
            | Refusal::ApprovalDenied { .. }
            | Refusal::ApprovalTimedOut { .. } => StatusCode::FORBIDDEN,
            Refusal::ApprovalQueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::ApprovalWithdrawn { .. } | Refusal::AgentLeft => client_closed_request(),
            Refusal::CredentialUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::CredentialFetch { .. } => StatusCode::BAD_GATEWAY,
            Refusal::CredentialInjection { .. }
            | Refusal::TokenInjection(_)
            | Refusal::TokenMint(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::JwtBodyTooLarge { .. } | Refusal::ApprovalBodyTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Refusal::UpstreamUnverified(_)
            | Refusal::UpstreamFailed(_)
            | Refusal::UpstreamUnredactable(_) => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The short code the audit record and the error body carry.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad-request",
            Refusal::BodyUnreadable(_) => "bad-request-body",
            Refusal::Path(_) => "path-refused",
            Refusal::Misdirected(_) => "misdirected",
            Refusal::UnknownAgent(_) => "unknown-agent",
            Refusal::Denied { rule, .. } | Refusal::RateLimited { rule, .. } => rule,
            Refusal::BodyTooLarge { .. } => "body-too-large",
            Refusal::NotJson => "not-json",
            Refusal::BodyJson(_) => "bad-request",
            Refusal::JsonRpc(_) => "json-rpc-invalid",
            Refusal::HeaderMismatch(_) => "mcp-header-mismatch",
            Refusal::ListUnfiltered(_) => "list-unfilterable",
            Refusal::UpgradeRefused => "upgrade-refused",
            Refusal::MethodOverride { .. } => "method-override",
            Refusal::CredentialOverPlainHttp { .. } => "credential-over-plain-http",
            Refusal::CredentialUnavailable { .. } => "credential-unavailable",
            Refusal::CredentialFetch { .. } => "credential-fetch-failed",
            Refusal::CredentialInjection { .. } | Refusal::TokenInjection(_) => {
                "credential-injection"
            }
            Refusal::TokenMint(_) => "token-mint",
            Refusal::Placeholder { .. } => "placeholder",
            Refusal::AwsRefused(_) => "aws-request-refused",
            Refusal::JwtBodyTooLarge { .. } => "jwt-body-too-large",
            Refusal::UpstreamUnverified(_) => "upstream-unverified",
            Refusal::UpstreamFailed(_) => "upstream-failed",
            Refusal::Revoked { .. } => "agent-revoked",
            Refusal::ApprovalDenied { .. } => "approval-denied",
            Refusal::ApprovalTimedOut { .. } => "approval-timeout",
            Refusal::ApprovalQueueFull(_) => "approval-queue-full",
            Refusal::ApprovalWithdrawn { .. } => "approval-withdrawn",
            Refusal::AgentLeft => "agent-left",
            Refusal::ApprovalBodyTooLarge { .. } => "approval-body-too-large",
            Refusal::UpstreamUnredactable(_) => "upstream-unredactable",
            Refusal::UpstreamTimeout(_) => "upstream-timeout",
            Refusal::TooManyRequests { .. } => "agent-request-limit",
            Refusal::Overloaded(_) => "overloaded",
            Refusal::BodyTimeout(_) => "body-timeout",
        }
    }

    /// A credential that could not be had: 502 where what serves it
    /// (token endpoint, helper, STS) failed, else 503.
    pub fn credential_failed(id: String, source: CredentialError) -> Self {
        match source {
            CredentialError::Exchange { .. }
            | CredentialError::Process { .. }
            | CredentialError::Aws { .. } => Refusal::CredentialFetch {
                id,
                source: Box::new(source),
            },
            _ => Refusal::CredentialUnavailable {
                id,
                source: Box::new(source),
            },
        }
    }

    /// A policy's denial, and a person's (an approver's no, an unanswered
    /// approval, a revocation), is `deny`; everything agentguard refuses on
    /// its own account (malformed, misdirected, unverifiable) is `refuse`.
    pub fn decision(&self) -> Decision {
        match self {
            Refusal::Denied { .. }
            | Refusal::RateLimited { .. }
            | Refusal::Revoked { .. }
            | Refusal::ApprovalDenied { .. }
            | Refusal::ApprovalTimedOut { .. } => Decision::Deny,
            _ => Decision::Refuse,
        }
    }

    /// The seconds a client should wait before trying again (`Retry-After`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            // A slot frees when one of the agent's requests (or anyone's
            // socket) ends: soon, so a second is enough.
            Refusal::TooManyRequests { .. } | Refusal::Overloaded(_) => Some(1),
            _ => None,
        }
    }

    /// Whether this refusal is the call's answer (the policy or an approver
    /// said no) rather than a failure on the way: a JSON-RPC client gets
    /// it as the call's error in an HTTP 200, the way the tool itself would
    /// refuse, so its SDK does not take it for a broken transport.
    pub fn answers_the_call(&self) -> bool {
        matches!(
            self,
            Refusal::Denied { .. }
                | Refusal::ApprovalDenied { .. }
                | Refusal::ApprovalTimedOut { .. }
        )
    }

    /// The JSON-RPC error code of this refusal, for MCP and JSON-RPC
    /// clients.
    pub fn json_rpc_code(&self) -> i64 {
        match self {
            _ if self.answers_the_call() => mcp::POLICY_DENIED,
            Refusal::RateLimited { .. } => mcp::RATE_LIMITED,
            Refusal::HeaderMismatch(_) => mcp::HEADER_MISMATCH,
            Refusal::JsonRpc(e) => e.code(),
            Refusal::BodyJson(_) => mcp::PARSE_ERROR,
            Refusal::BodyTooLarge { .. } | Refusal::NotJson | Refusal::BadRequest(_) => {
                mcp::INVALID_REQUEST
            }
            // agentguard's own failures (credential, upstream, ...): the
            // JSON-RPC "Internal error".
            _ => INTERNAL_ERROR,
        }
    }

    /// A denial of one call, from the policy's decision.
    pub fn from_denied(denied: crate::policy::Denied) -> Refusal {
        use crate::policy::DenyRule;
        match denied.rule {
            DenyRule::RateLimited { retry_after_secs } => Refusal::RateLimited {
                rule: denied.rule.as_str(),
                reason: denied.reason,
                retry_after_secs,
            },
            // Full of live counts: a moment later there is room.
            DenyRule::RateLimiterFull => Refusal::RateLimited {
                rule: denied.rule.as_str(),
                reason: denied.reason,
                retry_after_secs: 1,
            },
            rule => Refusal::Denied {
                rule: rule.as_str(),
                reason: denied.reason,
            },
        }
    }
}

/// Why agentguard closes a connection before (or instead of) reading a
/// request from it. Nothing is sent upstream and nothing is answered: the
/// agent sees the connection close.
#[derive(Debug, Error)]
pub enum ConnRefusal {
    /// A connection we cannot attribute is one we cannot decide on.
    #[error("no kernel record for this connection (not from a guarded cgroup, or already closed)")]
    NoKernelRecord,
    /// The connection's record waited longer than the proxy may take to
    /// accept it, and was forgotten (`crate::daemon`'s record expiry):
    /// refused now in the audit record, as it is if it is still accepted.
    #[error(
        "not accepted by the proxy within --kernel-record-max-wait ({}s): its kernel record was forgotten, and the connection is refused should it still be accepted",
        .max_wait.as_secs()
    )]
    RecordExpired { max_wait: std::time::Duration },
    #[error("{0}")]
    UnknownCgroup(#[source] IdentityError),
    /// The record points at the proxy's own port: relaying would make the
    /// proxy dial itself.
    #[error("original destination is the proxy itself")]
    ProxyLoop,
    #[error("{0}")]
    Sniff(#[source] SniffError),
    /// Without SNI there is no name to verify the upstream against, nor to
    /// bind a policy to.
    #[error("TLS ClientHello without SNI (server name): cannot tell which host the agent wants")]
    NoSni,
    #[error("malformed TLS ClientHello: {0}")]
    MalformedTls(String),
    #[error("unknown protocol (neither TLS nor HTTP); not relayed")]
    UnknownProtocol,
    /// A passthrough host is named only by the agent's SNI: relayed only to
    /// an address agentguard's resolver gave this agent for that name.
    #[error(
        "passthrough host {sni} was not resolved to {ip} by agentguard's resolver for this agent"
    )]
    PassthroughUnresolved { sni: String, ip: IpAddr },
    /// An operator revoked the agent: its connections are closed unread.
    #[error("agent {agent:?} is revoked: {reason}")]
    Revoked { agent: String, reason: String },
    /// The agent holds as many connections as it may.
    #[error(
        "agent {agent:?} holds {max} connections, as many as it may (agent.limits.connections or --agent-max-connections)"
    )]
    AgentConnections { agent: String, max: u32 },
    /// The proxy holds every socket its budget allows; the rest of the
    /// descriptors are kept for the daemon's own work.
    #[error(
        "the proxy holds all {budget} sockets its descriptor budget allows (limit minus --fd-reserve)"
    )]
    Descriptors { budget: usize },
    /// The kernel refused a connection on passthrough's direct way.
    #[error("direct way to {name}: {why}")]
    Direct {
        /// The passthrough name the address was resolved for.
        name: String,
        why: super::direct::KernelRefusal,
    },
}

impl ConnRefusal {
    /// The short code the audit record carries.
    pub fn rule(&self) -> &'static str {
        match self {
            ConnRefusal::NoKernelRecord => "no-kernel-record",
            ConnRefusal::RecordExpired { .. } => "kernel-record-expired",
            ConnRefusal::UnknownCgroup(_) => "unknown-cgroup",
            ConnRefusal::ProxyLoop => "proxy-loop",
            ConnRefusal::Sniff(_) => "sniff-failed",
            ConnRefusal::NoSni
            | ConnRefusal::MalformedTls(_)
            | ConnRefusal::UnknownProtocol
            | ConnRefusal::PassthroughUnresolved { .. } => "protocol",
            ConnRefusal::Revoked { .. } => "agent-revoked",
            ConnRefusal::AgentConnections { .. } => "agent-connection-limit",
            ConnRefusal::Descriptors { .. } => "descriptor-budget",
            ConnRefusal::Direct { why, .. } => why.rule(),
        }
    }
}
