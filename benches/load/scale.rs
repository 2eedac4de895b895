//! `scale`: does a request cost the same with 1 route as with 10 000, and a
//! pick the same with 3 backends as with 2 000; how long does a reload of
//! a large config take? In-process, on ordergate's own types (no network,
//! so the numbers are the work that grows, not the kernel's):
//!
//! - **routes**: 1 → 10 000 routes (a third naming hosts, a quarter listing
//!   methods), a request that ends at the catch-all (every host and prefix
//!   checked, the worst case) and one that matches a deep route; the index
//!   against the linear scan it replaced, ns per classification;
//! - **backends**: 3 → 2 000 backends with weights 1 to 1 000, each
//!   balancing algorithm: building the pool, and a pick (with its in-flight
//!   count) in ns;
//! - **reload**: 2 000 backends in 20 pools and 10 000 routes, from the file
//!   to the new snapshot serving (`State::reload`, what `POST /reload` runs),
//!   split into parsing and validating, and building the snapshot;
//! - **records**: idempotency records, stale copies and rooms as they grow
//!   (`records.rs`, also alone as the `records` scenario).
//!
//! `SCALE_PARTS=routes,backends` (any of routes, backends, reload, records)
//! runs some parts only.
//!
//! Each figure is the median of several batches, so a busy moment of the
//! machine moves it less; compare the rows of one run.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method};
use ordergate::config::Config;
use ordergate::live::LiveState;
use ordergate::route::RouteTable;
use ordergate::state::State;
use ordergate::telemetry::Metrics;
use serde_json::{json, Value};

use crate::scenarios::{Ctx, ScenarioResult};

/// The promise of issue 25: classification grows by at most this from 1 to
/// 10 000 routes.
const ROUTE_GROWTH_NS: f64 = 300.0;
/// The promise of issue 25: a reload of 2 000 backends and 10 000 routes.
const RELOAD_BUDGET: Duration = Duration::from_millis(100);
/// Batches per figure (the median is reported).
const BATCHES: usize = 9;

const ALGORITHMS: [&str; 5] = [
    "round_robin",
    "random",
    "least_request",
    "peak_ewma",
    "consistent_hash",
];

pub(crate) fn run(ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    let quick = ctx.opts.quick;
    let mut summary = String::new();
    let mut failures = Vec::new();

    // SCALE_PARTS=routes,reload runs only those parts.
    let parts = std::env::var("SCALE_PARTS").unwrap_or_default();
    let wanted = |part: &str| parts.is_empty() || parts.split(',').any(|p| p.trim() == part);
    let mut json = serde_json::Map::new();
    if wanted("routes") {
        let (text, value) = routes(quick, &mut failures)?;
        summary.push_str(&text);
        json.insert("routes".to_owned(), value);
    }
    if wanted("backends") {
        let (text, value) = backends(quick)?;
        summary.push_str(&text);
        json.insert("backends".to_owned(), value);
    }
    if wanted("reload") {
        let (text, value) = reload(quick, &mut failures)?;
        summary.push_str(&text);
        json.insert("reload".to_owned(), value);
    }
    if wanted("records") {
        let (text, value) = crate::records::curves(ctx)?;
        summary.push_str(&text);
        json.insert("records".to_owned(), value);
    }

    Ok(ScenarioResult {
        name: "scale".to_owned(),
        description: "per-request cost from 1 to 10 000 routes and 3 to 2 000 backends, and a reload of 2 000 backends and 10 000 routes (in-process)".to_owned(),
        runs: Vec::new(),
        notes: vec![
            "medians of several batches on one thread; compare rows of one run".to_owned(),
        ],
        summary,
        summary_json: Value::Object(json),
        failures,
    })
}

