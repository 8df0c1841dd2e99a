use super::*;

fn request(agent: &str, pid: u32, hash: &str, timeout: Duration) -> HeldRequest {
    HeldRequest {
        binding: Binding {
            agent: agent.into(),
            pid,
            request_hash: hash.into(),
        },
        exe: Some("/usr/bin/curl".into()),
        uid: 1000,
        tool: "github.merge".into(),
        method: "PUT".into(),
        url: "https://api.github.com/repos/o/r/pulls/1/merge".into(),
        body: hyper::body::Bytes::from_static(b"{\"merge_method\":\"squash\"}"),
        intent: Some("merge the fix".into()),
        on_behalf_of: None,
        timeout,
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn an_approval_reaches_its_request_once() {
    let q = Arc::new(Approvals::default());
    let held = q.hold(request("a", 7, "h1", LONG)).unwrap();
    let id = held.id().to_owned();
    let view = q.get(&id).unwrap();
    assert_eq!(
        (view.agent.as_str(), view.pid, view.request_hash.as_str()),
        ("a", 7, "h1")
    );
    assert_eq!(view.body_preview, "{\"merge_method\":\"squash\"}");
    q.approve(&id, "alice", Some("h1")).unwrap();
    assert_eq!(
        held.wait().await,
        Verdict::Approved {
            by: "alice".into(),
            binding: Binding {
                agent: "a".into(),
                pid: 7,
                request_hash: "h1".into()
            }
        }
    );
    // Spent: it cannot be used again, for this request or another.
    assert_eq!(
        q.approve(&id, "alice", None),
        Err(ApprovalError::NotPending(id.clone()))
    );
    assert!(q.list().is_empty());
}

#[tokio::test]
async fn an_approver_who_saw_another_request_is_refused() {
    let q = Arc::new(Approvals::default());
    let held = q.hold(request("a", 7, "h1", LONG)).unwrap();
    let id = held.id().to_owned();
    let err = q.approve(&id, "alice", Some("h2")).unwrap_err();
    assert!(matches!(err, ApprovalError::HashMismatch { .. }), "{err}");
    // Still waiting, for a decision about what it really is.
    assert!(q.get(&id).is_some());
    q.deny(&id, "bob", "not today", Some("h1")).unwrap();
    assert_eq!(
        held.wait().await,
        Verdict::Denied {
            by: "bob".into(),
            reason: "not today".into()
        }
    );
}

#[tokio::test]
async fn a_request_waits_no_longer_than_its_timeout() {
    let q = Arc::new(Approvals::default());
    let held = q
        .hold(request("a", 7, "h1", Duration::from_millis(50)))
        .unwrap();
    let id = held.id().to_owned();
    assert_eq!(
        held.wait().await,
        Verdict::TimedOut {
            after: Duration::from_millis(50)
        }
    );
    // Gone from the queue: too late to approve.
    assert_eq!(
        q.approve(&id, "alice", None),
        Err(ApprovalError::NotPending(id))
    );
}

#[tokio::test]
async fn an_abandoned_request_leaves_the_queue() {
    let q = Arc::new(Approvals::default());
    let held = q.hold(request("a", 7, "h1", LONG)).unwrap();
    let id = held.id().to_owned();
    drop(held);
    assert!(q.get(&id).is_none());
    assert!(q.approve(&id, "alice", None).is_err());
}

#[tokio::test]
async fn a_request_whose_agent_goes_is_withdrawn_and_cannot_be_approved() {
    let q = Arc::new(Approvals::default());
    let held = q.hold(request("a", 7, "h1", LONG)).unwrap();
    let id = held.id().to_owned();
    assert_eq!(held.wait_unless(async {}).await, Verdict::Withdrawn);
    assert!(q.get(&id).is_none());
    assert_eq!(
        q.approve(&id, "alice", None),
        Err(ApprovalError::NotPending(id))
    );
}

#[tokio::test]
async fn a_verdict_given_before_the_agent_goes_stands() {
    let q = Arc::new(Approvals::default());
    let held = q.hold(request("a", 7, "h1", LONG)).unwrap();
    let id = held.id().to_owned();
    // The verdict lands after the wait last looked and before the agent's
    // going is acted on: the race the queue's lock settles.
    let approver = q.clone();
    let gone = async move {
        approver.deny(&id, "bob", "not now", None).unwrap();
    };
    assert_eq!(
        held.wait_unless(gone).await,
        Verdict::Denied {
            by: "bob".into(),
            reason: "not now".into()
        }
    );
}

#[tokio::test]
async fn a_request_is_held_while_its_agent_stays() {
    let q = Arc::new(Approvals::default());
    let held = q
        .hold(request("a", 7, "h1", Duration::from_millis(50)))
        .unwrap();
    assert_eq!(
        held.wait_unless(std::future::pending()).await,
        Verdict::TimedOut {
            after: Duration::from_millis(50)
        }
    );
}

#[test]
fn the_queue_is_bounded_per_agent_and_in_total() {
    let q = Arc::new(Approvals::default());
    let mut held = Vec::new();
    for _ in 0..MAX_HELD_PER_AGENT {
        held.push(q.hold(request("a", 7, "h", LONG)).unwrap());
    }
    assert_eq!(
        q.hold(request("a", 7, "h", LONG)).err(),
        Some(ApprovalError::AgentFull {
            agent: "a".into(),
            max: MAX_HELD_PER_AGENT
        })
    );
    // Another agent still has room...
    let mut n = 0;
    while held.len() < MAX_HELD_TOTAL {
        held.push(q.hold(request(&format!("b{n}"), 8, "h", LONG)).unwrap());
        n += 1;
    }
    // ...until the total is reached.
    assert_eq!(
        q.hold(request("c", 9, "h", LONG)).err(),
        Some(ApprovalError::TotalFull {
            max: MAX_HELD_TOTAL
        })
    );
    held.pop();
    assert!(q.hold(request("c", 9, "h", LONG)).is_ok());
}

#[tokio::test]
async fn revoking_an_agent_denies_only_its_requests() {
    let q = Arc::new(Approvals::default());
    let a = q.hold(request("a", 7, "h1", LONG)).unwrap();
    let b = q.hold(request("b", 8, "h2", LONG)).unwrap();
    assert_eq!(q.deny_agent("a", "alice", "compromised").len(), 1);
    assert_eq!(
        a.wait().await,
        Verdict::Revoked {
            by: "alice".into(),
            reason: "compromised".into()
        }
    );
    assert_eq!(q.list().len(), 1);
    assert_eq!(q.list()[0].id, b.id());
}

fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}

/// What a held request dropped mid-wait reported.
type Told = Arc<std::sync::Mutex<Vec<Verdict>>>;

/// A request held in a fresh queue, its id, and what it reports should its
/// wait be dropped.
fn held_and_told() -> (Arc<Approvals>, Held, String, Told) {
    let q = Arc::new(Approvals::default());
    let mut held = q.hold(request("a", 7, "h1", LONG)).unwrap();
    let id = held.id().to_owned();
    let told = Told::default();
    held.on_abandoned({
        let told = told.clone();
        move |verdict| told.lock().unwrap().push(verdict)
    });
    (q, held, id, told)
}

#[tokio::test]
async fn a_verdict_sent_to_a_wait_dropped_before_it_read_it_is_reported() {
    let (q, held, id, told) = held_and_told();
    // Polled once (the request waits), approved, then dropped before the
    // wait is polled again: an HTTP/2 stream reset at that moment.
    let mut wait = Box::pin(held.wait());
    assert!(poll_once(wait.as_mut()).is_pending());
    q.approve(&id, "alice", None).unwrap();
    assert!(told.lock().unwrap().is_empty());
    drop(wait);
    assert_eq!(
        *told.lock().unwrap(),
        [Verdict::Approved {
            by: "alice".into(),
            binding: Binding {
                agent: "a".into(),
                pid: 7,
                request_hash: "h1".into(),
            },
        }]
    );
}

#[tokio::test]
async fn a_wait_dropped_without_a_verdict_is_reported_withdrawn() {
    let (q, held, id, told) = held_and_told();
    let mut wait = Box::pin(held.wait());
    assert!(poll_once(wait.as_mut()).is_pending());
    drop(wait);
    assert_eq!(*told.lock().unwrap(), [Verdict::Withdrawn]);
    assert!(q.approve(&id, "alice", None).is_err());
}

#[tokio::test]
async fn a_wait_that_ended_reports_nothing_when_dropped() {
    let (q, held, id, told) = held_and_told();
    q.deny(&id, "bob", "no", None).unwrap();
    assert_eq!(
        held.wait().await,
        Verdict::Denied {
            by: "bob".into(),
            reason: "no".into()
        }
    );
    assert!(told.lock().unwrap().is_empty());
}
