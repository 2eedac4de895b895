//! The served state: an immutable [`Snapshot`] of the compiled config, swapped whole
//! through an `ArcSwap`, beside the live state that outlives snapshots (the
//! backend [`Registry`], the routes' [`LiveState`], metrics, reload status).
//!
//! Reload: read → validate → build a snapshot → swap. An invalid config never
//! replaces a good one; what cannot change live (listeners, threads) is reported.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use strum::IntoEnumIterator;

use crate::config::{Config, Pages, ProxyProtocol};
use crate::live::LiveState;
use crate::outcome::PAGE_KINDS;
use crate::retry::{Failure, Stop};
use crate::route::RouteTable;
use crate::sni::{CertResolver, ListenerStatus};
use crate::telemetry::Metrics;
use crate::upstream::dns::{DnsHost, Resolutions};
use crate::upstream::{Backend, Pool, Registry};

/// Marks a route whose counters exist at zero ([`Metrics::prime_route`]).
#[derive(Clone)]
struct RoutePrimed;

/// Everything a request needs from the config, compiled for serving.
#[derive(Debug)]
pub struct Snapshot {
    /// Counts up by one with every config applied; 1 is the config at start.
    pub generation: u64,
    /// Routes, most specific first.
    pub routes: RouteTable,
    /// Pools, indexed by `Route::pool`.
    pub pools: Vec<Pool>,
    /// The server's degradation pages.
    pub pages: Pages,
    /// Limits on what a shopper's connection may send and how long it may idle.
    pub limits: crate::connection::Limits,
    /// Waiting rooms, and which covers each route; their lines are live
    /// state in `LiveState` and outlive snapshots.
    pub rooms: crate::room::Rooms,
    /// `[maintenance]`: a configured window for every route.
    pub maintenance: Option<crate::config::MaintenanceConfig>,
    /// Whose word is taken for the client's address (`client`).
    pub trust: crate::config::TrustConfig,
    /// The port HTTPS redirects name (`rewrite`).
    pub https_port: u16,
    /// `Strict-Transport-Security` on answers over HTTPS (`rewrite`).
    pub hsts: Option<http::HeaderValue>,
    /// `[tracing]`: which requests are kept by chance; `None`: tracing off.
    pub tracing: Option<crate::trace::Sampler>,
}

/// The result of the last reload attempt, for the admin status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Generation being served.
    pub generation: u64,
    /// Where the config comes from.
    pub source: String,
    /// RFC 3339 time of the last reload attempt.
    pub last_attempt: Option<String>,
    /// What triggered it (`sighup`, `file_change`, `admin`, ...).
    pub last_trigger: Option<String>,
    /// Whether it succeeded.
    pub last_ok: Option<bool>,
    /// Its errors (with key paths), when it failed.
    pub last_errors: Vec<String>,
    /// Changes it could not apply live, and how to apply them; also what it
    /// applied that an operator may not expect (a renewed certificate, a weight
    /// override that still wins over the file).
    pub last_notes: Vec<String>,
    /// Changes made through the admin API (weight overrides) since the start;
    /// they rebuild the snapshot but are not config generations.
    pub admin_changes: u64,
    /// Answers that changed the addresses of a backend name since the start;
    /// they rebuild the snapshot too, and are not config generations either.
    pub dns_changes: u64,
}

