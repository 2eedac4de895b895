//! Per-pool admission control: when every backend of a pool is at capacity,
//! requests wait here (not on the servers), by priority, and are answered at
//! once when the wait would be too long.
//!
//! One [`Admission`] per pool, shared through an `Arc`, outliving config
//! snapshots. A request calls [`Admission::admit`] and holds the [`Permit`] until
//! its answer is done; dropping the permit frees the slot for the best waiter.
//!
//! **Limit** (the number of slots), from [`LimitConfig`] and the capacity the
//! proxy reports with [`Admission::set_capacity`] (the sum of the in-flight caps
//! of the backends that can take traffic):
//!
//! | mode | slots |
//! |---|---|
//! | `Capacity` | the capacity |
//! | `Fixed(n)` | `min(n, capacity)` |
//! | `Adaptive{min,max,..}` | the learned limit (within `[min, max]`), at most the capacity |
//!
//! Until the proxy first reports a capacity there is no bound from it (in
//! `Capacity` mode: no limit at all). A capacity of 0 means that no backend can
//! take traffic: there is no slot in any mode, so requests queue and are shed or
//! time out as usual (the proxy answers "no healthy backend" on its own).
//!
//! **Reserved shares.** With `C` slots and `reserved[k]` percent for class `k`,
//! class `k` is guaranteed `ceil(reserved[k] × C / 100)` slots (when rounding up
//! overshoots `C`, the lowest classes give back the excess). A class may take a
//! slot only if that leaves every *other* class its unused reservation:
//! `in_use + 1 + Σ_{k≠c} max(0, reserved_k − in_use_k) ≤ C`. A class with an
//! unused reservation can therefore always take a slot at once.
//!
//! **Queue.** FIFO within a class; a freed slot goes to the highest class whose
//! first waiter may take it. When `max_waiting` is reached, a newcomer rejects
//! (QueueFull) the newest waiter of the lowest class below its own, or is
//! rejected itself. A waiter leaves at its deadline or after `queue_timeout`
//! (QueueTimeout), whichever comes first; a waiter whose future is dropped
//! leaves at once, and a slot granted to it in the meantime goes to the next one.
//!
//! **Predictive shedding.** The expected wait of a newcomer is the number of
//! waiters of its class and above, plus one, divided by the drain rate (slots
//! freed per second, see `drain.rs`); when the rate is unknown it is the queue
//! timeout if anyone waits ahead, else there is no estimate (no shedding). When
//! it exceeds `min(queue_timeout, deadline − now)` the request is shed at once.
//! Like CoDel, a *standing* queue (not empty for longer than `queue_timeout`)
//! halves the queue timeout in that comparison, so a queue that never drains
//! gets shorter.
//!
//! **Retry-After** of a rejection: the expected wait rounded to the nearest
//! whole second, between 1 s and 60 s ([`Reject::retry_after`]).
//!
//! **Adaptive limit**: see `limit.rs` (a gradient algorithm fed by
//! [`Permit::record`]).

mod drain;
mod limit;
mod queue;
#[cfg(test)]
mod tests;

use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

pub use crate::config::{AdmissionConfig, LimitConfig, Priority};
use crate::outcome::Outcome;
use queue::{Grant, State};

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The queue is full (max_waiting) and no lower class can be displaced.
    QueueFull {
        /// How long the client should wait before trying again.
        retry_after: Duration,
    },
    /// Waited for the whole queue timeout (or the caller's deadline).
    QueueTimeout {
        /// How long the client should wait before trying again.
        retry_after: Duration,
    },
    /// Predictive shedding: the expected wait is longer than the time the request has left.
    Shed {
        /// The estimated wait for a slot.
        expected_wait: Duration,
    },
}

impl Reject {
    /// The Retry-After to send: whole seconds, 1 s to 60 s.
    pub fn retry_after(&self) -> Duration {
        match *self {
            Reject::QueueFull { retry_after } | Reject::QueueTimeout { retry_after } => retry_after,
            Reject::Shed { expected_wait } => queue::retry_after(expected_wait),
        }
    }

    /// The page the shopper gets for it.
    pub fn outcome(&self) -> Outcome {
        match self {
            Reject::QueueFull { .. } => Outcome::QueueFull,
            Reject::QueueTimeout { .. } => Outcome::QueueTimeout,
            Reject::Shed { .. } => Outcome::Shed,
        }
    }

