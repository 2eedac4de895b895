//! What a run measured: per phase and request kind, counts by class and
//! HdrHistogram latencies (from the scheduled send time); per bucket of the
//! run (100 ms in short runs, up to 1 s in long ones), a time series; the
//! events that happened; the proxy's CPU time per phase.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::client::Kind;

/// How one request ended.
#[derive(Clone, Debug)]
pub(crate) enum Class {
    /// An answer from the backend: 2xx, 3xx or 4xx.
    Success {
        /// Its status.
        status: u16,
    },
    /// ordergate's own page (`x-ordergate-page`).
    Page {
        /// Its status.
        status: u16,
        /// The page kind (`shed`, `queue_timeout`, ...).
        reason: String,
        /// Whether it carried `Retry-After`.
        retry_after: bool,
    },
    /// A 5xx without ordergate's marker (a backend's, nginx's or HAProxy's).
    OtherError {
        /// Its status.
        status: u16,
    },
    /// Refused, reset or closed before a complete answer.
    Reset,
    /// No answer within the timeout of its scheduled time.
    Timeout,
}

/// Counts of requests by how they ended.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counts {
    /// Answers from the backend (2xx/3xx/4xx).
    pub(crate) success: u64,
    /// Of which 2xx: the goodput.
    pub(crate) ok_2xx: u64,
    /// ordergate pages.
    pub(crate) page: u64,
    /// Of which with `Retry-After`: shed.
    pub(crate) page_retry_after: u64,
    /// 5xx without the page marker.
    pub(crate) other_error: u64,
    /// Connection-level failures.
    pub(crate) reset: u64,
    /// Timeouts.
    pub(crate) timeout: u64,
    /// Pages by kind.
    pub(crate) page_reasons: BTreeMap<String, u64>,
    /// Every answer by status.
    pub(crate) statuses: BTreeMap<u16, u64>,
}

impl Counts {
    fn add(&mut self, class: &Class) {
        match class {
            Class::Success { status } => {
                self.success += 1;
                if (200..300).contains(status) {
                    self.ok_2xx += 1;
                }
                *self.statuses.entry(*status).or_default() += 1;
            }
            Class::Page {
                status,
                reason,
                retry_after,
            } => {
                self.page += 1;
                if *retry_after {
                    self.page_retry_after += 1;
                }
                *self.page_reasons.entry(reason.clone()).or_default() += 1;
                *self.statuses.entry(*status).or_default() += 1;
            }
            Class::OtherError { status } => {
                self.other_error += 1;
                *self.statuses.entry(*status).or_default() += 1;
            }
            Class::Reset => self.reset += 1,
            Class::Timeout => self.timeout += 1,
        }
    }

    /// Adds another set of counts.
    pub(crate) fn merge(&mut self, other: &Counts) {
        self.success += other.success;
        self.ok_2xx += other.ok_2xx;
        self.page += other.page;
        self.page_retry_after += other.page_retry_after;
        self.other_error += other.other_error;
        self.reset += other.reset;
        self.timeout += other.timeout;
        for (k, v) in &other.page_reasons {
            *self.page_reasons.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.statuses {
            *self.statuses.entry(*k).or_default() += v;
        }
    }

    /// Requests that ended, whatever the way.
    pub(crate) fn total(&self) -> u64 {
        self.success + self.page + self.other_error + self.reset + self.timeout
    }

    /// What a shopper must never see: 5xx without a page, resets, timeouts.
    pub(crate) fn raw_errors(&self) -> u64 {
        self.other_error + self.reset + self.timeout
    }

    fn to_json(&self) -> Value {
        json!({
            "total": self.total(),
            "success": self.success,
            "ok_2xx": self.ok_2xx,
            "page": self.page,
            "page_with_retry_after": self.page_retry_after,
            "other_error": self.other_error,
            "reset": self.reset,
            "timeout": self.timeout,
            "raw_errors": self.raw_errors(),
            "page_reasons": self.page_reasons,
            "statuses": self.statuses.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        })
    }
}

/// Latencies in µs, from 1 µs to 2 minutes.
pub(crate) fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, sigfig).expect("valid histogram bounds")
}

