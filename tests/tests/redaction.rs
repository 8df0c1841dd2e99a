//! Nothing an agent reads contains a bound secret, in any form: an
//! upstream that echoes the injected credential back raw, base64 at every
//! alignment (and inside HTTP Basic), percent-encoded, JSON-escaped or as
//! hex; in headers, in bodies of any type and length, split across chunks,
//! HTTP/2 frames and SSE frames; compressed; or in WebSocket frames. Each
//! agent's output is searched by decoding (percent, JSON, base64 at every
//! offset, hex), not by listing the forms agentguard looks for.

use std::process::Output;

use base64::Engine as _;

use crate::common::{Daemon, EchoUpstream, TestCa, require_root, text};

const AGENT: &str = "redact-agent";
const API: &str = "api.agentguard.test";

struct Setup {
    _dir: tempfile::TempDir,
    api: EchoUpstream,
    daemon: Daemon,
    secret: String,
}

const POLICY: &str = r#"
[[credential]]
id = "bearer"
source = { file = "{secret_file}" }
inject = { header = "Authorization", format = "Bearer {secret}" }

[[credential]]
id = "basic"
source = { file = "{secret_file}" }
inject = { basic = { username = "svc-user" } }

[[tool]]
name = "leak.bearer"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/leak/*"]
credential = "bearer"

[[tool]]
name = "leak.basic"
host = "api.agentguard.test"
methods = ["GET"]
paths = ["/basic/leak/*"]
credential = "basic"
"#;

fn setup() -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // Characters every encoder treats differently: '/', '+', space, HTML
    // specials, a quote, non-ASCII.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let secret = format!("agc/{}+{nanos}<&>'é~ z", std::process::id());
    let secret_file = crate::common::secret_file(dir.path(), "secret", &format!("{secret}\n"));
    let ca = TestCa::new("agentguard redaction upstream CA", dir.path());
    let api = EchoUpstream::start("127.0.0.3", API, &ca, dir.path());
    let policy = POLICY.replace("{secret_file}", &secret_file.display().to_string());
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    Setup {
        _dir: dir,
        api,
        daemon,
        secret,
    }
}

fn run(s: &Setup, cmd: &[&str]) -> Output {
    s.daemon
        .exec_resolving(AGENT, &[API], "127.0.0.3", cmd)
        .output()
        .unwrap()
}

/// Undoes percent-encoding (`+` as a space if `plus`); malformed escapes
/// stay as they are.
fn percent_decoded(text: &[u8], plus: bool) -> Vec<u8> {
    let text: Vec<u8> = if plus {
        text.iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect()
    } else {
        text.to_vec()
    };
    percent_encoding::percent_decode(&text).collect()
}

/// Undoes JSON string escapes (`\uXXXX` with surrogate pairs, `\/`, `\"`,
/// `\\`) wherever they are.
fn json_unescaped(text: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let mut units: Vec<u16> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('u') => {
                    chars.next();
                    let hex: String = chars.by_ref().take(4).collect();
                    if let Ok(unit) = u16::from_str_radix(&hex, 16) {
                        units.push(unit);
                        continue;
                    }
                    units.extend("\\u".encode_utf16().chain(hex.encode_utf16()));
                    continue;
                }
                Some(&e @ ('/' | '"' | '\\')) => {
                    chars.next();
                    units.push(e as u16);
                    continue;
                }
                _ => {}
            }
        }
        let mut buf = [0u16; 2];
        units.extend_from_slice(c.encode_utf16(&mut buf));
    }
    String::from_utf16_lossy(&units).into_bytes()
}

/// The runs of `alphabet` at least `min` long.
fn runs(text: &[u8], alphabet: impl Fn(u8) -> bool, min: usize) -> Vec<&[u8]> {
    text.split(|&b| !alphabet(b))
        .filter(|r| r.len() >= min)
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// How `text` gives `secret` away, if it does: raw, or after undoing
/// percent-encoding or JSON escapes, and then base64 (either alphabet, any
/// offset) or hex.
fn reveals(text: &[u8], secret: &str) -> Option<String> {
    let secret = secret.as_bytes();
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let decodings = [
        ("raw", text.to_vec()),
        ("percent", percent_decoded(text, false)),
        ("form", percent_decoded(text, true)),
        ("json", json_unescaped(text)),
    ];
    for (how, decoded) in decodings {
        if contains(&decoded, secret) {
            return Some(how.to_owned());
        }
        let b64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
        for run in runs(&decoded, b64, 8) {
            let std: Vec<u8> = run
                .iter()
                .map(|&b| match b {
                    b'-' => b'+',
                    b'_' => b'/',
                    b => b,
                })
                .collect();
            for offset in 0..4 {
                // Unpadded base64 may end after 2 or 3 characters of a
                // group, never after 1.
                let mut part = &std[offset..];
                if part.len() % 4 == 1 {
                    part = &part[..part.len() - 1];
                }
                if let Ok(bytes) = lenient.decode(part)
                    && contains(&bytes, secret)
                {
                    return Some(format!("{how} then base64"));
                }
            }
        }
        for run in runs(&decoded, |b| b.is_ascii_hexdigit(), 8) {
            for offset in 0..2 {
                let part = &run[offset..];
                if let Ok(bytes) = hex::decode(&part[..part.len() - part.len() % 2])
                    && contains(&bytes, secret)
                {
                    return Some(format!("{how} then hex"));
                }
            }
        }
    }
    None
}

/// Fails the test if anything in `out` (or in the daemon's log) gives the
/// secret away, and unless `out` shows redaction at work.
fn assert_clean(s: &Setup, what: &str, out: &[u8]) {
    if let Some(how) = reveals(out, &s.secret) {
        panic!(
            "{what}: the agent could read the secret ({how}):\n{}",
            String::from_utf8_lossy(out)
        );
    }
    assert!(
        contains(out, b"[redacted]"),
        "{what}: nothing was redacted:\n{}",
        String::from_utf8_lossy(out)
    );
    assert!(
        reveals(s.daemon.log().as_bytes(), &s.secret).is_none(),
        "the secret is in the daemon log"
    );
}

#[test]
fn the_oracle_finds_every_form_the_upstream_sends() {
    // Guards the test itself: unredacted, each line of the upstream's
    // echo gives the secret away.
    let secret = "agc/1+2<&>'é~ z";
    let text = crate::common::echo_upstream_leak_text(&format!("Bearer {secret}"));
    for line in text.lines() {
        assert!(reveals(line.as_bytes(), secret).is_some(), "{line}");
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("svc-user:{secret}"));
    assert!(reveals(basic.as_bytes(), secret).is_some());
    assert!(reveals(b"nothing [redacted] here", secret).is_none());
}

#[test]
fn echoed_secrets_never_reach_the_agent_from_headers_or_bodies() {
    let s = setup();
    for prefix in ["", "/basic"] {
        for (route, flags) in [
            ("/leak/headers", &["-i"][..]),
            ("/leak/encodings", &["-i"][..]),
            ("/leak/chunked", &["-i", "--http1.1"][..]),
            ("/leak/chunked", &["-i"][..]),
            ("/leak/large", &[][..]),
        ] {
            let url = s.api.url(&format!("{prefix}{route}"));
            let mut cmd = vec!["curl", "-sS", "-N", "-m", "20"];
            cmd.extend_from_slice(flags);
            cmd.push(&url);
            let out = run(&s, &cmd);
            let what = format!("{prefix}{route} {flags:?}");
            assert!(out.status.success(), "{what}: {}", text(&out.stderr));
            assert_clean(&s, &what, &out.stdout);
            if route == "/leak/large" {
                // All of it arrived: 3 MiB of filler, then the echo.
                assert!(out.stdout.len() > 3 << 20, "{what}: {}", out.stdout.len());
                assert!(out.stdout.ends_with(b"[redacted]"), "{what}");
            }
        }
    }
    // The upstream did receive the secret, in both forms.
    let heard = s.api.heard();
    let auth: Vec<_> = heard
        .iter()
        .filter_map(|h| h.header("authorization"))
        .collect();
    assert!(
        auth.contains(&format!("Bearer {}", s.secret).as_str()),
        "{auth:?}"
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("svc-user:{}", s.secret))
    );
    assert!(auth.contains(&basic.as_str()), "{auth:?}");
}

/// Reads the first event, then asks the upstream for the second: if the
/// proxy held the first back, nothing more would come (the agent times out).
const SSE_CLIENT: &str = r#"
import sys, requests
base = sys.argv[1]
r = requests.get(base + '/leak/sse', stream=True, timeout=10)
print(r.status_code, r.headers.get('content-type'))
lines = r.iter_lines(decode_unicode=False)
first = []
for line in lines:
    if not line:
        break
    first.append(line)
print('first', b''.join(first).decode('utf-8', 'replace'))
requests.get(base + '/leak/release', timeout=10)
for line in lines:
    if line:
        print('second', line.decode('utf-8', 'replace'))
"#;

#[test]
fn sse_events_flow_redacted_without_being_held() {
    let s = setup();
    let base = format!("https://{API}:{}", s.api.addr.port());
    let out = run(&s, &["python3", "-c", SSE_CLIENT, &base]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("200 text/event-stream"), "{stdout}");
    assert!(
        stdout.contains("first data: {\"token\":\"[redacted]\"}"),
        "{stdout}"
    );
    assert!(stdout.contains("second data: "), "{stdout}");
    assert_clean(&s, "sse", &out.stdout);
}

#[test]
fn compressed_replies_are_refused_not_relayed() {
    let s = setup();
    for coding in ["gzip", "deflate"] {
        let url = s.api.url(&format!("/leak/{coding}"));
        // curl asks for compression and would decode it.
        let out = run(&s, &["curl", "-sS", "-i", "--compressed", "-m", "10", &url]);
        let response = text(&out.stdout);
        assert!(response.starts_with("HTTP/2 502"), "{coding}: {response}");
        assert!(
            response.contains("\"rule\":\"upstream-unredactable\""),
            "{response}"
        );
        assert!(reveals(&out.stdout, &s.secret).is_none(), "{response}");
    }
    // agentguard asked for identity, whatever the agent did.
    for heard in s.api.heard() {
        assert_eq!(
            heard.header("accept-encoding"),
            Some("identity"),
            "{heard:?}"
        );
    }
    let events = s.daemon.wait_for_events("refusals", |e| {
        e.iter()
            .filter(|e| e["rule"] == "upstream-unredactable")
            .count()
            >= 2
    });
    assert!(
        events
            .iter()
            .filter(|e| e["rule"] == "upstream-unredactable")
            .all(|e| e["status"] == 502 && e["decision"] == "refuse")
    );
}

#[test]
fn websocket_frames_from_the_upstream_are_redacted() {
    let s = setup();
    let url = format!("wss://{API}:{}/leak/ws", s.api.addr.port());
    let script = format!(
        "const ws = new WebSocket('{url}');\n\
         ws.binaryType = 'arraybuffer';\n\
         ws.onmessage = (e) => console.log('message', typeof e.data === 'string' ? e.data : Buffer.from(e.data).toString());\n\
         ws.onclose = (e) => {{ console.log('close', e.code, e.reason); process.exit(0); }};\n\
         ws.onerror = (e) => console.error('websocket error', e.message);\n\
         setTimeout(() => {{ console.error('timed out'); process.exit(2); }}, 15000);\n"
    );
    let out = run(&s, &["node", "--experimental-websocket", "-e", &script]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout,
        "message token: [redacted] (end)\n\
         message binary: Bearer [redacted]\n\
         message {\"t\":\"[redacted]\"}\n\
         close 1000 [redacted]\n",
        "{}",
        text(&out.stderr)
    );
    assert_clean(&s, "websocket", &out.stdout);
    // No compression was offered to the upstream.
    let ws = s
        .api
        .heard()
        .into_iter()
        .find(|h| h.path == "/leak/ws")
        .unwrap();
    assert_eq!(ws.header("sec-websocket-extensions"), None, "{ws:?}");
}
