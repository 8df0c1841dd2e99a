//! Checks on a request before any policy: where it claims to go, whether
//! that agrees with the connection it arrived on, and whether its path reads
//! the same to every server.

use hyper::{
    Request, header,
    http::uri::{Authority, Scheme},
};

use super::ConnMeta;

/// The request's authority: the URI's (HTTP/2 `:authority`, or HTTP/1.1
/// absolute-form) or else the `Host` header (RFC 9110 §7.2).
///
/// A request that names two authorities is refused rather than read one
/// way: more than one `Host` (RFC 9112 §3.2 asks for a 400), or a `Host`
/// that names another authority than the request target (RFC 9113 §8.3.1
/// calls that malformed for HTTP/2). Servers and intermediaries pick
/// differently among them, so the policy could decide on one name while
/// the upstream serves the other.
pub fn request_authority<B>(req: &Request<B>) -> Result<Authority, String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("request has more than one Host header".to_owned());
    }
    let host = host
        .map(|h| {
            h.to_str()
                .ok()
                .and_then(|h| h.parse::<Authority>().ok())
                .ok_or_else(|| "request has an invalid Host header".to_owned())
        })
        .transpose()?;
    match (req.uri().authority(), host) {
        (Some(target), Some(host)) if !same_authority(target, &host, req.uri().scheme()) => {
            Err(format!(
                "Host header {:?} does not match the request target's authority {:?}",
                host.as_str(),
                target.as_str()
            ))
        }
        (Some(target), _) => Ok(target.clone()),
        (None, Some(host)) => Ok(host),
        (None, None) => Err("request has no Host header or :authority".to_owned()),
    }
}

/// Same host (ASCII case-insensitive) and same port, an absent port being
/// the scheme's default.
fn same_authority(a: &Authority, b: &Authority, scheme: Option<&Scheme>) -> bool {
    let default = match scheme {
        Some(s) if *s == Scheme::HTTP => Some(80),
        Some(s) if *s == Scheme::HTTPS => Some(443),
        _ => None,
    };
    a.host().eq_ignore_ascii_case(b.host()) && a.port_u16().or(default) == b.port_u16().or(default)
}

/// A path whose percent-decoding still holds a percent-escape
/// (`%252e`, `%25%32%65`) means one thing to a server that decodes once and
/// another to one that decodes twice: `/tickets/%252e%252e/admin` matches
/// `/tickets/*` here and is `/admin` there. Refused, like an encoded `/`.
pub fn check_double_encoding(path: &str) -> Result<(), String> {
    let once: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    let escape = once
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit());
    if escape {
        return Err(
            "a percent-encoded '%' followed by hex digits (double encoding) is refused".into(),
        );
    }
    Ok(())
}

/// SNI, Host/:authority and the connection's port must agree. Otherwise a
/// request could ride a connection verified for one name to another name
/// (domain fronting), and later, carry that name's credential.
pub fn check_consistency(host: &str, port: Option<u16>, meta: &ConnMeta) -> Result<(), String> {
    let host = host.trim_end_matches('.');
    if let Some(sni) = &meta.sni
        && !host.eq_ignore_ascii_case(sni.trim_end_matches('.'))
    {
        return Err(format!(
            "host {host:?} does not match the TLS server name {sni:?} of this connection"
        ));
    }
    if let Some(port) = port
        && port != meta.dst.port()
    {
        return Err(format!(
            "port {port} in the request does not match the connection's port {}",
            meta.dst.port()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::identity::Identity;

    fn meta(sni: Option<&str>, port: u16) -> ConnMeta {
        ConnMeta {
            identity: Identity {
                agent: "a".into(),
                cgroup: "agentguard/a".into(),
                cgroup_id: 1,
                pid: 1,
                tid: 1,
                uid: 0,
                gid: 0,
                comm: "curl".into(),
                socket_family: "ipv4",
                exe: None,
            },
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            dst: SocketAddr::from(([127, 0, 0, 3], port)),
            sni: sni.map(str::to_owned),
        }
    }

    #[test]
    fn host_must_match_sni_and_port() {
        let m = meta(Some("api.example.com"), 443);
        assert!(check_consistency("API.example.com.", None, &m).is_ok());
        assert!(check_consistency("api.example.com", Some(443), &m).is_ok());
        assert!(check_consistency("evil.example.com", None, &m).is_err());
        assert!(check_consistency("api.example.com", Some(8443), &m).is_err());
        // Plain HTTP has no SNI to compare; the port still must agree.
        let plain = meta(None, 80);
        assert!(check_consistency("anything", None, &plain).is_ok());
        assert!(check_consistency("anything", Some(81), &plain).is_err());
    }

    fn authority_of(target: &str, hosts: &[&str]) -> Result<String, String> {
        let mut req = Request::builder().uri(target);
        for h in hosts {
            req = req.header(header::HOST, *h);
        }
        request_authority(&req.body(()).unwrap()).map(|a| a.to_string())
    }

    #[test]
    fn one_authority_or_a_refusal() {
        assert_eq!(
            authority_of("/x", &["api.example.com"]).unwrap(),
            "api.example.com"
        );
        assert_eq!(
            authority_of("https://api.example.com/x", &[]).unwrap(),
            "api.example.com"
        );
        // Absolute-form (or :authority) and Host agree, the default port
        // being implied.
        for host in ["API.example.com", "api.example.com:443"] {
            assert_eq!(
                authority_of("https://api.example.com/x", &[host]).unwrap(),
                "api.example.com"
            );
        }
        assert_eq!(
            authority_of("http://api.example.com:80/x", &["api.example.com"]).unwrap(),
            "api.example.com:80"
        );
        // RFC 9112 §3.2: two Host headers, even equal ones, are a 400.
        let two = authority_of("/x", &["api.example.com", "api.example.com"]).unwrap_err();
        assert!(two.contains("more than one Host"), "{two}");
        assert!(authority_of("/x", &["api.example.com", "evil.example.com"]).is_err());
        assert!(
            authority_of(
                "https://api.example.com/x",
                &["a.example.com", "b.example.com"]
            )
            .is_err()
        );
        // Host names another authority than the target.
        for host in ["evil.example.com", "api.example.com:8443"] {
            let e = authority_of("https://api.example.com/x", &[host]).unwrap_err();
            assert!(e.contains("does not match"), "{e}");
        }
        assert!(authority_of("/x", &[]).is_err());
        assert!(authority_of("/x", &["bad host"]).is_err());
    }

    #[test]
    fn double_encoding_is_refused() {
        for path in [
            "/api/v2/tickets/%252e%252e/admin",
            "/a/%252E",
            "/a/%252f",
            "/a/%2541",
            "/a/%25%32%65",
            "/a/%25%32e",
            "/a/b%25ffc",
        ] {
            assert!(check_double_encoding(path).is_err(), "{path}");
        }
        for path in [
            "/api/v2/tickets/1",
            "/a/%2e%2e/b",
            "/a/100%25",
            "/a/%25zz",
            "/a/%25a",
            "/a/%25%zz",
            "/a/50%25-off",
        ] {
            assert!(check_double_encoding(path).is_ok(), "{path}");
        }
    }
}
