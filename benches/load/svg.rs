//! The chart of a scenario, one self-contained SVG: throughput, latency
//! percentiles, and raw errors and ordergate pages over time, one line per
//! target in the same colour in every chart, phases and events marked across
//! the panels.
//!
//! Hand-written rather than drawn with a plotting crate: three panels, 1-2-5
//! ticks spaced so their labels never overlap, and labels for the events are
//! all it needs, and it keeps the bench free of a font stack.

use std::fmt::Write as _;

use crate::procs::Kind;
use crate::scenarios::{ScenarioResult, TargetRun};
use crate::stats::Percentiles;

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 80.0;
/// Room for the legend.
const RIGHT: f64 = 190.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
/// First row of phase and event labels, above the first panel.
const MARKS_TOP: f64 = 62.0;
const MARK_ROWS: usize = 4;
const MARK_ROW_H: f64 = 12.0;
const TOP: f64 = MARKS_TOP + MARK_ROWS as f64 * MARK_ROW_H + 24.0;
const PANEL: f64 = 180.0;
const GAP: f64 = 62.0;
/// Width of a character of the 12 px (10 px for marks) sans-serif text, a
/// little more than the average so estimates err on the side of room.
const CHAR_W: f64 = 6.8;
const MARK_CHAR_W: f64 = 5.8;

/// The colour of a target, the same in every chart.
fn color(kind: Kind) -> &'static str {
    match kind {
        Kind::Direct => "#555555",
        Kind::Ordergate => "#d62728",
        Kind::Nginx => "#2ca02c",
        Kind::Haproxy => "#1f77b4",
        Kind::PingoraFloor => "#9467bd",
        Kind::PingoraFloorTimeouts => "#c5b0d5",
        Kind::PingoraFloorNets => "#8c564b",
    }
}

const OFFERED: &str = "#999999";
const EVENT: &str = "#222222";
const PHASE: &str = "#aaaaaa";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Whether a scenario has something to draw over time (`connections` and
/// `tls` have their own tables and no time series).
pub(crate) fn has_time_axis(result: &ScenarioResult) -> bool {
    result
        .runs
        .iter()
        .any(|r| r.passes.iter().any(|p| !p.buckets.is_empty()))
}

/// One bucket of a target's run, as rates per second.
struct Sample {
    /// Middle of the bucket, seconds from the start of the first pass.
    t: f64,
    offered: f64,
    ok_2xx: f64,
    raw_errors: f64,
    pages: f64,
    /// Latency of the answers that arrived in the bucket (ms), if any.
    p50: Option<f64>,
    p99: Option<f64>,
}

/// A target's samples, passes back to back.
fn samples(run: &TargetRun) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut offset = 0.0;
    for pass in &run.passes {
        let b = pass.bucket.as_secs_f64();
        // Leave out the draining tail after the last phase.
        let end = pass
            .phases
            .last()
            .map_or(f64::MAX, |p| p.ended.as_secs_f64());
        for (i, s) in pass.buckets.iter().enumerate() {
            let mid = (i as f64 + 0.5) * b;
            if mid >= end {
                break;
            }
            let c = &s.counts;
            let answered = c.success + c.page + c.other_error > 0;
            let l = Percentiles::of(&s.all);
            out.push(Sample {
                t: offset + mid,
                offered: s.offered as f64 / b,
                ok_2xx: c.ok_2xx as f64 / b,
                raw_errors: c.raw_errors() as f64 / b,
                pages: c.page as f64 / b,
                p50: answered.then_some(l.p50.max(0.01)),
                p99: answered.then_some(l.p99.max(0.01)),
            });
        }
        offset += pass_length(pass);
    }
    out
}

fn pass_length(pass: &crate::stats::Recorder) -> f64 {
    pass.phases
        .last()
        .map(|p| p.ended.as_secs_f64())
        .filter(|e| *e > 0.0)
        .unwrap_or(pass.buckets.len() as f64 * pass.bucket.as_secs_f64())
}

/// A mark on the time axis.
struct Mark {
    t: f64,
    label: String,
    event: bool,
}

/// Phase starts and events of a run, on the same time axis as [`samples`].
fn marks(run: &TargetRun) -> Vec<Mark> {
    let mut out = Vec::new();
    let mut offset = 0.0;
    for pass in &run.passes {
        for p in pass.phases.iter().filter(|p| p.report) {
            out.push(Mark {
                t: offset + p.began.as_secs_f64(),
                label: p.name.clone(),
                event: false,
            });
        }
        for (at, label, _) in &pass.events {
            out.push(Mark {
                t: offset + at.as_secs_f64(),
                label: label.clone(),
                event: true,
            });
        }
        offset += pass_length(pass);
    }
    out.sort_by(|a, b| a.t.total_cmp(&b.t));
    out
}

