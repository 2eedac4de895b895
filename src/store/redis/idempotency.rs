//! Idempotency records in Redis: one hash per key (fingerprint, state, lease,
//! owner, answer) living for the route's TTL. The instance that begins a
//! record keeps a copy in its memory store too: its own repeats are answered
//! from memory (no round trip, no polling), and they stay deduplicated while
//! Redis is down or after it restarted empty. Other instances wait for an
//! in-flight record by polling it every [`POLL_EVERY`].
//!
//! A record in flight carries a lease (the route's timeout plus a margin):
//! when the instance holding it dies, the lease runs out and the record turns
//! into "outcome unknown", never into "new".

use parking_lot::Mutex;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;
use tokio::sync::watch;

use super::{Redis, INSTANCE};
use crate::kept::StoredAnswer;
use crate::store::memory::MemoryIdempotency;
use crate::store::{Begin, Fingerprint, IdempotencyStore, RecordKey, Waiter};
use crate::telemetry::StoreFeature;

/// How often another instance's in-flight record is looked at.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// KEYS[1] record; ARGV fingerprint, ttl (ms), lease (ms), owner.
/// Returns {"first"}, {"mismatch"}, {"f"}, {"u"}, {"n"} or {"d", answer}.
static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'fp', 'st', 'lease')
if not r[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'st', 'f', 'lease', now + tonumber(ARGV[3]), 'own', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'first'}
end
if r[1] ~= ARGV[1] then return {'mismatch'} end
if r[2] == 'f' and tonumber(r[3]) <= now then
  redis.call('HSET', KEYS[1], 'st', 'u')
  return {'u'}
end
if r[2] == 'd' then return {'d', redis.call('HGET', KEYS[1], 'ans')} end
return {r[2]}
",
    )
});

/// KEYS[1] record. Returns the state ("f", "d", "n", "u") or "gone".
static PEEK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'st', 'lease')
if not r[1] then return 'gone' end
if r[1] == 'f' and tonumber(r[2]) <= now then
  redis.call('HSET', KEYS[1], 'st', 'u')
  return 'u'
end
return r[1]
",
    )
});

/// KEYS[1] record; ARGV what ("d", "n", "u", "release"), owner, answer.
/// Only the owner's record, only from "in flight" (or "unknown" after its
/// lease ran out: the real answer is better than "unknown").
static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('HMGET', KEYS[1], 'st', 'own')
if r[2] ~= ARGV[2] or (r[1] ~= 'f' and r[1] ~= 'u') then return 0 end
if ARGV[1] == 'release' then
  redis.call('DEL', KEYS[1])
elseif ARGV[1] == 'u' then
  redis.call('HSET', KEYS[1], 'st', 'u')
else
  redis.call('HSET', KEYS[1], 'st', ARGV[1], 'ans', ARGV[3])
end
return 1
",
    )
});

/// Idempotency records of one route in Redis, with this instance's memory
/// store beside them.
#[derive(Debug)]
pub struct RedisIdempotency {
    redis: Arc<Redis>,
    route: String,
    local: Arc<MemoryIdempotency>,
    lease: Duration,
    /// Settles Redis did not take (it was down): sent once it answers again,
    /// so other instances see the answer instead of waiting out the lease.
    pending: Arc<Mutex<Vec<Settle>>>,
}