/// The current snapshot and the live state it is built from.
#[derive(Debug)]
pub struct State {
    current: ArcSwap<Snapshot>,
    config: ArcSwap<Config>,
    started_with: Config,
    registry: Registry,
    /// The answers of backend names (outlive snapshots, as the registry does).
    resolutions: Resolutions,
    /// Records that outlive requests and snapshots (idempotency).
    live: LiveState,
    generation: AtomicU64,
    source: Option<PathBuf>,
    reload_status: Mutex<ReloadStatus>,
    /// Serialises reloads so two triggers cannot interleave.
    reload_lock: Mutex<()>,
    shutting_down: AtomicBool,
    /// Whether every listener was seen accepting connections.
    listeners_ready: AtomicBool,
    /// Snapshots replaced by newer ones, while requests still hold them.
    retired: Mutex<Vec<Weak<Snapshot>>>,
    admin_changes: AtomicU64,
    /// The certificate resolver of each TLS listener, by listen address.
    tls: Vec<(SocketAddr, Arc<CertResolver>)>,
    /// Every metric.
    pub metrics: Metrics,
    /// Maintenance windows opened from the admin API (outlive reloads).
    pub maintenance: crate::maintenance::LiveWindows,
    /// Spans waiting for export, and where they go (follows reloads).
    pub tracer: Arc<crate::trace::Exporter>,
    /// The last requests that ended in an error, for `/status`.
    pub error_samples: crate::telemetry::ErrorSamples,
}

impl State {
    /// Builds the first snapshot from a validated config read from `source`.
    pub fn new(config: Config, source: Option<PathBuf>) -> State {
        let registry = Registry::default();
        let resolutions = Resolutions::default();
        let live = LiveState::default();
        let metrics = Metrics::new();
        let snapshot = Snapshot::build(&config, &registry, &resolutions, &live, &metrics, 1);
        metrics.config_generation.set(1);
        metrics.config_last_reload_success.set(1);
        let status = ReloadStatus {
            generation: 1,
            source: source
                .as_ref()
                .map_or_else(|| "built-in".to_string(), |p| p.display().to_string()),
            ..ReloadStatus::default()
        };
        let tls = config
            .server
            .tls
            .iter()
            .map(|t| (t.listen, Arc::new(CertResolver::new(t))))
            .collect();
        let tracer = Arc::new(crate::trace::Exporter::new(
            config.tracing.clone(),
            metrics.registered(crate::telemetry::TracingMetrics::new),
        ));
        State {
            current: ArcSwap::from_pointee(snapshot),
            config: ArcSwap::from_pointee(config.clone()),
            started_with: config,
            registry,
            resolutions,
            live,
            generation: AtomicU64::new(1),
            source,
            reload_status: Mutex::new(status),
            reload_lock: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            listeners_ready: AtomicBool::new(false),
            retired: Mutex::new(Vec::new()),
            admin_changes: AtomicU64::new(0),
            tls,
            metrics,
            maintenance: crate::maintenance::LiveWindows::default(),
            tracer,
            error_samples: crate::telemetry::ErrorSamples::default(),
        }
    }

    /// The certificate resolver serving the TLS listener on `addr`.
    pub fn cert_resolver(&self, addr: SocketAddr) -> Option<Arc<CertResolver>> {
        self.tls
            .iter()
            .find(|(listen, _)| *listen == addr)
            .map(|(_, resolver)| Arc::clone(resolver))
    }

