//! `flash-sale-room`: does the waiting room keep a flash sale fair *and* keep
//! the order server busy? Simulated shoppers arrive at ten times what one
//! backend can serve (each browses three pages and orders once) for 60 s
//! (`--quick`: 10 s) through a `[[rooms]]` room in `on_overload` mode. Every
//! shopper keeps its cookies like a browser: the ticket the room issues, then
//! the pass, sent back on every request, and checks again at the waiting
//! page's `Retry-After`. Before the sale, 32 connections that bypass the
//! room saturate the pool through ordergate for 3 s: what the backend serves
//! then is the capacity the room can at best use. It reports the backend's
//! utilisation against that and against the nominal 160 requests/s (target
//! ≥ 95% of the saturated throughput), raw errors (target 0), the latency of
//! admitted shoppers' requests, and over time (`flash-sale-room-line.svg`) the
//! queue length from the admin `GET /rooms`, the admission rate and the ETA
//! error (actual wait − the first estimate shown, per admitted shopper); the
//! JSON's samples also carry the room's pace and its pool's queue wait.
//!
//! Then a scalper phase, as long, on a fresh proxy: one arrival in ten is a
//! bot, each from its own loopback address, that hoards three tickets at
//! once, drops and retakes them (rotating cookies), and shares every pass a
//! bot gets with all the other bots. It reports the share of admissions and
//! of orders the bots got (goal: no more than their share of arrivals) and
//! the honest shoppers' wait and ETA error beside the phase without bots.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::client::{complete_response, Kind as Req};
use crate::procs::{self, Backend, Kind, ProxySpec, Target, Tweaks};
use crate::scenarios::{self, Ctx, ScenarioResult, TargetRun, OVERLOAD_CAPACITY};
use crate::stats::{self, Class, Percentiles, Recorder};
use crate::{report, support};

/// Requests a shopper makes once admitted: three product pages, one order.
const STEPS: usize = 4;
/// Demand over the backend's capacity.
const OVERLOAD: f64 = 10.0;
/// Pause between an admitted shopper's requests.
const THINK: Duration = Duration::from_millis(250);
/// Shoppers let in per minute: the backend's capacity in shoppers (160
/// requests/s ÷ 4 requests = 40/s); the room calls only while the pool has
/// headroom, so the pool, not this number, sets the pace when they differ.
const ADMIT_PER_MINUTE: u32 = 2400;
/// Connections the shoppers share (a browser's own connection is idle most
/// of the time; a pool keeps the descriptor count bounded).
const CONNECTIONS: usize = 1024;
const ROOM: &str = "sale";
/// The header that lets the calibration through the room (`[rooms.bypass]`).
const CALIBRATE_HEADER: &str = "x-bench-calibrate";
/// Connections that saturate the pool while measuring what it can serve.
const CALIBRATE_CONNECTIONS: usize = 32;
/// How long the calibration runs.
const CALIBRATE_FOR: Duration = Duration::from_secs(3);
const SECRET: &str = "bench-room-secret-0123456789abcdef0123456789";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one shopper went through.
#[derive(Default, Clone)]
struct Shopper {
    /// Scheduled arrival, from the start of the run (s).
    arrived: f64,
    /// The first `estimated_wait_s` shown (s); none if never in line.
    first_estimate: Option<f64>,
    /// When the first request that passed was due (s).
    admitted: Option<f64>,
    steps_done: usize,
    /// A scalper's bot (the scalper phase).
    bot: bool,
}

/// One answer, as much as a shopper needs.
struct Answer {
    class: Class,
    cookie: Option<String>,
    retry_after: Option<u64>,
    estimate: Option<f64>,
    waiting: bool,
}

/// Shared by the shoppers.
struct Shared {
    addr: SocketAddr,
    idle: Mutex<Vec<(TcpStream, BytesMut)>>,
    permits: Semaphore,
    recorder: Mutex<Recorder>,
    start: Instant,
    end: Instant,
    timeout: Duration,
    /// Latency (µs) of admitted shoppers' requests (all but waiting pages).
    admitted_latency: Mutex<hdrhistogram::Histogram<u64>>,
    /// Of those: (answers, pages, raw errors).
    admitted_counts: Mutex<(u64, u64, u64)>,
}

fn request(kind: Req, step: usize, cookie: Option<&str>) -> Vec<u8> {
    let cookie = cookie.map_or(String::new(), |c| {
        format!("Cookie: ordergate_room_{ROOM}={c}\r\n")
    });
    if kind == Req::Order {
        let body = r#"{"sku":"tea","quantity":1}"#;
        format!(
            "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nAccept: application/json\r\nUser-Agent: ordergate-load\r\n{cookie}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    } else {
        format!(
            "GET /api/products/{} HTTP/1.1\r\nHost: shop.test\r\nAccept: application/json\r\nUser-Agent: ordergate-load\r\n{cookie}\r\n",
            step + 1
        )
        .into_bytes()
    }
}

/// Reads what a shopper keeps from a complete response.
fn answer(raw: &[u8], class: Class) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut cookie = None;
    let mut retry_after = None;
    let prefix = format!("ordergate_room_{ROOM}=");
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("set-cookie") {
            if let Some(v) = value.strip_prefix(&prefix) {
                cookie = v.split(';').next().map(str::to_owned);
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse().ok();
        }
    }
    let waiting = matches!(&class, Class::Page { reason, .. } if reason == "waiting_room");
    let estimate = if waiting {
        let body = raw.get(end + 4..).unwrap_or_default();
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["estimated_wait_s"].as_f64())
    } else {
        None
    };
    Answer {
        class,
        cookie,
        retry_after,
        estimate,
        waiting,
    }
}