/// Nanoseconds per call of `op`: the median over [`BATCHES`] batches of
/// `per_batch` calls.
fn ns_per_op(per_batch: u32, mut op: impl FnMut(u32)) -> f64 {
    let mut batches: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for i in 0..per_batch {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / f64::from(per_batch)
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[BATCHES / 2]
}

/// A config of `routes` routes (plus the catch-all `/`) over `pools` pools
/// of `per_pool` backends each, with weights 1 to 1 000.
fn config_text(routes: usize, pools: usize, per_pool: usize, balance: &str) -> String {
    let mut text = String::with_capacity(routes * 120 + pools * per_pool * 50);
    let hash = if balance == "consistent_hash" {
        "hash_key = \"client_ip\"\n"
    } else {
        ""
    };
    for p in 0..pools {
        let _ = write!(
            text,
            "[[pools]]\nname = \"pool{p}\"\nbalance = \"{balance}\"\n{hash}backends = ["
        );
        for b in 0..per_pool {
            let n = p * per_pool + b;
            let addr = SocketAddr::from((
                [127, 1 + (n / 60_000) as u8, 0, 1],
                1024 + (n % 60_000) as u16,
            ));
            let weight = n % 1000 + 1;
            let _ = write!(text, "{{ addr = \"{addr}\", weight = {weight} }},");
        }
        text.push_str("]\n");
    }
    for r in 0..routes {
        let pool = r % pools;
        let _ = write!(text, "[[routes]]\nname = \"r{r}\"\npool = \"pool{pool}\"\n");
        if r % 3 == 0 {
            let _ = writeln!(text, "host = \"shop{}.example\"", r % 97);
        }
        let _ = writeln!(text, "path_prefix = \"/store{r}/api/orders\"");
        if r % 4 == 0 {
            text.push_str("methods = [\"POST\", \"PUT\"]\n");
        }
    }
    text.push_str("[[routes]]\nname = \"catch-all\"\npool = \"pool0\"\n");
    text
}

fn parse(text: &str) -> Result<Config, String> {
    Config::from_toml(text).map_err(|errors| {
        let first: Vec<String> = errors.iter().take(3).map(ToString::to_string).collect();
        format!("the generated config is invalid: {}", first.join("; "))
    })
}

fn routes(quick: bool, failures: &mut Vec<String>) -> Result<(String, Value), String> {
    let sizes: &[usize] = if quick {
        &[1, 100, 1_000]
    } else {
        &[1, 10, 100, 1_000, 10_000]
    };
    let mut text = String::from(
        "\n### Routes: ns per classification\n\n| routes | index, to the catch-all | index, a deep route | linear scan, to the catch-all |\n|--:|--:|--:|--:|\n",
    );
    let mut rows = Vec::new();
    let mut first = None;
    let mut last = 0.0;
    for &n in sizes {
        let config = parse(&config_text(n, 1, 1, "round_robin"))?;
        let table = RouteTable::new(&config.routes, &Metrics::new(), &LiveState::default());
        let host = Some("shop5.example:8443");
        let deep = format!("/store{}/api/orders/7", n / 2);
        let catch_all = ns_per_op(100_000, |_| {
            black_box(table.classify(
                black_box(host),
                black_box("/account/orders/7"),
                &Method::GET,
            ));
        });
        let deep_route = ns_per_op(100_000, |_| {
            black_box(table.classify(black_box(host), black_box(&deep), &Method::GET));
        });
        let linear = ns_per_op((1_000_000 / (n as u32 + 10)).max(20), |_| {
            black_box(table.classify_linear(
                black_box(host),
                black_box("/account/orders/7"),
                &Method::GET,
            ));
        });
        let _ = writeln!(
            text,
            "| {n} | {catch_all:.0} | {deep_route:.0} | {linear:.0} |"
        );
        rows.push(json!({ "routes": n, "index_catch_all_ns": catch_all, "index_deep_ns": deep_route, "linear_catch_all_ns": linear }));
        first.get_or_insert(catch_all.max(deep_route));
        last = catch_all.max(deep_route);
    }
    let growth = last - first.unwrap_or(last);
    let _ = writeln!(
        text,
        "\nGrowth of the index from {} to {} routes: {growth:.0} ns (promise: at most {ROUTE_GROWTH_NS:.0} ns).",
        sizes[0],
        sizes[sizes.len() - 1]
    );
    if growth > ROUTE_GROWTH_NS {
        failures.push(format!(
            "route classification grew by {growth:.0} ns (more than {ROUTE_GROWTH_NS:.0})"
        ));
    }
    Ok((text, json!({ "rows": rows, "growth_ns": growth })))
}

fn backends(quick: bool) -> Result<(String, Value), String> {
    let sizes: &[usize] = if quick {
        &[3, 300]
    } else {
        &[3, 30, 300, 2_000]
    };
    let mut text = String::from(
        "\n### Backends: building a pool (ms) and a pick (ns), weights 1 to 1 000\n\n| algorithm |",
    );
    for n in sizes {
        let _ = write!(text, " {n}: build | {n}: pick |");
    }
    text.push_str("\n|---|");
    text.push_str(&"--:|--:|".repeat(sizes.len()));
    text.push('\n');
    let mut rows = Vec::new();
    let headers = HeaderMap::new();
    let timeout = Duration::from_secs(1);
    for algorithm in ALGORITHMS {
        let _ = write!(text, "| {algorithm} |");
        for &n in sizes {
            let config = parse(&config_text(1, 1, n, algorithm))?;
            let state = State::new(config.clone(), None);
            let build_ms = {
                let start = Instant::now();
                state.apply(config);
                start.elapsed().as_secs_f64() * 1000.0
            };
            let snapshot = state.snapshot();
            let pool = &snapshot.pools[0];
            let pick = ns_per_op(20_000, |i| {
                let ip = IpAddr::from(i.to_be_bytes());
                black_box(pool.pick(&headers, Some(ip), &[], timeout));
            });
            let _ = write!(text, " {build_ms:.1} | {pick:.0} |");
            rows.push(json!({ "algorithm": algorithm, "backends": n, "build_ms": build_ms, "pick_ns": pick }));
        }
        text.push('\n');
    }
    text.push_str(
        "\nBuilding includes the snapshot around the pool (one route) and its metric handles; a pick includes counting the request in flight and ending it.\n",
    );
    Ok((text, json!(rows)))
}

fn reload(quick: bool, failures: &mut Vec<String>) -> Result<(String, Value), String> {
    let (routes, pools, per_pool) = if quick {
        (1_000, 4, 50)
    } else {
        (10_000, 20, 100)
    };
    let text_config = config_text(routes, pools, per_pool, "round_robin");
    let dir = std::env::temp_dir().join(format!("ordergate-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join("ordergate.toml");
    std::fs::write(&path, &text_config).map_err(|e| format!("write {}: {e}", path.display()))?;
    let config = parse(&text_config)?;
    let state = State::new(config, Some(path.clone()));
    // CPU time of this thread (a reload runs on the thread that asks for
    // it): what other processes take of the machine does not count.
    let mut toml_ms = Vec::new();
    let mut parse_ms = Vec::new();
    let mut total_ms = Vec::new();
    let mut wall_ms = Vec::new();
    let rounds: usize = std::env::var("SCALE_RELOADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    for _ in 0..rounds.max(1) {
        let start = thread_cpu_ms();
        black_box(toml::de::DeTable::parse(&text_config).map_err(|e| e.to_string())?);
        toml_ms.push(thread_cpu_ms() - start);
        let start = thread_cpu_ms();
        parse(&text_config)?;
        parse_ms.push(thread_cpu_ms() - start);
        let (start, wall) = (thread_cpu_ms(), Instant::now());
        state
            .reload("bench")
            .map_err(|problems| format!("reload refused: {problems:?}"))?;
        total_ms.push(thread_cpu_ms() - start);
        wall_ms.push(wall.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (toml_ms, parse_ms, total_ms) = (median(toml_ms), median(parse_ms), median(total_ms));
    let wall_ms = median(wall_ms);
    let backends = pools * per_pool;
    let text = format!(
        "\n### Reload: {backends} backends in {pools} pools, {routes} routes ({} KiB of TOML)\n\n| step | CPU ms (median of {rounds}) |\n|---|--:|\n| TOML parsed (the toml crate alone) | {toml_ms:.1} |\n| read, parse and validate | {parse_ms:.1} |\n| build the snapshot and swap it in | {:.1} |\n| the whole reload | {total_ms:.1} |\n| the whole reload, wall clock (load of the machine included) | {wall_ms:.1} |\n\nPromise: under {} ms.\n",
        text_config.len() / 1024,
        (total_ms - parse_ms).max(0.0),
        RELOAD_BUDGET.as_millis()
    );
    if !quick && total_ms > RELOAD_BUDGET.as_secs_f64() * 1000.0 {
        failures.push(format!(
            "a reload of {backends} backends and {routes} routes took {total_ms:.0} ms"
        ));
    }
    Ok((
        text,
        json!({ "backends": backends, "pools": pools, "routes": routes, "toml_ms": toml_ms, "wall_ms": wall_ms, "parse_ms": parse_ms, "total_ms": total_ms }),
    ))
}

/// CPU time this thread has used, in ms (user and system).
fn thread_cpu_ms() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(0.0, |usage| {
        let (user, system) = (usage.user_time(), usage.system_time());
        (user.tv_sec() + system.tv_sec()) as f64 * 1000.0
            + (user.tv_usec() + system.tv_usec()) as f64 / 1000.0
    })
}
