//! The adaptive concurrency limit: a gradient algorithm in the style of Netflix
//! concurrency-limits' Gradient2 and Envoy's adaptive concurrency filter.
//!
//! Samples (latency from admission to the response header, or a failure) are
//! gathered in windows of at least [`WINDOW`] and [`MIN_SAMPLES`] samples. At the
//! end of each window:
//!
//! - If at least [`FAILURE_RATIO`] of the window's samples failed (timeout,
//!   503, dropped...), the limit is multiplied by `1 − failure share`, clamped to
//!   [`BACKOFF_MIN`, `BACKOFF_MAX`] (so any real failure rate costs 10 % to 50 %).
//! - Otherwise `rtt_short` is the mean latency of the window and
//!   `rtt_noload` the lowest window mean seen (see below), and
//!
//!   ```text
//!   gradient  = clamp(TOLERANCE × rtt_noload / rtt_short, 0.5, 1.0)
//!   new_limit = limit × gradient + sqrt(limit)          (the queue allowance)
//!   limit     = limit × (1 − SMOOTHING) + new_limit × SMOOTHING
//!   ```
//!
//!   so the limit grows by about `SMOOTHING × sqrt(limit)` per window while the
//!   latency stays within `TOLERANCE` of the no-load latency, and shrinks when
//!   latency rises with concurrency. Against a server whose latency is
//!   `base × max(1, in_flight / capacity)` the limit settles where
//!   `limit ≈ TOLERANCE × capacity + sqrt(limit)` (about 1.6–1.8 × capacity).
//!
//! The limit is clamped to `[min, max]` after every update.
//!
//! **No-load latency.** The lowest window mean seen. It only goes up (a server
//! that became slower for good) in windows where the pool was *app-limited* —
//! fewer than half the limit in flight, so the latency cannot be self-inflicted
//! queueing — moving [`NOLOAD_DRIFT`] of the way to the window mean. In those
//! windows the limit does not grow either (an unused limit is not evidence that a
//! larger one would be fine). When nobody reports in-flight counts
//! ([`GradientLimit::observe_inflight`]), windows count as not app-limited.
//!
//! The learned no-load latency is only as good as the first window: start with an
//! `initial` limit the servers can take without queueing.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest time between two updates of the limit.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);
/// Fewest samples (successes and failures) in a window.
pub(crate) const MIN_SAMPLES: u32 = 5;
/// Latency may rise to this multiple of the no-load latency before the limit shrinks.
pub(crate) const TOLERANCE: f64 = 1.5;
/// Weight of a new limit against the current one.
pub(crate) const SMOOTHING: f64 = 0.2;
/// Share of failed samples in a window from which the limit backs off.
pub(crate) const FAILURE_RATIO: f64 = 0.01;
/// Smallest factor of a backoff (at most halve per window).
pub(crate) const BACKOFF_MIN: f64 = 0.5;
/// Largest factor of a backoff (at least −10 % per window).
pub(crate) const BACKOFF_MAX: f64 = 0.9;
/// Share of the gap to the window mean by which the no-load latency rises in an
/// app-limited window.
pub(crate) const NOLOAD_DRIFT: f64 = 0.1;

/// Samples of the current window.
#[derive(Debug, Default)]
struct Window {
    start: Option<Instant>,
    latency_sum: f64,
    successes: u32,
    failures: u32,
    max_inflight: Option<usize>,
}

/// A concurrency limit learned from latency. Pure state; the caller supplies time.
#[derive(Debug)]
pub(crate) struct GradientLimit {
    min: usize,
    max: usize,
    limit: f64,
    /// Seconds; `None` until the first window.
    noload: Option<f64>,
    window: Window,
}

impl GradientLimit {
    /// A limit starting at `initial`, kept within `[min, max]` (`min` at least 1).
    pub(crate) fn new(min: usize, max: usize, initial: usize) -> GradientLimit {
        let mut limit = GradientLimit {
            min: 1,
            max: 1,
            limit: initial as f64,
            noload: None,
            window: Window::default(),
        };
        limit.set_bounds(min, max);
        limit
    }

