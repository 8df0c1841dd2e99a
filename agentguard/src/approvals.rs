//! Requests held for a person's approval.
//!
//! A tool with `approval = { timeout = "5m" }` has each request it allows
//! held here, its body read and hashed, until an approver decides (web view,
//! `agentguard approve ID` / `deny ID`) or the timeout passes. The queue is
//! bounded per agent and in total, so an agent cannot hold the daemon's
//! memory or its approvers' attention without limit: past the bound a
//! request is refused at once.
//!
//! An approval is bound to one call: to the agent and pid that made it and
//! to the hash of the exact request (method, URL, body: the `rh` of
//! request-bound tokens). A decision goes to that one waiting request and
//! nowhere else, and is spent on it; an approver who names the hash they
//! saw (`--hash`, the web view always does) is refused if it is not the
//! request's. The waiting request checks the binding it is handed against
//! its own before it sends anything.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::oneshot;

/// Requests one agent may have waiting at once.
pub const MAX_HELD_PER_AGENT: usize = 16;
/// Requests all agents together may have waiting at once.
pub const MAX_HELD_TOTAL: usize = 256;
/// The body of a held request is read whole, to hash it and show it, up to
/// this size; a larger one is refused.
pub const MAX_HELD_BODY: usize = 1 << 20;
/// How much of the body the approver is shown.
const PREVIEW_BYTES: usize = 4096;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("agent {agent:?} already has {max} requests waiting for approval; decide those first")]
    AgentFull { agent: String, max: usize },
    #[error("{max} requests are already waiting for approval; decide those first")]
    TotalFull { max: usize },
    #[error("no request {0:?} is waiting for approval (decided, timed out, or abandoned)")]
    NotPending(String),
    #[error(
        "request {id:?} is not the request you were shown: its hash is {actual}, not {expected}"
    )]
    HashMismatch {
        id: String,
        expected: String,
        actual: String,
    },
}

/// What binds an approval to one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub agent: String,
    pub pid: u32,
    /// base64url SHA-256 over method, URL and body hash (see
    /// `agentguard_verify::RequestBinding::request_hash`).
    pub request_hash: String,
}

/// A request to hold, as the proxy describes it.
#[derive(Debug, Clone)]
pub struct HeldRequest {
    pub binding: Binding,
    pub exe: Option<String>,
    pub uid: u32,
    pub tool: String,
    pub method: String,
    /// `scheme://authority/path?query`, as the agent asked.
    pub url: String,
    pub body: hyper::body::Bytes,
    pub intent: Option<String>,
    pub on_behalf_of: Option<String>,
    pub timeout: Duration,
}

/// A waiting request, as approvers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub id: String,
    pub agent: String,
    pub pid: u32,
    pub exe: Option<String>,
    pub uid: u32,
    pub tool: String,
    pub method: String,
    pub url: String,
    pub request_hash: String,
    pub body_bytes: u64,
    /// The start of the body, as text (invalid UTF-8 replaced).
    pub body_preview: String,
    pub intent: Option<String>,
    pub on_behalf_of: Option<String>,
    /// RFC 3339.
    pub held_since: String,
    pub expires: String,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved {
        by: String,
        binding: Binding,
    },
    Denied {
        by: String,
        reason: String,
    },
    TimedOut {
        after: Duration,
    },
    /// The agent was revoked while its request waited.
    Revoked {
        by: String,
        reason: String,
    },
    /// The agent went away before any verdict ([`Held::wait_unless`]).
    Withdrawn,
}

struct Entry {
    view: PendingView,
    binding: Binding,
    tx: oneshot::Sender<Verdict>,
}

/// The queue of held requests.
#[derive(Default)]
pub struct Approvals {
    pending: Mutex<BTreeMap<String, Entry>>,
}

