//! The scenarios: what fleet each target gets, how the proxies are configured,
//! the phases of load and the events (kill, stop, slow down, reload) of a run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::client::{self, Action, Event, Kind as Req, Load, Phase, Plan};
use crate::procs::{self, Backend, Kind, ProxySpec, Target, GUARD_MAX_IN_FLIGHT};
use crate::stats::{PhaseStats, Recorder};
use crate::{profile, report};
use crate::{support, Options};

/// Every scenario `smoke` runs, in its order.
pub(crate) const ALL: [&str; 10] = [
    "steady",
    "overload",
    "flash-sale",
    "backend-kill",
    "slow-backend",
    "reload",
    "new-connections",
    "soak",
    "idempotency",
    "flash-sale-room",
];

/// Scenarios only run when named (too long or too heavy for `smoke`).
pub(crate) const NAMED_ONLY: [&str; 4] = ["connections", "tls", "scale", "records"];

/// The scenarios that measure the cost of a request or a connection (where
/// the pingora floor runs by default).
pub(crate) const COST: [&str; 3] = ["steady", "new-connections", "connections"];

/// Latency of the overloaded backend (ms) and its concurrency.
const OVERLOAD_LATENCY_MS: u64 = 50;
/// Requests per second the overloaded backend can serve.
pub(crate) const OVERLOAD_CAPACITY: f64 = GUARD_MAX_IN_FLIGHT as f64 * 1000.0 / 50.0;
/// Backends of the failure scenarios: capacity 8 at 20 ms, 400 req/s each.
const FLEET_LATENCY_MS: u64 = 20;
/// Request rate of the failure scenarios: half of the three backends' capacity.
const FLEET_RATE: f64 = 0.5 * 3.0 * GUARD_MAX_IN_FLIGHT as f64 * 1000.0 / FLEET_LATENCY_MS as f64;

/// One target's part of a scenario.
pub(crate) struct TargetRun {
    /// Which target.
    pub(crate) kind: Kind,
    /// One recorder per pass (steady runs two: closed loop, then open loop).
    pub(crate) passes: Vec<Recorder>,
    /// The proxy config of the last pass.
    pub(crate) config: String,
    /// Lines in the proxy's error log at the end.
    pub(crate) log_lines: usize,
    /// Why it could not run, if it could not.
    pub(crate) error: Option<String>,
}

/// What a scenario produced.
pub(crate) struct ScenarioResult {
    /// Its name.
    pub(crate) name: String,
    /// What it does, for the report.
    pub(crate) description: String,
    /// One per target.
    pub(crate) runs: Vec<TargetRun>,
    /// Remarks for the report.
    pub(crate) notes: Vec<String>,
    /// Scenario-specific markdown (per-phase summaries).
    pub(crate) summary: String,
    /// The same as JSON.
    pub(crate) summary_json: Value,
    /// Broken promises: raw errors of ordergate where the target is 0, runs
    /// that failed.
    pub(crate) failures: Vec<String>,
}

/// Shared by the scenarios of one invocation.
pub(crate) struct Ctx<'a> {
    /// The runtime of the load generator.
    pub(crate) rt: &'a Runtime,
    /// Command-line options.
    pub(crate) opts: &'a Options,
    /// Targets to run (available ones only).
    pub(crate) targets: Vec<Kind>,
    /// Durations for a smoke run.
    pub(crate) smoke: bool,
}

