//! Rate limits: `rate = "20/min"` on a tool, per agent (and optionally per
//! `on_behalf_of`), over a sliding window.
//!
//! The window is kept as 60 buckets, so memory per key is fixed whatever the
//! limit, and a call counts until the bucket it fell in has left the
//! window: at most 1/60 of the window longer than exact, never shorter (a
//! limit is never exceeded). A hand-written counter rather than `governor`:
//! GCRA refills continuously (after 20 calls, one more every 3 s), which is
//! not what "20 a minute" says to the engineer who wrote it or to an auditor.
//!
//! Pure: the caller passes the time (milliseconds on any clock that does not
//! go back), so tests and `policy test --cases` drive it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

/// Buckets per window.
const BUCKETS: u64 = 60;
/// Most limiter keys held at once. Keys are agent × tool (× on_behalf_of);
/// idle ones are dropped when the table is full, and if it is still full
/// the call is refused (fail closed) rather than let through uncounted.
pub const MAX_KEYS: usize = 16_384;
/// Largest limit a policy may set per window.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Longest window: a week.
pub const MAX_WINDOW_SECS: u64 = 7 * 86_400;

/// `N/unit`: at most `limit` calls in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateSpec {
    pub limit: u32,
    pub window: Duration,
}

impl RateSpec {
    /// `"20/min"`, `"5/s"`, `"100/hour"`, `"1000/day"` (also `sec`,
    /// `second`, `minute`, `h`, `d`), and windows of several units:
    /// `"20/10s"`, `"100/15min"`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "rate {raw:?} must look like \"20/min\" or \"20/10s\" (per s, min, hour or day)"
            )
        };
        let (n, unit) = raw.split_once('/').ok_or_else(bad)?;
        let limit: u32 = n.trim().parse().map_err(|_| bad())?;
        let unit = unit.trim();
        let digits = unit.len() - unit.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (count, unit) = unit.split_at(digits);
        let count: u64 = match count {
            "" => 1,
            c => c.parse().map_err(|_| bad())?,
        };
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        let window = count
            .checked_mul(seconds)
            .filter(|w| (1..=MAX_WINDOW_SECS).contains(w))
            .ok_or_else(|| {
                format!(
                    "rate {raw:?}: the window must be 1 s to {} days",
                    MAX_WINDOW_SECS / 86_400
                )
            })?;
        if limit == 0 || limit > MAX_LIMIT {
            return Err(format!("rate {raw:?}: the count must be 1 to {MAX_LIMIT}"));
        }
        Ok(Self {
            limit,
            window: Duration::from_secs(window),
        })
    }
}

impl std::fmt::Display for RateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.window.as_secs();
        let (count, unit) = [(86_400, "day"), (3600, "hour"), (60, "min")]
            .into_iter()
            .find(|(u, _)| secs.is_multiple_of(*u))
            .map_or((secs, "s"), |(u, name)| (secs / u, name));
        match count {
            1 => write!(f, "{}/{unit}", self.limit),
            n => write!(f, "{}/{n}{unit}", self.limit),
        }
    }
}

/// Whom a tool's limit counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RatePer {
    /// One count per agent.
    #[default]
    Agent,
    /// One count per agent and `on_behalf_of` (calls without one share a
    /// count).
    OnBehalfOf,
}

/// A tool's rate limit as the policy states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRule {
    pub spec: RateSpec,
    pub per: RatePer,
}

/// What one count is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub agent: String,
    pub tool: String,
    pub on_behalf_of: Option<String>,
}

impl std::fmt::Display for RateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.agent, self.tool)?;
        if let Some(who) = &self.on_behalf_of {
            write!(f, "/{who}")?;
        }
        Ok(())
    }
}

/// The rate check a decision asks for: which count, against which limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCheck {
    pub key: RateKey,
    pub spec: RateSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted; `remaining` more calls fit in the window now.
    Admitted { remaining: u32 },
    /// Over the limit: not counted; retry after this many whole seconds
    /// (the `Retry-After` value, at least 1).
    Limited { retry_after_secs: u64 },
    /// The limiter's table is full of live keys: refused, uncounted.
    Full,
}