    /// Every address shoppers connect to (plain and TLS), as started.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let server = &self.started_with.server;
        server
            .listen
            .iter()
            .copied()
            .chain(server.tls.iter().map(|t| t.listen))
            .collect()
    }

    /// Marks every listener as seen accepting connections (readiness).
    pub fn set_listeners_ready(&self) {
        self.listeners_ready.store(true, Ordering::Relaxed);
    }

    /// Whether every listener was seen accepting connections.
    pub fn listeners_ready(&self) -> bool {
        self.listeners_ready.load(Ordering::Relaxed)
    }

    /// Requests being served now: each holds a snapshot from its start to its
    /// end, so this counts the holders of the current snapshot and of the
    /// replaced ones still alive.
    pub fn requests_in_flight(&self) -> usize {
        let current = self.current.load_full();
        // One count is the ArcSwap's, one is `current`'s.
        let mut holders = Arc::strong_count(&current).saturating_sub(2);
        {
            let mut retired = self.retired.lock();
            retired.retain(|old| old.strong_count() > 0);
            holders += retired.iter().map(Weak::strong_count).sum::<usize>();
        }
        holders
    }

    /// The snapshot a new request should hold for its whole life.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The connection limits of the current snapshot.
    pub fn connection_limits(&self) -> crate::connection::Limits {
        self.current.load().limits
    }

    /// The config the current snapshot was built from.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The config file, when there is one.
    pub fn source(&self) -> Option<&PathBuf> {
        self.source.as_ref()
    }

    /// Where shared records live and whether it answers (for `/status`).
    pub fn store_status(&self) -> crate::store::redis::StoreStatus {
        self.live.status()
    }

    /// The live registry (for the admin API).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Builds a snapshot of a new config and makes it current. Live state of
    /// backends named by both configs carries over; requests in flight keep the
    /// snapshot they started with. Returns the new generation.
    pub fn apply(&self, config: Config) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.swap(config, generation);
        generation
    }

    fn swap(&self, config: Config, generation: u64) {
        let snapshot = Snapshot::build(
            &config,
            &self.registry,
            &self.resolutions,
            &self.live,
            &self.metrics,
            generation,
        );
        let old = self.current.swap(Arc::new(snapshot));
        {
            let mut retired = self.retired.lock();
            retired.retain(|old| old.strong_count() > 0);
            retired.push(Arc::downgrade(&old));
        }
        self.tracer.configure(config.tracing.clone());
        self.config.store(Arc::new(config));
    }

    /// Serves a backend with a weight set through the admin API (0: the
    /// config's again). The override outlives reloads; the serving pool takes
    /// it at once, without a new snapshot (the config generation stays: the
    /// file did not change). Returns the number of admin changes so far.
    pub fn set_weight(&self, backend: &Backend, weight: u32) -> u64 {
        // After a reload in progress, which reads overrides as it builds.
        let _serial = self.reload_lock.lock();
        backend.set_weight_override(weight);
        let snapshot = self.snapshot();
        if let Some(pool) = snapshot.pools.iter().find(|p| p.name == backend.pool) {
            pool.set_weight(backend.addr, weight);
        }
        let changes = self.admin_changes.fetch_add(1, Ordering::Relaxed) + 1;
        self.reload_status.lock().admin_changes = changes;
        changes
    }

    /// Rebuilds the snapshot from the current config after an answer changed
    /// the addresses of a backend name. Not a config generation.
    pub fn rebuild_for_dns(&self) {
        let _serial = self.reload_lock.lock();
        let config = Config::clone(&self.config());
        self.swap(config, self.generation.load(Ordering::Relaxed));
        self.reload_status.lock().dns_changes += 1;
    }

    /// The answers of backend names (for `/status`).
    pub fn resolutions(&self) -> &Resolutions {
        &self.resolutions
    }

    /// Re-reads the config file and applies it if valid. Returns the new
    /// generation, or every problem found (the old config keeps serving).
    pub fn reload(&self, trigger: &str) -> Result<u64, Vec<String>> {
        let _serial = self.reload_lock.lock();
        let result = match &self.source {
            None => Err(vec![
                "this config is built in; there is no file to reload".to_string()
            ]),
            Some(path) => Config::load(path)
                .map_err(|errors| errors.iter().map(ToString::to_string).collect()),
        };
        // Notes: what could not be applied live or hides the file's value
        // (warnings), then what was applied that the file did not show
        // (renewed certificates).
        let (outcome, warnings, applied) = match result {
            Ok(config) => {
                let mut warnings = fixed_changes(&self.started_with, &config);
                warnings.extend(self.overrides_kept(&config));
                let mut applied = self.renew_certificates(&config);
                let (unchecked, changed) = upstream_tls_changes(&self.config(), &config);
                warnings.extend(unchecked);
                applied.extend(changed);
                (Ok(self.apply(config)), warnings, applied)
            }
            Err(errors) => (Err(errors), Vec::new(), Vec::new()),
        };
        let generation = self.generation.load(Ordering::Relaxed);
        self.metrics.reload(outcome.is_ok(), generation);
        match &outcome {
            Ok(g) => log::info!("config reloaded ({trigger}): generation {g}"),
            Err(errors) => log::error!(
                "config reload ({trigger}) failed; still serving generation {generation}:\n  {}",
                errors.join("\n  ")
            ),
        }
        for note in &warnings {
            log::warn!("config reload ({trigger}): {note}");
        }
        for note in &applied {
            log::info!("config reload ({trigger}): {note}");
        }
        let mut notes = warnings;
        notes.extend(applied);
        {
            let mut status = self.reload_status.lock();
            status.generation = generation;
            status.last_attempt = Some(crate::telemetry::now_rfc3339());
            status.last_trigger = Some(trigger.to_string());
            status.last_ok = Some(outcome.is_ok());
            status.last_errors = outcome.as_ref().err().cloned().unwrap_or_default();
            status.last_notes = notes;
        }
        outcome
    }

    /// Serves the certificates of a new config on the TLS listeners that stay,
    /// each listener's whole set at once; says what changed.
    fn renew_certificates(&self, config: &Config) -> Vec<String> {
        let mut notes = Vec::new();
        for listener in &config.server.tls {
            if let Some(resolver) = self.cert_resolver(listener.listen) {
                notes.extend(resolver.replace(listener));
            }
        }
        notes
    }

    /// The certificates each TLS listener serves now.
    pub fn tls_status(&self) -> Vec<ListenerStatus> {
        self.tls
            .iter()
            .map(|(_, resolver)| resolver.status())
            .collect()
    }

    /// Admin weight overrides outlive reloads: say where one hides the file's weight.
    fn overrides_kept(&self, config: &Config) -> Vec<String> {
        let mut notes = Vec::new();
        for pool in &config.pools {
            for backend in &pool.backends {
                let Some(live) = self.registry.find_backend(&pool.name, backend.addr) else {
                    continue;
                };
                if let Some(weight) = live.weight_override() {
                    if weight != backend.weight {
                        notes.push(format!(
                            "pool {}: backend {} keeps the weight {weight} set through the admin API (the file says {}); POST /backends/{}/{}/weight?value=0 returns to the file's weight",
                            pool.name, backend.addr, backend.weight, pool.name, backend.addr
                        ));
                    }
                }
            }
        }
        notes
    }

    /// The result of the last reload.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload_status.lock().clone()
    }

    /// Marks the process as shutting down: readiness turns false.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Whether the process is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Pools whose TLS to backends a reload changes (all of it applies live: pingora
