//! Entry points for the fuzz targets (`fuzz/`, `cargo xtask fuzz`): one
//! function per parser that sees bytes an agent or an upstream controls,
//! each taking the fuzzer's raw input. They live in the library, not in the
//! fuzz crate, so they reach the parsers without widening the crate's API,
//! are linted and built with everything else, and the unit test below runs
//! every seed input through them on the stable toolchain.
//!
//! Beyond "does not panic", each checks what must hold whatever the input:
//! a normalised path normalises to itself, a redacted body holds no
//! secret, a stream filtered in pieces comes out as it does whole, a DNS
//! reply passed to an agent answers the agent's question.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::OnceLock,
};

use hickory_proto::op::Message as DnsMessage;
use hyper::{
    Method, Request, Uri,
    header::{HeaderName, HeaderValue},
};

use crate::{
    credentials::{
        Redactor, Secret, StreamRedactor, find_placeholders, redact_bytes, redact_headers,
    },
    dns::sanitise,
    identity::Identity,
    mcp::{Body, ListFilter, TargetKind},
    policy::{AgentIdentity, HostPattern, PathPattern, PolicySet, RateLimiter, normalize_path},
    proxy::{
        decide::Resolutions,
        http::{ConnMeta, plan},
        sniff::{Sniffed, classify},
    },
};

/// The first bytes of a connection: ClientHello (through rustls's own
/// parser) or an HTTP request line. Classifying a prefix never contradicts
/// classifying the whole: "need more bytes" or the same kind.
pub fn sniff(data: &[u8]) {
    let whole = classify(data);
    let Some(cut) = data.first().map(|&b| usize::from(b) % (data.len() + 1)) else {
        return;
    };
    // A ClientHello complete in the prefix may be followed by records the
    // whole does not parse; an HTTP or unknown verdict stays as it was.
    match classify(&data[..cut]) {
        Some(Sniffed::PlainHttp) => assert_eq!(whole, Some(Sniffed::PlainHttp)),
        Some(Sniffed::Unknown) => assert_eq!(whole, Some(Sniffed::Unknown)),
        Some(Sniffed::Tls { .. }) => assert!(
            matches!(whole, Some(Sniffed::Tls { .. } | Sniffed::MalformedTls(_))),
            "{whole:?}"
        ),
        Some(Sniffed::MalformedTls(_)) | None => {}
    }
}

/// Lines of the input: path, path pattern, host, host pattern. The matcher
/// and the normaliser the policy decides with.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let raw = lines.next().unwrap_or_default();
    let path_pattern = lines.next().unwrap_or("/*");
    let host = lines.next().unwrap_or("api.example.com");
    let host_pattern = lines.next().unwrap_or("*.example.com");

    let _ = crate::percent::decode_strict(raw);
    if let Ok(normal) = normalize_path(raw) {
        assert_eq!(
            normalize_path(&normal).as_deref(),
            Ok(normal.as_str()),
            "normalising {raw:?} twice"
        );
        assert!(
            !normal.split('/').any(|s| s == "." || s == ".."),
            "{raw:?} normalised to {normal:?}"
        );
        if let Ok(pattern) = PathPattern::parse(path_pattern) {
            let _ = pattern.matches(&normal);
        }
    }
    if let Ok(pattern) = HostPattern::parse(host_pattern) {
        let _ = pattern.matches(host);
    }
}

/// A policy file's text, as the loader reads it.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::policy::check_text(Path::new("fuzz.toml"), text);
}

/// A DNS message from an agent (first half) and an upstream's reply to it
/// (second half), through the resolver's sanitiser. The first byte says where the request ends.
pub fn dns(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (asked, answered) = rest.split_at(usize::from(split) % (rest.len() + 1));
    let Ok(request) = DnsMessage::from_vec(asked) else {
        return;
    };
    let Ok(question) = sanitise::question(&request) else {
        return;
    };
    let upstream = sanitise::upstream_query(&request, question, 0x5a5a);
    let _ = upstream.to_vec();
    let Ok(reply) = DnsMessage::from_vec(answered) else {
        return;
    };
    for transport in ["udp", "tcp"] {
        if let Ok(bytes) = sanitise::agent_reply(&request, 0x5a5a, &reply, transport) {
            let back = DnsMessage::from_vec(&bytes).expect("a reply agentguard wrote parses");
            assert_eq!(back.id(), request.id());
            assert_eq!(back.queries(), request.queries());
        }
    }
}