/// Sends one request on a pooled keep-alive connection.
async fn exchange(shared: &Shared, bytes: &[u8]) -> Answer {
    let Ok(_permit) = shared.permits.acquire().await else {
        return answer(b"", Class::Reset);
    };
    let pooled = lock(&shared.idle).pop();
    let (mut stream, mut buf) = match pooled {
        Some(conn) => conn,
        None => match TcpStream::connect(shared.addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                (stream, BytesMut::with_capacity(8192))
            }
            Err(_) => return answer(b"", Class::Reset),
        },
    };
    buf.clear();
    if stream.write_all(bytes).await.is_err() {
        return answer(b"", Class::Reset);
    }
    loop {
        let eof = match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        };
        match complete_response(&buf, eof) {
            Ok(Some((class, close, used))) => {
                let got = answer(&buf[..used], class);
                if !close && !eof {
                    let rest = buf.split_off(used);
                    lock(&shared.idle).push((stream, rest));
                }
                return got;
            }
            Ok(None) if !eof => {}
            _ => return answer(b"", Class::Reset),
        }
    }
}

/// Every `BOT_EVERY`-th arrival of the scalper phase is a bot.
const BOT_EVERY: usize = 10;
/// Tickets a bot holds at once.
const BOT_TICKETS: usize = 3;
/// A bot drops its tickets and takes new ones after waiting this long.
const BOT_ROTATE: Duration = Duration::from_secs(8);

/// Passes the bots got, shared between them all.
#[derive(Default)]
struct Bots {
    passes: Mutex<Vec<String>>,
}

/// One request on a fresh connection from `source` (a bot's own address).
async fn exchange_from(shared: &Shared, source: [u8; 4], bytes: &[u8]) -> Answer {
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return answer(b"", Class::Reset);
    };
    if socket.bind(SocketAddr::from((source, 0))).is_err() {
        return answer(b"", Class::Reset);
    }
    let Ok(mut stream) = socket.connect(shared.addr).await else {
        return answer(b"", Class::Reset);
    };
    if stream.write_all(bytes).await.is_err() {
        return answer(b"", Class::Reset);
    }
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        let eof = match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => true,
            Ok(_) => false,
        };
        match complete_response(&buf, eof) {
            Ok(Some((class, _, used))) => return answer(&buf[..used], class),
            Ok(None) if !eof => {}
            _ => return answer(b"", Class::Reset),
        }
    }
}

/// One bot, from arrival until the end of the run: it checks its hoard of
/// tickets in turn (a missing one is taken anew), tries the passes other bots
/// share first, and shares its own.
async fn scalp(
    shared: Arc<Shared>,
    index: usize,
    arrive: Instant,
    book: Arc<Mutex<Vec<Shopper>>>,
    bots: Arc<Bots>,
) {
    let source = [127, 1, (index / 250 % 250) as u8, (index % 250 + 1) as u8];
    let mut me = Shopper {
        arrived: (arrive - shared.start).as_secs_f64(),
        bot: true,
        ..Shopper::default()
    };
    let mut tickets: Vec<Option<String>> = vec![None; BOT_TICKETS];
    let mut pass: Option<String> = None;
    let (mut due, mut turn, mut since) = (arrive, 0, arrive);
    while due < shared.end && me.steps_done < STEPS {
        tokio::time::sleep_until(due).await;
        let shared_pass = lock(&bots.passes).last().cloned();
        let (cookie, slot) = match (&pass, shared_pass) {
            (Some(own), _) => (Some(own.clone()), None),
            (None, Some(other)) => (Some(other), None),
            (None, None) => {
                turn = (turn + 1) % BOT_TICKETS;
                (tickets[turn].clone(), Some(turn))
            }
        };
        let kind = if me.steps_done == STEPS - 1 {
            Req::Order
        } else {
            Req::Browse
        };
        let bytes = request(kind, me.steps_done, cookie.as_deref());
        let got =
            tokio::time::timeout_at(due + shared.timeout, exchange_from(&shared, source, &bytes))
                .await
                .unwrap_or_else(|_| answer(b"", Class::Timeout));
        let done = Instant::now();
        if got.waiting {
            match slot {
                Some(k) => tickets[k] = got.cookie.or(tickets[k].take()),
                // A pass that no longer works for this bot: forget it.
                None => {
                    lock(&bots.passes).retain(|p| Some(p) != cookie.as_ref());
                    pass = None;
                }
            }
            if done.saturating_duration_since(since) > BOT_ROTATE {
                tickets = vec![None; BOT_TICKETS];
                since = done;
            }
            let wait_s = got.retry_after.unwrap_or(1).max(1);
            due = done + Duration::from_secs(wait_s) / BOT_TICKETS as u32;
            continue;
        }
        if let Some(new) = got.cookie.filter(|c| c.starts_with("p.")) {
            lock(&bots.passes).push(new.clone());
            pass = Some(new);
        } else if pass.is_none() {
            pass = cookie;
        }
        if me.admitted.is_none() && matches!(got.class, Class::Success { .. }) {
            me.admitted = Some((due - shared.start).as_secs_f64());
        }
        match got.class {
            Class::Success { .. } => {
                me.steps_done += 1;
                due = done + THINK;
            }
            _ => due = done + Duration::from_secs(got.retry_after.unwrap_or(1).max(1)),
        }
    }
    lock(&book)[index] = me;
}

