//! The daemon's descriptors: its limit raised to the hard limit at start,
//! and a budget of sockets the proxy may hold (agents' connections and the
//! upstream connections made for them) that leaves a reserve for
//! everything else the daemon must keep doing when an agent floods it:
//! answering `agentguard status`, resolving, writing the audit store.
//!
//! The budget is the process's, like the limit it comes from: one counter
//! for the whole daemon, set once by [`init`]. Until then (unit tests)
//! nothing is counted.

use std::sync::{
    OnceLock,
    atomic::{AtomicUsize, Ordering},
};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tracing::{info, warn};

/// Below this the daemon is not usable anyway; a budget is never smaller.
const MIN_BUDGET: usize = 16;

struct Budget {
    max: usize,
    open: AtomicUsize,
}

static BUDGET: OnceLock<Budget> = OnceLock::new();

/// What [`init`] found and set.
#[derive(Debug, Clone, Copy)]
pub struct Descriptors {
    /// The soft limit before and after raising it.
    pub was: u64,
    pub limit: u64,
    /// Sockets the proxy may hold.
    pub budget: usize,
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit and sets the proxy's
/// socket budget to what is left after `reserve`. Called once, at start.
pub fn init(reserve: u64) -> Descriptors {
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let limit = if hard > was {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                warn!(error = %e, soft = was, hard, "could not raise the descriptor limit");
                was
            }
        }
    } else {
        was
    };
    let budget = usize::try_from(limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(MIN_BUDGET);
    if limit.saturating_sub(reserve) < MIN_BUDGET as u64 {
        warn!(
            limit,
            reserve, "descriptor limit barely above the reserve: the proxy may run out"
        );
    }
    let _ = BUDGET.set(Budget {
        max: budget,
        open: AtomicUsize::new(0),
    });
    info!(
        was,
        limit, reserve, budget, "descriptor limit raised; proxy socket budget set"
    );
    Descriptors { was, limit, budget }
}

/// The budget, once [`init`] set it.
pub fn budget() -> Option<usize> {
    BUDGET.get().map(|b| b.max)
}

/// Proxy sockets open now.
pub fn open() -> usize {
    BUDGET.get().map_or(0, |b| b.open.load(Ordering::Relaxed))
}

/// One socket of the budget, given back when dropped.
pub struct Socket {
    counted: bool,
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.counted
            && let Some(b) = BUDGET.get()
        {
            b.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A socket of the budget, or `None` when the proxy holds all of them.
pub fn take() -> Option<Socket> {
    let Some(b) = BUDGET.get() else {
        return Some(Socket { counted: false });
    };
    b.open
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < b.max).then_some(n + 1)
        })
        .ok()
        .map(|_| Socket { counted: true })
}
