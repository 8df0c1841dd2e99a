//! Refusing a token seen before: every accepted `jti` is kept through the
//! last second in which its token verifies (`exp` plus leeway), and no
//! longer.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::Mutex,
};

/// Seen `jti`s with the last second their tokens verify in. Bounded: when `capacity` unexpired tokens
/// are held, new tokens are refused rather than an entry dropped early,
/// because a dropped entry is a token that could be replayed.
#[derive(Debug)]
pub struct ReplayCache {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    Fresh,
    Replayed,
    /// The cache holds `capacity` unexpired tokens.
    Full,
}

/// Enough for ~3,000 calls a second at the longest token lifetime.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1_000_000;

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records `jti` through second `last_valid` (seconds since the epoch,
    /// inclusive) if it was not seen before.
    pub fn check(&self, jti: &str, last_valid: u64, now: u64) -> ReplayVerdict {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.forget_expired(now);
        if inner.seen.contains_key(jti) {
            return ReplayVerdict::Replayed;
        }
        if inner.seen.len() >= self.capacity {
            return ReplayVerdict::Full;
        }
        inner.seen.insert(jti.to_owned(), last_valid);
        inner.expiries.push(Reverse((last_valid, jti.to_owned())));
        ReplayVerdict::Fresh
    }

    /// Whether `jti` was recorded (and its token could still verify),
    /// without recording it.
    pub fn contains(&self, jti: &str, now: u64) -> bool {
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

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_refused_until_it_expires() {
        let c = ReplayCache::new(10);
        assert_eq!(c.check("a", 100, 50), ReplayVerdict::Fresh);
        assert_eq!(c.check("a", 100, 60), ReplayVerdict::Replayed);
        assert_eq!(c.check("b", 100, 60), ReplayVerdict::Fresh);
        // After its last valid second it is forgotten (the token itself is
        // then refused as expired).
        assert_eq!(c.check("c", 300, 101), ReplayVerdict::Fresh);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_jti_is_remembered_through_its_last_valid_second() {
        let c = ReplayCache::new(10);
        assert_eq!(c.check("a", 100, 90), ReplayVerdict::Fresh);
        // Second 100 is the last in which its token verifies.
        assert_eq!(c.check("a", 100, 100), ReplayVerdict::Replayed);
        assert!(c.contains("a", 100));
        // From second 101 its token is refused as expired: forgotten.
        assert_eq!(c.check("b", 200, 101), ReplayVerdict::Fresh);
        assert_eq!(c.len(), 1);
        assert!(!c.contains("a", 101));
    }

    #[test]
    fn memory_is_bounded_and_fails_closed() {
        let c = ReplayCache::new(2);
        assert_eq!(c.check("a", 100, 0), ReplayVerdict::Fresh);
        assert_eq!(c.check("b", 200, 0), ReplayVerdict::Fresh);
        assert_eq!(c.check("c", 200, 0), ReplayVerdict::Full);
        // Nothing was dropped early.
        assert_eq!(c.check("a", 100, 1), ReplayVerdict::Replayed);
        // Expiry frees room.
        assert_eq!(c.check("c", 200, 101), ReplayVerdict::Fresh);
        assert_eq!(c.check("b", 200, 101), ReplayVerdict::Replayed);
    }
}
