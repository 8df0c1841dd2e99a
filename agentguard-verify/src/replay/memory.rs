//! The replay store in the process's memory.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::Mutex,
};

use super::{BoxFuture, ReplayError, ReplayStore, Spend};

/// Enough for ~3,000 calls a second at the longest token lifetime.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

/// Seen `jti`s with the last second their tokens verify in, bounded to
/// `capacity` unexpired ones ([`Spend::Full`] beyond).
#[derive(Debug)]
pub struct MemoryReplayStore {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashMap<String, u64>,
    /// (last valid second, jti), soonest first.
    expiries: BinaryHeap<Reverse<(u64, String)>>,
}

impl Inner {
    fn forget_expired(&mut self, now: u64) {
        // Inclusive: in second `last_valid` the token still verifies, so
        // forgetting its jti then would let it be used twice.
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at >= now {
                break;
            }
            if let Some(Reverse((at, jti))) = self.expiries.pop()
                && self.seen.get(&jti) == Some(&at)
            {
                self.seen.remove(&jti);
            }
        }
    }
}

impl MemoryReplayStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// [`ReplayStore::spend`], without the future.
    pub fn spend_now(&self, jti: &str, last_valid: u64, now: u64) -> Spend {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.forget_expired(now);
        if inner.seen.contains_key(jti) {
            return Spend::Replayed;
        }
        if inner.seen.len() >= self.capacity {
            return Spend::Full;
        }
        inner.seen.insert(jti.to_owned(), last_valid);
        inner.expiries.push(Reverse((last_valid, jti.to_owned())));
        Spend::Fresh
    }

    /// [`ReplayStore::seen`], without the future.
    pub fn seen_now(&self, jti: &str, now: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.forget_expired(now);
        inner.seen.contains_key(jti)
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl ReplayStore for MemoryReplayStore {
    fn spend<'a>(
        &'a self,
        jti: &'a str,
        last_valid: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Spend, ReplayError>> {
        Box::pin(std::future::ready(Ok(self.spend_now(jti, last_valid, now))))
    }

    fn seen<'a>(&'a self, jti: &'a str, now: u64) -> BoxFuture<'a, Result<bool, ReplayError>> {
        Box::pin(std::future::ready(Ok(self.seen_now(jti, now))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_refused_until_it_expires() {
        let c = MemoryReplayStore::new(10);
        assert_eq!(c.spend_now("a", 100, 50), Spend::Fresh);
        assert_eq!(c.spend_now("a", 100, 60), Spend::Replayed);
        assert_eq!(c.spend_now("b", 100, 60), Spend::Fresh);
        // After its last valid second it is forgotten (the token itself is
        // then refused as expired).
        assert_eq!(c.spend_now("c", 300, 101), Spend::Fresh);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_jti_is_remembered_through_its_last_valid_second() {
        let c = MemoryReplayStore::new(10);
        assert_eq!(c.spend_now("a", 100, 90), Spend::Fresh);
        // Second 100 is the last in which its token verifies.
        assert_eq!(c.spend_now("a", 100, 100), Spend::Replayed);
        assert!(c.seen_now("a", 100));
        // From second 101 its token is refused as expired: forgotten.
        assert_eq!(c.spend_now("b", 200, 101), Spend::Fresh);
        assert_eq!(c.len(), 1);
        assert!(!c.seen_now("a", 101));
    }

    #[test]
    fn memory_is_bounded_and_fails_closed() {
        let c = MemoryReplayStore::new(2);
        assert_eq!(c.spend_now("a", 100, 0), Spend::Fresh);
        assert_eq!(c.spend_now("b", 200, 0), Spend::Fresh);
        assert_eq!(c.spend_now("c", 200, 0), Spend::Full);
        // Nothing was dropped early.
        assert_eq!(c.spend_now("a", 100, 1), Spend::Replayed);
        // Expiry frees room.
        assert_eq!(c.spend_now("c", 200, 101), Spend::Fresh);
        assert_eq!(c.spend_now("b", 200, 101), Spend::Replayed);
    }
}
