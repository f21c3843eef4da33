//! Backoff and `Retry-After`: how long to wait before trying a model again.

use std::time::{Duration, SystemTime};

/// Full-jitter exponential backoff: a wait drawn from `0..=min(max, base·2^(n-1))`
/// where `n` is the number of the attempt that just failed (1-based) and `unit`
/// is a uniform draw from `[0, 1]`. Full jitter spreads clients that failed
/// together, so they do not all come back at the same instant.
pub fn backoff_delay(failed_attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = failed_attempt.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ceiling.mul_f64(unit)
}

/// The wait before the next attempt: the provider's `Retry-After` when it sent
/// one, else jittered backoff; capped at `max` either way, so a provider asking
/// for minutes cannot park a task past the configured cap.
pub(crate) fn retry_delay(
    failed_attempt: u32,
    retry_after: Option<Duration>,
    base: Duration,
    max: Duration,
    unit: f64,
) -> Duration {
    match retry_after {
        Some(d) => d.min(max),
        None => backoff_delay(failed_attempt, base, max, unit),
    }
}

/// Parse a `Retry-After` value: delay-seconds (`"30"`, leniently `"1.5"`) or an
/// HTTP date (`"Wed, 21 Oct 2015 07:28:00 GMT"`), relative to `now`. A date in
/// the past means "now" (zero); anything unparseable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        // Duration::try_from_secs_f64 rejects negative, NaN and huge values.
        return Duration::try_from_secs_f64(secs).ok();
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `retry-after-ms` (sent by some OpenAI-compatible gateways): milliseconds.
pub(crate) fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms = value.trim().parse::<f64>().ok()?;
    Duration::try_from_secs_f64(ms / 1000.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_delay(1, BASE, MAX, 1.0), BASE);
        assert_eq!(backoff_delay(2, BASE, MAX, 1.0), BASE * 2);
        assert_eq!(backoff_delay(3, BASE, MAX, 1.0), BASE * 4);
        assert_eq!(backoff_delay(10, BASE, MAX, 1.0), MAX);
        assert_eq!(backoff_delay(u32::MAX, BASE, MAX, 1.0), MAX);
        assert_eq!(backoff_delay(3, BASE, MAX, 0.0), Duration::ZERO);
        assert_eq!(backoff_delay(3, BASE, MAX, 0.5), BASE * 2);
        // Out-of-range draws are clamped rather than trusted.
        assert_eq!(backoff_delay(1, BASE, MAX, 7.0), BASE);
        assert_eq!(backoff_delay(1, BASE, MAX, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn jittered_backoff_stays_in_bounds() {
        for attempt in 1..8 {
            for i in 0..=10 {
                let d = backoff_delay(attempt, BASE, MAX, i as f64 / 10.0);
                assert!(
                    d <= MAX && d <= BASE * (1 << (attempt - 1)),
                    "{attempt} {d:?}"
                );
            }
        }
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(1)), BASE, MAX, 0.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            retry_delay(1, Some(Duration::from_secs(600)), BASE, MAX, 0.0),
            MAX
        );
        assert_eq!(retry_delay(2, None, BASE, MAX, 1.0), BASE * 2);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_000); // 2015-10-21 07:20:00 GMT
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(480))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(
            parse_retry_after_ms("250"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after_ms("x"), None);
    }
}
