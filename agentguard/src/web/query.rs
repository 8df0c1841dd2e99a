//! The events page's filters: agent, decision, kind, tool, host, MCP tool,
//! time, and free text. The same filter selects stored records (SQL, every
//! value a bound parameter) and passes or drops live ones, so a page that
//! follows the stream sees what a reload would show.

use std::time::SystemTime;

use rusqlite::types::Value;

use crate::audit::{
    Decision, Event, Kind, Record, Store, StoreError,
    query::{self, Filter},
};

/// Records one page shows at most.
pub const MAX_LIMIT: u64 = 1000;
const DEFAULT_LIMIT: u64 = 200;
/// Free text longer than this is cut.
const MAX_TEXT: usize = 200;

/// The columns free text searches.
const TEXT_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "agent",
    "cgroup_path",
    "exe",
    "comm",
    "on_behalf_of",
    "intent",
    "dst_ip",
    "sni",
    "host",
    "method",
    "path",
    "tool",
    "rule",
    "decision",
    "reason",
    "credential_id",
    "token_jti",
    "policy_version",
    "actor",
    "approval_id",
    "mcp_target",
];

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub base: Filter,
    pub mcp_target: Option<String>,
    /// Case-insensitive, anywhere in the text columns.
    pub text: Option<String>,
    /// Only records before this sequence number (older pages).
    pub before: Option<i64>,
    /// Only records after it (the stream, resuming).
    pub after: Option<i64>,
}

