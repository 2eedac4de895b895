//! Reports: markdown tables on stdout (per target and phase, ratios against
//! direct and the peers, scenario summaries) and `target/bench-report/` files
//! (`<scenario>.json` with the raw results and time series, `<scenario>.svg`
//! with throughput, latency and errors over time).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::client::Kind as Req;
use crate::procs::Kind;
use crate::scenarios::{ScenarioResult, TargetRun};
use crate::stats::{Percentiles, PhaseStats};

fn f1(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

/// The reported phases of a run, over all passes.
fn phases(run: &TargetRun) -> impl Iterator<Item = &PhaseStats> {
    run.passes
        .iter()
        .flat_map(|p| p.phases.iter())
        .filter(|p| p.report)
}

fn find_phase<'a>(run: &'a TargetRun, name: &str) -> Option<&'a PhaseStats> {
    phases(run).find(|p| p.name == name)
}

/// Numbers of one phase used by several tables.
struct Row {
    answered_per_s: f64,
    p99: f64,
    cpu: Option<f64>,
}

fn row(p: &PhaseStats) -> Row {
    let total = p.total();
    let w = p.window_total();
    Row {
        answered_per_s: (w.success + w.page + w.other_error) as f64 / p.seconds(),
        p99: Percentiles::of(&total.all).p99,
        cpu: p.cpu_per_request(),
    }
}

