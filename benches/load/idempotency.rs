//! `idempotency`: what does ordergate's own record per `Idempotency-Key`
//! (`[routes.idempotency]`, README "Orders at most once") cost? The same keyed
//! POSTs (every one a new key) at the same open-loop rate go through ordergate
//! with the route plain and with the feature on — and, with `--store redis`,
//! with the records in a local `redis-server` — in alternating rounds of one
//! run, so noise from the shared machine falls on every variant alike. It
//! reports the proxy's CPU time per keyed POST, the latency each variant adds,
//! and the memory a stored record takes: ordergate's RSS growth over the N
//! distinct keyed orders of the run ÷ N, next to the store's own count
//! (`ordergate_idempotency_store_bytes` from the admin `/metrics`).
//!
//! The backends run `ordergate sim --ignore-idempotency` (a new order for every
//! POST, as an order service that does not dedupe), so a stored record is the
//! only thing that could stop a repeat.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{self, Kind as Req};
use crate::procs::{self, Backend, Kind, ProxySpec, Target, TempDir, Tweaks};
use crate::scenarios::{self, Ctx, ScenarioResult, TargetRun};
use crate::stats::{self, Percentiles, Recorder};
use crate::support;

/// Keyed POSTs per second of every variant (`--rate` changes it).
const RATE: f64 = 1000.0;

/// One way of configuring the route.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// No `[routes.idempotency]`: the reference.
    Plain,
    /// `[routes.idempotency]`, records in ordergate's memory.
    Memory,
    /// The same with `[store] kind = "redis"`.
    Redis,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Plain => "no idempotency",
            Variant::Memory => "idempotency, memory store",
            Variant::Redis => "idempotency, redis store",
        }
    }

    /// What is appended to the harness's ordergate config (whose last table
    /// is the one route, `all`).
    fn config(self, redis: Option<SocketAddr>) -> String {
        let table = "\n[routes.idempotency]\nscope = \"global\"\nbackend_dedupes = false\n";
        match (self, redis) {
            (Variant::Plain, _) => String::new(),
            (Variant::Memory, _) => table.to_owned(),
            (Variant::Redis, Some(addr)) => format!(
                "{table}\n[store]\nkind = \"redis\"\nurl = \"redis://{addr}/0\"\nkey_prefix = \"ordergate-bench:\"\n"
            ),
            (Variant::Redis, None) => table.to_owned(),
        }
    }
}

