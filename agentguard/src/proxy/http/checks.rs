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
    // Without a '%' nothing decodes: no copy for most paths.
    if !path.contains('%') {
        return Ok(());
    }
    let once: Vec<u8> = crate::percent::decode(path.as_bytes());
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
mod tests;