/// The whole markdown report of a scenario.
pub(crate) fn markdown(result: &ScenarioResult, machine: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## {}\n", result.name);
    let _ = writeln!(out, "{}\n", result.description);
    let _ = writeln!(out, "Machine: {machine}\n");
    // Scenarios with their own tables (tls) have no per-phase runs.
    let has_runs = !result.runs.is_empty();
    if has_runs {
        let _ = writeln!(
            out,
            "| target | phase | offered/s | req/s | 2xx/s | p50 ms | p99 ms | p99.9 ms | max ms | success | page | 5xx | reset | timeout | proxy CPU µs/req | proxy CPU (cores) |"
        );
        let _ = writeln!(
            out,
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
        );
    }
    for run in &result.runs {
        if let Some(why) = &run.error {
            let first = why.lines().next().unwrap_or_default();
            let _ = writeln!(out, "| {} | did not run: {first} |", run.kind.name());
            if run.passes.is_empty() {
                continue;
            }
        }
        for p in phases(run) {
            let total = p.total();
            let c = &total.counts;
            let l = Percentiles::of(&total.all);
            let r = row(p);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.kind.name(),
                p.name,
                f1(c.total() as f64 / p.seconds()),
                f1(r.answered_per_s),
                f1(p.window_total().ok_2xx as f64 / p.seconds()),
                f1(l.p50),
                f1(l.p99),
                f1(l.p999),
                f1(l.max),
                c.success,
                c.page,
                c.other_error,
                c.reset,
                c.timeout,
                r.cpu.map_or("–".to_owned(), f1),
                p.cpu_share().map_or("–".to_owned(), |s| format!("{s:.2}")),
            );
        }
    }
    out.push_str(&ratios(result));
    if !result.summary.is_empty() {
        out.push('\n');
        out.push_str(&result.summary);
    }
    let stale: Vec<String> = result
        .runs
        .iter()
        .map(|r| {
            (
                r.kind,
                r.passes.iter().map(|p| p.stale_retries).sum::<u64>(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    let mut notes = result.notes.clone();
    if !stale.is_empty() {
        notes.push(format!(
            "Keep-alive connections the server had closed before a request was sent on them (sent again on a \
             new connection, not counted as errors): {}.",
            stale.join(", ")
        ));
    }
    notes.push(
        "offered/s = requests scheduled in the phase ÷ its length; req/s and 2xx/s = answers that arrived \
         during the phase ÷ its length; counts and latencies = requests scheduled in the phase. Latency is \
         measured from the scheduled send time (open loop) or the send time (closed loop) to the last byte \
         of the answer; `5xx` = a 5xx without ordergate's `x-ordergate-page` marker; `reset` includes \
         refused connections; proxy CPU = utime+stime of the proxy's processes (nginx and HAProxy: master + \
         workers, with the workers a reload retired) from /proc over the phase, per answer that arrived during it (at low rates the idle cost dominates)."
            .to_owned(),
    );
    for note in notes {
        let _ = writeln!(out, "\n- {note}");
    }
    if result.failures.is_empty() {
        let _ = writeln!(out, "\nChecks: ok (no raw errors from ordergate).");
    } else {
        let _ = writeln!(out, "\nChecks FAILED:");
        for f in &result.failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out
}

/// Ratios of each target against direct and against each proxy, phase by phase.
fn ratios(result: &ScenarioResult) -> String {
    let ran: Vec<&TargetRun> = result
        .runs
        .iter()
        .filter(|r| !r.passes.is_empty())
        .collect();
    if ran.len() < 2 {
        return String::new();
    }
    let direct = ran.iter().find(|r| r.kind == Kind::Direct);
    let proxies: Vec<&&TargetRun> = ran.iter().filter(|r| r.kind != Kind::Direct).collect();
    let mut out = String::from("\nRatios (same phase; req/s and p99 against direct; req/s, p99 and CPU µs/req against each proxy):\n\n| phase | target |");
    let mut sep = String::from("|---|---|");
    if direct.is_some() {
        out.push_str(" req/s ÷ direct | p99 ÷ direct |");
        sep.push_str("--:|--:|");
    }
    for p in &proxies {
        let _ = write!(out, " req/s ÷ {0} | p99 ÷ {0} | CPU ÷ {0} |", p.kind.name());
        sep.push_str("--:|--:|--:|");
    }
    out.push('\n');
    out.push_str(&sep);
    out.push('\n');
    let names: Vec<String> = phases(ran[0]).map(|p| p.name.clone()).collect();
    for name in names {
        for run in &ran {
            let Some(p) = find_phase(run, &name) else {
                continue;
            };
            let me = row(p);
            let _ = write!(out, "| {name} | {} |", run.kind.name());
            if let Some(direct) = direct {
                let d = find_phase(direct, &name).map(row);
                let _ = write!(
                    out,
                    " {} | {} |",
                    ratio(
                        Some(me.answered_per_s),
                        d.as_ref().map(|d| d.answered_per_s)
                    ),
                    ratio(Some(me.p99), d.as_ref().map(|d| d.p99))
                );
            }
            for peer in &proxies {
                let o = find_phase(peer, &name).map(row);
                let _ = write!(
                    out,
                    " {} | {} | {} |",
                    ratio(
                        Some(me.answered_per_s),
                        o.as_ref().map(|o| o.answered_per_s)
                    ),
                    ratio(Some(me.p99), o.as_ref().map(|o| o.p99)),
                    ratio(me.cpu, o.as_ref().and_then(|o| o.cpu))
                );
            }
            out.push('\n');
        }
    }
    out
}

/// Per phase: goodput as share of capacity, admitted latency, shed share, raw errors.
pub(crate) fn overload_summary(runs: &[TargetRun], capacity: f64) -> (String, Value) {
    let mut out = format!(
        "Overload per phase (capacity {capacity:.0} req/s; goodput = 2xx/s; admitted = answers from the backend; \
         shed = ordergate pages with Retry-After):\n\n\
         | target | phase | offered/s | goodput/s | goodput ÷ capacity | admitted p50 ms | admitted p99 ms | shed | other pages | 5xx (unmarked) | reset | timeout | raw errors |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    );
    let mut rows = Vec::new();
    for run in runs {
        for p in phases(run) {
            let total = p.total();
            let c = &total.counts;
            let admitted = Percentiles::of(&total.success);
            let goodput = p.window_total().ok_2xx as f64 / p.seconds();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0}% | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
                run.kind.name(),
                p.name,
                f1(c.total() as f64 / p.seconds()),
                f1(goodput),
                goodput * 100.0 / capacity,
                f1(admitted.p50),
                f1(admitted.p99),
                pct(c.page_retry_after, c.total()),
                c.page - c.page_retry_after,
                pct(c.other_error, c.total()),
                c.reset,
                c.timeout,
                c.raw_errors(),
                pct(c.raw_errors(), c.total()),
            );
            rows.push(json!({
                "target": run.kind.name(),
                "phase": p.name,
                "offered_per_s": c.total() as f64 / p.seconds(),
                "goodput_per_s": goodput,
                "goodput_share_of_capacity": goodput / capacity,
                "admitted_p50_ms": admitted.p50,
                "admitted_p99_ms": admitted.p99,
                "shed_share": c.page_retry_after as f64 / c.total().max(1) as f64,
                "page_reasons": c.page_reasons,
                "unmarked_5xx": c.other_error,
                "reset": c.reset,
                "timeout": c.timeout,
                "raw_errors": c.raw_errors(),
            }));
        }
    }
    (out, json!({ "capacity_per_s": capacity, "phases": rows }))
}

/// Per phase: checkout goodput against its reserved share, and browsing.
pub(crate) fn flash_summary(runs: &[TargetRun], capacity: f64) -> (String, Value) {
    let reserved = capacity * 0.5;
    let mut out = format!(
        "Flash sale per phase (capacity {capacity:.0} req/s; checkout's reserved share: 50% = {reserved:.0} req/s; \
         only ordergate knows priorities — nginx and HAProxy treat both kinds alike):\n\n\
         | target | phase | checkout offered/s | checkout 2xx/s | ÷ reserved | ÷ capacity | checkout admitted p99 ms | checkout pages | checkout raw errors | browse 2xx/s | browse pages | browse raw errors |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    );
    let mut rows = Vec::new();
    for run in runs {
        let Some(first) = run.passes.first() else {
            continue;
        };
        let (Some(ci), Some(bi)) = (
            first.kind_index(Req::Checkout),
            first.kind_index(Req::Browse),
        ) else {
            continue;
        };
        for p in phases(run) {
            let (checkout, browse) = (&p.kinds[ci], &p.kinds[bi]);
            let secs = p.seconds();
            let good = p.window[ci].ok_2xx as f64 / secs;
            let admitted = Percentiles::of(&checkout.success);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0}% | {:.0}% | {} | {} | {} | {} | {} | {} |",
                run.kind.name(),
                p.name,
                f1(checkout.counts.total() as f64 / secs),
                f1(good),
                good * 100.0 / reserved,
                good * 100.0 / capacity,
                f1(admitted.p99),
                checkout.counts.page,
                checkout.counts.raw_errors(),
                f1(p.window[bi].ok_2xx as f64 / secs),
                browse.counts.page,
                browse.counts.raw_errors(),
            );
            rows.push(json!({
                "target": run.kind.name(),
                "phase": p.name,
                "checkout_offered_per_s": checkout.counts.total() as f64 / secs,
                "checkout_goodput_per_s": good,
                "checkout_goodput_share_of_reserved": good / reserved,
                "checkout_goodput_share_of_capacity": good / capacity,
                "checkout_admitted_p99_ms": admitted.p99,
                "checkout_pages": checkout.counts.page,
                "checkout_raw_errors": checkout.counts.raw_errors(),
                "browse_goodput_per_s": p.window[bi].ok_2xx as f64 / secs,
                "browse_pages": browse.counts.page,
                "browse_raw_errors": browse.counts.raw_errors(),
            }));
        }
    }
    (
        out,
        json!({ "capacity_per_s": capacity, "checkout_reserved_per_s": reserved, "phases": rows }),
    )
}

/// Per segment latency and raw errors, and the events with their times.
pub(crate) fn segments_summary(runs: &[TargetRun]) -> (String, Value) {
    let mut out = String::from(
        "Per segment (answers from the backend and pages together):\n\n\
         | target | segment | req/s | p50 ms | p99 ms | p99.9 ms | max ms | pages | raw errors (5xx/reset/timeout) |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut json_runs = Vec::new();
    for run in runs {
        for p in phases(run) {
            let total = p.total();
            let c = &total.counts;
            let l = Percentiles::of(&total.all);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}/{}/{}) |",
                run.kind.name(),
                p.name,
                f1(row(p).answered_per_s),
                f1(l.p50),
                f1(l.p99),
                f1(l.p999),
                f1(l.max),
                c.page,
                c.raw_errors(),
                c.other_error,
                c.reset,
                c.timeout
            );
        }
        let totals = run.passes.iter().map(|p| p.all_counts()).fold(
            crate::stats::Counts::default(),
            |mut a, c| {
                a.merge(&c);
                a
            },
        );
        let events: Vec<String> = run
            .passes
            .iter()
            .flat_map(|p| p.events.iter())
            .map(|(at, label, error)| {
                format!(
                    "{label} at {:.1}s{}",
                    at.as_secs_f64(),
                    error
                        .as_ref()
                        .map(|e| format!(" (FAILED: {e})"))
                        .unwrap_or_default()
                )
            })
            .collect();
        json_runs.push(json!({
            "target": run.kind.name(),
            "raw_errors": totals.raw_errors(),
            "pages": totals.page,
            "events": events,
        }));
    }
    out.push_str("\nRaw errors over the whole run: ");
    let parts: Vec<String> = json_runs
        .iter()
        .map(|r| format!("{} {}", r["target"].as_str().unwrap_or(""), r["raw_errors"]))
        .collect();
    out.push_str(&parts.join(", "));
    out.push_str(" (target 0 for every proxy).\n");
    if let Some(first) = json_runs.first() {
        let _ = writeln!(
            out,
            "\nEvents ({}): {}.",
            first["target"].as_str().unwrap_or(""),
            first["events"]
                .as_array()
                .map(|e| e
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    (out, json!({ "runs": json_runs }))
}

/// p99 with and without reloads, failed requests, reloads that failed.
pub(crate) fn reload_summary(runs: &[TargetRun]) -> (String, Value) {
    let mut out = String::from(
        "Reload under load:\n\n| target | phase | p50 ms | p99 ms | p99.9 ms | max ms | pages | raw errors |\n|---|---|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut rows = Vec::new();
    for run in runs {
        for p in phases(run) {
            let total = p.total();
            let l = Percentiles::of(&total.all);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                run.kind.name(),
                p.name,
                f1(l.p50),
                f1(l.p99),
                f1(l.p999),
                f1(l.max),
                total.counts.page,
                total.counts.raw_errors()
            );
            rows.push(json!({
                "target": run.kind.name(), "phase": p.name, "p50_ms": l.p50, "p99_ms": l.p99,
                "p99_9_ms": l.p999, "max_ms": l.max, "pages": total.counts.page,
                "raw_errors": total.counts.raw_errors(),
            }));
        }
        let events: Vec<_> = run.passes.iter().flat_map(|p| p.events.iter()).collect();
        let failed = events.iter().filter(|e| e.2.is_some()).count();
        let _ = writeln!(
            out,
            "\n{}: {} reloads, {failed} failed.",
            run.kind.name(),
            events.len()
        );
    }
    (out, json!({ "phases": rows }))
}

/// Where reports go: `$CARGO_TARGET_DIR/bench-report` or `target/bench-report`
/// (smoke runs: its `smoke/` subdirectory, so they never replace real runs).
pub(crate) fn report_dir(smoke: bool) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-report");
    if smoke {
        dir.join("smoke")
    } else {
        dir
    }
}

/// Writes `<scenario>.json` and, for a scenario with a time axis,
/// `<scenario>.svg`; returns their paths.
pub(crate) fn write_files(
    result: &ScenarioResult,
    settings: Value,
    smoke: bool,
) -> Result<(PathBuf, Option<PathBuf>), String> {
    let dir = report_dir(smoke);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let targets: Vec<Value> = result
        .runs
        .iter()
        .map(|run| {
            json!({
                "target": run.kind.name(),
                "error": run.error,
                "proxy_config": run.config,
                "proxy_error_log_lines": run.log_lines,
                "passes": run.passes.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "scenario": result.name,
        "description": result.description,
        "settings": settings,
        "notes": result.notes,
        "summary": result.summary_json,
        "failures": result.failures,
        "targets": targets,
    });
    let json_path = dir.join(format!("{}.json", result.name));
    let text = serde_json::to_string_pretty(&doc).map_err(|e| format!("encode JSON: {e}"))?;
    std::fs::write(&json_path, text).map_err(|e| format!("write {}: {e}", json_path.display()))?;
    let svg_path = dir.join(format!("{}.svg", result.name));
    if !crate::svg::has_time_axis(result) {
        // A chart of an earlier version would be taken for this run's.
        let _ = std::fs::remove_file(&svg_path);
        return Ok((json_path, None));
    }
    std::fs::write(&svg_path, crate::svg::render(result))
        .map_err(|e| format!("write {}: {e}", svg_path.display()))?;
    Ok((json_path, Some(svg_path)))
}
