//! `connections`: what does a shopper who keeps a connection open cost, and
//! what happens when there are more shoppers than descriptors? Up to 10 000
//! keep-alive shoppers (the descriptor limit minus headroom) connect to each
//! proxy, send one request and go idle: the proxy's resident memory growth
//! divided by the connections is its memory per idle connection. Then each
//! shopper sends a request every few seconds: CPU, p99 and errors at that
//! many connections. ordergate alone then runs under `prlimit --nofile=N`
//! with more shoppers than descriptors (new ones should wait or be refused,
//! existing ones be served, nothing crash), and with an upstream keep-alive
//! pool of 1024 against 1 to isolate the memory of an idle pooled *backend*
//! connection. `--read-buffer 1024,4096,...` repeats ordergate's part for each
//! `server.read_buffer` and adds the CPU per request of the `steady` closed
//! loop for small GETs, 256 KiB POST bodies and 256 KiB answers.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{self, complete_response, Kind as Req, Load, Phase};
use crate::procs::{self, Kind, ProxySpec, Target, Tweaks};
use crate::scenarios::{self, Ctx, ScenarioResult, TargetRun};
use crate::stats::{self, Class, Percentiles, PhaseStats};

/// Shoppers opened per second during the ramp.
const RAMP_RATE: f64 = 2000.0;
/// Descriptors this process keeps free besides the shoppers' connections.
const HEADROOM: u64 = 500;
/// Descriptor limit of ordergate in the limit phase.
const LIMIT: u64 = 256;
/// Connections of the pooled-backend measurement (under 2 × the default
/// `max_in_flight` of 256, so none waits in ordergate's queue).
const POOLED: usize = 500;

/// How the shoppers of a run are told what to do.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    /// Connect, one request, then wait.
    Ramp,
    /// One request every interval from this instant.
    Active(Instant),
    /// Close.
    End,
}

/// How requests ended, and the latency of the answers.
struct Tally {
    ok: u64,
    page: u64,
    status_5xx: u64,
    reset: u64,
    timeout: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            ok: 0,
            page: 0,
            status_5xx: 0,
            reset: 0,
            timeout: 0,
            latency: stats::histogram(3),
        }
    }

    fn add(&mut self, class: &Class, took: Duration) {
        match class {
            Class::Success { .. } => self.ok += 1,
            Class::Page { .. } => self.page += 1,
            Class::OtherError { .. } => self.status_5xx += 1,
            Class::Reset => self.reset += 1,
            Class::Timeout => self.timeout += 1,
        }
        if !matches!(class, Class::Timeout) {
            self.latency
                .saturating_record((took.as_micros() as u64).max(1));
        }
    }

    fn total(&self) -> u64 {
        self.ok + self.page + self.status_5xx + self.reset + self.timeout
    }

    fn errors(&self) -> u64 {
        self.status_5xx + self.reset + self.timeout
    }

    fn to_json(&self) -> Value {
        let p = Percentiles::of(&self.latency);
        json!({
            "requests": self.total(), "ok": self.ok, "page": self.page, "unmarked_5xx": self.status_5xx,
            "reset": self.reset, "timeout": self.timeout, "p50_ms": p.p50, "p99_ms": p.p99, "max_ms": p.max,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One keep-alive connection of a shopper.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// Opens a connection within `timeout`; `Err` carries how it failed.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, Class> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(Class::Timeout),
        Ok(Err(_)) => Err(Class::Reset),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(Conn {
                stream,
                buf: BytesMut::with_capacity(1024),
            })
        }
    }
}

