//! Tests of actions on running agents.

use std::time::Duration;

use hyper::{HeaderMap, Uri};
use rusqlite::Connection;

use super::*;
use crate::{
    audit::{
        self,
        tests::{config, eventually, fill_queue},
    },
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
    let (sink, writer) = audit::start(state, config(100), vec![]).unwrap();
    let oversight = Oversight::new(
        Arc::new(Approvals::default()),
        Arc::new(Revocations::load(state).unwrap()),
        Arc::new(live),
        sink.clone(),
        Arc::new(|| Ok(())),
    );
    (Arc::new(oversight), sink, writer)
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
        let revoked =
            || oversight.revocations.revoked("bot").is_some() && sink.status().events_written == 1;
        eventually(revoked).await;
        assert!(revoked(), "not revoked and recorded within 5 s");
        go_away_from(&sink, oversight.restore("bot", "alice")).await;
        let restored =
            || oversight.revocations.revoked("bot").is_none() && sink.status().events_written == 2;
        eventually(restored).await;
        assert!(restored(), "not restored and recorded within 5 s");
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
