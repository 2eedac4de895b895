//! A Pool as served: its backends (live entries from the registry), its balancing
//! tables, its health and outlier settings, and its timeouts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use pingora::upstreams::peer::HttpPeer;
use tokio::time::Instant;

use super::backend::availability_epoch;
use super::balance::{key_hash, Balancer};
use super::dns::Served;
use super::outlier::Signal;
use super::tls::PeerTls;
use super::{Availability, Backend, InFlight, PoolState, Registry};
use crate::config::{Balance, HashKey, HealthConfig, OutlierConfig, PoolConfig};
use crate::telemetry::{BackendMetrics, Metrics, UpstreamResult};

/// The longest a pool trusts its counts of serving backends without a look
/// at each (ejections also end by time, and the counts know when).
const COUNTS_MAX_AGE: Duration = Duration::from_secs(1);

/// Share of traffic a backend gets at the very start of its slow start.
const SLOW_START_FLOOR: f64 = 0.1;

/// One pool of a snapshot.
#[derive(Debug)]
pub struct Pool {
    /// Pool name, for logs and metric labels.
    pub name: String,
    /// Live pool state (retry budget), shared across snapshots.
    pub state: Arc<PoolState>,
    hash_key: Option<HashKey>,
    backends: Vec<Arc<Backend>>,
    /// Each backend's index by address.
    positions: HashMap<SocketAddr, usize>,
    /// Weights as served: the config's, or an admin override.
    weights: Vec<AtomicU32>,
    /// Weights as the config file gives them, before admin overrides.
    config_weights: Vec<u32>,
    /// Most requests in flight per backend.
    caps: Vec<u32>,
    /// The DNS name each backend was resolved from (`None`: given as `IP:PORT`).
    names: Vec<Option<Arc<str>>>,
    metrics: Vec<Arc<BackendMetrics>>,
    panics: prometheus::IntCounter,
    balancer: Balancer,
    /// What [`Pool::counts`] last found.
    counts: parking_lot::Mutex<Option<KeptCounts>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    health: Option<HealthConfig>,
    outlier: OutlierConfig,
    panic_threshold: u8,
    slow_start: Duration,
    retry_budget: crate::config::RetryBudgetConfig,
    backup: Option<usize>,
    failback_after: Duration,
    tls: Option<PeerTls>,
}

/// How many of a pool's backends can take traffic, and their caps.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Backends that can take traffic.
    serving: usize,
    /// Backends an operator drained.
    drained: usize,
    /// The in-flight caps of the serving backends, summed.
    serving_cap: usize,
    /// The same over every backend but drained ones (panic mode).
    panic_cap: usize,
}

/// Counts as found at an availability epoch, good until an instant.
#[derive(Debug, Clone, Copy)]
struct KeptCounts {
    counts: Counts,
    epoch: u64,
    until: Instant,
}

/// A backend picked for one attempt.
#[derive(Debug)]
pub struct Pick {
    /// Where to connect, with the pool's timeouts (boxed, as pingora takes
    /// it: built in place rather than copied on the way).
    pub peer: Box<HttpPeer>,
    /// The request, counted in flight at the backend.
    pub in_flight: InFlight,
    /// Whether the pool was in panic mode (too few healthy backends) for this pick.
    pub panic: bool,
}