impl Ctx<'_> {
    /// The main duration (s) of a scenario: `--duration`, else the smoke,
    /// quick or full default.
    pub(crate) fn main_duration(&self, full: f64, quick: f64, smoke: f64) -> f64 {
        match self.opts.duration {
            Some(d) => d,
            None if self.smoke => smoke,
            None if self.opts.quick => quick,
            None => full,
        }
    }

    pub(crate) fn warmup(&self) -> Duration {
        if self.smoke || self.opts.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        }
    }

    pub(crate) fn plan(
        &self,
        label: &str,
        target: &Target,
        phases: Vec<Phase>,
        mix: Vec<Req>,
    ) -> Plan {
        Plan {
            label: label.to_owned(),
            addrs: target.addrs.clone(),
            phases,
            mix,
            pool: self.opts.pool.unwrap_or(256),
            keepalive: true,
            timeout: self.opts.timeout,
            events: Vec::new(),
            progress: !self.opts.quiet,
            ledger: None,
        }
    }
}

pub(crate) fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.05))
}

pub(crate) fn phase(name: &str, load: Load, seconds: f64) -> Phase {
    Phase {
        name: name.to_owned(),
        load,
        duration: secs(seconds),
        report: true,
    }
}

/// A first second (200 ms in quick runs) that opens the connections and is
/// left out of the reports.
pub(crate) fn warmup_phase(ctx: &Ctx<'_>, rate: f64) -> Phase {
    Phase {
        name: "warm-up".to_owned(),
        load: open(rate),
        duration: ctx.warmup(),
        report: false,
    }
}

pub(crate) fn open(rate: f64) -> Load {
    Load::Open { rate }
}

/// Backends and the target in front of them, alive while the run goes on.
pub(crate) struct Setup {
    /// The simulated backends.
    pub(crate) backends: Vec<Backend>,
    /// The proxy (or direct) in front of them.
    pub(crate) target: Target,
}

pub(crate) fn setup(
    kind: Kind,
    n: usize,
    flags: &[String],
    spec: impl FnOnce(Vec<SocketAddr>) -> ProxySpec,
) -> Result<Setup, String> {
    let backends = Backend::start_many(n, flags)?;
    let spec = spec(backends.iter().map(|b| b.addr).collect());
    let target = Target::start(kind, &spec)?;
    Ok(Setup { backends, target })
}

pub(crate) fn sim_flags(latency_ms: u64, jitter_ms: u64, capacity: Option<u32>) -> Vec<String> {
    let mut flags = vec![
        "--latency-ms".to_owned(),
        latency_ms.to_string(),
        "--jitter-ms".to_owned(),
        jitter_ms.to_string(),
    ];
    if let Some(c) = capacity {
        flags.extend(["--capacity".to_owned(), c.to_string()]);
    }
    flags
}

type Make<'m> = dyn Fn(Kind) -> Result<(Setup, Plan), String> + 'm;

/// Runs one pass for every target (in parallel or one after the other);
/// `make` starts a target's fleet and proxy and says how to drive it.
fn run_pass(ctx: &Ctx<'_>, kinds: &[Kind], parallel: bool, make: &Make<'_>) -> Vec<TargetRun> {
    let finish = |kind: Kind, setup: Setup, recorder: Recorder| {
        let log_lines = setup.target.log_lines();
        let config = setup.target.config.clone();
        drop(setup);
        TargetRun {
            kind,
            passes: vec![recorder],
            config,
            log_lines,
            error: None,
        }
    };
    let failed = |kind: Kind, why: String| {
        eprintln!("{}: cannot run: {why}", kind.name());
        TargetRun {
            kind,
            passes: Vec::new(),
            config: String::new(),
            log_lines: 0,
            error: Some(why),
        }
    };
    let cpu_of = |setup: &Setup| -> Arc<dyn Fn() -> Option<u64> + Send + Sync> {
        let pid = setup.target.pid();
        Arc::new(move || pid.map(procs::cpu_micros))
    };
    if !parallel {
        return kinds
            .iter()
            .map(|&kind| match make(kind) {
                Ok((setup, plan)) => {
                    let recorder = ctx.rt.block_on(client::run(plan, cpu_of(&setup)));
                    finish(kind, setup, recorder)
                }
                Err(why) => failed(kind, why),
            })
            .collect();
    }
    let mut prepared = Vec::new();
    let mut runs: Vec<Option<TargetRun>> = Vec::new();
    for &kind in kinds {
        match make(kind) {
            Ok(ready) => {
                prepared.push((runs.len(), kind, ready));
                runs.push(None);
            }
            Err(why) => runs.push(Some(failed(kind, why))),
        }
    }
    let mut setups = Vec::new();
    let recorders = ctx.rt.block_on(async {
        let mut tasks = Vec::new();
        for (slot, kind, (setup, plan)) in prepared {
            let cpu = cpu_of(&setup);
            tasks.push((slot, kind, tokio::spawn(client::run(plan, cpu))));
            setups.push(setup);
        }
        let mut done = Vec::new();
        for (slot, kind, task) in tasks {
            done.push((slot, kind, task.await));
        }
        done
    });
    for ((slot, kind, recorder), setup) in recorders.into_iter().zip(setups) {
        runs[slot] = Some(match recorder {
            Ok(recorder) => finish(kind, setup, recorder),
            Err(e) => failed(kind, format!("load task failed: {e}")),
        });
    }
    runs.into_iter().flatten().collect()
}

