//! `agentguard audit verify`: walks the chain from its start (the genesis,
//! or the signed checkpoint that retention left as anchor) and reports the
//! first sequence number where it breaks.
//!
//! What breaks it: an edited row (its hash no longer matches its content), a
//! deleted row (a gap in the sequence), rows moved or swapped (`seq` and
//! `prev_hash` are inside each hash), a checkpoint whose signature or hash
//! does not match, and events removed from the end up to a checkpoint.
//!
//! Everything in the store can be cut or replaced together with the store:
//! the tail with the checkpoints after the cut, or the whole chain. Only
//! what left the host catches that: given exported checkpoints (anchors,
//! see [`super::anchor`]), every one of them must match the chain, so
//! events cut up to the newest exported checkpoint, and a chain made anew,
//! are found and named. Events after the newest exported checkpoint are
//! covered by the chain alone, which is why checkpoints come often.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    chain::{GENESIS, Hash, from_hex, hash_row, to_hex},
    signing::Verifier,
    store::{Checkpoint, Store, StoreError},
};

/// An intact chain.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub events: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The checkpoint the chain starts from after retention.
    pub anchor_seq: Option<i64>,
    pub checkpoints: usize,
    pub last_checkpoint_seq: Option<i64>,
    /// The newest exported checkpoint the chain was checked against.
    pub anchor: Option<AnchorCheck>,
}

/// The exported checkpoints a chain matched.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorCheck {
    /// How many were given.
    pub count: usize,
    pub newest_seq: i64,
    pub newest_time: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.first_seq, self.last_seq) {
            (Some(first), Some(last)) => write!(
                f,
                "audit chain intact: {} events (seq {first}..={last})",
                self.events
            )?,
            _ => write!(f, "audit chain intact: no events")?,
        }
        if let Some(anchor) = self.anchor_seq {
            write!(f, ", anchored at signed checkpoint {anchor}")?;
        }
        write!(f, ", {} signed checkpoints", self.checkpoints)?;
        if let (Some(c), Some(last)) = (self.last_checkpoint_seq, self.last_seq) {
            write!(f, " (last at seq {c}; {} events after it)", last - c)?;
        }
        if let Some(a) = &self.anchor {
            write!(
                f,
                "; matches {} exported checkpoint(s), the newest at seq {} ({})",
                a.count, a.newest_seq, a.newest_time
            )?;
        }
        Ok(())
    }
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub seq: i64,
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit chain broken at seq {}: {}", self.seq, self.reason)
    }
}

/// `Ok(Ok(report))` for an intact chain, `Ok(Err(break))` for the first
/// break, `Err` when the store cannot be read at all.
pub fn verify(store: &Store, key: &Verifier) -> Result<Result<Report, Break>, StoreError> {
    verify_anchored(store, key, &[])
}

