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
//!
//! [`index`] finds that route without scanning the table.

mod index;

pub use index::{prefix_matches, Matcher, RouteIndex};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};

use crate::config::{RouteConfig, StaleConfig};
use crate::idempotency::RouteIdempotency;
use crate::live::LiveState;
use crate::ratelimit::{self, RateLimiter};
use crate::stale::StaleCache;
use crate::stream::RouteStreams;
use crate::telemetry::{Metrics, RouteMetrics};

/// How much longer than a route's timeout a shared idempotency record may
/// stay in flight (the answer is still being written when the deadline passes).
const IDEMPOTENCY_LEASE_MARGIN: Duration = Duration::from_secs(10);

/// A compiled route: its validated settings and the live state it uses.
pub struct Route {
    /// What the config file says of the route: what it matches, where it
    /// sends, its deadlines, retries, pages and protections.
    pub config: Arc<RouteConfig>,
    /// Counts the rate limit of `config.rate_limit` (shared across snapshots,
    /// and across instances with Redis).
    pub rate_limiter: Option<Arc<dyn RateLimiter>>,
    /// Idempotency at the edge: settings, records and metrics.
    pub idempotency: Option<RouteIdempotency>,
    /// The kept copies for `config.stale`.
    pub stale_copies: Option<Arc<StaleCache>>,
    /// Metric handles.
    pub metrics: Arc<RouteMetrics>,
    /// Metric handles of the route's streams.
    pub streams: Arc<RouteStreams>,
}

impl Route {
    /// Counts the request against the route's rate limit; true when the
    /// client (by IP or header, as configured) is over it.
    pub async fn over_rate_limit(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> bool {
        match (&self.config.rate_limit, &self.rate_limiter) {
            (Some(limit), Some(limiter)) => {
                ratelimit::is_over(limiter.as_ref(), limit, headers, client_ip).await
            }
            _ => false,
        }
    }

    /// Stale answers for reads: the settings and the route's kept copies.
    pub fn stale(&self) -> Option<(&StaleConfig, &StaleCache)> {
        self.config.stale.as_ref().zip(self.stale_copies.as_deref())
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.config.name)
            .field("pool", &self.config.pool)
            .field("host", &self.config.host)
            .field("path_prefix", &self.config.path_prefix)
            .field("methods", &self.config.methods)
            .finish_non_exhaustive()
    }
}

/// Routes sorted by specificity, so the first match is the best, and the
/// index that finds it.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    matchers: Vec<Matcher>,
    index: RouteIndex,
}

impl RouteTable {
    /// Compiles validated routes into a table, with metric handles and their
    /// live state.
    pub fn new(configs: &[Arc<RouteConfig>], metrics: &Metrics, live: &LiveState) -> RouteTable {
        // Most specific first; a stable sort keeps file order among equals.
        // The order is found on indices: a route is over a kilobyte, and
        // 10 000 of them moved through a merge sort would cost a reload
        // tens of milliseconds.
        let mut order: Vec<usize> = (0..configs.len()).collect();
        order.sort_by_key(|&i| {
            let c = &configs[i];
            (
                c.host.is_none(),
                std::cmp::Reverse(c.path_prefix.trim_end_matches('/').len()),
                c.methods.is_none(),
            )
        });
        let routes: Vec<Route> = order
            .into_iter()
            .map(|i| &configs[i])
            .map(|c| Route {
                rate_limiter: c.rate_limit.as_ref().map(|_| live.rate_limiter(&c.name)),
                idempotency: c.idempotency.clone().map(|settings| RouteIdempotency {
                    // A record in flight longer than the request can live
                    // belongs to an instance that died.
                    store: live.idempotency(
                        &c.name,
                        settings.max_bytes,
                        c.timeout + IDEMPOTENCY_LEASE_MARGIN,
                    ),
                    metrics: metrics.handles(&c.name, || metrics.idempotency(&c.name)),
                    settings,
                }),
                stale_copies: c.stale.as_ref().map(|config| {
                    metrics.prime_stale(&c.name);
                    live.stale(&c.name, config)
                }),
                // Behind an Arc: a reload of 10 000 routes takes one count per
                // route, not one per series on as many cold cache lines.
                metrics: metrics.handles(&c.name, || Arc::new(metrics.route(&c.name))),
                streams: metrics.handles(&c.name, || Arc::new(RouteStreams::new(metrics, &c.name))),
                config: Arc::clone(c),
            })
            .collect();
        let matchers: Vec<Matcher> = routes
            .iter()
            .map(|r| Matcher {
                host: r.config.host.clone(),
                path_prefix: r.config.path_prefix.clone(),
                methods: r.config.methods.clone(),
            })
            .collect();
        RouteTable {
            index: RouteIndex::new(&matchers),
            matchers,
            routes,
        }
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
        self.index
            .find(&self.matchers, host.map(strip_port), path, method)
    }

    /// The same answer as [`RouteTable::classify`] by scanning every route:
    /// the reference the index is held to, for benches.
    pub fn classify_linear(
        &self,
        host: Option<&str>,
        path: &str,
        method: &Method,
    ) -> Option<usize> {
        Matcher::linear(&self.matchers, host.map(strip_port), path, method)
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
        let routes = crate::config::Config::from_toml(text)
            .expect("valid")
            .routes;
        let template = Arc::unwrap_or_clone(routes[0].clone());
        RouteConfig {
            name: name.to_string(),
            host: host.map(str::to_string),
            path_prefix: prefix.to_string(),
            methods: methods.map(<[Method]>::to_vec),
            ..template
        }
    }

    fn table(configs: &[RouteConfig]) -> RouteTable {
        let configs: Vec<Arc<RouteConfig>> = configs.iter().cloned().map(Arc::new).collect();
        RouteTable::new(&configs, &Metrics::new(), &LiveState::default())
    }

    fn name<'a>(
        table: &'a RouteTable,
        host: Option<&str>,
        path: &str,
        method: Method,
    ) -> Option<&'a str> {
        let index = table.classify(host, path, &method)?;
        table.get(index).map(|r| r.config.name.as_str())
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

    #[tokio::test]
    async fn rate_limits_count_per_client_key() {
        let text = "[[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"r\"\npool = \"p\"\n[routes.rate_limit]\nrequests_per_second = 2\nkey = \"header:x-user\"\n";
        let config = crate::config::Config::from_toml(text).expect("valid");
        let table = RouteTable::new(&config.routes, &Metrics::new(), &LiveState::default());
        let route = table.get(0).expect("route");
        let mut alice = HeaderMap::new();
        alice.insert("x-user", http::HeaderValue::from_static("alice"));
        let mut bob = HeaderMap::new();
        bob.insert("x-user", http::HeaderValue::from_static("bob"));
        assert!(!route.over_rate_limit(&alice, None).await);
        assert!(!route.over_rate_limit(&alice, None).await);
        assert!(
            route.over_rate_limit(&alice, None).await,
            "third in a second"
        );
        assert!(
            !route.over_rate_limit(&bob, None).await,
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
