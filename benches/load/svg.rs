//! A hand-written SVG chart of a scenario: goodput (2xx/s) and p99 latency
//! over time, one line per target, phases and events marked.

use std::fmt::Write as _;

use crate::procs::Kind;
use crate::scenarios::{ScenarioResult, TargetRun};
use crate::stats::Percentiles;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 70.0;
const PANEL: f64 = 240.0;
const GAP: f64 = 70.0;
const HEIGHT: f64 = TOP + 2.0 * PANEL + GAP + 60.0;

/// One second of a target's run: (time, goodput, offered, p99 ms if any answer).
type Point = (f64, f64, f64, Option<f64>);
/// A mark on the time axis: (time, label).
type Mark = (f64, String);

fn color(kind: Kind) -> &'static str {
    match kind {
        Kind::Direct => "#555555",
        Kind::Ordergate => "#d62728",
        Kind::Nginx => "#2ca02c",
        Kind::Haproxy => "#1f77b4",
        Kind::PingoraFloor => "#9467bd",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A step of 1, 2 or 5 × 10^k giving about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(1e-9)
}

/// One target's per-second points: (t, goodput, offered, p99 ms or None).
fn points(run: &TargetRun) -> Vec<Point> {
    let mut out = Vec::new();
    let mut offset = 0.0;
    for pass in &run.passes {
        // Leave out the draining tail after the last phase (a partial second).
        let end = pass
            .phases
            .last()
            .map_or(f64::MAX, |p| p.ended.as_secs_f64());
        for (i, s) in pass.seconds.iter().enumerate() {
            if i as f64 >= end - 0.5 {
                break;
            }
            let answered = s.counts.success + s.counts.page + s.counts.other_error;
            let p99 = (answered > 0).then(|| Percentiles::of(&s.all).p99.max(0.01));
            out.push((
                offset + i as f64 + 0.5,
                s.counts.ok_2xx as f64,
                s.offered as f64,
                p99,
            ));
        }
        offset += pass.seconds.len().max(1) as f64;
    }
    out
}

/// Phase starts and events of a run, on the same time axis as [`points`].
fn marks(run: &TargetRun) -> (Vec<Mark>, Vec<Mark>) {
    let (mut phases, mut events) = (Vec::new(), Vec::new());
    let mut offset = 0.0;
    for pass in &run.passes {
        for p in pass.phases.iter().filter(|p| p.report) {
            phases.push((offset + p.began.as_secs_f64(), p.name.clone()));
        }
        for (at, label, _) in &pass.events {
            events.push((offset + at.as_secs_f64(), label.clone()));
        }
        offset += pass.seconds.len().max(1) as f64;
    }
    (phases, events)
}

fn polyline(out: &mut String, pts: &[(f64, f64)], stroke: &str, dash: bool) {
    if pts.is_empty() {
        return;
    }
    let coords: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        out,
        r#"<polyline fill="none" stroke="{stroke}" stroke-width="{}" {}points="{}"/>"#,
        if dash { 1.2 } else { 2.0 },
        if dash {
            r#"stroke-dasharray="5,4" "#
        } else {
            ""
        },
        coords.join(" ")
    );
}

