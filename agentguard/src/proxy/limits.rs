//! How much of the daemon one agent may hold, and for how long.
//!
//! Descriptors are the daemon's scarcest resource: an agent that opens
//! connections and never sends a request used to keep each one for ever,
//! and at the daemon's descriptor limit every other agent and the
//! operator's own `agentguard status` failed. Three things stop that:
//!
//! - time limits on every wait for the agent ([`LimitOptions::client_timeout`]:
//!   the first request, the next one, a request head, a hashed body), for
//!   the upstream (TLS handshake, response head, idle body), and on a
//!   passthrough connection where no byte moves either way
//!   ([`LimitOptions::passthrough_idle`]);
//! - a socket budget for the whole proxy ([`fds`]): the daemon raises its
//!   own descriptor limit to the hard limit and keeps a reserve that proxy
//!   sockets never take, for the admin socket, DNS and the audit store;
//! - per-agent caps on open connections and on requests in flight
//!   (defaults here, overridable in an agent's `[agent.limits]`), each
//!   refusal recorded and explained.

pub mod fds;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tracing::info;

use super::refusal::{ConnRefusal, Refusal};
use crate::policy::{PolicySet, ToolTimeouts};

/// Open connections (intercepted or passed through) one agent may hold,
/// unless its policy says otherwise; at most a quarter of the proxy's
/// socket budget, so that one agent at its cap leaves room for others.
pub const DEFAULT_AGENT_CONNECTIONS: u32 = 1024;
/// Requests one agent may have in flight at once (from the request head
/// to the end of the response body).
pub const DEFAULT_AGENT_REQUESTS: u32 = 256;
/// Descriptors proxy sockets never take: the admin socket and its
/// clients, DNS, the audit store, certificate and key files.
pub const DEFAULT_FD_RESERVE: u64 = 256;
/// How long an agent's connection may wait on the agent: for its first
/// request (after the TLS handshake, or the HTTP/2 preface), between
/// requests, for a request head, and for a body that is hashed into a
/// token.
pub const DEFAULT_CLIENT_TIMEOUT: &str = "30s";
/// The upstream's TLS handshake, once TCP is connected.
pub const DEFAULT_UPSTREAM_TLS_TIMEOUT: &str = "10s";
/// From the end of the request body to the upstream's response head;
/// per tool with `timeouts.response_head` (slow LLM APIs).
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: &str = "120s";
/// Between two pieces of a response body once its head arrived (streams
/// keep flowing as long as they make progress); per tool with
/// `timeouts.body_idle`.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: &str = "300s";
/// A passthrough connection on which no byte moved either way (the
/// default of Envoy's TCP proxy, whose tunnels carry the same traffic:
/// long polls and quiet streams, with keep-alives well inside an hour).
pub const DEFAULT_PASSTHROUGH_IDLE_TIMEOUT: &str = "1h";
/// The longest passthrough idle limit: the kernel reports a socket's idle
/// time in 32-bit milliseconds (49.7 days).
pub const MAX_PASSTHROUGH_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The limits `agentguard run` is given.
#[derive(Debug, Clone)]
pub struct LimitOptions {
    pub client_timeout: Duration,
    pub agent_connections: u32,
    pub agent_requests: u32,
    pub fd_reserve: u64,
    pub upstream_tls: Duration,
    pub upstream_response: Duration,
    pub upstream_idle: Duration,
    /// None: passthrough connections are never closed for idleness.
    pub passthrough_idle: Option<Duration>,
}

impl Default for LimitOptions {
    fn default() -> Self {
        let d = |s: &str| humantime::parse_duration(s).expect("default durations parse");
        Self {
            client_timeout: d(DEFAULT_CLIENT_TIMEOUT),
            agent_connections: DEFAULT_AGENT_CONNECTIONS,
            agent_requests: DEFAULT_AGENT_REQUESTS,
            fd_reserve: DEFAULT_FD_RESERVE,
            upstream_tls: d(DEFAULT_UPSTREAM_TLS_TIMEOUT),
            upstream_response: d(DEFAULT_UPSTREAM_RESPONSE_TIMEOUT),
            upstream_idle: d(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
            passthrough_idle: Some(d(DEFAULT_PASSTHROUGH_IDLE_TIMEOUT)),
        }
    }
}

impl std::fmt::Display for LimitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client_timeout={:?} agent_max_connections={} agent_max_requests={} fd_reserve={} \
             upstream_tls_timeout={:?} upstream_response_timeout={:?} upstream_idle_timeout={:?} \
             passthrough_idle_timeout={}",
            self.client_timeout,
            self.agent_connections,
            self.agent_requests,
            self.fd_reserve,
            self.upstream_tls,
            self.upstream_response,
            self.upstream_idle,
            match self.passthrough_idle {
                Some(limit) => format!("{limit:?}"),
                None => "none".to_owned(),
            },
        )
    }
}

