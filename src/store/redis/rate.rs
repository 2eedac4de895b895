//! Shared rate limits: the contract of [`crate::ratelimit`] counted in Redis by
//! one script, so N instances together allow the configured rate.
//!
//! The window is the current second's count plus the previous second's,
//! weighted by how much of it still overlaps the last second (the estimate
//! Cloudflare describes for its limiter); only admitted requests count. Time
//! is Redis's own clock, so instances whose clocks differ agree (the contract
//! cases pass their own clock instead).

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Script;

use super::Redis;
use crate::ratelimit::{ManualClock, MemoryRateLimiter, Quota, RateLimiter};
use crate::telemetry::StoreFeature;

/// KEYS[1] the client's key; ARGV[1] requests per second; ARGV[3] the burst;
/// ARGV[2], when not empty, the time in microseconds (else Redis's clock).
/// 1: admitted, 0: over.
static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        super::lua_now_us("ARGV[2]"),
        r"
local second = math.floor(now / 1000000)
local overlap = 1 - (now % 1000000) / 1000000
local current = KEYS[1] .. ':' .. second
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (second - 1)) or '0')
local count = tonumber(redis.call('GET', current) or '0')
local limit = tonumber(ARGV[1])
if previous <= limit then limit = limit + tonumber(ARGV[3]) end
if previous * overlap + count >= limit then return 0 end
redis.call('INCR', current)
redis.call('PEXPIRE', current, 2500)
return 1
",
    ))
});

/// Client keys longer than this are hashed (a header value is the client's).
const RAW_KEY_MAX: usize = 64;

/// A route's rate limit counted in Redis; when Redis does not answer within
/// the store's timeout, counted in this instance's memory (`local`).
#[derive(Debug)]
pub struct RedisRateLimiter {
    redis: Arc<Redis>,
    route: String,
    local: Arc<MemoryRateLimiter>,
    clock: Option<ManualClock>,
}

impl RedisRateLimiter {
    /// `route`'s limiter in `redis`, falling back to `local`.
    pub fn new(redis: Arc<Redis>, route: &str, local: Arc<MemoryRateLimiter>) -> RedisRateLimiter {
        RedisRateLimiter {
            redis,
            route: route.to_owned(),
            local,
            clock: None,
        }
    }

    /// The same limiter on the caller's clock instead of Redis's (the contract
    /// cases drive time).
    pub fn on_clock(self, clock: ManualClock) -> RedisRateLimiter {
        RedisRateLimiter {
            clock: Some(clock),
            ..self
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn admit(&self, client: &[u8], quota: Quota) -> bool {
        let hashed;
        let client = if client.len() <= RAW_KEY_MAX {
            client
        } else {
            hashed = hex(ring::digest::digest(&ring::digest::SHA256, client).as_ref());
            hashed.as_bytes()
        };
        let key = self.redis.key(&[b"rate", self.route.as_bytes(), client]);
        let limit = quota.per_second.to_string();
        let burst = quota.burst.to_string();
        let now = self
            .clock
            .as_ref()
            .map(|clock| clock.now_us().to_string())
            .unwrap_or_default();
        let args = [limit.as_bytes(), now.as_bytes(), burst.as_bytes()];
        let admitted: Option<i64> = self
            .redis
            .invoke(
                Some(StoreFeature::RateLimit),
                &SLIDING_WINDOW,
                &[&key],
                &args,
            )
            .await;
        match admitted {
            Some(admitted) => admitted == 1,
            None => self.local.admit(client, quota).await,
        }
    }

    fn evicted_clients(&self) -> u64 {
        self.local.evicted_clients()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