/// Raw errors of ordergate where the scenario's target is 0, and runs that
/// could not run at all.
pub(crate) fn check_raw_errors(runs: &[TargetRun], what: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for run in runs {
        if let Some(why) = &run.error {
            failures.push(format!("{}: did not run: {why}", run.kind.name()));
            continue;
        }
        if run.kind != Kind::Ordergate {
            continue;
        }
        for pass in &run.passes {
            let counts = pass.all_counts();
            if counts.raw_errors() > 0 {
                failures.push(format!(
                    "ordergate: {} raw errors in {what} (5xx without page {}, reset {}, timeout {}; target 0)",
                    counts.raw_errors(),
                    counts.other_error,
                    counts.reset,
                    counts.timeout
                ));
            }
            for (at, label, error) in &pass.events {
                if let Some(error) = error {
                    failures.push(format!(
                        "event {label} at {:.1}s failed: {error}",
                        at.as_secs_f64()
                    ));
                }
            }
        }
    }
    failures
}

/// Runs a scenario by name.
pub(crate) fn run(ctx: &Ctx<'_>, name: &str) -> Result<ScenarioResult, String> {
    match name {
        "steady" => Ok(two_pass(ctx, "steady", true)),
        "new-connections" => Ok(two_pass(ctx, "new-connections", false)),
        "overload" => Ok(overload(ctx, false)),
        "flash-sale" => Ok(overload(ctx, true)),
        "backend-kill" => Ok(backend_kill(ctx)),
        "slow-backend" => Ok(slow_backend(ctx)),
        "reload" => Ok(reload(ctx)),
        "soak" => crate::soak::run(ctx),
        "connections" => crate::connections::run(ctx),
        "tls" => crate::tls::run(ctx),
        "scale" => crate::scale::run(ctx),
        "idempotency" => crate::idempotency::run(ctx),
        "flash-sale-room" => crate::room::run(ctx),
        "records" => crate::records::run(ctx),
        other => Err(format!(
            "unknown scenario {other:?}; use one of: {}, {}, smoke",
            ALL.join(", "),
            NAMED_ONLY.join(", ")
        )),
    }
}

/// The reported phase of a closed-loop pass (its maximum).
fn max_phase(run: &TargetRun) -> Option<&PhaseStats> {
    run.passes.first()?.phases.iter().find(|p| p.report)
}

