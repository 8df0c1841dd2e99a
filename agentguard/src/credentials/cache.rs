//! Values fetched on demand and kept until shortly before they expire:
//! exchanged tokens (per subject), a credential helper's output, AWS
//! session credentials.
//!
//! Concurrent callers for one key share one fetch, and the callers queued
//! behind a failed fetch share its failure instead of each waiting out a
//! fetch of their own. Keys are bounded (least recently used dropped).

use std::{
    hash::Hash,
    num::NonZeroUsize,
    sync::{
        Arc, Mutex as StdMutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use lru::LruCache;
use tokio::{sync::Mutex, time::Instant};

/// A value is fetched again this long before it expires, so that it is
/// still valid when the request carrying it reaches the upstream.
pub(super) const REFRESH_MARGIN: Duration = Duration::from_secs(30);
/// The longest any value is kept, whatever its lifetime: bounds how long a
/// revoked token keeps being sent, and keeps `Instant` arithmetic sane.
pub(super) const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

pub(super) struct ExpiringCache<K, V, E> {
    slots: StdMutex<LruCache<K, Arc<Slot<V, E>>>>,
    fetches: AtomicU64,
}

struct Slot<V, E> {
    /// Held across check and fetch: callers for one key share a fetch.
    state: Mutex<State<V, E>>,
    /// Fetches finished (counted under the lock); read before waiting, so
    /// that a caller can tell one finished while it waited.
    finished: AtomicU64,
    /// The current value, readable without waiting on a fetch in flight
    /// (for redaction).
    current: StdMutex<Option<V>>,
}

struct State<V, E> {
    value: Option<(V, Instant)>,
    last_error: Option<E>,
}

impl<K: Hash + Eq + Clone, V: Clone, E: Clone> ExpiringCache<K, V, E> {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            slots: StdMutex::new(LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
            fetches: AtomicU64::new(0),
        }
    }

    /// The value for `key`, valid for at least [`REFRESH_MARGIN`] more;
    /// else `fetch` runs (once for all concurrent callers) and returns the
    /// value with its lifetime.
    pub(super) async fn get<F, Fut>(&self, key: &K, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        let slot = {
            let mut slots = lock(&self.slots);
            match slots.get(key) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Arc::new(Slot {
                        state: Mutex::new(State {
                            value: None,
                            last_error: None,
                        }),
                        finished: AtomicU64::new(0),
                        current: StdMutex::new(None),
                    });
                    slots.put(key.clone(), slot.clone());
                    slot
                }
            }
        };
        let seen = slot.finished.load(Ordering::Acquire);
        let mut state = slot.state.lock().await;
        if let Some((value, expires)) = &state.value
            && *expires > Instant::now() + REFRESH_MARGIN
        {
            return Ok(value.clone());
        }
        if slot.finished.load(Ordering::Acquire) != seen
            && let Some(error) = &state.last_error
        {
            return Err(error.clone());
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let outcome = fetch().await;
        slot.finished.fetch_add(1, Ordering::AcqRel);
        match outcome {
            Ok((value, lifetime)) => {
                let lifetime = lifetime.min(MAX_LIFETIME);
                state.value = Some((value.clone(), Instant::now() + lifetime));
                state.last_error = None;
                *lock(&slot.current) = Some(value.clone());
                Ok(value)
            }
            Err(error) => {
                // Never the old value: a failed exchange or helper is a
                // failure, not a reason to keep sending what may have been
                // revoked.
                state.value = None;
                state.last_error = Some(error.clone());
                *lock(&slot.current) = None;
                Err(error)
            }
        }
    }

    /// Every value held now (for redaction).
    pub(super) fn current(&self) -> Vec<V> {
        lock(&self.slots)
            .iter()
            .filter_map(|(_, slot)| lock(&slot.current).clone())
            .collect()
    }

    /// Drops every entry whose key `pred` selects: its next use fetches
    /// anew.
    pub(super) fn forget(&self, pred: impl Fn(&K) -> bool) {
        let mut slots = lock(&self.slots);
        let keys: Vec<K> = slots
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            slots.pop(&key);
        }
    }

    /// Fetches started so far.
    pub(super) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}

/// The maps are only read, swapped or popped under these locks: a panic
/// while one was held cannot have left it half-written.
fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_one_fetch_and_one_failure() {
        let cache: Arc<ExpiringCache<&str, String, String>> = Arc::new(ExpiringCache::new(8));
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, runs) = (cache.clone(), runs.clone());
                tokio::spawn(async move {
                    cache
                        .get(&"k", || async {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Ok((String::from("v"), Duration::from_secs(3600)))
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "v");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(cache.current(), ["v"]);

        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, runs) = (cache.clone(), runs.clone());
                tokio::spawn(async move {
                    cache
                        .get(&"bad", || async {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Err::<(String, Duration), _>(String::from("refused"))
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err(), "refused");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(cache.fetches(), 2);
    }

    #[tokio::test]
    async fn values_inside_the_margin_are_fetched_again_and_forget_drops() {
        let cache: ExpiringCache<u8, u32, ()> = ExpiringCache::new(8);
        for expected in [1, 2] {
            // A value inside the margin is never served again: each get
            // fetches, and the fetch returns this round's number.
            let v = cache
                .get(&1, || async move { Ok((expected, REFRESH_MARGIN)) })
                .await
                .unwrap();
            assert_eq!(v, expected);
        }
        let long = cache
            .get(&2, || async { Ok((7, Duration::from_secs(600))) })
            .await
            .unwrap();
        assert_eq!(long, 7);
        let again = cache
            .get(&2, || async { Ok((8, Duration::from_secs(600))) })
            .await
            .unwrap();
        assert_eq!(again, 7, "cached");
        cache.forget(|k| *k == 2);
        let after = cache
            .get(&2, || async { Ok((9, Duration::from_secs(600))) })
            .await
            .unwrap();
        assert_eq!(after, 9, "fetched anew after forget");
    }
}
