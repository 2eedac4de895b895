//! Does every operation of the waiting room's line in Redis stay well inside
//! the store timeout (20 ms) with a million shoppers waiting (issue 23:
//! "every line operation does bounded work")? And does its cost stay flat
//! from 10 000 to 100 000 to 1 000 000 waiting?
//!
//! The bench starts its own `redis-server` (no persistence) on a free
//! loopback port, fills a room's line through the real [`RedisLine`] (many
//! arrivals at once on its multiplexed connections, as several instances
//! would), and at each size times every kind of operation, one call at a
//! time with nothing else running: the round trip this process waits for,
//! which is what the store timeout bounds. Then, at the largest size: nine
//! in ten tickets go stale and every call is timed while the sweep removes
//! them in batches; bursts of calls (a room resumed with many free slots);
//! and the opening of a room whose shoppers drew places before it.
//!
//! Time is the line's caller's clock (`RedisLine::on_callers_clock`), moved
//! by the bench: a million arrivals take 10 s of it, each timed operation 1 ms
//! (a sweep every 250), so tickets go stale exactly when the bench says,
//! however long the fill takes. In production the scripts read Redis's
//! `TIME` instead; the work is the same. The bench's own store timeout is 60 s,
//! so a slow call is measured rather than cut short by the fallback to memory.
//!
//! Besides the round trips (p50, p99, max), each row gives the scripts' mean
//! time on the server (`INFO commandstats`) and the mean Redis commands they
//! ran: the work itself, the same on any machine, where the times of a busy
//! machine also hold its scheduling delays.
//!
//! Run with `cargo bench --bench redis_line` (about 15 minutes on 2 cores);
//! `-- --quick` (or `ORDERGATE_BENCH_WAITING=20000`) fills to 20 000, in under a minute.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ordergate::store::redis::{Redis, RedisLine};
use ordergate::store::room::{Arrival, CheckIn, Control, Limits, LineStats, MemoryLine, RoomLine};
use ordergate::store::RedisConfig;
use ordergate::telemetry::Metrics;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What ordergate waits for one operation by default (`[store] timeout`).
const STORE_TIMEOUT_MS: f64 = 20.0;
/// The bench's own timeout: long enough to measure any call.
const BENCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The bench stops (and kills its Redis) after this long, whatever happens.
const DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Arrivals in flight at once while filling.
const FILL_AT_ONCE: u64 = 64;
/// The caller's clock between two arrivals of the fill: 100 000 a second.
const FILL_STEP_US: u64 = 10;
/// The caller's clock between two timed operations.
const OP_STEP_US: u64 = 1_000;
/// Shoppers on the site (passes) while the line forms.
const ACTIVE: u64 = 1_000;
/// A whole minute between check-ins is generous; ten keeps the arithmetic of
/// the sweep phase simple (see [`sweep`]).
const TICKET_TIMEOUT: Duration = Duration::from_secs(600);

/// The room as configured: `max_active = 1000`, `admit_per_minute = 2400`.
fn full() -> Limits {
    Limits {
        may_call: true,
        paused: false,
        open: true,
        max_active: Some(ACTIVE),
        per_second: Some(40.0),
        session: Duration::from_secs(300),
        max_session: Duration::from_secs(1800),
        max_waiting: None,
        ticket_timeout: TICKET_TIMEOUT,
    }
}

/// Calls one ticket per operation (a token a millisecond), so the check-in
/// at the head is called and picks its pass up.
fn calling() -> Limits {
    Limits {
        max_active: None,
        per_second: Some(1_000.0),
        ..full()
    }
}

/// Before `opens_at`: arrivals draw.
fn before_opening() -> Limits {
    Limits {
        may_call: false,
        open: false,
        ..full()
    }
}

/// The caller's clock of the line, in µs from `origin`.
struct Clock {
    origin: Instant,
    us: AtomicU64,
}

impl Clock {
    fn at(&self, us: u64) -> Instant {
        self.origin + Duration::from_micros(us)
    }

    fn us(&self) -> u64 {
        self.us.load(Ordering::Relaxed)
    }