    /// Whether the request goes to the pool's backup pool instead of a page:
    /// only a full queue (a request that waited its time or was shed by the
    /// estimate has no time left for another pool's queue).
    pub fn falls_back(&self, has_backup: bool) -> bool {
        has_backup && matches!(self, Reject::QueueFull { .. })
    }

    /// A short name for logs and metrics: `queue_full`, `queue_timeout` or `shed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reject::QueueFull { .. } => "queue_full",
            Reject::QueueTimeout { .. } => "queue_timeout",
            Reject::Shed { .. } => "shed",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reject::QueueFull { .. } => f.write_str("the admission queue is full"),
            Reject::QueueTimeout { .. } => f.write_str("waited too long in the admission queue"),
            Reject::Shed { expected_wait } => write!(
                f,
                "shed: the expected wait ({} ms) is longer than the time left",
                expected_wait.as_millis()
            ),
        }
    }
}

impl std::error::Error for Reject {}

/// What the admission of a pool is doing, for metrics and the admin status.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionStatus {
    /// Slots in use (all classes).
    pub in_use: usize,
    /// Requests waiting, per class (indexed by `Priority as usize`).
    pub waiting: [usize; 4],
    /// The current number of slots; `usize::MAX` when unbounded (`Capacity`
    /// mode before any capacity was reported).
    pub limit: usize,
    /// Slots freed per second, as estimated for shedding; 0 when unknown.
    pub drain_per_second: f64,
    /// The longest a request waits in the queue (`queue.timeout`).
    pub queue_timeout: Duration,
    /// Requests turned away (shed, queue full, queue timeout) since start.
    pub rejected: u64,
}

impl AdmissionStatus {
    /// Whether every slot is taken: a newcomer would wait in the queue.
    pub fn is_full(&self) -> bool {
        self.in_use >= self.limit
    }
}

/// Admission state of one pool. Lives outside config snapshots (a reload calls
/// `set_config`); shared via Arc.
pub struct Admission {
    state: Mutex<State>,
    /// Requests turned away (shed, queue full, queue timeout) since start.
    rejected: AtomicU64,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("status", &self.snapshot())
            .finish()
    }
}

impl Admission {
    /// Admission with `config`; no capacity is known yet (see [`Admission::set_capacity`]).
    pub fn new(config: AdmissionConfig) -> Admission {
        Admission {
            state: Mutex::new(State::new(config, Instant::now())),
            rejected: AtomicU64::new(0),
        }
    }

    /// Apply a new config (reload): keeps waiters (with the deadlines they
    /// already have), permits and the learned adaptive limit (within the new
    /// bounds). A lower `max_waiting` rejects no one already waiting.
    pub fn set_config(&self, config: AdmissionConfig) {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.set_config(config, now);
    }

    /// The proxy tells the current capacity (sum of in-flight caps of backends
    /// that can take traffic) whenever it may have changed — cheap to call on
    /// every request. Used when limit is Capacity, and as an upper bound otherwise.
    pub fn set_capacity(&self, capacity: usize) {
        let mut state = self.state.lock();
        if state.set_capacity(capacity) {
            let now = Instant::now();
            state.dispatch(now);
        }
    }

