use std::time::Duration;

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
    let a_task = tokio::spawn(async move { a.until_revoked("a", forever()).await });
    let b_task = tokio::spawn(async move { b.until_revoked("b", forever()).await });
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
    assert_eq!(r.until_revoked("a", async { 1 }).await, None);
    assert_eq!(r.until_revoked("b", async { 2 }).await, Some(2));
    r.restore("a").unwrap();
    assert_eq!(r.until_revoked("a", async { 3 }).await, Some(3));
    b_task.abort();
}
