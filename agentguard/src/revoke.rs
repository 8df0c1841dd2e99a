//! Which agents are revoked, kept on disk so that a revocation survives a
//! restart, and a per-agent signal every open connection of that agent
//! listens to, so that revoking closes them at once.
//!
//! This is the proxy's half. The kernel's half (a per-cgroup flag that makes
//! the agent's connect() fail with EPERM before the proxy ever sees it) is
//! made to match this list by [`kernel`], at every policy load and after
//! every change; `crate::oversight` does both, with the rest of what
//! revoking means (held approvals denied, cached credentials dropped, the
//! audit event).
//!
//! The signal is one `watch` channel per agent. Each connection task
//! subscribes when it starts ([`Revocations::until_revoked`]) and is dropped,
//! closing its sockets, the moment the value turns true; a subscription
//! made after the revocation sees it at once, so there is no window between
//! a connection's check and its subscription. The number of subscribers is
//! the agent's open connections (the agents page shows it). This is not the
//! per-agent connection cap (that counts and limits in
//! `proxy::connection`): it only closes.

pub mod kernel;
mod store;

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error)]
pub enum RevokeError {
    #[error("failed to read the revocations in {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the revocations in {path} are unreadable ({reason}); not starting, since an agent revoked there would run unrevoked: fix or remove the file"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("failed to save the revocations to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One revocation, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub reason: String,
    /// Who revoked (the web view's user, or the admin socket's caller).
    pub by: String,
    /// RFC 3339.
    pub time: String,
}

pub struct Revocations {
    path: PathBuf,
    revoked: Mutex<BTreeMap<String, Revoked>>,
    signals: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Revocations {
    /// The revocations kept in `state_dir`. A file that exists but cannot
    /// be read is an error: starting without it would restore every agent
    /// it revoked.
    pub fn load(state_dir: &Path) -> Result<Self, RevokeError> {
        let path = store::path(state_dir);
        let revoked = store::load(&path)?;
        Ok(Self::with(path, revoked))
    }

    fn with(path: PathBuf, revoked: BTreeMap<String, Revoked>) -> Self {
        Self {
            path,
            revoked: Mutex::new(revoked),
            signals: Mutex::new(HashMap::new()),
        }
    }

    /// Whether (and why) `agent` is revoked.
    pub fn revoked(&self, agent: &str) -> Option<Revoked> {
        lock(&self.revoked).get(agent).cloned()
    }

    pub fn all(&self) -> BTreeMap<String, Revoked> {
        lock(&self.revoked).clone()
    }

    /// Revokes `agent`: saved first (so that it holds after a restart), then
    /// every open connection of the agent is told to close. `false` if it
    /// was already revoked (nothing changes, the first reason stays).
    pub fn revoke(&self, agent: &str, revoked: Revoked) -> Result<bool, RevokeError> {
        let mut all = lock(&self.revoked);
        if all.contains_key(agent) {
            self.signal(agent, true);
            return Ok(false);
        }
        let mut next = all.clone();
        next.insert(agent.to_owned(), revoked);
        // Fail closed: if it cannot be saved, the revocation still holds
        // in memory, and the caller is told it will not survive a restart.
        let saved = store::save(&self.path, &next);
        *all = next;
        // Under the lock: a connection subscribing now sees either the old
        // value and this signal, or the new value.
        self.signal(agent, true);
        saved.map(|()| true)
    }

    /// Lifts `agent`'s revocation. `false` if it was not revoked.
    pub fn restore(&self, agent: &str) -> Result<bool, RevokeError> {
        let mut all = lock(&self.revoked);
        if !all.contains_key(agent) {
            return Ok(false);
        }
        let mut next = all.clone();
        next.remove(agent);
        // Saved before it takes effect: a restore that is not on disk would
        // be undone by a restart, which is the safe direction, but the
        // operator must hear of it.
        store::save(&self.path, &next)?;
        *all = next;
        self.signal(agent, false);
        Ok(true)
    }

    /// Runs `task` (one of `agent`'s connections, or a tunnel of one) until
    /// it ends or the agent is revoked, whichever comes first; `None` if
    /// the revocation cut it short (the caller drops it, which closes its
    /// sockets).
    ///
    /// The caller pins `task` in its own future (`std::pin::pin!`): taken
    /// by value, the task was stored twice in this function's state, as
    /// the argument and as the pinned local, and with a connection's whole
    /// future as the task that was 5.6 of the 12.2 KiB every connection's
    /// task allocated (`-Zprint-type-sizes`), most of it resident for as
    /// long as the connection stays open.
    pub async fn until_revoked<F: Future>(
        &self,
        agent: &str,
        mut task: Pin<&mut F>,
    ) -> Option<F::Output> {
        let mut rx = self.subscribe(agent);
        let revoked = tokio::select! {
            // Revoked wins over a task that is ready too: a revoked agent's
            // work is not finished on its behalf.
            biased;
            // Err: the sender went, which the registry never lets happen
            // (it keeps every agent's); then the task just runs.
            r = rx.wait_for(|revoked| *revoked) => r.is_ok(),
            out = task.as_mut() => return Some(out),
        };
        if revoked { None } else { Some(task.await) }
    }

    /// How many connections (and tunnels) of `agent` are open.
    pub fn open_connections(&self, agent: &str) -> usize {
        lock(&self.signals)
            .get(agent)
            .map_or(0, watch::Sender::receiver_count)
    }

    fn subscribe(&self, agent: &str) -> watch::Receiver<bool> {
        // Lock order as in `revoke` and `restore`: revocations, then
        // signals, so the value set here is current.
        let all = lock(&self.revoked);
        let revoked = all.contains_key(agent);
        let mut signals = lock(&self.signals);
        let tx = signals
            .entry(agent.to_owned())
            .or_insert_with(|| watch::Sender::new(revoked));
        tx.send_if_modified(|v| std::mem::replace(v, revoked) != revoked);
        tx.subscribe()
    }

    fn signal(&self, agent: &str, revoked: bool) {
        let signals = lock(&self.signals);
        if let Some(tx) = signals.get(agent) {
            tx.send_replace(revoked);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