/// A 1, 2 or 5 × 10^k step giving at most `n` intervals over `span`.
fn nice_step(span: f64, n: usize) -> f64 {
    let raw = (span / n.max(1) as f64).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * magnitude)
}

/// Digits after the point that show `step` exactly (0.2 → 1, 0.05 → 2, 5 → 0).
fn decimals(step: f64) -> usize {
    (-step.log10() - 1e-9).ceil().max(0.0) as usize
}

/// A tick label: `v` rounded to what `step` needs, thousands as `k`.
fn tick_label(v: f64, step: f64) -> String {
    if step >= 1000.0 && v != 0.0 {
        format!("{}k", tick_label(v / 1000.0, step / 1000.0))
    } else {
        format!("{v:.*}", decimals(step))
    }
}

/// Ticks from 0 to `max` in 1-2-5 steps, as many as fit `room` pixels with
/// labels `label_room(label)` wide; `(values, step)`.
fn linear_ticks(max: f64, room: f64, label_room: impl Fn(&str) -> f64) -> (Vec<f64>, f64) {
    for n in (1..=12).rev() {
        let step = nice_step(max, n);
        let count = (max / step + 1e-9).floor() as usize;
        let ticks: Vec<f64> = (0..=count).map(|k| k as f64 * step).collect();
        let widest = ticks
            .iter()
            .map(|v| label_room(&tick_label(*v, step)))
            .fold(0.0, f64::max);
        if ticks.len() as f64 * widest <= room {
            return (ticks, step);
        }
    }
    (vec![0.0, max], max)
}

/// How a panel maps values to heights.
enum Scale {
    /// From 0 to `top`.
    Linear {
        top: f64,
        ticks: Vec<f64>,
        step: f64,
    },
    /// From 10^lo to 10^hi.
    Log { lo: i32, hi: i32 },
}

impl Scale {
    fn linear(values: impl Iterator<Item = f64>) -> Scale {
        let max = values.fold(0.0, f64::max).max(1.0);
        // At most 6 labels on a 180 px axis: 30 px apart.
        let (mut ticks, step) = linear_ticks(max, PANEL, |_| 30.0);
        if ticks.last().is_some_and(|t| *t < max) {
            ticks.push(ticks.len() as f64 * step);
        }
        let top = ticks.last().copied().unwrap_or(max);
        Scale::Linear { top, ticks, step }
    }

    fn log(values: impl Iterator<Item = f64>) -> Scale {
        let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if hi <= 0.0 {
            return Scale::Log { lo: -1, hi: 3 };
        }
        let lo = lo.max(0.01).log10().floor() as i32;
        let hi = (hi.log10().ceil() as i32).max(lo + 1);
        Scale::Log { lo, hi }
    }

    /// Fraction of the panel's height for `v`.
    fn fraction(&self, v: f64) -> f64 {
        match self {
            Scale::Linear { top, .. } => v / top,
            Scale::Log { lo, hi } => {
                (v.max(10f64.powi(*lo)).log10() - f64::from(*lo)) / f64::from(hi - lo)
            }
        }
    }

    /// (value, label) of each tick.
    fn ticks(&self) -> Vec<(f64, String)> {
        match self {
            Scale::Linear { ticks, step, .. } => {
                ticks.iter().map(|v| (*v, tick_label(*v, *step))).collect()
            }
            Scale::Log { lo, hi } => {
                // Few decades: label 1, 2 and 5 of each; many: the decades.
                let mantissas: &[f64] = if hi - lo <= 2 {
                    &[1.0, 2.0, 5.0]
                } else {
                    &[1.0]
                };
                let mut out = Vec::new();
                for e in *lo..=*hi {
                    for m in mantissas {
                        let v = m * 10f64.powi(e);
                        if v <= 10f64.powi(*hi) * (1.0 + 1e-9) {
                            out.push((v, tick_label(v, 10f64.powi(e))));
                        }
                    }
                }
                out
            }
        }
    }
}

/// One line of a panel; `None` points are gaps.
struct Line {
    color: &'static str,
    dash: Option<&'static str>,
    width: f64,
    points: Vec<(f64, Option<f64>)>,
}

struct Panel {
    title: String,
    unit: &'static str,
    scale: Scale,
    lines: Vec<Line>,
}

