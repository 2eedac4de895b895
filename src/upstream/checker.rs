//! The health checker: a background service that probes every backend of every
//! pool with `[pools.health]` in the current snapshot, each on its own schedule
//! (interval plus jitter), and logs each change of health once.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::TransportConnector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use super::health::Target;
use super::Pool;

/// How often the checker looks for probes that are due while some pool has
/// probes. Probes start at most this late.
const TICK: Duration = Duration::from_millis(20);
/// How often it looks while no pool has probes (a reload may add some).
const IDLE_TICK: Duration = Duration::from_millis(500);

/// Where the checker finds the pools to probe: the caller's (the served
/// snapshot's), so that the checker needs nothing above `upstream`.
pub trait PoolSource: Send + Sync {
    /// Calls `visit` with the pools as they are now.
    fn with_pools(&self, visit: &mut dyn FnMut(&[Pool]));
}

/// Probes backends of the pools its source gives.
pub struct HealthChecker {
    pools: Arc<dyn PoolSource>,
    /// pingora's connector for probes of TLS pools, made at the first one: it
    /// loads the system's CA certificates, as the proxy's own connector does.
    tls: OnceLock<Arc<TransportConnector>>,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker").finish_non_exhaustive()
    }
}

impl HealthChecker {
    /// A checker of the pools `pools` gives at each look.
    pub fn new(pools: Arc<dyn PoolSource>) -> HealthChecker {
        HealthChecker {
            pools,
            tls: OnceLock::new(),
        }
    }

    /// Starts the probes that are due, each as its own task; returns whether any
    /// pool has probes.
    fn start_due_probes(&self) -> bool {
        let mut probing = false;
        self.pools
            .with_pools(&mut |pools| probing = start_due_probes(pools, &self.tls));
        probing
    }
}

/// Starts the due probes of `pools`; returns whether any pool has probes.
/// Probes of a TLS pool connect through `tls` (made when first needed).
fn start_due_probes(pools: &[Pool], tls: &OnceLock<Arc<TransportConnector>>) -> bool {
    let mut probing = false;
    let now = Instant::now();
    for pool in pools {
        let Some(config) = pool.health() else {
            continue;
        };
        probing = true;
        for (index, backend) in pool.backends().iter().enumerate() {
            if !backend.probe_due(now, config) {
                continue;
            }
            let backend = Arc::clone(backend);
            let config = config.clone();
            let target = match pool.tls() {
                None => Target::Tcp(backend.addr),
                Some(settings) => {
                    let name = pool.backend_name(index);
                    let mut peer = settings.peer(backend.addr, name);
                    peer.options.connection_timeout = Some(config.timeout);
                    Target::Tls {
                        peer: Box::new(peer),
                        connector: Arc::clone(
                            tls.get_or_init(|| Arc::new(TransportConnector::new(None))),
                        ),
                        // The name the backends serve, as a request's Host would be.
                        host: settings
                            .config()
                            .sni
                            .clone()
                            .or_else(|| name.map(str::to_string))
                            .unwrap_or_else(|| backend.addr.to_string()),
                    }
                }
            };
            tokio::spawn(async move {
                let result = super::health::probe(&target, &config).await;
                if let Some(health) = backend.record_probe_result(&result, &config) {
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
    probing
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let pause = if self.start_due_probes() {
                TICK
            } else {
                IDLE_TICK
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
