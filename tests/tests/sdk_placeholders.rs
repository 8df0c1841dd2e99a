//! The official SDKs of the APIs in `policies/`, run unmodified as agents
//! holding only placeholders, under the example policies themselves (test
//! hosts and secret files substituted): each reaches a loopback stand-in
//! for its API, which answers only if it received the real key. SDKs put
//! keys in different places (`Authorization: Bearer` or `token`, `x-api-key`,
//! ...): the placeholder is replaced wherever the SDK put it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::common::{ApiRequest, Daemon, FakeApi, Handler, TestCa, ok, require_root, text};

/// The body of `policies/<file>` after its `[agent]` table (credentials,
/// tools, passthrough), with each `(from, to)` replaced: the test daemon
/// writes its own `[agent]` table (name, cgroup) before it.
fn example_policy(file: &str, substitutions: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("\n[[")
        .unwrap_or_else(|| panic!("{file} has no credential or tool"));
    let mut body = text[start..].to_owned();
    for (from, to) in substitutions {
        assert!(body.contains(from), "{file} no longer holds {from:?}");
        body = body.replace(from, to);
    }
    body
}

/// A root-owned 0600 secret file holding a fresh canary; returns (path,
/// canary).
fn canary_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let canary = format!(
        "{name}-canary-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let path = crate::common::secret_file(dir, name, &format!("{canary}\n"));
    (path, canary)
}

/// The API's answer to a request without the real key, as real APIs give
/// it.
fn unauthorized() -> (u16, String) {
    (401, r#"{"error":{"message":"invalid key"}}"#.into())
}

/// Runs `script` with python3 as `agent` (its placeholders in its
/// environment), resolving `host` to `ip`.
fn python(
    daemon: &Daemon,
    agent: &str,
    host: &str,
    ip: &str,
    script: &str,
) -> std::process::Output {
    daemon
        .exec_resolving(agent, &[host], ip, &["python3", "-c", script])
        .output()
        .unwrap()
}

/// Nothing the agent printed, and nothing the daemon logged, holds the
/// secret.
fn assert_secret_kept(daemon: &Daemon, out: &std::process::Output, secret: &str) {
    let visible = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        !visible.contains(secret),
        "the agent saw the secret:\n{visible}"
    );
    assert!(
        !daemon.log().contains(secret),
        "the secret is in the daemon log"
    );
    let events = daemon.audit_events();
    assert!(
        !format!("{events:?}").contains(secret),
        "the secret is in the audit record"
    );
}