/// A `redis-server` on a free port of 127.0.0.1, without persistence; killed
/// on drop.
struct Redis {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Redis {
    fn start() -> Result<Redis, String> {
        let program = procs::which("redis-server")
            .ok_or("redis-server not found: apt-get install redis-server")?;
        let dir = TempDir::new("redis")?;
        let port = support::free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(program)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        let mut redis = Redis {
            child,
            addr,
            _dir: dir,
        };
        let up = support::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        if !up || redis.child.try_wait().ok().flatten().is_some() {
            return Err(format!("redis-server did not listen on {addr} within 10s"));
        }
        Ok(redis)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of every series of `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The series of `name` whose labels contain `label`.
fn metric_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(admin: SocketAddr) -> Result<String, String> {
    let response = support::request(admin, "GET", "/metrics", &[], b"")
        .map_err(|e| format!("GET /metrics: {e:?}"))?;
    if response.status == 200 {
        Ok(response.text())
    } else {
        Err(format!("GET /metrics: status {}", response.status))
    }
}

/// What one variant's process went through.
struct Measured {
    variant: Variant,
    target: Target,
    passes: Vec<Recorder>,
    /// RSS (KiB) and the store's bytes after the warm-up, and at the end.
    rss_kib: (u64, u64),
    store_bytes: (f64, f64),
    /// `ordergate_idempotency_total{result="first"}` over the reported passes.
    first: (f64, f64),
    /// Store fallbacks to memory (redis only), over the run.
    fallbacks: f64,
    /// CPU µs of redis-server over this variant's reported passes.
    redis_cpu_us: u64,
}

impl Measured {
    fn phases(&self) -> impl Iterator<Item = &stats::PhaseStats> {
        self.passes
            .iter()
            .flat_map(|p| p.phases.iter())
            .filter(|p| p.report)
    }

    /// Answers that arrived during the reported passes, and the 2xx among the
    /// requests scheduled in them (each a distinct key: a record).
    fn answers(&self) -> (u64, u64) {
        self.phases().fold((0, 0), |(n, ok), p| {
            (n + p.completed_in_window, ok + p.total().counts.ok_2xx)
        })
    }

    fn cpu_us(&self) -> u64 {
        self.phases()
            .filter_map(|p| match p.cpu {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            })
            .sum()
    }

    fn cpu_per_request(&self) -> Option<f64> {
        let (n, _) = self.answers();
        (n > 0).then(|| self.cpu_us() as f64 / n as f64)
    }

    fn latency(&self) -> Percentiles {
        let mut all = stats::histogram(3);
        for p in self.phases() {
            let _ = all.add(&p.total().all);
        }
        Percentiles::of(&all)
    }
}

/// Runs the scenario.
pub(crate) fn run(ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    let d = ctx.main_duration(10.0, 2.0, 0.5);
    let rounds = if ctx.smoke {
        1
    } else if ctx.opts.quick {
        2
    } else {
        3
    };
    let rate = ctx
        .opts
        .rate
        .unwrap_or(if ctx.smoke { 500.0 } else { RATE });
    let mut notes = Vec::new();
    if ctx.targets.iter().any(|k| *k != Kind::Ordergate) {
        notes.push("idempotency runs ordergate only; the other targets were left out.".to_owned());
    }
    let redis = match ctx.opts.store.as_deref() {
        Some("redis") => Some(Redis::start()?),
        _ => None,
    };
    let mut variants = vec![Variant::Plain, Variant::Memory];
    if redis.is_some() {
        variants.push(Variant::Redis);
    }

    let flags = vec!["--ignore-idempotency".to_owned()];
    let backends = Backend::start_many(2, &flags)?;
    let spec = ProxySpec {
        admin: true,
        ..ProxySpec::new(backends.iter().map(|b| b.addr).collect())
    };
    let redis_addr = redis.as_ref().map(|r| r.addr);
    let mut measured = Vec::new();
    for &variant in &variants {
        let extra = variant.config(redis_addr);
        let tweaks = Tweaks {
            edit: Some(Box::new(move |text: String| text + &extra)),
            ..Tweaks::default()
        };
        let target = Target::start_tweaked(Kind::Ordergate, &spec, &tweaks)?;
        measured.push(Measured {
            variant,
            target,
            passes: Vec::new(),
            rss_kib: (0, 0),
            store_bytes: (0.0, 0.0),
            first: (0.0, 0.0),
            fallbacks: 0.0,
            redis_cpu_us: 0,
        });
    }

    // A warm-up per process (connections, pools, allocator), then the
    // baseline of memory and counters.
    for m in &mut measured {
        let mut plan = ctx.plan(
            m.variant.label(),
            &m.target,
            vec![scenarios::warmup_phase(ctx, rate)],
            vec![Req::Checkout],
        );
        plan.progress = false;
        let pid = m.target.pid().ok_or("ordergate has no process id")?;
        ctx.rt.block_on(client::run(
            plan,
            Arc::new(move || Some(procs::cpu_micros(pid))),
        ));
        // The last answers settle (stored records) before the baseline.
        std::thread::sleep(Duration::from_millis(300));
        let text = scrape(m.target.admin.ok_or("no admin listener")?)?;
        m.rss_kib.0 = procs::rss_kib(pid).unwrap_or(0);
        m.store_bytes.0 = metric(&text, "ordergate_idempotency_store_bytes");
        m.first.0 = metric_with(&text, "ordergate_idempotency_total", "result=\"first\"");
    }

    eprintln!(
        "idempotency: {rounds} round(s) of {d} s per variant at {rate:.0} keyed POSTs/s: {}",
        variants
            .iter()
            .map(|v| v.label())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    for round in 1..=rounds {
        for m in &mut measured {
            let phase = scenarios::phase(
                &format!("{} #{round}", m.variant.label()),
                scenarios::open(rate),
                d,
            );
            let plan = ctx.plan("ordergate", &m.target, vec![phase], vec![Req::Checkout]);
            let pid = m.target.pid().ok_or("ordergate has no process id")?;
            let redis_before = redis.as_ref().map(|r| procs::cpu_micros(r.pid()));
            let recorder = ctx.rt.block_on(client::run(
                plan,
                Arc::new(move || Some(procs::cpu_micros(pid))),
            ));
            if let (Some(r), Some(before)) = (&redis, redis_before) {
                if m.variant == Variant::Redis {
                    m.redis_cpu_us += procs::cpu_micros(r.pid()).saturating_sub(before);
                }
            }
            m.passes.push(recorder);
        }
    }

    for m in &mut measured {
        std::thread::sleep(Duration::from_millis(300));
        let pid = m.target.pid().ok_or("ordergate has no process id")?;
        let text = scrape(m.target.admin.ok_or("no admin listener")?)?;
        m.rss_kib.1 = procs::rss_kib(pid).unwrap_or(0);
        m.store_bytes.1 = metric(&text, "ordergate_idempotency_store_bytes");
        m.first.1 = metric_with(&text, "ordergate_idempotency_total", "result=\"first\"");
        m.fallbacks = metric(&text, "ordergate_store_fallbacks_total");
    }

    let (summary, summary_json, mut failures) = summarize(&measured, rate);
    let mut run = TargetRun {
        kind: Kind::Ordergate,
        passes: Vec::new(),
        config: String::new(),
        log_lines: 0,
        error: None,
    };
    for round in 0..rounds {
        for m in &measured {
            if let Some(pass) = m.passes.get(round) {
                run.passes.push(pass.clone());
            }
        }
    }
    run.config = measured
        .iter()
        .map(|m| format!("# {}\n{}", m.variant.label(), m.target.config))
        .collect::<Vec<_>>()
        .join("\n");
    run.log_lines = measured.iter().map(|m| m.target.log_lines()).sum();
    let runs = vec![run];
    failures.extend(scenarios::check_raw_errors(&runs, "idempotency"));
    drop(measured);
    drop(backends);
    drop(redis);

    notes.push(format!(
        "The variants are separate ordergate processes (one worker, pinned like every proxy of the \
         harness) in front of the same 2 `ordergate sim --ignore-idempotency` backends (no added \
         latency); rounds alternate the variants so that noise from the shared machine falls on all. \
         Every POST carries a new key, so each is a first request: the cost measured is the record's \
         creation, the forward and the stored answer; a replay costs less (nothing is forwarded). \
         Each phase is {d} s at {rate:.0}/s; proxy CPU µs/req is per answer."
    ));
    if redis_addr.is_some() {
        notes.push(
            "redis-server (no persistence) runs unpinned from the proxy's CPU, beside the load generator \
             and the backends; its CPU time is reported apart. Its memory is not ordergate's and is not \
             in the RSS figures."
                .to_owned(),
        );
    }
    Ok(ScenarioResult {
        name: "idempotency".to_owned(),
        description: format!(
            "Keyed POST /api/orders (a new `Idempotency-Key` each) at {rate:.0}/s open loop through \
             ordergate with the route plain, with `[routes.idempotency]` (defaults: ttl 24h, max_bytes \
             256 MiB){}; {rounds} alternating round(s) of {d} s each.",
            if redis_addr.is_some() {
                ", and with `[store] kind = \"redis\"` against a local redis-server"
            } else {
                ""
            }
        ),
        runs,
        notes,
        summary,
        summary_json,
        failures,
    })
}

