//! The MCP headers that mirror the body (SEP-2243, MCP 2026-07-28):
//! `Mcp-Method` (the JSON-RPC method), `Mcp-Name` (`params.name` of
//! `tools/call` and `prompts/get`, `params.uri` of `resources/read`) and
//! `Mcp-Param-{Name}` (tool arguments the tool's schema marks with
//! `x-mcp-header`). Load balancers and servers may act on the headers while
//! agentguard decides on the body, so they must agree, else the request is
//! refused (the SEP's `HeaderMismatch`, JSON-RPC error -32001, HTTP 400).

use base64::Engine as _;
use hyper::HeaderMap;
use serde_json::Value;

use super::{Body, Message, MessageKind, TargetKind};

pub const MCP_METHOD: &str = "mcp-method";
pub const MCP_NAME: &str = "mcp-name";
pub const MCP_PARAM_PREFIX: &str = "mcp-param-";

/// Why the headers and the body disagree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header mismatch: {0}")]
pub struct HeaderMismatch(pub String);

/// Checks the MCP headers of a POST against its parsed body. Clients of
/// revisions before SEP-2243 send none of them, which is accepted; a client
/// that sends `Mcp-Method` must also send `Mcp-Name` where the method names
/// something, as the SEP requires.
pub fn check(headers: &HeaderMap, body: &Body) -> Result<(), HeaderMismatch> {
    let method = single(headers, MCP_METHOD)?;
    let name = single(headers, MCP_NAME)?;
    let params: Vec<(&str, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(MCP_PARAM_PREFIX))
        .map(|(k, v)| {
            let text = visible_ascii(v.as_bytes())
                .ok_or_else(|| mismatch(format!("{k} has characters outside visible ASCII")))?;
            Ok((
                k.as_str(),
                decode(text).map_err(|e| mismatch(format!("{k}: {e}")))?,
            ))
        })
        .collect::<Result<_, HeaderMismatch>>()?;
    if method.is_none() && name.is_none() && params.is_empty() {
        return Ok(());
    }
    // The headers describe one message; a batch has no single method.
    let Body::Single(message) = body else {
        return Err(mismatch("MCP headers on a batch".into()));
    };
    if let Some(header) = method {
        let text = visible_ascii(header)
            .ok_or_else(|| mismatch("Mcp-Method is not visible ASCII".into()))?;
        match &message.method {
            Some(m) if m == text => {}
            Some(m) => {
                return Err(mismatch(format!(
                    "Mcp-Method {text:?} does not match the body's method {m:?}"
                )));
            }
            None => return Err(mismatch("Mcp-Method on a response".into())),
        }
    }
    let named = message
        .target
        .as_ref()
        // completion/complete names its prompt or resource inside ref, and
        // the SEP mirrors only the three methods below.
        .filter(|_| {
            matches!(
                message.method.as_deref(),
                Some("tools/call" | "prompts/get" | "resources/read")
            )
        });
    match (name, named) {
        (Some(header), Some(target)) => {
            let text = visible_ascii(header)
                .ok_or_else(|| mismatch("Mcp-Name is not visible ASCII".into()))?;
            let value = decode(text).map_err(|e| mismatch(format!("Mcp-Name: {e}")))?;
            if value != target.name {
                return Err(mismatch(format!(
                    "Mcp-Name {value:?} does not match the body's {} {:?}",
                    target.kind.as_str(),
                    target.name
                )));
            }
        }
        (Some(_), None) => {
            return Err(mismatch(format!(
                "Mcp-Name on {}, which names nothing",
                message.method.as_deref().unwrap_or("a response")
            )));
        }
        (None, Some(_)) if method.is_some() => {
            return Err(mismatch(format!(
                "Mcp-Name is missing for {}",
                message.method.as_deref().unwrap_or_default()
            )));
        }
        (None, _) => {}
    }
    check_params(message, &params)
}

/// `Mcp-Param-*` only come with `tools/call`. agentguard does not hold the
/// tool's schema that says which argument a header mirrors, so each value
/// must equal some primitive argument (strings as they are, numbers and
/// booleans in their JSON spelling): a header cannot bring in a value the
/// body does not have.
fn check_params(message: &Message, params: &[(&str, String)]) -> Result<(), HeaderMismatch> {
    if params.is_empty() {
        return Ok(());
    }
    let is_tool_call = message.kind == MessageKind::Request
        && message
            .target
            .as_ref()
            .is_some_and(|t| t.kind == TargetKind::Tool);
    if !is_tool_call || message.method.as_deref() != Some("tools/call") {
        return Err(mismatch("Mcp-Param headers outside tools/call".into()));
    }
    let mut values = Vec::new();
    if let Some(args) = message.arguments() {
        primitives(args, &mut values);
    }
    for (header, value) in params {
        if !values.iter().any(|v| v == value) {
            return Err(mismatch(format!(
                "{header} {value:?} matches no argument of the call"
            )));
        }
    }
    Ok(())
}

