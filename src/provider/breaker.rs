//! A circuit breaker per provider.
//!
//! After `threshold` consecutive retryable failures a provider is *open*: calls
//! to it are skipped (so a dead provider costs the chain nothing) until the
//! cooldown passes. Then it is *half-open*: exactly one probe call goes through;
//! success closes it, a retryable failure opens it again for another cooldown.
//! Failures that say nothing about the provider's health (401, 404, a bad
//! request, ...) neither count nor reset the count.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A source of "now" for the breakers, injectable so tests can move time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (for tests).
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at the moment of creation.
    pub fn new() -> ManualClock {
        ManualClock {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut off = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        *off += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A breaker's state, as reported by [`super::Providers::breaker_states`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed {
        /// Retryable failures in a row so far.
        consecutive_failures: u32,
    },
    /// Calls are skipped until the cooldown ends.
    Open {
        /// Milliseconds until a probe is let through.
        retry_in_ms: u64,
    },
    /// The cooldown ended: the next call (only one) is a probe.
    HalfOpen {
        /// True while the probe is in flight.
        probing: bool,
    },
}

/// How a call went, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The provider answered.
    Success,
    /// A retryable failure: evidence the provider is unwell.
    Failure,
    /// Says nothing about the provider's health (401, 404, 400, ...).
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// One provider's breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    inner: Mutex<Inner>,
    threshold: u32,
    cooldown: Duration,
}

/// Permission to make one call; report how it went with [`Permit::record`].
/// Dropping it unrecorded (the call was cancelled) frees a half-open probe
/// slot, so a cancelled probe cannot wedge the breaker half-open forever.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    /// A closed breaker; `threshold` 0 never opens.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            threshold,
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // state itself is always valid, so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ask to make a call at `now`: a permit, or how long until one may be
    /// granted (zero while a half-open probe is in flight).
    pub(crate) fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Duration> {
        let mut st = self.lock();
        let probe = match *st {
            Inner::Closed { .. } => false,
            Inner::Open { until } if now < until => return Err(until - now),
            Inner::Open { .. } | Inner::HalfOpen { probing: false } => {
                *st = Inner::HalfOpen { probing: true };
                true
            }
            Inner::HalfOpen { probing: true } => return Err(Duration::ZERO),
        };
        Ok(Permit {
            breaker: self,
            probe,
            recorded: false,
        })
    }

    /// The state as seen at `now`.
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            Inner::Closed { failures } => BreakerState::Closed {
                consecutive_failures: failures,
            },
            Inner::Open { until } if now < until => BreakerState::Open {
                retry_in_ms: u64::try_from((until - now).as_millis()).unwrap_or(u64::MAX),
            },
            Inner::Open { .. } => BreakerState::HalfOpen { probing: false },
            Inner::HalfOpen { probing } => BreakerState::HalfOpen { probing },
        }
    }

    fn record(&self, probe: bool, outcome: Outcome, now: Instant) {
        let mut st = self.lock();
        if probe {
            *st = match outcome {
                Outcome::Success => Inner::Closed { failures: 0 },
                Outcome::Failure => Inner::Open {
                    until: now + self.cooldown,
                },
                Outcome::Neutral => Inner::HalfOpen { probing: false },
            };
            return;
        }
        // Calls admitted while closed only count while it is still closed:
        // once open, the probe alone decides.
        if let Inner::Closed { failures } = *st {
            *st = match outcome {
                Outcome::Success => Inner::Closed { failures: 0 },
                Outcome::Neutral => Inner::Closed { failures },
                Outcome::Failure => {
                    let failures = failures.saturating_add(1);
                    if self.threshold > 0 && failures >= self.threshold {
                        Inner::Open {
                            until: now + self.cooldown,
                        }
                    } else {
                        Inner::Closed { failures }
                    }
                }
            };
        }
    }
}

impl Permit<'_> {
    /// Report how the call went.
    pub(crate) fn record(mut self, outcome: Outcome, now: Instant) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            let mut st = self.breaker.lock();
            if *st == (Inner::HalfOpen { probing: true }) {
                *st = Inner::HalfOpen { probing: false };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    fn fail(b: &Breaker, c: &ManualClock) {
        b.try_acquire(c.now())
            .unwrap()
            .record(Outcome::Failure, c.now());
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let c = ManualClock::new();
        let b = Breaker::new(3, COOL);
        fail(&b, &c);
        fail(&b, &c);
        // A success resets the run.
        b.try_acquire(c.now())
            .unwrap()
            .record(Outcome::Success, c.now());
        fail(&b, &c);
        fail(&b, &c);
        // Neutral outcomes neither count nor reset.
        b.try_acquire(c.now())
            .unwrap()
            .record(Outcome::Neutral, c.now());
        assert_eq!(
            b.state(c.now()),
            BreakerState::Closed {
                consecutive_failures: 2
            }
        );
        fail(&b, &c);
        assert_eq!(
            b.state(c.now()),
            BreakerState::Open {
                retry_in_ms: 30_000
            }
        );
        c.advance(Duration::from_secs(10));
        assert_eq!(b.try_acquire(c.now()).unwrap_err(), Duration::from_secs(20));
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let c = ManualClock::new();
        let b = Breaker::new(1, COOL);
        fail(&b, &c);
        c.advance(COOL);
        assert_eq!(b.state(c.now()), BreakerState::HalfOpen { probing: false });
        let probe = b.try_acquire(c.now()).unwrap();
        assert_eq!(b.try_acquire(c.now()).unwrap_err(), Duration::ZERO);
        assert_eq!(b.state(c.now()), BreakerState::HalfOpen { probing: true });
        probe.record(Outcome::Success, c.now());
        assert_eq!(
            b.state(c.now()),
            BreakerState::Closed {
                consecutive_failures: 0
            }
        );
    }

    #[test]
    fn failed_probe_reopens_for_a_new_cooldown() {
        let c = ManualClock::new();
        let b = Breaker::new(2, COOL);
        fail(&b, &c);
        fail(&b, &c);
        c.advance(COOL + Duration::from_secs(5));
        b.try_acquire(c.now())
            .unwrap()
            .record(Outcome::Failure, c.now());
        assert_eq!(
            b.state(c.now()),
            BreakerState::Open {
                retry_in_ms: 30_000
            }
        );
    }

    #[test]
    fn neutral_or_cancelled_probe_frees_the_slot() {
        let c = ManualClock::new();
        let b = Breaker::new(1, COOL);
        fail(&b, &c);
        c.advance(COOL);
        b.try_acquire(c.now())
            .unwrap()
            .record(Outcome::Neutral, c.now());
        assert_eq!(b.state(c.now()), BreakerState::HalfOpen { probing: false });
        let p = b.try_acquire(c.now()).unwrap();
        drop(p); // the call was cancelled
        assert_eq!(b.state(c.now()), BreakerState::HalfOpen { probing: false });
        assert!(b.try_acquire(c.now()).is_ok());
    }

    #[test]
    fn stragglers_do_not_override_the_probe() {
        let c = ManualClock::new();
        let b = Breaker::new(1, COOL);
        let straggler = b.try_acquire(c.now()).unwrap();
        fail(&b, &c);
        // A call admitted before the breaker opened succeeds late: ignored.
        straggler.record(Outcome::Success, c.now());
        assert!(matches!(b.state(c.now()), BreakerState::Open { .. }));
    }

    #[test]
    fn threshold_zero_never_opens() {
        let c = ManualClock::new();
        let b = Breaker::new(0, COOL);
        for _ in 0..10 {
            fail(&b, &c);
        }
        assert!(b.try_acquire(c.now()).is_ok());
    }
}
