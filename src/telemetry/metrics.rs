//! The metrics, all on one registry, named `ordergate_*` in base units. Labels
//! come from config names (route, pool, backend address) or closed enums
//! (status class, outcome reason, retry stop reason), so cardinality is bounded.
//! Per-request handles are resolved once per snapshot ([`RouteMetrics`],
//! [`BackendMetrics`]), not looked up by label on every request.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use prometheus::core::{Collector, Metric as _};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use strum::{EnumCount, VariantArray};

/// The revision ordergate was built from (`build.rs` asks git), or `unknown`.
pub const REVISION: &str = env!("ORDERGATE_REVISION");

/// Things pingora logs that need no operator (see [`FrameworkEvent`]), counted
/// once per process whichever registry exports them: the logger that demotes
/// them has no `Metrics` at hand.
static FRAMEWORK_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = IntCounterVec::new(
        Opts::new(
            "ordergate_framework_events_total",
            "Events pingora logs that need no operator action, by event.",
        ),
        &["event"],
    )
    .expect("static metric definition");
    for event in FrameworkEvent::VARIANTS {
        counter.with_label_values(&[event.as_str()]);
    }
    counter
});

/// Something pingora reports at ERROR that is routine for ordergate: logged at
/// debug instead and counted in `ordergate_framework_events_total{event}`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::EnumCount, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum FrameworkEvent {
    /// A pooled backend connection was taken by another request at the same
    /// moment; pingora opens a new one (`failed to acquire reusable stream`).
    UpstreamReuseRace,
    /// A shopper's TLS handshake failed or timed out (scanners, closed tabs,
    /// readiness probes).
    TlsHandshakeFailed,
    /// During a graceful upgrade, the new process polls for the old one's
    /// sockets until the old one gets SIGQUIT (`No incoming socket transfer`).
    UpgradeSocketWait,
    /// An accept or a backend connect failed for lack of file descriptors
    /// (logged once per episode, see `telemetry::out_of_descriptors`).
    DescriptorLimit,
}

impl FrameworkEvent {
    /// The `event` label.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Counts one.
    pub fn count(self) {
        FRAMEWORK_EVENTS.with_label_values(&[self.as_str()]).inc();
    }
}

/// Latency buckets, in seconds: 1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric ordergate exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    attempts: IntCounterVec,
    /// Backend health as probes see it (1 up, 0 down), set at scrape time.
    pub backend_up: IntGaugeVec,
    /// Whether passive checks ejected a backend (1) or not (0), set at scrape time.
    pub backend_ejected: IntGaugeVec,
    /// Requests in flight per backend, set at scrape time.
    pub backend_in_flight: IntGaugeVec,
    /// Whether a backend is drained (1) or not (0), set at scrape time.
    pub backend_drained: IntGaugeVec,
    retries: IntCounterVec,
    retries_denied: IntCounterVec,
    /// Requests waiting in a pool's queue per priority, set at scrape time.
    pub queue_depth: IntGaugeVec,
    queue_wait: HistogramVec,
    rejections: IntCounterVec,
    /// Current concurrency limit of a pool, set at scrape time.
    pub concurrency_limit: IntGaugeVec,
    reloads: IntCounterVec,
    /// The generation of the config being served.
    pub config_generation: IntGauge,
    /// 1 when the last reload attempt succeeded, 0 when it failed.
    pub config_last_reload_success: IntGauge,
    panics: IntCounterVec,
    idempotency: IntCounterVec,
    stale_served: IntCounterVec,
    /// Bytes a route's stale copies take, set at scrape time.
    pub stale_bytes: IntGaugeVec,
    /// 1 while a maintenance window is open for a route (`*`: every route),
    /// set at scrape time.
    pub maintenance_open: IntGaugeVec,
    /// For each pool with a backup: 1 for the pool serving its traffic now,
    /// set at scrape time.
    pub pool_active: IntGaugeVec,
    /// Bytes the idempotency records of a route take, set at scrape time.
    pub idempotency_store_bytes: IntGaugeVec,
    /// Idempotency records evicted to stay within a route's `max_bytes`, set
    /// at scrape time from the store's own count.
    pub idempotency_evictions: IntGaugeVec,
    /// Clients a route's memory rate limiter forgot to stay within
    /// `max_clients`, set at scrape time from the limiter's own count.
    pub rate_limit_evicted_clients: IntGaugeVec,
    /// Shopper connections ordergate closed because they idled or were slow,
    /// by reason (`header_timeout`, `keepalive_timeout`); exported at zero.
    pub connections_closed: ConnectionsClosed,
    /// Families a feature defines and registers itself ([`Metrics::registered`]),
    /// by type; shared by every clone, so each is registered once.
    features: Arc<Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>>,
    /// Handles made for a route or backend by name ([`Metrics::handles`]),
    /// by type and name: a reload of 10 000 routes finds them instead of
    /// asking the registry for each series again.
    handles: Arc<Mutex<Handles>>,
    /// `ordergate_store_*`: the shared store's health and fallbacks.
    pub store: super::store::StoreMetrics,
}

