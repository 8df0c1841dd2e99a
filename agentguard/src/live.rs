//! The policy-derived state every decision reads: the policy set, the agent
//! table and the credentials. A reload builds a complete new state and swaps
//! it in atomically; requests in flight keep the state they started with, and
//! open connections see the new one from their next request.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::{credentials::CredentialStore, identity::AgentTable, policy::PolicySet};

pub struct LiveState {
    pub policy: Arc<PolicySet>,
    pub agents: Arc<AgentTable>,
    pub credentials: Arc<CredentialStore>,
}

/// Outcome of the latest reload attempt, for `agentguard status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReloadStatus {
    /// RFC 3339 time of the attempt.
    pub time: String,
    /// What triggered it: "start", "SIGHUP" or "file change".
    pub trigger: String,
    /// Whether the new policy is in force.
    pub accepted: bool,
    /// Version of the policy in force after the attempt.
    pub active_version: String,
    /// Why a rejected policy was rejected (file:line: reason lines).
    pub error: Option<String>,
}

pub struct Live {
    current: ArcSwap<LiveState>,
    last_reload: Mutex<ReloadStatus>,
}

impl Live {
    pub fn new(initial: LiveState) -> Self {
        let status = ReloadStatus {
            time: now(),
            trigger: "start".into(),
            accepted: true,
            active_version: initial.policy.version.to_string(),
            error: None,
        };
        Self {
            current: ArcSwap::from_pointee(initial),
            last_reload: Mutex::new(status),
        }
    }

    pub fn load(&self) -> Arc<LiveState> {
        self.current.load_full()
    }

    pub fn accept(&self, state: LiveState, trigger: &str) {
        let version = state.policy.version.to_string();
        self.current.store(Arc::new(state));
        self.set_status(ReloadStatus {
            time: now(),
            trigger: trigger.into(),
            accepted: true,
            active_version: version,
            error: None,
        });
    }

    /// Swaps in a state built from the policy in force, with agents guarded
    /// in other cgroups (a systemd unit restarted): not a reload, so the
    /// last reload's outcome stays as it was.
    pub fn swap_agents(&self, state: LiveState) {
        self.current.store(Arc::new(state));
    }

    pub fn reject(&self, trigger: &str, error: String) {
        self.set_status(ReloadStatus {
            time: now(),
            trigger: trigger.into(),
            accepted: false,
            active_version: self.load().policy.version.to_string(),
            error: Some(error),
        });
    }

    pub fn last_reload(&self) -> ReloadStatus {
        self.last_reload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_status(&self, status: ReloadStatus) {
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