/// One shopper, from arrival until the end of the run.
async fn shop(shared: Arc<Shared>, index: usize, arrive: Instant, book: Arc<Mutex<Vec<Shopper>>>) {
    let mut cookie: Option<String> = None;
    let mut me = Shopper {
        arrived: (arrive - shared.start).as_secs_f64(),
        ..Shopper::default()
    };
    let mut due = arrive;
    while due < shared.end && me.steps_done < STEPS {
        tokio::time::sleep_until(due).await;
        let kind = if me.steps_done == STEPS - 1 {
            Req::Order
        } else {
            Req::Browse
        };
        lock(&shared.recorder).offered(due.into_std());
        let bytes = request(kind, me.steps_done, cookie.as_deref());
        let deadline = due + shared.timeout;
        let got = tokio::time::timeout_at(deadline, exchange(&shared, &bytes))
            .await
            .unwrap_or_else(|_| answer(b"", Class::Timeout));
        let done = Instant::now();
        lock(&shared.recorder).record(0, kind, due.into_std(), done.into_std(), got.class.clone());
        if let Some(c) = got.cookie {
            cookie = Some(c);
        }
        let raw = matches!(
            got.class,
            Class::OtherError { .. } | Class::Reset | Class::Timeout
        );
        let wait_s = got.retry_after.unwrap_or(1).max(1);
        if got.waiting {
            if me.first_estimate.is_none() {
                me.first_estimate = got.estimate;
            }
            due = done + Duration::from_secs(wait_s);
            continue;
        }
        if me.admitted.is_none() && !raw {
            me.admitted = Some((due - shared.start).as_secs_f64());
        }
        if me.admitted.is_some() {
            let took = done.saturating_duration_since(due).as_micros() as u64;
            lock(&shared.admitted_latency).saturating_record(took.max(1));
            let mut counts = lock(&shared.admitted_counts);
            counts.0 += 1;
            if matches!(got.class, Class::Page { .. }) {
                counts.1 += 1;
            }
            if raw {
                counts.2 += 1;
            }
        }
        match got.class {
            Class::Success { .. } => {
                me.steps_done += 1;
                due = done + THINK;
            }
            // A page (shed while admitted) or a raw error: the same step again.
            _ => due = done + Duration::from_secs(wait_s),
        }
    }
    lock(&book)[index] = me;
}

/// One sample of the room and the backend.
#[derive(Clone, Copy)]
struct Sample {
    t: f64,
    length: u64,
    admitted_per_s: f64,
    estimate_s: Option<f64>,
    backend_requests: u64,
    /// The room's pace (share of `admit_per_minute`) and its pool's queue wait.
    pace: f64,
    queue_wait_ms: u64,
}

fn sample(admin: SocketAddr, backend: SocketAddr, t: f64) -> Option<Sample> {
    let rooms = support::request(admin, "GET", "/rooms", &[], b"").ok()?;
    let rooms: Value = serde_json::from_slice(&rooms.body).ok()?;
    let room = &rooms["rooms"][0];
    let backend_requests = sample_backend(backend)?;
    Some(Sample {
        t,
        length: room["length"].as_u64().unwrap_or(0),
        admitted_per_s: room["admitted_per_minute"].as_f64().unwrap_or(0.0) / 60.0,
        estimate_s: room["estimated_wait_s"].as_f64(),
        backend_requests,
        pace: room["pace"].as_f64().unwrap_or(1.0),
        queue_wait_ms: room["pool_queue_wait_ms"].as_u64().unwrap_or(0),
    })
}

/// Requests the backend has served since it started.
fn sample_backend(backend: SocketAddr) -> Option<u64> {
    let stats = support::request(backend, "GET", "/__sim/stats", &[], b"").ok()?;
    let stats: Value = serde_json::from_slice(&stats.body).ok()?;
    Some(
        stats["listeners"]
            .as_object()
            .map(|l| l.values().filter_map(|v| v["requests"].as_u64()).sum())
            .unwrap_or(0),
    )
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

/// Keeps one keep-alive connection busy with requests that bypass the room
/// until `until`.
async fn saturate(addr: SocketAddr, until: Instant) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET /api/products/1 HTTP/1.1\r\nHost: shop.test\r\n{CALIBRATE_HEADER}: yes\r\n\r\n"
    );
    let mut buf = BytesMut::with_capacity(8192);
    while Instant::now() < until {
        buf.clear();
        if stream.write_all(request.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let eof = !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0);
            match complete_response(&buf, eof) {
                Ok(Some((_, close, _))) if !close && !eof => break,
                Ok(None) if !eof => {}
                _ => return,
            }
        }
    }
}

