//! Tests of actions on running agents.

use std::time::Duration;

use hyper::{HeaderMap, Uri};
use rusqlite::Connection;

use super::*;
use crate::{
    audit::{self, AuditConfig, Permit, WriterConfig, anchor::AnchorConfig},
    cgroup::CgroupRoot,
    credentials::{CredentialStore, TokenFetcher, TokenFuture},
    identity::AgentTable,
    live::LiveState,
    policy::load_path,
};

const POLICY: &str = r#"
[agent]
name = "bot"
cgroup = "agentguard/bot"

[[tool]]
name = "docs.read"
host = "docs.example"
methods = ["GET"]
paths = ["/*"]
"#;

/// The policy has no exchanged credential: nothing is fetched.
struct NoFetcher;

impl TokenFetcher for NoFetcher {
    fn post_form(&self, _: &Uri, _: HeaderMap, _: String) -> TokenFuture<'_> {
        Box::pin(async { Err("nothing is fetched in this test".to_owned()) })
    }
}

/// An oversight over agent `bot`, recording into a store in `state`.
fn oversight(state: &std::path::Path) -> (Arc<Oversight>, AuditSink, audit::AuditWriter) {
    let dir = state.join("policies");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("bot.toml"), POLICY).unwrap();
    let policy = load_path(&dir).unwrap();
    let credentials = CredentialStore::load(&policy, Arc::new(NoFetcher)).unwrap();
    let live = Live::new(LiveState {
        policy: Arc::new(policy),
        agents: Arc::new(AgentTable::new(CgroupRoot::discover().unwrap(), vec![])),
        credentials: Arc::new(credentials),
    });
    let cfg = AuditConfig {
        writer: WriterConfig {
            flush_interval: Duration::from_millis(20),
            batch_max: 64,
            checkpoint_every: 100,
            checkpoint_interval: Duration::from_secs(3600),
            retention: None,
            max_bytes: None,
        },
        queue: 4,
        queue_bytes: 1 << 20,
        signing_key: None,
        anchors: AnchorConfig::default(),
    };
    let (sink, writer) = audit::start(state, cfg, vec![]).unwrap();
    let oversight = Oversight::new(
        Arc::new(Approvals::default()),
        Arc::new(Revocations::load(state).unwrap()),
        Arc::new(live),
        sink.clone(),
        Arc::new(|| Ok(())),
    );
    (Arc::new(oversight), sink, writer)
}

/// Takes every place in the audit queue: a recorder now waits.
async fn fill_queue(sink: &AuditSink) -> Vec<Permit> {
    let mut places = Vec::new();
    while let Ok(place) = tokio::time::timeout(Duration::from_millis(200), sink.reserve()).await {
        places.push(place.unwrap());
        assert!(places.len() <= 4, "the queue never filled");
    }
    places
}

async fn eventually(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s");
}

/// Polls `action` once (it waits for the audit store, whose queue is
/// full), drops it as a client going away drops it, then gives the store
/// room again.
async fn go_away_from<T>(sink: &AuditSink, action: impl Future<Output = T>) {
    let places = fill_queue(sink).await;
    let mut action = Box::pin(action);
    let waker = std::task::Waker::noop();
    let polled = action
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker));
    assert!(polled.is_pending(), "the action did not wait");
    drop(action);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(places);
}

/// An operator whose client goes away while the action waits for the audit
/// store (here: a full queue) still gets the action carried out and
/// recorded: before, the revocation was applied without its event, and the
/// restoration lost its event too.
#[test]
fn an_action_whose_caller_goes_away_is_carried_out_and_recorded() {
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (oversight, sink, writer) = oversight(state.path());
    rt.block_on(async {
        go_away_from(&sink, oversight.revoke("bot", "leaked a key", "alice")).await;
        eventually(|| {
            oversight.revocations.revoked("bot").is_some() && sink.status().events_written == 1
        })
        .await;
        go_away_from(&sink, oversight.restore("bot", "alice")).await;
        eventually(|| {
            oversight.revocations.revoked("bot").is_none() && sink.status().events_written == 2
        })
        .await;
    });
    writer.shutdown(Duration::from_secs(5));
    let stored: Vec<(String, String, String)> = Connection::open(audit::db_path(state.path()))
        .unwrap()
        .prepare("SELECT rule, decision, actor FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        stored,
        [
            ("revoke".into(), "deny".into(), "alice".into()),
            ("restore".into(), "allow".into(), "alice".into()),
        ]
    );
}