fn primitives(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Bool(b) => out.push(b.to_string()),
        Value::Null => {}
        Value::Array(items) => items.iter().for_each(|v| primitives(v, out)),
        Value::Object(map) => map.values().for_each(|v| primitives(v, out)),
    }
}

fn mismatch(reason: String) -> HeaderMismatch {
    HeaderMismatch(reason)
}

/// The header's one value; two values (or two headers) are a mismatch.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h [u8]>, HeaderMismatch> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(mismatch(format!("{name} given more than once")));
    }
    Ok(first.map(|v| v.as_bytes()))
}

/// Field values per RFC 9110 §5.5 as the SEP restricts them: visible ASCII,
/// space and tab.
fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    if bytes
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// `=?base64?...?=` carries a value that is not plain ASCII (SEP-2243,
/// "Value Encoding"); anything else is the value itself.
fn decode(text: &str) -> Result<String, String> {
    match text
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        None => Ok(text.to_owned()),
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| "invalid base64 value".to_owned())?;
            String::from_utf8(bytes).map_err(|_| "base64 value is not UTF-8".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute_sql","arguments":{"region":"us-west1","n":42,"deep":{"flag":true,"text":"Hello, 世界"}}}}"#;

    fn body(text: &str) -> Body {
        Body::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn no_headers_is_fine_and_matching_headers_are() {
        assert!(check(&HeaderMap::new(), &body(CALL)).is_ok());
        let ok = headers(&[
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "execute_sql"),
            ("Mcp-Param-Region", "us-west1"),
            ("Mcp-Param-N", "42"),
            ("Mcp-Param-Flag", "true"),
            // "Hello, 世界", base64 as the SEP spells it.
            ("Mcp-Param-Greeting", "=?base64?SGVsbG8sIOS4lueVjA==?="),
        ]);
        assert_eq!(check(&ok, &body(CALL)), Ok(()));
        let read = body(
            r#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a b"}}"#,
        );
        assert!(
            check(
                &headers(&[
                    ("mcp-method", "resources/read"),
                    ("mcp-name", "file:///a b")
                ]),
                &read
            )
            .is_ok()
        );
        let init = body(r#"{"jsonrpc":"2.0","id":3,"method":"initialize","params":{}}"#);
        assert!(check(&headers(&[("Mcp-Method", "initialize")]), &init).is_ok());
    }

    #[test]
    fn disagreeing_headers_are_refused() {
        let cases: &[&[(&str, &str)]] = &[
            &[("Mcp-Method", "tools/list")],
            &[("Mcp-Method", "tools/call"), ("Mcp-Name", "list_issues")],
            &[("Mcp-Method", "tools/call")],
            &[
                ("Mcp-Method", "tools/call"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", "execute_sql"),
            ],
            &[("Mcp-Method", "tools/call"), ("Mcp-Name", "=?base64?!!!?=")],
            &[("Mcp-Param-Region", "eu-west1")],
            &[("Mcp-Param-Region", "=?base64?not base64?=")],
        ];
        for h in cases {
            assert!(check(&headers(h), &body(CALL)).is_err(), "{h:?} accepted");
        }
        let init = body(r#"{"jsonrpc":"2.0","id":3,"method":"initialize"}"#);
        assert!(check(&headers(&[("Mcp-Name", "x")]), &init).is_err());
        assert!(check(&headers(&[("Mcp-Param-X", "x")]), &init).is_err());
        let batch = body(r#"[{"jsonrpc":"2.0","id":3,"method":"initialize"}]"#);
        assert!(check(&headers(&[("Mcp-Method", "initialize")]), &batch).is_err());
        let response = body(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#);
        assert!(check(&headers(&[("Mcp-Method", "initialize")]), &response).is_err());
        // Non-ASCII bytes in a header value.
        let mut h = HeaderMap::new();
        h.insert(
            "mcp-name",
            HeaderValue::from_bytes(b"execute_sql\xff").unwrap(),
        );
        assert!(check(&h, &body(CALL)).is_err());
    }
}