/// What the backend serves per second through ordergate when the pool is
/// saturated (closed loop, bypassing the room): the capacity utilisation is
/// measured against, besides the nominal one.
fn calibrate(ctx: &Ctx<'_>, addr: SocketAddr, backend: SocketAddr) -> Option<f64> {
    let count = move |t: f64| sample_backend(backend).map(|n| (t, n));
    let (begin, end) = ctx.rt.block_on(async {
        // A second to warm up connections, then the measured window.
        let until = Instant::now() + Duration::from_secs(1) + CALIBRATE_FOR;
        let tasks: Vec<_> = (0..CALIBRATE_CONNECTIONS)
            .map(|_| tokio::spawn(saturate(addr, until)))
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let begin = tokio::task::spawn_blocking(move || count(0.0))
            .await
            .ok()
            .flatten();
        tokio::time::sleep_until(until).await;
        let end = tokio::task::spawn_blocking(move || count(CALIBRATE_FOR.as_secs_f64()))
            .await
            .ok()
            .flatten();
        for task in tasks {
            let _ = task.await;
        }
        (begin, end)
    });
    let ((t0, n0), (t1, n1)) = (begin?, end?);
    (t1 > t0).then(|| n1.saturating_sub(n0) as f64 / (t1 - t0))
}

/// Runs the scenario.
/// The proxy's config gains the room.
fn room_tweaks() -> Tweaks {
    let room = format!(
        "\n[[rooms]]\nname = \"{ROOM}\"\nroutes = [\"all\"]\nsecret = \"{SECRET}\"\nmode = \"on_overload\"\n# The simulated crowd comes from one address.\nticket_rate_per_address = 1000000\nadmit_per_minute = {ADMIT_PER_MINUTE}\n[rooms.bypass]\nheader = \"{CALIBRATE_HEADER}\"\n"
    );
    Tweaks {
        edit: Some(Box::new(move |text: String| text + &room)),
        ..Tweaks::default()
    }
}

/// What the scalper phase measured.
struct ScalperPhase {
    honest: usize,
    bots: usize,
    honest_admitted: usize,
    bots_admitted: usize,
    honest_ordered: usize,
    bots_ordered: usize,
    /// Honest shoppers who waited, then were admitted: waits and |ETA
    /// errors|, sorted.
    waits: Vec<f64>,
    abs_errors: Vec<f64>,
}

/// `part` of `part + other`.
fn share(part: usize, other: usize) -> f64 {
    part as f64 / (part + other).max(1) as f64
}

