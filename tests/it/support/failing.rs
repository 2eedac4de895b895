//! Backends that fail each in its own way, for the tests of the pages a
//! shopper meets: a `Fleet` whose first four backends are healthy, broken
//! (500), slow (3 s) and resetting, plus a dead address nobody listens on.

use std::net::SocketAddr;

use super::{free_port, Fleet};

/// A pool's `backends` with the one backend `addr`.
pub fn one_backend(addr: SocketAddr) -> String {
    format!("[ {{ addr = \"{addr}\" }} ]")
}

pub struct Failing {
    /// All the backends; those after the first four are the caller's.
    pub fleet: Fleet,
    pub healthy: SocketAddr,
    pub broken: SocketAddr,
    pub slow: SocketAddr,
    pub resetting: SocketAddr,
    /// A closed port.
    pub dead: SocketAddr,
}

impl Failing {
    /// `n` backends (four or more), the first four set failing.
    pub fn start(n: usize) -> Failing {
        assert!(n >= 4, "four backends fail, {n} asked for");
        let fleet = Fleet::start(n);
        let [healthy, broken, slow, resetting] = [
            fleet.addrs[0],
            fleet.addrs[1],
            fleet.addrs[2],
            fleet.addrs[3],
        ];
        fleet.set_mode(broken, r#"{"status": 500}"#);
        fleet.set_mode(slow, r#"{"latency_ms": 3000}"#);
        fleet.set_mode(resetting, r#"{"fault": "reset"}"#);
        let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Failing {
            fleet,
            healthy,
            broken,
            slow,
            resetting,
            dead,
        }
    }

    /// In this order (`/status` lists pools so), a pool of one backend and a
    /// route under `/NAME` for each of `dead` (probed every 100 ms, no panic
    /// mode), `broken`, `slow` (one request at a time, one more queued for
    /// 300 ms, a 1 s route timeout) and `resetting`; the pool `healthy`, and
    /// the route `/limited` to it at one request a second.
    pub fn config(&self) -> String {
        format!(
            r#"
[[pools]]
name = "dead"
panic_threshold = 0
backends = {dead_pool}
[pools.health]
kind = "tcp"
interval = "100ms"
timeout = "50ms"

[[pools]]
name = "broken"
backends = {broken_pool}

[[pools]]
name = "slow"
max_in_flight = 1
backends = {slow_pool}
[pools.queue]
max_waiting = 1
timeout = "300ms"

[[pools]]
name = "resetting"
backends = {resetting_pool}

[[pools]]
name = "healthy"
backends = {healthy_pool}

[[routes]]
name = "dead"
path_prefix = "/dead"
pool = "dead"

[[routes]]
name = "broken"
path_prefix = "/broken"
pool = "broken"

[[routes]]
name = "slow"
path_prefix = "/slow"
timeout = "1s"
pool = "slow"

[[routes]]
name = "resetting"
path_prefix = "/resetting"
pool = "resetting"

[[routes]]
name = "limited"
path_prefix = "/limited"
pool = "healthy"
[routes.rate_limit]
requests_per_second = 1
"#,
            healthy_pool = one_backend(self.healthy),
            dead_pool = one_backend(self.dead),
            broken_pool = one_backend(self.broken),
            slow_pool = one_backend(self.slow),
            resetting_pool = one_backend(self.resetting),
        )
    }
}
