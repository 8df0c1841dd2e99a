//! Unit tests of `decide`.

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
fn only_the_proxys_listener_is_a_loop() {
    assert!(matches!(
        check_destination("127.0.0.1:977".parse().unwrap(), 977),
        Err(ConnRefusal::ProxyLoop)
    ));
    assert!(matches!(
        check_destination("[::1]:977".parse().unwrap(), 977),
        Err(ConnRefusal::ProxyLoop)
    ));
    assert!(matches!(
        check_destination("[::ffff:127.0.0.1]:977".parse().unwrap(), 977),
        Err(ConnRefusal::ProxyLoop)
    ));
    assert!(check_destination("127.0.0.1:978".parse().unwrap(), 977).is_ok());
    assert!(check_destination("10.0.0.1:977".parse().unwrap(), 977).is_ok());
    // Another loopback address with the same port number: another server.
    assert!(check_destination("127.0.0.7:977".parse().unwrap(), 977).is_ok());
}
