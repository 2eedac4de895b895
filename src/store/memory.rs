//! The in-memory store: records of one process, in a bounded concurrent cache
//! (moka) weighed by what they hold, least recently used evicted first, each
//! record living for the TTL it was created with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::{Begin, Fingerprint, IdempotencyStore, RecordKey, Waiter};
use crate::kept::StoredAnswer;

/// Where a record stands.
#[derive(Debug, Clone)]
enum State {
    InFlight,
    Done(Arc<StoredAnswer>),
    DoneNotStored,
    Unknown,
}

#[derive(Debug)]
struct Record {
    fingerprint: Fingerprint,
    ttl: Duration,
    state: Mutex<State>,
    /// Turns true when the record leaves "in flight".
    settled: watch::Sender<bool>,
}

impl Record {
    fn state(&self) -> State {
        self.state.lock().clone()
    }

    fn settle(&self, state: State) {
        *self.state.lock() = state;
        self.settled.send_replace(true);
    }

    fn weight(&self, key: &RecordKey) -> u32 {
        let answer = match self.state() {
            State::Done(answer) => answer.weight(),
            _ => 0,
        };
        u32::try_from(key.weight() + answer + 160).unwrap_or(u32::MAX)
    }
}

/// Each record lives for the TTL it was created with; completing it does not
/// extend it.
struct RecordTtl;

impl Expiry<RecordKey, Arc<Record>> for RecordTtl {
    fn expire_after_create(
        &self,
        _key: &RecordKey,
        record: &Arc<Record>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(record.ttl)
    }
}

/// Idempotency records of one route, in this process's memory.
pub struct MemoryIdempotency {
    records: Cache<RecordKey, Arc<Record>>,
    max_bytes: u64,
    evictions: Arc<AtomicU64>,
}

impl std::fmt::Debug for MemoryIdempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryIdempotency")
            .field("records", &self.records.entry_count())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl MemoryIdempotency {
    /// A store holding at most `max_bytes` of records.
    pub fn new(max_bytes: u64) -> MemoryIdempotency {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&evictions);
        let records = Cache::builder()
            .max_capacity(max_bytes)
            // Least recently used first, as `max_bytes` promises. moka's
            // default (TinyLFU) turns away a new record that is not yet used
            // more often than the one it would evict: at the budget, the
            // record of a request in flight would vanish, and a repeat of it
            // be forwarded again.
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|key: &RecordKey, record: &Arc<Record>| record.weight(key))
            .expire_after(RecordTtl)
            .eviction_listener(move |_key, _record, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        MemoryIdempotency {
            records,
            max_bytes,
            evictions,
        }
    }

    /// The budget this store was built with.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// A store with a new budget holding this one's records (a reload changed
    /// `max_bytes`; records are live state and survive it).
    pub fn resized(&self, max_bytes: u64) -> MemoryIdempotency {
        let store = MemoryIdempotency::new(max_bytes);
        for (key, record) in self.records.iter() {
            store.records.insert(RecordKey::clone(&key), record);
        }
        store
            .evictions
            .store(self.evictions.load(Ordering::Relaxed), Ordering::Relaxed);
        store
    }

    /// What a request with `key` would find, without creating a record:
    /// `None` when there is none.
    pub fn peek(&self, key: &RecordKey, fingerprint: &Fingerprint) -> Option<Begin> {
        let record = self.records.get(key)?;
        if record.fingerprint != *fingerprint {
            return Some(Begin::Mismatch);
        }
        Some(match record.state() {
            State::InFlight => Begin::InFlight(Waiter::new(record.settled.subscribe())),
            State::Done(answer) => Begin::Done(answer),
            State::DoneNotStored => Begin::DoneNotStored,
            State::Unknown => Begin::Unknown,
        })
    }

    fn settle(&self, key: &RecordKey, state: State) {
        if let Some(record) = self.records.get(key) {
            record.settle(state);
            // Insert again so the cache weighs what the record holds now.
            self.records.insert(key.clone(), record);
        }
    }
}

#[async_trait]
impl IdempotencyStore for MemoryIdempotency {
    async fn get_or_begin(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        ttl: Duration,
    ) -> Begin {
        let entry = self.records.entry_by_ref(key).or_insert_with(|| {
            Arc::new(Record {
                fingerprint: *fingerprint,
                ttl,
                state: Mutex::new(State::InFlight),
                settled: watch::channel(false).0,
            })
        });
        if entry.is_fresh() {
            return Begin::First;
        }
        let record = entry.into_value();
        if record.fingerprint != *fingerprint {
            return Begin::Mismatch;
        }
        match record.state() {
            State::InFlight => Begin::InFlight(Waiter::new(record.settled.subscribe())),
            State::Done(answer) => Begin::Done(answer),
            State::DoneNotStored => Begin::DoneNotStored,
            State::Unknown => Begin::Unknown,
        }
    }

    async fn complete(&self, key: &RecordKey, answer: Option<StoredAnswer>) {
        let state = match answer {
            Some(answer) => State::Done(Arc::new(answer)),
            None => State::DoneNotStored,
        };
        self.settle(key, state);
    }

    async fn release(&self, key: &RecordKey) {
        if let Some(record) = self.records.remove(key) {
            // Waiters look again and find no record: one of them goes first.
            record.settled.send_replace(true);
        }
    }

