//! Shared rate limits: a sliding window of one second per client key, counted
//! in Redis by one script, so N instances together allow the configured rate.
//!
//! The window is the current second's count plus the previous second's,
//! weighted by how much of it still overlaps the last second (the estimate
//! Cloudflare describes for its limiter); only admitted requests count, so a
//! client hammering at ten times its rate still gets its rate. Time is Redis's
//! own clock, so instances whose clocks differ agree.

use std::sync::{Arc, LazyLock};

use redis::Script;

use super::Redis;
use crate::telemetry::StoreFeature;

/// KEYS[1] the client's key; ARGV requests per second. 1: admitted, 0: over.
static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local second = math.floor(now / 1000)
local overlap = 1 - (now % 1000) / 1000
local current = KEYS[1] .. ':' .. second
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (second - 1)) or '0')
local count = tonumber(redis.call('GET', current) or '0')
if previous * overlap + count >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', current)
redis.call('PEXPIRE', current, 2500)
return 1
",
    )
});

/// Client keys longer than this are hashed (a header value is the client's).
const RAW_KEY_MAX: usize = 64;

impl Redis {
    /// Counts a request of `client` against `route`'s limit of `per_second`;
    /// `Some(true)` when it is over, `None` when Redis did not answer (the
    /// caller counts it locally).
    pub async fn over_rate_limit(
        self: &Arc<Self>,
        route: &str,
        client: &[u8],
        per_second: u32,
    ) -> Option<bool> {
        let hashed;
        let client = if client.len() <= RAW_KEY_MAX {
            client
        } else {
            hashed = hex(ring::digest::digest(&ring::digest::SHA256, client).as_ref());
            hashed.as_bytes()
        };
        let key = self.key(&[b"rate", route.as_bytes(), client]);
        let limit = per_second.to_string();
        let admitted: i64 = self
            .invoke(
                Some(StoreFeature::RateLimit),
                &SLIDING_WINDOW,
                &[&key],
                &[limit.as_bytes()],
            )
            .await?;
        Some(admitted == 0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
