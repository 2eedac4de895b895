//! Live per-backend state, shared by every snapshot that names the backend:
//! requests in flight, latency, active health, ejection, and drain.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::budget::RetryBudget;
use super::health::{Health, HealthState};
use super::outlier::{OutlierState, Signal};
use crate::admission::{Admission, AdmissionConfig};
use crate::config::{HealthConfig, OutlierConfig};
use crate::live::weak_map::WeakMap;

/// How fast old latency samples fade from the EWMA. Default: 10s, as linkerd.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for a backend before its first answer. Default: 10ms.
const EWMA_START: Duration = Duration::from_millis(10);
/// Latency charged for a failed attempt, so a backend that fails fast does not
/// look fast to peak-EWMA balancing.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Weight of the newest attempt in the failure rate.
const FAILURE_RATE_ALPHA: f64 = 0.1;
/// How much a failure rate of 1 inflates a backend's least-request cost.
const FAILURE_COST: f64 = 10.0;

/// Bumped whenever some backend's availability changes by an event (drain,
/// a change of health, an ejection, a probe that ends one), so that pools
/// can keep counts of their serving backends instead of asking each backend
/// on every request. Rare enough that one process-wide counter will do.
static AVAILABILITY_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current [`AVAILABILITY_EPOCH`]: a pool's counts taken at an older one
/// are stale.
pub(super) fn availability_epoch() -> u64 {
    AVAILABILITY_EPOCH.load(Ordering::Acquire)
}

fn availability_changed() {
    AVAILABILITY_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// One backend's live state: what balancing and health decisions read.
#[derive(Debug)]
pub struct Backend {
    /// Name of the pool this entry belongs to.
    pub pool: String,
    /// Where the backend listens.
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    load: Mutex<Load>,
    status: Mutex<Status>,
    drained: AtomicBool,
    /// Weight set through the admin API; 0 = the config's weight.
    weight_override: AtomicU32,
}

#[derive(Debug)]
struct Load {
    /// Peak-EWMA latency in nanoseconds.
    latency_nanos: f64,
    /// Share of recent attempts that failed, 0 to 1.
    failure_rate: f64,
    updated: Instant,
}

/// Health and ejection of a backend.
#[derive(Debug)]
struct Status {
    health: HealthState,
    outlier: OutlierState,
    /// Since when the backend can take traffic (for slow start).
    serving_since: Instant,
    next_probe: Option<Instant>,
    /// The last probe: when, and why it failed (`None` when it passed).
    last_probe: Option<(Instant, Option<String>)>,
    /// When active health last changed (`None`: never, since the start).
    health_changed: Option<Instant>,
}

/// The last active probe of a backend and the last change of its health, for
/// the admin status.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// When the last probe finished, and why it failed (`None` when it passed).
    pub last: Option<(Instant, Option<String>)>,
    /// When the health last changed.
    pub changed: Option<Instant>,
}

/// Whether a backend may take a new request now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Availability {
    /// It may, since this long (for slow start).
    Serving(Duration),
    /// Active checks have not passed yet, or failed.
    Unhealthy(Health),
    /// Passive checks ejected it.
    Ejected,
    /// An operator drained it.
    Drained,
}

impl Backend {
    fn new(pool: &str, addr: SocketAddr) -> Backend {
        let now = Instant::now();
        Backend {
            pool: pool.to_string(),
            addr,
            in_flight: AtomicUsize::new(0),
            load: Mutex::new(Load {
                latency_nanos: EWMA_START.as_nanos() as f64,
                failure_rate: 0.0,
                updated: now,
            }),
            status: Mutex::new(Status {
                health: HealthState::new(),
                outlier: OutlierState::default(),
                serving_since: now,
                next_probe: None,
                last_probe: None,
                health_changed: None,
            }),
            drained: AtomicBool::new(false),
            weight_override: AtomicU32::new(0),
        }
    }

    /// Drains the backend (no new requests; those in flight finish) or undrains it.
    pub fn set_drained(&self, drained: bool) {
        if self.drained.swap(drained, Ordering::Relaxed) != drained {
            availability_changed();
        }
    }

    /// Whether the backend is drained.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Overrides the config's weight (0 restores it). The serving pool takes
    /// it at its next pick ([`crate::upstream::Pool::set_weight`]).
    pub fn set_weight_override(&self, weight: u32) {
        self.weight_override.store(weight, Ordering::Relaxed);
    }

