//! Classify a request to a Route by host, path prefix and method.
//!
//! The most specific route wins, checked in this order:
//! 1. a route naming the request's host beats one that accepts any host;
//! 2. a longer path prefix beats a shorter one;
//! 3. a route listing methods beats one that accepts any method;
//! 4. on a tie, the route written first in the file wins.
//!
//! Path prefixes match whole segments: `/api/orders` matches `/api/orders`,
//! `/api/orders/` and `/api/orders/7`, but not `/api/orders-old`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use pingora_limits::rate::Rate;

use crate::config::{
    MaintenanceConfig, Pages, Priority, RateKey, RateLimitConfig, RetryConfig, RouteConfig,
    StaleConfig,
};
use crate::idempotency::RouteIdempotency;
use crate::stale::StaleCache;
use crate::store::Stores;
use crate::telemetry::{Metrics, RouteMetrics};
use crate::upstream::Registry;

/// How much longer than a route's timeout a shared idempotency record may
/// stay in flight (the answer is still being written when the deadline passes).
const IDEMPOTENCY_LEASE_MARGIN: Duration = Duration::from_secs(10);

/// A compiled route: what it matches and where it sends.
pub struct Route {
    /// Route name, for logs and metric labels.
    pub name: String,
    /// Index of the pool in the snapshot.
    pub pool: usize,
    /// Overall deadline of a request, retries included.
    pub timeout: Duration,
    /// The route's retry policy.
    pub retry: RetryConfig,
    /// Priority class in the pool's queue.
    pub priority: Priority,
    /// Whether a backend's 5xx body is replaced by the page.
    pub intercept_errors: bool,
    /// Pages for this route, instead of the server's.
    pub pages: Option<Pages>,
    /// The rate limit and its live counters (shared across snapshots).
    pub rate_limit: Option<(RateLimitConfig, Arc<Rate>)>,
    /// The Redis that counts the rate limit for every instance (`[store]
    /// kind = "redis"`); `None`: counted in `rate_limit`'s memory only.
    pub shared_rate_limit: Option<Arc<crate::store::redis::Redis>>,
    /// Largest request body, in bytes.
    pub max_body_bytes: u64,
    /// Idempotency at the edge: settings, records and metrics.
    pub idempotency: Option<RouteIdempotency>,
    /// The route's configured maintenance window.
    pub maintenance: Option<MaintenanceConfig>,
    /// Stale answers for reads: settings and the route's kept copies.
    pub stale: Option<(StaleConfig, Arc<StaleCache>)>,
    /// Metric handles.
    pub metrics: RouteMetrics,
    host: Option<String>,
    path_prefix: String,
    methods: Option<Vec<Method>>,
}

