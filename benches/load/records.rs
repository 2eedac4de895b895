//! `records` (and the records rows of `scale`): does a request's cost stay
//! flat as ordergate's records grow? Idempotency records and stale copies
//! from 1 000 to 1 000 000 (`--quick`: 100 000), waiting rooms from 1 to 100
//! per instance, and one room's line and passes up to 1 000 000 — driven
//! in-process through the library's own memory stores (what `LiveState` hands
//! a route or a room), with no proxy and no network around them.
//!
//! Time: each operation is timed in batches (up to 1 000 calls back to back,
//! one clock reading per batch) and reported as the median of the batches'
//! ns per call, so a preempted moment on the shared machine spoils one batch,
//! not the figure. The `× smallest` column divides each size's median by the
//! smallest size's, from the same run: O(1) stays near 1× (at a million
//! records a random lookup leaves the CPU caches, which costs a constant
//! factor, not a trend), a linear scan grows with the size.
//!
//! Memory: the growth of this process's RSS over the fill ÷ records (the
//! bench binary uses mimalloc, as `ordergate` does), beside the store's own
//! weight per record (`ordergate_idempotency_store_bytes`, what `max_bytes`
//! limits). Memory stores hand back ready futures, so the bench polls each
//! operation once instead of running it on a runtime.

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};
use tokio::time::Instant;

use ordergate::kept::StoredAnswer;
use ordergate::live::LiveState;
use ordergate::room::{Bypass, Decision, Pressure, Request, RoomConfig, RoomMode, Rooms, Secret};
use ordergate::stale::{self, StaleCache, StaleConfig};
use ordergate::store::memory::MemoryIdempotency;
use ordergate::store::room::{client_tag, Control};
use ordergate::store::{Begin, IdempotencyStore, RecordKey};
use ordergate::telemetry::Metrics;

use crate::scenarios::{Ctx, ScenarioResult};

/// The bench binary allocates as `ordergate` does, so RSS per record is what
/// the proxy would show.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls per timed batch (fewer where a batch would change the size much).
const OPS: usize = 1_000;

/// Sizes, batches and room counts of a run.
struct Plan {
    /// Records (and line lengths, passes) at which every operation is timed.
    sizes: Vec<usize>,
    /// Timed batches per operation and size.
    batches: usize,
    /// Rooms per instance.
    rooms: Vec<usize>,
    /// Shoppers with a pass in each room of the rooms-per-instance curve.
    passes_per_room: usize,
}

impl Plan {
    fn of(ctx: &Ctx<'_>) -> Plan {
        if ctx.opts.quick {
            Plan {
                sizes: vec![1_000, 10_000, 100_000],
                batches: 9,
                rooms: vec![1, 10, 100],
                passes_per_room: 200,
            }
        } else {
            Plan {
                sizes: vec![1_000, 10_000, 100_000, 1_000_000],
                batches: 15,
                rooms: vec![1, 10, 100],
                passes_per_room: 1_000,
            }
        }
    }
}

/// The outcome of a memory store's operation: its futures are ready at once.
fn ready<F: Future>(future: F) -> Result<F::Output, String> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => Err("a memory store operation did not complete at once".to_owned()),
    }
}

