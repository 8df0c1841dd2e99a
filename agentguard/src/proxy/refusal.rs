//! agentguard's own refusals, as types: each one knows its HTTP status, its
//! rule code (the `rule` of the audit record and of the agent's error body)
//! and its reason (its `Display`). The table of what is refused, and how, is
//! here; how a refusal is written for the agent is [`super::respond`], and
//! the one place that turns a request's refusal into a response and its
//! record is `Outcome::refuse` (`http/record.rs`).
//!
//! Call sites build a variant and nothing else, so a new status (a `429`
//! with `Retry-After` is one variant and one arm in [`super::respond`]) or a
//! new rendering (a JSON-RPC error for MCP tool calls, chosen per request
//! by [`super::respond::Render`]) changes no call site.

use std::net::IpAddr;

use hyper::StatusCode;
use thiserror::Error;

use super::sniff::SniffError;
use crate::{audit::Decision, credentials::CredentialError, identity::IdentityError};

/// Why agentguard answers a request itself instead of forwarding it.
#[derive(Debug, Error)]
pub enum Refusal {
    /// No usable Host/`:authority`, or a request target that cannot be
    /// rebuilt for the upstream.
    #[error("{0}")]
    BadRequest(String),
    #[error("failed to read the request body: {0}")]
    BodyUnreadable(#[source] hyper::Error),
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
    /// The policy denies the request (enforce mode).
    #[error("{reason}")]
    Denied { reason: String },
    /// After a 101 nothing more is decided: only WebSocket is relayed.
    #[error("only WebSocket upgrades are relayed")]
    UpgradeRefused,
    #[error("tool {tool:?} binds credential {credential:?}, which is only sent over TLS")]
    CredentialOverPlainHttp { tool: String, credential: String },
    #[error("credential {id:?} is unavailable: {source}")]
    CredentialUnavailable {
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
    /// The upstream's certificate did not verify for the host: nothing was
    /// sent.
    #[error("{0}")]
    UpstreamUnverified(String),
    #[error("{0}")]
    UpstreamFailed(String),
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
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) | Refusal::BodyUnreadable(_) | Refusal::Path(_) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::UnknownAgent(_)
            | Refusal::Denied { .. }
            | Refusal::UpgradeRefused
            | Refusal::CredentialOverPlainHttp { .. }
            | Refusal::Placeholder { .. } => StatusCode::FORBIDDEN,
            Refusal::CredentialUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::CredentialInjection { .. }
            | Refusal::TokenInjection(_)
            | Refusal::TokenMint(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::JwtBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UpstreamUnverified(_) | Refusal::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Seconds after which trying again may succeed, for `Retry-After`.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Refusal::TooManyRequests { .. } | Refusal::Overloaded(_) => Some(1),
            _ => None,
        }
    }

    /// The short code the audit record and the error body carry.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) | Refusal::BodyUnreadable(_) => "bad-request",
            Refusal::Path(_) => "path-refused",
            Refusal::Misdirected(_) => "misdirected",
            Refusal::UnknownAgent(_) => "unknown-agent",
            Refusal::Denied { .. } => "default-deny",
            Refusal::UpgradeRefused => "upgrade-refused",
            Refusal::CredentialOverPlainHttp { .. } => "credential-over-plain-http",
            Refusal::CredentialUnavailable { .. } => "credential-unavailable",
            Refusal::CredentialInjection { .. } | Refusal::TokenInjection(_) => {
                "credential-injection"
            }
            Refusal::TokenMint(_) => "token-mint",
            Refusal::Placeholder { .. } => "placeholder",
            Refusal::JwtBodyTooLarge { .. } => "jwt-body-too-large",
            Refusal::UpstreamUnverified(_) => "upstream-unverified",
            Refusal::UpstreamFailed(_) => "upstream-failed",
            Refusal::UpstreamTimeout(_) => "upstream-timeout",
            Refusal::TooManyRequests { .. } => "agent-request-limit",
            Refusal::Overloaded(_) => "overloaded",
            Refusal::BodyTimeout(_) => "body-timeout",
        }
    }

    /// A policy's denial is `deny`; everything agentguard refuses on its
    /// own account (malformed, misdirected, unverifiable) is `refuse`.
    pub fn decision(&self) -> Decision {
        match self {
            Refusal::Denied { .. } => Decision::Deny,
            _ => Decision::Refuse,
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
}

impl ConnRefusal {
    /// The short code the audit record carries.
    pub fn rule(&self) -> &'static str {
        match self {
            ConnRefusal::NoKernelRecord => "no-kernel-record",
            ConnRefusal::UnknownCgroup(_) => "unknown-cgroup",
            ConnRefusal::ProxyLoop => "proxy-loop",
            ConnRefusal::Sniff(_) => "sniff-failed",
            ConnRefusal::NoSni
            | ConnRefusal::MalformedTls(_)
            | ConnRefusal::UnknownProtocol
            | ConnRefusal::PassthroughUnresolved { .. } => "protocol",
            ConnRefusal::AgentConnections { .. } => "agent-connection-limit",
            ConnRefusal::Descriptors { .. } => "descriptor-budget",
        }
    }
}
