//! A verify-proxy's decisions as the admin API takes them
//! (`POST /v1/audit/verify-proxy`), so the tool-side verdict on a token sits
//! in the daemon's audit record next to the proxy-side event that minted it
//! (same `jti`). The sender is `verify_proxy::report`.
//!
//! Only what the verifier established is reported: a refused token's claims
//! are unverified and stay out, and the token itself never leaves.

use std::{net::IpAddr, sync::Arc};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::audit::{Decision, Event, Kind};

/// `POST` here with `?event=BASE64URL(JSON of VerifyReport)`.
pub const REPORT_ROUTE: &str = "/v1/audit/verify-proxy";
/// A report larger than this is refused by the daemon; the reporter cuts
/// the free-text fields to [`MAX_FIELD_CHARS`] so that its own never are.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
const MAX_FIELD_CHARS: usize = 1024;

/// One decision of a verify-proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The audience the verify-proxy answers to (the tool).
    pub audience: String,
    pub allowed: bool,
    /// The status verify-proxy answered with (400, 401, 403, 408, 413,
    /// 503) or, when allowed, the tool's (502 if unreachable).
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

    /// Cuts the fields the caller chose (path, host, reason) to
    /// [`MAX_FIELD_CHARS`], marking the cut.
    pub fn bounded(mut self) -> Self {
        for field in [&mut self.path, &mut self.host, &mut self.reason] {
            if let Some((at, _)) = field.char_indices().nth(MAX_FIELD_CHARS) {
                field.truncate(at);
                field.push_str("[...]");
            }
        }
        self
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
        let report: Self = serde_json::from_slice(&json).map_err(|e| format!("event: {e}"))?;
        report
            .peer
            .parse::<IpAddr>()
            .map_err(|e| format!("event: peer {:?}: {e}", report.peer))?;
        Ok(report)
    }

    /// The audit event: the agent is the one the token's `sub` names
    /// (`spiffe://<trust-domain>/agent/<name>`), if `is_agent` knows it.
    pub fn into_event(self, is_agent: impl Fn(&str) -> bool) -> Event {
        let mut event = Event::new(Kind::TokenVerification);
        event.agent = self
            .sub
            .as_deref()
            .and_then(|s| s.strip_prefix("spiffe://"))
            .and_then(|s| s.split_once("/agent/"))
            .map(|(_, name)| name)
            .filter(|name| is_agent(name))
            .map(Arc::from);
        event.method = Some(self.method.into());
        event.host = Some(self.host.into());
        event.path = Some(self.path);
        event.protocol = Some("http".into());
        event.rule = Some(format!("verify-proxy:{}", self.audience).into());
        event.token_jti = self.jti;
        event.status = Some(self.status);
        event.src_ip = Some(self.peer.into());
        let (decision, reason) = if self.allowed {
            let sub = self.sub.unwrap_or_default();
            (Decision::Allow, format!("token verified for {sub}"))
        } else {
            (Decision::Deny, self.reason)
        };
        event.with_decision(decision, reason)
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
        let unknown = r.clone().into_event(|_| false);
        assert_eq!(
            unknown.agent, None,
            "only agents the policy knows are named"
        );
        let e = r.into_event(|name| name == "bot");
        assert_eq!(e.kind, Kind::TokenVerification);
        assert_eq!(e.agent.as_deref(), Some("bot"));
        assert_eq!(e.decision, Some(Decision::Allow));
        assert_eq!(e.token_jti.as_deref(), Some("abc"));
        assert_eq!(e.rule.as_deref(), Some("verify-proxy:itsm"));
        let e = report(false).into_event(|_| true);
        assert_eq!(e.agent, None);
        assert_eq!(e.decision, Some(Decision::Deny));
        assert_eq!(e.reason.as_deref(), Some("invalid_token: replay"));
        assert!(VerifyReport::from_query("event=%%%").is_err());
        assert!(VerifyReport::from_query("x=1").is_err());
        let mut bad_peer = report(false);
        bad_peer.peer = "<script>".into();
        assert!(VerifyReport::from_query(&bad_peer.to_query()).is_err());
    }

    #[test]
    fn the_longest_report_still_fits() {
        let mut r = report(false);
        r.path = "/é".repeat(10_000);
        r.host = "h".repeat(10_000);
        r.reason = "r".repeat(10_000);
        let query = r.bounded().to_query();
        assert!(query.len() <= MAX_REPORT_BYTES, "{}", query.len());
        let back = VerifyReport::from_query(&query).unwrap();
        assert!(back.path.ends_with("[...]") && back.path.starts_with("/é/é"));
    }
}