/// One GET on `conn`, answered by `deadline`. Returns the class and whether
/// the connection can carry another request.
async fn get(conn: &mut Conn, id: u64, deadline: Instant) -> (Class, bool) {
    let request = format!(
        "GET /api/products/{} HTTP/1.1\r\nHost: shop.test\r\nAccept: application/json\r\nUser-Agent: ordergate-shopper\r\n\r\n",
        id % 1000
    );
    let exchange = async {
        if conn.stream.write_all(request.as_bytes()).await.is_err() {
            return (Class::Reset, false);
        }
        loop {
            match complete_response(&conn.buf, false) {
                Ok(Some((class, close, used))) => {
                    conn.buf.advance(used);
                    return (class, !close);
                }
                Ok(None) => {}
                Err(()) => return (Class::Reset, false),
            }
            match conn.stream.read_buf(&mut conn.buf).await {
                Ok(0) | Err(_) => {
                    return match complete_response(&conn.buf, true) {
                        Ok(Some((class, _, _))) => (class, false),
                        _ => (Class::Reset, false),
                    }
                }
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(result) => result,
        Err(_) => (Class::Timeout, false),
    }
}

/// Shared by the shoppers of one run.
struct Shoppers {
    addr: SocketAddr,
    timeout: Duration,
    interval: Duration,
    ramp: Mutex<Tally>,
    active: Mutex<Tally>,
    /// Shoppers whose first request has ended (whatever the way).
    ramped: AtomicU64,
    /// Shoppers connected and idle after their first answer.
    idle: AtomicU64,
    stage: watch::Receiver<Stage>,
}

async fn shopper(s: Arc<Shoppers>, id: u64) {
    let began = Instant::now();
    let mut conn = match connect(s.addr, s.timeout).await {
        Ok(conn) => Some(conn),
        Err(class) => {
            lock(&s.ramp).add(&class, began.elapsed());
            s.ramped.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if let Some(c) = conn.as_mut() {
        let (class, reusable) = get(c, id, began + s.timeout).await;
        lock(&s.ramp).add(&class, began.elapsed());
        if reusable {
            s.idle.fetch_add(1, Ordering::Relaxed);
        } else {
            conn = None;
        }
    }
    s.ramped.fetch_add(1, Ordering::Relaxed);
    let mut stage = s.stage.clone();
    let start = loop {
        match *stage.borrow_and_update() {
            Stage::Active(start) => break start,
            Stage::End => return,
            Stage::Ramp => {}
        }
        if stage.changed().await.is_err() {
            return;
        }
    };
    let mut next = start + s.interval.mul_f64(fastrand::f64());
    let mut n = id;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stage.changed() => {}
        }
        if *stage.borrow() == Stage::End {
            return;
        }
        if Instant::now() < next {
            continue;
        }
        if conn.is_none() {
            match connect(s.addr, s.timeout).await {
                Ok(c) => conn = Some(c),
                Err(class) => {
                    lock(&s.active).add(&class, next.elapsed());
                    next += s.interval;
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            n += 7919;
            let (class, reusable) = get(c, n, next + s.timeout).await;
            lock(&s.active).add(&class, next.elapsed());
            if !reusable {
                conn = None;
            }
        }
        next += s.interval;
    }
}

/// What one target (or ordergate variant) measured.
struct Measured {
    label: String,
    shoppers: u64,
    rss_before_kib: u64,
    rss_idle_kib: u64,
    rss_active_kib: u64,
    rss_closed_kib: u64,
    fds_idle: usize,
    ramp_seconds: f64,
    idle_cpu_share: f64,
    active_cpu_us: u64,
    active_seconds: f64,
    ramp: Tally,
    active: Tally,
    /// µs of proxy CPU per request in closed loop: (kind, µs, req/s).
    steady: Vec<(&'static str, Option<f64>, f64)>,
    config: String,
    recorders: Vec<crate::stats::Recorder>,
}

impl Measured {
    fn per_idle_conn(&self) -> f64 {
        (self.rss_idle_kib as f64 - self.rss_before_kib as f64) * 1024.0
            / self.ramp.ok.max(1) as f64
    }

    fn cpu_per_request(&self) -> f64 {
        self.active_cpu_us as f64 / self.active.total().max(1) as f64
    }
}

/// The descriptors this process may open.
fn nofile_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Runs the scenario.
pub(crate) fn run(ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    let limit = nofile_limit();
    let wanted = ctx.opts.connections.unwrap_or(10_000) as u64;
    let mut n = wanted.min(limit.saturating_sub(HEADROOM)).max(1);
    let mut notes = Vec::new();
    if ctx.targets.contains(&Kind::Haproxy) && n > (limit - HEADROOM.min(limit)) / 2 {
        // HAProxy sets aside two descriptors per connection of its maxconn and
        // will not start above its hard limit: every target gets the same count.
        n = (limit - HEADROOM.min(limit)) / 2;
        notes.push(format!(
            "HAProxy reserves two descriptors per connection (`maxconn`) and refuses to start beyond its hard \
             limit of {limit}: every target ran with {n} shoppers."
        ));
    }
    let active_seconds = ctx.main_duration(20.0, 4.0, 2.0);
    let steady_seconds = ctx.main_duration(5.0, 1.5, 0.5);
    let interval = Duration::from_secs(5);
    if n < wanted && notes.is_empty() {
        notes.push(format!(
            "{wanted} shoppers asked for; this process may open {limit} descriptors, so {n} ran."
        ));
    }
    let kinds: Vec<Kind> = ctx
        .targets
        .iter()
        .copied()
        .filter(|k| *k != Kind::Direct)
        .collect();
    let mut variants: Vec<(String, Kind, Option<u64>)> = kinds
        .iter()
        .map(|k| (k.name().to_owned(), *k, None))
        .collect();
    for bytes in &ctx.opts.read_buffer {
        variants.push((
            format!("ordergate read_buffer {}", size(*bytes)),
            Kind::Ordergate,
            Some(*bytes),
        ));
    }
    let sweep = !ctx.opts.read_buffer.is_empty();

    let mut measured = Vec::new();
    let mut failures = Vec::new();
    for (label, kind, read_buffer) in &variants {
        eprintln!("connections: {label}: {n} shoppers");
        let steady_kinds: &[Req] = if sweep || read_buffer.is_some() {
            &[Req::Browse, Req::BigPost, Req::BigAnswer]
        } else {
            &[Req::Browse]
        };
        match measure(
            ctx,
            label,
            *kind,
            *read_buffer,
            n,
            interval,
            active_seconds,
            steady_seconds,
            steady_kinds,
        ) {
            Ok(m) => {
                if *kind == Kind::Ordergate && m.active.errors() > 0 {
                    failures.push(format!(
                        "{label}: {} raw errors with {n} shoppers",
                        m.active.errors()
                    ));
                }
                measured.push(m);
            }
            Err(why) => {
                eprintln!("connections: {label}: {why}");
                failures.push(format!("{label}: did not run: {why}"));
            }
        }
    }

    let mut limit_json = Value::Null;
    let mut pooled_json = Value::Null;
    let mut extra = String::new();
    if kinds.contains(&Kind::Ordergate) {
        match at_the_limit(ctx) {
            Ok((text, value, broken)) => {
                extra.push_str(&text);
                limit_json = value;
                failures.extend(broken);
            }
            Err(why) => failures.push(format!("descriptor limit phase: {why}")),
        }
        match pooled_backend(ctx) {
            Ok((text, value)) => {
                extra.push_str(&text);
                pooled_json = value;
            }
            Err(why) => failures.push(format!("pooled backend phase: {why}")),
        }
    }

    let mut summary = format!(
        "Idle shoppers: each opens a keep-alive connection ({RAMP_RATE:.0} new per second), sends one GET and \
         waits; memory per idle connection = (RSS with all idle − RSS before) ÷ connections answered. Then each \
         sends a GET every {} s (about {:.0} req/s in all) for {active_seconds:.0} s.\n\n\
         | target | shoppers idle | RSS before MiB | RSS idle MiB | **KiB per idle conn** | open files | idle CPU (cores) | active req/s | CPU µs/req | p50 ms | p99 ms | errors (5xx/reset/timeout) | RSS after close MiB |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
        interval.as_secs(),
        n as f64 / interval.as_secs_f64()
    );
    for m in &measured {
        let p = Percentiles::of(&m.active.latency);
        let _ = writeln!(
            summary,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.3} | {:.0} | {:.1} | {:.2} | {:.2} | {} ({}/{}/{}) | {:.1} |",
            m.label,
            m.ramp.ok,
            m.rss_before_kib as f64 / 1024.0,
            m.rss_idle_kib as f64 / 1024.0,
            m.per_idle_conn() / 1024.0,
            m.fds_idle,
            m.idle_cpu_share,
            m.active.total() as f64 / m.active_seconds.max(0.001),
            m.cpu_per_request(),
            p.p50,
            p.p99,
            m.active.errors() + m.ramp.errors(),
            m.active.status_5xx + m.ramp.status_5xx,
            m.active.reset + m.ramp.reset,
            m.active.timeout + m.ramp.timeout,
            m.rss_closed_kib as f64 / 1024.0,
        );
    }
    if let Some(nginx) = measured.iter().find(|m| m.label == "nginx") {
        let _ = writeln!(summary, "\nRatios against nginx in this run:\n");
        let _ = writeln!(
            summary,
            "| target | memory per idle conn ÷ nginx | CPU µs/req ÷ nginx | p99 ÷ nginx |\n|---|--:|--:|--:|"
        );
        for m in &measured {
            let _ = writeln!(
                summary,
                "| {} | {:.2}× | {:.2}× | {:.2}× |",
                m.label,
                m.per_idle_conn() / nginx.per_idle_conn().max(1.0),
                m.cpu_per_request() / nginx.cpu_per_request().max(0.001),
                Percentiles::of(&m.active.latency).p99
                    / Percentiles::of(&nginx.active.latency).p99.max(0.001),
            );
        }
    }
    if measured.iter().any(|m| m.steady.len() > 1) {
        let _ = writeln!(
            summary,
            "\nCPU per request in closed loop (50 keep-alive connections, 2 backends, {steady_seconds:.0} s each; \
             big-post = POST of a 256 KiB body answered by a small 400, big-answer = the same body echoed back, \
             so a 256 KiB answer too):\n\n| target | GET µs/req (req/s) | big-post µs/req (req/s) | big-answer µs/req (req/s) |\n|---|--:|--:|--:|"
        );
        for m in measured.iter().filter(|m| m.steady.len() > 1) {
            let cells: Vec<String> = m
                .steady
                .iter()
                .map(|(_, cpu, rate)| {
                    format!(
                        "{} ({rate:.0})",
                        cpu.map_or("–".to_owned(), |c| format!("{c:.1}"))
                    )
                })
                .collect();
            let _ = writeln!(summary, "| {} | {} |", m.label, cells.join(" | "));
        }
    }
    summary.push_str(&extra);

    let targets_json: Vec<Value> = measured
        .iter()
        .map(|m| {
            json!({
                "target": m.label,
                "shoppers": m.shoppers,
                "rss_before_kib": m.rss_before_kib,
                "rss_idle_kib": m.rss_idle_kib,
                "rss_active_kib": m.rss_active_kib,
                "rss_after_close_kib": m.rss_closed_kib,
                "bytes_per_idle_connection": m.per_idle_conn(),
                "open_fds_idle": m.fds_idle,
                "ramp_s": m.ramp_seconds,
                "idle_cpu_share_of_core": m.idle_cpu_share,
                "active_cpu_us_per_request": m.cpu_per_request(),
                "ramp": m.ramp.to_json(),
                "active": m.active.to_json(),
                "steady_closed_loop": m.steady.iter().map(|(k, cpu, rate)| json!({"kind": k, "cpu_us_per_request": cpu, "req_per_s": rate})).collect::<Vec<_>>(),
                "config": m.config,
            })
        })
        .collect();
    let runs: Vec<TargetRun> = measured
        .iter_mut()
        .filter(|m| !m.recorders.is_empty() && !m.label.contains("read_buffer"))
        .filter_map(|m| {
            let kind = Kind::parse(&m.label)?;
            Some(TargetRun {
                kind,
                passes: std::mem::take(&mut m.recorders),
                config: m.config.clone(),
                log_lines: 0,
                error: None,
            })
        })
        .collect();
    notes.push(
        "RSS = VmRSS of the proxy and its children (nginx and HAProxy workers) from /proc. nginx: \
         `worker_connections` raised to 20000 for this scenario; HAProxy: global `maxconn` raised to the \
         shoppers + 100. The closed-loop rows in the main table are each target's `steady` GET pass."
            .to_owned(),
    );
    Ok(ScenarioResult {
        name: "connections".to_owned(),
        description: format!(
            "{n} keep-alive shoppers per target, one target at a time, against 2 simulated backends (no added \
             latency); then ordergate with {LIMIT} descriptors (`prlimit`) and more shoppers than that; then \
             ordergate's idle pooled backend connections."
        ),
        runs,
        notes,
        summary,
        summary_json: json!({
            "shoppers": n,
            "interval_s": interval.as_secs(),
            "targets": targets_json,
            "descriptor_limit": limit_json,
            "pooled_backend": pooled_json,
        }),
        failures,
    })
}

fn size(bytes: u64) -> String {
    if bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Config edits of the connections scenario: room for the shoppers in nginx
/// and HAProxy, ordergate's read buffer and upstream pool.
fn tweaks(kind: Kind, shoppers: u64, read_buffer: Option<u64>, keepalive: Option<u32>) -> Tweaks {
    let edit: Box<dyn Fn(String) -> String> = match kind {
        Kind::Nginx => Box::new(|text: String| {
            text.replace("worker_connections 8192;", "worker_connections 20000;")
        }),
        Kind::Haproxy => Box::new(move |text: String| {
            text.replace("maxconn 8000", &format!("maxconn {}", shoppers + 100))
        }),
        Kind::Ordergate => Box::new(move |text: String| {
            let mut server = String::from("[server]\n");
            if let Some(bytes) = read_buffer {
                server.push_str(&format!("read_buffer = {bytes}\n"));
            }
            if let Some(n) = keepalive {
                server.push_str(&format!("upstream_keepalive = {n}\n"));
            }
            text.replacen("[server]\n", &server, 1)
        }),
        _ => Box::new(|text: String| text),
    };
    Tweaks {
        edit: Some(edit),
        ..Tweaks::default()
    }
}

/// CPU time of the target in µs.
fn cpu(target: &Target) -> u64 {
    target.pid().map_or(0, procs::cpu_micros)
}

fn rss(target: &Target) -> u64 {
    target.pid().and_then(procs::rss_kib).unwrap_or(0)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &Ctx<'_>,
    label: &str,
    kind: Kind,
    read_buffer: Option<u64>,
    n: u64,
    interval: Duration,
    active_seconds: f64,
    steady_seconds: f64,
    steady_kinds: &[Req],
) -> Result<Measured, String> {
    let backends = procs::Backend::start_many(2, &[])?;
    let spec = ProxySpec::new(backends.iter().map(|b| b.addr).collect());
    let target = Target::start_tweaked(kind, &spec, &tweaks(kind, n, read_buffer, None))?;
    let addr = *target.addrs.first().ok_or("no address")?;
    let timeout = ctx.opts.timeout;

    // Warm the proxy up (lazy allocations, backend connections), then measure.
    ctx.rt.block_on(async {
        for i in 0..20 {
            if let Ok(mut c) = connect(addr, timeout).await {
                let _ = get(&mut c, i, Instant::now() + timeout).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let rss_before = rss(&target);

    let (tx, rx) = watch::channel(Stage::Ramp);
    let shoppers = Arc::new(Shoppers {
        addr,
        timeout,
        interval,
        ramp: Mutex::new(Tally::new()),
        active: Mutex::new(Tally::new()),
        ramped: AtomicU64::new(0),
        idle: AtomicU64::new(0),
        stage: rx,
    });
    let (ramp_seconds, idle_cpu_share, rss_idle, fds_idle, cpu_active, rss_active) =
        ctx.rt.block_on(async {
            let began = Instant::now();
            let mut tasks = Vec::with_capacity(n as usize);
            for i in 0..n {
                if i % 50 == 0 {
                    tokio::time::sleep_until(began + Duration::from_secs_f64(i as f64 / RAMP_RATE))
                        .await;
                }
                tasks.push(tokio::spawn(shopper(Arc::clone(&shoppers), i)));
            }
            let deadline = Instant::now() + timeout + Duration::from_secs(2);
            while shoppers.ramped.load(Ordering::Relaxed) < n && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let ramp_seconds = began.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu0 = cpu(&target);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let idle_cpu = (cpu(&target).saturating_sub(cpu0)) as f64 / 2e6;
            let rss_idle = rss(&target);
            let fds_idle = target.pid().and_then(procs::open_fds).unwrap_or(0);
            eprintln!(
                "connections: {label}: {} idle after {ramp_seconds:.1} s; RSS {} → {} KiB",
                shoppers.idle.load(Ordering::Relaxed),
                rss_before,
                rss_idle
            );
            let start = Instant::now();
            let cpu1 = cpu(&target);
            let _ = tx.send(Stage::Active(start));
            tokio::time::sleep(Duration::from_secs_f64(active_seconds)).await;
            let cpu_active = cpu(&target).saturating_sub(cpu1);
            let rss_active = rss(&target);
            let _ = tx.send(Stage::End);
            for task in tasks {
                let _ = tokio::time::timeout_at(deadline.max(Instant::now()) + timeout, task).await;
            }
            (
                ramp_seconds,
                idle_cpu,
                rss_idle,
                fds_idle,
                cpu_active,
                rss_active,
            )
        });
    // Let the proxy see every close.
    std::thread::sleep(Duration::from_secs(1));
    let rss_closed = rss(&target);

    let mut steady = Vec::new();
    let mut recorders = Vec::new();
    for &req in steady_kinds {
        let phases = vec![
            Phase {
                name: "warm-up".to_owned(),
                load: Load::Closed { connections: 50 },
                duration: ctx.warmup(),
                report: false,
            },
            scenarios::phase(
                &format!("closed loop {}", req.name()),
                Load::Closed { connections: 50 },
                steady_seconds,
            ),
        ];
        let mut plan = ctx.plan(label, &target, phases, vec![req]);
        plan.progress = false;
        let pid = target.pid();
        let recorder = ctx.rt.block_on(client::run(
            plan,
            Arc::new(move || pid.map(procs::cpu_micros)),
        ));
        if let Some(p) = recorder.phases.iter().find(|p| p.report) {
            steady.push((
                req.name(),
                PhaseStats::cpu_per_request(p),
                p.completed_in_window as f64 / p.seconds(),
            ));
        }
        recorders.push(recorder);
    }
    let ramp = std::mem::replace(&mut *lock(&shoppers.ramp), Tally::new());
    let active = std::mem::replace(&mut *lock(&shoppers.active), Tally::new());
    Ok(Measured {
        label: label.to_owned(),
        shoppers: n,
        rss_before_kib: rss_before,
        rss_idle_kib: rss_idle,
        rss_active_kib: rss_active,
        rss_closed_kib: rss_closed,
        fds_idle,
        ramp_seconds,
        idle_cpu_share,
        active_cpu_us: cpu_active,
        active_seconds,
        ramp,
        active,
        steady,
        config: target.config.clone(),
        recorders,
    })
}

/// ordergate under `prlimit --nofile=LIMIT`: half as many shoppers as
/// descriptors connect and are served; then as many again as descriptors try
/// to; then the first ones send again; then everyone leaves and one more comes.
fn at_the_limit(ctx: &Ctx<'_>) -> Result<(String, Value, Vec<String>), String> {
    let prlimit = procs::which("prlimit").ok_or("prlimit not found (util-linux)")?;
    let backends = procs::Backend::start_many(2, &[])?;
    let spec = ProxySpec::new(backends.iter().map(|b| b.addr).collect());
    let mut tweaks = tweaks(Kind::Ordergate, 0, None, None);
    tweaks.wrapper = vec![
        prlimit.display().to_string(),
        format!("--nofile={LIMIT}:{LIMIT}"),
        "--".to_owned(),
    ];
    let target = Target::start_tweaked(Kind::Ordergate, &spec, &tweaks)?;
    let pid = target.pid().ok_or("no pid")?;
    let addr = *target.addrs.first().ok_or("no address")?;
    let first_n = LIMIT / 2;
    let more_n = LIMIT;
    let wait = Duration::from_secs(3);
    let result = ctx.rt.block_on(async {
        let mut first = Vec::new();
        let mut first_tally = Tally::new();
        for i in 0..first_n {
            let t0 = Instant::now();
            match connect(addr, wait).await {
                Ok(mut c) => {
                    let (class, ok) = get(&mut c, i, t0 + wait).await;
                    first_tally.add(&class, t0.elapsed());
                    if ok {
                        first.push(c);
                    }
                }
                Err(class) => first_tally.add(&class, t0.elapsed()),
            }
        }
        let cpu0 = procs::cpu_micros(pid);
        let t_more = Instant::now();
        let more: Vec<_> = (0..more_n)
            .map(|i| {
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    match connect(addr, wait).await {
                        Ok(mut c) => {
                            let (class, ok) = get(&mut c, 1000 + i, t0 + wait).await;
                            (class, t0.elapsed(), ok.then_some(c))
                        }
                        Err(class) => (class, t0.elapsed(), None),
                    }
                })
            })
            .collect();
        // While the newcomers wait, the first shoppers send again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fds_at_limit = procs::open_fds(pid).unwrap_or(0);
        let mut again = Tally::new();
        for (i, c) in first.iter_mut().enumerate() {
            let t0 = Instant::now();
            let (class, _) = get(c, 2000 + i as u64, t0 + wait).await;
            again.add(&class, t0.elapsed());
        }
        let mut more_tally = Tally::new();
        let mut kept = Vec::new();
        for task in more {
            if let Ok((class, took, conn)) = task.await {
                more_tally.add(&class, took);
                kept.extend(conn);
            }
        }
        let saturated_s = t_more.elapsed().as_secs_f64();
        let cpu_share = procs::cpu_micros(pid).saturating_sub(cpu0) as f64 / 1e6 / saturated_s;
        drop(first);
        drop(kept);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut after = Tally::new();
        for i in 0..10 {
            let t0 = Instant::now();
            match connect(addr, wait).await {
                Ok(mut c) => {
                    let (class, _) = get(&mut c, 3000 + i, t0 + wait).await;
                    after.add(&class, t0.elapsed());
                }
                Err(class) => after.add(&class, t0.elapsed()),
            }
        }
        (
            first_tally,
            more_tally,
            again,
            after,
            fds_at_limit,
            cpu_share,
            saturated_s,
        )
    });
    let (first, more, again, after, fds_at_limit, cpu_share, saturated_s) = result;
    let alive = procs::rss_kib(pid).is_some();
    let log_lines = target.log_lines();
    let tail = target.log_tail();
    let mut broken = Vec::new();
    if !alive {
        broken.push("ordergate died at its descriptor limit".to_owned());
    }
    if again.ok + again.page < again.total() {
        broken.push(format!(
            "at the descriptor limit {} of {} connected shoppers were not served",
            again.total() - again.ok - again.page,
            again.total()
        ));
    }
    if after.ok < after.total() {
        broken.push(format!(
            "after the crowd left, {} of {} new shoppers were not served",
            after.total() - after.ok,
            after.total()
        ));
    }
    let row = |name: &str, t: &Tally| {
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {:.0} |\n",
            t.total(),
            t.ok,
            t.page,
            t.status_5xx,
            t.reset,
            t.timeout,
            Percentiles::of(&t.latency).max
        )
    };
    let mut text = format!(
        "\nAt the descriptor limit (ordergate under `prlimit --nofile={LIMIT}:{LIMIT}`; it raises its soft limit \
         to the hard one, which stays {LIMIT}): {first_n} shoppers connect and are served, then {more_n} more try \
         (wait {} s each) while the first ones send again; then all leave and 10 new shoppers come.\n\n\
         | step | shoppers | served | page | 5xx | reset/refused | timeout | max ms |\n|---|--:|--:|--:|--:|--:|--:|--:|\n",
        wait.as_secs()
    );
    text.push_str(&row("first shoppers connect", &first));
    text.push_str(&row("newcomers beyond the limit", &more));
    text.push_str(&row("first shoppers send again", &again));
    text.push_str(&row("new shoppers after the crowd left", &after));
    let _ = writeln!(
        text,
        "\nordergate at the limit: {fds_at_limit} open files, {:.2} cores busy over {saturated_s:.1} s, \
         {log_lines} error-log lines, {}.",
        cpu_share,
        if alive { "still running" } else { "DEAD" }
    );
    if log_lines > 0 {
        let last = tail.lines().last().unwrap_or_default();
        let _ = writeln!(text, "Last error-log line: `{}`", last.trim());
    }
    let value = json!({
        "limit": LIMIT,
        "first": first.to_json(),
        "newcomers": more.to_json(),
        "first_again": again.to_json(),
        "after": after.to_json(),
        "open_fds_at_limit": fds_at_limit,
        "cpu_share_saturated": cpu_share,
        "error_log_lines": log_lines,
        "alive": alive,
    });
    Ok((text, value, broken))
}

/// Memory of an idle pooled backend connection: ordergate with an upstream
/// keep-alive pool of 1024 against one of 1, after the same burst of
/// [`POOLED`] concurrent requests to backends that answer in 200 ms.
fn pooled_backend(ctx: &Ctx<'_>) -> Result<(String, Value), String> {
    let mut out = Vec::new();
    for keepalive in [1024u32, 1] {
        let backends = procs::Backend::start_many(2, &scenarios::sim_flags(200, 0, None))?;
        let spec = ProxySpec::new(backends.iter().map(|b| b.addr).collect());
        let mut tweaks = tweaks(Kind::Ordergate, 0, None, Some(keepalive));
        // mimalloc gives freed pages back at once, so RSS shows what is alive
        // now rather than the peak of the burst.
        tweaks.wrapper = vec!["env".to_owned(), "MIMALLOC_PURGE_DELAY=0".to_owned()];
        let target = Target::start_tweaked(Kind::Ordergate, &spec, &tweaks)?;
        let addr = *target.addrs.first().ok_or("no address")?;
        let timeout = ctx.opts.timeout;
        let before = rss(&target);
        let conns = ctx.rt.block_on(async {
            let tasks: Vec<_> = (0..POOLED as u64)
                .map(|i| {
                    tokio::spawn(async move {
                        let t0 = Instant::now();
                        let mut c = connect(addr, timeout).await.ok()?;
                        let (class, ok) = get(&mut c, i, t0 + timeout).await;
                        (ok && matches!(class, Class::Success { .. })).then_some(c)
                    })
                })
                .collect();
            let mut conns = Vec::new();
            for t in tasks {
                if let Ok(Some(c)) = t.await {
                    conns.push(c);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            conns
        });
        let after = rss(&target);
        let fds = target.pid().and_then(procs::open_fds).unwrap_or(0);
        out.push((keepalive, conns.len(), before, after, fds));
        drop(conns);
    }
    let (a, b) = (out[0], out[1]);
    let backend_conns = a.4 as f64 - b.4 as f64;
    let per = (a.3 as f64 - b.3 as f64) * 1024.0 / backend_conns.max(1.0);
    let text = format!(
        "\nIdle pooled backend connections: {POOLED} shoppers send one GET at once to 2 backends answering in \
         200 ms and stay connected; ordergate with `upstream_keepalive = 1024` keeps the backend connections, \
         with `= 1` closes them; both run with `MIMALLOC_PURGE_DELAY=0` so freed memory leaves RSS at once.\n\n| upstream_keepalive | shoppers served | RSS before MiB | RSS after MiB | open files |\n|--:|--:|--:|--:|--:|\n\
         | {} | {} | {:.1} | {:.1} | {} |\n| {} | {} | {:.1} | {:.1} | {} |\n\n\
         Memory per idle pooled backend connection: ({:.1} − {:.1} MiB) ÷ {backend_conns:.0} more open files = **{:.1} KiB**.\n",
        a.0, a.1, a.2 as f64 / 1024.0, a.3 as f64 / 1024.0, a.4,
        b.0, b.1, b.2 as f64 / 1024.0, b.3 as f64 / 1024.0, b.4,
        a.3 as f64 / 1024.0, b.3 as f64 / 1024.0, per / 1024.0
    );
    let value = json!({
        "shoppers": POOLED,
        "keepalive_1024": {"served": a.1, "rss_before_kib": a.2, "rss_after_kib": a.3, "open_fds": a.4},
        "keepalive_1": {"served": b.1, "rss_before_kib": b.2, "rss_after_kib": b.3, "open_fds": b.4},
        "bytes_per_pooled_backend_connection": per,
    });
    Ok((text, value))
}