/// A request head as an agent sends it (request line, then header lines),
/// planned against a fixed policy: the checks, the path, the tool match.
pub fn http_head(data: &[u8]) {
    let Some(req) = request_head(data) else {
        return;
    };
    let _ = find_placeholders(&req);
    let req = Request::from_parts(req, ());
    // The first byte picks the connection: TLS (with the SNI the Host
    // names, or another) or plain HTTP.
    let sni = match data.first().map(|b| b % 3) {
        Some(0) => Some("api.example.com"),
        Some(1) => Some("public.example.com"),
        _ => None,
    };
    let meta = ConnMeta {
        identity: Identity {
            agent: "bot".into(),
            cgroup: "agentguard/bot".into(),
            cgroup_id: 1,
            pid: 1,
            tid: 1,
            uid: 1000,
            gid: 1000,
            comm: "fuzz".into(),
            socket_family: "ipv4",
            exe: None,
            container: None,
        },
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        dst: SocketAddr::from(([127, 0, 0, 5], if sni.is_some() { 443 } else { 80 })),
        sni: sni.map(str::to_owned),
        dial: crate::netns::Dial::Host,
        place: std::sync::Arc::new(crate::proxy::limits::Held::detached()),
        agent_socket: None,
        on_behalf_of: None,
    };
    let limiter = RateLimiter::new();
    let caller = plan::Caller {
        identity: &AgentIdentity::from(&meta.identity),
        on_behalf_of: None,
        intent: None,
        now: std::time::SystemTime::UNIX_EPOCH,
        limiter: &limiter,
    };
    let p = plan::plan(&req, &meta, head_policy(), &Resolved, &caller);
    if let plan::Action::Forward(forward) = p.action {
        assert_eq!(
            normalize_path(&forward.path).as_deref(),
            Ok(forward.path.as_str())
        );
        assert!(
            forward.credential.is_none() || sni.is_some(),
            "a credential over plain HTTP"
        );
    }
}

/// A request head (as for [`http_head`]) through the placeholder scanner:
/// every id it reports is one a credential could have, from a place it
/// names.
pub fn placeholder(data: &[u8]) {
    let Some(parts) = request_head(data) else {
        return;
    };
    for (location, id) in find_placeholders(&parts) {
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "id {id:?}"
        );
        assert!(
            location == "path" || location == "query" || location.starts_with("header "),
            "location {location:?}"
        );
    }
}

/// A request head's parts, built with the validity checks hyper applies:
/// `METHOD TARGET` on the first line, `name: value` on each next.
fn request_head(data: &[u8]) -> Option<hyper::http::request::Parts> {
    let data = data.get(1..)?;
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next()?;
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let mut words = first.splitn(3, |&b| b == b' ');
    let method = Method::from_bytes(words.next()?).ok()?;
    let target = words.next()?;
    let uri = Uri::try_from(target).ok()?;
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

const HEAD_POLICY: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[credential]]
id = "api-key"
source = { env = "AGENTGUARD_FUZZ_UNSET_KEY" }
inject = { header = "x-api-key" }

[[tool]]
name = "api"
host = "api.example.com"
port = 443
methods = ["GET", "POST"]
paths = ["/v1/*", "/v2/tickets/*"]
credential = "api-key"

[[tool]]
name = "public"
host = "*.example.com"
methods = ["GET"]
paths = ["/*"]
"#;

