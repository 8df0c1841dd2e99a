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

/// Before a byte is read: a record pointing at the proxy's own listener
/// would make the proxy dial itself. The listener is on 127.0.0.1 and ::1
/// only: another loopback address with the same port number is another
/// server (an upstream on 127.0.0.7 may well have been given the port
/// number the proxy's listener has on 127.0.0.1).
pub fn check_destination(dst: SocketAddr, proxy_port: u16) -> Result<(), ConnRefusal> {
    let listener = match dst.ip().to_canonical() {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST,
    };
    if listener && dst.port() == proxy_port {
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
mod tests;