#[test]
fn openai_sdk_with_a_placeholder_gets_the_real_key_in_authorization() {
    require_root();
    const AGENT: &str = "openai-agent";
    const HOST: &str = "api.openai.agentguard.test";
    let dir = tempfile::tempdir().unwrap();
    let (key_file, key) = canary_file(dir.path(), "openai-key");
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let expected = format!("Bearer {key}");
    let handler: Handler = Arc::new(move |r: &ApiRequest| {
        if r.header("authorization") != [expected.as_str()] {
            return unauthorized();
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/v1/models") => (
                200,
                r#"{"object":"list","data":[{"id":"gpt-test","object":"model","created":0,"owned_by":"agentguard"}]}"#.into(),
            ),
            ("POST", "/v1/chat/completions") => (
                200,
                r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"gpt-test","choices":[{"index":0,"message":{"role":"assistant","content":"hello from the fake api"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#.into(),
            ),
            _ => (404, "{}".into()),
        }
    });
    let api = FakeApi::start("127.0.0.3", HOST, &ca, handler);
    let policy = example_policy(
        "openai-agent.toml",
        &[
            (
                "/etc/agentguard/secrets/openai-key",
                key_file.display().to_string(),
            ),
            ("host = \"api.openai.com\"", format!("host = \"{HOST}\"")),
        ],
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    let script = format!(
        "import os, openai\n\
         assert os.environ['OPENAI_API_KEY'] == 'agentguard-placeholder:openai-key'\n\
         c = openai.OpenAI(base_url='{base}', max_retries=0)\n\
         print([m.id for m in c.models.list()])\n\
         r = c.chat.completions.create(model='gpt-5-mini', messages=[{{'role': 'user', 'content': 'hi'}}])\n\
         print(r.choices[0].message.content)\n\
         try:\n\
         \x20   c.files.list()\n\
         except openai.PermissionDeniedError as e:\n\
         \x20   print('refused', e.status_code)\n",
        base = api.url("/v1")
    );
    let out = python(&daemon, AGENT, HOST, "127.0.0.3", &script);
    let stdout = ok(&out);
    assert!(stdout.contains("['gpt-test']"), "{stdout}");
    assert!(stdout.contains("hello from the fake api"), "{stdout}");
    // /v1/files is no tool of the policy: refused before the upstream.
    assert!(stdout.contains("refused 403"), "{stdout}");
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|r| r.path != "/v1/files"));
    assert_secret_kept(&daemon, &out, &key);
}

#[test]
fn anthropic_sdk_gets_the_real_key_where_it_put_the_placeholder() {
    require_root();
    const AGENT: &str = "anthropic-agent";
    const HOST: &str = "api.anthropic.agentguard.test";
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = canary_file(dir.path(), "anthropic-key");
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let accepted = key.clone();
    // The API takes a key in x-api-key, or (as for its OAuth tokens) in
    // Authorization: Bearer.
    let handler: Handler = Arc::new(move |r: &ApiRequest| {
        let bearer = format!("Bearer {accepted}");
        let has_key = r.header("x-api-key") == [accepted.as_str()]
            || r.header("authorization") == [bearer.as_str()];
        if !has_key {
            return unauthorized();
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/v1/messages") => (
                200,
                r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test","content":[{"type":"text","text":"hello from the fake api"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}"#.into(),
            ),
            _ => (404, "{}".into()),
        }
    });
    let api = FakeApi::start("127.0.0.3", HOST, &ca, handler);
    let policy = example_policy(
        "anthropic-agent.toml",
        &[("host = \"api.anthropic.com\"", format!("host = \"{HOST}\""))],
    );
    // The example reads the key from the daemon's environment.
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .env("ANTHROPIC_API_KEY", &key)
        .start();
    // The SDK (2.x) sends its key as `Authorization: Bearer`, where the
    // policy names x-api-key (what curl users following the API's docs,
    // and older SDKs, send): the placeholder is replaced where the SDK put
    // it, instead of being refused as unbound, and nothing is added in
    // x-api-key.
    let script = format!(
        "import anthropic\n\
         c = anthropic.Anthropic(base_url='{base}', max_retries=0)\n\
         m = c.messages.create(model='claude-test', max_tokens=16, messages=[{{'role': 'user', 'content': 'hi'}}])\n\
         print(m.content[0].text)\n",
        base = api.url("")
    );
    let out = python(&daemon, AGENT, HOST, "127.0.0.3", &script);
    assert!(ok(&out).contains("hello from the fake api"));
    assert_secret_kept(&daemon, &out, &key);
    // A plain HTTP client with the placeholder in x-api-key.
    let script = format!(
        "import os, requests\n\
         r = requests.post('{url}', headers={{'x-api-key': os.environ['ANTHROPIC_API_KEY'], 'anthropic-version': '2023-06-01'}}, json={{'model': 'claude-test', 'max_tokens': 16, 'messages': []}}, timeout=10)\n\
         print(r.status_code)\n",
        url = api.url("/v1/messages")
    );
    let out = python(&daemon, AGENT, HOST, "127.0.0.3", &script);
    assert_eq!(ok(&out).trim(), "200");
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0].header("authorization"),
        [format!("Bearer {key}").as_str()]
    );
    assert!(seen[0].header("x-api-key").is_empty(), "{:?}", seen[0]);
    assert_eq!(seen[1].header("x-api-key"), [key.as_str()]);
    assert!(seen[1].header("authorization").is_empty());
    assert_secret_kept(&daemon, &out, &key);
}