/// Latency percentiles in ms.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Percentiles {
    /// Requests measured.
    pub(crate) count: u64,
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p999: f64,
    /// Maximum.
    pub(crate) max: f64,
}

impl Percentiles {
    /// From a histogram of µs.
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": self.p50,
            "p90_ms": self.p90,
            "p99_ms": self.p99,
            "p99_9_ms": self.p999,
            "max_ms": self.max,
        })
    }
}

/// One kind of request within a phase.
#[derive(Clone, Debug)]
pub(crate) struct KindStats {
    /// How they ended.
    pub(crate) counts: Counts,
    /// Latency of every answer (any class but timeouts).
    pub(crate) all: Histogram<u64>,
    /// Latency of the answers from the backend (the admitted requests).
    pub(crate) success: Histogram<u64>,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats {
            counts: Counts::default(),
            all: histogram(3),
            success: histogram(3),
        }
    }

    fn add(&mut self, class: &Class, micros: u64) {
        self.counts.add(class);
        if !matches!(class, Class::Timeout) {
            self.all.saturating_record(micros.max(1));
        }
        if matches!(class, Class::Success { .. }) {
            self.success.saturating_record(micros.max(1));
        }
    }

    fn merge(&mut self, other: &KindStats) {
        self.counts.merge(&other.counts);
        let _ = self.all.add(&other.all);
        let _ = self.success.add(&other.success);
    }

    fn to_json(&self) -> Value {
        json!({
            "counts": self.counts.to_json(),
            "latency": Percentiles::of(&self.all).to_json(),
            "admitted_latency": Percentiles::of(&self.success).to_json(),
        })
    }
}

/// One phase of the run.
#[derive(Clone, Debug)]
pub(crate) struct PhaseStats {
    /// Its name.
    pub(crate) name: String,
    /// Planned length.
    pub(crate) planned: Duration,
    /// Shown in reports.
    pub(crate) report: bool,
    /// When it began and ended, from the start of the run.
    pub(crate) began: Duration,
    /// See `began`.
    pub(crate) ended: Duration,
    /// Proxy CPU time (µs) at the start and end, when there is a proxy.
    pub(crate) cpu: (Option<u64>, Option<u64>),
    /// Requests that ended (by time) between the start and the end.
    pub(crate) completed_in_window: u64,
    /// How the requests that ended between the start and the end ended
    /// (whenever they were scheduled): the rates achieved during the phase.
    /// By request kind, like `kinds`.
    pub(crate) window: Vec<Counts>,
    /// By request kind, for requests scheduled in the phase.
    pub(crate) kinds: Vec<KindStats>,
}

impl PhaseStats {
    /// All kinds together.
    pub(crate) fn total(&self) -> KindStats {
        let mut total = KindStats::new();
        for k in &self.kinds {
            total.merge(k);
        }
        total
    }

    /// Requests that ended during the phase, all kinds.
    pub(crate) fn window_total(&self) -> Counts {
        let mut total = Counts::default();
        for w in &self.window {
            total.merge(w);
        }
        total
    }

    /// How long it lasted.
    pub(crate) fn seconds(&self) -> f64 {
        (self.ended.saturating_sub(self.began))
            .as_secs_f64()
            .max(0.001)
    }

    /// Proxy CPU time per request ended during the phase, in µs.
    pub(crate) fn cpu_per_request(&self) -> Option<f64> {
        match self.cpu {
            (Some(a), Some(b)) if self.completed_in_window > 0 => {
                Some(b.saturating_sub(a) as f64 / self.completed_in_window as f64)
            }
            _ => None,
        }
    }

    /// Share of one core the proxy used.
    pub(crate) fn cpu_share(&self) -> Option<f64> {
        match self.cpu {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e6 / self.seconds()),
            _ => None,
        }
    }
}

