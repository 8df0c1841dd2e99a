//! Filters for `agentguard audit query` and `audit tail`, turned into SQL with
//! every value bound as a parameter, and matched against live records.

use std::time::{Duration, SystemTime};

use rusqlite::types::Value;
use thiserror::Error;

use super::{
    event::{Decision, Event, Kind, format_time},
    store::{Record, Store, StoreError},
};

#[derive(Debug, Error)]
pub enum QueryError {
    #[error("invalid time {input:?}: expected a duration ago (15m, 2h, 7d) or an RFC 3339 time")]
    Time { input: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to select. `None` fields match anything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub agent: Option<String>,
    pub decision: Option<Decision>,
    pub kind: Option<Kind>,
    /// Matches the request's host or, for connections, the SNI.
    pub host: Option<String>,
    pub tool: Option<String>,
    /// RFC 3339, in the store's fixed-width format.
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Filter {
    /// The SQL condition and its parameters, for `store`.
    fn to_sql(&self, store: &Store) -> (String, Vec<Value>) {
        let mut clauses = vec!["1 = 1".to_owned()];
        let mut params = Vec::new();
        let mut add = |clause: &str, value: String| {
            params.push(Value::Text(value));
            clauses.push(clause.replace('?', &format!("?{}", params.len())));
        };
        if let Some(a) = &self.agent {
            add("agent = ?", a.clone());
        }
        if let Some(d) = self.decision {
            add(super::store::decision_clause(d), d.as_str().to_owned());
        }
        if let Some(k) = self.kind {
            add("kind = ?", k.as_str().to_owned());
        }
        if let Some(h) = &self.host {
            add(
                "(lower(host) = ? OR lower(sni) = ?)",
                h.to_ascii_lowercase(),
            );
        }
        if let Some(t) = &self.tool {
            add("tool = ?", t.clone());
        }
        if let Some(s) = &self.since {
            add(store.since_clause(), s.clone());
        }
        if let Some(u) = &self.until {
            add(store.until_clause(), u.clone());
        }
        (clauses.join(" AND "), params)
    }

    /// Whether a live record passes (the same rules as the SQL).
    pub fn matches(&self, e: &Event) -> bool {
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        let host_ok = self.host.as_ref().is_none_or(|h| {
            [e.host.as_deref(), e.sni.as_deref()]
                .iter()
                .any(|v| v.is_some_and(|v| v.eq_ignore_ascii_case(h)))
        });
        eq(&self.agent, e.agent.as_deref())
            && self.decision.is_none_or(|d| e.decision == Some(d))
            && self.kind.is_none_or(|k| e.kind == k)
            && host_ok
            && eq(&self.tool, e.tool.as_deref())
            && self.since.as_ref().is_none_or(|s| e.time >= *s)
            && self.until.as_ref().is_none_or(|u| e.time <= *u)
    }

    /// The matching records, oldest first; with `limit`, the newest `limit`.
    pub fn select(&self, store: &Store, limit: Option<u64>) -> Result<Vec<Record>, StoreError> {
        let (condition, params) = self.to_sql(store);
        store.select(&condition, &params, limit)
    }
}

/// `15m`, `2h`, `7d` (ago, from `now`) or an RFC 3339 time, as the store
/// writes times.
pub fn parse_time(input: &str, now: SystemTime) -> Result<String, QueryError> {
    let err = || QueryError::Time {
        input: input.to_owned(),
    };
    if let Ok(ago) = humantime::parse_duration(input) {
        return Ok(format_time(
            now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH),
        ));
    }
    let t = humantime::parse_rfc3339_weak(input)
        .or_else(|_| humantime::parse_rfc3339(input))
        .map_err(|_| err())?;
    Ok(format_time(t))
}

/// A day, for retention flags.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_ago_or_rfc3339() {
        let now = humantime::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        assert_eq!(
            parse_time("15m", now).unwrap(),
            "2026-03-01T11:45:00.000000Z"
        );
        assert_eq!(
            parse_time("2026-02-01T00:00:00Z", now).unwrap(),
            "2026-02-01T00:00:00.000000Z"
        );
        assert!(parse_time("yesterday-ish", now).is_err());
    }

    #[test]
    fn live_matching_follows_the_filter() {
        let mut e = Event::new(Kind::Request).with_decision(Decision::Deny, "no tool");
        e.agent = Some("bot".into());
        e.host = Some("API.example.com".into());
        let f = Filter {
            agent: Some("bot".into()),
            decision: Some(Decision::Deny),
            host: Some("api.example.com".into()),
            ..Filter::default()
        };
        assert!(f.matches(&e));
        assert!(
            !Filter {
                decision: Some(Decision::Allow),
                ..f.clone()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                agent: Some("other".into()),
                ..f
            }
            .matches(&e)
        );
    }
}
