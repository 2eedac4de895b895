//! `soak`: does ordergate stay correct and flat over a long run where
//! everything happens at once? Mixed traffic (GETs, keyed and unkeyed order
//! POSTs) over keep-alive connections to three backends while one backend
//! cycles through faults, the config is reloaded and another backend process
//! is killed and restarted on the same port. It reports what shoppers must
//! never see (raw errors), whether any client request made two orders, the
//! orders whose answer was lost, and ordergate's memory and open files over
//! time ("flat after warm-up": the last tenth of the run within 10% of the
//! second tenth — minute 2 against minute 10 in the default 10-minute run).
//!
//! Order accounting: every POST carries its sequence number in the body
//! (`"ref"`), each simulated backend is its own process with its own order
//! book and a second, never-faulted listener through which the bench reads
//! every order back (`GET /api/orders/ord-N`) — before each restart and at the
//! end. So each client request is matched with the orders it made.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{self, Event, Kind as Req, Ledger, Sent};
use crate::procs::{self, Backend, Kind, ProxySpec, Target};
use crate::scenarios::{self, Ctx, ScenarioResult, TargetRun};
use crate::stats::Class;
use crate::{report, support};

/// The faults backend b0 goes through, one per slot, in this order (the
/// first slot of the run is fault-free). Each patch clears the previous fault.
const FAULTS: [(&str, &str); 6] = [
    (
        "reset",
        r#"{"fault":"reset","status":null,"capacity":null}"#,
    ),
    (
        "reset_after_body",
        r#"{"fault":"reset_after_body","status":null,"capacity":null}"#,
    ),
    ("hang", r#"{"fault":"hang","status":null,"capacity":null}"#),
    (
        "slow_body",
        r#"{"fault":"slow_body","status":null,"capacity":null}"#,
    ),
    (
        "status 500",
        r#"{"fault":null,"status":500,"capacity":null}"#,
    ),
    ("capacity 4", r#"{"fault":null,"status":null,"capacity":4}"#),
];

/// Backend latency of the soak fleet: 10 ± 5 ms.
const LATENCY: &str = r#"{"latency_ms":10,"jitter_ms":5}"#;
/// The side listener answers at once.
const NO_LATENCY: &str = r#"{"latency_ms":0,"jitter_ms":0}"#;
/// How long a backend refuses new requests before it is killed, so the orders
/// of the requests it is serving are made (and counted) before it dies.
const REFUSE_BEFORE_KILL: Duration = Duration::from_millis(300);

/// Intervals of the full-length run, in seconds: fault, reload, restart, sample.
const FULL: (f64, f64, f64, f64) = (30.0, 20.0, 120.0, 10.0);
/// Length of the full run, in seconds; shorter runs scale the intervals.
const FULL_LENGTH: f64 = 600.0;

/// One simulated backend process: the listener ordergate sends to and the
/// listener the bench reads orders through (same order book).
struct Sim {
    proc: Option<Backend>,
    pool: SocketAddr,
    side: SocketAddr,
    /// Orders read back so far from the current process.
    harvested: u64,
    /// How many times it was started.
    incarnation: u32,
}

/// One order read back from a backend.
struct Order {
    /// The `"ref"` of the client request that made it.
    reference: Option<u64>,
    /// Which backend process made it (`b1#2`: b1, second process).
    book: String,
}

/// The fleet and what was read back from it, shared with the restart events.
struct Books {
    sims: Vec<Sim>,
    orders: Vec<Order>,
    /// Sum of `orders_created` of every process, read before it died or at the end.
    created: u64,
    restarts: Vec<String>,
}

impl Books {
    fn start(n: usize) -> Result<Books, String> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut sims = Vec::new();
        for _ in 0..n {
            let (proc, addrs) = Backend::start_listeners(&[any, any], &[])?;
            let (pool, side) = match addrs[..] {
                [pool, side] => (pool, side),
                _ => return Err("ordergate sim: expected two addresses".to_owned()),
            };
            let sim = Sim {
                proc: Some(proc),
                pool,
                side,
                harvested: 0,
                incarnation: 1,
            };
            sim.set_modes()?;
            sims.push(sim);
        }
        Ok(Books {
            sims,
            orders: Vec::new(),
            created: 0,
            restarts: Vec::new(),
        })
    }

    /// Reads back the orders backend `i` made since the last harvest.
    fn harvest(&mut self, i: usize) -> Result<(), String> {
        let sim = &mut self.sims[i];
        let book = format!("b{i}#{}", sim.incarnation);
        let mut conn = KeepAlive::connect(sim.side)?;
        let stats = conn.get_json("/__sim/stats")?;
        let created = stats["orders_created"]
            .as_u64()
            .ok_or("/__sim/stats: no orders_created")?;
        for n in sim.harvested + 1..=created {
            let order = conn.get_json(&format!("/api/orders/ord-{n:06}"))?;
            self.orders.push(Order {
                reference: order["item"]["ref"].as_u64(),
                book: book.clone(),
            });
        }
        self.created += created.saturating_sub(sim.harvested);
        sim.harvested = created;
        Ok(())
    }

    /// Stops new requests on backend `i`, reads its orders back, kills it
    /// (SIGKILL) and starts a new process on the same two ports.
    fn restart(&mut self, i: usize) -> Result<(), String> {
        mode(self.sims[i].pool, r#"{"fault":"refuse"}"#)?;
        std::thread::sleep(REFUSE_BEFORE_KILL);
        self.harvest(i)?;
        let sim = &mut self.sims[i];
        if let Some(proc) = sim.proc.take() {
            procs::signal(proc.pid(), "KILL")?;
            drop(proc);
        }
        // The ports were just freed: retry a bind that races their release.
        let mut last = String::new();
        for _ in 0..20 {
            match Backend::start_listeners(&[sim.pool, sim.side], &[]) {
                Ok((proc, _)) => {
                    sim.proc = Some(proc);
                    sim.harvested = 0;
                    sim.incarnation += 1;
                    return sim.set_modes();
                }
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("restart of b{i} failed: {last}"))
    }
}

impl Sim {
    fn set_modes(&self) -> Result<(), String> {
        mode(self.pool, LATENCY)?;
        mode(self.side, NO_LATENCY)
    }
}

fn mode(addr: SocketAddr, patch: &str) -> Result<(), String> {
    let response = support::request(
        addr,
        "PUT",
        "/__sim/mode",
        &[("content-type", "application/json")],
        patch.as_bytes(),
    )
    .map_err(|e| format!("PUT {addr}/__sim/mode: {e:?}"))?;
    if response.status == 200 {
        Ok(())
    } else {
        Err(format!("PUT {addr}/__sim/mode: status {}", response.status))
    }
}

/// A blocking HTTP/1.1 keep-alive connection for reading orders back (tens of
/// thousands of requests: one connection, not one per request).
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(addr: SocketAddr) -> Result<KeepAlive, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        Ok(KeepAlive {
            stream,
            buf: Vec::new(),
        })
    }

    fn get_json(&mut self, path: &str) -> Result<Value, String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: sim\r\n\r\n");
        self.stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("GET {path}: {e}"))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| format!("GET {path}: no content-length"))?;
                if self.buf.len() >= end + 4 + length {
                    let status_ok = head.starts_with("http/1.1 200");
                    let body: Vec<u8> = self.buf.drain(..end + 4 + length).skip(end + 4).collect();
                    if !status_ok {
                        return Err(format!(
                            "GET {path}: {}",
                            head.lines().next().unwrap_or_default()
                        ));
                    }
                    return serde_json::from_slice(&body)
                        .map_err(|e| format!("GET {path}: bad JSON: {e}"));
                }
            }
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| format!("GET {path}: {e}"))?;
            if n == 0 {
                return Err(format!("GET {path}: connection closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// ordergate's resident memory and open files at one moment.
#[derive(Clone, Copy)]
struct Sample {
    /// Seconds from the start of the soak phase (after the warm-up).
    t: f64,
    rss_kib: u64,
    fds: usize,
}

/// Runs the soak.
pub(crate) fn run(ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    let d = ctx.main_duration(FULL_LENGTH, 20.0, 20.0);
    let rate = ctx.opts.rate.unwrap_or(300.0);
    let scale = (d / FULL_LENGTH).min(1.0);
    let fault_every = (FULL.0 * scale).max(2.0);
    let reload_every = (FULL.1 * scale).max(1.0);
    let restart_every = (FULL.2 * scale).max(5.0);
    let sample_every = (FULL.3 * scale).clamp(1.0, 10.0);
    // ordergate waits 1 s per try (3 tries for what may be retried) and a
    // slow body takes 4 s: the client waits longer, so a timeout is ordergate's.
    let timeout = ctx.opts.timeout.max(Duration::from_secs(10));
    let mut notes = Vec::new();
    if ctx.targets.iter().any(|k| *k != Kind::Ordergate) {
        notes.push("soak runs ordergate only; the other targets were left out.".to_owned());
    }

    let books = Arc::new(Mutex::new(Books::start(3)?));
    let (pools, b0) = {
        let b = lock(&books);
        (
            b.sims.iter().map(|s| s.pool).collect::<Vec<_>>(),
            b.sims[0].pool,
        )
    };
    let spec = ProxySpec {
        health: true,
        read_timeout: Duration::from_secs(1),
        admin: true,
        ..ProxySpec::new(pools)
    };
    let target = Target::start(Kind::Ordergate, &spec)?;
    let pid = target.pid().ok_or("ordergate has no process id")?;

    let warmup = ctx.warmup().as_secs_f64();
    let slices = 10;
    let mut phases = vec![scenarios::warmup_phase(ctx, rate)];
    for i in 0..slices {
        let (a, b) = (
            d * i as f64 / slices as f64,
            d * (i + 1) as f64 / slices as f64,
        );
        phases.push(scenarios::phase(
            &format!("{a:.0}–{b:.0} s"),
            scenarios::open(rate),
            d / slices as f64,
        ));
    }
    let mix = vec![Req::Browse, Req::Checkout, Req::Order];
    let mut plan = ctx.plan("ordergate", &target, phases, mix);
    plan.timeout = timeout;
    // A slow body holds a connection 4 s: b0's third of the load alone keeps
    // about 400 busy, and a request waiting for a free client connection would
    // count against ordergate.
    plan.pool = ctx.opts.pool.unwrap_or(1024);
    let ledger: Ledger = Arc::new(Mutex::new(Vec::new()));
    plan.ledger = Some(Arc::clone(&ledger));

    let mut events = Vec::new();
    let mut k = 1;
    while k as f64 * fault_every < d {
        let (name, patch) = FAULTS[(k - 1) % FAULTS.len()];
        events.push(scenarios::mode_event(
            warmup + k as f64 * fault_every,
            &format!("b0 {name}"),
            b0,
            patch,
        ));
        k += 1;
    }
    let mut at = reload_every;
    while at < d {
        let (how, action) = scenarios::reload_action(Kind::Ordergate, &target)?;
        events.push(Event {
            at: scenarios::secs(warmup + at),
            label: how,
            action,
        });
        at += reload_every;
    }
    // Restarts alternate between b1 and b2: b0 carries the faults.
    let mut at = restart_every;
    let mut which = 1;
    while at < d {
        let books = Arc::clone(&books);
        let i = which;
        events.push(Event {
            at: scenarios::secs(warmup + at),
            label: format!("restart b{i}"),
            action: Box::new(move || {
                let mut books = lock(&books);
                let result = books.restart(i);
                books.restarts.push(match &result {
                    Ok(()) => format!("b{i} restarted at {at:.0} s"),
                    Err(why) => format!("b{i} at {at:.0} s: {why}"),
                });
                result
            }),
        });
        which = 3 - which;
        at += restart_every;
    }
    events.sort_by_key(|e| e.at);
    plan.events = events;
    let fault_names: Vec<&str> = FAULTS.iter().map(|f| f.0).collect();
    eprintln!(
        "soak: {d:.0} s at {rate:.0} req/s; b0 fault every {fault_every:.0} s ({}), reload every \
         {reload_every:.0} s, restart of b1/b2 every {restart_every:.0} s, RSS and fds every {sample_every:.0} s",
        fault_names.join(", ")
    );

    let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(Vec::new()));
    let cpu: Arc<dyn Fn() -> Option<u64> + Send + Sync> =
        Arc::new(move || Some(procs::cpu_micros(pid)));
    let recorder = ctx.rt.block_on(async {
        let sampler = {
            let samples = Arc::clone(&samples);
            tokio::spawn(async move {
                let start = tokio::time::Instant::now() + scenarios::secs(warmup);
                let mut n = 0u32;
                loop {
                    let at = start + Duration::from_secs_f64(sample_every * f64::from(n));
                    tokio::time::sleep_until(at).await;
                    if let (Some(rss_kib), Some(fds)) = (procs::rss_kib(pid), procs::open_fds(pid))
                    {
                        lock(&samples).push(Sample {
                            t: sample_every * f64::from(n),
                            rss_kib,
                            fds,
                        });
                    }
                    n += 1;
                }
            })
        };
        let recorder = client::run(plan, cpu).await;
        sampler.abort();
        recorder
    });

    // Every answer is in: read the remaining orders back.
    let mut failures = Vec::new();
    {
        let mut b = lock(&books);
        for i in 0..b.sims.len() {
            if let Err(why) = b.harvest(i) {
                failures.push(format!("reading the orders of b{i} back: {why}"));
            }
        }
    }
    let alive = procs::rss_kib(pid).is_some();
    let run = TargetRun {
        kind: Kind::Ordergate,
        passes: vec![recorder],
        config: target.config.clone(),
        log_lines: target.log_lines(),
        error: None,
    };
    drop(target);
    failures.extend(scenarios::check_raw_errors(
        std::slice::from_ref(&run),
        "soak",
    ));
    if !alive {
        failures.push("ordergate was gone at the end of the soak".to_owned());
    }

    let sent = lock(&ledger).clone();
    let books = lock(&books);
    let accounting = account(&sent, &books.orders);
    let samples = lock(&samples).clone();
    let flat = flatness(&samples, d);
    if accounting.duplicates > 0 {
        failures.push(format!(
            "{} client requests made two or more orders (target 0)",
            accounting.duplicates
        ));
    }
    if accounting.answered_without_order > 0 {
        failures.push(format!(
            "{} POSTs answered 2xx with no order found",
            accounting.answered_without_order
        ));
    }
    if d >= 300.0 {
        for (what, ok) in [("RSS", flat.rss_ok), ("open files", flat.fds_ok)] {
            if !ok {
                failures.push(format!(
                    "{what} not flat after warm-up (see the soak summary)"
                ));
            }
        }
    }

    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "Orders (every POST carries a ref; each backend process's orders are read back before it is killed and at the end):\n"
    );
    let _ = writeln!(summary, "| | keyed (Idempotency-Key) | unkeyed | all |");
    let _ = writeln!(summary, "|---|--:|--:|--:|");
    for (label, keyed, unkeyed) in accounting.rows() {
        let _ = writeln!(
            summary,
            "| {label} | {keyed} | {unkeyed} | {} |",
            keyed + unkeyed
        );
    }
    let _ = writeln!(
        summary,
        "\nOrders created (sum of the sims' `orders_created` over {} processes): {}; read back: {}; 201s the clients saw for POSTs: {}; difference {} = orders whose answer was lost {} + extra orders {} (duplicates {}, same key in two order books {}) − 2xx without an order {}.",
        3 + books.restarts.len(),
        books.created,
        books.orders.len(),
        accounting.created_201,
        books.created as i64 - accounting.created_201 as i64,
        accounting.lost_answer.0 + accounting.lost_answer.1,
        accounting.extra_orders,
        accounting.duplicates,
        accounting.separate_books,
        accounting.answered_without_order,
    );
    if !accounting.lost_by_answer.is_empty() {
        let parts: Vec<String> = accounting
            .lost_by_answer
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            summary,
            "\nWhat the shoppers whose order was made without their knowing got: {}.",
            parts.join(", ")
        );
    }
    let _ = writeln!(
        summary,
        "\nordergate's memory and open files (every {sample_every:.0} s; window means):\n\n\
         | | second tenth ({:.0}–{:.0} s) | last tenth ({:.0}–{:.0} s) | change | flat (≤ 10%) |\n|---|--:|--:|--:|---|\n\
         | RSS MiB | {:.1} | {:.1} | {:+.1}% | {} |\n| open files | {:.0} | {:.0} | {:+.1}% | {} |",
        d * 0.1,
        d * 0.2,
        d * 0.9,
        d,
        flat.rss.0 / 1024.0,
        flat.rss.1 / 1024.0,
        change(flat.rss),
        yes(flat.rss_ok),
        flat.fds.0,
        flat.fds.1,
        change(flat.fds),
        yes(flat.fds_ok),
    );
    let lows = cycle_lows(
        &samples,
        fault_every * (FAULTS.len() + 1) as f64,
        fault_every * FAULTS.len() as f64,
    );
    if !lows.is_empty() {
        let cells: Vec<String> = lows
            .iter()
            .map(|(from, rss, fds)| {
                format!(
                    "from {from:.0} s: {:.1} MiB, {fds} files",
                    *rss as f64 / 1024.0
                )
            })
            .collect();
        let _ = writeln!(
            summary,
            "
Low point of each full fault cycle ({:.0} s; the quiet moment between the bursts a fault causes, where a leak would show as a rising floor): {}.",
            fault_every * FAULTS.len() as f64,
            cells.join("; ")
        );
    }
    let _ = writeln!(summary, "\nRestarts: {}.", books.restarts.join("; "));
    let memory_svg = report::report_dir(ctx.smoke).join("soak-memory.svg");
    if let Err(why) = std::fs::create_dir_all(report::report_dir(ctx.smoke))
        .and_then(|()| std::fs::write(&memory_svg, memory_chart(&samples, d)))
    {
        eprintln!("cannot write {}: {why}", memory_svg.display());
    } else {
        let _ = writeln!(summary, "\nMemory chart: {}.", memory_svg.display());
    }

    notes.push(format!(
        "Client timeout {} ms (ordergate: 1 s per try, up to 3 tries; a slow body takes 4 s). Backends: \
         3 `ordergate sim` processes, 10 ± 5 ms, each with its own order book. Before a restart the \
         backend refuses new requests for {} ms (connections closed unanswered) so that the orders it is \
         making are made and counted before the SIGKILL; the crash of a request mid-way is what the \
         `reset` and `reset_after_body` faults do.",
        timeout.as_millis(),
        REFUSE_BEFORE_KILL.as_millis()
    ));
    notes.push(
        "A keyed POST whose backend made the order and then reset (`reset_after_body`) is retried by \
         ordergate with its key on another backend; with one order book per sim process the key is \
         unknown there, so a second order is made (\"same key in two order books\"). With backends \
         sharing one database, as in production, the second try is answered from the first order."
            .to_owned(),
    );
    let samples_json: Vec<Value> = samples
        .iter()
        .map(|s| json!({"t_s": s.t, "rss_kib": s.rss_kib, "open_fds": s.fds}))
        .collect();
    Ok(ScenarioResult {
        name: "soak".to_owned(),
        description: format!(
            "ordergate only, {d:.0} s at {rate:.0} req/s over keep-alive connections: GET /api/products/N, \
             keyed POST /api/orders (Idempotency-Key) and unkeyed POST /api/orders in turn, 3 backends \
             (round robin, active health checks every 1 s, read timeout 1 s). Backend b0 changes fault \
             every {fault_every:.0} s (none, then {}); `POST /reload` every {reload_every:.0} s; b1 or b2 \
             killed and restarted on the same port every {restart_every:.0} s.",
            fault_names.join(" → ")
        ),
        runs: vec![run],
        notes,
        summary,
        summary_json: json!({
            "rate_per_s": rate,
            "duration_s": d,
            "fault_every_s": fault_every,
            "reload_every_s": reload_every,
            "restart_every_s": restart_every,
            "sample_every_s": sample_every,
            "orders": accounting.to_json(books.created, books.orders.len()),
            "restarts": books.restarts,
            "flat": {
                "rss_kib_second_tenth": flat.rss.0, "rss_kib_last_tenth": flat.rss.1, "rss_flat": flat.rss_ok,
                "fds_second_tenth": flat.fds.0, "fds_last_tenth": flat.fds.1, "fds_flat": flat.fds_ok,
            },
            "samples": samples_json,
            "cycle_lows": lows.iter().map(|(from, rss, fds)| json!({"from_s": from, "rss_kib": rss, "open_fds": fds})).collect::<Vec<_>>(),
        }),
        failures,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn change((a, b): (f64, f64)) -> f64 {
    if a > 0.0 {
        (b / a - 1.0) * 100.0
    } else {
        0.0
    }
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}

/// Each client request matched with the orders it made.
#[derive(Default)]
struct Accounting {
    /// POSTs sent (keyed, unkeyed).
    posts: (u64, u64),
    /// Answered 201 (keyed, unkeyed).
    created: (u64, u64),
    /// Answered 200 as an idempotent replay (keyed).
    replayed: u64,
    /// Answered with a page or a raw error and made no order (keyed, unkeyed).
    no_order: (u64, u64),
    /// Made one order but the shopper did not get the 2xx (keyed, unkeyed).
    lost_answer: (u64, u64),
    /// What those shoppers got instead.
    lost_by_answer: std::collections::BTreeMap<String, u64>,
    /// Client requests with two or more orders in one book, or unkeyed.
    duplicates: u64,
    /// Keyed requests with one order in each of two books.
    separate_books: u64,
    /// Orders beyond the first per client request.
    extra_orders: u64,
    /// 2xx answers for which no order was found.
    answered_without_order: u64,
    /// Duplicated requests the client itself sent twice.
    duplicates_resent: u64,
    /// Orders whose ref matches no request.
    unknown_orders: u64,
    /// 201s seen by the clients.
    created_201: u64,
}

impl Accounting {
    fn rows(&self) -> Vec<(&'static str, u64, u64)> {
        vec![
            ("POSTs sent", self.posts.0, self.posts.1),
            ("answered 201 (order made)", self.created.0, self.created.1),
            ("answered 200 (idempotent replay)", self.replayed, 0),
            (
                "page or raw error, no order made",
                self.no_order.0,
                self.no_order.1,
            ),
            (
                "order made, answer lost (shopper got a page)",
                self.lost_answer.0,
                self.lost_answer.1,
            ),
            (
                "**duplicates** (two orders for one request)",
                0,
                self.duplicates,
            ),
            (
                "same key, one order in each of two books",
                self.separate_books,
                0,
            ),
            ("2xx but no order found", self.answered_without_order, 0),
        ]
    }

    fn to_json(&self, created: u64, read_back: usize) -> Value {
        json!({
            "orders_created_by_sims": created,
            "orders_read_back": read_back,
            "client_201s": self.created_201,
            "posts": {"keyed": self.posts.0, "unkeyed": self.posts.1},
            "answered_201": {"keyed": self.created.0, "unkeyed": self.created.1},
            "answered_replay_200": self.replayed,
            "no_order": {"keyed": self.no_order.0, "unkeyed": self.no_order.1},
            "order_made_answer_lost": {"keyed": self.lost_answer.0, "unkeyed": self.lost_answer.1},
            "lost_answers_got": self.lost_by_answer,
            "duplicates": self.duplicates,
            "duplicates_sent_twice_by_the_client": self.duplicates_resent,
            "same_key_in_two_books": self.separate_books,
            "extra_orders": self.extra_orders,
            "answered_2xx_without_order": self.answered_without_order,
            "orders_with_unknown_ref": self.unknown_orders,
        })
    }
}

fn account(sent: &[Sent], orders: &[Order]) -> Accounting {
    let mut by_ref: HashMap<u64, Vec<&str>> = HashMap::new();
    let mut a = Accounting::default();
    for order in orders {
        match order.reference {
            Some(r) => by_ref.entry(r).or_default().push(&order.book),
            None => a.unknown_orders += 1,
        }
    }
    let refs: std::collections::HashSet<u64> = sent.iter().map(|s| s.seq).collect();
    a.unknown_orders += by_ref
        .iter()
        .filter(|(r, _)| !refs.contains(r))
        .map(|(_, books)| books.len() as u64)
        .sum::<u64>();
    for s in sent {
        let keyed = s.kind == Req::Checkout;
        let bump = |pair: &mut (u64, u64)| {
            if keyed {
                pair.0 += 1
            } else {
                pair.1 += 1
            }
        };
        bump(&mut a.posts);
        let status = match &s.class {
            Class::Success { status } => Some(*status),
            _ => None,
        };
        let answered = status.is_some_and(|st| (200..300).contains(&st));
        if status == Some(201) {
            bump(&mut a.created);
            a.created_201 += 1;
        } else if answered {
            a.replayed += 1;
        }
        let books = by_ref.get(&s.seq).map_or(&[][..], Vec::as_slice);
        match books.len() {
            0 if answered => a.answered_without_order += 1,
            0 => bump(&mut a.no_order),
            1 if !answered => {
                bump(&mut a.lost_answer);
                *a.lost_by_answer.entry(describe(&s.class)).or_default() += 1;
            }
            1 => {}
            n => {
                a.extra_orders += n as u64 - 1;
                let mut distinct = books.to_vec();
                distinct.sort_unstable();
                distinct.dedup();
                if keyed && distinct.len() == n {
                    a.separate_books += 1;
                } else {
                    a.duplicates += 1;
                    if s.resent {
                        a.duplicates_resent += 1;
                    }
                }
                if !answered {
                    *a.lost_by_answer.entry(describe(&s.class)).or_default() += 1;
                }
            }
        }
    }
    a
}

fn describe(class: &Class) -> String {
    match class {
        Class::Success { status } => format!("{status}"),
        Class::Page { status, reason, .. } => format!("{status} page {reason}"),
        Class::OtherError { status } => format!("raw {status}"),
        Class::Reset => "reset".to_owned(),
        Class::Timeout => "timeout".to_owned(),
    }
}

/// The lowest RSS (KiB) and open files of each full fault cycle that begins at
/// `first` + k × `cycle`: (start, RSS, files).
fn cycle_lows(samples: &[Sample], first: f64, cycle: f64) -> Vec<(f64, u64, usize)> {
    let end = samples.last().map_or(0.0, |s| s.t);
    let mut out = Vec::new();
    // The warm-up and the fault-free first slot form cycle 0.
    let mut from = 0.0;
    let mut to = first;
    while to <= end + 1e-6 {
        let inside: Vec<&Sample> = samples.iter().filter(|s| s.t >= from && s.t < to).collect();
        if let (Some(rss), Some(fds)) = (
            inside.iter().map(|s| s.rss_kib).min(),
            inside.iter().map(|s| s.fds).min(),
        ) {
            out.push((from, rss, fds));
        }
        from = to;
        to += cycle;
    }
    out
}

/// Window means of the second and last tenths of the run, and whether the
/// last is within 10% of the second.
struct Flatness {
    rss: (f64, f64),
    fds: (f64, f64),
    rss_ok: bool,
    fds_ok: bool,
}

fn flatness(samples: &[Sample], d: f64) -> Flatness {
    let mean = |from: f64, to: f64, f: &dyn Fn(&Sample) -> f64| -> f64 {
        let inside: Vec<f64> = samples
            .iter()
            .filter(|s| s.t >= from - 1e-6 && s.t <= to + 1e-6)
            .map(f)
            .collect();
        if inside.is_empty() {
            // Too few samples: the one nearest the window's middle.
            let mid = (from + to) / 2.0;
            samples
                .iter()
                .min_by(|a, b| (a.t - mid).abs().total_cmp(&(b.t - mid).abs()))
                .map_or(0.0, f)
        } else {
            inside.iter().sum::<f64>() / inside.len() as f64
        }
    };
    let rss = |s: &Sample| s.rss_kib as f64;
    let fds = |s: &Sample| s.fds as f64;
    let pair = |f: &dyn Fn(&Sample) -> f64| (mean(d * 0.1, d * 0.2, f), mean(d * 0.9, d, f));
    let (r, f) = (pair(&rss), pair(&fds));
    let ok = |(a, b): (f64, f64)| a > 0.0 && (b / a - 1.0).abs() <= 0.10;
    Flatness {
        rss: r,
        fds: f,
        rss_ok: ok(r),
        fds_ok: ok(f),
    }
}

/// RSS (MiB) and open files over time, two panels.
fn memory_chart(samples: &[Sample], d: f64) -> String {
    let (w, left, top, panel, gap) = (900.0, 70.0, 50.0, 200.0, 60.0);
    let plot = w - left - 30.0;
    let x = |t: f64| left + t / d.max(1.0) * plot;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{left}" y="24" font-size="16" font-weight="bold">ordergate soak: resident memory and open files</text>"#,
        top + 2.0 * panel + gap + 40.0
    );
    type Series<'a> = (&'a str, &'a dyn Fn(&Sample) -> f64);
    let series: [Series<'_>; 2] = [
        ("RSS (MiB)", &|s: &Sample| s.rss_kib as f64 / 1024.0),
        ("open files", &|s: &Sample| s.fds as f64),
    ];
    for (i, (title, f)) in series.iter().enumerate() {
        let y0 = top + i as f64 * (panel + gap);
        let max = samples.iter().map(f).fold(1.0, f64::max) * 1.15;
        let y = |v: f64| y0 + panel - v / max * panel;
        let _ = write!(
            out,
            r##"<rect x="{left}" y="{y0}" width="{plot}" height="{panel}" fill="none" stroke="#999"/><text x="{left}" y="{}" font-weight="bold">{title}</text><text x="{}" y="{}" text-anchor="end">{max:.0}</text><text x="{}" y="{}" text-anchor="end">0</text><text x="{}" y="{}" text-anchor="end">{d:.0} s</text>"##,
            y0 - 6.0,
            left - 4.0,
            y0 + 10.0,
            left - 4.0,
            y0 + panel,
            left + plot,
            y0 + panel + 14.0
        );
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t), y(f(s))))
            .collect();
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="#d62728" stroke-width="2" points="{}"/>"##,
            points.join(" ")
        );
    }
    out.push_str("</svg>\n");
    out
}
