//! The state of one pool's admission, behind the `Admission` mutex: slots in use
//! per class, the waiters per class, the limit and the drain-rate estimate.
//! Everything here is synchronous; nothing awaits while the lock is held.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::drain::{wait_for, DrainRate};
use super::limit::GradientLimit;
use super::{AdmissionConfig, LimitConfig, Priority, Reject};

/// What a waiter is sent: the time its slot was granted, or why it was rejected.
pub(crate) type Grant = Result<Instant, Reject>;

/// Longest Retry-After given to a rejected request.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The Retry-After for an expected wait: rounded to the nearest whole second,
/// between 1 s and [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after(expected_wait: Duration) -> Duration {
    let rounded = Duration::from_secs((expected_wait + Duration::from_millis(500)).as_secs());
    rounded.clamp(Duration::from_secs(1), MAX_RETRY_AFTER)
}

/// One request waiting for a slot.
#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

/// Admission state of one pool.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: AdmissionConfig,
    /// As last told by the proxy; `None` until then (no bound).
    capacity: Option<usize>,
    in_use: [usize; 4],
    queues: [VecDeque<Waiter>; 4],
    next_id: u64,
    /// Present when the limit is adaptive.
    adaptive: Option<GradientLimit>,
    drain: DrainRate,
    /// Since when the queue has been non-empty without a break (CoDel's standing queue).
    busy_since: Option<Instant>,
}

impl State {
    pub(crate) fn new(config: AdmissionConfig, now: Instant) -> State {
        let mut state = State {
            config: config.clone(),
            capacity: None,
            in_use: [0; 4],
            queues: Default::default(),
            next_id: 0,
            adaptive: None,
            drain: DrainRate::new(now),
            busy_since: None,
        };
        state.set_config(config, now);
        state
    }

    /// Applies a new config; waiters, slots in use and a learned adaptive limit stay.
    pub(crate) fn set_config(&mut self, config: AdmissionConfig, now: Instant) {
        self.adaptive = match (&config.limit, self.adaptive.take()) {
            (&LimitConfig::Adaptive { min, max, .. }, Some(mut learned)) => {
                learned.set_bounds(min, max);
                Some(learned)
            }
            (&LimitConfig::Adaptive { min, max, initial }, None) => {
                Some(GradientLimit::new(min, max, initial))
            }
            _ => None,
        };
        self.config = config;
        self.dispatch(now);
    }

    /// Sets the capacity; true when it changed.
    pub(crate) fn set_capacity(&mut self, capacity: usize) -> bool {
        let changed = self.capacity != Some(capacity);
        self.capacity = Some(capacity);
        changed
    }

    /// The number of slots: see `LimitConfig`. `usize::MAX` means unbounded.
    pub(crate) fn limit(&self) -> usize {
        let configured = match (&self.config.limit, &self.adaptive) {
            (LimitConfig::Capacity, _) => usize::MAX,
            (LimitConfig::Fixed(n), _) => *n,
            (LimitConfig::Adaptive { .. }, Some(learned)) => learned.limit(),
            (LimitConfig::Adaptive { initial, .. }, None) => *initial,
        };
        match self.capacity {
            Some(capacity) => configured.min(capacity),
            None => configured,
        }
    }

    pub(crate) fn in_use_total(&self) -> usize {
        self.in_use.iter().sum()
    }

