//! Refusing a token seen before. Every accepted `jti` is kept through the
//! last second in which its token verifies (`exp` plus leeway), and no
//! longer; where it is kept is a [`ReplayStore`]:
//!
//! - [`MemoryReplayStore`]: in the process, bounded. Forgotten on restart,
//!   and each replica has its own: fine for one instance that is never
//!   restarted within a token's lifetime.
//! - [`FileReplayStore`] (feature `persistent`): a local file, so a
//!   restarted instance still refuses tokens it accepted before.
//! - [`RedisReplayStore`] (feature `redis`): one store for every replica
//!   behind a load balancer, with an atomic set-if-absent.
//!
//! A store that cannot answer is an error ([`ReplayError`]), never a
//! "fresh": the verifier then refuses the token (503), fail closed.

#[cfg(feature = "persistent")]
mod file;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::{fmt, future::Future, pin::Pin};

use thiserror::Error;

#[cfg(feature = "persistent")]
pub use file::FileReplayStore;
pub use memory::{DEFAULT_REPLAY_CAPACITY, MemoryReplayStore};
#[cfg(feature = "redis")]
pub use redis::{RedisOptions, RedisReplayStore};

/// What a store method returns: a boxed future, so that stores can sit
/// behind `Arc<dyn ReplayStore>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What recording a `jti` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// Not seen before; now recorded.
    Fresh,
    /// Seen before, and its token could still verify.
    Replayed,
    /// The store holds as many unexpired tokens as it may: new tokens are
    /// refused rather than an entry dropped early, because a dropped entry
    /// is a token that could be replayed.
    Full,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ReplayError {
    /// The store could not be asked (down, unreachable, timed out, disk
    /// error). The token may be fine; it is refused all the same.
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
    /// The store could not be opened or set up.
    #[error("replay store: {0}")]
    Open(String),
}

/// Where spent `jti`s are kept. Times are seconds since the epoch;
/// `last_valid` is inclusive.
pub trait ReplayStore: Send + Sync + fmt::Debug {
    /// Records `jti` through second `last_valid` unless it is recorded
    /// already: atomically, so two requests racing with one token (at one
    /// replica or two) cannot both see [`Spend::Fresh`].
    fn spend<'a>(
        &'a self,
        jti: &'a str,
        last_valid: u64,
        now: u64,
    ) -> BoxFuture<'a, Result<Spend, ReplayError>>;

    /// Whether `jti` is recorded (and its token could still verify),
    /// without recording it.
    fn seen<'a>(&'a self, jti: &'a str, now: u64) -> BoxFuture<'a, Result<bool, ReplayError>>;
}