/// Drawing context: the time axis shared by the panels.
struct Canvas {
    out: String,
    t_max: f64,
}

impl Canvas {
    fn x(&self, t: f64) -> f64 {
        LEFT + t / self.t_max * PLOT_W
    }

    fn panel(&mut self, top: f64, panel: &Panel, time_ticks: &[(f64, String)]) {
        let y = |v: f64| top + PANEL - panel.scale.fraction(v) * PANEL;
        let out = &mut self.out;
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{PLOT_W}" height="{PANEL}" fill="none" stroke="#999"/>"##
        );
        for (v, label) in panel.scale.ticks() {
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{label}</text>"##,
                y(v),
                LEFT + PLOT_W,
                LEFT - 6.0,
                y(v) + 4.0,
            );
        }
        for (t, label) in time_ticks {
            let x = LEFT + t / self.t_max * PLOT_W;
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{0}" stroke="#eee"/><text x="{x:.1}" y="{1}" text-anchor="middle">{label}</text>"##,
                top + PANEL,
                top + PANEL + 15.0,
            );
        }
        let _ = writeln!(
            out,
            r#"<text transform="translate(22,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            top + PANEL / 2.0,
            panel.unit
        );
        for line in &panel.lines {
            // A polyline per run of points without gaps.
            let mut runs: Vec<Vec<String>> = vec![Vec::new()];
            for (t, v) in &line.points {
                match v {
                    Some(v) => runs.last_mut().map_or((), |r| {
                        r.push(format!(
                            "{:.1},{:.1}",
                            LEFT + t / self.t_max * PLOT_W,
                            y(*v)
                        ))
                    }),
                    None => runs.push(Vec::new()),
                }
            }
            for run in runs.iter().filter(|r| !r.is_empty()) {
                let _ = writeln!(
                    out,
                    r#"<polyline fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round"{} points="{}"/>"#,
                    line.color,
                    line.width,
                    line.dash
                        .map(|d| format!(r#" stroke-dasharray="{d}""#))
                        .unwrap_or_default(),
                    run.join(" ")
                );
            }
        }
        // Above the marks' lines that cross it.
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold" paint-order="stroke" stroke="white" stroke-width="4">{}</text>"#,
            top - 8.0,
            escape(&panel.title)
        );
    }

    /// Phase and event lines across the panels, labels in rows above them
    /// where they fit (every label is also the line's tooltip); events are
    /// drawn over the phase they start.
    fn marks(&mut self, marks: &[Mark], bottom: f64) {
        let mut row_ends = [f64::MIN; MARK_ROWS];
        let (mut phases, mut events) = (String::new(), String::new());
        for m in marks {
            let x = self.x(m.t);
            let label = escape(&m.label);
            let width = m.label.chars().count() as f64 * MARK_CHAR_W + 8.0;
            let row = row_ends.iter().position(|end| *end <= x);
            let (out, color, dash, stroke) = if m.event {
                (&mut events, EVENT, "6,3", 1.4)
            } else {
                (&mut phases, PHASE, "2,3", 1.0)
            };
            let line_top = row.map_or(TOP, |r| MARKS_TOP + r as f64 * MARK_ROW_H - 9.0);
            // A phase an event starts keeps its label but not a second line.
            let covered = !m.event
                && marks
                    .iter()
                    .any(|e| e.event && (self.x(e.t) - x).abs() < 3.0);
            if !covered {
                let _ = writeln!(
                    out,
                    r#"<line x1="{x:.1}" y1="{line_top}" x2="{x:.1}" y2="{bottom}" stroke="{color}" stroke-width="{stroke}" stroke-dasharray="{dash}"><title>{label} at {:.2} s</title></line>"#,
                    m.t
                );
            }
            if let Some(r) = row {
                row_ends[r] = x + width;
                let _ = writeln!(
                    out,
                    r#"<text x="{:.1}" y="{}" fill="{color}" font-size="10">{label}</text>"#,
                    x + 3.0,
                    MARKS_TOP + r as f64 * MARK_ROW_H
                );
            }
        }
        self.out.push_str(&phases);
        self.out.push_str(&events);
    }
}