impl Approvals {
    /// Queues `request`; the returned [`Held`] waits for its verdict. Full
    /// queues refuse it at once.
    pub fn hold(self: &Arc<Self>, request: HeldRequest) -> Result<Held, ApprovalError> {
        let mut pending = lock(&self.pending);
        let agent = &request.binding.agent;
        if pending.len() >= MAX_HELD_TOTAL {
            return Err(ApprovalError::TotalFull {
                max: MAX_HELD_TOTAL,
            });
        }
        if pending
            .values()
            .filter(|e| e.binding.agent == *agent)
            .count()
            >= MAX_HELD_PER_AGENT
        {
            return Err(ApprovalError::AgentFull {
                agent: agent.clone(),
                max: MAX_HELD_PER_AGENT,
            });
        }
        // Ids are random; one already waiting is never replaced.
        let mut id = new_id();
        while pending.contains_key(&id) {
            id = new_id();
        }
        let now = SystemTime::now();
        let preview = &request.body[..request.body.len().min(PREVIEW_BYTES)];
        let view = PendingView {
            id: id.clone(),
            agent: agent.clone(),
            pid: request.binding.pid,
            exe: request.exe,
            uid: request.uid,
            tool: request.tool,
            method: request.method,
            url: request.url,
            request_hash: request.binding.request_hash.clone(),
            body_bytes: request.body.len() as u64,
            body_preview: String::from_utf8_lossy(preview).into_owned(),
            intent: request.intent,
            on_behalf_of: request.on_behalf_of,
            held_since: crate::audit::event::format_time(now),
            expires: crate::audit::event::format_time(now + request.timeout),
        };
        let (tx, rx) = oneshot::channel();
        pending.insert(
            id.clone(),
            Entry {
                view,
                binding: request.binding.clone(),
                tx,
            },
        );
        Ok(Held {
            id,
            binding: request.binding,
            timeout: request.timeout,
            rx,
            queue: self.clone(),
            abandoned: None,
        })
    }

    /// Every waiting request, oldest first.
    pub fn list(&self) -> Vec<PendingView> {
        let mut views: Vec<PendingView> = lock(&self.pending)
            .values()
            .map(|e| e.view.clone())
            .collect();
        views.sort_by(|a, b| a.held_since.cmp(&b.held_since));
        views
    }

    pub fn get(&self, id: &str) -> Option<PendingView> {
        lock(&self.pending).get(id).map(|e| e.view.clone())
    }

    /// Approves request `id` for `by`. With `expected_hash`, only if that
    /// is the request's hash (the approver saw this very request).
    pub fn approve(
        &self,
        id: &str,
        by: &str,
        expected_hash: Option<&str>,
    ) -> Result<PendingView, ApprovalError> {
        self.decide(id, expected_hash, |binding| Verdict::Approved {
            by: by.to_owned(),
            binding,
        })
    }