/// One bucket of the run (answers by the bucket they arrived in).
#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    /// Requests scheduled in this bucket.
    pub(crate) offered: u64,
    /// How the requests that ended in this bucket ended.
    pub(crate) counts: Counts,
    /// 2xx answers by request kind.
    pub(crate) ok_by_kind: Vec<u64>,
    /// Latency of every answer.
    pub(crate) all: Histogram<u64>,
    /// Latency of the backend's answers.
    pub(crate) success: Histogram<u64>,
}

impl Bucket {
    fn new(kinds: usize) -> Bucket {
        Bucket {
            offered: 0,
            counts: Counts::default(),
            ok_by_kind: vec![0; kinds],
            all: histogram(2),
            success: histogram(2),
        }
    }
}

/// The bucket of a run's time series: the smallest of 100, 200, 500 ms and
/// 1 s that keeps a run of `planned` length within 300 buckets. Fine enough
/// that a kill or a reload shows in a short run's curves, coarse enough that
/// a 10-minute soak keeps its memory (two histograms of ~21 KB per bucket).
pub(crate) fn bucket_for(planned: Duration) -> Duration {
    [100, 200, 500]
        .into_iter()
        .map(Duration::from_millis)
        .find(|b| planned.as_secs_f64() / b.as_secs_f64() <= 300.0)
        .unwrap_or(Duration::from_secs(1))
}

/// Everything measured in one run against one target.
#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    /// The target's name.
    pub(crate) label: String,
    start: Instant,
    /// The kinds of requests, in the order of `KindStats`.
    pub(crate) kinds: Vec<Kind>,
    /// The phases.
    pub(crate) phases: Vec<PhaseStats>,
    /// Length of a bucket of the time series: see [`bucket_for`].
    pub(crate) bucket: Duration,
    /// The time series.
    pub(crate) buckets: Vec<Bucket>,
    /// (when, what, error if it failed).
    pub(crate) events: Vec<(Duration, String, Option<String>)>,
    /// Keep-alive connections found closed by the server before a request
    /// (the request was sent again on a new connection).
    pub(crate) stale_retries: u64,
    /// Length of the whole run.
    pub(crate) elapsed: Duration,
    completed: u64,
    phase_completed_at_start: Vec<u64>,
    current: usize,
    window_open: bool,
}

