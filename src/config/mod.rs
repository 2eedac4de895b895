//! Configuration: the TOML an operator writes, and the typed config the proxy runs on.
//!
//! ```text
//! ordergate.toml --toml+serde--> FileConfig --validate()--> Config --state::Snapshot::build--> served
//!                 (file.rs: a mirror      (validate.rs: every    (typed: durations, socket
//!                  of the TOML, unknown    check, all errors      addresses, route -> pool
//!                  keys rejected)          at once, key paths)    references resolved)
//! ```

mod duration;
mod file;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

pub use duration::parse_duration;
pub use file::FileConfig;

/// The validated configuration that the proxy serves with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners and process settings.
    pub server: ServerConfig,
    /// Pools of backends, in file order.
    pub pools: Vec<PoolConfig>,
    /// Routes, in file order (the route table sorts them by specificity).
    pub routes: Vec<RouteConfig>,
}

/// `[server]`: listeners and process settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses shoppers connect to. Default: `127.0.0.1:8080`.
    pub listen: Vec<SocketAddr>,
    /// Worker threads of the proxy service. Default: 2.
    pub threads: usize,
    /// On SIGTERM, how long to keep serving requests already in flight. Default: 5s.
    pub grace_period: Duration,
}

/// `[[pools]]`: a named set of interchangeable backends.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Name used by routes, logs and metric labels.
    pub name: String,
    /// How a request picks a backend. Default: round robin.
    pub balance: Balance,
    /// Longest wait for a TCP connection to a backend. Default: 1s.
    pub connect_timeout: Duration,
    /// Longest wait for a backend to send the next bytes of its answer. Default: 10s.
    pub request_timeout: Duration,
    /// The backends, in file order.
    pub backends: Vec<BackendConfig>,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where the backend listens.
    pub addr: SocketAddr,
    /// Relative share of traffic. Default: 1.
    pub weight: u32,
}

/// The balancing algorithm of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Fewest requests in flight (per unit of weight), among two random choices.
    LeastRequest,
    /// Lowest peak-EWMA latency times requests in flight, among two random choices.
    PeakEwma,
    /// Consistent hashing (a ring) on a request key, for cart affinity.
    ConsistentHash(HashKey),
}

impl Balance {
    /// The name used in the config file.
    pub fn name(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::Random => "random",
            Balance::LeastRequest => "least_request",
            Balance::PeakEwma => "peak_ewma",
            Balance::ConsistentHash(_) => "consistent_hash",
        }
    }
}

/// What a consistent-hash pool hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The value of a request header.
    Header(HeaderName),
    /// The value of a cookie.
    Cookie(String),
    /// The client's IP address.
    ClientIp,
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::ClientIp => f.write_str("client_ip"),
        }
    }
}

/// `[[routes]]`: which requests go to which pool.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name used in logs and metric labels.
    pub name: String,
    /// Exact host (lower case, without port) the request must name; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, matched on whole segments: `/api/orders` matches `/api/orders` and
    /// `/api/orders/7`, not `/api/orders-old`. Default: `/`.
    pub path_prefix: String,
    /// Methods the route accepts; `None` accepts any.
    pub methods: Option<Vec<Method>>,
    /// Index into [`Config::pools`].
    pub pool: usize,
}

/// One problem found in a config file, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `routes[1] "checkout"`, `pools[0] "orders".backends[2].addr`, `server.listen[0]`.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl Config {
    /// Parses and validates a config from TOML text, returning every problem found.
    pub fn from_toml(text: &str) -> Result<Config, Vec<ConfigError>> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("invalid TOML: {}", e.to_string().trim_end()),
            }]
        })?;
        validate::validate(file)
    }

    /// Reads, parses and validates a config file, returning every problem found.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }]
        })?;
        Config::from_toml(&text)
    }

    /// A one-screen summary of listeners, routes and pools, as `ordergate check` prints it.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            out,
            "listeners: {} ({} threads)",
            listen.join(", "),
            self.server.threads
        );
        let _ = writeln!(out, "routes ({}):", self.routes.len());
        for route in &self.routes {
            let methods = match &route.methods {
                Some(methods) => methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                None => "any".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<16} host={} path={} methods={} -> pool {}",
                route.name,
                route.host.as_deref().unwrap_or("*"),
                route.path_prefix,
                methods,
                self.pools[route.pool].name
            );
        }
        let _ = writeln!(out, "pools ({}):", self.pools.len());
        for pool in &self.pools {
            let balance = match &pool.balance {
                Balance::ConsistentHash(key) => format!("consistent_hash on {key}"),
                other => other.name().to_string(),
            };
            let backends: Vec<String> = pool
                .backends
                .iter()
                .map(|b| format!("{} (weight {})", b.addr, b.weight))
                .collect();
            let _ = writeln!(
                out,
                "  {:<16} {}, connect {:?}, request {:?}: {}",
                pool.name,
                balance,
                pool.connect_timeout,
                pool.request_timeout,
                backends.join(", ")
            );
        }
        out
    }
}
