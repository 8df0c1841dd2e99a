//! Unit tests of `store`.

use std::{
    collections::VecDeque,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use hyper::{
    HeaderMap, Uri,
    body::Bytes,
    header::{AUTHORIZATION, HeaderName},
};

use super::*;
use crate::{
    credentials::{SourceError, TokenError, TokenFuture, encoding::base64_decode},
    policy::{AgentPolicy, CgroupRelPath, Injection, Mode, OAuth2Source, SecretRef},
};

const CANARY: &str = "sk-canary-7f3a9c1e";

/// Records every call; answers from a script, repeating the last answer.
#[derive(Default)]
struct FakeFetcher {
    calls: Mutex<Vec<(Uri, HeaderMap, String)>>,
    answers: Mutex<VecDeque<(u16, String)>>,
    delay: Duration,
}

impl FakeFetcher {
    fn new(answers: &[(u16, &str)]) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.iter().map(|(s, b)| (*s, (*b).to_owned())).collect()),
            ..Self::default()
        })
    }

    fn calls(&self) -> Vec<(Uri, HeaderMap, String)> {
        self.calls.lock().unwrap().clone()
    }
}

impl TokenFetcher for FakeFetcher {
    fn post_form(&self, url: &Uri, headers: HeaderMap, body: String) -> TokenFuture<'_> {
        self.calls
            .lock()
            .unwrap()
            .push((url.clone(), headers, body));
        let answer = {
            let mut answers = self.answers.lock().unwrap();
            if answers.len() > 1 {
                answers.pop_front()
            } else {
                answers.front().cloned()
            }
        };
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            let (status, body) = answer.ok_or("no answer scripted")?;
            Ok((status, Bytes::from(body)))
        })
    }
}

fn secret_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn credential(id: &str, source: SecretSource) -> CredentialPolicy {
    CredentialPolicy {
        id: id.into(),
        source,
        inject: Injection::Header {
            name: HeaderName::from_static("x-api-key"),
            format: "{secret}".into(),
        },
        placeholder_env: None,
    }
}

fn policy(agents: Vec<(&str, Vec<CredentialPolicy>)>) -> PolicySet {
    PolicySet {
        agents: agents
            .into_iter()
            .map(|(name, credentials)| AgentPolicy {
                name: name.into(),
                cgroup: CgroupRelPath::parse(&format!("agentguard/{name}")).unwrap(),
                systemd_unit: None,
                mode: Mode::Enforce,
                dns: crate::policy::DnsMode::Policy,
                unix_sockets: Vec::new(),
                listen: Vec::new(),
                netns: None,
                containers: None,
                upstream_netns: crate::policy::UpstreamNetns::Agent,
                credentials,
                tools: Default::default(),
                passthrough: Vec::new(),
                limits: Default::default(),
                source: PathBuf::from(format!("/etc/agentguard/policies/{name}.toml")),
            })
            .collect(),
        version: "test".into(),
    }
}

fn oauth2(dir: &Path, client_id: &str, scope: Option<&str>) -> SecretSource {
    SecretSource::OAuth2(OAuth2Source {
        token_url: Uri::from_static("https://auth.example.com/oauth/token"),
        client_id: ValueSource::Literal(client_id.into()),
        client_secret: SecretRef::File(secret_file(dir, "client-secret", "s3cr:t/+ x\n", 0o600)),
        scope: scope.map(Into::into),
    })
}

fn oauth2_store(fetcher: Arc<FakeFetcher>) -> (CredentialStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let set = policy(vec![(
        "bot",
        vec![credential(
            "api",
            oauth2(dir.path(), "my client", Some("read write")),
        )],
    )]);
    (CredentialStore::load(&set, fetcher).unwrap(), dir)
}