#[test]
fn pygithub_sends_token_auth_and_gets_the_real_token() {
    require_root();
    const AGENT: &str = "github-agent";
    const HOST: &str = "api.github.agentguard.test";
    let dir = tempfile::tempdir().unwrap();
    let (token_file, token) = canary_file(dir.path(), "github-token");
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let accepted = token.clone();
    let handler: Handler = Arc::new(move |r: &ApiRequest| {
        // GitHub takes `token X` and `Bearer X`.
        let auth = r.header("authorization");
        let ok = auth == [format!("token {accepted}").as_str()]
            || auth == [format!("Bearer {accepted}").as_str()];
        if !ok {
            return (401, r#"{"message":"Bad credentials"}"#.into());
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/repos/acme/widgets") => (
                200,
                r#"{"id":1,"name":"widgets","full_name":"acme/widgets","private":false}"#.into(),
            ),
            ("POST", "/repos/acme/widgets/issues") => (
                201,
                r#"{"id":2,"number":7,"title":"agentguard test","state":"open"}"#.into(),
            ),
            _ => (404, r#"{"message":"Not Found"}"#.into()),
        }
    });
    let api = FakeApi::start("127.0.0.3", HOST, &ca, handler);
    let policy = example_policy(
        "github-agent.toml",
        &[
            (
                "/etc/agentguard/secrets/github-token",
                token_file.display().to_string(),
            ),
            ("host = \"api.github.com\"", format!("host = \"{HOST}\"")),
        ],
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    let script = format!(
        "import os, github\n\
         g = github.Github(auth=github.Auth.Token(os.environ['GITHUB_TOKEN']), base_url='{base}', retry=None)\n\
         repo = g.get_repo('acme/widgets')\n\
         print(repo.full_name)\n\
         print(repo.create_issue(title='agentguard test').number)\n\
         try:\n\
         \x20   g.get_repo('acme/secrets')\n\
         except github.GithubException as e:\n\
         \x20   print('refused', e.status)\n",
        base = api.url("")
    );
    let out = python(&daemon, AGENT, HOST, "127.0.0.3", &script);
    let stdout = ok(&out);
    assert!(stdout.contains("acme/widgets\n7\nrefused 403"), "{stdout}");
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // PyGithub's own scheme (`token`), kept, with the real token.
    assert_eq!(
        seen[0].header("authorization"),
        [format!("token {token}").as_str()]
    );
    assert_secret_kept(&daemon, &out, &token);
}

#[test]
fn slack_sdk_gets_the_oauth2_token_in_place_of_its_placeholder() {
    require_root();
    const AGENT: &str = "slack-agent";
    const HOST: &str = "slack.agentguard.test";
    const AUTH_IP: &str = "127.0.0.6";
    let dir = tempfile::tempdir().unwrap();
    let (client_secret_file, client_secret) = canary_file(dir.path(), "slack-client-secret");
    let bot_token = format!("xoxb-{client_secret}-token");
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    // The token endpoint, reached by the daemon (named by IP: the daemon
    // resolves names with the host's resolver, which tests leave alone).
    let issued = bot_token.clone();
    let auth = FakeApi::start(
        AUTH_IP,
        AUTH_IP,
        &ca,
        Arc::new(move |_: &ApiRequest| {
            (
                200,
                format!(r#"{{"access_token":"{issued}","token_type":"bearer","expires_in":3600}}"#),
            )
        }),
    );
    let accepted = bot_token.clone();
    let handler: Handler = Arc::new(move |r: &ApiRequest| {
        if r.header("authorization") != [format!("Bearer {accepted}").as_str()] {
            return (200, r#"{"ok":false,"error":"invalid_auth"}"#.into());
        }
        match r.path.as_str() {
            "/api/chat.postMessage" => (
                200,
                r#"{"ok":true,"channel":"C1","ts":"1.000001","message":{"text":"hi"}}"#.into(),
            ),
            "/api/conversations.list" => (
                200,
                r#"{"ok":true,"channels":[{"id":"C1","name":"general"}],"response_metadata":{"next_cursor":""}}"#.into(),
            ),
            _ => (404, r#"{"ok":false,"error":"unknown_method"}"#.into()),
        }
    });
    let api = FakeApi::start("127.0.0.3", HOST, &ca, handler);
    let policy = example_policy(
        "slack-agent.toml",
        &[
            (
                "https://slack.com/api/oauth.v2.access",
                auth.url("/api/oauth.v2.access"),
            ),
            (
                "/etc/agentguard/secrets/slack-client-secret",
                client_secret_file.display().to_string(),
            ),
            ("host = \"slack.com\"", format!("host = \"{HOST}\"")),
        ],
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .env("SLACK_CLIENT_ID", "agentguard-test-client")
        .start();
    let script = format!(
        "import os\nfrom slack_sdk import WebClient\n\
         assert os.environ['SLACK_BOT_TOKEN'] == 'agentguard-placeholder:slack-bot'\n\
         c = WebClient(token=os.environ['SLACK_BOT_TOKEN'], base_url='{base}')\n\
         print(c.chat_postMessage(channel='C0123ALERTS', text='hi')['ts'])\n\
         print([ch['name'] for ch in c.conversations_list()['channels']])\n",
        base = api.url("/api/")
    );
    let out = python(&daemon, AGENT, HOST, "127.0.0.3", &script);
    let stdout = ok(&out);
    assert!(stdout.contains("1.000001\n['general']"), "{stdout}");
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for r in &seen {
        assert_eq!(
            r.header("authorization"),
            [format!("Bearer {bot_token}").as_str()]
        );
    }
    // One token fetch: the client credentials grant.
    let fetches = auth.seen();
    assert_eq!(fetches.len(), 1);
    assert!(
        text(&fetches[0].body).contains("grant_type=client_credentials"),
        "{fetches:?}"
    );
    assert_secret_kept(&daemon, &out, &bot_token);
    assert_secret_kept(&daemon, &out, &client_secret);
}

#[test]
fn python_requests_gets_the_secret_in_basic_auth_and_a_query_parameter() {
    require_root();
    const AGENT: &str = "requests-agent";
    const HOST: &str = "api.plain.agentguard.test";
    let dir = tempfile::tempdir().unwrap();
    let (_, canary) = canary_file(dir.path(), "unused");
    // Characters that would split or end a query, or be read as a space,
    // if the secret were put there unencoded.
    let secret = format!("{canary}&x=1+/%#");
    let secret_file = crate::common::secret_file(dir.path(), "service-key", &format!("{secret}\n"));
    let (other_file, other) = canary_file(dir.path(), "other-key");
    let ca = TestCa::new("agentguard test upstream CA", dir.path());
    let basic = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("svc:{secret}"))
        )
    };
    // Everything but RFC 3986's unreserved characters escaped.
    const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let in_query = format!(
        "api_key={}&q=a+b",
        percent_encoding::utf8_percent_encode(&secret, ESCAPED)
    );
    let (basic_ok, query_ok) = (basic.clone(), in_query.clone());
    let handler: Handler = Arc::new(move |r: &ApiRequest| {
        let authorised = match r.path.as_str() {
            "/basic" => r.header("authorization") == [basic_ok.as_str()],
            "/query" => r.query == query_ok && r.header("authorization").is_empty(),
            _ => false,
        };
        if authorised {
            (200, r#"{"ok":true}"#.into())
        } else {
            unauthorized()
        }
    });
    let api = FakeApi::start("127.0.0.3", HOST, &ca, handler);
    // The policy names Authorization: Bearer; the client uses Basic auth
    // and a query parameter instead.
    let policy = format!(
        "[[credential]]\n\
         id = \"service-key\"\n\
         source = {{ file = \"{secret_file}\" }}\n\
         inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\
         placeholder_env = \"SERVICE_KEY\"\n\
         \n\
         [[credential]]\n\
         id = \"other-key\"\n\
         source = {{ file = \"{other_file}\" }}\n\
         inject = {{ header = \"Authorization\", format = \"Bearer {{secret}}\" }}\n\
         placeholder_env = \"OTHER_KEY\"\n\
         \n\
         [[tool]]\n\
         name = \"service\"\n\
         host = \"{HOST}\"\n\
         methods = [\"GET\"]\n\
         paths = [\"/basic\", \"/query\"]\n\
         credential = \"service-key\"\n\
         \n\
         [[tool]]\n\
         name = \"other\"\n\
         host = \"other.agentguard.test\"\n\
         methods = [\"GET\"]\n\
         paths = [\"/*\"]\n\
         credential = \"other-key\"\n",
        secret_file = secret_file.display(),
        other_file = other_file.display(),
    );
    let daemon = Daemon::builder(&[AGENT])
        .policy(&policy)
        .upstream_ca(&ca.pem_path)
        .start();
    let script = format!(
        "import os, requests\n\
         key, other = os.environ['SERVICE_KEY'], os.environ['OTHER_KEY']\n\
         print(requests.get('{base}/basic', auth=('svc', key), timeout=10).status_code)\n\
         print(requests.get('{base}/query', params={{'api_key': key, 'q': 'a b'}}, timeout=10).status_code)\n\
         r = requests.get('{base}/query', params={{'api_key': other, 'q': 'a b'}}, timeout=10)\n\
         print(r.status_code, 'placeholder' in r.text)\n",
        base = api.url("")
    );
    let out = python(&daemon, AGENT, HOST, "127.0.0.3", &script);
    assert_eq!(ok(&out), "200\n200\n403 True\n");
    // The unbound credential's placeholder never left the machine.
    let seen = api.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|r| !r.query.contains("other-key")));
    assert_secret_kept(&daemon, &out, &canary);
    assert_secret_kept(&daemon, &out, &other);
}
