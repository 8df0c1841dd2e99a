//! The per-connection decision, made before any handshake: intercept
//! (terminate TLS and read the requests), pass through untouched, or refuse.

use std::net::{IpAddr, SocketAddr};

use super::{refusal::ConnRefusal, sniff::Sniffed};
use crate::{dns::Resolvers, policy::PolicySet};

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

#[derive(Debug)]
pub enum ConnDecision {
    /// Terminate TLS with a leaf for `sni` and proxy HTTP.
    InterceptTls {
        sni: String,
    },
    /// Proxy plain HTTP.
    InterceptHttp,
    /// Relay the bytes untouched; the reason names the policy entry.
    Passthrough {
        reason: String,
    },
    Refuse(ConnRefusal),
}

pub fn decide(sniffed: &Sniffed, policy: &PolicySet, agent: &str, dst: SocketAddr) -> ConnDecision {
    match sniffed {
        Sniffed::Tls { sni: None, .. } => ConnDecision::Refuse(ConnRefusal::NoSni),
        Sniffed::Tls { sni: Some(sni), .. } if policy.is_passthrough(agent, sni, dst.port()) => {
            ConnDecision::Passthrough {
                reason: format!(
                    "{sni}:{} is a passthrough host in agent {agent:?}'s policy",
                    dst.port()
                ),
            }
        }
        Sniffed::Tls { sni: Some(sni), .. } => ConnDecision::InterceptTls { sni: sni.clone() },
        Sniffed::PlainHttp => ConnDecision::InterceptHttp,
        Sniffed::MalformedTls(e) => ConnDecision::Refuse(ConnRefusal::MalformedTls(e.clone())),
        Sniffed::Unknown => ConnDecision::Refuse(ConnRefusal::UnknownProtocol),
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

    fn tls(sni: Option<&str>) -> Sniffed {
        Sniffed::Tls {
            sni: sni.map(str::to_owned),
            alpn: vec![],
        }
    }

    #[test]
    fn decisions_follow_sni_and_policy() {
        let p = policy();
        let dst = SocketAddr::from(([127, 0, 0, 3], 443));
        assert!(matches!(
            decide(&tls(Some("pypi.org")), &p, "a", dst),
            ConnDecision::Passthrough { .. }
        ));
        assert!(matches!(
            decide(&tls(Some("api.example.com")), &p, "a", dst),
            ConnDecision::InterceptTls { sni } if sni == "api.example.com"
        ));
        // Passthrough is per agent and per port.
        assert!(matches!(
            decide(&tls(Some("pypi.org")), &p, "b", dst),
            ConnDecision::InterceptTls { .. }
        ));
        let other_port = SocketAddr::from(([127, 0, 0, 3], 8443));
        assert!(matches!(
            decide(&tls(Some("pypi.org")), &p, "a", other_port),
            ConnDecision::InterceptTls { .. }
        ));
        assert!(matches!(
            decide(&tls(None), &p, "a", dst),
            ConnDecision::Refuse(ConnRefusal::NoSni)
        ));
        assert!(matches!(
            decide(&Sniffed::PlainHttp, &p, "a", dst),
            ConnDecision::InterceptHttp
        ));
        assert!(matches!(
            decide(&Sniffed::Unknown, &p, "a", dst),
            ConnDecision::Refuse(ConnRefusal::UnknownProtocol)
        ));
        assert!(matches!(
            decide(&Sniffed::MalformedTls("x".into()), &p, "a", dst),
            ConnDecision::Refuse(ConnRefusal::MalformedTls(_))
        ));
    }
}