#[tokio::test]
async fn file_and_env_secrets_are_loaded_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), "key", "sk-file-secret\n", 0o600);
    let set = policy(vec![
        (
            "bot",
            vec![
                credential("file", SecretSource::File(file)),
                credential("env", SecretSource::Env("PATH".into())),
            ],
        ),
        ("other", vec![]),
    ]);
    let store = CredentialStore::load(&set, FakeFetcher::new(&[])).unwrap();
    assert_eq!(
        store.secret("bot", "file").await.unwrap().expose(),
        "sk-file-secret"
    );
    assert_eq!(
        store.secret("bot", "env").await.unwrap().expose(),
        std::env::var("PATH").unwrap()
    );
    let mut known: Vec<String> = store
        .known_secrets("bot")
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    known.sort();
    let mut expected = vec!["sk-file-secret".to_owned(), std::env::var("PATH").unwrap()];
    expected.sort();
    assert_eq!(known, expected);
    assert!(store.known_secrets("other").is_empty());
    assert!(store.known_secrets("nobody").is_empty());
    assert!(!format!("{store:?}").contains("sk-file-secret"));

    assert!(matches!(
        store.secret("nobody", "file").await,
        Err(CredentialError::UnknownAgent { .. })
    ));
    // Another agent's credential is not reachable by id.
    assert!(matches!(
        store.secret("other", "file").await,
        Err(CredentialError::UnknownCredential { .. })
    ));
}

#[test]
fn every_error_is_reported_with_agent_and_id_and_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let insecure = secret_file(dir.path(), "insecure", CANARY, 0o640);
    let client_secret = secret_file(dir.path(), "client", CANARY, 0o604);
    let set = policy(vec![
        (
            "bot",
            vec![
                credential("insecure", SecretSource::File(insecure.clone())),
                credential("missing", SecretSource::File(dir.path().join("nope"))),
                credential(
                    "empty",
                    SecretSource::File(secret_file(dir.path(), "empty", "\r\n", 0o600)),
                ),
            ],
        ),
        (
            "helper",
            vec![
                credential(
                    "unset",
                    SecretSource::Env("AGENTGUARD_TEST_SURELY_UNSET_93d2".into()),
                ),
                credential(
                    "oauth",
                    SecretSource::OAuth2(OAuth2Source {
                        token_url: Uri::from_static("https://auth.example.com/token"),
                        client_id: ValueSource::Secret(SecretRef::File(dir.path().join("no-id"))),
                        client_secret: SecretRef::File(client_secret),
                        scope: None,
                    }),
                ),
            ],
        ),
    ]);
    let errors = CredentialStore::load(&set, FakeFetcher::new(&[])).unwrap_err();
    assert_eq!(errors.0.len(), 6, "{errors}");
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(!text.contains(CANARY), "{text}");
    assert!(!format!("{errors:?}").contains(CANARY));
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("agent bot: credential insecure: secret: "),
        "{first}"
    );
    assert!(first.contains(&insecure.display().to_string()), "{first}");
    assert!(first.contains("0640"), "{first}");
    assert!(
        text.contains("agent helper: credential oauth: oauth2 client id: "),
        "{text}"
    );
    assert!(
        text.contains("agent helper: credential oauth: oauth2 client secret: "),
        "{text}"
    );
    assert!(
        text.contains("AGENTGUARD_TEST_SURELY_UNSET_93d2 is not set"),
        "{text}"
    );
    assert!(matches!(
        &errors.0[2],
        CredentialError::Source {
            source: SourceError::EmptyFile { .. },
            ..
        }
    ));
}