    /// Admits a request of `priority` that must be answered before `deadline`
    /// (the route's deadline; the queue timeout also applies).
    ///
    /// Fast path (a slot is free and the class may take it under the reserved
    /// shares): no await, no allocation. Otherwise the request is shed at once
    /// when its expected wait exceeds the time it has left, rejected when the
    /// queue is full, or queued by priority (FIFO within a class). Dropping the
    /// returned future gives up the place in the queue at once.
    pub async fn admit(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Permit, Reject> {
        let admitted = self.admit_or_reject(priority, deadline).await;
        if admitted.is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    async fn admit_or_reject(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Instant,
    ) -> Result<Permit, Reject> {
        let class = priority.index();
        let (id, rx, until) = {
            let mut state = self.state.lock();
            let now = Instant::now();
            if state.queue_empty(class) && state.may_take(class) {
                state.grant(class, now);
                return Ok(Permit::new(self.clone(), priority, now, false));
            }
            if let Some(expected_wait) = state.expected_wait(class, now) {
                if expected_wait > state.wait_budget(now, deadline) {
                    log::debug!(
                        "admission: shedding a {priority} request, expected wait {} ms",
                        expected_wait.as_millis()
                    );
                    return Err(Reject::Shed { expected_wait });
                }
            }
            if !state.make_room(class, now) {
                let retry_after = state.retry_after(class, now);
                log::debug!("admission: queue full, rejecting a {priority} request");
                return Err(Reject::QueueFull { retry_after });
            }
            let (tx, rx) = oneshot::channel();
            let id = state.enqueue(class, tx, now);
            let until = now
                .checked_add(state.config.queue_timeout)
                .map_or(deadline, |timeout| timeout.min(deadline));
            (id, rx, until)
        };
        self.wait(priority, id, rx, until).await
    }

    /// Waits in the queue until granted, rejected, or `until`.
    async fn wait(
        self: &Arc<Self>,
        priority: Priority,
        id: u64,
        rx: oneshot::Receiver<Grant>,
        until: Instant,
    ) -> Result<Permit, Reject> {
        let class = priority.index();
        let mut guard = WaitGuard {
            admission: self,
            class,
            id,
            rx,
            armed: true,
        };
        let outcome = match tokio::time::timeout_at(until, &mut guard.rx).await {
            Ok(Ok(grant)) => grant,
            // Timed out (or the sender vanished, which cannot happen): leave the
            // queue, unless a grant or a rejection came in the meantime.
            Ok(Err(_)) | Err(_) => {
                let mut state = self.state.lock();
                let now = Instant::now();
                if state.remove(class, id, now) {
                    Err(Reject::QueueTimeout {
                        retry_after: state.retry_after(class, now),
                    })
                } else {
                    match guard.rx.try_recv() {
                        Ok(grant) => grant,
                        Err(_) => Err(Reject::QueueTimeout {
                            retry_after: state.retry_after(class, now),
                        }),
                    }
                }
            }
        };
        guard.armed = false;
        outcome.map(|granted_at| Permit::new(self.clone(), priority, granted_at, true))
    }

    /// Currently in use / waiting (per class), current limit — for metrics and the admin status.
    pub fn snapshot(&self) -> AdmissionStatus {
        let state = self.state.lock();
        let now = Instant::now();
        AdmissionStatus {
            in_use: state.in_use_total(),
            waiting: state.waiting(),
            limit: state.limit(),
            drain_per_second: state.drain_per_second(now).unwrap_or(0.0),
            queue_timeout: state.config.queue_timeout,
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Removes a waiter whose future was dropped; hands on a slot granted to it meanwhile.
struct WaitGuard<'a> {
    admission: &'a Admission,
    class: usize,
    id: u64,
    rx: oneshot::Receiver<Grant>,
    armed: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.admission.state.lock();
        let now = Instant::now();
        if state.remove(self.class, self.id, now) {
            return;
        }
        // Grants are sent under the lock, so one sent before is in the channel now.
        if let Ok(Ok(granted_at)) = self.rx.try_recv() {
            state.release(self.class, now, granted_at, false);
            state.dispatch(now);
        }
    }
}

/// A slot. Dropping it frees the slot and hands it to the best waiter.
pub struct Permit {
    admission: Arc<Admission>,
    priority: Priority,
    granted_at: Instant,
    queued: bool,
    outcome: Option<(Duration, bool)>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("priority", &self.priority)
            .field("granted_at", &self.granted_at)
            .field("queued", &self.queued)
            .field("outcome", &self.outcome)
            .finish()
    }
}

impl Permit {
    fn new(
        admission: Arc<Admission>,
        priority: Priority,
        granted_at: Instant,
        queued: bool,
    ) -> Permit {
        Permit {
            admission,
            priority,
            granted_at,
            queued,
            outcome: None,
        }
    }

    /// The class the slot was granted to.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// When the slot was granted.
    pub fn granted_at(&self) -> Instant {
        self.granted_at
    }

    /// Whether the request waited in the queue (false: a slot was free at once).
    pub fn queued(&self) -> bool {
        self.queued
    }

    /// Report how the request went, for the adaptive limit: the latency from
    /// admission to the response header, and whether it was dropped/failed
    /// (timeout, 503...). Optional; if not called, the drop counts nothing.
    /// The last call wins.
    pub fn record(&mut self, latency: Duration, failed: bool) {
        self.outcome = Some((latency, failed));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.admission.state.lock();
        let now = Instant::now();
        state.release(self.priority.index(), now, self.granted_at, true);
        if let Some((latency, failed)) = self.outcome {
            state.sample(now, latency, failed);
        }
        state.dispatch(now);
    }
}