/// takes it per connection): warnings for those that stop checking
/// certificates, and notes for every change.
fn upstream_tls_changes(running: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    let (mut warnings, mut notes) = (Vec::new(), Vec::new());
    for pool in &new.pools {
        let old = running
            .pools
            .iter()
            .find(|p| p.name == pool.name)
            .and_then(|p| p.tls.as_ref());
        if old == pool.tls.as_ref() {
            continue;
        }
        let now = pool
            .tls
            .as_ref()
            .map_or("plain HTTP".to_string(), |tls| tls.describe());
        notes.push(format!(
            "pool {}: backends are now reached with {now}; new connections use it, and idle connections made before are not reused",
            pool.name
        ));
        if pool.tls.as_ref().is_some_and(|tls| !tls.verify) {
            warnings.push(format!(
                "pool {}: tls.verify = false: the backends' certificates are NOT checked",
                pool.name
            ));
        }
    }
    (warnings, notes)
}

/// Settings that need a restart or graceful upgrade to change, described for the
/// operator.
fn fixed_changes(running: &Config, new: &Config) -> Vec<String> {
    let upgrade = "apply it with a graceful upgrade: start the new ordergate with `run --upgrade`, then send SIGQUIT to this process";
    let mut notes = Vec::new();
    if running.server.listen != new.server.listen {
        notes.push(format!(
            "server.listen changed but listeners cannot change live; {upgrade}"
        ));
    }
    if running.server.threads != new.server.threads {
        notes.push(format!(
            "server.threads changed ({} -> {}) but cannot change live; {upgrade}",
            running.server.threads, new.server.threads
        ));
    }
    let tls_listeners = |config: &Config| -> Vec<(SocketAddr, bool, ProxyProtocol)> {
        config
            .server
            .tls
            .iter()
            .map(|t| (t.listen, t.http2, t.proxy_protocol))
            .collect()
    };
    if tls_listeners(running) != tls_listeners(new) {
        notes.push(format!(
            "server.tls listeners changed (addresses, http2 or proxy_protocol) but listeners cannot change live; certificates can, and were; {upgrade}"
        ));
    }
    if running.server.proxy_protocol != new.server.proxy_protocol {
        notes.push(format!(
            "server.proxy_protocol changed but listeners are set up at start; trusted_proxies did change live; {upgrade}"
        ));
    }
    if running.server.upstream_keepalive != new.server.upstream_keepalive {
        notes.push(format!(
            "server.upstream_keepalive changed ({} -> {}) but the connection pool is sized at start; {upgrade}",
            running.server.upstream_keepalive, new.server.upstream_keepalive
        ));
    }
    if running.server.read_buffer != new.server.read_buffer {
        notes.push(format!(
            "server.read_buffer changed ({} -> {}) but listeners size it at start; {upgrade}",
            running.server.read_buffer, new.server.read_buffer
        ));
    }
    if running.server.shutdown_delay != new.server.shutdown_delay {
        notes.push(format!(
            "server.shutdown_delay changed but is read at start; {upgrade}"
        ));
    }
    if running.server.grace_period != new.server.grace_period {
        notes.push(format!(
            "server.grace_period changed but is read at start; {upgrade}"
        ));
    }
    if running.admin != new.admin {
        notes.push(format!(
            "[admin] changed but the admin listener cannot change live; {upgrade}"
        ));
    }
    if running.access_log != new.access_log {
        notes.push(format!(
            "log.access changed but the access log is opened at start; {upgrade}"
        ));
    }
    notes
}

