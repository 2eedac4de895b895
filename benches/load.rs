//! How does ordergate behave under load, next to no proxy at all, nginx and
//! HAProxy? Throughput, latency percentiles (open loop, measured from the
//! scheduled send time, so without coordinated omission), what shoppers get
//! when the order backend is overloaded, slow, frozen or killed, and the proxy
//! CPU time per request.
//!
//! Each run starts the simulated order fleet (`ordergate sim`, one process per
//! backend), the proxies under test (ordergate from a temporary config; nginx
//! and HAProxy from `benches/peers/*.tmpl` when installed), drives load with a
//! built-in HTTP/1.1 load generator, prints a progress line per second on
//! stderr (phase, elapsed, rates; only on a terminal and not in CI), a
//! markdown table on stdout, and writes `target/bench-report/<scenario>.json`
//! (raw results, time series in 100 ms to 1 s buckets) and `.svg`
//! (throughput, latency, errors and pages over time, one line per target);
//! smoke runs write to `target/bench-report/smoke/`.
//!
//! ```text
//! cargo bench --bench load -- smoke --quick          # every scenario ~1 s, ordergate only; exit 1 on raw errors
//! cargo bench --bench load -- steady --targets direct,ordergate,nginx,haproxy --duration 10
//! cargo bench --bench load -- overload               # 0.5x → 1x → 3x → 5x → 0.5x of capacity, about 1 min
//! cargo bench --bench load -- flash-sale | backend-kill | slow-backend | reload | new-connections
//! cargo bench --bench load -- soak                   # 10 min of mixed traffic, faults, reloads, restarts
//! cargo bench --bench load -- connections | tls      # memory per idle shopper; TLS handshakes
//! cargo bench --bench load -- idempotency [--store redis]   # CPU and memory of edge idempotency records
//! cargo bench --bench load -- flash-sale-room        # 10x capacity through a waiting room, 60 s
//! cargo bench --bench load -- --help
//! ```
//!
//! The proxy under test is pinned to CPU 0 (`taskset`), the load generator and
//! the backends to CPU 1; every proxy gets one worker (ordergate `threads = 1`,
//! nginx `worker_processes 1`, HAProxy `nbthread 1`). nginx and HAProxy come
//! from Debian (`apt-get install nginx haproxy`); a missing one is skipped.

#[path = "load/client.rs"]
mod client;
#[path = "load/connections.rs"]
mod connections;
#[path = "load/idempotency.rs"]
mod idempotency;
#[path = "load/procs.rs"]
mod procs;
#[path = "load/profile.rs"]
mod profile;
#[path = "load/records.rs"]
mod records;
#[path = "load/report.rs"]
mod report;
#[path = "load/room.rs"]
mod room;
#[path = "load/scale.rs"]
mod scale;
#[path = "load/scenarios.rs"]
mod scenarios;
#[path = "load/soak.rs"]
mod soak;
#[path = "load/stats.rs"]
mod stats;
#[path = "../tests/it/support/mod.rs"]
mod support;
#[path = "load/svg.rs"]
mod svg;
#[path = "load/tls.rs"]
mod tls;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use procs::Kind;
use serde_json::json;

const USAGE: &str = "\
usage: cargo bench --bench load -- <scenario> [options]

scenarios:
  steady           closed-loop max throughput, then open loop at 25/50/75% of it
  overload         one backend (capacity 8, 50 ms: 160 req/s); load 0.5x 1x 3x 5x 0.5x
  flash-sale       as overload, 50% keyed checkout POSTs (critical, 50% reserved) + 50% browsing (low)
  backend-kill     3 backends at 50% load; SIGSTOP one (then SIGCONT), SIGKILL another
  slow-backend     3 backends; one answers in 300 ms mid-run (least_request / peak_ewma)
  reload           ordergate POST /reload every 2 s under load vs no reloads
  new-connections  a new TCP connection per request
  soak             ordergate only, 10 min (--quick: 20 s): GETs, keyed and unkeyed POSTs over 3
                   backends; a fault every 30 s, a reload every 20 s, a backend restart every 2 min;
                   raw errors, duplicated orders, RSS and open files over time
  connections      up to 10 000 idle keep-alive shoppers (--connections N): memory per idle
                   connection, CPU and p99 with each shopper sending every few seconds, ordergate
                   at its descriptor limit; --read-buffer sweeps ordergate's server.read_buffer
  tls              full TLS handshakes per second and CPU per keep-alive HTTPS request,
                   ordergate (rustls) against nginx (OpenSSL)
  idempotency      ordergate only: CPU per keyed POST with and without [routes.idempotency]
                   (alternating rounds), memory per stored record; --store redis adds the
                   records in a local redis-server
  flash-sale-room  ordergate only: shoppers who keep their cookies arrive at 10x one backend's
                   capacity for 60 s (--quick: 10 s) through a [[rooms]] waiting room: backend
                   utilisation, raw errors, admitted shoppers' p99, queue length, admission rate
                   and ETA error over time (flash-sale-room-line.svg)
  scale            in-process: ns per route classification from 1 to 10 000 routes, pool build
                   and pick per algorithm from 3 to 2 000 backends, a reload of 2 000
                   backends and 10 000 routes, records curves (--quick: smaller)
  smoke            every scenario but connections, tls and scale for about 1 s (soak 20 s), ordergate
                   only unless --targets; exit 1 on raw errors