impl Pool {
    /// Builds a pool from its config and the backends it serves (its
    /// `IP:PORT` backends and the addresses its names resolve to), reusing
    /// live state from the registry. A weight set through the admin API
    /// overrides the config's.
    pub fn new(
        config: &PoolConfig,
        served: &[Served],
        registry: &Registry,
        metrics: &Metrics,
    ) -> Pool {
        let backends: Vec<Arc<Backend>> = served
            .iter()
            .map(|b| registry.backend(&config.name, b.config.addr))
            .collect();
        let weights: Vec<u32> = served
            .iter()
            .zip(&backends)
            .map(|(c, live)| live.weight_override().unwrap_or(c.config.weight))
            .collect();
        let hash_key = match &config.balance {
            Balance::ConsistentHash(key) => Some(key.clone()),
            _ => None,
        };
        Pool {
            name: config.name.clone(),
            state: registry.pool(&config.name, &config.admission),
            hash_key,
            balancer: Balancer::new(&config.balance, &backends, &weights),
            counts: parking_lot::Mutex::new(None),
            positions: backends
                .iter()
                .enumerate()
                .map(|(i, b)| (b.addr, i))
                .collect(),
            caps: served.iter().map(|b| b.config.max_in_flight).collect(),
            names: served.iter().map(|b| b.name.clone()).collect(),
            metrics: backends
                .iter()
                .map(|b| {
                    metrics.handles(&format!("{}\0{}", config.name, b.addr), || {
                        Arc::new(metrics.backend(&config.name, &b.addr.to_string()))
                    })
                })
                .collect(),
            panics: metrics.pool_panics(&config.name),
            backends,
            weights: weights.into_iter().map(AtomicU32::new).collect(),
            config_weights: served.iter().map(|b| b.config.weight).collect(),
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
            health: config.health.clone(),
            outlier: config.outlier.clone(),
            panic_threshold: config.panic_threshold,
            slow_start: config.slow_start,
            retry_budget: config.retry_budget.clone(),
            backup: config.backup,
            failback_after: config.failback_after,
            tls: config.tls.as_ref().map(PeerTls::new),
        }
    }

    /// The pool's TLS to its backends, if it speaks TLS to them.
    pub fn tls(&self) -> Option<&PeerTls> {
        self.tls.as_ref()
    }

    /// The pool that takes this pool's traffic when none of its backends can,
    /// as an index into the snapshot's pools.
    pub fn backup(&self) -> Option<usize> {
        self.backup
    }

    /// Whether this pool's traffic goes to its backup now: at once when no
    /// backend can take traffic, back only after the pool could serve for
    /// `failback_after`. Each switch is logged once.
    pub fn serves_backup(&self, now: Instant) -> bool {
        let Some(_) = self.backup else {
            return false;
        };
        let (on_backup, switch) =
            self.state
                .failover
                .serve_backup(self.can_serve(), now, self.failback_after);
        self.log_switch(switch, "no backend can take traffic");
        on_backup
    }

    /// Moves this pool's traffic to its backup at once: a request found no
    /// backend it could connect to.
    pub fn fail_over(&self) {
        let switch = self.state.failover.fail_over();
        self.log_switch(switch, "every connection of a request failed");
    }

    fn log_switch(&self, switch: Option<super::failover::Switch>, why: &str) {
        match switch {
            Some(super::failover::Switch::ToBackup) => log::warn!(
                "pool {}: traffic moves to its backup pool ({why})",
                self.name
            ),
            Some(super::failover::Switch::ToPrimary) => log::warn!(
                "pool {}: traffic is back from its backup pool (it could serve for {:?})",
                self.name,
                self.failback_after
            ),
            None => {}
        }
    }

    /// The pool's backends, in config order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// The DNS name the backend at `index` was resolved from, if any.
    pub fn backend_name(&self, index: usize) -> Option<&str> {
        self.names.get(index).and_then(|n| n.as_deref())
    }

    /// The weight the config file gives the backend at `index` (an admin
    /// override may serve another, see [`Pool::weight_and_cap`]).
    pub fn config_weight(&self, index: usize) -> Option<u32> {
        self.config_weights.get(index).copied()
    }

    /// The weight and in-flight cap of the backend at `index`, as served.
    pub fn weight_and_cap(&self, index: usize) -> Option<(u32, u32)> {
        Some((
            self.weights.get(index)?.load(Ordering::Relaxed),
            *self.caps.get(index)?,
        ))
    }

    /// Serves the backend at `addr` with a new weight (an admin override, or
    /// 0 for the config's) from the next pick on, without a new snapshot.
    /// Returns false when the pool has no such backend.
    pub fn set_weight(&self, addr: SocketAddr, weight: u32) -> bool {
        let Some(&index) = self.positions.get(&addr) else {
            return false;
        };
        let weight = match weight {
            0 => self.config_weights[index],
            w => w,
        };
        self.weights[index].store(weight, Ordering::Relaxed);
        let now: Vec<u32> = self
            .weights
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        self.balancer.reweigh(&self.backends, &now);
        true
    }

    /// Requests the pool can have in flight now: the sum of the in-flight caps of
    /// backends that can take traffic (of all but drained ones in panic mode).
    pub fn capacity(&self) -> usize {
        let counts = self.counts(Instant::now());
        if self.in_panic(&counts) {
            counts.panic_cap
        } else {
            counts.serving_cap
        }
    }