/// A settle to send: the record, what (`d`, `n`, `u`, `release`), the answer.
type Settle = (Vec<u8>, &'static [u8], Vec<u8>);

/// Most settles kept while Redis is down (about 1 KB each with a typical
/// answer); past it, those records wait out their lease on other instances.
const MAX_PENDING: usize = 10_000;

impl RedisIdempotency {
    /// Records of `route`; `local` is the route's memory store, `lease` how
    /// long a record may stay in flight.
    pub fn new(
        redis: Arc<Redis>,
        route: &str,
        local: Arc<MemoryIdempotency>,
        lease: Duration,
    ) -> RedisIdempotency {
        RedisIdempotency {
            redis,
            route: route.to_owned(),
            local,
            lease,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// `{prefix}idem:{route}:{scope length}:{scope}:{key}`: the length keeps
    /// a scope holding ':' from running into the key.
    fn redis_key(&self, key: &RecordKey) -> Vec<u8> {
        let scope_len = key.scope.len().to_string();
        self.redis.key(&[
            b"idem",
            self.route.as_bytes(),
            scope_len.as_bytes(),
            key.scope.as_bytes(),
            key.key.as_bytes(),
        ])
    }

    async fn settle(&self, key: &RecordKey, what: &'static [u8], answer: Vec<u8>) {
        let record = self.redis_key(key);
        if send_settle(&self.redis, &record, what, &answer)
            .await
            .is_none()
        {
            let mut pending = self.pending.lock();
            if pending.len() < MAX_PENDING {
                pending.push((record, what, answer));
            }
        }
    }

    /// Sends the settles Redis missed, in the background, once it answers.
    fn flush_pending(&self) {
        if !self.redis.is_up() {
            return;
        }
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return;
        }
        let redis = Arc::clone(&self.redis);
        let pending = Arc::clone(&self.pending);
        tokio::spawn(async move {
            let mut batch = batch.into_iter();
            while let Some((record, what, answer)) = batch.next() {
                if send_settle(&redis, &record, what, &answer).await.is_none() {
                    let mut pending = pending.lock();
                    pending.push((record, what, answer));
                    pending.extend(batch);
                    pending.truncate(MAX_PENDING);
                    return;
                }
            }
        });
    }

    /// Resolves when another instance's record leaves "in flight" (or is
    /// gone); while Redis does not answer it keeps waiting (the caller's
    /// `wait_for_first` ends it), so a repeat is never forwarded on a guess.
    fn waiter(&self, record: Vec<u8>) -> Waiter {
        let (settled, receiver) = watch::channel(false);
        let redis = Arc::clone(&self.redis);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = settled.closed() => return,
                    () = tokio::time::sleep(POLL_EVERY) => {}
                }
                let state: Option<Vec<u8>> = redis.invoke(None, &PEEK, &[&record], &[]).await;
                if state.is_some_and(|state| state != b"f") {
                    settled.send_replace(true);
                    return;
                }
            }
        });
        Waiter::new(receiver)
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn get_or_begin(
        &self,
        key: &RecordKey,
        fingerprint: &Fingerprint,
        ttl: Duration,
    ) -> Begin {
        // This instance's own records (and those of a Redis outage) first.
        if let Some(found) = self.local.peek(key, fingerprint) {
            return found;
        }
        self.flush_pending();
        let record = self.redis_key(key);
        let ttl_ms = ttl.as_millis().max(1).to_string();
        let lease_ms = self.lease.as_millis().max(1).to_string();
        let reply: Option<Vec<Vec<u8>>> = self
            .redis
            .invoke(
                Some(StoreFeature::Idempotency),
                &BEGIN,
                &[&record],
                &[
                    fingerprint,
                    ttl_ms.as_bytes(),
                    lease_ms.as_bytes(),
                    INSTANCE.as_bytes(),
                ],
            )
            .await;
        let Some(reply) = reply else {
            return self.local.get_or_begin(key, fingerprint, ttl).await;
        };
        match reply.first().map(Vec::as_slice) {
            Some(b"first") => {
                // The copy this instance answers its own repeats from.
                match self.local.get_or_begin(key, fingerprint, ttl).await {
                    Begin::First => Begin::First,
                    // Another request of this instance began it in memory a
                    // moment ago (Redis was down): that one goes first.
                    other => {
                        self.settle(key, b"release", Vec::new()).await;
                        other
                    }
                }
            }
            Some(b"mismatch") => Begin::Mismatch,
            Some(b"f") => Begin::InFlight(self.waiter(record)),
            Some(b"d") => match reply.get(1).and_then(|bytes| decode(bytes)) {
                Some(answer) => Begin::Done(Arc::new(answer)),
                None => Begin::DoneNotStored,
            },
            Some(b"n") => Begin::DoneNotStored,
            // "u", and anything this version does not know: never "new".
            _ => Begin::Unknown,
        }
    }

    // This instance's copy first: its own repeats (waiting on it) are
    // answered without waiting for the Redis round trip.
    async fn complete(&self, key: &RecordKey, answer: Option<StoredAnswer>) {
        let (what, encoded) = match &answer {
            Some(answer) => (b"d".as_slice(), encode(answer)),
            None => (b"n".as_slice(), Vec::new()),
        };
        self.local.complete(key, answer).await;
        self.settle(key, what, encoded).await;
    }

    async fn release(&self, key: &RecordKey) {
        self.local.release(key).await;
        self.settle(key, b"release", Vec::new()).await;
    }

    async fn mark_unknown(&self, key: &RecordKey) {
        self.local.mark_unknown(key).await;
        self.settle(key, b"u", Vec::new()).await;
    }

    fn size_bytes(&self) -> u64 {
        self.local.size_bytes()
    }

    fn evictions(&self) -> u64 {
        self.local.evictions()
    }
}

