//! Rate limits: one contract, kept by the memory limiter here and by the Redis
//! one (`store::redis::RedisRateLimiter`), so a route means the same thing
//! whichever store counts it.
//!
//! The contract, per route and per client key:
//! - time is cut into one-second windows on the limiter's clock; a request is
//!   admitted when `previous × overlap + current < requests_per_second`, where
//!   `current` and `previous` count the requests admitted in this window and the
//!   one before, and `overlap` is the share of the previous window still inside
//!   the last second (a sliding window, estimated from two counters);
//! - only admitted requests count: a client sending ten times its rate still
//!   gets its rate, never zero;
//! - clients never share a count: the memory limiter keys its windows by a
//!   64-bit keyed hash of the client key (a collision needs about 2^32
//!   clients), Redis by the key itself. Requests without the key header share
//!   the empty key.
//!
//! [`contract::run_all`] states the contract as cases, run against both
//! limiters (the Redis one in the integration suite, on a real Redis).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::HeaderMap;
use parking_lot::Mutex;

use crate::config::{RateKey, RateLimitConfig};

/// Counts requests of clients against a per-second limit.
#[async_trait]
pub trait RateLimiter: Send + Sync + Debug {
    /// Counts a request of `client` against `per_second`: true when admitted
    /// (and then counted), false when over the limit (not counted).
    async fn admit(&self, client: &[u8], per_second: u32) -> bool;
}

/// A clock the caller sets, in milliseconds: what the contract cases drive.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Sets the time, in milliseconds.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::Relaxed);
    }

    /// The time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The sliding-window rule: whether one more request fits, `into_window` ms
/// into the current window.
pub fn fits(previous: u32, current: u32, into_window: u64, per_second: u32) -> bool {
    let overlap = 1.0 - (into_window.min(1000) as f64) / 1000.0;
    f64::from(previous) * overlap + f64::from(current) < f64::from(per_second)
}

/// Counts a request against `limit` in `limiter`; true when the client (by IP
/// or header, as configured) is over it.
pub async fn is_over(
    limiter: &dyn RateLimiter,
    limit: &RateLimitConfig,
    headers: &HeaderMap,
    client_ip: Option<IpAddr>,
) -> bool {
    let ip;
    let client: &[u8] = match &limit.key {
        RateKey::ClientIp => {
            ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
            ip.as_bytes()
        }
        RateKey::Header(name) => headers.get(name).map_or(&[], |v| v.as_bytes()),
    };
    !limiter.admit(client, limit.requests_per_second).await
}

/// Shards of the memory limiter: requests of different clients rarely wait on
/// one lock.
const SHARDS: usize = 32;

/// The limiter of one instance's memory: exact per client, swept of idle
/// clients once a second.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    started: Instant,
    clock: Option<ManualClock>,
}

#[derive(Debug, Default)]
struct Shard {
    windows: HashMap<u64, Window>,
    swept: u64,
}

/// A client's two counters.
#[derive(Debug, Clone, Copy)]
struct Window {
    second: u64,
    current: u32,
    previous: u32,
}