/// `steady` and `new-connections`: closed-loop maximum, then open-loop latency
/// at fixed shares of the slowest proxy's maximum, the same rates for all.
fn two_pass(ctx: &Ctx<'_>, name: &str, keepalive: bool) -> ScenarioResult {
    let d = ctx.main_duration(10.0, 2.0, 0.5);
    let fractions: &[f64] = if ctx.smoke {
        &[0.5]
    } else if keepalive {
        &[0.25, 0.5, 0.75]
    } else {
        &[0.5]
    };
    let connections = ctx.opts.connections.unwrap_or(50);
    let warmup = ctx.warmup();
    let make_setup = |kind: Kind| setup(kind, 2, &[], ProxySpec::new);

    let perf = if ctx.opts.profile {
        match profile::perf() {
            Ok(perf) => Some(perf),
            Err(why) => {
                eprintln!("--profile: {why}");
                None
            }
        }
    } else {
        None
    };
    let perf_data = |kind: Kind| {
        report::report_dir(ctx.smoke).join(format!("{name}-{}.perf.data", kind.name()))
    };
    if perf.is_some() {
        // No recording of an earlier run may stand in for one that fails now.
        for kind in &ctx.targets {
            let _ = std::fs::remove_file(perf_data(*kind));
        }
    }

    let closed = run_pass(
        ctx,
        &ctx.targets,
        ctx.opts.parallel.unwrap_or(false),
        &|kind| {
            let setup = make_setup(kind)?;
            let mut plan = ctx.plan(
                kind.name(),
                &setup.target,
                vec![
                    Phase {
                        name: "warm-up".to_owned(),
                        load: Load::Closed { connections },
                        duration: warmup,
                        report: false,
                    },
                    phase("max (closed loop)", Load::Closed { connections }, d),
                ],
                vec![Req::Browse],
            );
            plan.keepalive = keepalive;
            if let (Some(perf), Some(pid)) = (&perf, setup.target.pid()) {
                // The middle of the maximum, clear of its start and end.
                let margin = (d * 0.1).min(1.0);
                plan.events.push(Event {
                    at: warmup + secs(margin),
                    label: "perf record".to_owned(),
                    action: profile::record(
                        perf.clone(),
                        pid,
                        secs(d - 2.0 * margin),
                        perf_data(kind),
                    ),
                });
            }
            Ok((setup, plan))
        },
    );
    let profiles: Vec<profile::Profile> = perf
        .iter()
        .flat_map(|perf| {
            closed.iter().filter_map(|run| {
                let data = perf_data(run.kind);
                if !data.exists() {
                    return None;
                }
                match profile::breakdown(perf, &data) {
                    Ok(shares) => Some(profile::Profile {
                        kind: run.kind,
                        cpu_per_request: max_phase(run).and_then(PhaseStats::cpu_per_request),
                        shares,
                    }),
                    Err(why) => {
                        eprintln!("--profile {}: {why}", run.kind.name());
                        None
                    }
                }
            })
        })
        .collect();

    let max_of = |run: &TargetRun| -> Option<f64> {
        let p = max_phase(run)?;
        Some(p.total().counts.ok_2xx as f64 / p.seconds())
    };
    let proxies: Vec<f64> = closed
        .iter()
        .filter(|r| r.kind != Kind::Direct)
        .filter_map(max_of)
        .collect();
    let base = proxies
        .iter()
        .copied()
        .reduce(f64::min)
        .or_else(|| closed.iter().filter_map(max_of).reduce(f64::min))
        .unwrap_or(1000.0)
        .max(10.0);
    eprintln!("{name}: open-loop rates are shares of {base:.0} req/s (the slowest proxy's closed-loop maximum)");

    let open_pass = run_pass(
        ctx,
        &ctx.targets,
        ctx.opts.parallel.unwrap_or(false),
        &|kind| {
            let setup = make_setup(kind)?;
            let mut phases = vec![Phase {
                name: "warm-up".to_owned(),
                load: open(base * fractions[0]),
                duration: warmup,
                report: false,
            }];
            for f in fractions {
                phases.push(phase(
                    &format!("open {:.0}% ({:.0}/s)", f * 100.0, base * f),
                    open(base * f),
                    d,
                ));
            }
            let mut plan = ctx.plan(kind.name(), &setup.target, phases, vec![Req::Browse]);
            plan.pool = ctx.opts.pool.unwrap_or(128);
            plan.keepalive = keepalive;
            Ok((setup, plan))
        },
    );

    let mut runs = closed;
    for run in &mut runs {
        if let Some(open) = open_pass.iter().find(|o| o.kind == run.kind) {
            run.passes.extend(open.passes.iter().cloned());
            if run.error.is_none() {
                run.error.clone_from(&open.error);
            }
            if !open.config.is_empty() {
                run.config.clone_from(&open.config);
            }
        }
    }
    let failures = check_raw_errors(&runs, name);
    let (summary, profile_json) = if profiles.is_empty() {
        (String::new(), Value::Null)
    } else {
        profile::table(&profiles)
    };
    let conn = if keepalive {
        format!("HTTP/1.1 keep-alive, {connections} connections in closed loop, a pool of {} in open loop", ctx.opts.pool.unwrap_or(128))
    } else {
        "a new TCP connection per request (`Connection: close`), up to 50 at once in closed loop"
            .to_owned()
    };
    ScenarioResult {
        name: name.to_owned(),
        description: format!(
            "GET /api/products/N against 2 simulated backends (no added latency); {conn}. \
             First the closed-loop maximum per target, then open-loop at {} of {base:.0} req/s \
             (the slowest proxy's maximum), the same rates for every target.",
            fractions
                .iter()
                .map(|f| format!("{:.0}%", f * 100.0))
                .collect::<Vec<_>>()
                .join("/")
        ),
        runs,
        notes: Vec::new(),
        summary,
        summary_json: json!({ "open_loop_base_rate": base, "profile": profile_json }),
        failures,
    }
}