#[tokio::test]
async fn oauth2_token_is_fetched_once_and_cached() {
    let fetcher = FakeFetcher::new(&[(
        200,
        r#"{"access_token":"tok-first","token_type":"Bearer","expires_in":3600}"#,
    )]);
    let (store, _dir) = oauth2_store(fetcher.clone());
    assert_eq!(store.token_fetches(), 0);
    assert_eq!(
        store.secret("bot", "api").await.unwrap().expose(),
        "tok-first"
    );
    assert_eq!(
        store.secret("bot", "api").await.unwrap().expose(),
        "tok-first"
    );
    assert_eq!(store.token_fetches(), 1);

    let calls = fetcher.calls();
    assert_eq!(calls.len(), 1);
    let (url, headers, body) = &calls[0];
    assert_eq!(url, "https://auth.example.com/oauth/token");
    assert_eq!(body, "grant_type=client_credentials&scope=read+write");
    // RFC 6749 §2.3.1: form-encode id and secret, then base64 "id:secret".
    let auth = &headers[AUTHORIZATION];
    assert!(auth.is_sensitive());
    let encoded = auth.to_str().unwrap().strip_prefix("Basic ").unwrap();
    assert_eq!(
        base64_decode(encoded.as_bytes()).unwrap(),
        b"my+client:s3cr%3At%2F%2B+x"
    );

    // Redaction knows the token and the client secret.
    let known: Vec<String> = store
        .known_secrets("bot")
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert!(known.contains(&"tok-first".to_owned()), "{known:?}");
    assert!(known.contains(&"s3cr:t/+ x".to_owned()), "{known:?}");
}

#[tokio::test]
async fn a_forgotten_agents_next_request_fetches_a_new_token() {
    let fetcher = FakeFetcher::new(&[
        (
            200,
            r#"{"access_token":"tok-before","token_type":"Bearer","expires_in":3600}"#,
        ),
        (
            200,
            r#"{"access_token":"tok-after","token_type":"Bearer","expires_in":3600}"#,
        ),
    ]);
    let (store, _dir) = oauth2_store(fetcher.clone());
    assert_eq!(
        store.secret("bot", "api").await.unwrap().expose(),
        "tok-before"
    );
    assert_eq!(store.forget_agent("other").await, 0);
    assert_eq!(store.forget_agent("bot").await, 1);
    assert_eq!(store.forget_agent("bot").await, 0, "nothing left to drop");
    assert_eq!(
        store.secret("bot", "api").await.unwrap().expose(),
        "tok-after"
    );
    assert_eq!(store.token_fetches(), 2);
}