impl Recorder {
    /// An empty recorder for a run that starts at `start`.
    pub(crate) fn new(
        label: &str,
        start: Instant,
        phases: &[(String, Duration, bool)],
        mix: &[Kind],
    ) -> Recorder {
        let mut kinds: Vec<Kind> = Vec::new();
        for kind in mix {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        Recorder {
            label: label.to_owned(),
            start,
            phases: phases
                .iter()
                .map(|(name, planned, report)| PhaseStats {
                    name: name.clone(),
                    planned: *planned,
                    report: *report,
                    began: Duration::ZERO,
                    ended: Duration::ZERO,
                    cpu: (None, None),
                    completed_in_window: 0,
                    window: kinds.iter().map(|_| Counts::default()).collect(),
                    kinds: kinds.iter().map(|_| KindStats::new()).collect(),
                })
                .collect(),
            phase_completed_at_start: vec![0; phases.len()],
            bucket: bucket_for(phases.iter().map(|p| p.1).sum()),
            kinds,
            buckets: Vec::new(),
            events: Vec::new(),
            stale_retries: 0,
            elapsed: Duration::ZERO,
            completed: 0,
            current: 0,
            window_open: false,
        }
    }

    fn bucket_at(&mut self, at: Instant) -> &mut Bucket {
        let index = (at.saturating_duration_since(self.start).as_nanos()
            / self.bucket.as_nanos().max(1)) as usize;
        let kinds = self.kinds.len();
        while self.buckets.len() <= index {
            self.buckets.push(Bucket::new(kinds));
        }
        &mut self.buckets[index]
    }

    /// A request was scheduled at `at`.
    pub(crate) fn offered(&mut self, at: Instant) {
        self.bucket_at(at).offered += 1;
    }

    /// A request ended.
    pub(crate) fn record(
        &mut self,
        phase: usize,
        kind: Kind,
        scheduled: Instant,
        done: Instant,
        class: Class,
    ) {
        let micros = done.saturating_duration_since(scheduled).as_micros() as u64;
        let kind_index = self.kinds.iter().position(|k| *k == kind).unwrap_or(0);
        self.completed += 1;
        if self.window_open {
            if let Some(w) = self
                .phases
                .get_mut(self.current)
                .and_then(|p| p.window.get_mut(kind_index))
            {
                w.add(&class);
            }
        }
        let bucket = self.bucket_at(done);
        bucket.counts.add(&class);
        if let Class::Success { status } = &class {
            if (200..300).contains(status) {
                bucket.ok_by_kind[kind_index] += 1;
            }
            bucket.success.saturating_record(micros.max(1));
        }
        if !matches!(class, Class::Timeout) {
            bucket.all.saturating_record(micros.max(1));
        }
        if let Some(stats) = self
            .phases
            .get_mut(phase)
            .and_then(|p| p.kinds.get_mut(kind_index))
        {
            stats.add(&class, micros);
        }
    }

    /// A keep-alive connection turned out closed; the request went again.
    pub(crate) fn stale(&mut self) {
        self.stale_retries += 1;
    }

    /// Something happened at `at` (from the start).
    pub(crate) fn event(&mut self, at: Duration, label: &str, error: Option<String>) {
        self.events.push((at, label.to_owned(), error));
    }

    /// Phase `index` begins now, with the proxy's CPU time.
    pub(crate) fn phase_begin(&mut self, index: usize, now: Instant, cpu: Option<u64>) {
        let began = now.saturating_duration_since(self.start);
        let completed = self.completed;
        self.current = index;
        self.window_open = true;
        if let Some(p) = self.phases.get_mut(index) {
            p.began = began;
            p.cpu.0 = cpu;
        }
        if let Some(c) = self.phase_completed_at_start.get_mut(index) {
            *c = completed;
        }
    }

    /// Phase `index` ends now, with the proxy's CPU time.
    pub(crate) fn phase_done(&mut self, index: usize, now: Instant, cpu: Option<u64>) {
        let ended = now.saturating_duration_since(self.start);
        let completed = self.completed;
        let at_start = self
            .phase_completed_at_start
            .get(index)
            .copied()
            .unwrap_or(0);
        self.window_open = false;
        if let Some(p) = self.phases.get_mut(index) {
            p.ended = ended;
            p.cpu.1 = cpu;
            p.completed_in_window = completed - at_start;
        }
    }

    /// The run is over.
    pub(crate) fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
    }

    /// The phase running at `offset` from the start.
    fn phase_at(&self, offset: Duration) -> Option<&PhaseStats> {
        let started = (self.current + 1).min(self.phases.len());
        self.phases[..started]
            .iter()
            .rev()
            .find(|p| p.began <= offset)
    }