#[derive(Debug)]
struct Window {
    spec: RateSpec,
    bucket_ms: u64,
    /// Absolute number of the newest bucket written.
    head: u64,
    counts: [u32; BUCKETS as usize],
}

impl Window {
    fn new(spec: RateSpec, now_ms: u64) -> Self {
        let bucket_ms = (spec.window.as_millis() as u64 / BUCKETS).max(1);
        Self {
            spec,
            bucket_ms,
            head: now_ms / bucket_ms,
            counts: [0; BUCKETS as usize],
        }
    }

    /// Moves the window to `now_ms`, clearing the buckets it left behind.
    fn advance(&mut self, now_ms: u64) -> u64 {
        // A clock that stepped back counts in the newest bucket.
        let b = (now_ms / self.bucket_ms).max(self.head);
        let gap = b - self.head;
        if gap >= BUCKETS {
            self.counts = [0; BUCKETS as usize];
        } else {
            for k in self.head + 1..=b {
                self.counts[(k % BUCKETS) as usize] = 0;
            }
        }
        self.head = b;
        b
    }

    fn admit(&mut self, now_ms: u64) -> Admission {
        let b = self.advance(now_ms);
        let total: u64 = self.counts.iter().map(|&c| u64::from(c)).sum();
        let limit = u64::from(self.spec.limit);
        if total < limit {
            self.counts[(b % BUCKETS) as usize] += 1;
            return Admission::Admitted {
                remaining: (limit - total - 1) as u32,
            };
        }
        // The oldest buckets leave first: find the one whose leaving brings
        // the count under the limit.
        let mut left = total;
        for k in b + 1 - BUCKETS.min(b + 1)..=b {
            left -= u64::from(self.counts[(k % BUCKETS) as usize]);
            if left < limit {
                let frees_at = (k + BUCKETS) * self.bucket_ms;
                let wait_ms = frees_at.saturating_sub(now_ms);
                return Admission::Limited {
                    retry_after_secs: wait_ms.div_ceil(1000).max(1),
                };
            }
        }
        unreachable!("emptying every bucket brings the count to zero")
    }

    fn idle(&self, now_ms: u64) -> bool {
        now_ms / self.bucket_ms >= self.head + BUCKETS
    }
}

