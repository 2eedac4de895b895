//! Records that outlive a request and that several ordergate instances may one
//! day share: one small trait per kind of record, an in-memory implementation
//! now ([`memory`]), Redis later. The request path only knows the traits.
//!
//! Idempotency records: the first request with a key creates a record "in
//! flight" atomically; it ends as a stored answer, "done, not stored" (the
//! answer was too large), "outcome unknown" (the answer was lost after the
//! request reached a backend), or is released (the key behaves as new).
//!
//! Waiting-room lines ([`room`]): tickets in arrival order, calls, passes.
//!
//! `[store] kind = "redis"` ([`redis`]) shares idempotency records, rate
//! limits and waiting-room lines with every instance pointing at one Redis, each operation falling
//! back to this process's memory when Redis does not answer within `timeout`.

pub mod memory;
pub mod redis;
pub mod room;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use crate::config::{RedisConfig, StoreConfig};
use crate::kept::StoredAnswer;

/// The live stores, by route name: they outlive config snapshots, so a reload
/// keeps every record (an entry lives while a snapshot holds it).
#[derive(Debug, Default)]
pub struct Stores {
    idempotency: Mutex<HashMap<String, Weak<memory::MemoryIdempotency>>>,
    stale: Mutex<HashMap<String, Weak<crate::stale::StaleCache>>>,
    rooms: Mutex<HashMap<String, RoomLines>>,
    /// The Redis of `[store]`, when configured; kept across reloads while its
    /// settings stay the same.
    shared: Mutex<Option<Arc<redis::Redis>>>,
}

impl Stores {
    /// The stale copies of a route, created if new; a changed budget or
    /// `max_age` starts an empty cache (copies are only a fallback).
    pub fn stale(
        &self,
        route: &str,
        config: &crate::config::StaleConfig,
    ) -> Arc<crate::stale::StaleCache> {
        let mut caches = self
            .stale
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        caches.retain(|_, weak| weak.strong_count() > 0);
        let cache = match caches.get(route).and_then(Weak::upgrade) {
            Some(cache)
                if cache.max_bytes() == config.max_bytes && cache.max_age() == config.max_age =>
            {
                cache
            }
            _ => Arc::new(crate::stale::StaleCache::new(
                config.max_bytes,
                config.max_age,
            )),
        };
        caches.insert(route.to_owned(), Arc::downgrade(&cache));
        cache
    }

    /// Applies `[store]` (at start and on every reload, before the routes are
    /// built): the same Redis settings keep their connections; other settings
    /// or `memory` make new records go to the new store.
    pub fn configure(&self, config: &StoreConfig, metrics: &crate::telemetry::Metrics) {
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// What `/status` says of the store.
    pub fn status(&self) -> redis::StoreStatus {
        match self.shared() {
            Some(redis) => redis.status(),
            None => redis::StoreStatus::memory(),
        }
    }

    /// The idempotency store of a route, created if new; a changed
    /// `max_bytes` gives a store of the new size holding the same records.
    /// With Redis configured, records go there (the memory store beside it
    /// takes them while Redis does not answer); `lease` is how long a record
    /// may stay in flight before it counts as "outcome unknown" (an instance
    /// died holding it).
    pub fn idempotency(
        &self,
        route: &str,
        max_bytes: u64,
        lease: Duration,
    ) -> Arc<dyn IdempotencyStore> {
        let local = self.memory_idempotency(route, max_bytes);
        match self.shared() {
            Some(redis) => Arc::new(redis::RedisIdempotency::new(redis, route, local, lease)),
            None => local,
        }
    }

    fn memory_idempotency(&self, route: &str, max_bytes: u64) -> Arc<memory::MemoryIdempotency> {
        let mut stores = self
            .idempotency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stores.retain(|_, weak| weak.strong_count() > 0);
        let store = match stores.get(route).and_then(Weak::upgrade) {
            Some(store) if store.max_bytes() == max_bytes => store,
            Some(store) => Arc::new(store.resized(max_bytes)),
            None => Arc::new(memory::MemoryIdempotency::new(max_bytes)),
        };
        stores.insert(route.to_owned(), Arc::downgrade(&store));
        store
    }
}

impl Stores {
    /// The line of a waiting room, created if new: a reload keeps every place,
    /// call and pass (and the operator's open/close/pause). With Redis
    /// configured, the line is shared there ([`redis::RedisLine`], kept while
    /// the Redis settings stay the same), with the room's memory line beside
    /// it for when Redis does not answer; a reload switching stores gives the
    /// room a line of the new kind.
    pub fn room_line(&self, room: &str) -> Arc<dyn room::RoomLine> {
        let shared = self.shared();
        let mut lines = self
            .rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lines.retain(|_, entry| entry.local.strong_count() > 0);
        let entry = lines.entry(room.to_owned()).or_default();
        let local = match entry.local.upgrade() {
            Some(line) => line,
            None => Arc::new(room::MemoryLine::new()),
        };
        entry.local = Arc::downgrade(&local);
        let Some(redis) = shared else {
            entry.shared = Weak::new();
            return local;
        };
        let line = match entry.shared.upgrade() {
            Some(line) if Arc::ptr_eq(line.redis(), &redis) => line,
            _ => Arc::new(redis::RedisLine::new(redis, room, local)),
        };
        entry.shared = Arc::downgrade(&line);
        line
    }
}

/// A room's live lines: its memory line (the line itself, or the fallback
/// of the Redis one) and, with Redis, the shared line.
#[derive(Debug, Default)]
struct RoomLines {
    local: Weak<room::MemoryLine>,
    shared: Weak<redis::RedisLine>,
}

/// Identifies a record: the route, the scope value (e.g. the shopper's session
/// cookie) and the key the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    /// The route's name.
    pub route: String,
    /// What makes two shoppers' keys distinct (empty for scope `none`).
    pub scope: String,
    /// The idempotency key as sent.
    pub key: String,
}