    /// One line for the progress display at `elapsed` from the start: the
    /// phase, the time, and the rates of the last second.
    pub(crate) fn progress_line(&self, elapsed: Duration) -> String {
        let phase = self.phase_at(elapsed).map_or("", |p| p.name.as_str());
        let planned: Duration = self.phases.iter().map(|p| p.planned).sum();
        let head = format!(
            "[{:<9}] {:>5.1}/{:.1} s {:<12}",
            self.label,
            elapsed.as_secs_f64(),
            planned.as_secs_f64(),
            phase
        );
        // The buckets of the last whole second.
        let per_second =
            (Duration::from_secs(1).as_nanos() / self.bucket.as_nanos().max(1)).max(1) as usize;
        let end = (elapsed.as_nanos() / self.bucket.as_nanos().max(1)) as usize;
        let last = &self.buckets
            [end.saturating_sub(per_second).min(self.buckets.len())..end.min(self.buckets.len())];
        if last.is_empty() {
            return format!("{head} no answers yet");
        }
        let mut c = Counts::default();
        let mut all = histogram(2);
        let mut offered = 0;
        for b in last {
            c.merge(&b.counts);
            let _ = all.add(&b.all);
            offered += b.offered;
        }
        let secs = (last.len() as f64 * self.bucket.as_secs_f64()).max(0.001);
        let rate = |n: u64| n as f64 / secs;
        format!(
            "{head} offered {:>6.0}/s 2xx {:>6.0}/s p99 {:>7.1} ms | pages {:>5.0}/s | raw errors {:>4.0}/s (5xx {}, reset {}, timeout {})",
            rate(offered),
            rate(c.ok_2xx),
            Percentiles::of(&all).p99,
            rate(c.page),
            rate(c.raw_errors()),
            c.other_error,
            c.reset,
            c.timeout
        )
    }

    /// Every phase's counts together, all kinds.
    pub(crate) fn all_counts(&self) -> Counts {
        let mut counts = Counts::default();
        for phase in &self.phases {
            for kind in &phase.kinds {
                counts.merge(&kind.counts);
            }
        }
        counts
    }

    /// Index of a kind in `kinds`.
    pub(crate) fn kind_index(&self, kind: Kind) -> Option<usize> {
        self.kinds.iter().position(|k| *k == kind)
    }

    /// The raw results as JSON.
    pub(crate) fn to_json(&self) -> Value {
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|p| {
                let kinds: serde_json::Map<String, Value> = self
                    .kinds
                    .iter()
                    .zip(&p.kinds)
                    .map(|(k, s)| (k.name().to_owned(), s.to_json()))
                    .collect();
                json!({
                    "name": p.name,
                    "reported": p.report,
                    "planned_s": p.planned.as_secs_f64(),
                    "began_s": p.began.as_secs_f64(),
                    "ended_s": p.ended.as_secs_f64(),
                    "proxy_cpu_us": match p.cpu { (Some(a), Some(b)) => json!(b.saturating_sub(a)), _ => Value::Null },
                    "proxy_cpu_us_per_request": p.cpu_per_request(),
                    "proxy_cpu_share_of_core": p.cpu_share(),
                    "completed_in_window": p.completed_in_window,
                    "window_counts": p.window_total().to_json(),
                    "total": p.total().to_json(),
                    "kinds": kinds,
                })
            })
            .collect();
        let series: Vec<Value> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let ok_by_kind: serde_json::Map<String, Value> = self
                    .kinds
                    .iter()
                    .zip(&s.ok_by_kind)
                    .map(|(k, n)| (k.name().to_owned(), json!(n)))
                    .collect();
                let all = Percentiles::of(&s.all);
                let admitted = Percentiles::of(&s.success);
                json!({
                    "t_s": i as f64 * self.bucket.as_secs_f64(),
                    "offered": s.offered,
                    "completed": s.counts.total(),
                    "ok_2xx": s.counts.ok_2xx,
                    "ok_2xx_by_kind": ok_by_kind,
                    "page": s.counts.page,
                    "page_with_retry_after": s.counts.page_retry_after,
                    "other_error": s.counts.other_error,
                    "reset": s.counts.reset,
                    "timeout": s.counts.timeout,
                    "p50_ms": all.p50,
                    "p99_ms": all.p99,
                    "max_ms": all.max,
                    "admitted_p99_ms": admitted.p99,
                })
            })
            .collect();
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|(at, label, error)| json!({"t_s": at.as_secs_f64(), "event": label, "error": error}))
            .collect();
        json!({
            "target": self.label,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "stale_keepalive_retries": self.stale_retries,
            "series_bucket_s": self.bucket.as_secs_f64(),
            "totals": self.all_counts().to_json(),
            "phases": phases,
            "series": series,
            "events": events,
        })
    }
}
