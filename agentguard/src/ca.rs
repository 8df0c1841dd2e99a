//! agentguard's local certificate authority: the CA that signs the leaf
//! certificates the proxy presents when it terminates an agent's TLS, the
//! cache of those leaves, and the trust bundle that makes unmodified agents
//! accept them.
//!
//! Layout under the state directory:
//!
//! ```text
//! ca/            0711  traversable, not listable: agents open files by path
//! ca/ca.key      0600  PKCS#8 PEM, P-256; only the daemon's user may read it
//! ca/ca.crt      0644  the CA certificate
//! ca/bundle.pem  0644  the system trust store followed by ca.crt (and next.crt)
//! ca/next.key    0600  during a rotation: the staged next CA's key ...
//! ca/next.crt    0644  ... and certificate, trusted but not yet signing
//! ```
//!
//! Whoever holds `ca.key` can impersonate any host to every agent, so the
//! daemon refuses a key that group or others could read, or that another user
//! owns, rather than use it.

mod authority;
mod bundle;
mod leaf;
mod profile;
mod rotation;
mod store;

pub use authority::{CaError, LocalCa};
pub use leaf::{DEFAULT_LEAF_CACHE_CAPACITY, LEAF_REFRESH_MARGIN, LeafCache};
pub use profile::LEAF_LIFETIME;
pub use rotation::{CaInfo, CaRole, RotationError, Step};
pub use store::CaStore;
