//! The health checker: a background service that probes every backend of every
//! pool with `[pools.health]` in the current snapshot, each on its own schedule
//! (interval plus jitter), and logs each change of health once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use crate::state::State;

/// How often the checker looks for probes that are due.
const TICK: Duration = Duration::from_millis(20);

/// Probes backends of the current snapshot.
#[derive(Debug)]
pub struct HealthChecker {
    state: Arc<State>,
}

impl HealthChecker {
    /// A checker of the pools of `state`'s current snapshot.
    pub fn new(state: Arc<State>) -> HealthChecker {
        HealthChecker { state }
    }

    /// Starts the probes that are due; each runs as its own task.
    fn start_due_probes(&self) {
        let snapshot = self.state.snapshot();
        let now = Instant::now();
        for pool in &snapshot.pools {
            let Some(config) = pool.health() else {
                continue;
            };
            for backend in pool.backends() {
                if !backend.probe_due(now, config) {
                    continue;
                }
                let backend = Arc::clone(backend);
                let config = config.clone();
                tokio::spawn(async move {
                    let result = super::health::probe(backend.addr, &config).await;
                    if let Some(health) = backend.record_probe(result.is_ok(), &config) {
                        match result {
                            Ok(()) => log::info!(
                                "pool {}: backend {} is {}",
                                backend.pool,
                                backend.addr,
                                health.as_str()
                            ),
                            Err(why) => log::warn!(
                                "pool {}: backend {} is {}: {why}",
                                backend.pool,
                                backend.addr,
                                health.as_str()
                            ),
                        }
                    }
                });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.start_due_probes(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
