//! The retry budget of a pool: retries may be at most a percentage of the pool's
//! requests over the last `WINDOW_SECS` (10) seconds, plus a small allowance per
//! second, so retries cannot multiply load during an outage.

use parking_lot::Mutex;

use tokio::time::Instant;

use crate::config::RetryBudgetConfig;

/// Length of the sliding window, in seconds.
const WINDOW_SECS: u64 = 10;

/// Counts of requests and retries per second over the last window.
#[derive(Debug)]
pub struct RetryBudget {
    started: Instant,
    slots: Mutex<[Slot; WINDOW_SECS as usize]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    second: u64,
    requests: u64,
    retries: u64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            started: Instant::now(),
            slots: Mutex::new([Slot::default(); WINDOW_SECS as usize]),
        }
    }
}

impl RetryBudget {
    fn with_slot<T>(&self, now: Instant, f: impl FnOnce(&mut [Slot], usize, u64) -> T) -> T {
        let second = now.saturating_duration_since(self.started).as_secs();
        let mut slots = self.slots.lock();
        let index = (second % WINDOW_SECS) as usize;
        if slots[index].second != second {
            slots[index] = Slot {
                second,
                ..Slot::default()
            };
        }
        f(&mut slots[..], index, second)
    }

    /// Counts a first attempt of a request.
    pub fn record_request(&self, now: Instant) {
        self.with_slot(now, |slots, index, _| slots[index].requests += 1);
    }

    /// Takes one retry from the budget if it has room; false when exhausted.
    pub fn try_retry(&self, now: Instant, config: &RetryBudgetConfig) -> bool {
        self.with_slot(now, |slots, index, second| {
            let recent = slots.iter().filter(|s| s.second + WINDOW_SECS > second);
            let (requests, retries) =
                recent.fold((0, 0), |(q, r), s| (q + s.requests, r + s.retries));
            let allowed = requests * u64::from(config.percent) / 100
                + u64::from(config.min_per_second) * WINDOW_SECS;
            if retries < allowed {
                slots[index].retries += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn retries_are_capped_at_a_share_of_recent_requests_plus_the_minimum() {
        let budget = RetryBudget::default();
        let config = RetryBudgetConfig {
            percent: 20,
            min_per_second: 1,
        };
        let now = Instant::now();
        for _ in 0..100 {
            budget.record_request(now);
        }
        // 20% of 100, plus 1 per second over the 10 s window.
        let granted = (0..100).filter(|_| budget.try_retry(now, &config)).count();
        assert_eq!(granted, 30);

        // Once the window has passed, old requests and retries no longer count.
        let later = now + Duration::from_secs(WINDOW_SECS);
        let granted = (0..100)
            .filter(|_| budget.try_retry(later, &config))
            .count();
        assert_eq!(granted, 10);
    }
}