/// `overload` (GETs) and `flash-sale` (50% keyed checkout POSTs, critical,
/// with 50% reserved; 50% browsing, low): one backend of capacity 8 at 50 ms,
/// offered 0.5x, 1x, 3x, 5x and 0.5x of its capacity.
fn overload(ctx: &Ctx<'_>, flash: bool) -> ScenarioResult {
    let name = if flash { "flash-sale" } else { "overload" };
    let d = ctx.main_duration(20.0, 2.0, 0.5);
    let steps: [(&str, f64, f64); 5] = [
        ("0.5x", 0.5, 0.25),
        ("1x", 1.0, 0.5),
        ("3x", 3.0, 1.0),
        ("5x", 5.0, 1.0),
        ("0.5x again", 0.5, 0.25),
    ];
    let mix = if flash {
        vec![Req::Checkout, Req::Browse]
    } else {
        vec![Req::Browse]
    };
    let flags = sim_flags(OVERLOAD_LATENCY_MS, 0, Some(GUARD_MAX_IN_FLIGHT));
    let runs = run_pass(
        ctx,
        &ctx.targets,
        ctx.opts.parallel.unwrap_or(true),
        &|kind| {
            let setup = setup(kind, 1, &flags, |backends| ProxySpec {
                overload_guard: true,
                priorities: flash,
                ..ProxySpec::new(backends)
            })?;
            let phases = steps
                .iter()
                .map(|(label, x, share)| phase(label, open(OVERLOAD_CAPACITY * x), d * share))
                .collect();
            let mut plan = ctx.plan(kind.name(), &setup.target, phases, mix.clone());
            plan.pool = ctx.opts.pool.unwrap_or(512);
            Ok((setup, plan))
        },
    );
    let failures = check_raw_errors(&runs, name);
    let (summary, summary_json) = if flash {
        report::flash_summary(&runs, OVERLOAD_CAPACITY)
    } else {
        report::overload_summary(&runs, OVERLOAD_CAPACITY)
    };
    let what = if flash {
        "50% checkout (POST /api/orders with a unique Idempotency-Key; ordergate route priority \
         critical, `reserved = { critical = 50 }`) and 50% browsing (GET /api/products/N, priority low)"
    } else {
        "GET /api/products/N"
    };
    ScenarioResult {
        name: name.to_owned(),
        description: format!(
            "{what} against ONE simulated backend with capacity 8 and 50 ms latency \
             ({OVERLOAD_CAPACITY:.0} req/s). ordergate: `max_in_flight = 8`, `[pools.queue] max_waiting = 64, \
             timeout = \"500ms\"`; HAProxy: `maxconn 8 maxqueue 64`, `timeout queue 500ms`; nginx: \
             `max_conns=8` (no queue: nginx's `queue` is nginx-plus only, so it answers 502 at once). \
             Open-loop load {} of capacity, {} s in all; client timeout {} ms. Targets run at the same time, \
             each with its own backend.",
            steps.iter().map(|s| s.0).collect::<Vec<_>>().join(" → "),
            steps.iter().map(|s| d * s.2).sum::<f64>(),
            ctx.opts.timeout.as_millis()
        ),
        runs,
        notes: vec![
            "A 503 from HAProxy (queue timeout or full) or a 502 from nginx (max_conns reached) counts as \
             `5xx` (no page marker, no Retry-After): that is their way of shedding, but shoppers see a raw error."
                .to_owned(),
            "`direct` has no protection: the backend queues without limit, so latency grows until the client \
             timeout."
                .to_owned(),
        ],
        summary,
        summary_json,
        failures,
    }
}

