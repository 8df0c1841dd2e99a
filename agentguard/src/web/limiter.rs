//! Login rate limiting: failed sign-ins are counted per client address and
//! per name over a window; past the limit, sign-in is refused without
//! checking the password until the window has passed, so guessing costs
//! the guesser time and costs the daemon no Argon2 work.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Failures counted over this long.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Failures per client address within the window.
pub const MAX_PER_ADDRESS: u32 = 10;
/// Failures per name within the window.
pub const MAX_PER_NAME: u32 = 5;
/// Keys remembered at once; the oldest are forgotten first.
const MAX_KEYS: usize = 10_000;

#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Limiter {
    /// `Err(wait)` while `key` has had `max` failures in the window.
    pub fn check(&self, key: &str, max: u32) -> Result<(), Duration> {
        let map = lock(&self.failures);
        match map.get(key) {
            Some((since, n)) if *n >= max && since.elapsed() < WINDOW => {
                Err(WINDOW - since.elapsed())
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure of `key`; `true` if this one reached `max` (worth
    /// recording once, where later refusals are not).
    pub fn fail(&self, key: &str, max: u32) -> bool {
        let mut map = lock(&self.failures);
        if map.len() >= MAX_KEYS {
            map.retain(|_, (since, _)| since.elapsed() < WINDOW);
            if map.len() >= MAX_KEYS
                && let Some(oldest) = map.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(key.to_owned()).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 == max
    }

    pub fn succeed(&self, key: &str) {
        lock(&self.failures).remove(key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_locked_out_after_its_failures_and_freed_by_success() {
        let l = Limiter::default();
        for n in 1..=3 {
            assert!(l.check("ip:1", 3).is_ok());
            assert_eq!(l.fail("ip:1", 3), n == 3);
        }
        let wait = l.check("ip:1", 3).unwrap_err();
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(l.check("ip:2", 3).is_ok(), "other keys are not affected");
        l.succeed("ip:1");
        assert!(l.check("ip:1", 3).is_ok());
    }
}
