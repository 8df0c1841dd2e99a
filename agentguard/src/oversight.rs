//! What people do to running agents: approve or deny a held request, revoke
//! an agent or restore it. One place, behind both the admin socket (`agentguard
//! approve`, `deny`, `revoke`, `restore`) and the web view, so that each
//! action means the same and leaves the same audit event whoever takes it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    approvals::{ApprovalError, Approvals, PendingView},
    audit::{AuditSink, Decision, Event, Kind},
    live::Live,
    revoke::{Revocations, RevokeError, Revoked},
};

/// Makes the kernel's revoked marks match the saved revocations (see
/// [`crate::revoke::kernel`]). Blocking: it waits for a reload under way.
pub type KernelSync = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The longest reason kept: prose for the record, not a channel.
const MAX_REASON: usize = 512;

#[derive(Debug, Error)]
pub enum OversightError {
    #[error("no agent named {0:?} in the running policy")]
    UnknownAgent(String),
    #[error("agent {0:?} is not revoked")]
    NotRevoked(String),
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    #[error(transparent)]
    Revoke(#[from] RevokeError),
    /// The task carrying the action out stopped before its end (it
    /// panicked, or the daemon is stopping).
    #[error("the {0} did not finish: {1}")]
    Unfinished(&'static str, String),
}

/// What a revocation did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeOutcome {
    pub agent: String,
    /// False if the agent was already revoked (the first reason stays).
    pub newly_revoked: bool,
    /// Connections and tunnels of the agent that were open, now closed.
    pub connections_closed: usize,
    /// Held requests of the agent, now denied.
    pub approvals_denied: usize,
    /// Cached tokens of the agent, dropped.
    pub credentials_dropped: usize,
    /// Set when something did not take: the revocation holds in the proxy
    /// regardless, but the operator must act (it will not survive a
    /// restart, or the kernel flag is not set).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreOutcome {
    pub agent: String,
    pub warnings: Vec<String>,
}

pub struct Oversight {
    pub approvals: Arc<Approvals>,
    pub revocations: Arc<Revocations>,
    live: Arc<Live>,
    audit: AuditSink,
    kernel: KernelSync,
    /// Revocations and restorations one at a time, each with its records:
    /// one that waits for the audit store (its caller perhaps gone) is
    /// not overtaken: the records come in the order the changes took
    /// effect, and a restoration asked for meanwhile finds the revocation
    /// done.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Oversight {
    pub fn new(
        approvals: Arc<Approvals>,
        revocations: Arc<Revocations>,
        live: Arc<Live>,
        audit: AuditSink,
        kernel: KernelSync,
    ) -> Self {
        Self {
            approvals,
            revocations,
            live,
            audit,
            kernel,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Revokes `agent` for `actor`: its open connections are closed, its
    /// new ones refused, its held requests denied, its cached tokens
    /// dropped, and the kernel flag set; saved so that it survives a
    /// restart. Carried out to its end and recorded even if the caller
    /// goes away meanwhile (`to_the_end`).
    pub async fn revoke(
        self: &Arc<Self>,
        agent: &str,
        reason: &str,
        actor: &str,
    ) -> Result<RevokeOutcome, OversightError> {
        let (this, agent, reason, actor) = (
            self.clone(),
            agent.to_owned(),
            reason.to_owned(),
            actor.to_owned(),
        );
        to_the_end("revocation", async move {
            let _turn = this.one_at_a_time.lock().await;
            this.revoke_here(&agent, &reason, &actor).await
        })
        .await
    }

    async fn revoke_here(
        &self,
        agent: &str,
        reason: &str,
        actor: &str,
    ) -> Result<RevokeOutcome, OversightError> {
        let state = self.live.load();
        if state.policy.agent(agent).is_none() {
            return Err(OversightError::UnknownAgent(agent.to_owned()));
        }
        let reason = clip(reason.trim());
        let reason = if reason.is_empty() {
            "revoked".to_owned()
        } else {
            reason
        };
        let mut warnings = Vec::new();
        // Held requests first, each with its own record: closing the
        // agent's connections next would otherwise take them unrecorded.
        let denied = self.approvals.deny_agent(
            agent,
            actor,
            &format!("agent {agent:?} was revoked: {reason}"),
        );
        for view in &denied {
            self.audit
                .record_even_if_dropped(approval_revoked(view, actor, &reason))
                .await;
        }
        let open = self.revocations.open_connections(agent);
        let newly_revoked = match self.revocations.revoke(
            agent,
            Revoked {
                reason: reason.clone(),
                by: actor.to_owned(),
                time: crate::audit::event::format_time(std::time::SystemTime::now()),
            },
        ) {
            Ok(changed) => changed,
            Err(e) => {
                warnings.push(format!("{e}: the revocation holds until the daemon stops"));
                true
            }
        };
        if let Err(e) = self.sync_kernel().await {
            warnings.push(format!("the kernel flag was not set: {e}"));
        }
        let approvals_denied = denied.len();
        let credentials_dropped = state.credentials.forget_agent(agent).await;
        let mut event = self.event(agent, actor, Decision::Deny, "revoke", &reason);
        if !newly_revoked {
            event.reason = Some(format!("{reason} (already revoked)").into());
        }
        self.audit.record_even_if_dropped(event).await;
        info!(agent, actor, reason = %reason, connections = open, approvals_denied, credentials_dropped, "agent revoked");
        for w in &warnings {
            warn!(agent, "{w}");
        }
        Ok(RevokeOutcome {
            agent: agent.to_owned(),
            newly_revoked,
            connections_closed: open,
            approvals_denied,
            credentials_dropped,
            warnings,
        })
    }

    /// Lifts `agent`'s revocation: new connections are accepted again.
    /// Carried out to its end and recorded even if the caller goes away
    /// meanwhile (`to_the_end`).
    pub async fn restore(
        self: &Arc<Self>,
        agent: &str,
        actor: &str,
    ) -> Result<RestoreOutcome, OversightError> {
        let (this, agent, actor) = (self.clone(), agent.to_owned(), actor.to_owned());
        to_the_end("restoration", async move {
            let _turn = this.one_at_a_time.lock().await;
            this.restore_here(&agent, &actor).await
        })
        .await
    }

    async fn restore_here(
        &self,
        agent: &str,
        actor: &str,
    ) -> Result<RestoreOutcome, OversightError> {
        if self.revocations.revoked(agent).is_none() {
            return Err(OversightError::NotRevoked(agent.to_owned()));
        }
        self.revocations.restore(agent)?;
        let mut warnings = Vec::new();
        if let Err(e) = self.sync_kernel().await {
            warnings.push(format!("the kernel flag was not cleared: {e}"));
        }
        self.audit
            .record_even_if_dropped(self.event(
                agent,
                actor,
                Decision::Allow,
                "restore",
                "restored",
            ))
            .await;
        info!(agent, actor, "agent restored");
        Ok(RestoreOutcome {
            agent: agent.to_owned(),
            warnings,
        })
    }

    /// Approves held request `id` for `actor` (the event is recorded by the
    /// request itself, when the approval reaches it).
    pub fn approve(
        &self,
        id: &str,
        actor: &str,
        expected_hash: Option<&str>,
    ) -> Result<PendingView, OversightError> {
        Ok(self.approvals.approve(id, actor, expected_hash)?)
    }

    pub fn deny(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        expected_hash: Option<&str>,
    ) -> Result<PendingView, OversightError> {
        let reason = clip(reason.trim());
        let reason = if reason.is_empty() {
            format!("denied by {actor}")
        } else {
            reason
        };
        Ok(self.approvals.deny(id, actor, &reason, expected_hash)?)
    }

    /// The kernel's marks, after the saved list changed (off the
    /// runtime's workers: a reload under way holds what it waits for).
    async fn sync_kernel(&self) -> Result<(), String> {
        let sync = self.kernel.clone();
        tokio::task::spawn_blocking(move || sync())
            .await
            .map_err(|e| e.to_string())?
    }

    fn event(
        &self,
        agent: &str,
        actor: &str,
        decision: Decision,
        rule: &str,
        reason: &str,
    ) -> Event {
        let state = self.live.load();
        let mut e = Event::new(Kind::Revocation).with_decision(decision, reason);
        e.agent = Some(agent.into());
        if let Some(guarded) = state.agents.get(agent) {
            e.cgroup_id = Some(guarded.cgroup.id);
        }
        if let Some(policy) = state.policy.agent(agent) {
            e.cgroup_path = Some(policy.cgroup.to_string().into());
        }
        e.actor = Some(actor.to_owned());
        e.rule = Some(rule.into());
        e.policy_version = Some(state.policy.version.clone());
        e
    }
}

/// Runs `action` in a task of its own and waits for it. The caller's
/// future is dropped when its client goes away (an operator's `agentguard
/// revoke` interrupted while the audit store made it wait, a browser tab
/// closed), and an action run inside it stopped at its first wait: held
/// requests denied but the agent not revoked, or revoked with no event
/// recorded. A task runs on; dropping its handle does not stop it.
async fn to_the_end<T: Send + 'static>(
    what: &'static str,
    action: impl Future<Output = Result<T, OversightError>> + Send + 'static,
) -> Result<T, OversightError> {
    tokio::spawn(action)
        .await
        .unwrap_or_else(|e| Err(OversightError::Unfinished(what, e.to_string())))
}

/// The record of a held request denied because its agent was revoked.
fn approval_revoked(view: &PendingView, actor: &str, reason: &str) -> Event {
    let mut e = Event::new(Kind::Approval).with_decision(
        Decision::Deny,
        format!("agent {:?} was revoked: {reason}", view.agent),
    );
    e.agent = Some(view.agent.as_str().into());
    e.pid = Some(view.pid);
    e.uid = Some(view.uid);
    e.exe = view.exe.as_deref().map(Into::into);
    e.tool = Some(view.tool.as_str().into());
    e.method = Some(view.method.as_str().into());
    e.path = Some(view.url.clone());
    e.intent = view.intent.clone();
    e.rule = Some("approval:revoked".into());
    e.actor = Some(actor.to_owned());
    e.approval_id = Some(view.id.clone());
    e.request_hash = Some(view.request_hash.clone());
    e
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests;