impl RecordKey {
    /// Bytes the key takes in memory, for weighing records.
    pub fn weight(&self) -> usize {
        self.route.len() + self.scope.len() + self.key.len() + 72
    }
}

/// A digest of what makes two requests with one key the same request:
/// method, path, query and body (SHA-256).
pub type Fingerprint = [u8; 32];

/// What a request with a key finds.
#[derive(Debug)]
pub enum Begin {
    /// Nothing: this request is the first with its key. The record now says
    /// "in flight"; the caller must end it with `complete`, `release` or
    /// `mark_unknown`.
    First,
    /// The first request with this key is still in flight.
    InFlight(Waiter),
    /// The first request's answer, to replay.
    Done(std::sync::Arc<StoredAnswer>),
    /// The first request completed, but its answer was too large to keep.
    DoneNotStored,
    /// The first request's answer was lost after it reached a backend: an
    /// order may exist.
    Unknown,
    /// The key was used before for a different request.
    Mismatch,
}

/// Resolves when an in-flight record settles (or disappears).
#[derive(Debug)]
pub struct Waiter(watch::Receiver<bool>);

impl Waiter {
    /// A waiter on `receiver`, which turns true when the record settles.
    pub fn new(receiver: watch::Receiver<bool>) -> Waiter {
        Waiter(receiver)
    }

    /// Waits up to `timeout`; true when the record settled in time (the caller
    /// then looks it up again).
    pub async fn settled_within(mut self, timeout: Duration) -> bool {
        // A dropped sender (the record was evicted) also ends the wait.
        tokio::time::timeout(timeout, self.0.wait_for(|settled| *settled))
            .await
            .is_ok()
    }
}

/// Store of idempotency records, one per route.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + Debug {
    /// Looks the key up; when there is no record, creates one "in flight" in
    /// the same atomic step and answers [`Begin::First`].
    async fn get_or_begin(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        ttl: Duration,
    ) -> Begin;

    /// The first request ended with a backend's answer: keep it for replays
    /// (`None`: too large to keep; repeats are told it was processed).
    async fn complete(&self, key: &RecordKey, answer: Option<StoredAnswer>);

    /// The first request did not reach a backend, or its answer says nothing
    /// happened (5xx): forget the key, so a repeat is forwarded.
    async fn release(&self, key: &RecordKey);

    /// The first request's answer was lost after it reached a backend.
    async fn mark_unknown(&self, key: &RecordKey);

    /// Bytes the records take now (approximate).
    fn size_bytes(&self) -> u64;

    /// Records evicted to stay within the memory budget, since start.
    fn evictions(&self) -> u64;
}