    pub(crate) fn waiting(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|class| self.queues[class].len())
    }

    /// Whether no request of `class` is waiting.
    pub(crate) fn queue_empty(&self, class: usize) -> bool {
        self.queues[class].is_empty()
    }

    fn waiting_total(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Slots reserved for each class with `limit` slots: `ceil(reserved% × limit)`;
    /// when rounding up makes them exceed the limit, the lowest classes give
    /// back the excess, so a class with an unused reservation can always take a slot.
    pub(crate) fn reservations(&self, limit: usize) -> [usize; 4] {
        if limit == usize::MAX {
            return [0; 4];
        }
        let limit = limit as u128;
        let mut reserved = self
            .config
            .reserved
            .map(|percent| (u128::from(percent.min(100)) * limit).div_ceil(100));
        let mut excess = reserved.iter().sum::<u128>().saturating_sub(limit);
        for share in reserved.iter_mut() {
            let cut = excess.min(*share);
            *share -= cut;
            excess -= cut;
        }
        reserved.map(|share| share as usize)
    }

    /// Whether `class` may take a slot now: there is a free one, and taking it
    /// leaves every other class its unused reservation.
    pub(crate) fn may_take(&self, class: usize) -> bool {
        let limit = self.limit();
        let total = self.in_use_total();
        if total >= limit {
            return false;
        }
        let reserved = self.reservations(limit);
        let held_back: usize = (0..4)
            .filter(|&k| k != class)
            .map(|k| reserved[k].saturating_sub(self.in_use[k]))
            .sum();
        total + 1 + held_back <= limit
    }

    /// Counts a slot as taken by `class` at `now`.
    pub(crate) fn grant(&mut self, class: usize, now: Instant) {
        self.in_use[class] += 1;
        self.drain.grant(now);
        let total = self.in_use_total();
        if let Some(learned) = self.adaptive.as_mut() {
            learned.observe_inflight(total);
        }
    }

    /// Gives back a slot of `class` granted at `granted_at`; `served` is false
    /// when the slot went to a waiter who had already left. Call `dispatch` after.
    pub(crate) fn release(
        &mut self,
        class: usize,
        now: Instant,
        granted_at: Instant,
        served: bool,
    ) {
        self.in_use[class] = self.in_use[class].saturating_sub(1);
        self.drain.release(now, granted_at, served);
    }

    /// Feeds the adaptive limit, if any.
    pub(crate) fn sample(&mut self, now: Instant, latency: Duration, failed: bool) {
        if let Some(learned) = self.adaptive.as_mut() {
            learned.sample(now, latency, failed);
        }
    }

    /// Hands free slots to waiters: each time to the highest class whose first
    /// waiter may take one.
    pub(crate) fn dispatch(&mut self, now: Instant) {
        while let Some(class) = (0..4)
            .rev()
            .find(|&class| !self.queues[class].is_empty() && self.may_take(class))
        {
            let Some(waiter) = self.queues[class].pop_front() else {
                break;
            };
            self.grant(class, now);
            if waiter.tx.send(Ok(now)).is_err() {
                // Cannot happen (a leaving waiter removes itself first), but a
                // slot must never be lost.
                self.release(class, now, now, false);
            }
        }
        self.note_queue(now);
    }

    /// Puts a waiter at the end of its class; returns its id.
    pub(crate) fn enqueue(
        &mut self,
        class: usize,
        tx: oneshot::Sender<Grant>,
        now: Instant,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queues[class].push_back(Waiter { id, tx });
        self.note_queue(now);
        id
    }

    /// Removes the waiter `id` of `class`; false when it is no longer queued
    /// (granted or rejected meanwhile).
    pub(crate) fn remove(&mut self, class: usize, id: u64, now: Instant) -> bool {
        let queue = &mut self.queues[class];
        let Some(index) = queue.iter().position(|waiter| waiter.id == id) else {
            return false;
        };
        queue.remove(index);
        self.note_queue(now);
        true
    }

    /// Makes room for a newcomer of `class`: true when the queue has room or
    /// could be given room by rejecting (QueueFull) the newest waiters of the
    /// lowest classes below `class`.
    pub(crate) fn make_room(&mut self, class: usize, now: Instant) -> bool {
        let max = self.config.max_waiting;
        let needed = (self.waiting_total() + 1).saturating_sub(max);
        if needed == 0 {
            return true;
        }
        let lower: usize = self.queues[..class].iter().map(VecDeque::len).sum();
        if max == 0 || needed > lower {
            return false;
        }
        for _ in 0..needed {
            let Some(lowest) = (0..class).find(|&k| !self.queues[k].is_empty()) else {
                break;
            };
            let retry_after = self.retry_after(lowest, now);
            if let Some(waiter) = self.queues[lowest].pop_back() {
                log::debug!(
                    "admission: a {} request gives its place in the queue to a {} one",
                    Priority::ALL[lowest],
                    Priority::ALL[class]
                );
                // The waiter is known to be listening (see `dispatch`).
                let _ = waiter.tx.send(Err(Reject::QueueFull { retry_after }));
            }
        }
        self.note_queue(now);
        true
    }

    fn note_queue(&mut self, now: Instant) {
        if self.waiting_total() == 0 {
            self.busy_since = None;
        } else if self.busy_since.is_none() {
            self.busy_since = Some(now);
        }
    }

    /// Whether the queue has been standing (never empty) for longer than the
    /// queue timeout.
    pub(crate) fn standing(&self, now: Instant) -> bool {
        self.busy_since
            .is_some_and(|since| now.saturating_duration_since(since) > self.config.queue_timeout)
    }

    /// Releases per second, when known.
    pub(crate) fn drain_per_second(&self, now: Instant) -> Option<f64> {
        self.drain.per_second(now, self.in_use_total())
    }

    /// How long a newcomer of `class` can expect to wait: the waiters of its
    /// class and above, plus itself, at the drain rate. When the rate is unknown:
    /// the queue timeout if someone is waiting ahead, else `None` (no estimate).
    pub(crate) fn expected_wait(&self, class: usize, now: Instant) -> Option<Duration> {
        let ahead: usize = self.queues[class..].iter().map(VecDeque::len).sum();
        match self.drain_per_second(now) {
            Some(rate) => Some(wait_for(ahead, rate)),
            None if ahead > 0 => Some(self.config.queue_timeout),
            None => None,
        }
    }

    /// The longest a newcomer may expect to wait before being shed: the queue
    /// timeout (half of it while the queue is standing), and no longer than the
    /// time left until `deadline`.
    pub(crate) fn wait_budget(&self, now: Instant, deadline: Instant) -> Duration {
        let mut budget = self.config.queue_timeout;
        if self.standing(now) {
            budget /= 2;
        }
        budget.min(deadline.saturating_duration_since(now))
    }

    /// Retry-After for a rejected request of `class`.
    pub(crate) fn retry_after(&self, class: usize, now: Instant) -> Duration {
        retry_after(
            self.expected_wait(class, now)
                .unwrap_or(self.config.queue_timeout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(reserved: [u8; 4], limit: LimitConfig) -> AdmissionConfig {
        AdmissionConfig {
            max_waiting: 100,
            queue_timeout: Duration::from_secs(5),
            reserved,
            limit,
        }
    }

    #[test]
    fn retry_after_rounds_to_whole_seconds_within_bounds() {
        assert_eq!(retry_after(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            retry_after(Duration::from_millis(5100)),
            Duration::from_secs(5)
        );
        assert_eq!(
            retry_after(Duration::from_millis(5500)),
            Duration::from_secs(6)
        );
        assert_eq!(retry_after(Duration::from_secs(600)), MAX_RETRY_AFTER);
    }

    #[test]
    fn limit_follows_the_mode_and_capacity() {
        let now = Instant::now();
        let mut state = State::new(config([0; 4], LimitConfig::Capacity), now);
        assert_eq!(state.limit(), usize::MAX, "unbounded until told");
        state.set_capacity(12);
        assert_eq!(state.limit(), 12);
        state.set_config(config([0; 4], LimitConfig::Fixed(8)), now);
        assert_eq!(state.limit(), 8);
        state.set_capacity(5);
        assert_eq!(state.limit(), 5);
        state.set_capacity(0);
        assert_eq!(state.limit(), 0, "no backend: no slot");
        let adaptive = LimitConfig::Adaptive {
            min: 2,
            max: 50,
            initial: 10,
        };
        state.set_config(config([0; 4], adaptive), now);
        assert_eq!(state.limit(), 0);
        state.set_capacity(100);
        assert_eq!(state.limit(), 10);
        state.set_capacity(4);
        assert_eq!(state.limit(), 4);
    }

    #[test]
    fn reservations_round_up_and_never_exceed_the_limit() {
        let now = Instant::now();
        let state = State::new(config([0, 0, 0, 50], LimitConfig::Capacity), now);
        assert_eq!(state.reservations(10), [0, 0, 0, 5]);
        assert_eq!(state.reservations(3), [0, 0, 0, 2]);
        assert_eq!(state.reservations(0), [0; 4]);
        let state = State::new(config([33, 33, 0, 34], LimitConfig::Capacity), now);
        assert_eq!(state.reservations(1), [0, 0, 0, 1]);
        assert_eq!(state.reservations(2), [0, 1, 0, 1]);
        assert_eq!(state.reservations(100), [33, 33, 0, 34]);
    }

    #[test]
    fn a_class_with_an_unused_reservation_can_always_take_a_slot() {
        let now = Instant::now();
        let mut state = State::new(config([20, 20, 20, 40], LimitConfig::Capacity), now);
        state.set_capacity(3);
        let mut granted = [0; 4];
        // Greedy low classes first, then everyone.
        for class in [0, 0, 0, 1, 1, 2, 3, 3, 3] {
            if state.may_take(class) {
                state.grant(class, now);
                granted[class] += 1;
            }
        }
        assert_eq!(state.in_use_total(), 3);
        let reserved = state.reservations(3);
        for class in 0..4 {
            assert!(
                granted[class] >= reserved[class].min(1),
                "{granted:?} {reserved:?}"
            );
        }
    }
}