    /// Whether some backend can take traffic (healthy, not ejected, not
    /// drained, with room): panic mode does not count, since a pool whose
    /// backends are all down is not able to serve.
    pub fn can_serve(&self) -> bool {
        self.counts(Instant::now()).serving_cap > 0
    }

    /// How many backends serve, how many are drained, and their caps: kept
    /// until a backend's availability changes (or an ejection runs out), so
    /// that a request does not ask every backend of a large pool.
    fn counts(&self, now: Instant) -> Counts {
        let epoch = availability_epoch();
        let mut cached = self.counts.lock();
        if let Some(kept) = *cached {
            if kept.epoch == epoch && now < kept.until {
                return kept.counts;
            }
        }
        let mut counts = Counts::default();
        let mut until = now + COUNTS_MAX_AGE;
        for (backend, cap) in self.backends.iter().zip(&self.caps) {
            let cap = *cap as usize;
            match backend.availability(now, self.health.as_ref()) {
                Availability::Serving(_) => {
                    counts.serving += 1;
                    counts.serving_cap += cap;
                    counts.panic_cap += cap;
                }
                Availability::Drained => counts.drained += 1,
                Availability::Ejected => {
                    counts.panic_cap += cap;
                    if let Some(end) = backend.ejected_until().filter(|end| *end > now) {
                        until = until.min(end);
                    }
                }
                Availability::Unhealthy(_) => counts.panic_cap += cap,
            }
        }
        *cached = Some(KeptCounts {
            counts,
            epoch,
            until,
        });
        counts
    }

    /// Whether so few backends can take traffic that the pool spreads over all.
    /// Drained backends do not count: an operator's drain is no sign that the
    /// health checks are wrong, and must not push traffic onto down backends.
    fn in_panic(&self, counts: &Counts) -> bool {
        let counted = self.backends.len().saturating_sub(counts.drained);
        counts.serving * 100 < usize::from(self.panic_threshold) * counted
    }

    /// How long a backend that comes back ramps up to its full share
    /// (`slow_start`; zero when off).
    pub fn slow_start(&self) -> Duration {
        self.slow_start
    }

    /// The pool's active health checks, if any.
    pub fn health(&self) -> Option<&HealthConfig> {
        self.health.as_ref()
    }

    /// The longest wait for the next bytes of a backend's answer.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The pool's retry budget settings.
    pub fn retry_budget(&self) -> &crate::config::RetryBudgetConfig {
        &self.retry_budget
    }

    /// Takes one retry from the pool's budget; false when it is spent.
    pub fn spend_retry(&self, now: Instant) -> bool {
        self.state.retry_budget.try_retry(now, &self.retry_budget)
    }