/// Handles by their type, then by the name they were made for (looked up
/// by `&str`: a route's name allocates no key; a backend's is its pool and
/// address, formatted). A reload of 10 000 routes looks
/// up tens of thousands of names: foldhash, not SipHash (names come from the
/// operator's file, not from clients).
type Handles = HashMap<TypeId, HashMap<Box<str>, Arc<dyn Any + Send + Sync>, Fold>, Fold>;
type Fold = foldhash::fast::RandomState;

/// What a keyed request met: the `result` label of `ordergate_idempotency_total`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::EnumCount, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum IdempotencyResult {
    /// The first request with its key: forwarded.
    First,
    /// A repeat answered with the stored answer.
    Replayed,
    /// A repeat that waited for the first, then got its answer.
    Waited,
    /// A repeat that waited past `wait_for_first`: 409.
    InProgress,
    /// The key was used for a different request: 422.
    ReusedMismatch,
    /// A repeat after the first's answer was lost: 409.
    OutcomeUnknown,
    /// The first request did nothing (5xx, never reached a backend): key released.
    Released,
    /// A repeat of a request whose answer was too large to keep: 409.
    TooLarge,
    /// A keyed method without a key on a route that requires one: 400.
    Missing,
    /// A malformed key: 400.
    Invalid,
}

impl IdempotencyResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// `ordergate_idempotency_total` of one route, resolved when a snapshot is built.
#[derive(Debug, Clone)]
pub struct IdempotencyMetrics {
    results: [IntCounter; IdempotencyResult::COUNT],
}

impl IdempotencyMetrics {
    /// Counts what a keyed request met.
    pub fn count(&self, result: IdempotencyResult) {
        self.results[result as usize].inc();
    }
}

/// Counters of shopper connections closed by ordergate's own timeouts.
#[derive(Debug, Clone)]
pub struct ConnectionsClosed {
    /// A request head did not arrive whole within `server.header_timeout`.
    pub header_timeout: IntCounter,
    /// A keep-alive connection idled past `server.keepalive_timeout`.
    pub keepalive_timeout: IntCounter,
}

/// What one upstream attempt ended as: the `result` label of attempts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::EnumCount, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum UpstreamResult {
    /// An answer below 500.
    Success,
    /// A 5xx answer.
    ServerError,
    /// The connection could not be opened.
    ConnectFailed,
    /// The connection closed or reset.
    Reset,
    /// No answer in time.
    Timeout,
}

impl UpstreamResult {
    fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Handles for one route, resolved when a snapshot is built.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// By status class: index 0 for "1xx" to 4 for "5xx".
    requests: [IntCounter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// Counts a finished request with its status and duration.
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
        self.duration.observe(seconds);
    }
}

/// A route's counters since the start, for `/status`: the status page turns
/// two of them into rates and percentiles over the time between its polls.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RouteTotals {
    /// Requests answered, by status class (`2xx`, `5xx`, ...).
    pub requests: BTreeMap<&'static str, u64>,
    /// Requests answered with one of ordergate's pages, by reason (only those
    /// that happened).
    pub rejections: BTreeMap<String, u64>,
    /// Retries, all reasons.
    pub retries: u64,
    /// Failures not retried, by why (only those that happened).
    pub retries_denied: BTreeMap<String, u64>,
    /// The request duration histogram.
    pub latency: LatencyTotals,
}

