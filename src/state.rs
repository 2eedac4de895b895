//! The served state: an immutable [`Snapshot`] of the compiled config, swapped whole
//! through an `ArcSwap`, beside the live state that outlives snapshots (the
//! backend [`Registry`], metrics, reload status).
//!
//! Reload: read → validate → build a snapshot → swap. An invalid config never
//! replaces a good one; what cannot change live (listeners, threads) is reported.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::{Config, Pages};
use crate::route::RouteTable;
use crate::telemetry::Metrics;
use crate::upstream::{Pool, Registry};

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
    /// Changes it could not apply live, and how to apply them.
    pub last_notes: Vec<String>,
}

/// The current snapshot and the live state it is built from.
#[derive(Debug)]
pub struct State {
    current: ArcSwap<Snapshot>,
    config: ArcSwap<Config>,
    started_with: Config,
    registry: Registry,
    generation: AtomicU64,
    source: Option<PathBuf>,
    reload_status: Mutex<ReloadStatus>,
    /// Serialises reloads so two triggers cannot interleave.
    reload_lock: Mutex<()>,
    shutting_down: AtomicBool,
    /// Every metric.
    pub metrics: Metrics,
}

impl State {
    /// Builds the first snapshot from a validated config read from `source`.
    pub fn new(config: Config, source: Option<PathBuf>) -> State {
        let registry = Registry::default();
        let metrics = Metrics::new();
        let snapshot = Snapshot::build(&config, &registry, &metrics, 1);
        metrics.config_generation.set(1);
        metrics.config_last_reload_success.set(1);
        let status = ReloadStatus {
            generation: 1,
            source: source
                .as_ref()
                .map_or_else(|| "built-in".to_string(), |p| p.display().to_string()),
            ..ReloadStatus::default()
        };
        State {
            current: ArcSwap::from_pointee(snapshot),
            config: ArcSwap::from_pointee(config.clone()),
            started_with: config,
            registry,
            generation: AtomicU64::new(1),
            source,
            reload_status: Mutex::new(status),
            reload_lock: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            metrics,
        }
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

    /// The live registry (for the admin API).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Builds a snapshot of a new config and makes it current. Live state of
    /// backends named by both configs carries over; requests in flight keep the
    /// snapshot they started with. Returns the new generation.
    pub fn apply(&self, config: Config) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = Snapshot::build(&config, &self.registry, &self.metrics, generation);
        self.current.store(Arc::new(snapshot));
        self.config.store(Arc::new(config));
        generation
    }

    /// Rebuilds the snapshot from the current config, e.g. after a weight change
    /// through the admin API.
    pub fn rebuild(&self) -> u64 {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let config = Config::clone(&self.config());
        let generation = self.apply(config);
        self.metrics.config_generation.set(generation as i64);
        if let Ok(mut status) = self.reload_status.lock() {
            status.generation = generation;
        }
        generation
    }

    /// Re-reads the config file and applies it if valid. Returns the new
    /// generation, or every problem found (the old config keeps serving).
    pub fn reload(&self, trigger: &str) -> Result<u64, Vec<String>> {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let result = match &self.source {
            None => Err(vec![
                "this config is built in; there is no file to reload".to_string()
            ]),
            Some(path) => Config::load(path)
                .map_err(|errors| errors.iter().map(ToString::to_string).collect()),
        };
        let (outcome, notes) = match result {
            Ok(config) => {
                let notes = fixed_changes(&self.started_with, &config);
                (Ok(self.apply(config)), notes)
            }
            Err(errors) => (Err(errors), Vec::new()),
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
        for note in &notes {
            log::warn!("config reload ({trigger}): {note}");
        }
        if let Ok(mut status) = self.reload_status.lock() {
            status.generation = generation;
            status.last_attempt = Some(crate::telemetry::now_rfc3339());
            status.last_trigger = Some(trigger.to_string());
            status.last_ok = Some(outcome.is_ok());
            status.last_errors = outcome.as_ref().err().cloned().unwrap_or_default();
            status.last_notes = notes;
        }
        outcome
    }

    /// The result of the last reload.
    pub fn reload_status(&self) -> ReloadStatus {
        self.reload_status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
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
    if running.server.tls != new.server.tls {
        notes.push(format!(
            "server.tls changed but TLS listeners and certificates cannot change live; {upgrade}"
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
    fn build(config: &Config, registry: &Registry, metrics: &Metrics, generation: u64) -> Snapshot {
        Snapshot {
            generation,
            routes: RouteTable::new(&config.routes, metrics, registry),
            pools: config
                .pools
                .iter()
                .map(|pool| Pool::new(pool, registry, metrics))
                .collect(),
            pages: config.server.pages.clone(),
            limits: crate::connection::Limits::from(&config.server),
        }
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