pub(crate) fn mode_event(at: f64, label: &str, backend: SocketAddr, mode: &'static str) -> Event {
    Event {
        at: secs(at),
        label: label.to_owned(),
        action: Box::new(move || {
            let response = support::request(
                backend,
                "PUT",
                "/__sim/mode",
                &[("content-type", "application/json")],
                mode.as_bytes(),
            )
            .map_err(|e| format!("PUT /__sim/mode: {e:?}"))?;
            if response.status == 200 {
                Ok(())
            } else {
                Err(format!("PUT /__sim/mode: status {}", response.status))
            }
        }),
    }
}

fn signal_event(at: f64, label: &str, pid: u32, signal: &'static str) -> Event {
    Event {
        at: secs(at),
        label: label.to_owned(),
        action: Box::new(move || procs::signal(pid, signal)),
    }
}

/// Three backends (capacity 8 at 20 ms each), GETs at half their capacity; one
/// backend is stopped (SIGSTOP) and resumed, later another is killed (SIGKILL).
fn backend_kill(ctx: &Ctx<'_>) -> ScenarioResult {
    let d = ctx.main_duration(20.0, 2.0, 1.5);
    let rate = ctx.opts.rate.unwrap_or(FLEET_RATE);
    let flags = sim_flags(FLEET_LATENCY_MS, 5, Some(GUARD_MAX_IN_FLIGHT));
    let cuts = [0.2, 0.35, 0.55];
    let runs = run_pass(
        ctx,
        &ctx.targets,
        ctx.opts.parallel.unwrap_or(true),
        &|kind| {
            let setup = setup(kind, 3, &flags, |backends| ProxySpec {
                health: true,
                read_timeout: Duration::from_secs(1),
                ..ProxySpec::new(backends)
            })?;
            let phases = vec![
                warmup_phase(ctx, rate),
                phase("before", open(rate), d * cuts[0]),
                phase("b1 stopped", open(rate), d * (cuts[1] - cuts[0])),
                phase("b1 resumed", open(rate), d * (cuts[2] - cuts[1])),
                phase("b0 killed", open(rate), d * (1.0 - cuts[2])),
            ];
            let mut plan = ctx.plan(kind.name(), &setup.target, phases, vec![Req::Browse]);
            let (b0, b1) = (setup.backends[0].pid(), setup.backends[1].pid());
            let w = ctx.warmup().as_secs_f64();
            plan.events = vec![
                signal_event(w + d * cuts[0], "SIGSTOP b1", b1, "STOP"),
                signal_event(w + d * cuts[1], "SIGCONT b1", b1, "CONT"),
                signal_event(w + d * cuts[2], "SIGKILL b0", b0, "KILL"),
            ];
            Ok((setup, plan))
        },
    );
    let failures = check_raw_errors(&runs, "backend-kill");
    let (summary, summary_json) = report::segments_summary(&runs);
    ScenarioResult {
        name: "backend-kill".to_owned(),
        description: format!(
            "GET /api/products/N at {rate:.0} req/s (half the capacity of 3 simulated backends, one process \
             each, capacity 8 at 20±5 ms). At {:.0}% of the run backend b1 is frozen with SIGSTOP, at {:.0}% \
             resumed with SIGCONT, at {:.0}% backend b0 is killed with SIGKILL. Proxies: read timeout 1 s, up to \
             3 tries; ordergate and HAProxy probe /health every 1 s (2 failures: down) and eject after 3 \
             failures; nginx is passive only (`max_fails=3 fail_timeout=5s`). {d} s; targets at the same time, \
             each with its own backends.",
            cuts[0] * 100.0,
            cuts[1] * 100.0,
            cuts[2] * 100.0
        ),
        runs,
        notes: vec![
            "`direct` spreads its connections over the three backends: it shows what shoppers would see with \
             no proxy (refused connections, hung requests)."
                .to_owned(),
        ],
        summary,
        summary_json,
        failures,
    }
}