/// Counts per key. Shared by every request of the daemon; survives policy
/// reloads (a key's limit is the one the current policy passes).
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<RateKey, Window>>,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one call under `check.key` at `now_ms` if it fits the limit.
    pub fn admit(&self, check: &RateCheck, now_ms: u64) -> Admission {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(&check.key) && windows.len() >= MAX_KEYS {
            windows.retain(|_, w| !w.idle(now_ms));
            if windows.len() >= MAX_KEYS {
                return Admission::Full;
            }
        }
        let window = windows
            .entry(check.key.clone())
            .or_insert_with(|| Window::new(check.spec, now_ms));
        if window.spec != check.spec {
            // The policy changed this tool's rate: start the new window
            // from the calls already counted, as far as its buckets allow.
            let old = std::mem::replace(window, Window::new(check.spec, now_ms));
            if old.spec.window == check.spec.window {
                window.head = old.head;
                window.counts = old.counts;
            }
        }
        window.admit(now_ms)
    }

    /// Keys held (for status and tests).
    pub fn len(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(agent: &str, spec: &str) -> RateCheck {
        RateCheck {
            key: RateKey {
                agent: agent.into(),
                tool: "t".into(),
                on_behalf_of: None,
            },
            spec: RateSpec::parse(spec).unwrap(),
        }
    }

    #[test]
    fn specs_parse() {
        assert_eq!(
            RateSpec::parse("20/min").unwrap(),
            RateSpec {
                limit: 20,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(
            RateSpec::parse("5/s").unwrap().window,
            Duration::from_secs(1)
        );
        assert_eq!(RateSpec::parse("100/hour").unwrap().to_string(), "100/hour");
        assert_eq!(
            RateSpec::parse("1000/day").unwrap().window.as_secs(),
            86_400
        );
        // Windows of several units, shown as written.
        assert_eq!(
            RateSpec::parse("20/10s").unwrap(),
            RateSpec {
                limit: 20,
                window: Duration::from_secs(10)
            }
        );
        for spec in ["20/10s", "100/15min", "5/2hour", "1/7day", "3/90s"] {
            assert_eq!(RateSpec::parse(spec).unwrap().to_string(), spec);
        }
        assert_eq!(RateSpec::parse("20/60s").unwrap().to_string(), "20/min");
        for bad in [
            "20",
            "0/min",
            "-1/min",
            "20/week",
            "x/min",
            "20/",
            "2000000/s",
            "20/0s",
            "20/8day",
            "20/10",
            "20/s10",
            "20/99999999999999999999s",
        ] {
            assert!(RateSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_21st_call_in_a_minute_waits_for_the_window() {
        let limiter = RateLimiter::new();
        let c = check("a", "20/min");
        let t0 = 1_000_000_000;
        for i in 0..20 {
            assert_eq!(
                limiter.admit(&c, t0 + i * 100),
                Admission::Admitted {
                    remaining: 19 - i as u32
                }
            );
        }
        // 21st at t0 + 2 s: the first calls leave the window at t0 + 60 s.
        assert_eq!(
            limiter.admit(&c, t0 + 2_000),
            Admission::Limited {
                retry_after_secs: 58
            }
        );
        // Refusals are not counted; still limited just before the window.
        assert!(matches!(
            limiter.admit(&c, t0 + 59_000),
            Admission::Limited {
                retry_after_secs: 1
            }
        ));
        // After the window: room again, for every call that left.
        assert!(matches!(
            limiter.admit(&c, t0 + 60_000),
            Admission::Admitted { .. }
        ));
        let mut admitted = 1;
        while let Admission::Admitted { .. } = limiter.admit(&c, t0 + 61_000) {
            admitted += 1;
        }
        assert_eq!(admitted, 20);
    }

    #[test]
    fn the_window_slides() {
        let limiter = RateLimiter::new();
        let c = check("a", "2/min");
        let t0 = 600_000;
        assert!(matches!(limiter.admit(&c, t0), Admission::Admitted { .. }));
        assert!(matches!(
            limiter.admit(&c, t0 + 30_000),
            Admission::Admitted { .. }
        ));
        // Not a fixed window: at t0 + 61 s only the first call has left.
        assert!(matches!(
            limiter.admit(&c, t0 + 61_000),
            Admission::Admitted { .. }
        ));
        assert_eq!(
            limiter.admit(&c, t0 + 62_000),
            Admission::Limited {
                retry_after_secs: 28
            }
        );
    }

    #[test]
    fn keys_count_separately_and_the_table_is_bounded() {
        let limiter = RateLimiter::new();
        let a = check("a", "1/hour");
        let b = check("b", "1/hour");
        let mut obo = a.clone();
        obo.key.on_behalf_of = Some("alice".into());
        assert!(matches!(
            limiter.admit(&a, 0),
            Admission::Admitted { remaining: 0 }
        ));
        assert!(matches!(limiter.admit(&b, 0), Admission::Admitted { .. }));
        assert!(matches!(limiter.admit(&obo, 0), Admission::Admitted { .. }));
        assert!(matches!(
            limiter.admit(&a, 1),
            Admission::Limited {
                retry_after_secs: 3600
            }
        ));
        // A changed limit applies at once to the calls already counted.
        assert!(matches!(
            limiter.admit(&check("a", "2/hour"), 2),
            Admission::Admitted { remaining: 0 }
        ));

        let limiter = RateLimiter::new();
        for i in 0..MAX_KEYS {
            assert!(matches!(
                limiter.admit(&check(&i.to_string(), "1/s"), 0),
                Admission::Admitted { .. }
            ));
        }
        assert_eq!(limiter.admit(&check("new", "1/s"), 500), Admission::Full);
        // Once the others are idle, room is made.
        assert!(matches!(
            limiter.admit(&check("new", "1/s"), 2_000),
            Admission::Admitted { .. }
        ));
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn a_clock_that_steps_back_does_not_reopen_the_window() {
        let limiter = RateLimiter::new();
        let c = check("a", "1/min");
        assert!(matches!(
            limiter.admit(&c, 120_000),
            Admission::Admitted { .. }
        ));
        assert!(matches!(
            limiter.admit(&c, 1_000),
            Admission::Limited { .. }
        ));
    }
}
