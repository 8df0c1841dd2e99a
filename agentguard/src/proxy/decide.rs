//! The per-connection decision, made before any handshake: intercept
//! (terminate TLS and read the requests), pass through untouched, or refuse.
//! A plan made from what was sniffed, the policy and the resolver's answers
//! alone; `connection` carries it out.

use std::net::{IpAddr, SocketAddr};

use super::{refusal::ConnRefusal, sniff::Sniffed};
use crate::{connlog, dns::Resolvers, policy::PolicySet};

/// What agentguard's resolver told each agent: the only evidence, without
/// a certificate, that an address belongs to a name.
pub trait Resolutions {
    /// Whether `agent`'s resolver answered `name` with `ip` (and the answer
    /// is still within its TTL).
    fn resolved_to(&self, agent: &str, name: &str, ip: IpAddr) -> bool;
}

impl Resolutions for Resolvers {
    fn resolved_to(&self, agent: &str, name: &str, ip: IpAddr) -> bool {
        Resolvers::resolved_to(self, agent, name, ip)
    }
}

/// What to do with one connection.
#[derive(Debug)]
pub enum ConnPlan {
    /// Terminate TLS with a leaf for `sni` and proxy HTTP.
    InterceptTls {
        sni: String,
    },
    /// Proxy plain HTTP.
    InterceptHttp,
    /// Relay the bytes untouched; the reason names the policy entry.
    Passthrough {
        sni: String,
        reason: String,
    },
    Refuse(ConnRefusal),
}

impl ConnPlan {
    pub fn decision(&self) -> connlog::Decision {
        match self {
            ConnPlan::InterceptTls { .. } | ConnPlan::InterceptHttp => connlog::Decision::Intercept,
            ConnPlan::Passthrough { .. } => connlog::Decision::Passthrough,
            ConnPlan::Refuse(_) => connlog::Decision::Refuse,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            ConnPlan::InterceptTls { sni } => format!("intercept TLS for {sni}"),
            ConnPlan::InterceptHttp => "intercept plain HTTP".to_owned(),
            ConnPlan::Passthrough { reason, .. } => reason.clone(),
            ConnPlan::Refuse(refusal) => refusal.to_string(),
        }
    }

    /// The rule the audit record names.
    pub fn rule(&self) -> String {
        match self {
            ConnPlan::InterceptTls { .. } | ConnPlan::InterceptHttp => "intercept".to_owned(),
            ConnPlan::Passthrough { sni, .. } => format!("passthrough:{sni}"),
            ConnPlan::Refuse(refusal) => refusal.rule().to_owned(),
        }
    }
}

/// Before a byte is read: a record pointing at the proxy's own port would
/// make the proxy dial itself.
pub fn check_destination(dst: SocketAddr, proxy_port: u16) -> Result<(), ConnRefusal> {
    if dst.ip().is_loopback() && dst.port() == proxy_port {
        return Err(ConnRefusal::ProxyLoop);
    }
    Ok(())
}