/// Three backends, one becomes slow (300 ms) in the middle of the run.
fn slow_backend(ctx: &Ctx<'_>) -> ScenarioResult {
    let d = ctx.main_duration(20.0, 2.0, 1.0);
    let rate = ctx.opts.rate.unwrap_or(FLEET_RATE);
    let flags = sim_flags(FLEET_LATENCY_MS, 5, Some(GUARD_MAX_IN_FLIGHT));
    let cuts = [0.3, 0.8];
    let balance = ctx.opts.balance.clone();
    let runs = run_pass(
        ctx,
        &ctx.targets,
        ctx.opts.parallel.unwrap_or(true),
        &|kind| {
            let setup = setup(kind, 3, &flags, |backends| ProxySpec {
                least: true,
                ordergate_least: balance.clone(),
                read_timeout: Duration::from_secs(1),
                ..ProxySpec::new(backends)
            })?;
            let phases = vec![
                warmup_phase(ctx, rate),
                phase("before", open(rate), d * cuts[0]),
                phase("b2 at 300 ms", open(rate), d * (cuts[1] - cuts[0])),
                phase("b2 restored", open(rate), d * (1.0 - cuts[1])),
            ];
            let mut plan = ctx.plan(kind.name(), &setup.target, phases, vec![Req::Browse]);
            let b2 = setup.backends[2].addr;
            let w = ctx.warmup().as_secs_f64();
            plan.events = vec![
                mode_event(
                    w + d * cuts[0],
                    "b2 latency 300 ms",
                    b2,
                    r#"{"latency_ms":300,"jitter_ms":0}"#,
                ),
                mode_event(
                    w + d * cuts[1],
                    "b2 latency 20 ms",
                    b2,
                    r#"{"latency_ms":20,"jitter_ms":5}"#,
                ),
            ];
            Ok((setup, plan))
        },
    );
    let failures = check_raw_errors(&runs, "slow-backend");
    let (summary, summary_json) = report::segments_summary(&runs);
    ScenarioResult {
        name: "slow-backend".to_owned(),
        description: format!(
            "GET /api/products/N at {rate:.0} req/s over 3 simulated backends (capacity 8 at 20±5 ms each); \
             from {:.0}% to {:.0}% of the run backend b2 answers in 300 ms. ordergate `{}`, nginx `least_conn`, \
             HAProxy `balance leastconn`. {d} s; targets at the same time, each with its own backends.",
            cuts[0] * 100.0,
            cuts[1] * 100.0,
            ctx.opts.balance
        ),
        runs,
        notes: Vec::new(),
        summary,
        summary_json,
        failures,
    }
}

