//! The cache of leaf certificates for intercepted TLS, so that a host's leaf
//! is minted once a day rather than once per connection (what goes in one
//! is `profile`'s). A leaf signed by a CA other than the one that signs now
//! (before a rotation's activation) is never served again.

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

use super::{
    CaStore,
    authority::{CaError, LocalCa, MintedLeaf},
};

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
    ca: Arc<CaStore>,
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
    /// The certificate of the CA that signed it ([`LocalCa::id`]).
    signer: [u8; 32],
}

impl CachedLeaf {
    fn new(leaf: MintedLeaf, signer: &LocalCa) -> Self {
        Self {
            key: leaf.key,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            signer: *signer.id(),
        }
    }

    /// Signed by `ca` (by its certificate: a rotation's first step reloads
    /// the CA that signs, unchanged) and valid at `now`, in wall-clock
    /// time, as clients judge validity. The lower bound matters if the
    /// clock is set back by more than the backdating.
    fn usable(&self, ca: &LocalCa, now: OffsetDateTime) -> bool {
        self.signer == *ca.id()
            && self.not_before <= now
            && now + LEAF_REFRESH_MARGIN < self.not_after
    }
}

impl LeafCache {
    /// A cache of at most `capacity` leaves (at least one).
    pub fn new(ca: Arc<CaStore>, capacity: usize) -> Self {
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
        let ca = self.ca.current();
        if let Some(key) = self.cached(&name, &ca, now) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(key);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Minting takes ~70 µs; holding the lock through it would queue every
        // handshake behind it. Two threads that miss on the same name both
        // mint, and the first to insert wins.
        let minted = CachedLeaf::new(ca.mint(&name)?, &ca);
        let mut leaves = self.lock();
        if let Some(leaf) = leaves.get(&name).filter(|leaf| leaf.usable(&ca, now)) {
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

    fn cached(&self, name: &str, ca: &LocalCa, now: OffsetDateTime) -> Option<Arc<CertifiedKey>> {
        let mut leaves = self.lock();
        leaves
            .get(name)
            .filter(|leaf| leaf.usable(ca, now))
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
            .field("ca", &self.ca.current().cert_path())
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

    fn ca() -> (tempfile::TempDir, Arc<CaStore>) {
        let state = tempfile::tempdir().unwrap();
        let ca = CaStore::load_or_create(state.path()).unwrap();
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
        let (_state, store) = ca();
        let ca = store.current();
        let leaf = CachedLeaf::new(ca.mint("a.example.com").unwrap(), &ca);
        let now = OffsetDateTime::now_utc();
        assert!(leaf.usable(&ca, now));
        assert!(leaf.usable(
            &ca,
            now + LEAF_LIFETIME - LEAF_REFRESH_MARGIN - Duration::minutes(5)
        ));
        assert!(!leaf.usable(
            &ca,
            now + LEAF_LIFETIME - LEAF_REFRESH_MARGIN + Duration::minutes(5)
        ));
        assert!(!leaf.usable(&ca, now - CLOCK_SKEW - Duration::minutes(5)));
    }

    /// Once a staged CA is activated, every leaf comes from it: none the
    /// old CA signed is served again, and each verifies against the new
    /// CA alone.
    #[test]
    fn after_an_activation_leaves_come_from_the_new_ca() {
        let (_state, store) = ca();
        let cache = LeafCache::new(store.clone(), DEFAULT_LEAF_CACHE_CAPACITY);
        let old = cache.get("api.example.com").unwrap();
        let old_ca = store.current();
        store.apply(crate::ca::Step::Rotate).unwrap();
        // Staged only: the old CA still signs, and its leaf is still served.
        assert!(Arc::ptr_eq(&old, &cache.get("api.example.com").unwrap()));
        store.apply(crate::ca::Step::Activate).unwrap();
        let new_ca = store.current();
        assert_ne!(old_ca.cert_der(), new_ca.cert_der());
        let new = cache.get("api.example.com").unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(&new.cert[1], new_ca.cert_der());
        let ring = Arc::new(rustls::crypto::ring::default_provider());
        crate::ca::authority::verify_chain(new_ca.cert_der(), &new.cert, "api.example.com", &ring)
            .unwrap();
        crate::ca::authority::verify_chain(old_ca.cert_der(), &new.cert, "api.example.com", &ring)
            .unwrap_err();
    }
}