/// The upstream time limits one request runs under.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub response_head: Duration,
    pub body_idle: Duration,
}

/// Per-agent counters and the limits in force.
pub struct Limits {
    opts: LimitOptions,
    agents: Mutex<HashMap<Arc<str>, Arc<Counts>>>,
}

#[derive(Default)]
struct Counts {
    connections: AtomicU32,
    requests: AtomicU32,
}

/// A place held by one agent; given back when dropped.
pub struct Held {
    counts: Arc<Counts>,
    what: What,
    /// Connections also hold a socket of the proxy's budget.
    socket: Option<fds::Socket>,
}

impl Held {
    /// A connection's place counted against no agent's limits (its own
    /// count, of itself): for code that plans requests outside a running
    /// proxy (the fuzz harness, tests).
    pub(crate) fn detached() -> Self {
        Self {
            counts: Arc::new(Counts {
                connections: AtomicU32::new(1),
                requests: AtomicU32::new(0),
            }),
            what: What::Connection,
            socket: None,
        }
    }
}

#[derive(Clone, Copy)]
enum What {
    Connection,
    Request,
}

impl Drop for Held {
    fn drop(&mut self) {
        let counter = match self.what {
            What::Connection => &self.counts.connections,
            What::Request => &self.counts.requests,
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    /// With `budget` sockets for the whole proxy: an agent's default share
    /// is at most a quarter of it.
    pub fn new(mut opts: LimitOptions, budget: Option<usize>) -> Self {
        if let Some(budget) = budget {
            let quarter = u32::try_from(budget / 4).unwrap_or(u32::MAX).max(1);
            if quarter < opts.agent_connections {
                info!(
                    configured = opts.agent_connections,
                    effective = quarter,
                    budget,
                    "default per-agent connection cap lowered to a quarter of the proxy's socket budget"
                );
                opts.agent_connections = quarter;
            }
        }
        Self {
            opts,
            agents: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &LimitOptions {
        &self.opts
    }

    fn counts(&self, agent: &Arc<str>) -> Arc<Counts> {
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        agents.entry(agent.clone()).or_default().clone()
    }

    /// A place for one more connection of `agent`, or why not.
    pub fn connection(&self, agent: &Arc<str>, policy: &PolicySet) -> Result<Held, ConnRefusal> {
        let max = policy
            .agent(agent)
            .and_then(|a| a.limits.connections)
            .unwrap_or(self.opts.agent_connections);
        let counts = self.counts(agent);
        if !take(&counts.connections, max) {
            return Err(ConnRefusal::AgentConnections {
                agent: agent.to_string(),
                max,
            });
        }
        let mut held = Held {
            counts,
            what: What::Connection,
            socket: None,
        };
        // The agent's own cap first: an agent over it must not take a
        // socket of the shared budget, even for a moment.
        let socket = fds::take().ok_or_else(|| ConnRefusal::Descriptors {
            budget: fds::budget().unwrap_or_default(),
        })?;
        held.socket = Some(socket);
        Ok(held)
    }

    /// A place for one more request of `agent` in flight, or why not.
    pub fn request(&self, agent: &Arc<str>, policy: &PolicySet) -> Result<Held, Refusal> {
        let max = policy
            .agent(agent)
            .and_then(|a| a.limits.requests)
            .unwrap_or(self.opts.agent_requests);
        let counts = self.counts(agent);
        if !take(&counts.requests, max) {
            return Err(Refusal::TooManyRequests { max });
        }
        Ok(Held {
            counts,
            what: What::Request,
            socket: None,
        })
    }

    /// The limits toward the upstream for a request, the tool's where it
    /// sets them.
    pub fn upstream(&self, tool: Option<&ToolTimeouts>) -> UpstreamTimeouts {
        UpstreamTimeouts {
            response_head: tool
                .and_then(|t| t.response_head)
                .unwrap_or(self.opts.upstream_response),
            body_idle: tool
                .and_then(|t| t.body_idle)
                .unwrap_or(self.opts.upstream_idle),
        }
    }
}

/// Takes one of `max` places on `counter`, if one is free.
fn take(counter: &AtomicU32, max: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> PolicySet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            format!("[agent]\nname = \"a\"\ncgroup = \"x/a\"\n{extra}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "[agent]\nname = \"b\"\ncgroup = \"x/b\"\n",
        )
        .unwrap();
        crate::policy::load_path(dir.path()).unwrap()
    }

    #[test]
    fn each_agent_has_its_own_caps_and_places_come_back() {
        let limits = Limits::new(
            LimitOptions {
                agent_connections: 2,
                agent_requests: 1,
                ..LimitOptions::default()
            },
            None,
        );
        let p = policy("");
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let first = limits.connection(&a, &p).unwrap();
        let _second = limits.connection(&a, &p).unwrap();
        assert!(matches!(
            limits.connection(&a, &p),
            Err(ConnRefusal::AgentConnections { max: 2, .. })
        ));
        // Another agent is not affected.
        let _b = limits.connection(&b, &p).unwrap();
        drop(first);
        let _third = limits.connection(&a, &p).unwrap();

        let r = limits.request(&a, &p).unwrap();
        assert!(matches!(
            limits.request(&a, &p),
            Err(Refusal::TooManyRequests { max: 1 })
        ));
        drop(r);
        assert!(limits.request(&a, &p).is_ok());
    }

    #[test]
    fn a_policy_overrides_the_defaults_for_its_agent() {
        let limits = Limits::new(LimitOptions::default(), None);
        let p = policy("[agent.limits]\nconnections = 1\nrequests = 3\n");
        let a: Arc<str> = "a".into();
        let _c = limits.connection(&a, &p).unwrap();
        assert!(limits.connection(&a, &p).is_err());
        let held: Vec<_> = (0..3).map(|_| limits.request(&a, &p).unwrap()).collect();
        assert!(limits.request(&a, &p).is_err());
        drop(held);
    }

    #[test]
    fn tools_set_their_own_upstream_limits_and_bad_values_name_the_key() {
        let p = policy(
            "[[tool]]\nname = \"llm\"\nhost = \"api.example.com\"\nmethods = [\"POST\"]\npaths = [\"/v1/*\"]\ntimeouts = { response_head = \"10m\" }\n",
        );
        let tool = &p.agent("a").unwrap().tools[0];
        let limits = Limits::new(LimitOptions::default(), None);
        let t = limits.upstream(Some(&tool.timeouts));
        assert_eq!(t.response_head, Duration::from_secs(600));
        assert_eq!(t.body_idle, LimitOptions::default().upstream_idle);
        assert_eq!(
            limits.upstream(None).response_head,
            LimitOptions::default().upstream_response
        );

        let dir = tempfile::tempdir().unwrap();
        for (extra, error) in [
            (
                "[agent.limits]\nconnections = 0\n",
                "agent.limits.connections: must be at least 1",
            ),
            ("[agent.limits]\nsockets = 3\n", "unknown field `sockets`"),
            (
                "[[tool]]\nname = \"t\"\nhost = \"h\"\nmethods = [\"GET\"]\npaths = [\"/\"]\ntimeouts = { body_idle = \"soon\" }\n",
                "tool.timeouts: body_idle \"soon\" is not a duration",
            ),
            (
                "[[tool]]\nname = \"t\"\nhost = \"h\"\nmethods = [\"GET\"]\npaths = [\"/\"]\ntimeouts = { response_head = \"2d\" }\n",
                "tool.timeouts: response_head must be between 1s and 24h",
            ),
        ] {
            std::fs::write(
                dir.path().join("a.toml"),
                format!("[agent]\nname = \"a\"\ncgroup = \"x/a\"\n{extra}"),
            )
            .unwrap();
            let err = crate::policy::load_path(dir.path())
                .unwrap_err()
                .to_string();
            assert!(err.contains(error), "{extra}: {err}");
        }
    }

    #[test]
    fn the_example_llm_agent_has_its_limits() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let set = crate::policy::load_path(&dir).unwrap();
        let agent = set.agent("anthropic-agent").unwrap();
        assert_eq!(agent.limits.connections, Some(64));
        assert_eq!(agent.limits.requests, Some(16));
        let messages = agent
            .tools
            .iter()
            .find(|t| t.name == "anthropic.messages")
            .unwrap();
        assert_eq!(
            messages.timeouts.response_head,
            Some(Duration::from_secs(600))
        );
    }

    #[test]
    fn the_default_share_is_at_most_a_quarter_of_the_budget() {
        let limits = Limits::new(LimitOptions::default(), Some(400));
        assert_eq!(limits.options().agent_connections, 100);
        let limits = Limits::new(LimitOptions::default(), Some(1_000_000));
        assert_eq!(
            limits.options().agent_connections,
            DEFAULT_AGENT_CONNECTIONS
        );
    }
}