/// The same sale on a fresh proxy, one arrival in ten a bot.
fn scalper_phase(ctx: &Ctx<'_>, d: f64, arrivals_per_s: f64) -> Result<ScalperPhase, String> {
    let backend = Backend::start(&scenarios::sim_flags(50, 0, Some(8)))?;
    let spec = ProxySpec {
        overload_guard: true,
        admin: true,
        ..ProxySpec::new(vec![backend.addr])
    };
    let target = Target::start_tweaked(Kind::Ordergate, &spec, &room_tweaks())?;
    let total = (arrivals_per_s * d) as usize;
    let start = Instant::now() + Duration::from_millis(100);
    let recorder = Recorder::new(
        "ordergate",
        start.into_std(),
        &[("scalpers".to_owned(), scenarios::secs(d), true)],
        &[Req::Browse, Req::Order],
    );
    let shared = Arc::new(Shared {
        addr: target.addrs[0],
        idle: Mutex::new(Vec::new()),
        permits: Semaphore::new(CONNECTIONS),
        recorder: Mutex::new(recorder),
        start,
        end: start + scenarios::secs(d),
        timeout: ctx.opts.timeout,
        admitted_latency: Mutex::new(stats::histogram(3)),
        admitted_counts: Mutex::new((0, 0, 0)),
    });
    let book = Arc::new(Mutex::new(vec![Shopper::default(); total]));
    let bots = Arc::new(Bots::default());
    ctx.rt.block_on(async {
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let arrive = start + Duration::from_secs_f64(i as f64 / arrivals_per_s);
            let (shared, book) = (Arc::clone(&shared), Arc::clone(&book));
            tasks.push(if i % BOT_EVERY == BOT_EVERY - 1 {
                tokio::spawn(scalp(shared, i, arrive, book, Arc::clone(&bots)))
            } else {
                tokio::spawn(shop(shared, i, arrive, book))
            });
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    drop(target);
    drop(backend);
    let shoppers = lock(&book).clone();
    let (bots_in, honest_in): (Vec<&Shopper>, Vec<&Shopper>) = shoppers.iter().partition(|s| s.bot);
    let mut waits = Vec::new();
    let mut abs_errors = Vec::new();
    for s in &honest_in {
        if let (Some(at), Some(estimate)) = (s.admitted, s.first_estimate) {
            waits.push(at - s.arrived);
            abs_errors.push((at - s.arrived - estimate).abs());
        }
    }
    waits.sort_by(f64::total_cmp);
    abs_errors.sort_by(f64::total_cmp);
    let admitted = |group: &[&Shopper]| group.iter().filter(|s| s.admitted.is_some()).count();
    let ordered = |group: &[&Shopper]| group.iter().filter(|s| s.steps_done == STEPS).count();
    Ok(ScalperPhase {
        honest: honest_in.len(),
        bots: bots_in.len(),
        honest_admitted: admitted(&honest_in),
        bots_admitted: admitted(&bots_in),
        honest_ordered: ordered(&honest_in),
        bots_ordered: ordered(&bots_in),
        waits,
        abs_errors,
    })
}

pub(crate) fn run(ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    let d = ctx.main_duration(60.0, 10.0, 5.0);
    let arrivals_per_s = OVERLOAD * OVERLOAD_CAPACITY / STEPS as f64;
    let mut notes = Vec::new();
    if ctx.targets.iter().any(|k| *k != Kind::Ordergate) {
        notes.push(
            "flash-sale-room runs ordergate only (nginx and HAProxy have no waiting room)."
                .to_owned(),
        );
    }
    let backend = Backend::start(&scenarios::sim_flags(50, 0, Some(8)))?;
    let spec = ProxySpec {
        overload_guard: true,
        admin: true,
        ..ProxySpec::new(vec![backend.addr])
    };
    let target = Target::start_tweaked(Kind::Ordergate, &spec, &room_tweaks())?;
    let pid = target.pid().ok_or("ordergate has no process id")?;
    let admin = target.admin.ok_or("ordergate has no admin listener")?;
    let addr = target.addrs[0];
    let calibrated = calibrate(ctx, addr, backend.addr);
    let total = (arrivals_per_s * d) as usize;
    eprintln!(
        "flash-sale-room: {total} shoppers at {arrivals_per_s:.0}/s for {d:.0} s ({OVERLOAD:.0}x of {OVERLOAD_CAPACITY:.0} req/s, {STEPS} requests each), room admit_per_minute {ADMIT_PER_MINUTE}"
    );

    let start = Instant::now() + Duration::from_millis(100);
    let end = start + scenarios::secs(d);
    let phase_name = format!("{OVERLOAD:.0}x through the room");
    let recorder = Recorder::new(
        "ordergate",
        start.into_std(),
        &[(phase_name.clone(), scenarios::secs(d), true)],
        &[Req::Browse, Req::Order],
    );
    let shared = Arc::new(Shared {
        addr,
        idle: Mutex::new(Vec::new()),
        permits: Semaphore::new(CONNECTIONS),
        recorder: Mutex::new(recorder),
        start,
        end,
        timeout: ctx.opts.timeout,
        admitted_latency: Mutex::new(stats::histogram(3)),
        admitted_counts: Mutex::new((0, 0, 0)),
    });
    let book = Arc::new(Mutex::new(vec![Shopper::default(); total]));
    let backend_addr = backend.addr;
    let every = if d >= 30.0 { 0.5 } else { 0.25 };
    let samples = ctx.rt.block_on(async {
        lock(&shared.recorder).phase_begin(0, start.into_std(), Some(procs::cpu_micros(pid)));
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let arrive = start + Duration::from_secs_f64(i as f64 / arrivals_per_s);
            tasks.push(tokio::spawn(shop(
                Arc::clone(&shared),
                i,
                arrive,
                Arc::clone(&book),
            )));
        }
        let mut samples = Vec::new();
        let mut n = 0u32;
        loop {
            let at = start + Duration::from_secs_f64(every * f64::from(n));
            if at > end {
                break;
            }
            tokio::time::sleep_until(at).await;
            let t = every * f64::from(n);
            if let Ok(Some(s)) =
                tokio::task::spawn_blocking(move || sample(admin, backend_addr, t)).await
            {
                samples.push(s);
            }
            n += 1;
        }
        lock(&shared.recorder).phase_done(
            0,
            Instant::now().into_std(),
            Some(procs::cpu_micros(pid)),
        );
        for task in tasks {
            let _ = task.await;
        }
        samples
    });
    let mut recorder = lock(&shared.recorder).clone();
    recorder.finish(start.elapsed());
    let shoppers = lock(&book).clone();
    let admitted_latency = Percentiles::of(&lock(&shared.admitted_latency));
    let (admitted_answers, admitted_pages, admitted_raw) = *lock(&shared.admitted_counts);

    // Utilisation after the ramp (the room forms once the pool queues).
    let ramp = (d / 5.0).min(2.0);
    let first = samples.iter().find(|s| s.t >= ramp - 1e-9);
    let last = samples.last();
    let served_per_s = match (first, last) {
        (Some(a), Some(b)) if b.t > a.t => {
            (b.backend_requests.saturating_sub(a.backend_requests)) as f64 / (b.t - a.t)
        }
        _ => 0.0,
    };
    let utilisation = served_per_s / OVERLOAD_CAPACITY;
    // Against what the pool serves when saturated through ordergate: the room
    // cannot make the backend busier than that.
    let of_saturation = calibrated.map(|c| served_per_s / c);
    let admitted: Vec<&Shopper> = shoppers.iter().filter(|s| s.admitted.is_some()).collect();
    let waited: Vec<(f64, f64, f64)> = shoppers
        .iter()
        .filter_map(|s| {
            let at = s.admitted?;
            let estimate = s.first_estimate?;
            Some((at, at - s.arrived, at - s.arrived - estimate))
        })
        .collect();
    let mut errors: Vec<f64> = waited.iter().map(|w| w.2).collect();
    errors.sort_by(f64::total_cmp);
    let mut abs_errors: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
    abs_errors.sort_by(f64::total_cmp);
    let mut waits: Vec<f64> = waited.iter().map(|w| w.1).collect();
    waits.sort_by(f64::total_cmp);
    let within = waited
        .iter()
        .filter(|w| {
            let estimate = w.1 - w.2;
            w.2.abs() <= 2.0 || w.2.abs() <= 0.25 * estimate
        })
        .count();
    let ordered = shoppers.iter().filter(|s| s.steps_done == STEPS).count();
    let counts = recorder.all_counts();
    let raw_errors = counts.raw_errors();

    let mut failures = Vec::new();
    // A smoke run is too short for the ramp to matter less than the load.
    match of_saturation {
        Some(share) if share < 0.95 && !ctx.smoke => failures.push(format!(
            "backend at {:.1}% of its saturated throughput after the ramp (target ≥ 95%)",
            share * 100.0
        )),
        None => failures.push("the calibration measured nothing".to_owned()),
        _ => {}
    }
    let run = TargetRun {
        kind: Kind::Ordergate,
        passes: vec![recorder],
        config: target.config.clone(),
        log_lines: target.log_lines(),
        error: None,
    };
    let runs = vec![run];
    failures.extend(scenarios::check_raw_errors(&runs, "flash-sale-room"));
    drop(target);
    drop(backend);
    let scalpers = scalper_phase(ctx, d, arrivals_per_s)?;
    let bots_arrived = share(scalpers.bots, scalpers.honest);
    let bots_ordered = share(scalpers.bots_ordered, scalpers.honest_ordered);
    if bots_ordered > bots_arrived && !ctx.smoke {
        failures.push(format!(
            "bots placed {:.1}% of the orders with {:.1}% of arrivals",
            bots_ordered * 100.0,
            bots_arrived * 100.0
        ));
    }

    // Per-second series for the chart and the JSON.
    let seconds = d.ceil() as usize;
    let mut admissions = vec![0u64; seconds.max(1)];
    for s in &admitted {
        if let Some(at) = s.admitted {
            admissions[(at as usize).min(seconds.max(1) - 1)] += 1;
        }
    }
    let mut eta_by_second: Vec<Vec<f64>> = vec![Vec::new(); seconds.max(1)];
    for (at, _, error) in &waited {
        eta_by_second[(*at as usize).min(seconds.max(1) - 1)].push(*error);
    }
    let eta_series: Vec<(f64, f64, f64, f64)> = eta_by_second
        .iter_mut()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, v)| {
            v.sort_by(f64::total_cmp);
            (
                i as f64 + 0.5,
                quantile(v, 0.1),
                quantile(v, 0.5),
                quantile(v, 0.9),
            )
        })
        .collect();
    let chart = report::report_dir(ctx.smoke).join("flash-sale-room-line.svg");
    let chart_note = match std::fs::create_dir_all(report::report_dir(ctx.smoke))
        .and_then(|()| std::fs::write(&chart, line_chart(&samples, &admissions, &eta_series, d)))
    {
        Ok(()) => format!("\nChart of the line: {}.", chart.display()),
        Err(why) => format!("\nCannot write {}: {why}.", chart.display()),
    };

    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "Flash sale through the room:\n\n| | |\n|---|--:|\n\
         | shoppers arrived | {total} |\n| admitted (from the line or directly) | {} |\n| ordered (all {STEPS} steps) | {ordered} |\n\
         | waiting at the end (`GET /rooms` length) | {} |\n\
         | pool saturated through ordergate (closed loop, {CALIBRATE_CONNECTIONS} connections bypassing the room) | {} req/s |\n\
         | backend served after {ramp:.0} s | {served_per_s:.1} req/s |\n\
         | backend utilisation: of the saturated throughput / of the nominal {OVERLOAD_CAPACITY:.0} req/s | **{}** / {:.1}% |\n\
         | raw errors (5xx without page, reset, timeout), all requests | **{raw_errors}** |\n\
         | admitted shoppers' requests | {admitted_answers} |\n\
         | of which pages (shed while admitted) / raw errors | {admitted_pages} / {admitted_raw} |\n\
         | admitted shoppers' latency p50 / p99 / max | {:.1} / **{:.1}** / {:.1} ms |\n\
         | shoppers who waited in line, then were admitted | {} |\n\
         | their wait p50 / p90 / max | {:.1} / {:.1} / {:.1} s |\n\
         | ETA error (actual wait − first estimate) p10 / p50 / p90 | {:+.1} / {:+.1} / {:+.1} s |\n\
         | \\|ETA error\\| p50 / p90 / p99 | {:.1} / {:.1} / {:.1} s |\n\
         | within ±25% or ±2 s of the first estimate | {within} of {} |",
        admitted.len(),
        samples.last().map_or(0, |s| s.length),
        calibrated.map_or("—".to_owned(), |c| format!("{c:.1}")),
        of_saturation.map_or("—".to_owned(), |u| format!("{:.1}%", u * 100.0)),
        utilisation * 100.0,
        admitted_latency.p50,
        admitted_latency.p99,
        admitted_latency.max,
        waited.len(),
        quantile(&waits, 0.5),
        quantile(&waits, 0.9),
        waits.last().copied().unwrap_or(0.0),
        quantile(&errors, 0.1),
        quantile(&errors, 0.5),
        quantile(&errors, 0.9),
        quantile(&abs_errors, 0.5),
        quantile(&abs_errors, 0.9),
        quantile(&abs_errors, 0.99),
        waited.len(),
    );
    summary.push_str(&chart_note);
    summary.push('\n');
    let _ = writeln!(
        summary,
        "\nScalpers (the same sale on a fresh proxy, one arrival in {BOT_EVERY} a bot on its own \
         address that hoards {BOT_TICKETS} tickets, retakes them every {} s and shares every pass with \
         the other bots):\n\n| | without bots | with bots |\n|---|--:|--:|\n\
         | bots' share of arrivals | — | {:.1}% |\n\
         | bots' share of admissions (a first request through) / of orders | — | {:.1}% / **{:.1}%** |\n\
         | honest shoppers admitted / ordered | {} / {ordered} | {} / {} of {} |\n\
         | honest wait p50 / p90 | {:.1} / {:.1} s | {:.1} / {:.1} s |\n\
         | honest \\|ETA error\\| p50 / p90 | {:.1} / {:.1} s | {:.1} / {:.1} s |",
        BOT_ROTATE.as_secs(),
        bots_arrived * 100.0,
        share(scalpers.bots_admitted, scalpers.honest_admitted) * 100.0,
        bots_ordered * 100.0,
        admitted.len(),
        scalpers.honest_admitted,
        scalpers.honest_ordered,
        scalpers.honest,
        quantile(&waits, 0.5),
        quantile(&waits, 0.9),
        quantile(&scalpers.waits, 0.5),
        quantile(&scalpers.waits, 0.9),
        quantile(&abs_errors, 0.5),
        quantile(&abs_errors, 0.9),
        quantile(&scalpers.abs_errors, 0.5),
        quantile(&scalpers.abs_errors, 0.9),
    );

    notes.push(format!(
        "One `ordergate sim` backend, capacity 8 at 50 ms ({OVERLOAD_CAPACITY:.0} req/s); ordergate \
         `max_in_flight = 8`, `[pools.queue] max_waiting = 64, timeout = \"500ms\"`, room `mode = \
         \"on_overload\"`, `admit_per_minute = {ADMIT_PER_MINUTE}` (the backend's capacity in shoppers), \
         `refresh` and `ticket_timeout` at their defaults (10 s, 60 s). Shoppers ask for JSON \
         (`Accept: application/json`), keep the room cookie, and check again after the page's \
         `Retry-After`; once admitted they make {STEPS} requests {} ms apart; a page while admitted is \
         retried after its `Retry-After`. They share {CONNECTIONS} keep-alive connections. Latency is from \
         the scheduled send time; the wait is from arrival to the scheduled time of the first request \
         that passed. Requests due after {d:.0} s are not sent: shoppers still in line then are not \
         admitted, so the ETA figures cover the shorter waits of the run.",
        THINK.as_millis()
    ));
    notes.push(
        "The `page` column counts the waiting page (503 `waiting_room`, the intended answer to a \
         shopper in line) with any other page."
            .to_owned(),
    );
    let series_json: Vec<Value> = samples
        .iter()
        .map(|s| {
            json!({"t_s": s.t, "length": s.length, "admitted_per_s_room": s.admitted_per_s,
                   "estimated_wait_s": s.estimate_s, "backend_requests": s.backend_requests,
                   "pace": s.pace, "pool_queue_wait_ms": s.queue_wait_ms})
        })
        .collect();
    Ok(ScenarioResult {
        name: "flash-sale-room".to_owned(),
        description: format!(
            "{total} simulated shoppers (3 product pages, then one order each) arrive at \
             {arrivals_per_s:.0}/s for {d:.0} s — {OVERLOAD:.0}x the {OVERLOAD_CAPACITY:.0} req/s one \
             backend can serve — through a `[[rooms]]` waiting room; ordergate only."
        ),
        runs,
        notes,
        summary,
        summary_json: json!({
            "shoppers": total, "arrivals_per_s": arrivals_per_s, "duration_s": d,
            "admitted": admitted.len(), "ordered": ordered,
            "backend_utilisation": utilisation, "saturated_req_per_s": calibrated,
            "backend_utilisation_of_saturated": of_saturation, "raw_errors": raw_errors,
            "admitted_requests": admitted_answers, "admitted_pages": admitted_pages,
            "admitted_raw_errors": admitted_raw,
            "admitted_latency_ms": {"p50": admitted_latency.p50, "p99": admitted_latency.p99, "max": admitted_latency.max},
            "waited_then_admitted": waited.len(),
            "wait_s": {"p50": quantile(&waits, 0.5), "p90": quantile(&waits, 0.9)},
            "eta_error_s": {"p10": quantile(&errors, 0.1), "p50": quantile(&errors, 0.5), "p90": quantile(&errors, 0.9),
                            "abs_p99": quantile(&abs_errors, 0.99)},
            "within_25pct_or_2s": within,
            "admissions_per_second": admissions,
            "eta_error_by_admission_second": eta_series.iter().map(|e| json!({"t_s": e.0, "p10": e.1, "p50": e.2, "p90": e.3})).collect::<Vec<_>>(),
            "samples": series_json,
            "scalpers": {
                "bots": scalpers.bots, "honest": scalpers.honest,
                "bots_admitted": scalpers.bots_admitted, "honest_admitted": scalpers.honest_admitted,
                "bots_ordered": scalpers.bots_ordered, "honest_ordered": scalpers.honest_ordered,
                "bot_share_of_arrivals": bots_arrived,
                "bot_share_of_admissions": share(scalpers.bots_admitted, scalpers.honest_admitted),
                "bot_share_of_orders": bots_ordered,
                "honest_wait_s": {"p50": quantile(&scalpers.waits, 0.5), "p90": quantile(&scalpers.waits, 0.9)},
                "honest_abs_eta_error_s": {"p50": quantile(&scalpers.abs_errors, 0.5), "p90": quantile(&scalpers.abs_errors, 0.9)},
            },
        }),
        failures,
    })
}

