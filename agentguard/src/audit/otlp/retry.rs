//! What to do with a collector's answer, as OTLP/HTTP specifies
//! (<https://opentelemetry.io/docs/specs/otlp/#failures-1>): 429, 502, 503
//! and 504 are retryable, honouring `Retry-After` if the collector sent one,
//! and so are a collector that cannot be reached or does not answer in time;
//! every other failure status is final, and the batch is dropped (and
//! counted) rather than sent again and again.

use std::time::{Duration, SystemTime};

use hyper::{HeaderMap, StatusCode, header::RETRY_AFTER};

/// The first wait before a retry; doubled up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A collector asking for a longer pause gets this much: the buffer is
/// bounded, and a wait of hours would only drop what it holds.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The outcome of one export attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; `rejected` records refused in a partial success.
    Accepted { rejected: u64 },
    /// Try the same batch again, not before `after` if the collector said.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// Drop the batch.
    Drop { why: String },
}

/// The retryable statuses.
pub fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

/// What a non-success `status` with `headers` means.
pub fn classify_failure(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Outcome {
    if is_retryable(status) {
        Outcome::Retry {
            why: format!("collector answered {status}"),
            after: retry_after(headers, now),
        }
    } else {
        Outcome::Drop {
            why: format!("collector answered {status}, which OTLP says not to retry"),
        }
    }
}

/// `Retry-After` as seconds or an HTTP-date (RFC 9110 §10.2.3), capped.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The wait before the next attempt: the collector's word if it gave one,
/// else `backoff` with jitter (half to all of it), so that many daemons
/// behind one collector do not retry in step.
pub fn wait(after: Option<Duration>, backoff: Duration) -> Duration {
    match after {
        Some(after) => after,
        None => {
            let mut b = [0u8; 1];
            let _ = getrandom::fill(&mut b);
            backoff / 2 + backoff.mul_f64(f64::from(b[0]) / 510.0)
        }
    }
}

pub fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_retryable_statuses_are_retried() {
        let now = SystemTime::now();
        for code in [429, 502, 503, 504] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(
                    classify_failure(status, &headers(None), now),
                    Outcome::Retry { after: None, .. }
                ),
                "{code}"
            );
        }
        for code in [400, 401, 403, 404, 405, 413, 415, 500, 501, 505] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(
                    classify_failure(status, &headers(None), now),
                    Outcome::Drop { .. }
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(Some("7")), now),
            Some(Duration::from_secs(7))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        assert_eq!(
            retry_after(&headers(Some(&later)), now),
            Some(Duration::from_secs(120))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(
            retry_after(&headers(Some(&past)), now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(&headers(Some("86400")), now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(&headers(Some("soon")), now), None);
        assert_eq!(retry_after(&headers(None), now), None);
        match classify_failure(StatusCode::SERVICE_UNAVAILABLE, &headers(Some("3")), now) {
            Outcome::Retry { after, .. } => assert_eq!(after, Some(Duration::from_secs(3))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let w = wait(None, Duration::from_secs(8));
        assert!(
            w >= Duration::from_secs(4) && w <= Duration::from_secs(8),
            "{w:?}"
        );
        assert_eq!(
            wait(Some(Duration::from_secs(2)), MAX_BACKOFF),
            Duration::from_secs(2)
        );
        assert_eq!(next_backoff(Duration::from_secs(20)), MAX_BACKOFF);
        assert_eq!(next_backoff(FIRST_BACKOFF), Duration::from_secs(2));
    }
}
