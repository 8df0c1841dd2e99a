//! Checks on a request before any policy: where it claims to go, and whether
//! that agrees with the connection it arrived on.

use hyper::{Request, header, http::uri::Authority};

use super::ConnMeta;

/// The request's authority: the URI's (HTTP/2 `:authority`, or HTTP/1.1
/// absolute-form) or else the `Host` header (RFC 9110 §7.2).
pub fn request_authority<B>(req: &Request<B>) -> Result<Authority, String> {
    if let Some(a) = req.uri().authority() {
        return Ok(a.clone());
    }
    let host = req
        .headers()
        .get(header::HOST)
        .ok_or("request has no Host header or :authority")?;
    host.to_str()
        .ok()
        .and_then(|h| h.parse::<Authority>().ok())
        .ok_or_else(|| "request has an invalid Host header".to_owned())
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
}