    /// The weight set through the admin API, if any.
    pub fn weight_override(&self) -> Option<u32> {
        match self.weight_override.load(Ordering::Relaxed) {
            0 => None,
            w => Some(w),
        }
    }

    /// Requests sent to this backend that have not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
            started: Instant::now(),
            slot: None,
        }
    }

    /// Feeds one attempt into the load estimates. A slower sample replaces the
    /// peak EWMA at once, a faster one pulls it down gradually; a failure counts as
    /// at least [`FAILURE_PENALTY`] and raises the failure rate.
    pub fn observe(&self, latency: Duration, failed: bool) {
        let now = Instant::now();
        let latency = if failed {
            latency.max(FAILURE_PENALTY)
        } else {
            latency
        };
        let sample = latency.as_nanos() as f64;
        let mut load = self.load.lock();
        if sample > load.latency_nanos {
            load.latency_nanos = sample;
        } else {
            let elapsed = now.saturating_duration_since(load.updated).as_secs_f64();
            let keep = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
            load.latency_nanos = load.latency_nanos * keep + sample * (1.0 - keep);
        }
        let failed = if failed { 1.0 } else { 0.0 };
        load.failure_rate += FAILURE_RATE_ALPHA * (failed - load.failure_rate);
        load.updated = now;
    }

    /// The peak-EWMA load estimate: smoothed latency times (requests in flight + 1).
    pub fn ewma_cost(&self) -> f64 {
        self.load.lock().latency_nanos * (self.in_flight() + 1) as f64
    }

    /// The least-request load estimate: requests in flight (+1), inflated by the
    /// recent failure rate so a backend that fails fast does not attract traffic.
    pub fn least_request_cost(&self) -> f64 {
        let failure_rate = self.load.lock().failure_rate;
        (self.in_flight() + 1) as f64 * (1.0 + FAILURE_COST * failure_rate)
    }

    /// Whether the backend may take a new request now. `health` is the pool's
    /// active-check config: without one, probes are not awaited.
    pub fn availability(&self, now: Instant, health: Option<&HealthConfig>) -> Availability {
        if self.is_drained() {
            return Availability::Drained;
        }
        let status = self.status.lock();
        if let Some(config) = health {
            let state = status.health.health();
            let healthy =
                state == Health::Healthy || (state == Health::Unproven && config.start_healthy);
            if !healthy {
                return Availability::Unhealthy(state);
            }
        }
        if status.outlier.is_ejected(now, health.is_some()) {
            return Availability::Ejected;
        }
        let since = match status.outlier.ejected_until() {
            Some(until) => status.serving_since.max(until),
            None => status.serving_since,
        };
        Availability::Serving(now.saturating_duration_since(since))
    }

    /// The current active-check health.
    pub fn health(&self) -> Health {
        self.status.lock().health.health()
    }

    /// Records a probe result; returns the new health when it changed.
    pub fn record_probe(&self, passed: bool, config: &HealthConfig) -> Option<Health> {
        let now = Instant::now();
        let mut status = self.status.lock();
        if passed && status.outlier.probe_passed(now) {
            availability_changed();
        }
        let change = status.health.record(passed, config);
        if change == Some(Health::Healthy) {
            status.serving_since = now;
        }
        if change.is_some() {
            status.health_changed = Some(now);
            availability_changed();
        }
        if passed {
            status.last_probe = Some((now, None));
        }
        change
    }

    /// Records a probe's outcome with why it failed, then counts it as
    /// [`Backend::record_probe`] does.
    pub fn record_probe_result(
        &self,
        result: &Result<(), String>,
        config: &HealthConfig,
    ) -> Option<Health> {
        let change = self.record_probe(result.is_ok(), config);
        if let Err(why) = result {
            self.status.lock().last_probe = Some((Instant::now(), Some(why.clone())));
        }
        change
    }

    /// The last probe and the last change of health.
    pub fn probe_report(&self) -> ProbeReport {
        let status = self.status.lock();
        ProbeReport {
            last: status.last_probe.clone(),
            changed: status.health_changed,
        }
    }

    /// Until when passive checks eject the backend (or last ejected it).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.status.lock().outlier.ejected_until()
    }

    /// The smoothed (peak-EWMA) latency of the backend's answers.
    pub fn ewma_latency(&self) -> Duration {
        Duration::from_nanos(self.load.lock().latency_nanos as u64)
    }

    /// Claims the next probe if it is due: returns true at most once per interval.
    pub fn probe_due(&self, now: Instant, config: &HealthConfig) -> bool {
        let mut status = self.status.lock();
        match status.next_probe {
            Some(at) if at > now => false,
            _ => {
                status.next_probe = Some(now + super::health::next_probe_delay(config));
                true
            }
        }
    }

    /// Counts an attempt's result for outlier detection. Returns true when this
    /// signal tips the backend over a threshold (the caller decides, knowing the
    /// pool, whether it may be ejected).
    pub fn record_signal(&self, signal: Signal, config: &OutlierConfig) -> bool {
        self.status.lock().outlier.record(signal, config)
    }

    /// Ejects the backend; returns for how long.
    pub fn eject(&self, config: &OutlierConfig) -> Duration {
        let time = self.status.lock().outlier.eject(Instant::now(), config);
        availability_changed();
        time
    }
}

