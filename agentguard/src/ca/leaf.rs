//! The cache of leaf certificates for intercepted TLS, so that a host's leaf
//! is minted once a day rather than once per connection (what goes in one
//! is `profile`'s).

use std::{
    num::NonZeroUsize,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use lru::LruCache;
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use time::{Duration, OffsetDateTime};
use tracing::warn;

use super::authority::{CaError, LocalCa, MintedLeaf};

/// Enough distinct hosts for a busy agent fleet; a leaf with its key is a few
/// kilobytes.
pub const DEFAULT_LEAF_CACHE_CAPACITY: usize = 1024;
/// A cached leaf is replaced this long before it expires, so that no client
/// gets one that runs out during a long-lived connection's handshake or is
/// already expired on a client whose clock runs ahead.
pub const LEAF_REFRESH_MARGIN: Duration = Duration::hours(1);
/// Leaves by server name, minted on first use and replaced before they expire.
/// Also the proxy's rustls certificate resolver.
pub struct LeafCache {
    ca: Arc<LocalCa>,
    capacity: NonZeroUsize,
    leaves: Mutex<LruCache<String, CachedLeaf>>,
    /// For the metrics: handshakes served from the cache, and leaves minted.
    hits: AtomicU64,
    misses: AtomicU64,
}

struct CachedLeaf {
    key: Arc<CertifiedKey>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl CachedLeaf {
    /// Wall-clock time, as clients judge validity. The lower bound matters if
    /// the clock is set back by more than the backdating.
    fn usable_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now + LEAF_REFRESH_MARGIN < self.not_after
    }
}

impl From<MintedLeaf> for CachedLeaf {
    fn from(leaf: MintedLeaf) -> Self {
        Self {
            key: leaf.key,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        }
    }
}

impl LeafCache {
    /// A cache of at most `capacity` leaves (at least one).
    pub fn new(ca: Arc<LocalCa>, capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            ca,
            capacity,
            leaves: Mutex::new(LruCache::new(capacity)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// (cache hits, leaves minted) since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The leaf for `server_name`, from the cache unless it expires within
    /// [`LEAF_REFRESH_MARGIN`], else freshly minted.
    pub fn get(&self, server_name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        // DNS names are case-insensitive (RFC 4343): one leaf per host,
        // however the client spells it.
        let name = server_name.to_ascii_lowercase();
        let now = OffsetDateTime::now_utc();
        if let Some(key) = self.cached(&name, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(key);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Minting takes ~70 µs; holding the lock through it would queue every
        // handshake behind it. Two threads that miss on the same name both
        // mint, and the first to insert wins.
        let minted = CachedLeaf::from(self.ca.mint(&name)?);
        let mut leaves = self.lock();
        if let Some(leaf) = leaves.get(&name).filter(|leaf| leaf.usable_at(now)) {
            return Ok(leaf.key.clone());
        }
        let key = minted.key.clone();
        leaves.put(name, minted);
        Ok(key)
    }

    /// How many leaves are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn cached(&self, name: &str, now: OffsetDateTime) -> Option<Arc<CertifiedKey>> {
        let mut leaves = self.lock();
        leaves
            .get(name)
            .filter(|leaf| leaf.usable_at(now))
            .map(|leaf| leaf.key.clone())
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<String, CachedLeaf>> {
        // A panic elsewhere cannot leave the cache half-updated in a way that
        // matters: at worst an entry is missing and gets minted again.
        self.leaves.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCache")
            .field("ca", &self.ca.cert_path())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for LeafCache {
    /// Returning `None` makes rustls abort the handshake: without a leaf for
    /// the name the client asked for, there is nothing honest to present.
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = client_hello.server_name() else {
            warn!(
                "TLS client sent no SNI; refusing the handshake, as there is no name to mint a certificate for"
            );
            return None;
        };
        match self.get(sni) {
            Ok(key) => Some(key),
            Err(error) => {
                warn!(sni, %error, "failed to get a leaf certificate; refusing the handshake");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::profile::{CLOCK_SKEW, LEAF_LIFETIME};

    fn ca() -> (tempfile::TempDir, Arc<LocalCa>) {
        let state = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(state.path()).unwrap();
        (state, Arc::new(ca))
    }

    #[test]
    fn same_name_gets_the_same_leaf_whatever_its_case() {
        let (_state, ca) = ca();
        let cache = LeafCache::new(ca, DEFAULT_LEAF_CACHE_CAPACITY);
        assert!(cache.is_empty());
        let first = cache.get("api.example.com").unwrap();
        let again = cache.get("API.Example.COM").unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = cache.get("other.example.com").unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.counts(), (1, 2));
    }

    #[test]
    fn never_holds_more_than_capacity() {
        let (_state, ca) = ca();
        let cache = LeafCache::new(ca, 2);
        for i in 0..5 {
            cache.get(&format!("host{i}.example.com")).unwrap();
            assert!(cache.len() <= 2);
        }
        assert_eq!(cache.len(), 2);
        // The least recently used went first.
        let recent = cache.get("host4.example.com").unwrap();
        assert!(Arc::ptr_eq(
            &recent,
            &cache.get("host4.example.com").unwrap()
        ));
    }

    #[test]
    fn zero_capacity_still_caches_one() {
        let (_state, ca) = ca();
        let cache = LeafCache::new(ca, 0);
        let a = cache.get("a.example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &cache.get("a.example.com").unwrap()));
    }

    #[test]
    fn invalid_names_are_not_cached() {
        let (_state, ca) = ca();
        let cache = LeafCache::new(ca, 4);
        cache.get("not a host").unwrap_err();
        assert!(cache.is_empty());
    }

    #[test]
    fn leaves_near_expiry_are_not_used() {
        let (_state, ca) = ca();
        let leaf = CachedLeaf::from(ca.mint("a.example.com").unwrap());
        let now = OffsetDateTime::now_utc();
        assert!(leaf.usable_at(now));
        assert!(leaf.usable_at(now + LEAF_LIFETIME - LEAF_REFRESH_MARGIN - Duration::minutes(5)));
        assert!(!leaf.usable_at(now + LEAF_LIFETIME - LEAF_REFRESH_MARGIN + Duration::minutes(5)));
        assert!(!leaf.usable_at(now - CLOCK_SKEW - Duration::minutes(5)));
    }
}
