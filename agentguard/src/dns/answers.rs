//! What each agent's resolver answered: (agent, address) → names, until the
//! records' TTL runs out. The proxy uses it to bind a name the agent claims
//! (a passthrough SNI, a plain-HTTP Host) to the address it dialled: without
//! TLS to verify, "this address is that host" is only as good as the DNS
//! answer agentguard itself gave.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Answers kept per agent; beyond it the entries closest to expiry go.
const MAX_PER_AGENT: usize = 8192;
/// TTLs are clamped: a 0-second TTL would make the name unusable before the
/// agent connects, a day-long one would keep a stale binding.
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(3600);

/// (address, lower-case name) → when the answer expires.
type Bindings = HashMap<(IpAddr, String), Instant>;

#[derive(Default)]
pub struct Answers {
    by_agent: Mutex<HashMap<String, Bindings>>,
}

impl Answers {
    /// Binds `name` to `ip` for `agent`; returns until when.
    pub fn remember(&self, agent: &str, name: &str, ip: IpAddr, ttl: Duration) -> Instant {
        let expiry = Instant::now() + ttl.clamp(MIN_TTL, MAX_TTL);
        let mut by_agent = self.by_agent.lock().unwrap_or_else(|p| p.into_inner());
        let entries = by_agent.entry(agent.to_owned()).or_default();
        if entries.len() >= MAX_PER_AGENT {
            let now = Instant::now();
            entries.retain(|_, e| *e > now);
            if entries.len() >= MAX_PER_AGENT
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| **e)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert((ip.to_canonical(), name.to_ascii_lowercase()), expiry);
        expiry
    }

    /// The names (lower case) bound to `ip` for `agent` and not expired.
    pub fn names_for(&self, agent: &str, ip: IpAddr) -> Vec<String> {
        let by_agent = self.by_agent.lock().unwrap_or_else(|p| p.into_inner());
        let (ip, now) = (ip.to_canonical(), Instant::now());
        by_agent.get(agent).map_or_else(Vec::new, |entries| {
            entries
                .iter()
                .filter(|((bound, _), expiry)| *bound == ip && **expiry > now)
                .map(|((_, name), _)| name.clone())
                .collect()
        })
    }

    /// Whether agentguard answered `name` with `ip` for `agent`, and the
    /// answer has not expired.
    pub fn resolved_to(&self, agent: &str, name: &str, ip: IpAddr) -> bool {
        let by_agent = self.by_agent.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            ip.to_canonical(),
            name.trim_end_matches('.').to_ascii_lowercase(),
        );
        by_agent
            .get(agent)
            .and_then(|entries| entries.get(&key))
            .is_some_and(|expiry| *expiry > Instant::now())
    }

    pub fn forget_agents_except(&self, agents: &[&str]) {
        let mut by_agent = self.by_agent.lock().unwrap_or_else(|p| p.into_inner());
        by_agent.retain(|name, _| agents.contains(&name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_are_per_agent_name_and_address() {
        let a = Answers::default();
        let ip: IpAddr = "127.0.0.3".parse().unwrap();
        a.remember("bot", "API.example.com", ip, Duration::from_secs(300));
        assert!(a.resolved_to("bot", "api.example.com.", ip));
        assert!(!a.resolved_to("other", "api.example.com", ip));
        assert!(!a.resolved_to("bot", "evil.example.com", ip));
        assert!(!a.resolved_to("bot", "api.example.com", "127.0.0.4".parse().unwrap()));
        // v4-mapped dials match the v4 answer.
        assert!(a.resolved_to(
            "bot",
            "api.example.com",
            "::ffff:127.0.0.3".parse().unwrap()
        ));
    }

    #[test]
    fn names_bound_to_an_address_are_listed_per_agent() {
        let a = Answers::default();
        let ip: IpAddr = "127.0.0.3".parse().unwrap();
        a.remember("bot", "Pass.example.com", ip, Duration::from_secs(300));
        assert_eq!(a.names_for("bot", ip), ["pass.example.com"]);
        a.remember(
            "bot",
            "api.example.com",
            "::ffff:127.0.0.3".parse().unwrap(),
            Duration::from_secs(300),
        );
        let mut names = a.names_for("bot", ip);
        names.sort();
        assert_eq!(names, ["api.example.com", "pass.example.com"]);
        assert!(a.names_for("other", ip).is_empty());
        assert!(a.names_for("bot", "127.0.0.4".parse().unwrap()).is_empty());
    }
}