    /// Changes the bounds (config reload), keeping what was learned.
    pub(crate) fn set_bounds(&mut self, min: usize, max: usize) {
        self.min = min.max(1);
        self.max = max.max(self.min);
        self.limit = self.limit.clamp(self.min as f64, self.max as f64);
    }

    /// The current limit, within `[min, max]`.
    pub(crate) fn limit(&self) -> usize {
        (self.limit as usize).clamp(self.min, self.max)
    }

    /// The learned no-load latency, once known.
    #[cfg(test)]
    pub(crate) fn noload(&self) -> Option<Duration> {
        self.noload.map(Duration::from_secs_f64)
    }

    /// Notes how many requests are in flight (called when one is admitted), to
    /// tell app-limited windows apart.
    pub(crate) fn observe_inflight(&mut self, inflight: usize) {
        let max = self.window.max_inflight.get_or_insert(0);
        *max = (*max).max(inflight);
    }

    /// One finished request: its latency, or that it failed (timeout, 503, dropped).
    pub(crate) fn sample(&mut self, now: Instant, latency: Duration, failed: bool) {
        let start = *self.window.start.get_or_insert(now);
        if failed {
            self.window.failures += 1;
        } else {
            self.window.latency_sum += latency.as_secs_f64();
            self.window.successes += 1;
        }
        let samples = self.window.successes + self.window.failures;
        if now.saturating_duration_since(start) >= WINDOW && samples >= MIN_SAMPLES {
            self.update();
            self.window = Window {
                start: Some(now),
                ..Window::default()
            };
        }
    }