impl Snapshot {
    fn build(
        config: &Config,
        registry: &Registry,
        resolutions: &Resolutions,
        live: &LiveState,
        metrics: &Metrics,
        generation: u64,
    ) -> Snapshot {
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .map(|pool| Pool::new(pool, &resolutions.served(pool), registry, metrics))
            .collect();
        for pool in &pools {
            // The real limit from the start, not "unbounded until the first request".
            pool.state.admission.set_capacity(pool.capacity());
            metrics.prime_pool(&pool.name);
        }
        let retried: Vec<&str> = Failure::iter().map(Failure::as_str).collect();
        let denied: Vec<&str> = Stop::iter().map(Stop::as_str).collect();
        for route in &config.routes {
            // Once per route name, not on every reload.
            metrics.handles(&route.name, || {
                metrics.prime_route(&route.name, &retried, &denied, &PAGE_KINDS);
                RoutePrimed
            });
        }
        metrics.prime_route(Metrics::UNROUTED, &[], &[], &PAGE_KINDS);
        // Before the routes: they take their records' store from it.
        live.configure(&config.store, metrics);
        Snapshot {
            generation,
            routes: RouteTable::new(&config.routes, metrics, live),
            pools,
            pages: config.server.pages.clone(),
            limits: crate::connection::Limits::from(&config.server),
            rooms: crate::room::Rooms::new(&config.rooms, live, metrics),
            maintenance: config.maintenance.clone(),
            trust: config.server.trust.clone(),
            https_port: config.server.https_port,
            hsts: config.server.hsts.clone(),
            tracing: config
                .tracing
                .as_ref()
                .map(|t| crate::trace::Sampler::new(t.ratio, t.client_sampled)),
        }
    }
}

impl DnsHost for State {
    fn dns_config(&self) -> Arc<Config> {
        self.config()
    }