/// ns per call of `n` calls of `op`, back to back.
fn batch(n: usize, mut op: impl FnMut(usize) -> Result<(), String>) -> Result<f64, String> {
    let start = std::time::Instant::now();
    for i in 0..n {
        op(i)?;
    }
    Ok(start.elapsed().as_nanos() as f64 / n.max(1) as f64)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// This process's resident memory, bytes.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// One operation's batches at every size of a curve.
struct Series {
    op: &'static str,
    /// ns per call of each batch, per size.
    batches: Vec<Vec<f64>>,
}

impl Series {
    fn new(op: &'static str) -> Series {
        Series {
            op,
            batches: Vec::new(),
        }
    }

    fn medians(&self) -> Vec<f64> {
        self.batches.iter().map(|b| median(b)).collect()
    }

    /// Largest size's median ÷ smallest size's.
    fn growth(&self) -> f64 {
        let m = self.medians();
        match (m.first(), m.last()) {
            (Some(first), Some(last)) if *first > 0.0 => last / first,
            _ => f64::NAN,
        }
    }
}

/// A curve: operations timed at each size, and memory per record.
struct Curve {
    title: String,
    /// What a size counts ("records", "rooms", ...).
    unit: &'static str,
    /// One of them ("record").
    one: &'static str,
    sizes: Vec<usize>,
    series: Vec<Series>,
    /// (column, value per size), e.g. RSS bytes per record.
    memory: Vec<(&'static str, Vec<Option<f64>>)>,
    notes: Vec<String>,
}

/// Growth from the smallest to the largest size that is flagged (medians of a
/// flat operation stay well within it, cache misses at a million included).
const FLAG_GROWTH: f64 = 3.0;

fn ns(v: f64) -> String {
    if !v.is_finite() {
        "–".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

impl Curve {
    fn markdown(&self) -> String {
        let mut out = format!(
            "**{}** (median ns per call; memory per {})\n\n",
            self.title, self.one
        );
        let _ = write!(out, "| {} |", self.unit);
        for s in &self.series {
            let _ = write!(out, " {} |", s.op);
        }
        for (name, _) in &self.memory {
            let _ = write!(out, " {name} |");
        }
        out.push_str("\n|--:|");
        out.push_str(&"--:|".repeat(self.series.len() + self.memory.len()));
        out.push('\n');
        let medians: Vec<Vec<f64>> = self.series.iter().map(Series::medians).collect();
        for (i, size) in self.sizes.iter().enumerate() {
            let _ = write!(out, "| {} |", thousands(*size));
            for m in &medians {
                let here = m.get(i).copied().unwrap_or(f64::NAN);
                let first = m.first().copied().unwrap_or(f64::NAN);
                if i == 0 || first.is_nan() || first <= 0.0 {
                    let _ = write!(out, " {} |", ns(here));
                } else {
                    let _ = write!(out, " {} ({:.1}×) |", ns(here), here / first);
                }
            }
            for (_, values) in &self.memory {
                match values.get(i).copied().flatten() {
                    Some(v) => {
                        let _ = write!(out, " {v:.0} |");
                    }
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        let grown: Vec<String> = self
            .series
            .iter()
            .filter(|s| s.growth() > FLAG_GROWTH)
            .map(|s| format!("{} ({:.1}×)", s.op, s.growth()))
            .collect();
        if !grown.is_empty() && self.sizes.len() > 1 {
            let _ = writeln!(
                out,
                "\n**Grows with size** (largest ÷ smallest above {FLAG_GROWTH}×): {}.",
                grown.join(", ")
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }

    fn json(&self) -> Value {
        json!({
            "title": self.title,
            "unit": self.unit,
            "sizes": self.sizes,
            "ops": self.series.iter().map(|s| json!({
                "op": s.op,
                "median_ns": s.medians(),
                "growth_largest_over_smallest": s.growth(),
                "batches_ns": s.batches,
            })).collect::<Vec<_>>(),
            "memory": self.memory.iter().map(|(name, values)| json!({"column": name, "values": values})).collect::<Vec<_>>(),
            "notes": self.notes,
        })
    }

    fn flagged(&self) -> Vec<String> {
        self.series
            .iter()
            .filter(|s| s.growth() > FLAG_GROWTH && self.sizes.len() > 1)
            .map(|s| format!("{}: {} grows {:.1}×", self.title, s.op, s.growth()))
            .collect()
    }
}

// --- Idempotency records -------------------------------------------------

/// Keys of the timed "new" records start here, far from the fill's.
const NEW_KEYS: usize = 1 << 40;

/// A record key as a keyed order makes one: the route, a 32-hex-digit scope
/// digest and a UUID.
fn record_key(i: usize) -> RecordKey {
    let mixed = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    RecordKey {
        route: "checkout".to_owned(),
        scope: format!("{mixed:016x}{:016x}", mixed.rotate_left(29)),
        key: format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            mixed >> 32,
            (mixed >> 16) & 0xffff,
            mixed & 0xfff,
            (mixed >> 52) & 0xfff,
            i
        ),
    }
}

/// A typical order answer: 201, three headers, a 300-byte JSON body.
fn order_answer(i: usize) -> StoredAnswer {
    let mut body = format!(
        "{{\"order_id\":\"ord-{i:09}\",\"status\":\"created\",\"total\":\"129.00\",\"currency\":\"CNY\",\"items\":[{{\"sku\":\"tea-0042\",\"qty\":2}}],\"payment\":{{\"state\":\"pending\",\"url\":\"/pay/ord-{i:09}\"}}"
    );
    while body.len() < 299 {
        body.push(' ');
    }
    body.push('}');
    StoredAnswer {
        status: 201,
        headers: vec![
            (
                "content-type".to_owned(),
                Bytes::from_static(b"application/json"),
            ),
            (
                "location".to_owned(),
                Bytes::from(format!("/api/orders/ord-{i:09}")),
            ),
            ("cache-control".to_owned(), Bytes::from_static(b"no-store")),
        ],
        body: Bytes::from(body),
        request_id: format!("{:032x}", (i as u128) * 0x1000_0000_0000_0001),
    }
}

const FINGERPRINT: [u8; 32] = [7; 32];
const TTL: Duration = Duration::from_secs(86_400);

/// Begins and completes record `i`: the first request with its key, answered.
fn store_order(store: &MemoryIdempotency, key: &RecordKey, i: usize) -> Result<(), String> {
    match ready(store.get_or_begin(key, &FINGERPRINT, TTL))? {
        Begin::First => {}
        other => return Err(format!("a new key found {other:?}")),
    }
    ready(store.complete(key, Some(order_answer(i))))
}

/// The store's weight of one typical record.
fn record_weight() -> Result<u64, String> {
    let probe = MemoryIdempotency::new(1 << 30);
    store_order(&probe, &record_key(0), 0)?;
    Ok(probe.size_bytes())
}

fn idempotency(plan: &Plan) -> Result<(Curve, Curve), String> {
    let weight = record_weight()?;
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    // Room for the largest size and the records timed beside it.
    let budget = weight * (largest + 2 * OPS) as u64 * 11 / 10;
    let store = MemoryIdempotency::new(budget);
    let mut begin = Series::new("begin (new key)");
    let mut complete = Series::new("complete (store the answer)");
    let mut lookup = Series::new("repeat (replay a stored answer)");
    let mut release = Series::new("release (forget a key)");
    let mut fill = Series::new("fill: begin + complete");
    let mut weight_per = Vec::new();
    let mut filled = 0;
    let mut fresh = NEW_KEYS;
    let mut rng = fastrand::Rng::with_seed(25);
    for &size in &plan.sizes {
        // Fill to `size`, timing the fill in chunks.
        let mut chunks = Vec::new();
        while filled < size {
            let n = OPS.min(size - filled);
            let keys: Vec<RecordKey> = (filled..filled + n).map(record_key).collect();
            let start = filled;
            chunks.push(batch(n, |j| store_order(&store, &keys[j], start + j))?);
            filled += n;
        }
        fill.batches.push(chunks);
        weight_per.push(Some(store.size_bytes() as f64 / filled.max(1) as f64));
        let n = OPS.min(size);
        let (mut b, mut c, mut l, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.batches {
            let keys: Vec<RecordKey> = (fresh..fresh + n).map(record_key).collect();
            let answers: Vec<StoredAnswer> = (fresh..fresh + n).map(order_answer).collect();
            fresh += n;
            let mut answers = answers.into_iter().map(Some);
            b.push(batch(n, |j| {
                match ready(store.get_or_begin(&keys[j], &FINGERPRINT, TTL))? {
                    Begin::First => Ok(()),
                    other => Err(format!("a new key found {other:?}")),
                }
            })?);
            c.push(batch(n, |j| {
                ready(store.complete(&keys[j], answers.next().flatten()))
            })?);
            let old: Vec<RecordKey> = (0..n).map(|_| record_key(rng.usize(..size))).collect();
            l.push(batch(n, |j| {
                match ready(store.get_or_begin(&old[j], &FINGERPRINT, TTL))? {
                    Begin::Done(_) => Ok(()),
                    other => Err(format!("a stored key found {other:?}")),
                }
            })?);
            r.push(batch(n, |j| ready(store.release(&keys[j])))?);
        }
        begin.batches.push(b);
        complete.batches.push(c);
        lookup.batches.push(l);
        release.batches.push(r);
    }
    let evictions = store.evictions();
    drop(store);
    let mut notes = vec![format!(
        "One record: a 36-character key, a 32-hex-digit scope, a 300-byte order answer with three \
         headers; the store weighs it {weight} bytes. Budget {} MiB (every size fits; {evictions} \
         evictions).",
        budget >> 20
    )];
    let growth = Curve {
        title: "Idempotency records (memory store)".to_owned(),
        unit: "records",
        one: "record",
        sizes: plan.sizes.clone(),
        series: vec![begin, complete, lookup, release, fill],
        memory: vec![("store's weight/record", weight_per)],
        notes: Vec::new(),
    };

    // At the budget: a store that holds `size` records, each new one evicting.
    let mut at_budget = Series::new("begin + complete at the budget (evicts one)");
    let mut kept_newest = Vec::new();
    let mut kept_oldest = Vec::new();
    for &size in &plan.sizes {
        let store = MemoryIdempotency::new(weight * size as u64);
        let over = size + size / 10;
        for i in 0..over {
            store_order(&store, &record_key(i), i)?;
        }
        store.size_bytes();
        let n = OPS.min(size);
        let mut times = Vec::new();
        let mut last = Vec::new();
        for _ in 0..plan.batches {
            let keys: Vec<RecordKey> = (fresh..fresh + n).map(record_key).collect();
            let start = fresh;
            fresh += n;
            times.push(batch(n, |j| store_order(&store, &keys[j], start + j))?);
            last = keys;
        }
        at_budget.batches.push(times);
        store.size_bytes();
        // Which records the budget kept: the last batch, just stored, and
        // the first records of the fill, the least recently used.
        let kept = |keys: &[RecordKey]| -> f64 {
            let found = keys
                .iter()
                .filter(|k| store.peek(k, &FINGERPRINT).is_some())
                .count();
            found as f64 * 100.0 / keys.len().max(1) as f64
        };
        kept_newest.push(Some(kept(&last)));
        let oldest: Vec<RecordKey> = (0..n).map(record_key).collect();
        kept_oldest.push(Some(kept(&oldest)));
    }
    notes.push(
        "At the budget: a store whose `max_bytes` holds exactly that many records, filled 10% past \
         it, then new orders (begin + complete) evicting one record each. `newest kept %`: share of \
         the last timed batch still in the store afterwards (an in-flight or just-answered record \
         that is dropped breaks at-most-once for its key); `oldest kept %`: share of the first \
         records of the fill (the least recently used) still there."
            .to_owned(),
    );
    let eviction = Curve {
        title: "Idempotency records at the memory budget".to_owned(),
        unit: "records",
        one: "record",
        sizes: plan.sizes.clone(),
        series: vec![at_budget],
        memory: vec![
            ("newest kept %", kept_newest),
            ("oldest kept %", kept_oldest),
        ],
        notes,
    };
    Ok((growth, eviction))
}

// --- Stale copies --------------------------------------------------------

fn stale_config(max_bytes: u64) -> StaleConfig {
    StaleConfig {
        max_age: Duration::from_secs(600),
        max_bytes,
        statuses: vec![200],
        on_error: true,
        on_overload: false,
        private_ok: false,
        ignore_cookies: Vec::new(),
    }
}

fn read_target(i: usize) -> String {
    format!("/api/products/{i}?lang=zh-CN")
}

/// The copy of a 500-byte product answer to `GET /api/products/i`, varying
/// on `Accept-Encoding`.
fn product_copy(config: &StaleConfig, i: usize) -> Result<(stale::Key, stale::Copy), String> {
    let request = request_headers();
    let key = stale::key_for(
        config,
        &Method::GET,
        "shop.example",
        &read_target(i),
        &request,
    )
    .ok_or("a public read has a key")?;
    let mut answer = HeaderMap::new();
    answer.insert("content-type", HeaderValue::from_static("application/json"));
    answer.insert("cache-control", HeaderValue::from_static("max-age=30"));
    answer.insert("vary", HeaderValue::from_static("Accept-Encoding"));
    let mut recording = stale::Recording::new(key, 200, &answer, &request, 64 * 1024);
    let mut body = format!(
        "{{\"sku\":\"tea-{i:07}\",\"name\":\"Longjing, spring harvest\",\"price\":\"129.00\",\"stock\":17"
    );
    while body.len() < 499 {
        body.push(' ');
    }
    body.push('}');
    recording.push(&Bytes::from(body));
    recording
        .finish(&format!("{:032x}", i))
        .ok_or_else(|| "a 500-byte answer is kept".to_owned())
}

fn request_headers() -> HeaderMap {
    let mut request = HeaderMap::new();
    request.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
    request
}

fn copy_weight() -> Result<u64, String> {
    let config = stale_config(1 << 30);
    let probe = StaleCache::new(1 << 30, config.max_age);
    let (key, copy) = product_copy(&config, 0)?;
    probe.keep(key, copy);
    Ok(probe.size_bytes())
}

fn stale_copies(plan: &Plan) -> Result<(Curve, Curve), String> {
    let weight = copy_weight()?;
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    let budget = weight * (largest + 2 * OPS) as u64 * 11 / 10;
    let config = stale_config(budget);
    let cache = StaleCache::new(budget, config.max_age);
    let request = request_headers();
    let mut find = Series::new("find (hit)");
    let mut miss = Series::new("find (no copy)");
    let mut refresh = Series::new("keep (replace a copy)");
    let mut fill = Series::new("fill: keep (new read)");
    let mut weight_per = Vec::new();
    let mut filled = 0;
    let mut rng = fastrand::Rng::with_seed(25);
    for &size in &plan.sizes {
        let mut chunks = Vec::new();
        while filled < size {
            let n = OPS.min(size - filled);
            let mut copies = (filled..filled + n)
                .map(|i| product_copy(&config, i))
                .collect::<Result<Vec<_>, String>>()?
                .into_iter();
            chunks.push(batch(n, |_| {
                let (key, copy) = copies.next().ok_or("a copy per call")?;
                cache.keep(key, copy);
                Ok(())
            })?);
            filled += n;
        }
        fill.batches.push(chunks);
        weight_per.push(Some(cache.size_bytes() as f64 / filled.max(1) as f64));
        let n = OPS.min(size);
        let (mut f, mut m, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.batches {
            let picks: Vec<usize> = (0..n).map(|_| rng.usize(..size)).collect();
            let keys = picks
                .iter()
                .map(|i| product_copy(&config, *i).map(|(k, _)| k))
                .collect::<Result<Vec<_>, String>>()?;
            f.push(batch(n, |j| match cache.find(&keys[j], &request) {
                Some(_) => Ok(()),
                None => Err(format!("no copy of {}", picks[j])),
            })?);
            let absent = (0..n)
                .map(|j| product_copy(&config, NEW_KEYS + j).map(|(k, _)| k))
                .collect::<Result<Vec<_>, String>>()?;
            m.push(batch(n, |j| match cache.find(&absent[j], &request) {
                None => Ok(()),
                Some(_) => Err("a copy never kept was found".to_owned()),
            })?);
            let mut copies = picks
                .iter()
                .map(|i| product_copy(&config, *i))
                .collect::<Result<Vec<_>, String>>()?
                .into_iter();
            r.push(batch(n, |_| {
                let (key, copy) = copies.next().ok_or("a copy per call")?;
                cache.keep(key, copy);
                Ok(())
            })?);
        }
        find.batches.push(f);
        miss.batches.push(m);
        refresh.batches.push(r);
    }
    drop(cache);
    let growth = Curve {
        title: "Stale copies (`StaleCache`)".to_owned(),
        unit: "copies",
        one: "copy",
        sizes: plan.sizes.clone(),
        series: vec![find, miss, refresh, fill],
        memory: vec![("cache's weight/copy", weight_per)],
        notes: vec![format!(
            "One copy: `GET /api/products/N?lang=zh-CN`, a 500-byte JSON answer with three headers, \
             varying on `Accept-Encoding`; the cache weighs it {weight} bytes. Budget {} MiB (every \
             size fits). `keep (replace a copy)` is what every good answer to a kept read costs.",
            budget >> 20
        )],
    };

    let mut at_budget = Series::new("keep (new read) at the budget (evicts one)");
    let mut kept_newest = Vec::new();
    let mut fresh = 2 * NEW_KEYS;
    for &size in &plan.sizes {
        let config = stale_config(weight * size as u64);
        let cache = StaleCache::new(config.max_bytes, config.max_age);
        for i in 0..size + size / 10 {
            let (key, copy) = product_copy(&config, i)?;
            cache.keep(key, copy);
        }
        cache.size_bytes();
        let n = OPS.min(size);
        let mut times = Vec::new();
        let mut last = Vec::new();
        for _ in 0..plan.batches {
            let copies = (fresh..fresh + n)
                .map(|i| product_copy(&config, i))
                .collect::<Result<Vec<_>, String>>()?;
            last = copies.iter().map(|(k, _)| k.clone()).collect();
            fresh += n;
            let mut copies = copies.into_iter();
            times.push(batch(n, |_| {
                let (key, copy) = copies.next().ok_or("a copy per call")?;
                cache.keep(key, copy);
                Ok(())
            })?);
        }
        at_budget.batches.push(times);
        cache.size_bytes();
        let found = last
            .iter()
            .filter(|k| cache.find(k, &request).is_some())
            .count();
        kept_newest.push(Some(found as f64 * 100.0 / last.len().max(1) as f64));
    }
    let eviction = Curve {
        title: "Stale copies at the memory budget".to_owned(),
        unit: "copies",
        one: "copy",
        sizes: plan.sizes.clone(),
        series: vec![at_budget],
        memory: vec![("newest kept %", kept_newest)],
        notes: vec![
            "At the budget: a cache whose `max_bytes` holds exactly that many copies, filled 10% \
             past it, then new reads kept. `newest kept %`: share of the last timed batch still \
             found afterwards."
                .to_owned(),
        ],
    };
    Ok((growth, eviction))
}

// --- Waiting rooms -------------------------------------------------------

const ROOM_SECRET: [u8; 32] = [7; 32];

fn room_config(name: &str, route: &str) -> RoomConfig {
    RoomConfig {
        name: name.to_owned(),
        routes: vec![route.to_owned()],
        max_active: None,
        admit_per_minute: Some(6_000),
        session: Duration::from_secs(300),
        max_session: Duration::from_secs(1800),
        max_waiting: 2_000_000,
        // Shoppers come from the bench's few thousand addresses.
        ticket_rate_per_address: 1_000_000,
        refresh: Duration::from_secs(10),
        ticket_timeout: Duration::from_secs(3_600),
        secret: Secret(ROOM_SECRET.to_vec()),
        mode: RoomMode::OnOverload,
        bypass: Bypass::default(),
        opens_at: None,
    }
}

/// The pool is calm: an `on_overload` room lets newcomers in with a pass.
const CALM: Pressure = Pressure::IDLE;
/// The pool is full: the room forms and calls nobody; newcomers get tickets.
const FULL: Pressure = Pressure {
    would_queue: true,
    headroom: false,
    queue_wait: Duration::ZERO,
    rejected: 0,
};

/// The `n`th shopper's address, in 198.18.0.0/15 (the benchmarking range;
/// it is only a value here, nothing is sent).
fn shopper_ip(n: usize) -> IpAddr {
    let n = (n % (1 << 17)) as u32;
    IpAddr::V4(Ipv4Addr::from((198u32 << 24) | (18 << 16) | n))
}

/// The `Cookie` header a browser sends back for a `Set-Cookie` value.
fn cookie_back(set_cookie: &str) -> Result<HeaderMap, String> {
    let pair = set_cookie.split(';').next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(
        "cookie",
        HeaderValue::from_str(pair).map_err(|e| format!("cookie {pair:?}: {e}"))?,
    );
    Ok(headers)
}

/// A shopper as the bench keeps one: the route, the address, the cookie.
struct Shopper {
    route: String,
    ip: IpAddr,
    headers: HeaderMap,
}

fn decide(
    rooms: &Rooms,
    shopper: &Shopper,
    pressure: Pressure,
    now: Instant,
) -> Result<Decision, String> {
    let room = rooms
        .for_route(&shopper.route)
        .ok_or_else(|| format!("no room covers {}", shopper.route))?;
    let request = Request {
        method: &Method::GET,
        path: "/api/products/7",
        headers: &shopper.headers,
        tls: false,
        client_ip: Some(shopper.ip),
    };
    ready(room.decide(&request, pressure, now))
}

/// A new shopper on `route` who gets a pass (`calm`) or a ticket: with the
/// cookie the room set.
fn newcomer(
    rooms: &Rooms,
    route: &str,
    n: usize,
    pressure: Pressure,
    now: Instant,
) -> Result<Shopper, String> {
    let mut shopper = Shopper {
        route: route.to_owned(),
        ip: shopper_ip(n),
        headers: HeaderMap::new(),
    };
    let cookie = match decide(rooms, &shopper, pressure, now)? {
        Decision::Pass(Some(cookie)) | Decision::Wait(_, Some(cookie)) => cookie,
        other => return Err(format!("a newcomer got {other:?}")),
    };
    shopper.headers = cookie_back(&cookie)?;
    Ok(shopper)
}

/// Rooms per instance: memory per room, and the room check of a shopper
/// with a pass, a newcomer who joins the line, and a ticket holder checking
/// in, spread over every room.
fn rooms_per_instance(plan: &Plan) -> Result<Curve, String> {
    let mut pass = Series::new("pass holder's request");
    let mut arrive = Series::new("newcomer joins the line");
    let mut check_in = Series::new("ticket holder checks in");
    let mut rng = fastrand::Rng::with_seed(25);
    let mut next_shopper = 0;
    for &count in &plan.rooms {
        let live = LiveState::default();
        let metrics = Metrics::new();
        let configs: Vec<RoomConfig> = (0..count)
            .map(|i| room_config(&format!("sale{i}"), &format!("route{i}")))
            .collect();
        let rooms = Rooms::new(&configs, &live, &metrics);
        let now = Instant::now();
        let mut passes = Vec::new();
        for config in &configs {
            for _ in 0..plan.passes_per_room {
                next_shopper += 1;
                passes.push(newcomer(
                    &rooms,
                    &config.routes[0],
                    next_shopper,
                    CALM,
                    now,
                )?);
            }
        }
        let n = OPS;
        let (mut p, mut a, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.batches {
            let picks: Vec<usize> = (0..n).map(|_| rng.usize(..passes.len())).collect();
            p.push(batch(n, |j| {
                match decide(&rooms, &passes[picks[j]], FULL, Instant::now())? {
                    Decision::Pass(None) => Ok(()),
                    other => Err(format!("a pass holder got {other:?}")),
                }
            })?);
            let newcomers: Vec<Shopper> = (0..n)
                .map(|j| Shopper {
                    route: format!("route{}", rng.usize(..count)),
                    ip: shopper_ip(next_shopper + j),
                    headers: HeaderMap::new(),
                })
                .collect();
            next_shopper += n;
            let mut tickets = Vec::with_capacity(n);
            a.push(batch(n, |j| {
                match decide(&rooms, &newcomers[j], FULL, Instant::now())? {
                    Decision::Wait(_, Some(cookie)) => {
                        tickets.push(cookie);
                        Ok(())
                    }
                    other => Err(format!("a newcomer got {other:?}")),
                }
            })?);
            let holders = newcomers
                .into_iter()
                .zip(&tickets)
                .map(|(shopper, cookie)| {
                    Ok(Shopper {
                        headers: cookie_back(cookie)?,
                        ..shopper
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            c.push(batch(n, |j| {
                match decide(&rooms, &holders[j], FULL, Instant::now())? {
                    Decision::Wait(_, None) => Ok(()),
                    other => Err(format!("a ticket holder got {other:?}")),
                }
            })?);
        }
        pass.batches.push(p);
        arrive.batches.push(a);
        check_in.batches.push(c);
    }
    Ok(Curve {
        title: "Waiting rooms per instance".to_owned(),
        unit: "rooms",
        one: "room",
        sizes: plan.rooms.clone(),
        series: vec![pass, arrive, check_in],
        memory: Vec::new(),
        notes: vec![format!(
            "Each room covers its own route (`on_overload`, `admit_per_minute = 6000`); {} shoppers \
             per room hold a pass. Requests pick a room at random; the pool is full (the room has \
             formed and calls nobody), so newcomers join the line and holders keep waiting. A call \
             is `Rooms::for_route` + `Room::decide`: cookie check (HMAC), the line, the page's \
             numbers and, for a newcomer, the per-address limit and a signed ticket.",
            plan.passes_per_room
        )],
    })
}

/// One room's line and passes from 1 000 to a million: memory per ticket and
/// per pass, and what a request costs at each length — including the request
/// that runs the line's periodic sweep (every 250 ms).
fn one_room(plan: &Plan) -> Result<(Curve, Curve), String> {
    let mut arrive = Series::new("newcomer joins the line");
    let mut check_in = Series::new("ticket holder checks in");
    let mut pass = Series::new("pass holder's request");
    let mut sweep = Series::new("newcomer whose request runs the sweep");
    let mut rng = fastrand::Rng::with_seed(25);
    // Tickets: a line that grows from size to size; the room calls nobody.
    {
        let live = LiveState::default();
        let metrics = Metrics::new();
        let config = room_config("sale", "shop");
        let rooms = Rooms::new(std::slice::from_ref(&config), &live, &metrics);
        let room = rooms.for_route("shop").ok_or("the room")?;
        let line = Arc::clone(room.line());
        let mut clock = Instant::now();
        let mut tickets = 0;
        let mut holders: Vec<Shopper> = Vec::new();
        for &size in &plan.sizes {
            let limits = room.limits(Control::Auto, FULL, clock);
            while tickets < size {
                clock += Duration::from_micros(1);
                ready(line.arrive(client_tag(Some(shopper_ip(tickets))), clock, &limits, false))?;
                tickets += 1;
            }
            // A tenth of the size at most joins while timed.
            let n = OPS.min((size / 10 / plan.batches).max(10));
            let (mut a, mut c) = (Vec::new(), Vec::new());
            for _ in 0..plan.batches {
                let newcomers: Vec<Shopper> = (0..n)
                    .map(|j| Shopper {
                        route: "shop".to_owned(),
                        ip: shopper_ip(tickets + j),
                        headers: HeaderMap::new(),
                    })
                    .collect();
                let mut cookies = Vec::with_capacity(n);
                a.push(batch(n, |j| {
                    clock += Duration::from_micros(1);
                    match decide(&rooms, &newcomers[j], FULL, clock)? {
                        Decision::Wait(_, Some(cookie)) => {
                            cookies.push(cookie);
                            Ok(())
                        }
                        other => Err(format!("a newcomer got {other:?}")),
                    }
                })?);
                tickets += n;
                for (shopper, cookie) in newcomers.into_iter().zip(&cookies) {
                    holders.push(Shopper {
                        headers: cookie_back(cookie)?,
                        ..shopper
                    });
                }
                let picks: Vec<usize> = (0..n).map(|_| rng.usize(..holders.len())).collect();
                c.push(batch(n, |j| {
                    clock += Duration::from_micros(1);
                    match decide(&rooms, &holders[picks[j]], FULL, clock)? {
                        Decision::Wait(_, None) => Ok(()),
                        other => Err(format!("a ticket holder got {other:?}")),
                    }
                })?);
            }
            arrive.batches.push(a);
            check_in.batches.push(c);
        }
    }
    // Passes: shoppers let in while the pool is calm, each holding a pass.
    {
        let live = LiveState::default();
        let metrics = Metrics::new();
        let config = room_config("sale", "shop");
        let rooms = Rooms::new(std::slice::from_ref(&config), &live, &metrics);
        let room = rooms.for_route("shop").ok_or("the room")?;
        let line = Arc::clone(room.line());
        let mut clock = Instant::now();
        let mut passes = 0;
        let mut holders: Vec<Shopper> = Vec::new();
        for &size in &plan.sizes {
            let limits = room.limits(Control::Auto, CALM, clock);
            while passes < size {
                clock += Duration::from_micros(1);
                ready(line.arrive(client_tag(Some(shopper_ip(passes))), clock, &limits, true))?;
                passes += 1;
            }
            let n = OPS.min(size / 10).max(10);
            while holders.len() < n {
                clock += Duration::from_micros(1);
                holders.push(newcomer(&rooms, "shop", passes, CALM, clock)?);
                passes += 1;
            }
            let (mut p, mut s) = (Vec::new(), Vec::new());
            for _ in 0..plan.batches {
                let picks: Vec<usize> = (0..n).map(|_| rng.usize(..holders.len())).collect();
                // Within one sweep period: no sweep in these calls.
                p.push(batch(n, |j| {
                    clock += Duration::from_nanos(100);
                    match decide(&rooms, &holders[picks[j]], FULL, clock)? {
                        Decision::Pass(None) => Ok(()),
                        other => Err(format!("a pass holder got {other:?}")),
                    }
                })?);
                // The first request after a sweep period runs the sweep.
                clock += Duration::from_millis(300);
                let newcomer = Shopper {
                    route: "shop".to_owned(),
                    ip: shopper_ip(passes),
                    headers: HeaderMap::new(),
                };
                passes += 1;
                s.push(batch(1, |_| {
                    match decide(&rooms, &newcomer, FULL, clock)? {
                        Decision::Wait(_, Some(_)) => Ok(()),
                        other => Err(format!("a newcomer got {other:?}")),
                    }
                })?);
            }
            pass.batches.push(p);
            sweep.batches.push(s);
        }
    }
    let line = Curve {
        title: "One room's line".to_owned(),
        unit: "tickets",
        one: "ticket",
        sizes: plan.sizes.clone(),
        series: vec![arrive, check_in],
        memory: Vec::new(),
        notes: vec![
            "The room has formed and calls nobody. Newcomers join at the back (a batch is at most a \
             tenth of the line); holders of tickets anywhere in it check in."
                .to_owned(),
        ],
    };
    let passes = Curve {
        title: "One room's passes".to_owned(),
        unit: "passes",
        one: "pass",
        sizes: plan.sizes.clone(),
        series: vec![pass, sweep],
        memory: Vec::new(),
        notes: vec![
            "Shoppers let in while the pool was calm, each with a pass (`max_active` unset); then \
             the pool is full and pass holders keep making requests. `newcomer whose request runs \
             the sweep`: a newcomer 300 ms after the previous request (arrivals, check-ins and \
             status reads sweep expired passes and uncollected calls at most every 250 ms, under \
             the room's lock; a pass holder's request does not), timed alone."
                .to_owned(),
        ],
    };
    Ok((line, passes))
}

// --- Memory, in a fresh process --------------------------------------------

/// Set on the child that measures memory: `KIND:SIZE,SIZE,...`.
const MEMORY_CHILD: &str = "ORDERGATE_BENCH_RECORDS_MEMORY";
/// The child's answer on stdout: this prefix, then a JSON array.
const MEMORY_LINE: &str = "records-memory ";

/// RSS bytes per record of `kind` at each size, measured by filling one store
/// in a fresh copy of this bench: in this process, memory freed by earlier
/// work (mimalloc keeps it) would be reused and hide the growth.
fn memory_curve(kind: &str, sizes: &[usize]) -> Result<Vec<Option<f64>>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("this bench's path: {e}"))?;
    let list: Vec<String> = sizes.iter().map(usize::to_string).collect();
    let output = std::process::Command::new(exe)
        .args(["records", "--quiet", "--no-pin"])
        .env(MEMORY_CHILD, format!("{kind}:{}", list.join(",")))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("start the memory child: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(MEMORY_LINE))
        .ok_or_else(|| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().last().unwrap_or_default().to_owned();
            format!(
                "the memory child of {kind} said nothing ({}: {last})",
                output.status
            )
        })?;
    serde_json::from_str(line).map_err(|e| format!("the memory child's {line:?}: {e}"))
}

/// In the child: fills one store of `kind` through the sizes, RSS growth ÷
/// records at each.
fn fill_for_memory(spec: &str) -> Result<Vec<Option<f64>>, String> {
    let (kind, list) = spec.split_once(':').ok_or("KIND:SIZES")?;
    let sizes = list
        .split(',')
        .map(|n| n.parse::<usize>().map_err(|e| format!("{n:?}: {e}")))
        .collect::<Result<Vec<_>, String>>()?;
    let largest = sizes.iter().copied().max().unwrap_or(0) as u64;
    // The metric families every room registers, built before the baseline.
    let live = LiveState::default();
    let metrics = Metrics::new();
    drop(Rooms::new(&[room_config("warm", "warm")], &live, &metrics));
    let mut rss0 = rss();
    let per = |n: usize, rss0: u64| Some(rss().saturating_sub(rss0) as f64 / n.max(1) as f64);
    let mut out = Vec::new();
    let mut filled = 0;
    match kind {
        "idempotency" => {
            let store = MemoryIdempotency::new(record_weight()? * largest * 2);
            for &size in &sizes {
                for i in filled..size {
                    store_order(&store, &record_key(i), i)?;
                }
                filled = size;
                store.size_bytes();
                out.push(per(size, rss0));
            }
        }
        "stale" => {
            let config = stale_config(copy_weight()? * largest * 2);
            let cache = StaleCache::new(config.max_bytes, config.max_age);
            for &size in &sizes {
                for i in filled..size {
                    let (key, copy) = product_copy(&config, i)?;
                    cache.keep(key, copy);
                }
                filled = size;
                cache.size_bytes();
                out.push(per(size, rss0));
            }
        }
        "tickets" | "passes" => {
            let rooms = Rooms::new(&[room_config("sale", "shop")], &live, &metrics);
            rss0 = rss();
            let room = rooms.for_route("shop").ok_or("the room")?;
            let line = Arc::clone(room.line());
            let passes = kind == "passes";
            let mut clock = Instant::now();
            let limits = room.limits(Control::Auto, if passes { CALM } else { FULL }, clock);
            for &size in &sizes {
                for i in filled..size {
                    clock += Duration::from_micros(1);
                    let client = client_tag(Some(shopper_ip(i)));
                    ready(line.arrive(client, clock, &limits, passes))?;
                }
                filled = size;
                out.push(per(size, rss0));
            }
        }
        "rooms" => {
            let mut kept = Vec::new();
            for &size in &sizes {
                let configs: Vec<RoomConfig> = (filled..size)
                    .map(|i| room_config(&format!("sale{i}"), &format!("route{i}")))
                    .collect();
                kept.push(Rooms::new(&configs, &live, &metrics));
                filled = size;
                out.push(per(size, rss0));
            }
        }
        other => return Err(format!("no memory curve for {other:?}")),
    }
    Ok(out)
}

/// The records curves of `cargo bench --bench load -- scale`: markdown for the report and the same as JSON.
pub(crate) fn curves(ctx: &Ctx<'_>) -> Result<(String, serde_json::Value), String> {
    let plan = Plan::of(ctx);
    let started = std::time::Instant::now();
    let mut curves = Vec::new();
    let step = |what: &str| eprintln!("records: {what} ({:.0} s)", started.elapsed().as_secs_f64());
    step("idempotency records");
    let (growth, eviction) = idempotency(&plan)?;
    curves.extend([growth, eviction]);
    step("stale copies");
    let (growth, eviction) = stale_copies(&plan)?;
    curves.extend([growth, eviction]);
    step("rooms per instance");
    curves.push(rooms_per_instance(&plan)?);
    step("one room's line and passes");
    let (line, passes) = one_room(&plan)?;
    curves.extend([line, passes]);
    step("memory, in fresh processes");
    let kinds = [
        (0, "idempotency", "RSS bytes/record"),
        (2, "stale", "RSS bytes/copy"),
        (4, "rooms", "RSS bytes/room"),
        (5, "tickets", "RSS bytes/ticket"),
        (6, "passes", "RSS bytes/pass"),
    ];
    for (index, kind, column) in kinds {
        let curve = &mut curves[index];
        match memory_curve(kind, &curve.sizes) {
            Ok(values) => curve.memory.insert(0, (column, values)),
            Err(why) => curve.notes.push(format!("Memory not measured: {why}.")),
        }
    }
    step("done");
    let mut markdown = String::from(
        "Median ns per call over batches of up to 1 000 calls (in brackets: ÷ the smallest \
         size's, same run). `RSS bytes/…`: growth of a fresh process's RSS (mimalloc, as \
         `ordergate`) while one store fills, ÷ records; the store's own weight is what \
         `max_bytes` limits.\n\n",
    );
    for curve in &curves {
        markdown.push_str(&curve.markdown());
        markdown.push('\n');
    }
    let flagged: Vec<String> = curves.iter().flat_map(Curve::flagged).collect();
    let value = json!({
        "sizes": plan.sizes,
        "batches": plan.batches,
        "ops_per_batch": OPS,
        "rooms": plan.rooms,
        "curves": curves.iter().map(Curve::json).collect::<Vec<_>>(),
        "grows_with_size": flagged,
    });
    Ok((markdown, value))
}

/// `cargo bench --bench load -- records`: the curves alone.
pub(crate) fn run(ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    if let Ok(spec) = std::env::var(MEMORY_CHILD) {
        // A child started by `memory_curve`: measure, answer, stop.
        let values = fill_for_memory(&spec)?;
        println!("{MEMORY_LINE}{}", json!(values));
        std::process::exit(0);
    }
    let (summary, summary_json) = curves(ctx)?;
    let grown = summary_json["grows_with_size"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(ScenarioResult {
        name: "records".to_owned(),
        description: "Idempotency records, stale copies and waiting rooms driven in-process \
                      through ordergate's memory stores: median ns per operation at each size \
                      and memory per record (see benches/load/records.rs)."
            .to_owned(),
        runs: Vec::new(),
        notes: grown,
        summary,
        summary_json,
        failures: Vec::new(),
    })
}
