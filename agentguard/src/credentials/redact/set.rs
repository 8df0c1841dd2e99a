//! One set of forms to look for, and the search over it: Teddy (SIMD, from
//! the `aho-corasick` crate's packed searchers) where the set is small
//! enough, which builds in microseconds, else an Aho-Corasick automaton,
//! which takes up to milliseconds for the kilobytes of forms a few secrets
//! give and is therefore built once per secret set (`super::cache`).
//! Measured (release, on a loaded 2-core machine): an API key and a JWT,
//! 28 forms, 21 KB: Teddy 13-49 µs, the crate's default automaton 9-20
//! ms; four keys with `/`, `+` and non-ASCII, 164 forms: a contiguous NFA
//! 0.2-0.3 ms; a cache hit 3-20 µs. Both find
//! leftmost-longest matches: where one form contains another (a secret that
//! contains another secret), the longer is cut whole, not left with a hole
//! in it, and the result is the same however a stream is cut.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind, packed};

use super::{MIN_REDACT_LEN, REDACTED, forms};
use crate::credentials::Secret;

enum Matcher {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

pub(super) struct FormSet {
    matcher: Matcher,
    /// Every form, sorted: which suffixes of a chunk could still grow into
    /// one ([`FormSet::hold_from`]).
    sorted: Vec<Box<[u8]>>,
    /// Whether any form starts with this byte: most positions are ruled
    /// out by one lookup.
    starts: [bool; 256],
    longest: usize,
}

impl FormSet {
    /// The forms of every secret long enough to look for; `None` if there
    /// is none.
    pub(super) fn build(secrets: &[Secret]) -> Option<Self> {
        let mut sorted: Vec<Box<[u8]>> = secrets
            .iter()
            .filter(|s| s.expose().len() >= MIN_REDACT_LEN)
            .flat_map(|s| forms::forms(s.expose()))
            .map(Vec::into_boxed_slice)
            .collect();
        sorted.sort();
        sorted.dedup();
        if sorted.is_empty() {
            return None;
        }
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostLongest)
            .builder()
            .extend(&sorted)
            .build();
        let matcher = match packed {
            Some(searcher) => Matcher::Packed(searcher),
            None => Matcher::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    // A DFA over kilobytes of forms takes milliseconds
                    // to build (8-13 ms for 21 KB); the contiguous NFA
                    // about a tenth of that.
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .build(&sorted)
                    .ok()?,
            ),
        };
        let mut starts = [false; 256];
        for form in &sorted {
            starts[usize::from(form[0])] = true;
        }
        let longest = sorted.iter().map(|f| f.len()).max().unwrap_or(0);
        Some(Self {
            matcher,
            sorted,
            starts,
            longest,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.sorted.len()
    }

    pub(super) fn longest(&self) -> usize {
        self.longest
    }

    pub(super) fn fast(&self) -> bool {
        matches!(self.matcher, Matcher::Packed(_))
    }

    /// Calls `found(start, end)` for each leftmost-longest match in order,
    /// until it returns `false`.
    pub(super) fn each_match(&self, hay: &[u8], mut found: impl FnMut(usize, usize) -> bool) {
        match &self.matcher {
            Matcher::Packed(s) => {
                for m in s.find_iter(hay) {
                    if !found(m.start(), m.end()) {
                        return;
                    }
                }
            }
            Matcher::Automaton(a) => {
                for m in a.find_iter(hay) {
                    if !found(m.start(), m.end()) {
                        return;
                    }
                }
            }
        }
    }

    /// `hay` with every form replaced, and how many were; `None` if there
    /// was none (so the common case copies nothing).
    pub(super) fn redact(&self, hay: &[u8]) -> Option<(Vec<u8>, usize)> {
        let mut out: Option<Vec<u8>> = None;
        let (mut pos, mut count) = (0, 0);
        self.each_match(hay, |start, end| {
            let o = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
            o.extend_from_slice(&hay[pos..start]);
            o.extend_from_slice(REDACTED);
            pos = end;
            count += 1;
            true
        });
        out.map(|mut o| {
            o.extend_from_slice(&hay[pos..]);
            (o, count)
        })
    }

    /// The first position at or after `from` from which the rest of `buf`
    /// is a proper prefix of some form (it could become one with more
    /// bytes), or `buf.len()` if there is none.
    pub(super) fn hold_from(&self, buf: &[u8], from: usize) -> usize {
        let earliest = from.max(buf.len().saturating_sub(self.longest - 1));
        (earliest..buf.len())
            .find(|&p| self.starts[usize::from(buf[p])] && self.is_proper_prefix(&buf[p..]))
            .unwrap_or(buf.len())
    }

    fn is_proper_prefix(&self, tail: &[u8]) -> bool {
        // The forms that start with `tail` sort together, from the first
        // one not less than it; if that one is `tail` itself, a longer one
        // may follow.
        let at = self.sorted.partition_point(|f| &f[..] < tail);
        self.sorted[at..]
            .iter()
            .take(2)
            .any(|f| f.len() > tail.len() && f.starts_with(tail))
    }
}