    fn set(&self, us: u64) {
        self.us.store(us, Ordering::Relaxed);
    }

    /// Moves on by `us` and gives the new instant.
    fn tick(&self, us: u64) -> Instant {
        self.at(self.us.fetch_add(us, Ordering::Relaxed) + us)
    }
}

/// A `redis-server` of this bench on a free loopback port, without
/// persistence; killed on drop (or by the deadline's watchdog).
struct RedisServer {
    port: u16,
    child: Arc<Mutex<Option<Child>>>,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
            // Scripts that ran 5 ms or more on the server, whoever waited.
            .args([
                "--slowlog-log-slower-than",
                "5000",
                "--slowlog-max-len",
                "100000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer {
            port,
            child: Arc::new(Mutex::new(Some(child))),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.command("PING").is_none_or(|r| !r.contains("PONG")) {
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One inline command; the reply's first line (a bulk reply read whole).
    fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).ok()?;
        match first.strip_prefix('$') {
            Some(len) => {
                let len: usize = len.trim().parse().ok()?;
                let mut body = vec![0; len];
                reader.read_exact(&mut body).ok()?;
                String::from_utf8(body).ok()
            }
            None => Some(first),
        }
    }

    fn info(&self, section: &str, field: &str) -> Option<String> {
        let info = self.command(&format!("INFO {section}"))?;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
    }

    /// Starts counting the scripts' time on the server again.
    fn reset_stats(&self) {
        let _ = self.command("CONFIG RESETSTAT");
    }

    /// Since [`RedisServer::reset_stats`]: the mean time of one script on
    /// the server (µs), and the mean of the commands it ran (the work, on
    /// any machine).
    fn script_stats(&self) -> Option<(f64, f64)> {
        let stats = self.command("INFO commandstats")?;
        let (mut scripts, mut usec, mut commands) = (0.0, 0.0, 0.0);
        for line in stats.lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            match name {
                "evalsha" | "eval" => {
                    scripts += field("calls");
                    usec += field("usec");
                }
                // The bench's own (and redis-rs's script loading).
                n if n.starts_with("info")
                    || n.starts_with("config")
                    || n.starts_with("slowlog")
                    || n.starts_with("script")
                    || n.starts_with("client")
                    || n.starts_with("hello") => {}
                _ => commands += field("calls"),
            }
        }
        (scripts > 0.0).then(|| (usec / scripts, commands / scripts))
    }

    /// Timings of one kind of operation, the server's count started again.
    fn begin(&self, name: &str, waiting: u64) -> Timings {
        self.reset_stats();
        Timings::new(name, waiting)
    }

    /// The server's mean time per script since [`RedisServer::begin`].
    fn end(&self, timings: &mut Timings) {
        timings.server = self.script_stats();
    }