/// The chart of a scenario.
pub(crate) fn render(result: &ScenarioResult) -> String {
    let runs: Vec<&TargetRun> = result
        .runs
        .iter()
        .filter(|r| !r.passes.is_empty())
        .collect();
    let series: Vec<(Kind, Vec<Sample>)> = runs.iter().map(|r| (r.kind, samples(r))).collect();
    let marks = runs.first().map(|r| marks(r)).unwrap_or_default();
    let t_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|q| q.t))
        .chain(marks.iter().map(|m| m.t))
        .fold(0.0, f64::max)
        .max(0.1);
    let bucket_ms = runs
        .iter()
        .flat_map(|r| r.passes.iter())
        .map(|p| p.bucket.as_millis())
        .max()
        .unwrap_or(1000);

    let line = |color: &'static str,
                dash,
                width,
                samples: &[Sample],
                value: fn(&Sample) -> Option<f64>| Line {
        color,
        dash,
        width,
        points: samples.iter().map(|s| (s.t, value(s))).collect(),
    };
    let mut throughput = Vec::new();
    if let Some((_, first)) = series.first() {
        throughput.push(line(OFFERED, Some("5,4"), 1.2, first, |s| Some(s.offered)));
    }
    let mut latency = Vec::new();
    let mut errors = Vec::new();
    for (kind, s) in &series {
        let c = color(*kind);
        throughput.push(line(c, None, 1.8, s, |s| Some(s.ok_2xx)));
        latency.push(line(c, Some("2,3"), 1.2, s, |s| s.p50));
        latency.push(line(c, None, 1.8, s, |s| s.p99));
        errors.push(line(c, Some("5,4"), 1.5, s, |s| Some(s.pages)));
        errors.push(line(c, None, 1.8, s, |s| Some(s.raw_errors)));
    }
    let values = |lines: &[Line]| -> Vec<f64> {
        lines
            .iter()
            .flat_map(|l| l.points.iter().filter_map(|p| p.1))
            .collect()
    };
    let any_errors = values(&errors).iter().any(|v| *v > 0.0);
    let panels = [
        Panel {
            title: "Throughput: 2xx answers per second (dashed grey: offered)".to_owned(),
            unit: "requests / s",
            scale: Scale::linear(values(&throughput).into_iter()),
            lines: throughput,
        },
        Panel {
            title: "Latency of the answers, from the scheduled send (solid: p99, dotted: p50)"
                .to_owned(),
            unit: "latency (ms, log)",
            scale: Scale::log(values(&latency).into_iter()),
            lines: latency,
        },
        Panel {
            title: if any_errors {
                "Raw errors per second: 5xx without page, resets, timeouts (solid); ordergate pages (dashed)"
                    .to_owned()
            } else {
                "Raw errors and ordergate pages per second: none".to_owned()
            },
            unit: "answers / s",
            scale: Scale::linear(values(&errors).into_iter()),
            lines: errors,
        },
    ];

    let (time_values, time_step) = linear_ticks(t_max, PLOT_W, |label| {
        label.chars().count() as f64 * CHAR_W + 24.0
    });
    let time_ticks: Vec<(f64, String)> = time_values
        .iter()
        .map(|t| (*t, tick_label(*t, time_step)))
        .collect();
    let height = TOP + panels.len() as f64 * (PANEL + GAP) + 10.0;
    let mut canvas = Canvas {
        out: String::new(),
        t_max,
    };
    let out = &mut canvas.out;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">ordergate load bench: {}</text>"#,
        escape(&result.name)
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="42" fill="#444">rates over {bucket_ms} ms buckets of each target's run, passes back to back; dotted grey: phases, dashed black: events</text>"##
    );
    let bottom = TOP + panels.len() as f64 * (PANEL + GAP) - GAP;
    canvas.marks(&marks, bottom);
    for (i, panel) in panels.iter().enumerate() {
        canvas.panel(TOP + i as f64 * (PANEL + GAP), panel, &time_ticks);
    }
    let out = &mut canvas.out;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">time since the start of the run (s)</text>"#,
        LEFT + PLOT_W / 2.0,
        bottom + 32.0
    );

    // Legend: one colour per target.
    let lx = LEFT + PLOT_W + 20.0;
    let _ = writeln!(
        out,
        r#"<text x="{lx}" y="{}" font-weight="bold">targets</text>"#,
        TOP + 4.0
    );
    for (i, (kind, _)) in series.iter().enumerate() {
        let y = TOP + 22.0 + 20.0 * i as f64;
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
    let y = TOP + 22.0 + 20.0 * series.len() as f64;
    let _ = writeln!(
        out,
        r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{OFFERED}" stroke-width="1.2" stroke-dasharray="5,4"/><text x="{}" y="{}">offered</text>"#,
        lx + 24.0,
        lx + 30.0,
        y + 4.0
    );
    out.push_str("</svg>\n");
    canvas.out
}