/// How a proxy is told to reload its config, as its operators do it.
pub(crate) fn reload_action(kind: Kind, target: &Target) -> Result<(String, Action), String> {
    let pid = target.pid();
    match (kind, target.admin, pid) {
        (Kind::Ordergate, Some(admin), _) => Ok((
            "POST /reload".to_owned(),
            Box::new(move || {
                let response = support::request(
                    admin,
                    "POST",
                    "/reload",
                    support::admin_headers("POST"),
                    b"",
                )
                .map_err(|e| format!("POST /reload: {e:?}"))?;
                if response.status == 200 {
                    Ok(())
                } else {
                    Err(format!(
                        "POST /reload: {} {}",
                        response.status,
                        response.text()
                    ))
                }
            }),
        )),
        // `nginx -s reload` sends the master SIGHUP.
        (Kind::Nginx, _, Some(pid)) => Ok((
            "SIGHUP".to_owned(),
            Box::new(move || procs::signal(pid, "HUP")),
        )),
        // The master of `haproxy -W` reloads on SIGUSR2.
        (Kind::Haproxy, _, Some(pid)) => Ok((
            "SIGUSR2".to_owned(),
            Box::new(move || procs::signal(pid, "USR2")),
        )),
        _ => Err(format!("{} cannot reload", kind.name())),
    }
}

/// ordergate (`POST /reload` on the admin API), nginx (SIGHUP) and HAProxy
/// (SIGUSR2 to its master) reloading every 2 s under load, compared with the
/// same load without reloads.
fn reload(ctx: &Ctx<'_>) -> ScenarioResult {
    let d = ctx.main_duration(10.0, 2.0, 1.0);
    let rate = ctx.opts.rate.unwrap_or(2000.0);
    let every = if d >= 4.0 { 2.0 } else { d / 2.0 };
    let kinds: Vec<Kind> = ctx
        .targets
        .iter()
        .copied()
        .filter(|k| matches!(k, Kind::Ordergate | Kind::Nginx | Kind::Haproxy))
        .collect();
    let runs = run_pass(ctx, &kinds, false, &|kind| {
        let setup = setup(kind, 3, &[], |backends| ProxySpec {
            admin: true,
            ..ProxySpec::new(backends)
        })?;
        let phases = vec![
            warmup_phase(ctx, rate),
            phase("no reloads", open(rate), d),
            phase(&format!("reload every {every:.1}s"), open(rate), d),
        ];
        let mut plan = ctx.plan(kind.name(), &setup.target, phases, vec![Req::Browse]);
        let start = ctx.warmup().as_secs_f64() + d;
        let mut at = start + every / 2.0;
        let mut n = 0;
        while at < start + d {
            n += 1;
            let (how, action) = reload_action(kind, &setup.target)?;
            plan.events.push(Event {
                at: secs(at),
                label: format!("{how} #{n}"),
                action,
            });
            at += every;
        }
        Ok((setup, plan))
    });
    let failures = check_raw_errors(&runs, "reload");
    let (summary, summary_json) = report::reload_summary(&runs);
    ScenarioResult {
        name: "reload".to_owned(),
        description: format!(
            "GET /api/products/N at {rate:.0} req/s over 3 simulated backends (no added latency): {d} s \
             without reloads, then {d} s with a config reload every {every:.1} s, each proxy reloaded as its \
             operators do it: ordergate `POST /reload` on the admin API, nginx SIGHUP to the master (what \
             `nginx -s reload` sends), HAProxy SIGUSR2 to the master of `haproxy -W` (seamless, with \
             `expose-fd listeners`)."
        ),
        runs,
        notes: Vec::new(),
        summary,
        summary_json,
        failures,
    }
}