/// Decides a connection of `agent` to `dst` from its first message.
pub fn decide(
    sniffed: &Sniffed,
    policy: &PolicySet,
    resolutions: &dyn Resolutions,
    agent: &str,
    dst: SocketAddr,
) -> ConnPlan {
    match sniffed {
        Sniffed::Tls { sni: None, .. } => ConnPlan::Refuse(ConnRefusal::NoSni),
        Sniffed::Tls { sni: Some(sni), .. } if policy.is_passthrough(agent, sni, dst.port()) => {
            // A passthrough host is named only by the agent's SNI, which it
            // may write on a hello to any address; nothing after it is
            // verified. Only relay to an address agentguard's resolver gave
            // this agent for that very name, or the entry would be a tunnel
            // to anywhere.
            if !resolutions.resolved_to(agent, sni, dst.ip()) {
                return ConnPlan::Refuse(ConnRefusal::PassthroughUnresolved {
                    sni: sni.clone(),
                    ip: dst.ip(),
                });
            }
            ConnPlan::Passthrough {
                sni: sni.clone(),
                reason: format!(
                    "{sni}:{} is a passthrough host in agent {agent:?}'s policy",
                    dst.port()
                ),
            }
        }
        Sniffed::Tls { sni: Some(sni), .. } => ConnPlan::InterceptTls { sni: sni.clone() },
        Sniffed::PlainHttp => ConnPlan::InterceptHttp,
        Sniffed::MalformedTls(e) => ConnPlan::Refuse(ConnRefusal::MalformedTls(e.clone())),
        Sniffed::Unknown => ConnPlan::Refuse(ConnRefusal::UnknownProtocol),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PolicySet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "[agent]\nname = \"a\"\ncgroup = \"x/a\"\n[[passthrough]]\nhost = \"pypi.org\"\nports = [443]\n",
        )
        .unwrap();
        crate::policy::load_path(dir.path()).unwrap()
    }

    /// The resolver gave agent `a` 127.0.0.3 for pypi.org, and nothing else.
    struct Resolved;

    impl Resolutions for Resolved {
        fn resolved_to(&self, agent: &str, name: &str, ip: IpAddr) -> bool {
            (agent, name, ip) == ("a", "pypi.org", IpAddr::from([127, 0, 0, 3]))
        }
    }

    fn tls(sni: Option<&str>) -> Sniffed {
        Sniffed::Tls {
            sni: sni.map(str::to_owned),
            alpn: vec![],
        }
    }

    /// A plan as (decision, rule, reason).
    type Summary<S> = (connlog::Decision, S, S);

    fn plan(sniffed: Sniffed, agent: &str, dst: &str) -> Summary<String> {
        let p = decide(&sniffed, &policy(), &Resolved, agent, dst.parse().unwrap());
        (p.decision(), p.rule(), p.reason())
    }

    #[test]
    fn decisions_follow_sni_policy_and_resolver() {
        use connlog::Decision::{Intercept, Passthrough, Refuse};
        // What was sniffed, from which agent, to where: the plan it gets.
        let rows: &[(Sniffed, &str, &str, Summary<&str>)] = &[
            (
                tls(Some("pypi.org")),
                "a",
                "127.0.0.3:443",
                (
                    Passthrough,
                    "passthrough:pypi.org",
                    "pypi.org:443 is a passthrough host in agent \"a\"'s policy",
                ),
            ),
            (
                tls(Some("api.example.com")),
                "a",
                "127.0.0.3:443",
                (Intercept, "intercept", "intercept TLS for api.example.com"),
            ),
            // Passthrough is per agent and per port.
            (
                tls(Some("pypi.org")),
                "b",
                "127.0.0.3:443",
                (Intercept, "intercept", "intercept TLS for pypi.org"),
            ),
            (
                tls(Some("pypi.org")),
                "a",
                "127.0.0.3:8443",
                (Intercept, "intercept", "intercept TLS for pypi.org"),
            ),
            // The SNI alone proves nothing: the address must be one the
            // resolver gave this agent for that name.
            (
                tls(Some("pypi.org")),
                "a",
                "127.0.0.4:443",
                (
                    Refuse,
                    "protocol",
                    "passthrough host pypi.org was not resolved to 127.0.0.4 by agentguard's resolver for this agent",
                ),
            ),
            (
                tls(None),
                "a",
                "127.0.0.3:443",
                (
                    Refuse,
                    "protocol",
                    "TLS ClientHello without SNI (server name): cannot tell which host the agent wants",
                ),
            ),
            (
                Sniffed::PlainHttp,
                "a",
                "127.0.0.3:80",
                (Intercept, "intercept", "intercept plain HTTP"),
            ),
            (
                Sniffed::Unknown,
                "a",
                "127.0.0.3:443",
                (
                    Refuse,
                    "protocol",
                    "unknown protocol (neither TLS nor HTTP); not relayed",
                ),
            ),
            (
                Sniffed::MalformedTls("x".into()),
                "a",
                "127.0.0.3:443",
                (Refuse, "protocol", "malformed TLS ClientHello: x"),
            ),
        ];
        for (sniffed, agent, dst, (decision, rule, reason)) in rows {
            assert_eq!(
                plan(sniffed.clone(), agent, dst),
                (*decision, rule.to_string(), reason.to_string()),
                "{sniffed:?} from {agent} to {dst}"
            );
        }
    }

    #[test]
    fn only_the_proxy_port_on_loopback_is_a_loop() {
        assert!(matches!(
            check_destination("127.0.0.1:977".parse().unwrap(), 977),
            Err(ConnRefusal::ProxyLoop)
        ));
        assert!(matches!(
            check_destination("[::1]:977".parse().unwrap(), 977),
            Err(ConnRefusal::ProxyLoop)
        ));
        assert!(check_destination("127.0.0.1:978".parse().unwrap(), 977).is_ok());
        assert!(check_destination("10.0.0.1:977".parse().unwrap(), 977).is_ok());
    }
}