    /// The hash of the request's affinity key (header, cookie or client IP), for
    /// consistent-hash pools; `None` for other pools or when the request lacks the key,
    /// which then go to any backend.
    pub fn request_hash(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> Option<u64> {
        match self.hash_key.as_ref()? {
            HashKey::Header(name) => headers.get(name).map(|v| key_hash(v.as_bytes())),
            HashKey::Cookie(name) => crate::forward::cookies(headers, name)
                .next()
                .map(|value| key_hash(value.as_bytes())),
            HashKey::ClientIp => client_ip.map(|ip| key_hash(ip.to_string().as_bytes())),
        }
    }

    /// Picks a backend for one attempt of a request and counts it in flight there.
    ///
    /// Only backends that can take traffic (healthy, not ejected) are candidates,
    /// unless fewer than `panic_threshold` percent can: then all are, so the few
    /// left are not crushed. A backend in slow start is passed over in proportion
    /// to how far its ramp has to go. Backends in `tried` are avoided while
    /// another candidate exists. `timeout` bounds each wait for the answer.
    pub fn pick(
        &self,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
        tried: &[SocketAddr],
        timeout: Duration,
    ) -> Option<Pick> {
        let now = Instant::now();
        let counts = self.counts(now);
        let panic = self.in_panic(&counts);
        self.note_panic(panic, counts.serving);

        // Never a drained backend or one at its in-flight cap, even in panic
        // mode. Each candidate is asked about itself only: a pick costs the
        // same in a pool of 3 and of 2 000.
        let candidate = |i: usize, avoid_tried: bool, ramp: bool| {
            let backend = &self.backends[i];
            if backend.is_drained()
                || backend.in_flight() >= self.caps[i] as usize
                || (avoid_tried && tried.contains(&backend.addr))
            {
                return false;
            }
            match backend.availability(now, self.health.as_ref()) {
                Availability::Serving(since) => !ramp || self.passes_slow_start(since),
                _ => panic,
            }
        };
        let hash = self.request_hash(headers, client_ip);
        let ramp = self.hash_key.is_none() && !self.slow_start.is_zero();
        let pick = |accept: &dyn Fn(usize) -> bool| {
            self.balancer
                .pick(&self.backends, &self.weights, hash, accept)
        };
        let index = pick(&|i| candidate(i, true, ramp))
            .or_else(|| pick(&|i| candidate(i, true, false)))
            .or_else(|| pick(&|i| candidate(i, false, false)))?;
        let backend = &self.backends[index];
        Some(Pick {
            peer: self.peer(index, timeout),
            in_flight: backend.start_request().at_slot(index),
            panic,
        })
    }

    /// Slow start: a backend serving for `since` of the pool's `slow_start` is
    /// picked with that share of probability (at least [`SLOW_START_FLOOR`]).
    fn passes_slow_start(&self, since: Duration) -> bool {
        if since >= self.slow_start {
            return true;
        }
        let share = (since.as_secs_f64() / self.slow_start.as_secs_f64()).max(SLOW_START_FLOOR);
        fastrand::f64() < share
    }

    fn note_panic(&self, panic: bool, up: usize) {
        if self.state.panicking.swap(panic, Ordering::Relaxed) != panic {
            if panic {
                self.panics.inc();
                log::warn!(
                    "pool {}: panic mode, only {up} of {} backends can take traffic; spreading over all",
                    self.name,
                    self.backends.len()
                );
            } else {
                log::info!(
                    "pool {}: panic mode over, {up} of {} backends up",
                    self.name,
                    self.backends.len()
                );
            }
        }
    }

    /// Feeds one attempt's result into metrics, the backend's passive health and
    /// load, and ejects it when it crossed a threshold and the pool may lose it.
    /// The backend's place in the pool comes with an attempt this pool picked,
    /// rather than from a lookup by address (a hash on every answer).
    pub fn record_attempt(
        &self,
        in_flight: &InFlight,
        result: UpstreamResult,
        signal: Signal,
        latency: Duration,
    ) {
        let backend = in_flight.backend();
        let slot = in_flight
            .slot()
            .filter(|&i| {
                self.backends
                    .get(i)
                    .is_some_and(|b| Arc::ptr_eq(b, backend))
            })
            .or_else(|| self.positions.get(&backend.addr).copied());
        self.record_at(slot, backend, result, signal, latency);
    }

    /// [`Pool::record_attempt`] for a backend named by itself (tests).
    #[cfg(test)]
    pub fn record_result(
        &self,
        backend: &Backend,
        result: UpstreamResult,
        signal: Signal,
        latency: Duration,
    ) {
        let slot = self.positions.get(&backend.addr).copied();
        self.record_at(slot, backend, result, signal, latency);
    }

    /// [`Pool::record_attempt`] for the backend at `slot` (its metrics).
    fn record_at(
        &self,
        slot: Option<usize>,
        backend: &Backend,
        result: UpstreamResult,
        signal: Signal,
        latency: Duration,
    ) {
        if let Some(metrics) = slot.and_then(|i| self.metrics.get(i)) {
            metrics.attempt(result);
        }
        backend.observe(latency, signal != Signal::Success);
        if !backend.record_signal(signal, &self.outlier) {
            return;
        }
        let now = Instant::now();
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.availability(now, None) == Availability::Ejected)
            .count();
        let limit = self.backends.len() * usize::from(self.outlier.max_ejected_percent) / 100;
        if ejected < limit {
            let time = backend.eject(&self.outlier);
            log::warn!(
                "pool {}: backend {} ejected for {time:?} ({signal:?})",
                self.name,
                backend.addr
            );
        } else {
            log::warn!(
                "pool {}: backend {} keeps failing but {ejected} of {} are already ejected (max_ejected_percent {})",
                self.name,
                backend.addr,
                self.backends.len(),
                self.outlier.max_ejected_percent
            );
        }
    }