options:
  --targets LIST     direct,ordergate,pingora-floor,pingora-floor-timeouts,pingora-floor-nets,
                     nginx,haproxy
                     (default: all available, the floors only in steady, new-connections
                     and connections; smoke: ordergate)
  --duration SECS    main phase length: steady/new-connections each phase (default 10),
                     overload/flash-sale the 3x and 5x phases (20), backend-kill and
                     slow-backend the whole run (20), reload each half (10)
  --quick            short runs (about 2 s per main phase)
  --connections N    closed-loop connections (default 50)
  --pool N           open-loop connection pool (default 128 steady, 512 overload, 256 others)
  --rate R           requests/s of backend-kill, slow-backend and reload
  --store KIND       idempotency: memory (default) or redis (also the records in redis-server)
  --timeout-ms MS    client timeout from the scheduled send time (default 5000)
  --balance ALG      ordergate algorithm of slow-backend: least_request (default) or peak_ewma
  --parallel | --sequential   run the targets at the same time or one after the other
                     (default: sequential for steady and new-connections, parallel otherwise)
  --no-pin           do not pin processes to CPUs
  --quiet            no progress lines (none either in CI or when stderr is not a terminal)
  --read-buffer LIST connections: ordergate's server.read_buffer values in bytes, e.g.
                     1024,4096,16384,65536 (each measured idle and under steady load)
  --profile          steady, new-connections: sample each proxy with `perf record` during the
                     closed-loop maximum and show where its CPU time goes, by component
                     (kernel, pingora, tokio, allocator, the proxy's own code...); the raw
                     <scenario>-<target>.perf.data files stay in target/bench-report/
";

/// Command-line options.
pub(crate) struct Options {
    scenario: Option<String>,
    targets: Option<Vec<Kind>>,
    /// `--duration`.
    pub(crate) duration: Option<f64>,
    /// `--quick`.
    pub(crate) quick: bool,
    /// `--connections`.
    pub(crate) connections: Option<usize>,
    /// `--pool`.
    pub(crate) pool: Option<usize>,
    /// `--rate`.
    pub(crate) rate: Option<f64>,
    /// `--timeout-ms`.
    pub(crate) timeout: Duration,
    /// `--balance`.
    pub(crate) balance: String,
    /// `--parallel` / `--sequential`.
    pub(crate) parallel: Option<bool>,
    pin: bool,
    /// `--quiet`.
    pub(crate) quiet: bool,
    /// `--profile`.
    pub(crate) profile: bool,
    /// `--read-buffer`, in bytes.
    pub(crate) read_buffer: Vec<u64>,
    /// `--store`: `memory` (default) or `redis`.
    pub(crate) store: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        scenario: None,
        targets: None,
        duration: None,
        quick: false,
        connections: None,
        pool: None,
        rate: None,
        timeout: Duration::from_secs(5),
        balance: "least_request".to_owned(),
        parallel: None,
        pin: true,
        quiet: false,
        profile: false,
        read_buffer: Vec::new(),
        store: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            // cargo bench passes --bench to harness = false benches.
            "--bench" => {}
            "--help" | "-h" => return Err(String::new()),
            "--quick" => opts.quick = true,
            "--no-pin" => opts.pin = false,
            "--quiet" => opts.quiet = true,
            "--profile" => opts.profile = true,
            "--parallel" => opts.parallel = Some(true),
            "--sequential" => opts.parallel = Some(false),
            "--targets" => {
                let list = value("--targets")?;
                let mut kinds = Vec::new();
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let kind = Kind::parse(name).ok_or(format!(
                        "unknown target {name:?}; use direct, ordergate, nginx, haproxy"
                    ))?;
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                }
                opts.targets = Some(kinds);
            }
            "--duration" => opts.duration = Some(number(&value("--duration")?, "--duration")?),
            "--connections" => {
                opts.connections = Some(number(&value("--connections")?, "--connections")? as usize)
            }
            "--pool" => opts.pool = Some(number(&value("--pool")?, "--pool")? as usize),
            "--rate" => opts.rate = Some(number(&value("--rate")?, "--rate")?),
            "--read-buffer" => {
                for size in value("--read-buffer")?.split(',').map(str::trim) {
                    let bytes = number(size, "--read-buffer")?;
                    if !(512.0..=4.0 * 1024.0 * 1024.0).contains(&bytes) {
                        return Err(format!(
                            "--read-buffer {size}: between 512 and 4194304 bytes"
                        ));
                    }
                    opts.read_buffer.push(bytes as u64);
                }
            }
            "--store" => {
                let kind = value("--store")?;
                if kind != "memory" && kind != "redis" {
                    return Err(format!("--store {kind}: use memory or redis"));
                }
                opts.store = Some(kind);
            }
            "--timeout-ms" => {
                opts.timeout =
                    Duration::from_millis(number(&value("--timeout-ms")?, "--timeout-ms")? as u64)
            }
            "--balance" => {
                let alg = value("--balance")?;
                if alg != "least_request" && alg != "peak_ewma" {
                    return Err(format!("--balance {alg}: use least_request or peak_ewma"));
                }
                opts.balance = alg;
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            scenario if opts.scenario.is_none() => opts.scenario = Some(scenario.to_owned()),
            extra => return Err(format!("unexpected argument {extra:?}")),
        }
    }
    Ok(opts)
}

