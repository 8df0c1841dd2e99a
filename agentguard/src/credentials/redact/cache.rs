//! Form sets of recent secret sets: every request of an agent that holds
//! secrets needs its set, and the set only changes when a secret does (a
//! reload, an OAuth2 token refresh), so it is built once, not per request.

use std::{
    hash::{BuildHasher, RandomState},
    num::NonZeroUsize,
    sync::{Arc, LazyLock, Mutex},
};

use lru::LruCache;

use super::set::FormSet;
use crate::credentials::Secret;

/// Secret sets kept: one or two per agent (an OAuth2 refresh makes a new
/// one; the old one ages out).
const CAPACITY: NonZeroUsize = NonZeroUsize::new(256).expect("non-zero");

/// A secret set (sorted) and its forms (`None`: nothing long enough).
type Entry = (Vec<Arc<str>>, Option<Arc<FormSet>>);

/// Entries by a hash of their secrets, keyed per process (so it reveals
/// nothing about them beyond this process); a hit is confirmed by comparing
/// the secrets themselves.
struct Cache {
    keys: RandomState,
    sets: Mutex<LruCache<u64, Entry>>,
}

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache {
    keys: RandomState::new(),
    sets: Mutex::new(LruCache::new(CAPACITY)),
});

/// The form set of `secrets` (in any order), built once.
pub(super) fn form_set(secrets: &[Secret]) -> Option<Arc<FormSet>> {
    let mut values: Vec<Arc<str>> = secrets.iter().map(|s| s.0.clone()).collect();
    values.sort();
    values.dedup();
    let key = CACHE.keys.hash_one(&values);
    {
        let mut sets = CACHE.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((held, set)) = sets.get(&key)
            && *held == values
        {
            return set.clone();
        }
    }
    // Built outside the lock: a build takes milliseconds, and two requests
    // building the same set at once is harmless.
    let secrets: Vec<Secret> = values.iter().map(|v| Secret(v.clone())).collect();
    let set = FormSet::build(&secrets).map(Arc::new);
    CACHE
        .sets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .put(key, (values, set.clone()));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_built_once_whatever_its_order() {
        let a = Secret::new("sk-cache-test-one".into());
        let b = Secret::new("sk-cache-test-two".into());
        let first = form_set(&[a.clone(), b.clone()]).unwrap();
        let again = form_set(&[b.clone(), a.clone(), a.clone()]).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = form_set(std::slice::from_ref(&a)).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert!(form_set(&[Secret::new("abc".into())]).is_none());
    }
}