    async fn mark_unknown(&self, key: &RecordKey) {
        self.settle(key, State::Unknown);
    }

    fn size_bytes(&self) -> u64 {
        self.records.run_pending_tasks();
        self.records.weighted_size()
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(k: &str) -> RecordKey {
        RecordKey {
            route: "checkout".into(),
            scope: String::new(),
            key: k.into(),
        }
    }

    fn answer(body: &str) -> StoredAnswer {
        StoredAnswer {
            status: 201,
            headers: vec![(
                "content-type".into(),
                Bytes::from_static(b"application/json"),
            )],
            body: Bytes::from(body.to_string()),
            request_id: "r1".into(),
        }
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn the_first_begins_a_repeat_waits_then_replays() {
        let store = MemoryIdempotency::new(1 << 20);
        let fp = [1; 32];
        assert!(matches!(
            store.get_or_begin(&key("a"), &fp, TTL).await,
            Begin::First
        ));
        let Begin::InFlight(waiter) = store.get_or_begin(&key("a"), &fp, TTL).await else {
            panic!("a repeat finds the first in flight");
        };
        store
            .complete(&key("a"), Some(answer("{\"order\":1}")))
            .await;
        assert!(waiter.settled_within(Duration::from_secs(1)).await);
        match store.get_or_begin(&key("a"), &fp, TTL).await {
            Begin::Done(stored) => assert_eq!(stored.body, Bytes::from("{\"order\":1}")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.get_or_begin(&key("a"), &[2; 32], TTL).await,
            Begin::Mismatch
        ));
    }

    #[tokio::test]
    async fn release_forgets_and_unknown_and_too_large_are_kept() {
        let store = MemoryIdempotency::new(1 << 20);
        let fp = [1; 32];
        for k in ["released", "unknown", "large"] {
            assert!(matches!(
                store.get_or_begin(&key(k), &fp, TTL).await,
                Begin::First
            ));
        }
        store.release(&key("released")).await;
        store.mark_unknown(&key("unknown")).await;
        store.complete(&key("large"), None).await;
        assert!(matches!(
            store.get_or_begin(&key("released"), &fp, TTL).await,
            Begin::First
        ));
        assert!(matches!(
            store.get_or_begin(&key("unknown"), &fp, TTL).await,
            Begin::Unknown
        ));
        assert!(matches!(
            store.get_or_begin(&key("large"), &fp, TTL).await,
            Begin::DoneNotStored
        ));
    }

    #[tokio::test]
    async fn a_waiter_is_freed_when_the_first_is_released() {
        let store = MemoryIdempotency::new(1 << 20);
        let fp = [1; 32];
        assert!(matches!(
            store.get_or_begin(&key("a"), &fp, TTL).await,
            Begin::First
        ));
        let Begin::InFlight(waiter) = store.get_or_begin(&key("a"), &fp, TTL).await else {
            panic!("in flight");
        };
        store.release(&key("a")).await;
        assert!(waiter.settled_within(Duration::from_millis(100)).await);
    }

    #[tokio::test]
    async fn records_expire_after_their_ttl() {
        let store = MemoryIdempotency::new(1 << 20);
        let fp = [1; 32];
        let short = Duration::from_millis(50);
        assert!(matches!(
            store.get_or_begin(&key("a"), &fp, short).await,
            Begin::First
        ));
        store.complete(&key("a"), Some(answer("x"))).await;
        std::thread::sleep(Duration::from_millis(120));
        assert!(matches!(
            store.get_or_begin(&key("a"), &fp, short).await,
            Begin::First
        ));
    }

    #[tokio::test]
    async fn the_memory_budget_evicts_and_counts() {
        let store = MemoryIdempotency::new(64 * 1024);
        let fp = [1; 32];
        let body = "x".repeat(4096);
        for i in 0..100 {
            let k = key(&format!("k{i}"));
            assert!(matches!(
                store.get_or_begin(&k, &fp, TTL).await,
                Begin::First
            ));
            store.complete(&k, Some(answer(&body))).await;
        }
        assert!(store.size_bytes() <= 64 * 1024, "{}", store.size_bytes());
        assert!(store.evictions() > 0);
        let resized = store.resized(1 << 20);
        assert!(resized.size_bytes() > 0, "records survive a resize");
    }

    #[tokio::test]
    async fn a_full_store_evicts_the_least_recently_used_never_the_newest() {
        // About 50 records of 1 KiB fit; 200 go through it.
        let store = MemoryIdempotency::new(64 * 1024);
        let fp = [1; 32];
        let body = "x".repeat(1024);
        for i in 0..200 {
            let k = key(&format!("k{i}"));
            assert!(matches!(
                store.get_or_begin(&k, &fp, TTL).await,
                Begin::First
            ));
            // The budget is enforced in between: the record in flight must
            // stay, or a repeat of its request would be forwarded again.
            store.size_bytes();
            store.complete(&k, Some(answer(&body))).await;
            store.size_bytes();
            assert!(
                matches!(store.peek(&k, &fp), Some(Begin::Done(_))),
                "record k{i} was dropped as it was stored"
            );
        }
        assert!(store.peek(&key("k0"), &fp).is_none(), "the oldest went");
        assert!(store.evictions() >= 150, "{}", store.evictions());
    }
}
