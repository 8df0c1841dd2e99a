//! `GET /v1/audit/stream`: committed audit records as Server-Sent Events
//! (one `data:` line of JSON per record, its `id:` the sequence number), for
//! `agentguard audit tail`.
//!
//! Query parameters: `agent`, `decision`, `kind` (filters), `backlog=N` (the
//! last N matching records from the store first, then live ones). A follower
//! too slow for the stream is told how many records it missed (an
//! `event: lagged`) and carries on; the store itself never misses any.

use std::sync::Arc;

use hyper::body::Bytes;
use tokio::sync::{broadcast, mpsc};

use crate::audit::{
    AuditSink, Decision, Kind, Record, Store,
    query::Filter,
    sse::{self, SseBody, event},
};

/// The most backlog records one request may ask for.
const MAX_BACKLOG: u64 = 10_000;

/// Parsed stream parameters; `Err` names the bad one.
pub fn parse(query: Option<&str>) -> Result<(Filter, u64), String> {
    let mut filter = Filter::default();
    let mut backlog = 0;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = crate::percent::decode_form(v);
        match k {
            "agent" => filter.agent = Some(v),
            "decision" => {
                filter.decision =
                    Some(Decision::parse(&v).ok_or_else(|| format!("unknown decision {v:?}"))?);
            }
            "kind" => {
                filter.kind = Some(Kind::parse(&v).ok_or_else(|| format!("unknown kind {v:?}"))?);
            }
            "backlog" => {
                backlog = v
                    .parse::<u64>()
                    .map_err(|_| format!("backlog must be a number, got {v:?}"))?
                    .min(MAX_BACKLOG);
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok((filter, backlog))
}

/// The SSE body for one follower.
pub fn open(sink: &AuditSink, filter: Filter, backlog: u64) -> SseBody {
    // Subscribe before reading the backlog, so nothing falls between them;
    // records the backlog already holds are skipped by sequence number.
    let live = sink.subscribe();
    let (tx, body) = sse::channel();
    tokio::spawn(pump(sink.db_path().to_owned(), live, filter, backlog, tx));
    body
}

async fn pump(
    db: std::path::PathBuf,
    live: broadcast::Receiver<Arc<Record>>,
    filter: Filter,
    backlog: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let mut last_seq = 0;
    if backlog > 0 {
        let f = filter.clone();
        let rows = tokio::task::spawn_blocking(move || {
            Store::open_read_only(&db).and_then(|s| f.select(&s, Some(backlog)))
        })
        .await;
        if let Ok(Ok(rows)) = rows {
            for r in rows {
                last_seq = r.seq;
                if tx.send(event(&r)).await.is_err() {
                    return;
                }
            }
        }
    }
    // The backlog is over: a client that only wanted it can stop here.
    if tx
        .send(Bytes::from_static(b"event: following\ndata: {}\n\n"))
        .await
        .is_err()
    {
        return;
    }
    sse::follow(live, tx, last_seq, |r| filter.matches(&r.event)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_and_bad_ones_are_named() {
        let (f, backlog) = parse(Some("agent=my%2Dbot&decision=would-deny&backlog=5")).unwrap();
        assert_eq!(f.agent.as_deref(), Some("my-bot"));
        assert_eq!(f.decision, Some(Decision::WouldDeny));
        assert_eq!(backlog, 5);
        assert!(parse(Some("decision=maybe")).unwrap_err().contains("maybe"));
        assert!(parse(Some("colour=red")).unwrap_err().contains("colour"));
        assert_eq!(parse(None).unwrap().1, 0);
    }
}