impl MemoryRateLimiter {
    /// A limiter on this process's monotonic clock.
    pub fn new() -> MemoryRateLimiter {
        MemoryRateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            started: Instant::now(),
            clock: None,
        }
    }

    /// A limiter on `clock` (for the contract cases).
    pub fn with_clock(clock: ManualClock) -> MemoryRateLimiter {
        MemoryRateLimiter {
            clock: Some(clock),
            ..MemoryRateLimiter::new()
        }
    }

    fn now_ms(&self) -> u64 {
        match &self.clock {
            Some(clock) => clock.now_ms(),
            None => u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Clients with a window, all shards (for tests of the sweep).
    pub fn clients(&self) -> usize {
        self.shards.iter().map(|s| s.lock().windows.len()).sum()
    }

    fn admit_at(&self, client: &[u8], per_second: u32, now_ms: u64) -> bool {
        let hash = self.hasher.hash_one(client);
        let second = now_ms / 1000;
        let mut shard = self.shards[(hash as usize) % SHARDS].lock();
        if shard.swept < second {
            // Windows older than the previous second count nothing any more.
            shard.swept = second;
            shard.windows.retain(|_, w| w.second + 1 >= second);
        }
        let window = shard.windows.entry(hash).or_insert(Window {
            second,
            current: 0,
            previous: 0,
        });
        if window.second != second {
            let previous = if window.second + 1 == second {
                window.current
            } else {
                0
            };
            *window = Window {
                second,
                current: 0,
                previous,
            };
        }
        let admitted = fits(window.previous, window.current, now_ms % 1000, per_second);
        if admitted {
            window.current = window.current.saturating_add(1);
        }
        admitted
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        MemoryRateLimiter::new()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn admit(&self, client: &[u8], per_second: u32) -> bool {
        self.admit_at(client, per_second, self.now_ms())
    }
}

/// The contract as cases: each runs against a fresh limiter on a fresh clock.
#[doc(hidden)]
pub mod contract {
    use super::{ManualClock, RateLimiter};
    use std::sync::Arc;

    /// One step: at `at_ms`, `client` asks `times` times; `admitted` of them pass.
    struct Step {
        at_ms: u64,
        client: &'static [u8],
        times: u32,
        admitted: u32,
    }

    const fn step(at_ms: u64, client: &'static [u8], times: u32, admitted: u32) -> Step {
        Step {
            at_ms,
            client,
            times,
            admitted,
        }
    }

    /// (name, requests per second, steps).
    const CASES: &[(&str, u32, &[Step])] = &[
        (
            "a burst gets the limit and no more",
            3,
            &[step(0, b"alice", 5, 3)],
        ),
        (
            "clients never share a count",
            2,
            &[
                step(0, b"alice", 4, 2),
                step(10, b"bob", 2, 2),
                step(20, b"", 3, 2),
            ],
        ),
        (
            "requests over the limit do not count",
            2,
            &[
                step(0, b"alice", 2, 2),
                step(100, b"alice", 50, 0),
                step(900, b"alice", 50, 0),
                // Half the previous window overlaps: 2 × 0.5 + 0 < 2, once.
                step(1500, b"alice", 5, 1),
                // Second 1 admitted one: a full overlap of 1, so one more.
                step(2000, b"alice", 5, 1),
            ],
        ),
        (
            "the window slides instead of resetting on the second",
            10,
            &[
                step(900, b"alice", 10, 10),
                step(1000, b"alice", 3, 0),
                step(1500, b"alice", 10, 5),
                // 0.2 of the previous window still overlaps: 2 + current < 10.
                step(1800, b"alice", 5, 3),
            ],
        ),
        (
            "a quiet second forgets",
            1,
            &[
                step(0, b"alice", 2, 1),
                step(2000, b"alice", 2, 1),
                step(4100, b"alice", 2, 1),
            ],
        ),
        (
            "a long client key is its own client",
            1,
            &[step(0, &[b'k'; 300], 2, 1), step(0, &[b'k'; 299], 2, 1)],
        ),
    ];

    /// Runs every case; panics naming the case and step that breaks the contract.
    pub async fn run_all(make: impl Fn(ManualClock) -> Arc<dyn RateLimiter>) {
        for (name, per_second, steps) in CASES {
            let clock = ManualClock::default();
            let limiter = make(clock.clone());
            for (i, step) in steps.iter().enumerate() {
                clock.set(step.at_ms);
                let mut admitted = 0;
                for _ in 0..step.times {
                    if limiter.admit(step.client, *per_second).await {
                        admitted += 1;
                    }
                }
                assert_eq!(
                    admitted, step.admitted,
                    "rate limit contract: {name}: step {i} at {} ms",
                    step.at_ms
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_limiter_keeps_the_contract() {
        contract::run_all(|clock| Arc::new(MemoryRateLimiter::with_clock(clock))).await;
    }

    #[tokio::test]
    async fn idle_clients_are_swept() {
        let clock = ManualClock::default();
        let limiter = MemoryRateLimiter::with_clock(clock.clone());
        for client in 0..1000u32 {
            assert!(limiter.admit(&client.to_be_bytes(), 1).await);
        }
        assert_eq!(limiter.clients(), 1000);
        clock.set(2000);
        // 2 000 newcomers reach every shard (a shard missed by all of them
        // has odds of 32 × (31/32)^2000): each sweeps its idle clients.
        for client in 0..2000u32 {
            limiter.admit(&(1_000_000 + client).to_be_bytes(), 1).await;
        }
        assert_eq!(limiter.clients(), 2000);
    }

    #[test]
    fn thousands_of_clients_at_their_rate_are_never_throttled() {
        let limiter = MemoryRateLimiter::with_clock(ManualClock::default());
        let throttled = (0..10_000u32)
            .filter(|client| !limiter.admit_at(&client.to_be_bytes(), 1, 500))
            .count();
        assert_eq!(throttled, 0);
    }

    #[tokio::test]
    async fn a_limit_keys_by_header_or_address() {
        let by_user = RateLimitConfig {
            requests_per_second: 1,
            key: RateKey::Header(http::HeaderName::from_static("x-user")),
        };
        let limiter = MemoryRateLimiter::new();
        let mut alice = HeaderMap::new();
        alice.insert("x-user", http::HeaderValue::from_static("alice"));
        assert!(!is_over(&limiter, &by_user, &alice, None).await);
        assert!(is_over(&limiter, &by_user, &alice, None).await);
        assert!(!is_over(&limiter, &by_user, &HeaderMap::new(), None).await);
        let by_ip = RateLimitConfig {
            requests_per_second: 1,
            key: RateKey::ClientIp,
        };
        let limiter = MemoryRateLimiter::new();
        let ip = Some(IpAddr::from([192, 0, 2, 1]));
        assert!(!is_over(&limiter, &by_ip, &alice, ip).await);
        assert!(is_over(&limiter, &by_ip, &alice, ip).await);
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        assert!(!is_over(&limiter, &by_ip, &alice, other).await);
    }
}
