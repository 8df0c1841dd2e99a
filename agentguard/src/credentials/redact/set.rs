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
//!
//! A set made for one request (the token minted for it) is searched by a
//! plain scan ([`FormSet::scan`]) while what it searches is short, and
//! builds its searcher only for a longer text: building Teddy for the
//! token's ~20 forms cost about 18k instructions a request (callgrind),
//! more than scanning a small response does (the JWT path's request went
//! from 451k instructions to 444k). The scan finds the same
//! leftmost-longest matches (a test compares the two), so which one
//! served a text changes nothing in the result.

use std::sync::{
    OnceLock,
    atomic::{AtomicUsize, Ordering},
};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind, packed};

use super::{MIN_REDACT_LEN, REDACTED, forms, trigrams::Trigrams};
use crate::credentials::Secret;

/// A set built for one request ([`FormSet::build_deferred`]) scans this
/// many bytes, over all its texts, before it builds its searcher: enough
/// for the headers and body of a small response, and a bound on what
/// scanning a long stream of small chunks costs before the searcher
/// serves it.
const SCAN_MAX: usize = 4096;

enum Matcher {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
    /// Neither could be built: every text is scanned.
    Scan,
}

pub(super) struct FormSet {
    /// Built with the set, or for a deferred one once its texts add up to
    /// more than [`SCAN_MAX`] bytes.
    matcher: OnceLock<Matcher>,
    /// Bytes scanned so far without the searcher.
    scanned: AtomicUsize,
    /// Every form, sorted: which suffixes of a chunk could still grow into
    /// one ([`FormSet::hold_from`]), and which forms a scan tries where a
    /// byte starts one.
    sorted: Vec<Vec<u8>>,
    /// For each byte, 1 + the place in `sorted` of the first form that
    /// starts with it, or 0 if none does: most positions are ruled out by
    /// one lookup, and a scan finds the forms to try without a search.
    first: [u32; 256],
    longest: usize,
    shortest: usize,
    /// For [`FormSet::scan`], built when it first runs.
    trigrams: OnceLock<Trigrams>,
}

impl FormSet {
    /// The forms of every secret long enough to look for, their searcher
    /// built; `None` if there is none.
    pub(super) fn build(secrets: &[Secret]) -> Option<Self> {
        let set = Self::build_deferred(secrets)?;
        set.matcher();
        Some(set)
    }

    /// [`FormSet::build`] for a set used once or for one request: its
    /// searcher is built only once its texts add up to more than
    /// [`SCAN_MAX`] bytes.
    pub(super) fn build_deferred(secrets: &[Secret]) -> Option<Self> {
        let mut sorted: Vec<Vec<u8>> = Vec::new();
        for secret in secrets
            .iter()
            .filter(|s| s.expose().len() >= MIN_REDACT_LEN)
        {
            sorted.extend(forms::forms(secret.expose()));
        }
        sorted.sort();
        sorted.dedup();
        if sorted.is_empty() {
            return None;
        }
        let mut first = [0u32; 256];
        for (i, form) in sorted.iter().enumerate().rev() {
            first[usize::from(form[0])] = u32::try_from(i + 1).unwrap_or(u32::MAX);
        }
        let longest = sorted.iter().map(|f| f.len()).max().unwrap_or(0);
        let shortest = sorted.iter().map(|f| f.len()).min().unwrap_or(0);
        Some(Self {
            matcher: OnceLock::new(),
            scanned: AtomicUsize::new(0),
            sorted,
            first,
            longest,
            shortest,
            trigrams: OnceLock::new(),
        })
    }

