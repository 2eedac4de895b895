//! The served state: an immutable [`Snapshot`] of the compiled config, swapped whole
//! through an `ArcSwap`, beside the live backend [`Registry`] that outlives snapshots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::route::RouteTable;
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
}

/// The current snapshot and the live state it is built from.
#[derive(Debug)]
pub struct State {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    generation: AtomicU64,
}

impl State {
    /// Builds the first snapshot from a validated config.
    pub fn new(config: &Config) -> State {
        let registry = Registry::default();
        let snapshot = Snapshot::build(config, &registry, 1);
        State {
            current: ArcSwap::from_pointee(snapshot),
            registry,
            generation: AtomicU64::new(1),
        }
    }

    /// The snapshot a new request should hold for its whole life.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot of a new config and makes it current. Live state of
    /// backends named by both configs carries over; requests in flight keep the
    /// snapshot they started with.
    pub fn apply(&self, config: &Config) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = Snapshot::build(config, &self.registry, generation);
        self.current.store(Arc::new(snapshot));
        generation
    }
}

impl Snapshot {
    fn build(config: &Config, registry: &Registry, generation: u64) -> Snapshot {
        Snapshot {
            generation,
            routes: RouteTable::new(&config.routes),
            pools: config
                .pools
                .iter()
                .map(|pool| Pool::new(pool, registry))
                .collect(),
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
        let state = State::new(&config);
        let old = state.snapshot();
        let _in_flight = old.pools[0].backends()[0].start_request();

        let mut smaller = config.clone();
        smaller.pools[0].backends.pop();
        assert_eq!(state.apply(&smaller), 2);

        let new = state.snapshot();
        assert_eq!(new.generation, 2);
        assert_eq!(new.pools[0].backends().len(), 1);
        assert_eq!(new.pools[0].backends()[0].in_flight(), 1);
        assert_eq!(old.pools[0].backends().len(), 2);
    }
}