    /// The pingora peer for a backend of this pool, with the pool's TLS and connect timeout;
    /// `timeout` bounds each wait for the backend to send more of its answer.
    fn peer(&self, index: usize, timeout: Duration) -> Box<HttpPeer> {
        let backend = &self.backends[index];
        let mut peer = Box::new(match &self.tls {
            Some(tls) => tls.peer(backend.addr, self.backend_name(index)),
            None => HttpPeer::new(backend.addr, false, String::new()),
        });
        peer.options.connection_timeout = Some(self.connect_timeout.min(timeout));
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn an_attempt_is_counted_for_its_backend_picked_or_not() {
        let text = "[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:9000\" }, { addr = \"127.0.0.1:9001\" }]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
        let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{e:?}"));
        let served = crate::upstream::dns::Resolutions::default().served(&config.pools[0]);
        let metrics = Metrics::new();
        let pool = Pool::new(&config.pools[0], &served, &Registry::default(), &metrics);
        let pick = pool
            .pick(&HeaderMap::new(), None, &[], Duration::from_secs(1))
            .expect("a backend");
        let picked = pick.in_flight.backend().addr;
        let record = |in_flight: &InFlight| {
            pool.record_attempt(
                in_flight,
                UpstreamResult::Success,
                Signal::Success,
                Duration::ZERO,
            )
        };
        record(&pick.in_flight);
        // Not from a pick (no slot): found by its address.
        let other = if picked.port() == 9000 { 1 } else { 0 };
        record(&pool.backends()[other].start_request());
        let attempts = metrics.attempt_totals();
        for backend in pool.backends() {
            let counted = &attempts[&("p".to_string(), backend.addr.to_string())];
            assert_eq!(counted["success"], 1, "{}", backend.addr);
        }
    }

    fn pool(extra: &str, backends: usize) -> Pool {
        let list: Vec<String> = (0..backends)
            .map(|i| format!("{{ addr = \"127.0.0.1:{}\" }}", 9000 + i))
            .collect();
        let text = format!(
            "[[pools]]\nname = \"p\"\nbackends = [{}]\n{extra}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            list.join(", ")
        );
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let served = crate::upstream::dns::Resolutions::default().served(&config.pools[0]);
        Pool::new(
            &config.pools[0],
            &served,
            &Registry::default(),
            &Metrics::new(),
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn pick_port(pool: &Pool, tried: &[SocketAddr]) -> Option<(u16, bool)> {
        pool.pick(&HeaderMap::new(), None, tried, Duration::from_secs(1))
            .map(|p| (p.in_flight.backend().addr.port(), p.panic))
    }

    #[test]
    fn hashes_the_configured_key_only() {
        let by_header = pool(
            "balance = \"consistent_hash\"\nhash_key = \"header:x-cart-id\"",
            1,
        );
        let cart = headers(&[("x-cart-id", "c1")]);
        assert_eq!(by_header.request_hash(&cart, None), Some(key_hash(b"c1")));
        assert_eq!(by_header.request_hash(&HeaderMap::new(), None), None);

        let by_cookie = pool(
            "balance = \"consistent_hash\"\nhash_key = \"cookie:cart\"",
            1,
        );
        let cookies = headers(&[("cookie", "a=1; cart=c9"), ("cookie", "b=2")]);
        assert_eq!(
            by_cookie.request_hash(&cookies, None),
            Some(key_hash(b"c9"))
        );

        let by_ip = pool("balance = \"consistent_hash\"\nhash_key = \"client_ip\"", 1);
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(
            by_ip.request_hash(&HeaderMap::new(), Some(ip)),
            Some(key_hash(b"10.0.0.1"))
        );

        assert_eq!(pool("", 1).request_hash(&cart, Some(ip)), None);
    }

    #[test]
    fn avoids_tried_backends_while_another_exists() {
        let pool = pool("", 2);
        let first = SocketAddr::from(([127, 0, 0, 1], 9000));
        for _ in 0..10 {
            assert_eq!(pick_port(&pool, &[first]), Some((9001, false)));
        }
        let both = [first, SocketAddr::from(([127, 0, 0, 1], 9001))];
        assert!(pick_port(&pool, &both).is_some(), "all tried: any will do");
    }

    #[test]
    fn never_picks_a_drained_backend_or_one_at_its_cap() {
        let pool = pool("max_in_flight = 2\npanic_threshold = 100", 3);
        pool.backends()[0].set_drained(true);
        let _busy: Vec<_> = (0..2).map(|_| pool.backends()[1].start_request()).collect();
        for _ in 0..20 {
            let (port, panic) = pick_port(&pool, &[]).expect("a pick");
            assert_eq!(port, 9002);
            assert!(!panic, "a drained backend is left out of the panic count");
        }
        let _full: Vec<_> = (0..2).map(|_| pool.backends()[2].start_request()).collect();
        assert!(
            pick_port(&pool, &[]).is_none(),
            "every open backend is at its cap"
        );
    }

    #[test]
    fn draining_while_another_is_down_does_not_spread_onto_the_down_one() {
        // 1 down, 1 drained, 1 up: half of the counted backends serve, which
        // is not below the 50% threshold.
        let pool = pool("[pools.outlier]\nconsecutive_gateway_failures = 1", 3);
        pool.record_result(
            &pool.backends()[0],
            UpstreamResult::Reset,
            Signal::GatewayFailure,
            Duration::from_millis(1),
        );
        pool.backends()[1].set_drained(true);
        for _ in 0..20 {
            assert_eq!(pick_port(&pool, &[]), Some((9002, false)));
        }
    }

    #[test]
    fn ejection_respects_max_ejected_percent() {
        let pool = pool(
            "[pools.outlier]\nconsecutive_gateway_failures = 1\nmax_ejected_percent = 50",
            4,
        );
        for backend in pool.backends() {
            pool.record_result(
                backend,
                UpstreamResult::Reset,
                Signal::GatewayFailure,
                Duration::ZERO,
            );
        }
        let now = Instant::now();
        let ejected = pool
            .backends()
            .iter()
            .filter(|b| b.availability(now, None) == Availability::Ejected)
            .count();
        assert_eq!(ejected, 2);
        for _ in 0..20 {
            let (port, panic) = pick_port(&pool, &[]).expect("a pick");
            assert!(port == 9002 || port == 9003, "{port}");
            assert!(
                !panic,
                "half the pool is up: at the threshold, not under it"
            );
        }
    }

    #[test]
    fn panics_and_spreads_over_all_when_too_few_are_healthy() {
        let pool = pool("[pools.health]\nkind = \"tcp\"\n", 4);
        let health = pool.health().cloned().expect("health");
        pool.backends()[0].record_probe(true, &health);
        // 1 of 4 up is under the default 50%: all four take traffic.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let (port, panic) = pick_port(&pool, &[]).expect("a pick");
            assert!(panic);
            seen.insert(port);
        }
        assert_eq!(seen.len(), 4);
        for backend in &pool.backends()[1..3] {
            backend.record_probe(true, &health);
        }
        for _ in 0..50 {
            let (port, panic) = pick_port(&pool, &[]).expect("a pick");
            assert!(!panic);
            assert_ne!(port, 9003, "the unproven backend gets nothing");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_returning_backend_up() {
        let pool = pool(
            "slow_start = \"10s\"\nbalance = \"random\"\n[pools.health]\nkind = \"tcp\"\n",
            2,
        );
        let health = pool.health().cloned().expect("health");
        pool.backends()[0].record_probe(true, &health);
        tokio::time::advance(Duration::from_secs(60)).await;
        pool.backends()[1].record_probe(true, &health);
        let share = |pool: &Pool| {
            let picks = 2000;
            let on_new = (0..picks)
                .filter(|_| pick_port(pool, &[]).map(|p| p.0) == Some(9001))
                .count();
            on_new as f64 / picks as f64
        };
        let at_start = share(&pool);
        assert!(at_start < 0.15, "{at_start}");
        tokio::time::advance(Duration::from_secs(5)).await;
        let halfway = share(&pool);
        assert!((0.25..0.42).contains(&halfway), "{halfway}");
        tokio::time::advance(Duration::from_secs(5)).await;
        let done = share(&pool);
        assert!((0.44..0.56).contains(&done), "{done}");
    }
}