    fn update(&mut self) {
        let window = &self.window;
        let samples = f64::from(window.successes + window.failures);
        let failure_share = f64::from(window.failures) / samples;
        let app_limited = window
            .max_inflight
            .is_some_and(|inflight| (inflight as f64) * 2.0 < self.limit);
        if window.failures > 0 && failure_share >= FAILURE_RATIO {
            self.limit *= (1.0 - failure_share).clamp(BACKOFF_MIN, BACKOFF_MAX);
        } else if window.successes > 0 {
            let short = window.latency_sum / f64::from(window.successes);
            let noload = match self.noload {
                None => short,
                Some(noload) if short < noload => short,
                Some(noload) if app_limited => noload + (short - noload) * NOLOAD_DRIFT,
                Some(noload) => noload,
            };
            self.noload = Some(noload);
            let gradient = if short > 0.0 {
                (TOLERANCE * noload / short).clamp(0.5, 1.0)
            } else {
                1.0
            };
            let mut new_limit = self.limit * gradient + self.limit.sqrt();
            if app_limited {
                new_limit = new_limit.min(self.limit);
            }
            self.limit = self.limit * (1.0 - SMOOTHING) + new_limit * SMOOTHING;
        }
        self.limit = self.limit.clamp(self.min as f64, self.max as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(10);

    /// A saturated closed loop against a server whose latency is
    /// `base × max(1, in_flight / capacity)` (± `jitter` share): every round, as
    /// many requests as the limit allows are in flight and all finish together.
    fn run(limit: &mut GradientLimit, now: &mut Instant, capacity: usize, rounds: usize) {
        let mut rng = fastrand::Rng::with_seed(capacity as u64);
        for _ in 0..rounds {
            let inflight = limit.limit();
            limit.observe_inflight(inflight);
            let load = (inflight as f64 / capacity as f64).max(1.0);
            let latency = BASE.mul_f64(load);
            *now += latency;
            for _ in 0..inflight {
                let jitter = 0.9 + rng.f64() * 0.2;
                limit.sample(*now, latency.mul_f64(jitter), false);
            }
        }
    }

    /// Light load: a few requests at the base latency, far below the limit.
    fn warm_up(limit: &mut GradientLimit, now: &mut Instant) {
        for _ in 0..100 {
            limit.observe_inflight(1);
            *now += BASE;
            for _ in 0..5 {
                limit.sample(*now, BASE, false);
            }
        }
    }

    #[test]
    fn grows_while_latency_stays_at_the_noload_latency() {
        let mut limit = GradientLimit::new(1, 1000, 10);
        let mut now = Instant::now();
        let mut previous = limit.limit();
        for _ in 0..10 {
            // A server that never queues.
            run(&mut limit, &mut now, usize::MAX, 50);
            assert!(limit.limit() > previous, "{} > {previous}", limit.limit());
            previous = limit.limit();
        }
        run(&mut limit, &mut now, usize::MAX, 10_000);
        assert_eq!(limit.limit(), 1000, "reaches max");
    }

    #[test]
    fn shrinks_when_latency_rises_with_concurrency() {
        let mut limit = GradientLimit::new(1, 1000, 400);
        let mut now = Instant::now();
        warm_up(&mut limit, &mut now);
        assert_eq!(limit.limit(), 400, "no growth while app-limited");
        assert!(limit.noload().is_some_and(|n| n <= BASE.mul_f64(1.01)));
        let mut previous = limit.limit();
        for _ in 0..5 {
            run(&mut limit, &mut now, 20, 10);
            assert!(limit.limit() < previous, "{} < {previous}", limit.limit());
            previous = limit.limit();
        }
    }

    #[test]
    fn converges_near_the_server_capacity_from_below_and_above() {
        for capacity in [10, 20, 50, 100, 300] {
            for initial in [2, capacity * 8] {
                let mut limit = GradientLimit::new(1, 5000, initial);
                let mut now = Instant::now();
                warm_up(&mut limit, &mut now);
                run(&mut limit, &mut now, capacity, 5000);
                let mut seen = Vec::new();
                for _ in 0..20 {
                    run(&mut limit, &mut now, capacity, 50);
                    seen.push(limit.limit());
                }
                for learned in seen {
                    assert!(
                        learned * 2 >= capacity && learned <= capacity * 2,
                        "capacity {capacity}, initial {initial}: limit {learned}"
                    );
                }
            }
        }
    }

    #[test]
    fn failures_cut_the_limit_multiplicatively_and_respect_min() {
        let mut limit = GradientLimit::new(4, 1000, 100);
        let mut now = Instant::now();
        for _ in 0..10 {
            now += BASE;
            limit.sample(now, BASE, false);
        }
        let before = limit.limit();
        // A window where a third of the requests fail.
        for i in 0..30 {
            now += Duration::from_millis(5);
            limit.sample(now, BASE, i % 3 == 0);
        }
        let after = limit.limit();
        assert!(
            after * 100 <= before * 95 && after * 10 >= before * 4,
            "{before} -> {after}"
        );
        for _ in 0..200 {
            now += Duration::from_millis(50);
            limit.sample(now, Duration::ZERO, true);
        }
        assert_eq!(limit.limit(), 4);
    }

    #[test]
    fn rare_failures_do_not_cut_the_limit() {
        let mut limit = GradientLimit::new(1, 1000, 100);
        let mut now = Instant::now();
        warm_up(&mut limit, &mut now);
        for i in 0..1000 {
            now += Duration::from_micros(500);
            limit.observe_inflight(100);
            limit.sample(now, BASE, i == 500);
        }
        assert!(limit.limit() >= 100);
    }

    #[test]
    fn bounds_change_keeps_the_learned_limit() {
        let mut limit = GradientLimit::new(1, 1000, 50);
        limit.set_bounds(1, 30);
        assert_eq!(limit.limit(), 30);
        limit.set_bounds(10, 500);
        assert_eq!(limit.limit(), 30);
        limit.set_bounds(0, 0);
        assert_eq!(limit.limit(), 1, "min is at least 1");
    }
}