    fn resolutions(&self) -> &Resolutions {
        &self.resolutions
    }

    fn dns_metrics(&self) -> Arc<crate::telemetry::DnsMetrics> {
        self.metrics.registered(crate::telemetry::DnsMetrics::new)
    }

    fn addresses_changed(&self) {
        self.rebuild_for_dns();
    }
}

impl crate::upstream::checker::PoolSource for State {
    fn with_pools(&self, visit: &mut dyn FnMut(&[Pool])) {
        visit(&self.snapshot().pools);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [[pools]]
        name = "orders"
        backends = [ { addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002" } ]
        [[routes]]
        name = "all"
        pool = "orders"
    "#;

    #[test]
    fn a_new_config_keeps_live_state_and_old_snapshots_stay_whole() {
        let config = Config::from_toml(CONFIG).expect("valid");
        let state = State::new(config.clone(), None);
        let old = state.snapshot();
        let _in_flight = old.pools[0].backends()[0].start_request();

        let mut smaller = config.clone();
        smaller.pools[0].backends.pop();
        assert_eq!(state.apply(smaller), 2);

        let new = state.snapshot();
        assert_eq!(new.generation, 2);
        assert_eq!(new.pools[0].backends().len(), 1);
        assert_eq!(new.pools[0].backends()[0].in_flight(), 1);
        assert_eq!(old.pools[0].backends().len(), 2);
    }

    #[test]
    fn requests_in_flight_are_the_holders_of_current_and_replaced_snapshots() {
        let config = Config::from_toml(CONFIG).expect("valid");
        let state = State::new(config.clone(), None);
        assert_eq!(state.requests_in_flight(), 0);
        let first = state.snapshot();
        assert_eq!(state.requests_in_flight(), 1);
        state.apply(config.clone());
        let second = state.snapshot();
        assert_eq!(
            state.requests_in_flight(),
            2,
            "one on the old snapshot, one on the new"
        );
        drop(first);
        assert_eq!(state.requests_in_flight(), 1);
        // An admin weight keeps the snapshot and its generation.
        let backend = Arc::clone(&state.snapshot().pools[0].backends()[0]);
        assert_eq!(state.set_weight(&backend, 7), 1);
        assert_eq!(state.snapshot().generation, 2);
        assert_eq!(
            state.snapshot().pools[0].weight_and_cap(0).map(|w| w.0),
            Some(7)
        );
        assert_eq!(state.requests_in_flight(), 1);
        assert_eq!(state.set_weight(&backend, 0), 2);
        assert_eq!(
            state.snapshot().pools[0].weight_and_cap(0).map(|w| w.0),
            state.snapshot().pools[0].config_weight(0)
        );
        drop(second);
        assert_eq!(state.requests_in_flight(), 0);
    }

    #[test]
    fn a_bad_reload_keeps_the_old_config_and_reports_why() {
        let dir = std::env::temp_dir().join(format!("ordergate-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.toml");
        std::fs::write(&path, CONFIG).expect("write");
        let config = Config::load(&path).expect("valid");
        let state = State::new(config, Some(path.clone()));

        std::fs::write(
            &path,
            CONFIG.replace("pool = \"orders\"", "pool = \"nope\""),
        )
        .expect("write");
        let errors = state.reload("test").expect_err("invalid");
        assert!(
            errors[0].contains("pool \"nope\" is not defined"),
            "{errors:?}"
        );
        assert_eq!(state.snapshot().generation, 1);
        assert_eq!(state.reload_status().last_ok, Some(false));

        std::fs::write(
            &path,
            CONFIG.replace("[[pools]]", "[server]\nthreads = 4\n[[pools]]"),
        )
        .expect("write");
        assert_eq!(state.reload("test"), Ok(2));
        let status = state.reload_status();
        assert_eq!(status.generation, 2);
        assert!(
            status.last_notes[0].contains("server.threads changed"),
            "{status:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