#[tokio::test]
async fn oauth2_token_expiring_within_the_margin_is_renewed() {
    let fetcher = FakeFetcher::new(&[
        (
            200,
            r#"{"access_token":"tok-short","token_type":"bearer","expires_in":10}"#,
        ),
        (200, r#"{"access_token":"tok-long","token_type":"BEARER"}"#),
    ]);
    let (store, _dir) = oauth2_store(fetcher.clone());
    assert_eq!(
        store.secret("bot", "api").await.unwrap().expose(),
        "tok-short"
    );
    assert_eq!(
        store.secret("bot", "api").await.unwrap().expose(),
        "tok-long"
    );
    // No expires_in: cached for the default lifetime.
    assert_eq!(
        store.secret("bot", "api").await.unwrap().expose(),
        "tok-long"
    );
    assert_eq!(store.token_fetches(), 2);
    // Both the current and the previous token are redacted.
    let known: Vec<String> = store
        .known_secrets("bot")
        .iter()
        .map(|s| s.expose().to_owned())
        .collect();
    assert!(known.contains(&"tok-short".to_owned()) && known.contains(&"tok-long".to_owned()));
}

#[tokio::test]
async fn oauth2_refusal_reports_status_and_error_code() {
    let fetcher = FakeFetcher::new(&[(
        401,
        r#"{"error":"invalid_client","error_description":"bad secret"}"#,
    )]);
    let (store, _dir) = oauth2_store(fetcher);
    let err = store.secret("bot", "api").await.unwrap_err();
    assert!(matches!(
        &err,
        CredentialError::Token {
            source: TokenError::Rejected { status: 401, error: Some(code), .. },
            ..
        } if code == "invalid_client"
    ));
    let msg = err.to_string();
    assert!(msg.starts_with("agent bot: credential api: "), "{msg}");
    assert!(
        msg.contains("401") && msg.contains("invalid_client"),
        "{msg}"
    );
}

#[tokio::test]
async fn oauth2_unusable_answers_are_refused_without_echoing_them() {
    for (status, body) in [
        (200, r#"{"access_token":"tok-mac","token_type":"mac"}"#),
        (200, r#"{"token_type":"bearer"}"#),
        (
            200,
            r#"{"access_token":"tok-x","token_type":"bearer","expires_in":"soon"}"#,
        ),
        (200, "tok-not-json"),
        // An echoing server must not get the client secret into the log.
        (400, r#"{"error":"s3cr:t/+ x"}"#),
    ] {
        let (store, _dir) = oauth2_store(FakeFetcher::new(&[(status, body)]));
        let msg = store.secret("bot", "api").await.unwrap_err().to_string();
        assert!(!msg.contains("tok-") && !msg.contains("s3cr"), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_fetch() {
    let fetcher = Arc::new(FakeFetcher {
        answers: Mutex::new(VecDeque::from([(
            200,
            r#"{"access_token":"tok-shared","token_type":"bearer","expires_in":3600}"#.into(),
        )])),
        delay: Duration::from_millis(100),
        ..FakeFetcher::default()
    });
    let (store, _dir) = oauth2_store(fetcher);
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.secret("bot", "api").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().expose(), "tok-shared");
    }
    assert_eq!(store.token_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_failure() {
    let fetcher = Arc::new(FakeFetcher {
        answers: Mutex::new(VecDeque::from([(503, String::new())])),
        delay: Duration::from_millis(300),
        ..FakeFetcher::default()
    });
    let (store, _dir) = oauth2_store(fetcher);
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.secret("bot", "api").await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_err());
    }
    assert_eq!(store.token_fetches(), 1);
    // A later caller tries again.
    assert!(store.secret("bot", "api").await.is_err());
    assert_eq!(store.token_fetches(), 2);
}

/// An agent whose secrets are all read at load has one redactor, shared by
/// every response without a token of its own; a minted token gets one of
/// its own that cuts both.
#[test]
fn an_agent_with_fixed_secrets_shares_one_redactor() {
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(dir.path(), "key", "sk-fixed-secret\n", 0o600);
    let set = policy(vec![
        ("bot", vec![credential("file", SecretSource::File(file))]),
        ("bare", vec![]),
    ]);
    let store = CredentialStore::load(&set, FakeFetcher::new(&[])).unwrap();
    let first = store.redactor("bot", &[]).unwrap();
    assert!(Arc::ptr_eq(&first, &store.redactor("bot", &[]).unwrap()));
    assert_eq!(first.redact(b"k=sk-fixed-secret").unwrap().1, 1);
    let token = Secret::new("eyJ.minted-token-sig".into());
    let with_token = store.redactor("bot", std::slice::from_ref(&token)).unwrap();
    assert!(!Arc::ptr_eq(&first, &with_token));
    assert_eq!(
        with_token
            .redact(b"k=sk-fixed-secret t=eyJ.minted-token-sig")
            .unwrap()
            .1,
        2
    );
    // Nothing to look for: none, shared or not.
    assert!(store.redactor("bare", &[]).is_none());
    assert!(store.redactor("nobody", &[]).is_none());
}

/// An OAuth2 agent's tokens change with each refresh: its redactor is
/// shared while they stay, and made again from the secrets known once a
/// token is fetched.
#[tokio::test]
async fn an_agent_with_fetched_tokens_gets_a_redactor_of_its_current_secrets() {
    let fetcher = FakeFetcher::new(&[(
        200,
        r#"{"access_token":"tok-fetched-1","token_type":"Bearer","expires_in":3600}"#,
    )]);
    let (store, _dir) = oauth2_store(fetcher);
    let before = store.redactor("bot", &[]).unwrap();
    assert!(Arc::ptr_eq(&before, &store.redactor("bot", &[]).unwrap()));
    assert!(before.redact(b"tok-fetched-1").is_none());
    store.secret("bot", "api").await.unwrap();
    let after = store.redactor("bot", &[]).unwrap();
    assert!(!Arc::ptr_eq(&before, &after));
    assert_eq!(after.redact(b"t=tok-fetched-1").unwrap().1, 1);
    assert!(Arc::ptr_eq(&after, &store.redactor("bot", &[]).unwrap()));
}