    /// Denies request `id`; the agent is told `reason`.
    pub fn deny(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        expected_hash: Option<&str>,
    ) -> Result<PendingView, ApprovalError> {
        self.decide(id, expected_hash, |_| Verdict::Denied {
            by: by.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Denies every waiting request of `agent` (it is being revoked), and
    /// returns them.
    pub fn deny_agent(&self, agent: &str, by: &str, reason: &str) -> Vec<PendingView> {
        let mut pending = lock(&self.pending);
        let ids: Vec<String> = pending
            .iter()
            .filter(|(_, e)| e.binding.agent == agent)
            .map(|(id, _)| id.clone())
            .collect();
        let mut denied = Vec::new();
        for id in &ids {
            if let Some(entry) = pending.remove(id) {
                let _ = entry.tx.send(Verdict::Revoked {
                    by: by.to_owned(),
                    reason: reason.to_owned(),
                });
                denied.push(entry.view);
            }
        }
        denied
    }

    fn decide(
        &self,
        id: &str,
        expected_hash: Option<&str>,
        verdict: impl FnOnce(Binding) -> Verdict,
    ) -> Result<PendingView, ApprovalError> {
        let mut pending = lock(&self.pending);
        let entry = pending
            .get(id)
            .ok_or_else(|| ApprovalError::NotPending(id.to_owned()))?;
        if let Some(expected) = expected_hash
            && expected != entry.binding.request_hash
        {
            return Err(ApprovalError::HashMismatch {
                id: id.to_owned(),
                expected: expected.to_owned(),
                actual: entry.binding.request_hash.clone(),
            });
        }
        let entry = pending
            .remove(id)
            .ok_or_else(|| ApprovalError::NotPending(id.to_owned()))?;
        // The request may have gone in the meantime (its agent closed the
        // connection): then nobody gets the approval, which is right.
        entry
            .tx
            .send(verdict(entry.binding))
            .map_err(|_| ApprovalError::NotPending(id.to_owned()))?;
        Ok(entry.view)
    }

    fn forget(&self, id: &str) {
        lock(&self.pending).remove(id);
    }
}

/// What is told how a request settled that was dropped mid-wait.
type Abandoned = Box<dyn FnOnce(Verdict) + Send>;

/// One held request, waiting. Dropping it (the agent went away) takes the
/// request out of the queue.
pub struct Held {
    id: String,
    binding: Binding,
    timeout: Duration,
    rx: oneshot::Receiver<Verdict>,
    queue: Arc<Approvals>,
    abandoned: Option<Abandoned>,
}

impl Held {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the verdict, or the timeout. An approval bound to another
    /// call than this one (which the queue never hands out) is a denial.
    pub async fn wait(self) -> Verdict {
        self.wait_unless(std::future::pending()).await
    }

    /// As [`Held::wait`], unless `gone` (the agent went away) ends first:
    /// then the request leaves the queue, [`Verdict::Withdrawn`], unless a
    /// verdict was sent before it left, which stands. Verdicts are sent
    /// under the queue's lock, and the request leaves under it, so after
    /// it has left a verdict is either in the channel or was never given:
    /// an approver is not told a request was decided that then goes
    /// unrecorded. The timeout ends the wait the same way.
    pub async fn wait_unless(mut self, gone: impl Future<Output = ()>) -> Verdict {
        let verdict = tokio::select! {
            // A verdict or the timeout first, when both are ready.
            biased;
            verdict = tokio::time::timeout(self.timeout, &mut self.rx) => match verdict {
                Ok(Ok(verdict)) => verdict,
                // The timeout (or the sender gone without a verdict, which
                // the queue never does): out of the queue, unless a verdict
                // came just before.
                Ok(Err(_)) | Err(_) => self.leave().unwrap_or(Verdict::TimedOut {
                    after: self.timeout,
                }),
            },
            () = gone => self.leave().unwrap_or(Verdict::Withdrawn),
        };
        // Settled here: the holder is told.
        self.abandoned = None;
        self.checked(verdict)
    }

    /// `abandoned` is told how the request settled if its holder drops the
    /// wait before it ends (an HTTP/2 agent reset its stream, the daemon
    /// stops): withdrawn, or the verdict an approver sent after the wait
    /// was last polled, which the approver was told had landed.
    pub fn on_abandoned(&mut self, abandoned: impl FnOnce(Verdict) + Send + 'static) {
        self.abandoned = Some(Box::new(abandoned));
    }

    /// An approval bound to another call than this one (which the queue
    /// never hands out) is a denial.
    fn checked(&self, verdict: Verdict) -> Verdict {
        match verdict {
            Verdict::Approved { binding, by } if binding != self.binding => Verdict::Denied {
                by,
                reason: "the approval is bound to another request".into(),
            },
            v => v,
        }
    }

    /// Takes the request out of the queue, under its lock: the verdict sent
    /// before it left, if one was and it was not taken already, or `None`
    /// (none can be sent after).
    fn leave(&mut self) -> Option<Verdict> {
        self.queue.forget(&self.id);
        self.rx.try_recv().ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let verdict = self.leave();
        if let Some(abandoned) = self.abandoned.take() {
            abandoned(verdict.map_or(Verdict::Withdrawn, |v| self.checked(v)));
        }
    }
}

/// 64 random bits, hex: short enough to type into `agentguard approve`.
fn new_id() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No system randomness: still unique within this queue by time.
        let ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = ns.to_be_bytes();
    }
    hex::encode(b)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
