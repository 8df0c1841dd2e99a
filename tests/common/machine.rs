//! Which tests run beside which. The end-to-end tests share almost no
//! kernel state: every test daemon has its own cgroups, bpffs folder,
//! state folder, admin socket and ports (all bound to port 0), the tests'
//! Unix socket names carry the test process's pid and a per-test prefix,
//! and tests that change network settings do so in a network namespace of
//! their own. So they run in parallel (`cargo xtask test` runs three at
//! once). What they share is the machine's CPUs and 127.0.0.1's port
//! space. A test that loads the machine (thousands of requests), bounds a
//! latency, or needs a port that another test's connection could take
//! (egress's claims of a dead agent's port) takes the machine for itself
//! with [`alone`], and waits until every other test daemon is gone; every
//! test daemon holds a [`Beside`] share meanwhile (see `Daemon`).

use std::{
    cell::Cell,
    sync::{Condvar, Mutex, MutexGuard, PoisonError},
};

#[derive(Default)]
struct State {
    /// Shares held by test daemons.
    beside: usize,
    /// A test runs alone.
    alone: bool,
    /// Tests waiting to run alone: no new share is given meanwhile, so
    /// they are not starved.
    waiting: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    beside: 0,
    alone: false,
    waiting: 0,
});
static CHANGED: Condvar = Condvar::new();

thread_local! {
    /// This test's thread runs alone: its own daemons need no share.
    static ALONE_HERE: Cell<bool> = const { Cell::new(false) };
    /// Shares this test's thread holds: a second daemon of a test that
    /// already holds one must not wait (a test waiting to run alone would
    /// wait for the first, and the first for it).
    static BESIDE_HERE: Cell<usize> = const { Cell::new(0) };
}

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A test daemon's share of the machine.
pub struct Beside {
    counted: bool,
}

/// Waits while a test runs (or waits to run) alone, then takes a share.
pub fn beside() -> Beside {
    if ALONE_HERE.get() {
        return Beside { counted: false };
    }
    let mut st = state();
    if BESIDE_HERE.get() == 0 {
        while st.alone || st.waiting > 0 {
            st = CHANGED.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
    st.beside += 1;
    BESIDE_HERE.set(BESIDE_HERE.get() + 1);
    Beside { counted: true }
}

impl Drop for Beside {
    fn drop(&mut self) {
        if self.counted {
            state().beside -= 1;
            BESIDE_HERE.set(BESIDE_HERE.get().saturating_sub(1));
            CHANGED.notify_all();
        }
    }
}

/// The machine, for one test alone, until dropped.
#[must_use]
pub struct Alone(());

/// Waits until no other test daemon runs, and keeps new ones from starting
/// until the returned value is dropped.
pub fn alone() -> Alone {
    let mut st = state();
    st.waiting += 1;
    while st.alone || st.beside > 0 {
        st = CHANGED.wait(st).unwrap_or_else(PoisonError::into_inner);
    }
    st.waiting -= 1;
    st.alone = true;
    ALONE_HERE.set(true);
    Alone(())
}

impl Drop for Alone {
    fn drop(&mut self) {
        state().alone = false;
        ALONE_HERE.set(false);
        CHANGED.notify_all();
    }
}
