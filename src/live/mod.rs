//! Per-route live state, in one registry: what outlives config snapshots, so
//! a reload keeps every count and record. Each kind is a [`WeakMap`] by route
//! (or room) name, with the one get-or-create; an entry lives while some
//! snapshot holds it.
//!
//! | kind | kept across a reload while | else |
//! |---|---|---|
//! | rate limit counts | always | - |
//! | idempotency records | always (a changed `max_bytes` resizes) | - |
//! | stale copies | `max_bytes` and `max_age` stay | an empty cache |
//! | waiting-room lines | always; the Redis line while the Redis does | a line of the new kind |
//!
//! With `[store] kind = "redis"`, records, counts and lines go to the Redis of
//! [`LiveState::configure`], each with this process's memory entry beside it
//! for when Redis does not answer. Backends and pools keep their live state in
//! `upstream::Registry`, with the same [`WeakMap`].

pub mod weak_map;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use weak_map::WeakMap;

use crate::config::{StaleConfig, StoreConfig};
use crate::ratelimit::{MemoryRateLimiter, RateLimiter};
use crate::stale::StaleCache;
use crate::store::memory::MemoryIdempotency;
use crate::store::redis::{self, RedisIdempotency, RedisLine, RedisRateLimiter};
use crate::store::room::{MemoryLine, RoomLine};
use crate::store::IdempotencyStore;
use crate::telemetry::Metrics;

/// The live state of every route and room.
#[derive(Debug, Default)]
pub struct LiveState {
    rate_limits: WeakMap<String, MemoryRateLimiter>,
    idempotency: WeakMap<String, MemoryIdempotency>,
    stale: WeakMap<String, StaleCache>,
    room_lines: WeakMap<String, MemoryLine>,
    shared_room_lines: WeakMap<String, RedisLine>,
    /// The Redis of `[store]`, when configured; kept across reloads while its
    /// settings stay the same.
    shared: Mutex<Option<Arc<redis::Redis>>>,
}

impl LiveState {
    /// Applies `[store]` (at start and on every reload, before the routes are
    /// built): the same Redis settings keep their connections; other settings
    /// or `memory` make new records go to the new store.
    pub fn configure(&self, config: &StoreConfig, metrics: &Metrics) {
        let mut shared = self.shared.lock();
        *shared = match config {
            StoreConfig::Memory => {
                metrics.store.up.set(1);
                None
            }
            StoreConfig::Redis(settings) => match shared.take() {
                Some(redis) if redis.settings() == settings => Some(redis),
                _ => redis::Redis::new(settings.clone(), metrics.store.clone()).map(Arc::new),
            },
        };
    }

    /// The Redis of `[store]`, when configured.
    pub fn shared(&self) -> Option<Arc<redis::Redis>> {
        self.shared.lock().clone()
    }

    /// What `/status` says of the store.
    pub fn status(&self) -> redis::StoreStatus {
        match self.shared() {
            Some(redis) => redis.status(),
            None => redis::StoreStatus::memory(),
        }
    }

    /// The rate limiter of a route: counted in Redis when configured (for
    /// every instance), else (and while Redis does not answer) in memory.
    pub fn rate_limiter(&self, route: &str) -> Arc<dyn RateLimiter> {
        let local = self
            .rate_limits
            .get_or_create(route.to_owned(), |live| live.unwrap_or_default());
        match self.shared() {
            Some(redis) => Arc::new(RedisRateLimiter::new(redis, route, local)),
            None => local,
        }
    }

    /// The stale copies of a route; a changed budget or `max_age` starts an
    /// empty cache (copies are only a fallback).
    pub fn stale(&self, route: &str, config: &StaleConfig) -> Arc<StaleCache> {
        self.stale
            .get_or_create(route.to_owned(), |live| match live {
                Some(cache)
                    if cache.max_bytes() == config.max_bytes
                        && cache.max_age() == config.max_age =>
                {
                    cache
                }
                _ => Arc::new(StaleCache::new(config.max_bytes, config.max_age)),
            })
    }

    /// The idempotency store of a route; a changed `max_bytes` gives a store
    /// of the new size holding the same records. With Redis configured,
    /// records go there (the memory store beside it takes them while Redis
    /// does not answer); `lease` is how long a record may stay in flight
    /// before it counts as "outcome unknown" (an instance died holding it).
    pub fn idempotency(
        &self,
        route: &str,
        max_bytes: u64,
        lease: Duration,
    ) -> Arc<dyn IdempotencyStore> {
        let local = self
            .idempotency
            .get_or_create(route.to_owned(), |live| match live {
                Some(store) if store.max_bytes() == max_bytes => store,
                Some(store) => Arc::new(store.resized(max_bytes)),
                None => Arc::new(MemoryIdempotency::new(max_bytes)),
            });
        match self.shared() {
            Some(redis) => Arc::new(RedisIdempotency::new(redis, route, local, lease)),
            None => local,
        }
    }

    /// The line of a waiting room: a reload keeps every place, call and pass
    /// (and the operator's open/close/pause). With Redis configured, the line
    /// is shared there (kept while the Redis stays the same), with the room's
    /// memory line beside it for when Redis does not answer; a reload
    /// switching stores gives the room a line of the new kind.
    pub fn room_line(&self, room: &str) -> Arc<dyn RoomLine> {
        let local = self
            .room_lines
            .get_or_create(room.to_owned(), |live| live.unwrap_or_default());
        let Some(redis) = self.shared() else {
            return local;
        };
        self.shared_room_lines
            .get_or_create(room.to_owned(), |live| match live {
                Some(line) if Arc::ptr_eq(line.redis(), &redis) => line,
                _ => Arc::new(RedisLine::new(redis, room, local)),
            })
    }
}
