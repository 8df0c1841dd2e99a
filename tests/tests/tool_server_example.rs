//! The `agentguard-verify` crate's example tool server (this very file:
//! `agentguard-verify/examples/tool_server.rs`), behind a real agentguard:
//! built on that crate alone, it verifies the tokens the daemon mints for
//! an agent's calls, reading the daemon's JWKS over HTTPS.

use std::sync::Arc;

use super::tokens::{AGENT, TOOL, agent_call_at, jwks_url, setup};
use crate::common::text;

#[path = "../../agentguard-verify/examples/tool_server.rs"]
mod example;

#[test]
fn the_crates_example_tool_server_verifies_the_daemons_tokens() {
    let s = setup();
    let (cert, key) = s.ca.leaf_files(TOOL, s.dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = jwks_url(&s.daemon);
    let ca = s.daemon.state_dir().join("ca/ca.crt");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.10:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let origin = format!("https://{TOOL}:{port}");
    let verifier: Arc<_> = runtime
        .block_on(example::verifier("itsm", &s.issuer, &url, &ca, &origin))
        .unwrap();
    let tls = example::tls(&cert, &key).unwrap();
    runtime.spawn(example::serve(listener, tls, verifier));

    // The agent's call, with the token agentguard minted for it.
    let body = s.dir.path().join("body.json");
    std::fs::write(&body, r#"{"title":"printer on fire"}"#).unwrap();
    let out = agent_call_at(&s, "127.0.0.10", port, &body);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).ends_with("200"), "{said}");
    let answer = text(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(answer.trim_end_matches("200").trim()).unwrap();
    assert_eq!(json["agent"], AGENT, "{json}");
    assert_eq!(json["on_behalf_of"], "alice@example.org", "{json}");
    assert_eq!(json["scope"], "tickets:write", "{json}");

    // A request without agentguard's token is refused as RFC 6750 says.
    let refused = std::process::Command::new("curl")
        .args(["-sS", "-m", "10", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&s.ca.pem_path)
        .args(["--resolve", &format!("{TOOL}:{port}:127.0.0.10")])
        .args(["-H", "authorization: Bearer not.a.token", "-X", "POST"])
        .arg(format!("{origin}/reflect?dry=1"))
        .output()
        .unwrap();
    let headers = text(&refused.stdout).to_ascii_lowercase();
    assert!(
        headers.starts_with("http/1.1 401") || headers.starts_with("http/2 401"),
        "{headers}"
    );
    assert!(
        headers.contains("www-authenticate: bearer error=\"invalid_token\""),
        "{headers}"
    );
}