/// [`verify`], and the chain must match each of `anchors`: exported
/// checkpoints whose signatures the caller has checked against `key`
/// ([`super::anchor::check_signatures`]).
pub fn verify_anchored(
    store: &Store,
    key: &Verifier,
    anchors: &[Checkpoint],
) -> Result<Result<Report, Break>, StoreError> {
    let checkpoints: BTreeMap<i64, Checkpoint> = store
        .checkpoints()?
        .into_iter()
        .map(|c| (c.seq, c))
        .collect();
    let mut breaks: Vec<Break> = Vec::new();
    let first_break = |b: Break, breaks: &mut Vec<Break>| breaks.push(b);

    // Every checkpoint must carry a valid signature by the trusted key.
    let key_id = key.key_id();
    for c in checkpoints.values() {
        let signed =
            from_hex(&c.hash).is_some_and(|h| key.verify(c.seq, &h, &c.time, &c.signature));
        if !signed {
            let why = if c.key_id == key_id {
                "the checkpoint's signature does not verify".to_owned()
            } else {
                format!("the checkpoint is signed by another key ({})", c.key_id)
            };
            first_break(
                Break {
                    seq: c.seq,
                    reason: why,
                },
                &mut breaks,
            );
        }
    }

    let exported: BTreeMap<i64, &Checkpoint> = anchors.iter().map(|a| (a.seq, a)).collect();
    let mut expected_seq: Option<i64> = None;
    let mut prev: Hash = GENESIS;
    let mut events = 0u64;
    let (mut first_seq, mut last_seq, mut anchor_seq) = (None, None, None);
    store.scan(|seq, values, prev_hash, hash| {
        match expected_seq {
            None => {
                first_seq = Some(seq);
                // The chain starts at the genesis (seq 1) or at the anchor
                // checkpoint just before the first remaining event.
                if seq > 1 {
                    match checkpoints.range(..seq).next_back() {
                        Some((&c, anchor)) if c == seq - 1 => {
                            anchor_seq = Some(c);
                            prev = from_hex(&anchor.hash).unwrap_or(GENESIS);
                        }
                        Some((&c, _)) => {
                            first_break(Break { seq: c + 1, reason: format!("event {} is missing (the chain resumes at {seq})", c + 1) }, &mut breaks);
                            return false;
                        }
                        None => {
                            first_break(Break { seq: 1, reason: format!("events 1..{seq} are missing and no signed checkpoint anchors the chain") }, &mut breaks);
                            return false;
                        }
                    }
                }
            }
            Some(expected) if seq != expected => {
                first_break(Break { seq: expected, reason: format!("event {expected} is missing (the next stored event is {seq})") }, &mut breaks);
                return false;
            }
            Some(_) => {}
        }
        if prev_hash != to_hex(&prev) {
            first_break(Break { seq, reason: "prev_hash does not match the previous event's hash (rows removed, moved or rewritten)".into() }, &mut breaks);
            return false;
        }
        let computed = match hash_row(seq, &prev, &values) {
            Ok(h) => h,
            Err(e) => {
                first_break(Break { seq, reason: format!("the row holds {e}") }, &mut breaks);
                return false;
            }
        };
        if to_hex(&computed) != hash {
            first_break(Break { seq, reason: "the row's content does not match its hash (edited)".into() }, &mut breaks);
            return false;
        }
        if let Some(c) = checkpoints.get(&seq)
            && c.hash != hash
        {
            first_break(Break { seq, reason: "the event's hash differs from the one its signed checkpoint holds (chain rewritten)".into() }, &mut breaks);
            return false;
        }
        if let Some(a) = exported.get(&seq)
            && a.hash != hash
        {
            first_break(Break { seq, reason: replaced(a, &hash) }, &mut breaks);
            return false;
        }
        prev = computed;
        events += 1;
        last_seq = Some(seq);
        expected_seq = Some(seq + 1);
        true
    })?;

    // Events removed from the end up to (or past) a checkpoint.
    let end = last_seq.or(anchor_seq).unwrap_or(0);
    if let Some((&c, _)) = checkpoints.range(end + 1..).next()
        && breaks.iter().all(|b| b.seq > end)
    {
        breaks.push(Break {
            seq: end + 1,
            reason: format!(
                "events {}..={c} are missing: a signed checkpoint covers them",
                end + 1
            ),
        });
    }

    // What left the host: nothing it covers may be missing or different.
    if let Some(newest) = exported.values().next_back().filter(|a| a.seq > end) {
        let held = if end == 0 {
            "the store holds no events".to_owned()
        } else {
            format!("the store ends at seq {end}")
        };
        let beyond = exported.range(end + 1..).count();
        breaks.push(Break {
            seq: end + 1,
            reason: format!(
                "events {}..={} are missing: {beyond} exported checkpoint(s) cover them, the newest at seq {} (signed {}), and {held}: the record was cut or replaced",
                end + 1,
                newest.seq,
                newest.seq,
                newest.time
            ),
        });
    }
    for a in exported.values() {
        // Retention removed the events up to its anchor; that checkpoint
        // is still there to compare. Older exported ones cover only removed
        // events.
        if anchor_seq == Some(a.seq)
            && let Some(kept) = checkpoints.get(&a.seq)
            && kept.hash != a.hash
        {
            breaks.push(Break {
                seq: a.seq,
                reason: replaced(a, &kept.hash),
            });
        }
    }

    if let Some(b) = breaks.into_iter().min_by_key(|b| b.seq) {
        return Ok(Err(b));
    }
    Ok(Ok(Report {
        events,
        first_seq,
        last_seq,
        anchor_seq,
        checkpoints: checkpoints.len(),
        last_checkpoint_seq: checkpoints.keys().next_back().copied(),
        anchor: exported.values().next_back().map(|a| AnchorCheck {
            count: exported.len(),
            newest_seq: a.seq,
            newest_time: a.time.clone(),
        }),
    }))
}

fn replaced(exported: &Checkpoint, stored_hash: &str) -> String {
    let short = |h: &str| h.chars().take(16).collect::<String>();
    format!(
        "event {seq} is not the one the exported checkpoint {seq} (signed {time}) covers: hash {} there, {} here: the chain was replaced or rewritten",
        short(&exported.hash),
        short(stored_hash),
        seq = exported.seq,
        time = exported.time,
    )
}
