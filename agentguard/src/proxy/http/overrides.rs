//! Request overrides from the agent: headers that make a server run another
//! method or path than the request line shows, or trust another client
//! (`policy::overrides` lists them), are stripped before the request goes
//! upstream, and `_method` in the query is refused on tools that bind a
//! credential, unless the tool's `allow_overrides` names them. The policy
//! decides on the request line; the upstream must run that, not what a
//! header asks for.

use hyper::HeaderMap;

use crate::policy::overrides::{METHOD_PARAM, allows_header, is_override_header};

/// Removes every override header the tool does not allow; returns the names
/// removed (for the log).
pub fn strip(headers: &mut HeaderMap, allowed: &[String]) -> Vec<String> {
    let names: Vec<_> = headers
        .keys()
        .filter(|n| is_override_header(n.as_str()) && !allows_header(allowed, n.as_str()))
        .cloned()
        .collect();
    for name in &names {
        headers.remove(name);
    }
    names.into_iter().map(|n| n.as_str().to_owned()).collect()
}

/// Whether the query sets `_method`, however the name is spelt: `%5Fmethod`
/// is `_method` to every server, and a `+` is a space to form decoders.
pub fn has_method_param(query: Option<&str>) -> bool {
    query.unwrap_or_default().split(['&', ';']).any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(name, _)| name);
        let decoded = |s: &str| -> Vec<u8> { crate::percent::decode(s.as_bytes()) };
        decoded(name).eq_ignore_ascii_case(METHOD_PARAM.as_bytes())
            || decoded(&name.replace('+', " ")).eq_ignore_ascii_case(METHOD_PARAM.as_bytes())
    })
}

#[cfg(test)]
mod tests;