impl Route {
    /// Counts the request against the route's rate limit; true when the client
    /// (by IP or header, as configured) is over it this second.
    pub fn over_rate_limit(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> bool {
        let Some((limit, rate)) = &self.rate_limit else {
            return false;
        };
        let seen = match &limit.key {
            RateKey::ClientIp => rate.observe(&client_ip, 1),
            RateKey::Header(name) => rate.observe(&headers.get(name).map(|v| v.as_bytes()), 1),
        };
        seen > limit.requests_per_second as isize
    }

    /// Whether the rate limit is counted in Redis, for every instance
    /// ([`Route::over_shared_rate_limit`]).
    pub fn shares_rate_limit(&self) -> bool {
        self.rate_limit.is_some() && self.shared_rate_limit.is_some()
    }

    /// [`Route::over_rate_limit`] counted in Redis, so every instance's
    /// requests of one client add up; when Redis does not answer within the
    /// store's timeout, counted in this instance's memory.
    pub async fn over_shared_rate_limit(
        &self,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> bool {
        let (Some((limit, _)), Some(redis)) = (&self.rate_limit, &self.shared_rate_limit) else {
            return self.over_rate_limit(headers, client_ip);
        };
        let ip;
        let client: &[u8] = match &limit.key {
            RateKey::ClientIp => {
                ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
                ip.as_bytes()
            }
            RateKey::Header(name) => headers.get(name).map_or(&[], |v| v.as_bytes()),
        };
        match redis
            .over_rate_limit(&self.name, client, limit.requests_per_second)
            .await
        {
            Some(over) => over,
            None => self.over_rate_limit(headers, client_ip),
        }
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("pool", &self.pool)
            .field("host", &self.host)
            .field("path_prefix", &self.path_prefix)
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

/// Routes sorted by specificity, so the first match is the best.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles validated routes into a table, with metric handles and live rate
    /// limiters.
    pub fn new(
        configs: &[RouteConfig],
        metrics: &Metrics,
        registry: &Registry,
        stores: &Stores,
    ) -> RouteTable {
        let mut routes: Vec<Route> = configs
            .iter()
            .map(|c| Route {
                name: c.name.clone(),
                pool: c.pool,
                timeout: c.timeout,
                retry: c.retry.clone(),
                priority: c.priority,
                intercept_errors: c.intercept_errors,
                pages: c.pages.clone(),
                rate_limit: c
                    .rate_limit
                    .clone()
                    .map(|limit| (limit, registry.rate_limiter(&c.name))),
                shared_rate_limit: stores.shared(),
                max_body_bytes: c.max_body_bytes,
                idempotency: c.idempotency.clone().map(|settings| RouteIdempotency {
                    // A record in flight longer than the request can live
                    // belongs to an instance that died.
                    store: stores.idempotency(
                        &c.name,
                        settings.max_bytes,
                        c.timeout + IDEMPOTENCY_LEASE_MARGIN,
                    ),
                    metrics: metrics.idempotency(&c.name),
                    settings,
                }),
                maintenance: c.maintenance.clone(),
                stale: c.stale.clone().map(|config| {
                    metrics.prime_stale(&c.name);
                    let cache = stores.stale(&c.name, &config);
                    (config, cache)
                }),
                metrics: metrics.route(&c.name),
                host: c.host.clone(),
                path_prefix: c.path_prefix.clone(),
                methods: c.methods.clone(),
            })
            .collect();
        // A stable sort keeps file order among equals.
        routes.sort_by_key(|r| {
            (
                r.host.is_none(),
                std::cmp::Reverse(r.path_prefix.trim_end_matches('/').len()),
                r.methods.is_none(),
            )
        });
        RouteTable { routes }
    }

    /// The route at an index returned by [`RouteTable::classify`].
    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The routes, most specific first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The index of the best route for a request, if any. `host` may carry a port
    /// and any case.
    pub fn classify(&self, host: Option<&str>, path: &str, method: &Method) -> Option<usize> {
        let host = host.map(strip_port);
        self.routes.iter().position(|route| {
            route
                .host
                .as_deref()
                .is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
                && prefix_matches(&route.path_prefix, path)
                && route
                    .methods
                    .as_ref()
                    .is_none_or(|methods| methods.contains(method))
        })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [::1]:8080
        return host.split_once(']').map_or(host, |(ip, _)| &ip[1..]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &str,
        host: Option<&str>,
        prefix: &str,
        methods: Option<&[Method]>,
    ) -> RouteConfig {
        let text = "[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npool = \"p\"\n";
        let template = crate::config::Config::from_toml(text)
            .expect("valid")
            .routes
            .remove(0);
        RouteConfig {
            name: name.to_string(),
            host: host.map(str::to_string),
            path_prefix: prefix.to_string(),
            methods: methods.map(<[Method]>::to_vec),
            ..template
        }
    }

    fn table(configs: &[RouteConfig]) -> RouteTable {
        RouteTable::new(
            configs,
            &Metrics::new(),
            &Registry::default(),
            &Stores::default(),
        )
    }

    fn name<'a>(
        table: &'a RouteTable,
        host: Option<&str>,
        path: &str,
        method: Method,
    ) -> Option<&'a str> {
        let index = table.classify(host, path, &method)?;
        table.get(index).map(|r| r.name.as_str())
    }

    #[test]
    fn most_specific_route_wins() {
        let table = table(&[
            route("fallback", None, "/", None),
            route("orders", None, "/api/orders", None),
            route("checkout", None, "/api/orders", Some(&[Method::POST])),
            route("shop-orders", Some("shop.example"), "/api", None),
        ]);
        assert_eq!(
            name(&table, None, "/api/orders/7", Method::GET),
            Some("orders")
        );
        assert_eq!(
            name(&table, None, "/api/orders", Method::POST),
            Some("checkout")
        );
        assert_eq!(
            name(
                &table,
                Some("SHOP.example:8080"),
                "/api/orders",
                Method::POST
            ),
            Some("shop-orders")
        );
        assert_eq!(
            name(&table, Some("other.example"), "/", Method::GET),
            Some("fallback")
        );
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let table = table(&[route("orders", None, "/api/orders/", None)]);
        assert_eq!(
            name(&table, None, "/api/orders", Method::GET),
            Some("orders")
        );
        assert_eq!(
            name(&table, None, "/api/orders/1", Method::GET),
            Some("orders")
        );
        assert_eq!(name(&table, None, "/api/orders-old", Method::GET), None);
        assert_eq!(name(&table, None, "/api", Method::GET), None);
    }

    #[test]
    fn no_match_when_host_or_method_differs() {
        let table = table(&[route(
            "checkout",
            Some("shop.example"),
            "/",
            Some(&[Method::POST]),
        )]);
        assert_eq!(name(&table, Some("shop.example"), "/", Method::GET), None);
        assert_eq!(name(&table, None, "/", Method::POST), None);
        assert_eq!(name(&table, Some("[::1]:80"), "/", Method::POST), None);
    }

    #[test]
    fn rate_limits_count_per_client_key() {
        let text = "[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npool = \"p\"\n[routes.rate_limit]\nrequests_per_second = 2\nkey = \"header:x-user\"\n";
        let config = crate::config::Config::from_toml(text).expect("valid");
        let table = table(&config.routes);
        let route = table.get(0).expect("route");
        let mut alice = HeaderMap::new();
        alice.insert("x-user", http::HeaderValue::from_static("alice"));
        let mut bob = HeaderMap::new();
        bob.insert("x-user", http::HeaderValue::from_static("bob"));
        assert!(!route.over_rate_limit(&alice, None));
        assert!(!route.over_rate_limit(&alice, None));
        assert!(route.over_rate_limit(&alice, None), "third in a second");
        assert!(
            !route.over_rate_limit(&bob, None),
            "another client has its own count"
        );
    }

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("shop.example:8080"), "shop.example");
        assert_eq!(strip_port("shop.example"), "shop.example");
        assert_eq!(strip_port("[::1]:8080"), "::1");
    }
}