/// A request in flight to a backend; dropping it ends the count on every path.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    started: Instant,
    /// The backend's place in the pool that picked it, when a pool did.
    slot: Option<usize>,
}

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The same request, noted as picked from the backend at `slot` of a pool.
    pub fn at_slot(mut self, slot: usize) -> InFlight {
        self.slot = Some(slot);
        self
    }

    /// The backend's place in the pool that picked it ([`InFlight::at_slot`]).
    pub fn slot(&self) -> Option<usize> {
        self.slot
    }

    /// Time since the request was sent to the backend.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Live state of one pool that outlives snapshots.
#[derive(Debug)]
pub struct PoolState {
    /// Retries allowed per recent requests.
    pub retry_budget: RetryBudget,
    /// Whether the pool is in panic mode (logged on each change).
    pub panicking: AtomicBool,
    /// The pool's queue and concurrency limit.
    pub admission: Arc<Admission>,
    /// Whether the pool's traffic goes to its backup pool.
    pub failover: super::failover::Failover,
}

/// Live state of every backend, keyed by (pool name, address), and of every
/// pool. Entries are held by snapshots and requests; once none holds one, the
/// next lookup forgets it.
#[derive(Debug, Default)]
pub struct Registry {
    backends: WeakMap<(String, SocketAddr), Backend>,
    pools: WeakMap<String, PoolState>,
}

impl Registry {
    /// The live entry for a backend of a pool, created if it is new.
    pub fn backend(&self, pool: &str, addr: SocketAddr) -> Arc<Backend> {
        self.backends
            .get_or_create((pool.to_string(), addr), |live| {
                live.unwrap_or_else(|| Arc::new(Backend::new(pool, addr)))
            })
    }

    /// The live state of a pool, created if it is new; an existing pool's
    /// admission takes the new settings and keeps its waiters.
    pub fn pool(&self, name: &str, admission: &AdmissionConfig) -> Arc<PoolState> {
        self.pools
            .get_or_create(name.to_string(), |live| match live {
                Some(pool) => {
                    pool.admission.set_config(admission.clone());
                    pool
                }
                None => Arc::new(PoolState {
                    retry_budget: RetryBudget::default(),
                    panicking: AtomicBool::new(false),
                    admission: Arc::new(Admission::new(admission.clone())),
                    failover: super::failover::Failover::default(),
                }),
            })
    }