/// Runs [`SETTLE`]; `None` when Redis did not take it.
async fn send_settle(redis: &Arc<Redis>, record: &[u8], what: &[u8], answer: &[u8]) -> Option<i64> {
    redis
        .invoke(
            Some(StoreFeature::Idempotency),
            &SETTLE,
            &[record],
            &[what, INSTANCE.as_bytes(), answer],
        )
        .await
}

/// `status (2) | request id | header count (4) | (name | value)* | body`,
/// each string as a 4-byte length and its bytes, big-endian.
fn encode(answer: &StoredAnswer) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(answer.weight());
    out.extend_from_slice(&answer.status.to_be_bytes());
    put(&mut out, answer.request_id.as_bytes());
    out.extend_from_slice(&(answer.headers.len() as u32).to_be_bytes());
    for (name, value) in &answer.headers {
        put(&mut out, name.as_bytes());
        put(&mut out, value);
    }
    out.extend_from_slice(&answer.body);
    out
}

/// The answer [`encode`] wrote; `None` for anything else (never a panic).
fn decode(bytes: &[u8]) -> Option<StoredAnswer> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(head)
        }
        fn u32(&mut self) -> Option<usize> {
            let bytes: [u8; 4] = self.take(4)?.try_into().ok()?;
            usize::try_from(u32::from_be_bytes(bytes)).ok()
        }
        fn string(&mut self) -> Option<&'a [u8]> {
            let n = self.u32()?;
            self.take(n)
        }
    }
    let mut reader = Reader(bytes);
    let status = u16::from_be_bytes(reader.take(2)?.try_into().ok()?);
    let request_id = String::from_utf8(reader.string()?.to_vec()).ok()?;
    let count = reader.u32()?;
    let mut headers = Vec::with_capacity(count.min(256));
    for _ in 0..count {
        let name = String::from_utf8(reader.string()?.to_vec()).ok()?;
        let value = Bytes::copy_from_slice(reader.string()?);
        headers.push((name, value));
    }
    Some(StoredAnswer {
        status,
        headers,
        body: Bytes::copy_from_slice(reader.0),
        request_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_garbage_is_refused() {
        let answer = StoredAnswer {
            status: 201,
            headers: vec![
                (
                    "content-type".into(),
                    Bytes::from_static(b"application/json"),
                ),
                ("location".into(), Bytes::from_static(b"/api/orders/7")),
            ],
            body: Bytes::from_static(b"{\"order\":7}"),
            request_id: "r-1".into(),
        };
        let bytes = encode(&answer);
        assert_eq!(decode(&bytes), Some(answer));
        for cut in 0..20 {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode(&[0, 200, 255, 255, 255, 255]).is_none());
    }
}