fn f1(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The cost table, the memory table and their JSON; failures when a
/// variant's records were not made.
fn summarize(measured: &[Measured], rate: f64) -> (String, Value, Vec<String>) {
    let mut out = String::new();
    let mut failures = Vec::new();
    let plain = measured.iter().find(|m| m.variant == Variant::Plain);
    let base_cpu = plain.and_then(Measured::cpu_per_request);
    let base_lat = plain.map(Measured::latency);
    let _ = writeln!(
        out,
        "Cost per keyed POST at {rate:.0}/s (all rounds of a variant together):\n\n\
         | variant | answers | 2xx | ordergate CPU µs/req | vs no idempotency | p50 ms | p99 ms | added p50 ms | added p99 ms | redis-server CPU µs/req |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    let mut rows = Vec::new();
    for m in measured {
        let (answers, ok) = m.answers();
        let cpu = m.cpu_per_request();
        let lat = m.latency();
        let added = |f: fn(&Percentiles) -> f64| base_lat.as_ref().map(|b| f(&lat) - f(b));
        let redis_cpu = (m.variant == Variant::Redis && answers > 0)
            .then(|| m.redis_cpu_us as f64 / answers as f64);
        let _ = writeln!(
            out,
            "| {} | {answers} | {ok} | {} | {} | {} | {} | {} | {} | {} |",
            m.variant.label(),
            cpu.map_or("–".to_owned(), f1),
            match (cpu, base_cpu) {
                (Some(c), Some(b)) if m.variant != Variant::Plain =>
                    format!("{:+.1} µs ({:+.0}%)", c - b, (c / b - 1.0) * 100.0),
                _ => "–".to_owned(),
            },
            f1(lat.p50),
            f1(lat.p99),
            if m.variant == Variant::Plain {
                "–".to_owned()
            } else {
                added(|p| p.p50).map_or("–".to_owned(), |v| format!("{v:+.2}"))
            },
            if m.variant == Variant::Plain {
                "–".to_owned()
            } else {
                added(|p| p.p99).map_or("–".to_owned(), |v| format!("{v:+.2}"))
            },
            redis_cpu.map_or("–".to_owned(), f1),
        );
        rows.push(json!({
            "variant": m.variant.label(), "answers": answers, "ok_2xx": ok,
            "cpu_us_per_request": cpu, "p50_ms": lat.p50, "p99_ms": lat.p99,
            "redis_cpu_us_per_request": redis_cpu,
        }));
    }

    let _ = writeln!(
        out,
        "\nMemory per stored record (from after the warm-up to the end; N = keyed orders the store \
         counted as `first` in that span):\n\n\
         | variant | N | RSS growth MiB | RSS growth per record (bytes) | net of no idempotency (bytes) | `ordergate_idempotency_store_bytes` growth MiB | per record (bytes) |\n\
         |---|--:|--:|--:|--:|--:|--:|"
    );
    let plain_growth = plain.map_or(0.0, |m| {
        m.rss_kib.1 as f64 * 1024.0 - m.rss_kib.0 as f64 * 1024.0
    });
    let mut memory = Vec::new();
    for m in measured {
        let growth = m.rss_kib.1 as f64 * 1024.0 - m.rss_kib.0 as f64 * 1024.0;
        let records = m.first.1 - m.first.0;
        let (_, ok) = m.answers();
        let store = m.store_bytes.1 - m.store_bytes.0;
        let per = |bytes: f64| {
            if records > 0.0 {
                f1(bytes / records)
            } else {
                "–".to_owned()
            }
        };
        if m.variant != Variant::Plain && ok > 0 && records < ok as f64 {
            failures.push(format!(
                "{}: {ok} keyed POSTs answered 2xx but only {records} records counted as first",
                m.variant.label()
            ));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {} | {} | {:.1} | {} |",
            m.variant.label(),
            if m.variant == Variant::Plain {
                format!("({ok} orders)")
            } else {
                format!("{records:.0}")
            },
            growth / 1048576.0,
            per(growth),
            if m.variant == Variant::Plain {
                "–".to_owned()
            } else {
                per(growth - plain_growth)
            },
            store / 1048576.0,
            per(store),
        );
        if m.variant == Variant::Redis {
            let _ = writeln!(
                out,
                "\nRedis store: {} fallbacks to memory (`ordergate_store_fallbacks_total`; a fallback keeps \
                 the record in ordergate's memory, so the redis row is only a Redis figure when it is 0).",
                m.fallbacks
            );
        }
        memory.push(json!({
            "variant": m.variant.label(), "records": records, "ok_2xx": ok,
            "rss_kib_after_warmup": m.rss_kib.0, "rss_kib_end": m.rss_kib.1,
            "rss_growth_bytes": growth,
            "rss_bytes_per_record": (records > 0.0).then(|| growth / records),
            "rss_bytes_per_record_net_of_plain": (records > 0.0 && m.variant != Variant::Plain)
                .then(|| (growth - plain_growth) / records),
            "store_bytes_start": m.store_bytes.0, "store_bytes_end": m.store_bytes.1,
            "store_bytes_per_record": (records > 0.0).then(|| store / records),
            "store_fallbacks": m.fallbacks,
        }));
    }
    (
        out,
        json!({ "rate_per_s": rate, "cost": rows, "memory": memory }),
        failures,
    )
}