/// A latency histogram's cumulative buckets.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LatencyTotals {
    /// Upper bounds of the buckets, in seconds (the last bucket, +Inf, is `count`).
    pub le: Vec<f64>,
    /// Requests at or below each bound.
    pub counts: Vec<u64>,
    /// Requests observed.
    pub count: u64,
    /// Sum of their durations, in seconds.
    pub sum: f64,
}

/// Handles for one backend of a pool, resolved when a snapshot is built.
#[derive(Debug, Clone)]
pub struct BackendMetrics {
    attempts: [IntCounter; UpstreamResult::COUNT],
}

impl BackendMetrics {
    /// Counts one upstream attempt.
    pub fn attempt(&self, result: UpstreamResult) {
        self.attempts[result as usize].inc();
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("static metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The route label of requests that matched no route.
    pub const UNROUTED: &'static str = "(none)";

    /// Creates and registers every metric on a new registry. The definitions
    /// are static: failing to create or register one is a bug caught by the first
    /// test run, not a runtime condition, hence the `expect`s below.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let metrics = Metrics {
            requests: counter_vec(
                &r,
                "ordergate_requests_total",
                "Requests answered, by route and status class.",
                &["route", "code"],
            ),
            duration: histogram_vec(
                &r,
                "ordergate_request_duration_seconds",
                "Time from request to last response byte, by route.",
                &["route"],
            ),
            attempts: counter_vec(
                &r,
                "ordergate_upstream_attempts_total",
                "Attempts sent to backends, by result.",
                &["pool", "backend", "result"],
            ),
            backend_up: gauge_vec(
                &r,
                "ordergate_backend_up",
                "1 when active checks find the backend healthy (or none run).",
                &["pool", "backend"],
            ),
            backend_ejected: gauge_vec(
                &r,
                "ordergate_backend_ejected",
                "1 while passive checks eject the backend.",
                &["pool", "backend"],
            ),
            backend_in_flight: gauge_vec(
                &r,
                "ordergate_backend_in_flight",
                "Requests in flight to the backend.",
                &["pool", "backend"],
            ),
            backend_drained: gauge_vec(
                &r,
                "ordergate_backend_drained",
                "1 while the backend is drained by the admin API.",
                &["pool", "backend"],
            ),
            retries: counter_vec(
                &r,
                "ordergate_retries_total",
                "Retries, by route and the failure retried.",
                &["route", "reason"],
            ),
            retries_denied: counter_vec(
                &r,
                "ordergate_retries_denied_total",
                "Failures not retried, by route and why (budget = budget exhausted).",
                &["route", "reason"],
            ),
            queue_depth: gauge_vec(
                &r,
                "ordergate_queue_depth",
                "Requests waiting for a pool, by priority.",
                &["pool", "priority"],
            ),
            queue_wait: histogram_vec(
                &r,
                "ordergate_queue_wait_seconds",
                "Time requests waited in the pool's queue, by priority.",
                &["pool", "priority"],
            ),
            rejections: counter_vec(
                &r,
                "ordergate_rejections_total",
                "Requests answered by ordergate itself, by route and reason.",
                &["route", "reason"],
            ),
            concurrency_limit: gauge_vec(
                &r,
                "ordergate_concurrency_limit",
                "Current concurrency limit of the pool.",
                &["pool"],
            ),
            reloads: counter_vec(
                &r,
                "ordergate_config_reloads_total",
                "Config reload attempts, by result.",
                &["result"],
            ),
            config_generation: gauge(
                &r,
                "ordergate_config_generation",
                "Generation of the config being served (1 = as started).",
            ),
            config_last_reload_success: gauge(
                &r,
                "ordergate_config_last_reload_success",
                "1 if the last reload succeeded, 0 if it failed.",
            ),
            panics: counter_vec(
                &r,
                "ordergate_pool_panics_total",
                "Times a pool entered panic mode (too few healthy backends).",
                &["pool"],
            ),
            idempotency: counter_vec(
                &r,
                "ordergate_idempotency_total",
                "Keyed requests on routes with idempotency, by route and what they met.",
                &["route", "result"],
            ),
            pool_active: gauge_vec(
                &r,
                "ordergate_pool_active",
                "For a pool with a backup: 1 for the pool serving its traffic now (itself or its backup).",
                &["pool", "serving"],
            ),
            maintenance_open: gauge_vec(
                &r,
                "ordergate_maintenance_open",
                "1 while a maintenance window is open for the route (\"*\": every route).",
                &["route"],
            ),
            stale_served: counter_vec(
                &r,
                "ordergate_stale_served_total",
                "Reads answered with a kept copy (marked stale) because the backends failed, by route.",
                &["route"],
            ),
            stale_bytes: gauge_vec(
                &r,
                "ordergate_stale_bytes",
                "Bytes a route's kept copies for stale answers take.",
                &["route"],
            ),
            idempotency_store_bytes: gauge_vec(
                &r,
                "ordergate_idempotency_store_bytes",
                "Bytes the idempotency records of a route take.",
                &["route"],
            ),
            idempotency_evictions: gauge_vec(
                &r,
                "ordergate_idempotency_evictions",
                "Idempotency records evicted to stay within the route's max_bytes, since start.",
                &["route"],
            ),
            rate_limit_evicted_clients: gauge_vec(
                &r,
                "ordergate_rate_limit_evicted_clients",
                "Clients the route's in-memory rate limiter forgot to stay within max_clients, since start.",
                &["route"],
            ),
            connections_closed: {
                let closed = counter_vec(
                    &r,
                    "ordergate_connections_closed_total",
                    "Shopper connections closed by ordergate's timeouts, by reason.",
                    &["reason"],
                );
                ConnectionsClosed {
                    header_timeout: closed.with_label_values(&["header_timeout"]),
                    keepalive_timeout: closed.with_label_values(&["keepalive_timeout"]),
                }
            },
            features: Arc::default(),
            handles: Arc::default(),
            store: super::store::StoreMetrics::new(&r),
            registry: r,
        };
        metrics.prime_static();
        metrics
    }

