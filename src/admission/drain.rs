//! How fast the pool frees slots (permits released per second), for predictive
//! shedding.
//!
//! Two estimates, and the larger one is used:
//!
//! - **observed**: an exponentially decaying count of releases with a time
//!   constant of [`TAU`] (each release adds `1/TAU`, the sum decays by
//!   `e^(−Δt/TAU)`), which tends to the release rate. It is divided by
//!   `1 − e^(−age/TAU)` while the estimator is young, so the first seconds after
//!   start are not underestimated.
//! - **Little's law**: `in_use / hold time`, with the hold time the larger of a
//!   moving average of past hold times and the mean age of the permits now held.
//!   It follows at once when the pool becomes saturated after a quiet time (where
//!   the observed rate still reflects the quiet time), and falls when the
//!   servers stall (the permits held grow old).

use std::time::Duration;

use tokio::time::Instant;

/// Time constant of the observed release rate, in seconds.
pub(crate) const TAU: f64 = 2.0;
/// Weight of one hold time in the hold-time average.
const HOLD_WEIGHT: f64 = 0.05;
/// Below this many releases per second the rate counts as unknown.
const MIN_RATE: f64 = 1e-3;

/// Release-rate estimator. Pure state; the caller supplies time.
#[derive(Debug)]
pub(crate) struct DrainRate {
    started: Instant,
    /// The decaying count at `at`.
    count: f64,
    at: Instant,
    /// Seconds; moving average of how long permits were held.
    mean_hold: Option<f64>,
    /// Sum over the permits held now of their grant time, in nanoseconds since `started`.
    grant_sum: u128,
}

impl DrainRate {
    pub(crate) fn new(now: Instant) -> DrainRate {
        DrainRate {
            started: now,
            count: 0.0,
            at: now,
            mean_hold: None,
            grant_sum: 0,
        }
    }

    fn since_start(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.started).as_nanos()
    }

    /// A permit granted at `granted_at` is now held.
    pub(crate) fn grant(&mut self, granted_at: Instant) {
        self.grant_sum += self.since_start(granted_at);
    }

    /// The permit granted at `granted_at` was given back at `now`. `served` is
    /// false for a permit that was handed to a waiter who had already left: it
    /// frees the slot but says nothing about the rate.
    pub(crate) fn release(&mut self, now: Instant, granted_at: Instant, served: bool) {
        self.grant_sum = self.grant_sum.saturating_sub(self.since_start(granted_at));
        if !served {
            return;
        }
        self.count = self.decayed(now) + 1.0 / TAU;
        self.at = self.at.max(now);
        let hold = now.saturating_duration_since(granted_at).as_secs_f64();
        self.mean_hold = Some(match self.mean_hold {
            None => hold,
            Some(mean) => mean + (hold - mean) * HOLD_WEIGHT,
        });
    }

    fn decayed(&self, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.count * (-dt / TAU).exp()
    }

    /// Releases per second at `now`, with `in_use` permits held; `None` when unknown.
    pub(crate) fn per_second(&self, now: Instant, in_use: usize) -> Option<f64> {
        let age = now.saturating_duration_since(self.started).as_secs_f64();
        let warm = 1.0 - (-age.max(TAU / 4.0) / TAU).exp();
        let observed = self.decayed(now) / warm;
        let little = match self.mean_hold {
            Some(mean_hold) if in_use > 0 => {
                let held_since = (self.grant_sum / in_use as u128) as f64 / 1e9;
                let mean_age = (age - held_since).max(0.0);
                let hold = mean_hold.max(mean_age);
                if hold > 0.0 {
                    in_use as f64 / hold
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        let rate = observed.max(little);
        (rate.is_finite() && rate >= MIN_RATE).then_some(rate)
    }
}

/// How long `ahead` waiters and then one more take to be served at `rate` per second.
pub(crate) fn wait_for(ahead: usize, rate: f64) -> Duration {
    /// Longest estimate (keeps the arithmetic finite).
    const CAP: f64 = 3600.0;
    Duration::from_secs_f64(((ahead as f64 + 1.0) / rate).min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn unknown_before_any_release() {
        let now = Instant::now();
        let drain = DrainRate::new(now);
        assert_eq!(drain.per_second(now + ms(5000), 0), None);
    }

    #[test]
    fn steady_releases_give_their_rate() {
        let start = Instant::now();
        let mut drain = DrainRate::new(start);
        // 10 slots, each held 1 s, one released (and one granted) every 100 ms.
        let mut held: std::collections::VecDeque<Instant> = (0..10)
            .map(|_| {
                drain.grant(start);
                start
            })
            .collect();
        let mut now = start;
        for _ in 0..100 {
            now += ms(100);
            if let Some(granted) = held.pop_front() {
                drain.release(now, granted, true);
            }
            drain.grant(now);
            held.push_back(now);
            let rate = drain.per_second(now, held.len()).unwrap_or(0.0);
            if now - start >= Duration::from_secs(5) {
                assert!((9.0..=11.5).contains(&rate), "{rate}");
            }
        }
    }

    #[test]
    fn saturation_after_a_quiet_time_is_seen_at_once_and_a_stall_lowers_it() {
        let start = Instant::now();
        let mut drain = DrainRate::new(start);
        let mut now = start;
        // Quiet: one 200 ms request per 10 s.
        for _ in 0..10 {
            drain.grant(now);
            drain.release(now + ms(200), now, true);
            now += Duration::from_secs(10);
        }
        // Saturated: 50 in flight.
        for _ in 0..50 {
            drain.grant(now);
        }
        let rate = drain.per_second(now + ms(50), 50).unwrap_or(0.0);
        assert!(rate > 200.0, "{rate}");
        // Nothing comes back for 5 s.
        let rate = drain
            .per_second(now + Duration::from_secs(5), 50)
            .unwrap_or(0.0);
        assert!(rate < 11.0, "{rate}");
    }

    #[test]
    fn wait_for_counts_the_newcomer_and_is_capped() {
        assert_eq!(wait_for(49, 10.0), Duration::from_secs(5));
        assert_eq!(wait_for(10, 1e-9), Duration::from_secs(3600));
    }
}
