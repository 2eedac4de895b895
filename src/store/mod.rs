//! Records that outlive a request and that several ordergate instances may
//! share: one small trait per kind of record, kept in memory ([`memory`]) or in
//! Redis ([`redis`]). The request path only knows the traits; `live` hands
//! each route its store.
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

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

pub use crate::config::{RedisConfig, StoreConfig};
use crate::kept::StoredAnswer;

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