/// The chart of a scenario.
pub(crate) fn render(result: &ScenarioResult) -> String {
    let runs: Vec<&TargetRun> = result
        .runs
        .iter()
        .filter(|r| !r.passes.is_empty())
        .collect();
    let series: Vec<(Kind, Vec<Point>)> = runs.iter().map(|r| (r.kind, points(r))).collect();
    let t_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0 + 0.5))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1.max(q.2)))
        .fold(1.0, f64::max)
        * 1.1;
    let lat: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().filter_map(|q| q.3))
        .collect();
    let lo = lat.iter().copied().fold(f64::MAX, f64::min).max(0.01);
    let hi = lat.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (lo_exp, hi_exp) = if lat.is_empty() {
        (-1.0, 3.0)
    } else {
        (lo.log10().floor(), hi.log10().ceil())
    };

    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let top0 = TOP;
    let top1 = TOP + PANEL + GAP;
    let y_tp = |v: f64| top0 + PANEL - v / y_max * PANEL;
    let y_lat = |ms: f64| {
        let f = (ms.max(10f64.powf(lo_exp)).log10() - lo_exp) / (hi_exp - lo_exp).max(1.0);
        top1 + PANEL - f * PANEL
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">ordergate load bench: {}</text>"#,
        escape(&result.name)
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="44" fill="#444">per second of each target's run; passes and phases back to back; dashed grey: offered rate</text>"##
    );

    // Frames, grid and axes.
    for (top, title) in [
        (top0, "goodput (2xx answers per second)"),
        (top1, "p99 latency (ms, log scale)"),
    ] {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{title}</text>"#,
            top - 8.0
        );
        let step = nice_step(t_max, 10.0);
        let mut t = 0.0;
        while t <= t_max + 1e-9 {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
                x(t),
                top + PANEL,
                top + PANEL + 15.0,
                t
            );
            t += step;
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
            LEFT + plot_w / 2.0,
            top + PANEL + 32.0
        );
    }
    let step = nice_step(y_max, 5.0);
    let mut v = 0.0;
    while v <= y_max {
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y_tp(v),
            LEFT + plot_w,
            LEFT - 6.0,
            y_tp(v) + 4.0,
            v
        );
        v += step;
    }
    let _ = writeln!(
        out,
        r#"<text transform="translate(20,{}) rotate(-90)" text-anchor="middle">requests / s</text>"#,
        top0 + PANEL / 2.0
    );
    let mut e = lo_exp;
    while e <= hi_exp + 1e-9 {
        let ms = 10f64.powf(e);
        let label = if ms >= 1.0 {
            format!("{ms:.0}")
        } else {
            format!("{ms}")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{label}</text>"##,
            y_lat(ms),
            LEFT + plot_w,
            LEFT - 6.0,
            y_lat(ms) + 4.0
        );
        e += 1.0;
    }
    let _ = writeln!(
        out,
        r#"<text transform="translate(20,{}) rotate(-90)" text-anchor="middle">p99 latency (ms)</text>"#,
        top1 + PANEL / 2.0
    );

    // Phases and events of the first target.
    if let Some(first) = runs.first() {
        let (phases, events) = marks(first);
        for (i, (t, name)) in phases.iter().enumerate() {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#bbb" stroke-dasharray="2,3"/><text x="{3:.1}" y="{4}" fill="#666" font-size="10">{5}</text>"##,
                x(*t),
                top0,
                top1 + PANEL,
                x(*t) + 3.0,
                top0 + 12.0 + 11.0 * (i % 3) as f64,
                escape(name)
            );
        }
        for (i, (t, label)) in events.iter().enumerate() {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#9467bd" stroke-dasharray="6,3"/><text x="{3:.1}" y="{4}" fill="#9467bd" font-size="10">{5}</text>"##,
                x(*t),
                top0,
                top1 + PANEL,
                x(*t) + 3.0,
                top1 + 12.0 + 11.0 * (i % 4) as f64,
                escape(label)
            );
        }
    }

    // Lines.
    if let Some((_, first)) = series.first() {
        let offered: Vec<(f64, f64)> = first.iter().map(|q| (x(q.0), y_tp(q.2))).collect();
        polyline(&mut out, &offered, "#888888", true);
    }
    for (kind, pts) in &series {
        let goodput: Vec<(f64, f64)> = pts.iter().map(|q| (x(q.0), y_tp(q.1))).collect();
        polyline(&mut out, &goodput, color(*kind), false);
        let p99: Vec<(f64, f64)> = pts
            .iter()
            .filter_map(|q| q.3.map(|ms| (x(q.0), y_lat(ms))))
            .collect();
        polyline(&mut out, &p99, color(*kind), false);
    }

    // Legend.
    let lx = LEFT + plot_w + 20.0;
    for (i, (kind, _)) in series.iter().enumerate() {
        let y = top0 + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            color(*kind),
            lx + 30.0,
            y + 4.0,
            kind.name()
        );
    }
    let y = top0 + 10.0 + 20.0 * series.len() as f64;
    let _ = writeln!(
        out,
        r##"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="#888" stroke-dasharray="5,4"/><text x="{}" y="{}">offered</text>"##,
        lx + 24.0,
        lx + 30.0,
        y + 4.0
    );
    out.push_str("</svg>\n");
    out
}