    /// Series that exist from the start: reload results, build information,
    /// pingora's routine events and the process collector.
    fn prime_static(&self) {
        for result in ["success", "failure"] {
            self.reloads.with_label_values(&[result]);
        }
        let build_info = gauge_vec(
            &self.registry,
            "ordergate_build_info",
            "Always 1; the labels say which ordergate runs.",
            &["version", "revision"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), REVISION])
            .set(1);
        if let Err(e) = self.registry.register(Box::new(FRAMEWORK_EVENTS.clone())) {
            log::warn!("metrics: cannot export ordergate_framework_events_total: {e}");
        }
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(e) = self.registry.register(Box::new(process)) {
            log::warn!("metrics: cannot export process metrics: {e}");
        }
    }

    /// Creates a route's retry, denial and rejection series at zero, so that
    /// `increase()` sees their first event.
    pub fn prime_route(&self, route: &str, retried: &[&str], denied: &[&str], rejected: &[&str]) {
        for reason in retried {
            self.retries.with_label_values(&[route, reason]);
        }
        for reason in denied {
            self.retries_denied.with_label_values(&[route, reason]);
        }
        for reason in rejected {
            self.rejections.with_label_values(&[route, reason]);
        }
    }

    /// Creates a pool's queue series (per priority) and its limit gauge.
    pub fn prime_pool(&self, pool: &str) {
        for priority in crate::admission::Priority::ALL {
            self.queue_wait
                .with_label_values(&[pool, priority.as_str()]);
            self.queue_depth
                .with_label_values(&[pool, priority.as_str()]);
        }
        self.concurrency_limit.with_label_values(&[pool]);
        self.panics.with_label_values(&[pool]);
    }

    /// Requests answered so far, all routes and statuses together.
    pub fn requests_answered(&self) -> u64 {
        self.requests
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().value() as u64)
            .sum()
    }

    /// The counters of each of `routes` since the start (see [`RouteTotals`]),
    /// in the same order. Each labelled family is read once, whatever the
    /// number of routes.
    pub fn route_totals(&self, routes: &[&str]) -> Vec<RouteTotals> {
        let mut retries = counts_by_route(&self.retries, "reason");
        let mut rejections = counts_by_route(&self.rejections, "reason");
        let mut denied = counts_by_route(&self.retries_denied, "reason");
        let nonzero = |mut counts: BTreeMap<String, u64>| {
            counts.retain(|_, n| *n > 0);
            counts
        };
        routes
            .iter()
            .map(|route| {
                let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
                    .into_iter()
                    .map(|class| {
                        let counter = self.requests.with_label_values(&[route, class]);
                        (class, counter.get())
                    })
                    .collect();
                let histogram = self.duration.with_label_values(&[route]).metric();
                let histogram = histogram.get_histogram();
                let (le, counts) = histogram
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .unzip();
                RouteTotals {
                    requests,
                    rejections: nonzero(rejections.remove(*route).unwrap_or_default()),
                    retries: retries.remove(*route).unwrap_or_default().values().sum(),
                    retries_denied: nonzero(denied.remove(*route).unwrap_or_default()),
                    latency: LatencyTotals {
                        le,
                        counts,
                        count: histogram.get_sample_count(),
                        sum: histogram.get_sample_sum(),
                    },
                }
            })
            .collect()
    }

    /// Upstream attempts since the start, by pool, backend and result.
    pub fn attempt_totals(&self) -> BTreeMap<(String, String), BTreeMap<String, u64>> {
        let mut totals: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
        for family in self.attempts.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                totals
                    .entry((label("pool"), label("backend")))
                    .or_default()
                    .insert(label("result"), metric.get_counter().value() as u64);
            }
        }
        totals
    }

    /// Handles for a route.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| self.requests.with_label_values(&[route, class])),
            duration: self.duration.with_label_values(&[route]),
        }
    }

    /// Counts a request that matched no route.
    pub fn unrouted(&self, status: u16, seconds: f64) {
        self.route(Metrics::UNROUTED).observe(status, seconds);
    }

    /// Handles for a backend of a pool.
    pub fn backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        BackendMetrics {
            attempts: std::array::from_fn(|i| {
                let result = UpstreamResult::VARIANTS[i];
                self.attempts
                    .with_label_values(&[pool, backend, result.as_str()])
            }),
        }
    }

    /// Counts a retry of a failure kind (`connect_failure`, `reset`, `timeout`, `status`).
    pub fn retry(&self, route: &str, reason: &str) {
        self.retries.with_label_values(&[route, reason]).inc();
    }

    /// Counts a failure that was not retried, with the stop reason.
    pub fn retry_denied(&self, route: &str, reason: &str) {
        self.retries_denied
            .with_label_values(&[route, reason])
            .inc();
    }

    /// Counts a request answered with one of ordergate's own pages.
    pub fn rejection(&self, route: &str, reason: &str) {
        self.rejections.with_label_values(&[route, reason]).inc();
    }

    /// Records a queue wait.
    pub fn queue_wait(&self, pool: &str, priority: &str, seconds: f64) {
        self.queue_wait
            .with_label_values(&[pool, priority])
            .observe(seconds);
    }

    /// Counts a reload attempt.
    pub fn reload(&self, ok: bool, generation: u64) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
        self.config_last_reload_success.set(i64::from(ok));
        self.config_generation.set(generation as i64);
    }

    /// Exports a route's stale counter at zero.
    pub fn prime_stale(&self, route: &str) {
        self.stale_served.with_label_values(&[route]);
    }

    /// Counts a read answered with a stale copy.
    pub fn stale_served(&self, route: &str) {
        self.stale_served.with_label_values(&[route]).inc();
    }

    /// The handles of type `T` made for `name` (a route, a pool's backend):
    /// `make` runs the first time only; every later snapshot and reload
    /// shares them. Series are never removed, so neither are the handles.
    pub fn handles<T: Clone + Send + Sync + 'static>(
        &self,
        name: &str,
        make: impl FnOnce() -> T,
    ) -> T {
        let kind = TypeId::of::<T>();
        let found = self
            .handles
            .lock()
            .get(&kind)
            .and_then(|by_name| by_name.get(name))
            .and_then(|found| found.downcast_ref::<T>().cloned());
        if let Some(found) = found {
            return found;
        }
        // Made outside the lock: `make` may ask for other handles.
        let made = make();
        self.handles
            .lock()
            .entry(kind)
            .or_default()
            .insert(name.into(), Arc::new(made.clone()));
        made
    }

    /// `ordergate_idempotency_total` of a route, every result at zero from the start.
    pub fn idempotency(&self, route: &str) -> IdempotencyMetrics {
        IdempotencyMetrics {
            results: std::array::from_fn(|i| {
                let result = IdempotencyResult::VARIANTS[i];
                self.idempotency
                    .with_label_values(&[route, result.as_str()])
            }),
        }
    }

    /// A feature's own metric families of type `T`, on this registry: `build`
    /// registers them the first time `T` is asked for; every later call (from
    /// any clone, any snapshot or reload) gets the same ones. `build` must not
    /// call `registered` itself.
    pub fn registered<T: Send + Sync + 'static>(
        &self,
        build: impl FnOnce(&Registry) -> T,
    ) -> Arc<T> {
        let mut features = self.features.lock();
        if let Some(found) = features.get(&TypeId::of::<T>()) {
            if let Ok(found) = Arc::clone(found).downcast::<T>() {
                return found;
            }
        }
        let built = Arc::new(build(&self.registry));
        features.insert(
            TypeId::of::<T>(),
            Arc::clone(&built) as Arc<dyn Any + Send + Sync>,
        );
        built
    }

    /// The counter of times a pool entered panic mode.
    pub fn pool_panics(&self, pool: &str) -> IntCounter {
        self.panics.with_label_values(&[pool])
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            log::error!("cannot encode metrics: {e}");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// The counters of a `{route, <key>}` vector, by route and `key`.
fn counts_by_route(vec: &IntCounterVec, key: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for family in vec.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            if let (Some(route), Some(value)) = (label("route"), label(key)) {
                counts
                    .entry(route)
                    .or_default()
                    .insert(value, metric.get_counter().value() as u64);
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.route("checkout").observe(201, 0.02);
        metrics.route("checkout").observe(503, 0.001);
        metrics
            .backend("orders", "127.0.0.1:9001")
            .attempt(UpstreamResult::Reset);
        metrics.reload(true, 2);
        let text = metrics.render();
        assert!(
            text.contains("ordergate_requests_total{code=\"2xx\",route=\"checkout\"} 1"),
            "{text}"
        );
        assert!(text.contains("ordergate_requests_total{code=\"5xx\",route=\"checkout\"} 1"));
        assert!(text.contains("ordergate_upstream_attempts_total{backend=\"127.0.0.1:9001\",pool=\"orders\",result=\"reset\"} 1"));
        assert!(text.contains("ordergate_request_duration_seconds_count{route=\"checkout\"} 2"));
        assert!(text.contains("ordergate_config_generation 2"));
    }

    #[test]
    fn route_totals_count_what_happened_to_one_route() {
        let metrics = Metrics::new();
        metrics.route("checkout").observe(201, 0.02);
        metrics.route("checkout").observe(503, 0.001);
        metrics.route("catalog").observe(200, 3.0);
        metrics.rejection("checkout", "shed");
        metrics.rejection("catalog", "no_route");
        metrics.retry("checkout", "reset");
        metrics.retry_denied("checkout", "budget");
        let totals = metrics.route_totals(&["checkout", "catalog"]).remove(0);
        assert_eq!(totals.requests["2xx"], 1);
        assert_eq!(totals.requests["5xx"], 1);
        assert_eq!(totals.rejections.len(), 1);
        assert_eq!(totals.rejections["shed"], 1);
        assert_eq!(totals.retries, 1);
        assert_eq!(totals.retries_denied["budget"], 1);
        assert_eq!(totals.latency.count, 2);
        assert_eq!(totals.latency.le.len(), BUCKETS.len());
        // 1 ms is in the first bucket, 20 ms from the 25 ms bucket on.
        assert_eq!(totals.latency.counts[0], 1);
        assert_eq!(totals.latency.counts[4], 2);
        metrics
            .backend("orders", "127.0.0.1:9001")
            .attempt(UpstreamResult::Reset);
        let attempts = metrics.attempt_totals();
        let backend = &attempts[&("orders".to_string(), "127.0.0.1:9001".to_string())];
        assert_eq!(backend["reset"], 1);
        assert_eq!(backend["success"], 0);
    }
}
