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
//! - with `burst = b`, a client whose previous window stayed within the rate
//!   may send `b` more in this one (the limit is `requests_per_second + b`);
//!   one that used it gets the plain rate in the next window, so a client
//!   sending without pause averages about `rate + b/2` (15 a second at a
//!   rate of 10 and a burst of 10);
//! - clients never share a count: the memory limiter keys its windows by a
//!   64-bit keyed hash of the client key (a collision needs about 2^32
//!   clients), Redis by the key itself. A request without the key header is
//!   counted by its client address (header values and addresses never meet:
//!   each kind of key has its own prefix);
//! - memory is bounded: the memory limiter holds at most `max_clients` clients
//!   per route; past it, those seen least recently are forgotten (each counted
//!   in `ordergate_rate_limit_evicted_clients`) and start afresh, which can
//!   only let a request through, never refuse one.
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

/// What a limit allows one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests per second.
    pub per_second: u32,
    /// Requests above the rate after a window within it.
    pub burst: u32,
    /// Most clients counted at once (memory only).
    pub max_clients: u32,
}

impl Quota {
    /// The quota of a route's limit.
    pub fn of(config: &RateLimitConfig) -> Quota {
        Quota {
            per_second: config.requests_per_second,
            burst: config.burst,
            max_clients: config.max_clients,
        }
    }

    /// A plain rate: no burst, a large client bound.
    pub const fn per_second(per_second: u32) -> Quota {
        Quota {
            per_second,
            burst: 0,
            max_clients: 1_000_000,
        }
    }
}

/// Counts requests of clients against a per-second limit.
#[async_trait]
pub trait RateLimiter: Send + Sync + Debug {
    /// Counts a request of `client` against `quota`: true when admitted
    /// (and then counted), false when over the limit (not counted).
    async fn admit(&self, client: &[u8], quota: Quota) -> bool;

    /// Clients forgotten so far to stay within `max_clients`.
    fn evicted_clients(&self) -> u64;
}

/// A clock the caller sets: what the contract cases and the accuracy bench
/// drive. Kept in microseconds.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Sets the time, in milliseconds.
    pub fn set(&self, ms: u64) {
        self.set_us(ms * 1000);
    }

    /// Sets the time, in microseconds.
    pub fn set_us(&self, us: u64) {
        self.0.store(us, Ordering::Relaxed);
    }

    /// The time, in microseconds.
    pub fn now_us(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Microseconds in a window.
const WINDOW_US: u64 = 1_000_000;

/// The sliding-window rule: whether one more request fits, `into_window_us`
/// microseconds into the current window.
pub fn fits(previous: u32, current: u32, into_window_us: u64, quota: Quota) -> bool {
    let overlap = 1.0 - (into_window_us.min(WINDOW_US) as f64) / WINDOW_US as f64;
    let burst = if previous <= quota.per_second {
        quota.burst
    } else {
        0
    };
    let limit = f64::from(quota.per_second) + f64::from(burst);
    f64::from(previous) * overlap + f64::from(current) < limit
}

/// Counts a request against `limit` in `limiter`; true when the client (by IP
/// or header, as configured) is over it.
pub async fn is_over(
    limiter: &dyn RateLimiter,
    limit: &RateLimitConfig,
    headers: &HeaderMap,
    client_ip: Option<IpAddr>,
) -> bool {
    let key = client_key(limit, headers, client_ip);
    !limiter.admit(&key, Quota::of(limit)).await
}

/// The key a request is counted under: `h:` and the header's value, or `a:`
/// and the client's address (also when the header is missing).
fn client_key(limit: &RateLimitConfig, headers: &HeaderMap, client_ip: Option<IpAddr>) -> Vec<u8> {
    let value = match &limit.key {
        RateKey::Header(name) => headers.get(name),
        RateKey::ClientIp => None,
    };
    match value {
        Some(value) => [b"h:", value.as_bytes()].concat(),
        None => {
            let ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
            [b"a:", ip.as_bytes()].concat()
        }
    }
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
    evicted: AtomicU64,
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
            evicted: AtomicU64::new(0),
        }
    }

    /// A limiter on `clock` (for the contract cases).
    pub fn with_clock(clock: ManualClock) -> MemoryRateLimiter {
        MemoryRateLimiter {
            clock: Some(clock),
            ..MemoryRateLimiter::new()
        }
    }

    fn now_us(&self) -> u64 {
        match &self.clock {
            Some(clock) => clock.now_us(),
            None => u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// Bytes the clients' windows take (the tables' capacity), all shards.
    pub fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u64, Window)>() + 1;
        self.shards
            .iter()
            .map(|s| s.lock().windows.capacity() * entry)
            .sum()
    }

    /// Clients with a window, all shards (for tests of the sweep).
    pub fn clients(&self) -> usize {
        self.shards.iter().map(|s| s.lock().windows.len()).sum()
    }

    #[cfg(test)]
    fn admit_at(&self, client: &[u8], quota: Quota, now_ms: u64) -> bool {
        self.admit_at_us(client, quota, now_ms * 1000)
    }

    fn admit_at_us(&self, client: &[u8], quota: Quota, now_us: u64) -> bool {
        let hash = self.hasher.hash_one(client);
        let second = now_us / WINDOW_US;
        let mut shard = self.shards[(hash as usize) % SHARDS].lock();
        if shard.swept < second {
            shard.sweep(second);
        }
        let room = (quota.max_clients as usize).div_ceil(SHARDS).max(1);
        if shard.windows.len() >= room && !shard.windows.contains_key(&hash) {
            let evicted = shard.evict(second, room);
            self.evicted.fetch_add(evicted as u64, Ordering::Relaxed);
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
        let admitted = fits(window.previous, window.current, now_us % WINDOW_US, quota);
        if admitted {
            window.current = window.current.saturating_add(1);
        }
        admitted
    }
}