    /// The live entry of a backend of a pool, if some snapshot or request holds it.
    pub fn find_backend(&self, pool: &str, addr: SocketAddr) -> Option<Arc<Backend>> {
        self.backends.get(&(pool.to_string(), addr))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Probe;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn health_config(start_healthy: bool) -> HealthConfig {
        HealthConfig {
            probe: Probe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            jitter: Duration::ZERO,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            start_healthy,
        }
    }

    fn outlier_config() -> OutlierConfig {
        OutlierConfig {
            consecutive_gateway_failures: 3,
            consecutive_5xx: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn registry_shares_live_entries_and_forgets_dropped_ones() {
        let registry = Registry::default();
        let a = registry.backend("orders", addr(1));
        let guard = a.start_request();
        let again = registry.backend("orders", addr(1));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(again.in_flight(), 1);
        assert!(!Arc::ptr_eq(&a, &registry.backend("catalog", addr(1))));
        drop((a, again, guard));
        assert_eq!(registry.backend("orders", addr(1)).in_flight(), 0);
        let admission = crate::config::Config::from_toml(
            "[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        )
        .expect("valid")
        .pools[0]
            .admission
            .clone();
        let pool = registry.pool("orders", &admission);
        assert!(Arc::ptr_eq(&pool, &registry.pool("orders", &admission)));
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let backend = Arc::new(Backend::new("p", addr(1)));
        let first = backend.start_request();
        let second = backend.start_request();
        assert_eq!(backend.in_flight(), 2);
        drop(first);
        assert_eq!(backend.in_flight(), 1);
        drop(second);
        assert_eq!(backend.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let backend = Backend::new("p", addr(1));
        backend.observe(Duration::from_millis(500), false);
        assert!((backend.ewma_cost() - 500e6).abs() < 1.0);
        tokio::time::advance(Duration::from_secs(10)).await;
        backend.observe(Duration::from_millis(10), false);
        // One decay period keeps e^-1 of the old value.
        let expected = 500e6 * (-1.0f64).exp() + 10e6 * (1.0 - (-1.0f64).exp());
        assert!(
            (backend.ewma_cost() - expected).abs() < 1e3,
            "{}",
            backend.ewma_cost()
        );
    }

    #[test]
    fn fast_failures_make_a_backend_look_expensive() {
        let failing = Backend::new("p", addr(1));
        let fine = Backend::new("p", addr(2));
        for _ in 0..5 {
            failing.observe(Duration::from_micros(100), true);
            fine.observe(Duration::from_millis(20), false);
        }
        assert!(failing.ewma_cost() > 10.0 * fine.ewma_cost());
        assert!(failing.least_request_cost() > 3.0 * fine.least_request_cost());
    }

    #[tokio::test(start_paused = true)]
    async fn availability_follows_probes_and_ejection() {
        let backend = Backend::new("p", addr(1));
        let strict = health_config(false);
        let now = Instant::now();
        assert_eq!(
            backend.availability(now, Some(&strict)),
            Availability::Unhealthy(Health::Unproven)
        );
        assert!(matches!(
            backend.availability(now, Some(&health_config(true))),
            Availability::Serving(_)
        ));
        assert!(
            matches!(backend.availability(now, None), Availability::Serving(_)),
            "no checks: serving"
        );

        assert_eq!(backend.record_probe(true, &strict), Some(Health::Healthy));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            backend.availability(Instant::now(), Some(&strict)),
            Availability::Serving(Duration::from_secs(3))
        );

        backend.eject(&outlier_config());
        assert_eq!(
            backend.availability(Instant::now(), Some(&strict)),
            Availability::Ejected
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            backend.availability(Instant::now(), Some(&strict)),
            Availability::Ejected,
            "awaits a probe"
        );
        assert_eq!(
            backend.availability(Instant::now(), None),
            Availability::Serving(Duration::ZERO),
            "slow start restarts"
        );
        backend.record_probe(true, &strict);
        assert!(matches!(
            backend.availability(Instant::now(), Some(&strict)),
            Availability::Serving(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn probes_are_claimed_once_per_interval() {
        let backend = Backend::new("p", addr(1));
        let config = health_config(false);
        let now = Instant::now();
        assert!(backend.probe_due(now, &config));
        assert!(!backend.probe_due(now, &config));
        assert!(backend.probe_due(now + Duration::from_secs(1), &config));
    }

    #[tokio::test(start_paused = true)]
    async fn the_probe_report_keeps_the_last_result_and_the_last_change() {
        let backend = Backend::new("p", addr(1));
        let config = health_config(false);
        assert_eq!(backend.probe_report().last, None);
        let start = Instant::now();
        backend.record_probe_result(&Ok(()), &config);
        assert_eq!(
            backend.probe_report().changed,
            Some(start),
            "unproven to healthy"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let refused = Err("connect: refused".to_string());
        backend.record_probe_result(&refused, &config);
        let report = backend.probe_report();
        assert_eq!(
            report.last,
            Some((Instant::now(), Some("connect: refused".to_string())))
        );
        assert_eq!(
            report.changed,
            Some(start),
            "one failure is below the threshold"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        backend.record_probe_result(&refused, &config);
        assert_eq!(
            backend.probe_report().changed,
            Some(Instant::now()),
            "down now"
        );
        backend.record_probe_result(&Ok(()), &config);
        assert_eq!(backend.probe_report().last, Some((Instant::now(), None)));
        assert!(backend.ejected_until().is_none());
        assert_eq!(backend.ewma_latency(), EWMA_START);
    }
}
