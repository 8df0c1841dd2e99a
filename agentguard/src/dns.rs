//! agentguard's own resolver. The kernel sends every DNS query of an agent
//! (UDP or TCP port 53, whatever server it named) to a port of this
//! resolver reserved for that agent, so the port alone says whose query it
//! is. Only standard queries are answered, and of those only the question
//! is forwarded (see `sanitise`). A name the agent's policy can reach is
//! forwarded to the host's resolvers; any other name gets NXDOMAIN, so DNS
//! is not a way to reach or signal hosts outside the policy. Every query is
//! recorded.

mod answers;
mod listener;
mod query;
pub(crate) mod sanitise;
mod upstream;

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
};

use serde::Serialize;
use thiserror::Error;
use tracing::info;

pub use upstream::system_resolvers;

use crate::live::Live;

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("failed to bind agentguard's resolver for agent {agent:?}: {source}")]
    Bind {
        agent: String,
        source: std::io::Error,
    },
    #[error("agentguard's resolver for agent {agent:?}: {source}")]
    Netns {
        agent: String,
        source: crate::netns::NetnsError,
    },
}

/// One query, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct DnsQueryRecord {
    pub agent: String,
    /// Query name without the trailing dot.
    pub name: String,
    /// Record type, e.g. "A", "AAAA".
    pub qtype: String,
    /// "allow" (forwarded), "deny" (NXDOMAIN by policy), "refuse" (not a
    /// standard query: answered NOTIMP, FORMERR or REFUSED, never
    /// forwarded) or "fail" (no upstream answered usably, or the message
    /// could not be parsed).
    pub decision: &'static str,
    /// Why a query was refused or failed, when there is more to say than
    /// the rcode.
    pub detail: Option<String>,
    /// The answer's records, as text.
    pub answers: Vec<String>,
    /// DNS response code sent to the agent.
    pub rcode: String,
    /// The agent's socket address as the resolver saw it.
    pub client: SocketAddr,
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// Shared with the policy it names.
    pub policy_version: std::sync::Arc<str>,
}

/// Where recorded queries go (the audit stream). The resolver awaits the
/// returned future before it replies, so a full audit queue slows the
/// resolver down (backpressure) instead of piling up records.
pub type OnQuery =
    Arc<dyn Fn(DnsQueryRecord) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One address an agent's resolver bound a name to.
pub struct Bound<'a> {
    pub agent: &'a str,
    /// Lower case, without the trailing dot.
    pub name: &'a str,
    pub ip: std::net::IpAddr,
    /// When the binding ends (its TTL, clamped).
    pub expires: std::time::Instant,
    /// Every name bound to `ip` for this agent and not expired, `name`
    /// among them.
    pub names: Vec<String>,
}

/// Told of each binding as it is made (passthrough's direct way).
pub type OnBound = Arc<dyn Fn(&Bound<'_>) + Send + Sync>;

/// Shared by all of one agent's listeners.
struct Shared {
    answers: answers::Answers,
    /// Set once the first policy is in force; resolvers start while it is
    /// being built (their ports go into the kernel with the agents).
    live: OnceLock<Arc<Live>>,
    upstreams: Vec<SocketAddr>,
    on_query: OnQuery,
    /// Set once, if the direct way is on.
    on_bound: OnceLock<OnBound>,
}

/// The per-agent resolvers of the daemon.
pub struct Resolvers {
    shared: Arc<Shared>,
    running: Mutex<HashMap<String, listener::AgentResolver>>,
}

impl Resolvers {
    /// `upstreams`: the resolvers allowed names are forwarded to (the
    /// host's, from /etc/resolv.conf, unless configured).
    pub fn new(upstreams: Vec<SocketAddr>, on_query: OnQuery) -> Self {
        Self {
            shared: Arc::new(Shared {
                answers: answers::Answers::default(),
                live: OnceLock::new(),
                upstreams,
                on_query,
                on_bound: OnceLock::new(),
            }),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Gives the resolvers the policy in force; until then they answer
    /// SERVFAIL.
    pub fn set_live(&self, live: Arc<Live>) {
        let _ = self.shared.live.set(live);
    }

    /// Tells `on_bound` of every binding from now on.
    pub fn set_on_bound(&self, on_bound: OnBound) {
        let _ = self.shared.on_bound.set(on_bound);
    }

    /// The port of `agent`'s resolver, if it runs.
    pub fn port_of(&self, agent: &str) -> Option<u16> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(agent).map(|r| r.port)
    }

    /// The resolver port serving `agent`, starting its listeners if needed.
    /// Must run inside the tokio runtime.
    pub fn ensure(&self, agent: &str) -> Result<u16, DnsError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.get(agent) {
            return Ok(r.port);
        }
        let resolver =
            listener::AgentResolver::start(agent, self.shared.clone()).map_err(|source| {
                DnsError::Bind {
                    agent: agent.to_owned(),
                    source,
                }
            })?;
        info!(agent, port = resolver.port, "resolver started");
        let port = resolver.port;
        running.insert(agent.to_owned(), resolver);
        Ok(port)
    }

    /// Makes `agent`'s resolver (started by [`Resolvers::ensure`]) listen
    /// in `netns` too, on the same port.
    pub fn ensure_in(&self, agent: &str, netns: &crate::netns::Netns) -> Result<(), DnsError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(resolver) = running.get_mut(agent) else {
            return Err(DnsError::Bind {
                agent: agent.to_owned(),
                source: std::io::Error::other("the agent's resolver is not running"),
            });
        };
        resolver.listen_in(netns).map_err(|source| DnsError::Netns {
            agent: agent.to_owned(),
            source,
        })
    }

    /// Closes every resolver's sockets in network namespaces not in
    /// `keep`.
    pub fn retain_netns(&self, keep: &[crate::netns::NetnsId]) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for resolver in running.values_mut() {
            resolver.retain_netns(keep);
        }
    }

    /// Stops the resolvers of agents not in `agents`.
    pub fn retain(&self, agents: &[&str]) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|name, _| agents.contains(&name.as_str()));
        self.shared.answers.forget_agents_except(agents);
    }

    /// Whether this agent's resolver answered `name` with `ip` (and the
    /// answer is still within its TTL).
    pub fn resolved_to(&self, agent: &str, name: &str, ip: std::net::IpAddr) -> bool {
        self.shared.answers.resolved_to(agent, name, ip)
    }
}