fn number(text: &str, name: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{name} {text:?}: not a positive number")),
    }
}

/// Whether a person is watching: stderr is a terminal and `CI` is not set
/// (GitHub Actions, GitLab and most others set `CI=true`).
fn progress_wanted() -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    !ci && std::io::stderr().is_terminal()
}

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    // Hundreds of client connections per target, several targets at once.
    ordergate::server::raise_open_files_limit();
    let mut opts = match parse_args() {
        Ok(opts) => opts,
        Err(why) if why.is_empty() => {
            print!("{USAGE}");
            return 0;
        }
        Err(why) => {
            eprintln!("{why}\n\n{USAGE}");
            return 2;
        }
    };
    // Progress lines are for a person watching; CI logs get the report only.
    if !progress_wanted() {
        opts.quiet = true;
    }
    let Some(scenario) = opts.scenario.clone() else {
        // `cargo bench` without a filter runs every bench: do nothing long here.
        print!("{USAGE}");
        return 0;
    };
    let smoke = scenario == "smoke";
    let names: Vec<&str> = if smoke {
        scenarios::ALL.to_vec()
    } else if scenarios::ALL.contains(&scenario.as_str())
        || scenarios::NAMED_ONLY.contains(&scenario.as_str())
    {
        vec![scenario.as_str()]
    } else {
        eprintln!(
            "unknown scenario {scenario:?}; use one of: {}, {}, smoke\n\n{USAGE}",
            scenarios::ALL.join(", "),
            scenarios::NAMED_ONLY.join(", ")
        );
        return 2;
    };
    let requested = opts.targets.clone().unwrap_or_else(|| {
        if smoke {
            vec![Kind::Ordergate]
        } else if scenarios::COST.contains(&scenario.as_str()) {
            Kind::ALL.to_vec()
        } else {
            // The floor only tells something where cost per request is measured.
            Kind::ALL
                .into_iter()
                .filter(|k| {
                    !matches!(
                        k,
                        Kind::PingoraFloor | Kind::PingoraFloorTimeouts | Kind::PingoraFloorNets
                    )
                })
                .collect()
        }
    });
    let targets: Vec<Kind> = requested.into_iter().filter(|k| k.available()).collect();
    if targets.is_empty() {
        eprintln!("no target to run");
        return 2;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = procs::pin_self(opts.pin);
    let machine = format!(
        "{cpus} CPUs; {pinning}; ordergate `threads = 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`"
    );
    eprintln!("{machine}");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the load generator's runtime: {e}");
            return 2;
        }
    };
    let ctx = scenarios::Ctx {
        rt: &rt,
        opts: &opts,
        targets: targets.clone(),
        smoke,
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    for name in names {
        eprintln!(
            "\n=== {name}: targets {} ===",
            targets
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let result = match scenarios::run(&ctx, name) {
            Ok(result) => result,
            Err(why) => {
                eprintln!("{name}: {why}");
                failures.push(format!("{name}: {why}"));
                continue;
            }
        };
        println!("{}", report::markdown(&result, &machine));
        let settings = json!({
            "targets": targets.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "duration": opts.duration,
            "quick": opts.quick,
            "smoke": smoke,
            "connections": opts.connections,
            "pool": opts.pool,
            "rate": opts.rate,
            "timeout_ms": opts.timeout.as_millis() as u64,
            "balance": opts.balance,
            "read_buffer": opts.read_buffer,
            "machine": machine,
        });
        match report::write_files(&result, settings, smoke) {
            Ok((json_path, Some(svg_path))) => {
                eprintln!("wrote {} and {}", json_path.display(), svg_path.display())
            }
            Ok((json_path, None)) => eprintln!("wrote {}", json_path.display()),
            Err(why) => eprintln!("cannot write the report files: {why}"),
        }
        failures.extend(
            result
                .failures
                .iter()
                .map(|f| format!("{}: {f}", result.name)),
        );
    }
    eprintln!("\ndone in {:.0} s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        0
    } else {
        eprintln!("\nFAILED checks:");
        for f in &failures {
            eprintln!("  {f}");
        }
        // Only smoke turns broken promises into an exit status; the other
        // scenarios report them.
        if smoke {
            1
        } else {
            0
        }
    }
}
