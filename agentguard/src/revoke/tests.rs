use std::{pin::pin, time::Duration};

use super::*;

fn revoked(reason: &str) -> Revoked {
    Revoked {
        reason: reason.into(),
        by: "alice".into(),
        time: "2026-01-01T00:00:00.000000Z".into(),
    }
}

#[test]
fn revocations_survive_a_reload_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let r = Revocations::load(dir.path()).unwrap();
    assert!(r.revoke("a", revoked("leaked key")).unwrap());
    // Again: nothing changes, the first reason stays.
    assert!(!r.revoke("a", revoked("again")).unwrap());
    let again = Revocations::load(dir.path()).unwrap();
    assert_eq!(again.revoked("a"), Some(revoked("leaked key")));
    assert_eq!(again.revoked("b"), None);
    assert!(again.restore("a").unwrap());
    assert!(!again.restore("a").unwrap());
    assert!(Revocations::load(dir.path()).unwrap().all().is_empty());
}

#[test]
fn an_unreadable_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("revoked.json"), "{ not json").unwrap();
    let err = Revocations::load(dir.path()).err().unwrap();
    assert!(matches!(err, RevokeError::Corrupt { .. }), "{err}");
}

#[tokio::test]
async fn revoking_ends_the_agents_tasks_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let r = std::sync::Arc::new(Revocations::load(dir.path()).unwrap());
    let forever = || std::future::pending::<()>();
    let (a, b) = (r.clone(), r.clone());
    let a_task = tokio::spawn(async move { a.until_revoked("a", pin!(forever())).await });
    let b_task = tokio::spawn(async move { b.until_revoked("b", pin!(forever())).await });
    // Both subscribed.
    for _ in 0..100 {
        if r.open_connections("a") == 1 && r.open_connections("b") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!((r.open_connections("a"), r.open_connections("b")), (1, 1));
    r.revoke("a", revoked("x")).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(1), a_task).await;
    assert_eq!(ended.unwrap().unwrap(), None, "cut short by the revocation");
    assert_eq!(r.open_connections("a"), 0);
    assert!(!b_task.is_finished());
    // A task that starts after the revocation is cut short at once; one
    // that finishes on its own returns its output.
    assert_eq!(r.until_revoked("a", pin!(async { 1 })).await, None);
    assert_eq!(r.until_revoked("b", pin!(async { 2 })).await, Some(2));
    r.restore("a").unwrap();
    assert_eq!(r.until_revoked("a", pin!(async { 3 })).await, Some(3));
    b_task.abort();
}

#[test]
fn the_kernel_plan_marks_revoked_agents_cgroups_and_clears_every_other_mark() {
    use crate::{cgroup::Cgroup, identity::GuardedAgent};
    let agent = |name: &str, id: u64| GuardedAgent {
        name: name.into(),
        cgroup: Cgroup {
            path: format!("/sys/fs/cgroup/agentguard/{name}").into(),
            id,
        },
        container: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let r = Revocations::load(dir.path()).unwrap();
    r.revoke("a", revoked("leaked key")).unwrap();
    r.revoke("gone", revoked("no longer in the policy"))
        .unwrap();
    let agents = [agent("a", 10), agent("b", 20)];

    // Nothing marked yet: a's cgroup is marked; "gone" has no cgroup.
    assert_eq!(
        kernel::plan(&agents, &r, &[]),
        kernel::Plan {
            mark: vec![10],
            clear: vec![]
        }
    );
    // Already right: nothing to do.
    assert_eq!(kernel::plan(&agents, &r, &[10]), kernel::Plan::default());
    // A reload moved a to cgroup 11: the mark moves with it; b's stray
    // mark (a crash between a restore's save and its kernel update) goes.
    let moved = [agent("a", 11), agent("b", 20)];
    assert_eq!(
        kernel::plan(&moved, &r, &[10, 20]),
        kernel::Plan {
            mark: vec![11],
            clear: vec![10, 20]
        }
    );
    // Restored: its mark is cleared.
    r.restore("a").unwrap();
    assert_eq!(
        kernel::plan(&moved, &r, &[11]),
        kernel::Plan {
            mark: vec![],
            clear: vec![11]
        }
    );
}
