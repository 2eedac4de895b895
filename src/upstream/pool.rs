//! A Pool as served: its backends (live entries from the registry), its balancing
//! tables and its timeouts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use http::HeaderMap;

use super::balance::{key_hash, Balancer};
use super::{Backend, InFlight, Registry};
use crate::config::{Balance, HashKey, PoolConfig};

/// One pool of a snapshot.
#[derive(Debug)]
pub struct Pool {
    /// Pool name, for logs and metric labels.
    pub name: String,
    /// What a consistent-hash pool hashes on; `None` for other algorithms.
    pub hash_key: Option<HashKey>,
    backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    balancer: Balancer,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Pool {
    /// Builds a pool from its config, reusing live backend state from the registry.
    pub fn new(config: &PoolConfig, registry: &Registry) -> Pool {
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| registry.backend(&config.name, b.addr))
            .collect();
        let weights: Vec<u32> = config.backends.iter().map(|b| b.weight).collect();
        let hash_key = match &config.balance {
            Balance::ConsistentHash(key) => Some(key.clone()),
            _ => None,
        };
        Pool {
            name: config.name.clone(),
            hash_key,
            balancer: Balancer::new(&config.balance, &backends, &weights),
            backends,
            weights,
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
        }
    }

    /// The pool's backends, in config order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Picks a backend the caller accepts. `hash` is the request key's hash for
    /// consistent hashing (see [`super::key_hash`]).
    pub fn select(
        &self,
        hash: Option<u64>,
        accept: &dyn Fn(&Backend) -> bool,
    ) -> Option<&Arc<Backend>> {
        self.balancer
            .pick(&self.backends, &self.weights, hash, accept)
            .map(|i| &self.backends[i])
    }

    /// The hash of the request's affinity key (header, cookie or client IP), for
    /// consistent-hash pools; `None` for other pools or when the request lacks the key,
    /// which then go to any backend.
    pub fn request_hash(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> Option<u64> {
        match self.hash_key.as_ref()? {
            HashKey::Header(name) => headers.get(name).map(|v| key_hash(v.as_bytes())),
            HashKey::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key == name)
                .map(|(_, value)| key_hash(value.as_bytes())),
            HashKey::ClientIp => client_ip.map(|ip| key_hash(ip.to_string().as_bytes())),
        }
    }

    /// Picks a backend for a request and counts the request in flight there.
    /// Returns the pingora peer to connect to, or `None` when no backend can take it.
    pub fn pick(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> Option<(HttpPeer, InFlight)> {
        let hash = self.request_hash(headers, client_ip);
        let backend = self.select(hash, &|_| true)?;
        Some((self.peer(backend), backend.start_request()))
    }

    /// The pingora peer for a backend of this pool, with the pool's timeouts.
    /// The request timeout bounds each wait for the backend to send more of its answer.
    fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.request_timeout);
        peer.options.write_timeout = Some(self.request_timeout);
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool(balance: &str) -> Pool {
        let text = format!(
            "[[pools]]\nname = \"p\"\n{balance}\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n"
        );
        let config = Config::from_toml(&text).expect("valid");
        Pool::new(&config.pools[0], &Registry::default())
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn hashes_the_configured_key_only() {
        let by_header = pool("balance = \"consistent_hash\"\nhash_key = \"header:x-cart-id\"");
        let cart = headers(&[("x-cart-id", "c1")]);
        assert_eq!(by_header.request_hash(&cart, None), Some(key_hash(b"c1")));
        assert_eq!(by_header.request_hash(&HeaderMap::new(), None), None);

        let by_cookie = pool("balance = \"consistent_hash\"\nhash_key = \"cookie:cart\"");
        let cookies = headers(&[("cookie", "a=1; cart=c9"), ("cookie", "b=2")]);
        assert_eq!(by_cookie.request_hash(&cookies, None), Some(key_hash(b"c9")));

        let by_ip = pool("balance = \"consistent_hash\"\nhash_key = \"client_ip\"");
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(by_ip.request_hash(&HeaderMap::new(), Some(ip)), Some(key_hash(b"10.0.0.1")));

        assert_eq!(pool("").request_hash(&cart, Some(ip)), None);
    }
}