impl EventFilter {
    /// From a query string; `Err` names the bad parameter. Empty values
    /// mean "any".
    pub fn parse(query: &str, now: SystemTime) -> Result<(Self, u64), String> {
        let mut f = Self::default();
        let mut limit = DEFAULT_LIMIT;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.trim().to_owned();
            if v.is_empty() {
                continue;
            }
            match &*k {
                "agent" => f.base.agent = Some(v),
                "decision" => {
                    f.base.decision =
                        Some(Decision::parse(&v).ok_or_else(|| format!("unknown decision {v:?}"))?)
                }
                "kind" => {
                    f.base.kind =
                        Some(Kind::parse(&v).ok_or_else(|| format!("unknown kind {v:?}"))?)
                }
                "tool" => f.base.tool = Some(v),
                "host" => f.base.host = Some(v),
                "mcp_target" => f.mcp_target = Some(v),
                "since" => {
                    f.base.since = Some(query::parse_time(&v, now).map_err(|e| e.to_string())?)
                }
                "until" => {
                    f.base.until = Some(query::parse_time(&v, now).map_err(|e| e.to_string())?)
                }
                "q" => f.text = Some(v.chars().take(MAX_TEXT).collect::<String>().to_lowercase()),
                "before" => f.before = Some(number("before", &v)?),
                "after" => f.after = Some(number("after", &v)?),
                "limit" => limit = (number("limit", &v)? as u64).clamp(1, MAX_LIMIT),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok((f, limit))
    }

    /// Whether a live record passes.
    pub fn matches(&self, seq: i64, e: &Event) -> bool {
        self.base.matches(e)
            && self
                .mcp_target
                .as_ref()
                .is_none_or(|m| e.mcp_target.as_deref() == Some(m))
            && self.before.is_none_or(|b| seq < b)
            && self.after.is_none_or(|a| seq > a)
            && self
                .text
                .as_ref()
                .is_none_or(|t| text_of(e).contains(t.as_str()))
    }

    /// The newest `limit` matching records, oldest first.
    pub fn select(&self, store: &Store, limit: u64) -> Result<Vec<Record>, StoreError> {
        let mut clauses = vec!["1 = 1".to_owned()];
        let mut params: Vec<Value> = Vec::new();
        let mut add = |clause: &str, value: Value| {
            params.push(value);
            clauses.push(clause.replace('?', &format!("?{}", params.len())));
        };
        let f = &self.base;
        if let Some(a) = &f.agent {
            add("agent = ?", Value::Text(a.clone()));
        }
        if let Some(d) = f.decision {
            add(
                crate::audit::store::decision_clause(d),
                Value::Text(d.as_str().into()),
            );
        }
        if let Some(k) = f.kind {
            add("kind = ?", Value::Text(k.as_str().into()));
        }
        if let Some(t) = &f.tool {
            add("tool = ?", Value::Text(t.clone()));
        }
        if let Some(h) = &f.host {
            // Both `?` become the same numbered parameter.
            add(
                "(lower(host) = ? OR lower(sni) = ?)",
                Value::Text(h.to_ascii_lowercase()),
            );
        }
        if let Some(s) = &f.since {
            add(store.since_clause(), Value::Text(s.clone()));
        }
        if let Some(u) = &f.until {
            add(store.until_clause(), Value::Text(u.clone()));
        }
        if let Some(m) = &self.mcp_target {
            add("mcp_target = ?", Value::Text(m.clone()));
        }
        if let Some(b) = self.before {
            add("seq < ?", Value::Integer(b));
        }
        if let Some(a) = self.after {
            add("seq > ?", Value::Integer(a));
        }
        if let Some(t) = &self.text {
            let joined = TEXT_COLUMNS
                .iter()
                .map(|c| format!("coalesce({c}, '')"))
                .collect::<Vec<_>>()
                .join(" || ' ' || ");
            add(
                &format!("instr(lower({joined}), ?) > 0"),
                Value::Text(t.clone()),
            );
        }
        store.select(&clauses.join(" AND "), &params, Some(limit))
    }
}

/// The searchable text of an event, lowercase, as the SQL builds it.
fn text_of(e: &Event) -> String {
    let row = e.to_row();
    let columns = crate::audit::event::COLUMNS;
    TEXT_COLUMNS
        .iter()
        .map(
            |c| match columns.iter().position(|k| k == c).map(|i| &row[i]) {
                Some(Value::Text(t)) => t.to_lowercase(),
                _ => String::new(),
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn number(name: &str, v: &str) -> Result<i64, String> {
    v.parse()
        .map_err(|_| format!("{name} must be a number, got {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(agent: &str, host: &str, reason: &str) -> Event {
        let mut e = Event::new(Kind::Request).with_decision(Decision::Allow, reason);
        e.agent = Some(agent.into());
        e.host = Some(host.into());
        e.tool = Some("github".into());
        e
    }

    #[test]
    fn stored_and_live_records_pass_the_same_filters() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let events = [
            request("bot", "api.github.com", "allowed by tool"),
            request("bot", "API.Example.com", "Merge Freeze"),
            request("other", "api.github.com", "x"),
        ];
        let mut mcp = request("bot", "mcp.example.com", "y");
        mcp.mcp_target = Some("create_issue".into());
        let all: Vec<Event> = events.into_iter().chain([mcp]).collect();
        // The chain's hashes do not matter to filters.
        let records: Vec<Record> = all
            .iter()
            .enumerate()
            .map(|(i, e)| Record {
                seq: i as i64 + 1,
                event: e.clone(),
                prev_hash: String::new(),
                hash: String::new(),
            })
            .collect();
        store.append(&records, None).unwrap();
        let now = SystemTime::now();
        for (query, want) in [
            ("agent=bot", vec![1, 2, 4]),
            ("host=api.example.com", vec![2]),
            ("q=merge+freeze", vec![2]),
            ("q=GITHUB.COM&agent=other", vec![3]),
            ("mcp_target=create_issue", vec![4]),
            ("before=3&agent=bot", vec![1, 2]),
            ("after=2", vec![3, 4]),
            ("since=1h&decision=allow&tool=github", vec![1, 2, 3, 4]),
            ("agent=&q=", vec![1, 2, 3, 4]),
        ] {
            let (f, limit) = EventFilter::parse(query, now).unwrap();
            let stored: Vec<i64> = f
                .select(&store, limit)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect();
            assert_eq!(stored, want, "{query} (stored)");
            let live: Vec<i64> = all
                .iter()
                .enumerate()
                .map(|(i, e)| (i as i64 + 1, e))
                .filter(|(seq, e)| f.matches(*seq, e))
                .map(|(seq, _)| seq)
                .collect();
            assert_eq!(live, want, "{query} (live)");
        }
        assert!(EventFilter::parse("decision=maybe", now).is_err());
        assert!(EventFilter::parse("colour=red", now).is_err());
        assert_eq!(EventFilter::parse("limit=99999", now).unwrap().1, MAX_LIMIT);
    }
}