impl Shard {
    /// Forgets windows older than the previous second (they count nothing any
    /// more), and gives memory back once a crowd has left.
    fn sweep(&mut self, second: u64) {
        self.swept = second;
        self.windows.retain(|_, w| w.second + 1 >= second);
        if self.windows.capacity() > 1024 && self.windows.capacity() > 4 * self.windows.len() {
            self.windows.shrink_to(2 * self.windows.len());
        }
    }

    /// Makes space in a full shard: the clients not seen this second first,
    /// else an eighth of the shard (whose counts then start afresh). Returns
    /// how many were forgotten; the work is paid back by the inserts it makes
    /// room for.
    fn evict(&mut self, second: u64, room: usize) -> usize {
        let before = self.windows.len();
        self.windows.retain(|_, w| w.second == second);
        if self.windows.len() >= room {
            let excess = self.windows.len() + 1 - room;
            let drop: Vec<u64> = self
                .windows
                .keys()
                .take(excess.max(room / 8))
                .copied()
                .collect();
            for key in drop {
                self.windows.remove(&key);
            }
        }
        before - self.windows.len()
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        MemoryRateLimiter::new()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn admit(&self, client: &[u8], quota: Quota) -> bool {
        self.admit_at_us(client, quota, self.now_us())
    }

    fn evicted_clients(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// The contract as cases: each runs against a fresh limiter on a fresh clock.
#[doc(hidden)]
pub mod contract {
    use super::{ManualClock, Quota, RateLimiter};
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

    const fn rate(per_second: u32) -> Quota {
        Quota::per_second(per_second)
    }

    const fn with_burst(per_second: u32, burst: u32) -> Quota {
        Quota {
            burst,
            ..Quota::per_second(per_second)
        }
    }

    /// (name, quota, steps).
    const CASES: &[(&str, Quota, &[Step])] = &[
        (
            "a burst gets the limit and no more",
            rate(3),
            &[step(0, b"alice", 5, 3)],
        ),
        (
            "clients never share a count",
            rate(2),
            &[
                step(0, b"alice", 4, 2),
                step(10, b"bob", 2, 2),
                step(20, b"", 3, 2),
            ],
        ),
        (
            "requests over the limit do not count",
            rate(2),
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
            rate(10),
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
            rate(1),
            &[
                step(0, b"alice", 2, 1),
                step(2000, b"alice", 2, 1),
                step(4100, b"alice", 2, 1),
            ],
        ),
        (
            "a long client key is its own client",
            rate(1),
            &[step(0, &[b'k'; 300], 2, 1), step(0, &[b'k'; 299], 2, 1)],
        ),
        (
            "a burst is allowed once, after a window within the rate",
            with_burst(4, 6),
            &[
                step(0, b"alice", 20, 10),
                // The previous window was over the rate: no burst, and its
                // 10 weigh until late in this one (10 × 0.5 = 5 ≥ 4).
                step(1500, b"alice", 20, 0),
                step(1900, b"alice", 20, 3),
                // Second 1 admitted 3 (within the rate): the burst again,
                // 3 + current < 10.
                step(2000, b"alice", 20, 7),
            ],
        ),
    ];

    /// Runs every case; panics naming the case and step that breaks the contract.
    pub async fn run_all(make: impl Fn(ManualClock) -> Arc<dyn RateLimiter>) {
        for (name, quota, steps) in CASES {
            let clock = ManualClock::default();
            let limiter = make(clock.clone());
            for (i, step) in steps.iter().enumerate() {
                clock.set(step.at_ms);
                let mut admitted = 0;
                for _ in 0..step.times {
                    if limiter.admit(step.client, *quota).await {
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
            assert!(
                limiter
                    .admit(&client.to_be_bytes(), Quota::per_second(1))
                    .await
            );
        }
        assert_eq!(limiter.clients(), 1000);
        clock.set(2000);
        // 2 000 newcomers reach every shard (a shard missed by all of them
        // has odds of 32 × (31/32)^2000): each sweeps its idle clients.
        for client in 0..2000u32 {
            limiter
                .admit(&(1_000_000 + client).to_be_bytes(), Quota::per_second(1))
                .await;
        }
        assert_eq!(limiter.clients(), 2000);
    }

    #[test]
    fn thousands_of_clients_at_their_rate_are_never_throttled() {
        let limiter = MemoryRateLimiter::with_clock(ManualClock::default());
        let throttled = (0..10_000u32)
            .filter(|client| !limiter.admit_at(&client.to_be_bytes(), Quota::per_second(1), 500))
            .count();
        assert_eq!(throttled, 0);
    }

    #[test]
    fn past_max_clients_the_least_recently_seen_are_forgotten() {
        let limiter = MemoryRateLimiter::with_clock(ManualClock::default());
        let quota = Quota {
            max_clients: 3200,
            ..Quota::per_second(1)
        };
        for client in 0..3000u32 {
            assert!(limiter.admit_at(&client.to_be_bytes(), quota, 100));
        }
        // A second later, 3 000 others arrive: the shards fill up and forget
        // the clients of the second before first.
        for client in 10_000..13_000u32 {
            assert!(limiter.admit_at(&client.to_be_bytes(), quota, 1100));
        }
        assert!(limiter.clients() <= 3200 + SHARDS, "{}", limiter.clients());
        assert!(limiter.evicted_clients() > 0);
        // The newest clients are still counted: each is at its rate.
        let over = (12_900..13_000u32)
            .filter(|client| !limiter.admit_at(&client.to_be_bytes(), quota, 1200))
            .count();
        // (A shard that filled up within this second forgot a few of them.)
        assert!(over >= 95, "{over} of 100 still counted");
        // In one second, more clients than the bound: none is refused, and
        // memory stays bounded.
        let refused = (20_000..30_000u32)
            .filter(|client| !limiter.admit_at(&client.to_be_bytes(), quota, 1300))
            .count();
        assert_eq!(refused, 0);
        assert!(limiter.clients() <= 3200 + SHARDS, "{}", limiter.clients());
    }

    #[test]
    fn a_client_without_pause_averages_about_rate_plus_half_the_burst() {
        let limiter = MemoryRateLimiter::with_clock(ManualClock::default());
        let quota = Quota {
            burst: 10,
            ..Quota::per_second(10)
        };
        // 100 attempts a second (every 10 ms) for 60 s.
        let admitted = (0..6000u64)
            .filter(|i| limiter.admit_at(b"greedy", quota, i * 10))
            .count();
        let per_second = admitted as f64 / 60.0;
        assert!((10.0..=15.5).contains(&per_second), "{per_second} a second");
    }

    #[tokio::test]
    async fn a_limit_keys_by_header_or_address() {
        let by_user = RateLimitConfig {
            requests_per_second: 1,
            key: RateKey::Header(http::HeaderName::from_static("x-user")),
            burst: 0,
            max_clients: 1000,
        };
        let limiter = MemoryRateLimiter::new();
        let mut alice = HeaderMap::new();
        alice.insert("x-user", http::HeaderValue::from_static("alice"));
        assert!(!is_over(&limiter, &by_user, &alice, None).await);
        assert!(is_over(&limiter, &by_user, &alice, None).await);
        // Without the header: counted by address, apart from header values.
        let none = HeaderMap::new();
        let (a, b) = (IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2]));
        assert!(!is_over(&limiter, &by_user, &none, Some(a)).await);
        assert!(is_over(&limiter, &by_user, &none, Some(a)).await);
        assert!(!is_over(&limiter, &by_user, &none, Some(b)).await);
        let mut spoof = HeaderMap::new();
        spoof.insert("x-user", http::HeaderValue::from_static("a:192.0.2.2"));
        assert!(
            !is_over(&limiter, &by_user, &spoof, Some(a)).await,
            "a header value is not an address"
        );
        let by_ip = RateLimitConfig {
            key: RateKey::ClientIp,
            ..by_user.clone()
        };
        let limiter = MemoryRateLimiter::new();
        let ip = Some(IpAddr::from([192, 0, 2, 1]));
        assert!(!is_over(&limiter, &by_ip, &alice, ip).await);
        assert!(is_over(&limiter, &by_ip, &alice, ip).await);
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        assert!(!is_over(&limiter, &by_ip, &alice, other).await);
    }
}
