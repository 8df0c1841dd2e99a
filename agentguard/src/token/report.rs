//! verify-proxy's decisions, sent to the daemon's audit record when it runs
//! beside one (`--admin-socket`), so the tool-side verdict on a token sits
//! next to the proxy-side event that minted it (same `jti`).
//!
//! Only what the verifier established is reported: a refused token's claims
//! are unverified and stay out, and the token itself never leaves.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    admin::AdminClient,
    audit::{Decision, Event, Kind},
};

/// `POST` here with `?event=BASE64URL(JSON of VerifyReport)`.
pub const REPORT_ROUTE: &str = "/v1/audit/verify-proxy";
/// A report larger than this is refused by the daemon.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// One decision of a verify-proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The audience the verify-proxy answers to (the tool).
    pub audience: String,
    pub allowed: bool,
    /// The status verify-proxy answered with (401, 403, 413) or, when
    /// allowed, the tool's.
    pub status: u16,
    pub method: String,
    pub host: String,
    /// Path without the query: a query may carry the tool's own secrets.
    pub path: String,
    pub reason: String,
    /// The verified `sub` and `jti`, for allowed requests only.
    pub sub: Option<String>,
    pub jti: Option<String>,
    /// The caller of the verify-proxy.
    pub peer: String,
}

impl VerifyReport {
    pub fn to_query(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "event={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn from_query(query: &str) -> Result<Self, String> {
        let value = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("event="))
            .ok_or("expected ?event=BASE64URL(JSON)")?;
        if value.len() > MAX_REPORT_BYTES {
            return Err(format!("report larger than {MAX_REPORT_BYTES} bytes"));
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("event: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| format!("event: {e}"))
    }

    /// The audit event: the agent is the one the token's `sub` names
    /// (`spiffe://<trust-domain>/agent/<name>`).
    pub fn into_event(self) -> Event {
        let mut event = Event::new(Kind::TokenVerification);
        event.agent = self
            .sub
            .as_deref()
            .and_then(|s| s.strip_prefix("spiffe://"))
            .and_then(|s| s.split_once("/agent/"))
            .map(|(_, name)| name.to_owned());
        event.method = Some(self.method);
        event.host = Some(self.host);
        event.path = Some(self.path);
        event.protocol = Some("http".into());
        event.rule = Some(format!("verify-proxy:{}", self.audience));
        event.token_jti = self.jti;
        event.status = Some(self.status);
        event.src_ip = Some(self.peer);
        let (decision, reason) = if self.allowed {
            let sub = self.sub.unwrap_or_default();
            (Decision::Allow, format!("token verified for {sub}"))
        } else {
            (Decision::Deny, self.reason)
        };
        event.with_decision(decision, reason)
    }
}

/// Sends reports to the daemon without holding up the request: a daemon
/// that is down costs a warning (and a count), never a tool call.
pub struct Reporter {
    client: AdminClient,
    failed: AtomicU64,
}

impl Reporter {
    pub fn new(admin_socket: &Path) -> Arc<Self> {
        Arc::new(Self {
            client: AdminClient::new(admin_socket),
            failed: AtomicU64::new(0),
        })
    }

    pub fn report(self: &Arc<Self>, report: VerifyReport) {
        let this = self.clone();
        tokio::spawn(async move {
            let route = format!("{REPORT_ROUTE}?{}", report.to_query());
            if let Err(e) = this.client.post::<serde_json::Value>(&route).await {
                let failed = this.failed.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(error = %e, failed, "could not record the decision in the daemon's audit record");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(allowed: bool) -> VerifyReport {
        VerifyReport {
            audience: "itsm".into(),
            allowed,
            status: if allowed { 200 } else { 401 },
            method: "POST".into(),
            host: "tool.example:8443".into(),
            path: "/reflect".into(),
            reason: "invalid_token: replay".into(),
            sub: allowed.then(|| "spiffe://agentguard.local/agent/bot".into()),
            jti: allowed.then(|| "abc".into()),
            peer: "127.0.0.1".into(),
        }
    }

    #[test]
    fn reports_round_trip_and_name_the_agent() {
        let r = report(true);
        assert_eq!(VerifyReport::from_query(&r.to_query()).unwrap(), r);
        let e = r.into_event();
        assert_eq!(e.kind, Kind::TokenVerification);
        assert_eq!(e.agent.as_deref(), Some("bot"));
        assert_eq!(e.decision, Some(Decision::Allow));
        assert_eq!(e.token_jti.as_deref(), Some("abc"));
        assert_eq!(e.rule.as_deref(), Some("verify-proxy:itsm"));
        let e = report(false).into_event();
        assert_eq!(e.agent, None);
        assert_eq!(e.decision, Some(Decision::Deny));
        assert_eq!(e.reason.as_deref(), Some("invalid_token: replay"));
        assert!(VerifyReport::from_query("event=%%%").is_err());
        assert!(VerifyReport::from_query("x=1").is_err());
    }
}