    fn matcher(&self) -> &Matcher {
        self.matcher.get_or_init(|| {
            let packed = packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostLongest)
                .builder()
                .extend(&self.sorted)
                .build();
            if let Some(searcher) = packed {
                return Matcher::Packed(searcher);
            }
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                // A DFA over kilobytes of forms takes milliseconds to
                // build (8-13 ms for 21 KB); the contiguous NFA about a
                // tenth of that.
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(&self.sorted)
                // Too many forms for the automaton's state ids: slower,
                // but every form is still found.
                .map_or(Matcher::Scan, Matcher::Automaton)
        })
    }

    pub(super) fn len(&self) -> usize {
        self.sorted.len()
    }

    pub(super) fn longest(&self) -> usize {
        self.longest
    }

    /// How it searches, for `Debug`.
    pub(super) fn kind(&self) -> &'static str {
        match self.matcher.get() {
            None => "scan until a long text",
            Some(Matcher::Packed(_)) => "teddy",
            Some(Matcher::Automaton(_)) => "automaton",
            Some(Matcher::Scan) => "scan",
        }
    }

    /// Calls `found(start, end)` for each leftmost-longest match in order,
    /// until it returns `false`.
    pub(super) fn each_match(&self, hay: &[u8], found: impl FnMut(usize, usize) -> bool) {
        let matcher = match self.matcher.get() {
            Some(m) => m,
            None => {
                let scanned = self.scanned.fetch_add(hay.len(), Ordering::Relaxed);
                if scanned.saturating_add(hay.len()) <= SCAN_MAX {
                    return self.scan(hay, found);
                }
                self.matcher()
            }
        };
        self.search(matcher, hay, found);
    }

    fn search(&self, matcher: &Matcher, hay: &[u8], mut found: impl FnMut(usize, usize) -> bool) {
        match matcher {
            Matcher::Scan => self.scan(hay, found),
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

    /// [`FormSet::each_match`] without a searcher: at each position a
    /// form starts at, the longest form there; the next search from its
    /// end. Leftmost-longest, as the searchers are.
    ///
    /// Not every position is tried. The probes are every `shortest - 2`
    /// bytes. Every form is `shortest` bytes or more (four and more), so
    /// where one occurs, the first probe at or after its start is at most
    /// `shortest - 3` bytes in, and the three bytes there are the form's
    /// own: a form starts only up to `shortest - 3` bytes before a probe
    /// whose three bytes some form holds ([`Trigrams`]). The positions
    /// tried are those, in order, so the matches are the ones trying
    /// every position finds. For a request's token (forms of 22 bytes and
    /// more) that is a probe every 20 bytes, and few pass.
    fn scan(&self, hay: &[u8], mut found: impl FnMut(usize, usize) -> bool) {
        let (stride, reach, trigrams) = self.probes();
        // Positions before this were tried, or lie inside a match.
        let mut next = 0;
        let mut probe = 0;
        while probe < hay.len() {
            let passes = match trigrams {
                Some(t) => probe + 3 <= hay.len() && t.may_hold(&hay[probe..]),
                None => true,
            };
            if passes {
                let mut start = next.max(probe.saturating_sub(reach));
                while start <= probe {
                    if self.first[usize::from(hay[start])] == 0 {
                        start += 1;
                        continue;
                    }
                    match self.longest_form_at(&hay[start..]) {
                        Some(len) => {
                            if !found(start, start + len) {
                                return;
                            }
                            start += len;
                        }
                        None => start += 1,
                    }
                }
                next = start;
            }
            probe += stride;
        }
    }

    /// How [`FormSet::scan`] probes: every `stride` bytes, trying the
    /// positions up to `reach` bytes before a probe that passes the
    /// trigrams. A form shorter than three bytes (`forms` makes none)
    /// would hold no three bytes to find: then every position is a probe,
    /// and every probe passes.
    fn probes(&self) -> (usize, usize, Option<&Trigrams>) {
        match self.shortest.checked_sub(2) {
            Some(stride) if stride > 0 => {
                // A form's first probe is in its first `stride` bytes.
                let trigrams = self
                    .trigrams
                    .get_or_init(|| Trigrams::new(self.sorted.iter().map(Vec::as_slice), stride));
                (stride, stride - 1, Some(trigrams))
            }
            _ => (1, 0, None),
        }
    }

    /// The length of the longest form `tail` starts with.
    fn longest_form_at(&self, tail: &[u8]) -> Option<usize> {
        let from = (self.first[usize::from(tail[0])] as usize).checked_sub(1)?;
        // Forms are four bytes and more (a one-byte tail starts none):
        // the second byte rules most out before the rest is compared (a
        // text of one letter repeated, where that letter starts a form, is
        // a candidate at every position).
        let second = tail.get(1)?;
        self.sorted[from..]
            .iter()
            .take_while(|f| f[0] == tail[0])
            .filter(|f| f.get(1) == Some(second) && tail.starts_with(f))
            .map(Vec::len)
            .max()
    }

    /// The first position at or after `from` from which the rest of `buf`
    /// is a proper prefix of some form (it could become one with more
    /// bytes), or `buf.len()` if there is none.
    pub(super) fn hold_from(&self, buf: &[u8], from: usize) -> usize {
        let earliest = from.max(buf.len().saturating_sub(self.longest - 1));
        (earliest..buf.len())
            .find(|&p| self.first[usize::from(buf[p])] != 0 && self.is_proper_prefix(&buf[p..]))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// xorshift64*: a fixed sequence for each seed, so that a failure
    /// names the case.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
        }
    }

    fn matches(set: &FormSet, hay: &[u8], searcher: bool) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let push = |start, end| {
            out.push((start, end));
            true
        };
        if searcher {
            set.search(set.matcher(), hay, push);
        } else {
            set.scan(hay, push);
        }
        out
    }

    /// Random secrets from a few characters (so that forms share
    /// prefixes, hold one another and overlap in the text), and texts made
    /// of their forms, pieces of forms and single characters: the scan
    /// finds exactly the matches Teddy and the automaton find.
    #[test]
    fn the_scan_finds_what_the_searchers_find() {
        const CHARS: &[char] = &['a', 'b', 'k', '-', '/', '+', ' ', 'é', '<'];
        let mut searchers = BTreeSet::new();
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let secrets: Vec<Secret> = (0..1 + rng.below(6))
                .map(|_| {
                    let len = 4 + rng.below(12);
                    Secret::new((0..len).map(|_| CHARS[rng.below(CHARS.len())]).collect())
                })
                .collect();
            let set = FormSet::build(&secrets).expect("secrets of four characters and more");
            searchers.insert(set.kind());
            let mut hay = Vec::new();
            for _ in 0..rng.below(40) {
                let form = &set.sorted[rng.below(set.sorted.len())];
                // Runs of characters between forms, so the scan's probes
                // (every `shortest - 2` bytes) pass over text too.
                let run = match rng.below(4) {
                    0 => {
                        hay.extend_from_slice(form);
                        0
                    }
                    1 => {
                        hay.extend_from_slice(&form[..rng.below(form.len())]);
                        0
                    }
                    2 => 1,
                    _ => rng.below(80),
                };
                for _ in 0..run {
                    let c = CHARS[rng.below(CHARS.len())];
                    hay.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
            assert_eq!(
                matches(&set, &hay, false),
                matches(&set, &hay, true),
                "seed {seed}: {}",
                String::from_utf8_lossy(&hay)
            );
        }
        assert_eq!(
            searchers,
            BTreeSet::from(["automaton", "teddy"]),
            "both searchers compared with"
        );
    }

    /// Each form alone in text no form holds, at every offset from the
    /// scan's probes: found whole, where it is, however far from a probe
    /// it starts and ends.
    #[test]
    fn the_scan_finds_each_form_at_every_offset() {
        let secrets: Vec<Secret> = ["tok-abcdef-123456", "k/é<+a b", "zz+//9"]
            .iter()
            .map(|s| Secret::new((*s).to_owned()))
            .collect();
        let set = FormSet::build_deferred(&secrets).unwrap();
        assert!(set.shortest >= 3);
        for form in &set.sorted {
            for offset in 0..2 * set.longest {
                let mut hay = vec![b'#'; offset];
                hay.extend_from_slice(form);
                hay.extend_from_slice(b"##");
                let found = matches(&set, &hay, false);
                assert_eq!(found, matches(&set, &hay, true));
                assert_eq!(
                    found,
                    [(offset, offset + form.len())],
                    "{} at {offset}",
                    String::from_utf8_lossy(form)
                );
            }
        }
    }

    #[test]
    fn a_deferred_set_builds_its_searcher_once_its_texts_are_long() {
        let secret = [Secret::new("tok-abcdef-123456".into())];
        let set = FormSet::build_deferred(&secret).unwrap();
        let text = b"x tok-abcdef-123456 y";
        assert_eq!(set.redact(text).map(|(_, n)| n), Some(1));
        assert_eq!(set.kind(), "scan until a long text");
        // Short texts that add up to more than SCAN_MAX: a stream of
        // small chunks.
        for _ in 0..SCAN_MAX / text.len() {
            assert_eq!(set.redact(text).map(|(_, n)| n), Some(1));
        }
        assert_eq!(set.kind(), "teddy");
        // One long text at once.
        let set = FormSet::build_deferred(&secret).unwrap();
        let mut long = text.to_vec();
        long.resize(SCAN_MAX + 1, b'.');
        assert_eq!(set.redact(&long).map(|(_, n)| n), Some(1));
        assert_eq!(set.kind(), "teddy");
        // A set built at once has its searcher.
        let built = FormSet::build(&[Secret::new("tok-abcdef-123456".into())]).unwrap();
        assert_eq!(built.kind(), "teddy");
    }
}
