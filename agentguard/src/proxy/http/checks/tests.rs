//! Unit tests of the request checks.

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
            container: None,
        },
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        dst: SocketAddr::from(([127, 0, 0, 3], port)),
        sni: sni.map(str::to_owned),
        dial: crate::netns::Dial::Host,
        place: std::sync::Arc::new(crate::proxy::limits::Held::detached()),
        agent_socket: None,
        on_behalf_of: None,
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