/// Three panels over time: the line's length, admissions per second (as the
/// shoppers saw them, and the room's own rate), and the ETA error of the
/// shoppers admitted in each second (p10, p50, p90).
fn line_chart(
    samples: &[Sample],
    admissions: &[u64],
    eta: &[(f64, f64, f64, f64)],
    d: f64,
) -> String {
    let (w, left, top, panel, gap) = (900.0, 70.0, 50.0, 170.0, 55.0);
    let plot = w - left - 170.0;
    let x = |t: f64| left + t / d.max(1.0) * plot;
    let height = top + 3.0 * panel + 2.0 * gap + 40.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="24" font-size="16" font-weight="bold">ordergate flash-sale-room: the line, admissions and ETA error over time</text>"#
    );
    type Line = (&'static str, &'static str, Vec<(f64, f64)>);
    let panels: [(&str, Vec<Line>); 3] = [
        (
            "queue length (GET /rooms)",
            vec![(
                "length",
                "#d62728",
                samples.iter().map(|s| (s.t, s.length as f64)).collect(),
            )],
        ),
        (
            "admissions per second",
            vec![
                (
                    "shoppers admitted",
                    "#1f77b4",
                    admissions
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (i as f64 + 0.5, *n as f64))
                        .collect(),
                ),
                (
                    "room's measured rate",
                    "#2ca02c",
                    samples.iter().map(|s| (s.t, s.admitted_per_s)).collect(),
                ),
            ],
        ),
        (
            "ETA error (s): actual wait − first estimate",
            vec![
                ("p90", "#ff7f0e", eta.iter().map(|e| (e.0, e.3)).collect()),
                ("p50", "#9467bd", eta.iter().map(|e| (e.0, e.2)).collect()),
                ("p10", "#8c564b", eta.iter().map(|e| (e.0, e.1)).collect()),
            ],
        ),
    ];
    for (i, (title, lines)) in panels.iter().enumerate() {
        let y0 = top + i as f64 * (panel + gap);
        let values = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1));
        let (lo, hi) = values.fold((0.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = (lo * 1.1, hi * 1.1);
        let y = |v: f64| y0 + panel - (v - lo) / (hi - lo) * panel;
        let _ = write!(
            out,
            r##"<rect x="{left}" y="{y0}" width="{plot}" height="{panel}" fill="none" stroke="#999"/><text x="{left}" y="{}" font-weight="bold">{title}</text><text x="{}" y="{}" text-anchor="end">{hi:.0}</text><text x="{}" y="{}" text-anchor="end">{lo:.0}</text><text x="{}" y="{}" text-anchor="end">{d:.0} s</text><text x="{left}" y="{}">0 s</text>"##,
            y0 - 6.0,
            left - 4.0,
            y0 + 10.0,
            left - 4.0,
            y0 + panel,
            left + plot,
            y0 + panel + 14.0,
            y0 + panel + 14.0,
        );
        if lo < 0.0 {
            let _ = write!(
                out,
                r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#bbb" stroke-dasharray="3,3"/><text x="{2}" y="{3:.1}" text-anchor="end">0</text>"##,
                y(0.0),
                left + plot,
                left - 4.0,
                y(0.0) + 4.0
            );
        }
        for (j, (name, color, points)) in lines.iter().enumerate() {
            let coords: Vec<String> = points
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let _ = write!(
                out,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{0}"/><line x1="{1}" y1="{2}" x2="{3}" y2="{2}" stroke="{color}" stroke-width="3"/><text x="{4}" y="{5}">{name}</text>"##,
                coords.join(" "),
                left + plot + 15.0,
                y0 + 10.0 + 18.0 * j as f64,
                left + plot + 35.0,
                left + plot + 40.0,
                y0 + 14.0 + 18.0 * j as f64,
            );
        }
    }
    out.push_str("</svg>\n");
    out
}