fn head_policy() -> &'static PolicySet {
    static POLICY: OnceLock<PolicySet> = OnceLock::new();
    POLICY.get_or_init(|| {
        let agent = crate::policy::check_text(Path::new("bot.toml"), HEAD_POLICY)
            .expect("the fuzz policy loads");
        PolicySet {
            agents: vec![agent],
            version: "fuzz".into(),
        }
    })
}

/// The resolver gave 127.0.0.5 for public.example.com, nothing else.
struct Resolved;

impl Resolutions for Resolved {
    fn resolved_to(&self, _agent: &str, name: &str, ip: IpAddr) -> bool {
        name == "public.example.com" && ip == IpAddr::from([127, 0, 0, 5])
    }
}

/// Secrets for the redaction target; neither contains a byte of the
/// `[redacted]` marker, so a replacement cannot make one appear.
const SECRETS: [&str; 2] = ["sk-canary-7f3a9c1e", "tok-1234"];

fn secrets() -> Vec<Secret> {
    SECRETS
        .iter()
        .map(|s| Secret::new((*s).to_owned()))
        .collect()
}

/// An upstream's response body and headers: afterwards, no secret is in
/// either.
pub fn redact(data: &[u8]) {
    let secrets = secrets();
    let contains = |hay: &[u8]| {
        SECRETS
            .iter()
            .any(|s| hay.windows(s.len()).any(|w| w == s.as_bytes()))
    };
    match redact_bytes(data, &secrets) {
        Some(out) => assert!(!contains(&out), "a secret survived redaction"),
        None => assert!(!contains(data), "a secret was not found"),
    }
    let mut headers = hyper::HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(hyper::header::SERVER, value);
        }
    }
    let redactor = Redactor::new(&secrets, &[]).expect("secrets to redact");
    redact_headers(&mut headers, &redactor);
    for value in headers.values() {
        assert!(!contains(value.as_bytes()), "a secret survived in a header");
    }
    // The same body streamed in two pieces, cut where its first byte says:
    // no secret survives across the cut either.
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut stream = StreamRedactor::new(redactor);
    let mut out = stream
        .push(hyper::body::Bytes::copy_from_slice(&data[..cut]))
        .to_vec();
    out.extend_from_slice(&stream.push(hyper::body::Bytes::copy_from_slice(&data[cut..])));
    out.extend_from_slice(&stream.finish());
    assert!(!contains(&out), "a secret survived streamed redaction");
}

/// A JSON-RPC (MCP) POST body, then the same bytes as the response to it.
pub fn jsonrpc(data: &[u8]) {
    let Ok(body) = Body::parse(data) else {
        return;
    };
    for message in body.messages() {
        let _ = message.arguments();
    }
    if let Some(filter) = ListFilter::for_body(&body, allowed) {
        let _ = filter.filter_json(data);
    }
}

/// The policy of the list filters: names of even length are allowed.
fn allowed(_kind: TargetKind, name: &str) -> bool {
    name.len().is_multiple_of(2)
}

/// An SSE response to a `tools/list` request, filtered as it streams. The
/// first byte says where the stream is cut in two: the output must be the
/// same as for the stream in one piece.
pub fn sse(data: &[u8]) {
    static REQUEST: OnceLock<Body> = OnceLock::new();
    let request = REQUEST.get_or_init(|| {
        Body::parse(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":"p","method":"prompts/list"}]"#)
            .expect("a list request")
    });
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) % (stream.len() + 1);
    let whole = {
        let mut f = ListFilter::for_body(request, allowed)
            .expect("list requests")
            .into_sse();
        f.push(stream).map(|mut out| {
            out.extend(f.finish());
            out
        })
    };
    let pieces = {
        let mut f = ListFilter::for_body(request, allowed)
            .expect("list requests")
            .into_sse();
        f.push(&stream[..cut]).and_then(|mut out| {
            out.extend(f.push(&stream[cut..])?);
            out.extend(f.finish());
            Ok(out)
        })
    };
    assert_eq!(whole, pieces, "cut at {cut}");
}

#[cfg(test)]
mod tests;