    fn used_memory(&self) -> f64 {
        self.info("memory", "used_memory")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Scripts of 5 ms or more on the server since the last call, and the
    /// longest of them (ms); the log starts again.
    fn slow_scripts(&self) -> (u64, f64) {
        let Ok(client) = redis::Client::open(self.url()) else {
            return (0, 0.0);
        };
        let Ok(mut connection) = client.get_connection() else {
            return (0, 0.0);
        };
        type Entry = (i64, i64, i64, redis::Value, redis::Value, redis::Value);
        let entries: Vec<Entry> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(-1)
            .query(&mut connection)
            .unwrap_or_default();
        let _: redis::RedisResult<()> = redis::cmd("SLOWLOG").arg("RESET").query(&mut connection);
        let longest = entries.iter().map(|e| e.2).max().unwrap_or(0);
        (entries.len() as u64, longest as f64 / 1000.0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().ok().and_then(|mut c| c.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Times of one kind of operation, in ms.
struct Timings {
    name: String,
    waiting: u64,
    ms: Vec<f64>,
    /// The scripts on the Redis server: mean time (µs) and commands.
    server: Option<(f64, f64)>,
}

impl Timings {
    fn new(name: &str, waiting: u64) -> Timings {
        Timings {
            name: name.to_owned(),
            waiting,
            ms: Vec::new(),
            server: None,
        }
    }

    fn push(&mut self, started: std::time::Instant) {
        self.ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }

    fn max(&self) -> f64 {
        self.ms.iter().copied().fold(0.0, f64::max)
    }

    fn print(&self) {
        let max = self.max();
        let verdict = if max < STORE_TIMEOUT_MS / 2.0 {
            ""
        } else if max < STORE_TIMEOUT_MS {
            "  (over half the timeout)"
        } else {
            "  OVER THE 20 ms TIMEOUT"
        };
        println!(
            "{:<50} {:>9} {:>8.3} {:>8.3} {:>8.3} {:>6} {:>9} {:>6}{verdict}",
            self.name,
            thousands(self.waiting),
            self.quantile(0.5),
            self.quantile(0.99),
            max,
            self.ms.len(),
            self.server
                .map_or_else(|| "-".to_owned(), |(us, _)| format!("{us:.0}")),
            self.server
                .map_or_else(|| "-".to_owned(), |(_, commands)| format!("{commands:.0}"))
        );
    }
}

fn header() {
    println!(
        "{:<50} {:>9} {:>8} {:>8} {:>8} {:>6} {:>9} {:>6}",
        "operation", "waiting", "p50 ms", "p99 ms", "max ms", "calls", "server µs", "cmds"
    );
}

fn thousands(n: u64) -> String {
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

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// The shoppers of one room as the bench knows them.
struct Room {
    line: Arc<RedisLine>,
    clock: Arc<Clock>,
    /// Tickets in line, by ticket number (the line's order).
    tickets: Vec<u64>,
    /// How many from the front were called by the head check-ins.
    head: usize,
    /// Passes on the site and their holders.
    passes: Vec<(u64, u64)>,
    /// The next shopper's number (their client tag is `2n + 1`).
    next_shopper: u64,
}

impl Room {
    fn new(redis: &Arc<Redis>, name: &str) -> Room {
        let line =
            RedisLine::new(Arc::clone(redis), name, Arc::new(MemoryLine::new())).on_callers_clock();
        Room {
            line: Arc::new(line),
            clock: Arc::new(Clock {
                origin: Instant::now(),
                us: AtomicU64::new(1_000_000),
            }),
            tickets: Vec::new(),
            head: 0,
            passes: Vec::new(),
            next_shopper: 0,
        }
    }

    fn shopper(&mut self) -> u64 {
        self.next_shopper += 1;
        self.next_shopper * 2 + 1
    }

    /// `count` arrivals, `FILL_AT_ONCE` in flight, each `FILL_STEP_US` of the
    /// caller's clock after the one before; their tickets join `tickets`.
    /// The real time it took.
    async fn fill(&mut self, count: u64, limits: Limits) -> Duration {
        let started = std::time::Instant::now();
        let base = self.clock.us();
        let first = self.next_shopper;
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for _ in 0..FILL_AT_ONCE.min(count) {
            let (line, clock, next) = (
                Arc::clone(&self.line),
                Arc::clone(&self.clock),
                Arc::clone(&next),
            );
            tasks.spawn(async move {
                let mut tickets = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return tickets;
                    }
                    let now = clock.at(base + i * FILL_STEP_US);
                    let client = (first + i + 1) * 2 + 1;
                    match line.arrive(client, now, &limits, false).await.0 {
                        Arrival::Waiting { seq, .. } | Arrival::Drawn { seq, .. } => {
                            tickets.push(seq);
                        }
                        other => panic!("an arrival of the fill got {other:?}"),
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            self.tickets.extend(done.expect("a fill task"));
        }
        self.tickets.sort_unstable();
        self.next_shopper += count;
        self.clock.set(base + count * FILL_STEP_US);
        started.elapsed()
    }

    /// One arrival at a time, timed.
    async fn arrive_one(&mut self, limits: &Limits, timings: &mut Timings) -> Arrival {
        let client = self.shopper();
        let now = self.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let (arrival, _) = self.line.arrive(client, now, limits, false).await;
        timings.push(started);
        if let Arrival::Waiting { seq, .. } = arrival {
            self.tickets.push(seq);
        }
        arrival
    }

    async fn stats(&self, limits: &Limits) -> LineStats {
        self.line.stats(self.clock.tick(OP_STEP_US), limits).await
    }
}

/// Times `reps` calls of every kind of operation on a line of `waiting`.
async fn time_operations(
    server: &RedisServer,
    room: &mut Room,
    waiting: u64,
    reps: usize,
) -> Vec<Timings> {
    let limits = full();
    let mut all = Vec::new();

    let mut t = server.begin("arrive (a new ticket at the back)", waiting);
    for _ in 0..reps {
        let arrival = room.arrive_one(&limits, &mut t).await;
        assert!(matches!(arrival, Arrival::Waiting { .. }), "{arrival:?}");
    }
    server.end(&mut t);
    all.push(t);

    let back = room.tickets.len() - room.tickets.len() / 100;
    let mut t = server.begin("check_in at the back (the last 1%)", waiting);
    for _ in 0..reps {
        let seq = room.tickets[fastrand::usize(back..room.tickets.len())];
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let (found, _) = room.line.check_in(seq, 1, now, &limits).await;
        t.push(started);
        assert!(matches!(found, CheckIn::Waiting { .. }), "{found:?}");
    }
    server.end(&mut t);
    all.push(t);

    let mut t = server.begin("check_in anywhere in line", waiting);
    for _ in 0..reps {
        // (Beyond the few called ahead of the head check-ins.)
        let seq = room.tickets[fastrand::usize(room.head + 50..room.tickets.len())];
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let (found, _) = room.line.check_in(seq, 1, now, &limits).await;
        t.push(started);
        assert!(matches!(found, CheckIn::Waiting { .. }), "{found:?}");
    }
    server.end(&mut t);
    all.push(t);

    // The head is called (one a millisecond) and picks the pass up.
    let calling = calling();
    let mut t = server.begin("check_in at the head: called, pass picked up", waiting);
    let mut admitted = 0;
    for _ in 0..reps {
        let seq = room.tickets[room.head];
        room.head += 1;
        let client = room.shopper();
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let (found, _) = room.line.check_in(seq, client, now, &calling).await;
        t.push(started);
        if let CheckIn::Admitted(a) = found {
            admitted += 1;
            room.passes.push((a.pass, client));
        }
    }
    assert!(
        admitted * 10 >= reps * 9,
        "{admitted} of {reps} head check-ins admitted"
    );
    server.end(&mut t);
    all.push(t);

    let mut t = server.begin("touch (a pass in use)", waiting);
    for i in 0..reps {
        let (pass, client) = room.passes[i % room.passes.len()];
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let in_use = room.line.touch(pass, client, now, &limits).await;
        t.push(started);
        assert!(in_use, "pass {pass} in use");
    }
    server.end(&mut t);
    all.push(t);

    let mut t = server.begin("stats", waiting);
    for _ in 0..reps {
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let stats = room.line.stats(now, &limits).await;
        t.push(started);
        assert!(stats.waiting + 2 * reps as u64 >= waiting, "{stats:?}");
    }
    server.end(&mut t);
    all.push(t);

    let mut t = server.begin("control (read)", waiting);
    for _ in 0..reps {
        let started = std::time::Instant::now();
        let control = room.line.control().await;
        t.push(started);
        assert_eq!(control, Control::Auto);
    }
    server.end(&mut t);
    all.push(t);

    let mut t = server.begin("set_control", waiting);
    for _ in 0..reps {
        let started = std::time::Instant::now();
        room.line.set_control(Control::Auto).await;
        t.push(started);
    }
    server.end(&mut t);
    all.push(t);
    all
}

/// Nine in ten tickets go stale: one in ten checks in, then the clock passes
/// `ticket_timeout` for the rest, and each operation after (stats, an
/// arrival, a check-in in turn, 1 ms apart) is timed while the stale ones
/// leave in batches. Also the
/// tickets abandoned, and how many still wait.
async fn sweep(server: &RedisServer, room: &mut Room, reps: usize) -> (Timings, u64, u64) {
    let limits = full();
    let before = room.stats(&limits).await;
    // Everyone joined within the first minute of the clock: move it to
    // `ticket_timeout` after the start, where nobody is stale yet, and
    // refresh every tenth place (the shoppers still there).
    room.clock.set(TICKET_TIMEOUT.as_micros() as u64);
    let keep: Vec<u64> = room.tickets[room.head..]
        .iter()
        .copied()
        .step_by(10)
        .collect();
    let now = room.clock.at(room.clock.us());
    let chunk = keep.len().div_ceil(FILL_AT_ONCE as usize).max(1);
    let mut tasks = JoinSet::new();
    for part in keep.chunks(chunk) {
        let (line, part) = (Arc::clone(&room.line), part.to_vec());
        tasks.spawn(async move {
            for seq in part {
                let _ = line.check_in(seq, 1, now, &limits).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    // A minute later: past `ticket_timeout` for everyone but them.
    room.clock.tick(60_000_000);
    let stale = before.waiting.saturating_sub(keep.len() as u64);
    let mut t = server.begin(
        &format!("sweep: each call while {} stale leave", thousands(stale)),
        before.waiting,
    );
    let mut last = before;
    let mut still = 0;
    // Every entry the sweeps remove (passes, calls, places), a batch a call,
    // and then some: the loop ends once nothing more leaves.
    let most = (before.waiting + before.called + before.active) as usize / 25 + reps;
    for i in 0..most {
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        match i % 3 {
            0 => {
                let stats = room.line.stats(now, &limits).await;
                t.push(started);
                if stats.abandoned == last.abandoned {
                    still += 1;
                } else {
                    still = 0;
                }
                last = stats;
            }
            1 => {
                let client = room.shopper();
                let _ = room.line.arrive(client, now, &limits, false).await;
                t.push(started);
            }
            _ => {
                let seq = keep[fastrand::usize(..keep.len())];
                let _ = room.line.check_in(seq, 1, now, &limits).await;
                t.push(started);
            }
        }
        if still >= 5 {
            break;
        }
    }
    server.end(&mut t);
    let after = room.stats(&limits).await;
    (t, after.abandoned - before.abandoned, after.waiting)
}

/// `burst` slots free up at once (a room resumed after a pause, or a large
/// `max_active`, with no `admit_per_minute`): every operation is timed until
/// `burst` tickets are called. The tickets called, in how many calls.
async fn burst_of_calls(server: &RedisServer, room: &mut Room, burst: u64) -> (Timings, u64) {
    let limits = full();
    let before = room.stats(&limits).await;
    let open = Limits {
        max_active: Some(before.active + before.called + burst),
        per_second: None,
        ..limits
    };
    let mut t = server.begin(
        &format!("{} slots free at once: each call", thousands(burst)),
        before.waiting,
    );
    let mut called = 0;
    while called < burst && t.ms.len() < burst as usize {
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let stats = room.line.stats(now, &open).await;
        t.push(started);
        called = stats.called.saturating_sub(before.called);
    }
    server.end(&mut t);
    // (Called in ticket order, from the head.)
    room.head += called as usize;
    (t, called)
}

/// Draws of the opening not yet written into the line (`o_left` of the
/// line's state hash).
fn draws_left(server: &RedisServer, room: &str) -> u64 {
    server
        .command(&format!("HGET bench:room:{room}:s o_left"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A room whose `draws` shoppers drew before the opening: their arrivals and
/// check-ins, then every call from the opening on while the draws are
/// written into the line (stats and check-ins of draws, in turn), and
/// check-ins after.
async fn opening(
    server: &RedisServer,
    redis: &Arc<Redis>,
    draws: u64,
    reps: usize,
) -> Vec<Timings> {
    let name = format!("opening-{draws}");
    let mut room = Room::new(redis, &name);
    let closed = before_opening();
    room.fill(draws, closed).await;
    let mut all = Vec::new();
    let mut t = server.begin("arrive before the opening (a draw)", draws);
    for _ in 0..reps {
        let arrival = room.arrive_one(&closed, &mut t).await;
        if let Arrival::Drawn { seq, .. } = arrival {
            room.tickets.push(seq);
        }
    }
    server.end(&mut t);
    all.push(t);
    let mut t = server.begin("check_in of a draw before the opening", draws);
    for _ in 0..reps {
        let seq = room.tickets[fastrand::usize(..room.tickets.len())];
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let (found, _) = room.line.check_in(seq, 1, now, &closed).await;
        t.push(started);
        assert!(matches!(found, CheckIn::Drawn { .. }), "{found:?}");
    }
    server.end(&mut t);
    all.push(t);
    let open = Limits {
        open: true,
        may_call: true,
        ..closed
    };
    let mut t = server.begin("the opening: each call while draws are placed", draws);
    loop {
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        if t.ms.len() % 2 == 0 {
            let stats = room.line.stats(now, &open).await;
            t.push(started);
            assert_eq!(stats.drawn, 0, "{stats:?}");
        } else {
            let seq = room.tickets[fastrand::usize(..room.tickets.len())];
            let (found, _) = room.line.check_in(seq, 1, now, &open).await;
            t.push(started);
            assert!(
                matches!(found, CheckIn::Waiting { .. } | CheckIn::Admitted(_)),
                "{found:?}"
            );
        }
        // (Polled every tenth call: the poll is a command too.)
        if (t.ms.len() % 10 == 0 && draws_left(server, &name) == 0) || t.ms.len() as u64 > draws {
            break;
        }
    }
    server.end(&mut t);
    all.push(t);
    let mut t = server.begin("check_in of a draw after the opening", draws);
    for _ in 0..reps {
        let seq = room.tickets[fastrand::usize(..room.tickets.len())];
        let now = room.clock.tick(OP_STEP_US);
        let started = std::time::Instant::now();
        let (found, _) = room.line.check_in(seq, 1, now, &open).await;
        t.push(started);
        assert!(
            matches!(found, CheckIn::Waiting { .. } | CheckIn::Admitted(_)),
            "{found:?}"
        );
    }
    server.end(&mut t);
    all.push(t);
    all
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let most: u64 = std::env::var("ORDERGATE_BENCH_WAITING")
        .ok()
        .and_then(|v| v.replace(['_', ' '], "").parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 })
        .max(10_000);
    let reps = if quick { 200 } else { 500 };
    let sizes = [(most / 100).max(1_000), most / 10, most];
    let one_at_a_time = (sizes[0] / 2).min(5_000);

    let Some(server) = RedisServer::start() else {
        println!(
            "redis_line: redis-server did not start; install it (apt-get install redis-server)"
        );
        return;
    };
    // Whatever happens, the bench and its Redis stop by the deadline.
    let child = Arc::clone(&server.child);
    std::thread::spawn(move || {
        std::thread::sleep(DEADLINE);
        if let Some(mut child) = child.lock().ok().and_then(|mut c| c.take()) {
            let _ = child.kill();
        }
        eprintln!(
            "redis_line: stopped at the {} s deadline",
            DEADLINE.as_secs()
        );
        std::process::exit(2);
    });
    let version = server
        .info("server", "redis_version")
        .unwrap_or_else(|| "?".to_owned());
    let metrics = Metrics::new();
    let redis = Arc::new(
        Redis::new(
            RedisConfig {
                url: server.url(),
                password: None,
                key_prefix: "bench:".to_owned(),
                timeout: BENCH_TIMEOUT,
                pool_size: 4,
            },
            metrics.store.clone(),
        )
        .expect("valid settings"),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let answered = |what: &str| {
        assert_eq!(
            metrics.store.fallbacks(),
            0,
            "{what}: an operation fell back to memory; the figures would not be Redis's"
        );
    };

    println!(
        "waiting-room line in redis-server {version} (loopback, no persistence), up to {} waiting;",
        thousands(most)
    );
    println!("each time is one call's round trip from this process, alone; the store timeout is {STORE_TIMEOUT_MS} ms");
    let empty = server.used_memory();
    let mut room = Room::new(&redis, "sale");
    runtime.block_on(async {
        // The site fills up first: a thousand shoppers walk in.
        for _ in 0..ACTIVE {
            let client = room.shopper();
            let now = room.clock.tick(FILL_STEP_US);
            match room.line.arrive(client, now, &full(), true).await.0 {
                Arrival::Admitted(a) => room.passes.push((a.pass, client)),
                other => panic!("a first shopper got {other:?}"),
            }
        }
        // One arrival at a time: what a single caller gets.
        let mut one = Timings::new("arrive", 0);
        for _ in 0..one_at_a_time {
            room.arrive_one(&full(), &mut one).await;
        }
        let seconds = one.ms.iter().sum::<f64>() / 1000.0;
        let rate = one_at_a_time as f64 / seconds;
        println!(
            "fill one at a time: {} arrivals in {seconds:.2} s, {rate:.0}/s ({:.0} s for {})",
            thousands(one_at_a_time),
            most as f64 / rate,
            thousands(most)
        );
    });
    answered("one at a time");

    let mut summary: Vec<Vec<Timings>> = Vec::new();
    for &size in &sizes {
        let more = size.saturating_sub((room.tickets.len() - room.head) as u64);
        let took = runtime.block_on(room.fill(more, full()));
        answered("fill");
        let used = server.used_memory();
        println!(
            "fill to {}: {} arrivals, {FILL_AT_ONCE} at once, in {:.1} s ({:.0}/s); Redis used_memory {} ({:.0} bytes a waiting ticket)",
            thousands(size),
            thousands(more),
            took.as_secs_f64(),
            more as f64 / took.as_secs_f64().max(1e-9),
            mib(used),
            (used - empty) / size as f64
        );
        let _ = server.slow_scripts();
        let timings = runtime.block_on(time_operations(&server, &mut room, size, reps));
        answered("operations");
        let (slow, longest) = server.slow_scripts();
        header();
        for t in &timings {
            t.print();
        }
        println!("  scripts of 5 ms or more on the server: {slow} (longest {longest:.1} ms)");
        summary.push(timings);
    }

    header();
    for burst in [1_000, 10_000, 100_000] {
        if burst * 5 > most {
            break;
        }
        let (t, called) = runtime.block_on(burst_of_calls(&server, &mut room, burst));
        answered("bursts");
        let (slow, longest) = server.slow_scripts();
        t.print();
        println!(
            "  {} called in {} calls; scripts of 5 ms or more: {slow} (longest {longest:.1} ms)",
            thousands(called),
            t.ms.len()
        );
    }

    let (swept, removed, left) = runtime.block_on(sweep(&server, &mut room, reps));
    answered("sweep");
    let (slow, longest) = server.slow_scripts();
    swept.print();
    println!(
        "  {} tickets abandoned in {} calls ({} still waiting); scripts of 5 ms or more: {slow} (longest {longest:.1} ms)",
        thousands(removed),
        swept.ms.len(),
        thousands(left)
    );

    for &size in &sizes {
        let timings = runtime.block_on(opening(&server, &redis, size, reps));
        answered("opening");
        let (slow, longest) = server.slow_scripts();
        for t in &timings {
            t.print();
        }
        println!(
            "  scripts of 5 ms or more: {slow} (longest {longest:.1} ms); Redis used_memory {}",
            mib(server.used_memory())
        );
    }

    println!();
    println!("p50 / max ms by line length (flat = bounded work):");
    print!("{:<50}", "operation");
    for &size in &sizes {
        print!(" {:>17}", thousands(size));
    }
    println!();
    for (i, first) in summary[0].iter().enumerate() {
        print!("{:<50}", first.name);
        for at_size in &summary {
            let t = &at_size[i];
            print!(
                " {:>17}",
                format!("{:.3} / {:.3}", t.quantile(0.5), t.max())
            );
        }
        println!();
    }
}
