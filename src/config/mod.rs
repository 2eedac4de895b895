//! Configuration: the TOML an operator writes, and the typed config the proxy runs on.
//!
//! ```text
//! ordergate.toml --toml--> DeTable --schema::check--> --serde--> FileConfig --validate()--> Config
//!                          (schema.rs: unknown keys   (file.rs: a    (validate/: every
//!                           and wrong types reported  mirror of the   check, all errors at
//!                           with key paths, dropped)  TOML)           once, key paths)
//! ```
//!
//! Then `Config --state::Snapshot::build--> served`. Problems of all stages are
//! reported together, grouped by the part of the file they are in.

mod admission;
mod dns;
mod duration;
mod file;
mod room;
mod schema;
mod store;
pub mod tls;
mod tracing;
mod upstream_tls;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

pub use crate::pages::Pages;
pub use admission::{AdmissionConfig, LimitConfig, Priority};
pub use dns::{is_host_name, DnsConfig, DnsTarget, NamedBackend};
pub use room::{Bypass, RoomConfig, RoomMode, Secret};
pub use store::{RedisConfig, StoreConfig};
pub use tracing::{OtlpEndpoint, TracingConfig};
pub use upstream_tls::{CaBundle, ClientCert, UpstreamTlsConfig};

pub use duration::{parse_duration, parse_time};
pub use file::FileConfig;

/// The validated configuration that the proxy serves with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners and process settings.
    pub server: ServerConfig,
    /// Pools of backends, in file order.
    pub pools: Vec<PoolConfig>,
    /// Routes, in file order (the route table sorts them by specificity).
    pub routes: Vec<Arc<RouteConfig>>,
    /// Waiting rooms, in file order.
    pub rooms: Vec<RoomConfig>,
    /// The admin listener, when `[admin]` is present.
    pub admin: Option<AdminConfig>,
    /// Access log.
    pub access_log: AccessLog,
    /// Pages directories the config uses (watched for changes).
    pub pages_dirs: Vec<std::path::PathBuf>,
    /// `[maintenance]`: a window for every route. Default: none.
    pub maintenance: Option<MaintenanceConfig>,
    /// `[store]`: where records shared by instances live. Default: memory.
    pub store: StoreConfig,
    /// `[dns]`: how backends given by name are resolved.
    pub dns: DnsConfig,
    /// `[tracing]`: trace context and spans over OTLP. Default: off.
    pub tracing: Option<TracingConfig>,
}

/// `[maintenance]` / `[routes.maintenance]`: a planned maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// Whether the table opens a window; false: it only holds the allow rules
    /// for windows opened from the admin API. Default: true.
    pub active: bool,
    /// When the window ends; `None`: while the table is in the file.
    pub until: Option<std::time::SystemTime>,
    /// Shown to shoppers beside the page's own text.
    pub message: Option<String>,
    /// Client networks that pass through (staff). Default: none.
    pub allow_cidrs: Vec<Cidr>,
    /// A header that lets staff pass when it carries `allow_token`.
    pub allow_header: Option<HeaderName>,
    /// The secret value of `allow_header`.
    pub allow_token: Option<String>,
}

/// A network: an address and a prefix length, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        match (self.network, ip) {
            (V4(net), V4(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            (V6(net), V6(ip)) => prefix_match(&net.octets(), &ip.octets(), self.prefix),
            (V6(net), V4(ip)) => {
                prefix_match(&net.octets(), &ip.to_ipv6_mapped().octets(), self.prefix)
            }
            (V4(net), V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| prefix_match(&net.octets(), &ip.octets(), self.prefix)),
        }
    }
}

fn prefix_match(net: &[u8], ip: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (net[full] & mask) == (ip[full] & mask)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `"10.0.0.0/8"`, `"::1/128"`, or a bare address (one host).
    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad =
            || format!("{text:?} is not a network; write e.g. \"10.0.0.0/8\" or \"192.0.2.7\"");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: std::net::IpAddr = address.trim().parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        Ok(Cidr { network, prefix })
    }
}

/// `[admin]`: the admin API (status, metrics, reload, drain).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Where the admin API listens. Default: 127.0.0.1:9901.
    pub listen: SocketAddr,
    /// Bearer token required on every admin request; required when `listen` is
    /// not a loopback address. Default: none.
    pub token: Option<String>,
    /// Host names the admin API answers to (lower case), besides IP literals
    /// and `localhost`; any other `Host` is refused, so a DNS-rebinding page
    /// cannot reach it. Default: none.
    pub hosts: Vec<String>,
    /// Most admin connections open at once; more are closed at once.
    /// Default: 64.
    pub max_connections: u32,
    /// Longest wait for a request head, and for the next one on a kept-alive
    /// connection. Default: 10s.
    pub header_timeout: Duration,
}

/// `[log] access`: where the one-JSON-line-per-request access log goes.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    /// No access log (the default: it costs time on every request).
    Off,
    /// Standard output.
    Stdout,
    /// Appended to a file.
    File(std::path::PathBuf),
}

/// `[[server.tls]]`: a TLS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// Where shoppers connect with TLS.
    pub listen: SocketAddr,
    /// The default certificate's chain, PEM: served when the client's server
    /// name (SNI) matches no certificate, or it sends none.
    pub cert: std::path::PathBuf,
    /// Private key, PEM.
    pub key: std::path::PathBuf,
    /// The certificate chain and key as read (and checked) when the config was
    /// validated.
    pub cert_key: tls::CertKey,
    /// `[[server.tls.certificates]]`: more certificates, each chosen by the
    /// names of its subjectAltName. Default: none.
    pub certificates: Vec<TlsCertificate>,
    /// Refuse a handshake whose server name matches no certificate's names, or
    /// that sends none, instead of serving the default certificate (as HAProxy
    /// `strict-sni`). Default: false.
    pub strict_sni: bool,
    /// Offer HTTP/2 by ALPN. Default: true.
    pub http2: bool,
    /// The PROXY protocol header expected before the TLS handshake. Default: off.
    pub proxy_protocol: ProxyProtocol,
}

/// `proxy_protocol`: the header an L4 balancer (HAProxy `send-proxy`, a cloud
/// load balancer) sends first on each connection, naming the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    /// No header: the connection's peer is the client.
    #[default]
    Off,
    /// The text header (`PROXY TCP4 ...`).
    V1,
    /// The binary header.
    V2,
    /// Either version, told apart by its first bytes.
    Auto,
}

impl ProxyProtocol {
    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
            ProxyProtocol::Auto => "auto",
        }
    }
}

/// `[server] trusted_proxies` and `client_ip_header`: whose word ordergate
/// takes for the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustConfig {
    /// Peers whose PROXY protocol header and forwarded headers are believed
    /// (CDN, L4 balancer, a proxy in front). Default: none.
    pub proxies: Vec<Cidr>,
    /// The header a trusted peer names the client in: `x-forwarded-for`
    /// (read right to left, trusted hops skipped) or a one-address header
    /// such as `cf-connecting-ip`. Default: `x-forwarded-for`.
    pub client_ip_header: http::header::HeaderName,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            proxies: Vec::new(),
            client_ip_header: http::header::HeaderName::from_static("x-forwarded-for"),
        }
    }
}

impl TrustConfig {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.proxies.iter().any(|cidr| cidr.contains(ip))
    }
}

impl TlsConfig {
    /// Every certificate and key file of the listener: the default's first.
    pub fn files(&self) -> impl Iterator<Item = &std::path::Path> {
        [self.cert.as_path(), self.key.as_path()].into_iter().chain(
            self.certificates
                .iter()
                .flat_map(|c| [c.cert.as_path(), c.key.as_path()]),
        )
    }
}

/// `[[server.tls.certificates]]`: a certificate a TLS listener serves to the
/// server names of its subjectAltName.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsCertificate {
    /// Certificate chain, PEM.
    pub cert: std::path::PathBuf,
    /// Private key, PEM.
    pub key: std::path::PathBuf,
    /// The chain and key as read and checked with the config.
    pub cert_key: tls::CertKey,
}

/// `[server]`: listeners and process settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Addresses shoppers connect to. Default: `127.0.0.1:8080`.
    pub listen: Vec<SocketAddr>,
    /// Worker threads of the proxy service. Default: 2.
    pub threads: usize,
    /// On SIGTERM, how long to keep serving requests already in flight once the
    /// listeners closed; the process exits as soon as none is left. Default: 5s.
    pub grace_period: Duration,
    /// On SIGTERM, how long to go on serving (listeners open) while `/readyz`
    /// already says 503, so a load balancer that watches it stops sending
    /// first. Default: 0s.
    pub shutdown_delay: Duration,
    /// Idle connections to backends kept open for reuse, per worker thread (all
    /// pools together; the least recently used goes first). At least 1.
    /// Default: 1024.
    pub upstream_keepalive: usize,
    /// TLS listeners.
    pub tls: Vec<TlsConfig>,
    /// Largest request head (request line and headers) a shopper may send; a
    /// larger one gets the 431 page and the connection closes. Default: 32 KiB.
    pub max_request_header_bytes: usize,
    /// Time a new connection has to deliver a whole request head (on a
    /// keep-alive connection: after the idle wait); then it is closed, so
    /// slow-header clients cannot hold connections. Default: 10s.
    pub header_timeout: Duration,
    /// Idle time allowed between requests on a shopper's keep-alive
    /// connection; `0s` turns keep-alive off. Default: 60s.
    pub keepalive_timeout: Duration,
    /// Bytes of the read buffer each shopper connection holds (pingora's L4
    /// buffer; pingora's own default is 64 KiB). Default: 4 KiB.
    pub read_buffer: usize,
    /// The degradation pages. Default: the built-in set (a copy of conf/pages).
    pub pages: Pages,
    /// How request paths are normalised before routing (see `path`).
    pub path: PathPolicy,
    /// Whose word is taken for the client's address.
    pub trust: TrustConfig,
    /// Plain-HTTP requests get a redirect to HTTPS, on every route that does
    /// not say otherwise. Default: false.
    pub https_redirect: bool,
    /// The port HTTPS redirects name (omitted when 443). Default: 443.
    pub https_port: u16,
    /// `Strict-Transport-Security` on answers over HTTPS. Default: none.
    pub hsts: Option<http::HeaderValue>,
    /// The PROXY protocol header expected on the `listen` listeners. Default: off.
    pub proxy_protocol: ProxyProtocol,
}

impl ServerConfig {
    /// One line for `check`: whose word is taken for the client's address,
    /// and the HTTPS rules.
    fn edge_summary(&self) -> String {
        let trusted = if self.trust.proxies.is_empty() {
            "none (the peer is the client)".to_string()
        } else {
            let proxies: Vec<String> = self.trust.proxies.iter().map(ToString::to_string).collect();
            format!(
                "{} (client from {})",
                proxies.join(", "),
                self.trust.client_ip_header
            )
        };
        let mut proxy_protocol = vec![format!("listen {}", self.proxy_protocol.as_str())];
        proxy_protocol.extend(
            self.tls
                .iter()
                .map(|t| format!("{} {}", t.listen, t.proxy_protocol.as_str())),
        );
        format!(
            "edge: trusted proxies {trusted}; PROXY protocol {}; HTTPS redirect {}{}; HSTS {}",
            proxy_protocol.join(", "),
            if self.https_redirect { "on" } else { "off" },
            if self.https_redirect && self.https_port != 443 {
                format!(" (port {})", self.https_port)
            } else {
                String::new()
            },
            self.hsts
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("off")
        )
    }
}

impl RouteConfig {
    /// One line for `check`: streams, redirects, prefix and header rules.
    fn edge_summary(&self) -> String {
        let names = |rules: &[(HeaderName, http::HeaderValue)]| -> String {
            rules
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        let removed = |rules: &[HeaderName]| -> String {
            rules
                .iter()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "streams idle {:?}{}; https_redirect {}; strip_prefix {}; request headers set [{}] remove [{}]; answer headers set [{}] remove [{}]",
            self.stream_idle_timeout,
            if self.long_poll { ", long poll" } else { "" },
            self.https_redirect,
            self.strip_prefix,
            names(&self.request_headers.set),
            removed(&self.request_headers.remove),
            names(&self.response_headers.set),
            removed(&self.response_headers.remove),
        )
    }
}

/// `[server] merge_slashes` and `escaped_slashes`: how a request's path is
/// normalised before anything looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Runs of `/` become one. Default: true.
    pub merge_slashes: bool,
    /// What an encoded `/` or `\` (or a bare `\`) gets. Default: reject.
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// What a path with an encoded slash or a backslash gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// The `bad_request` page (400).
    Reject,
    /// Forwarded as sent; the escape is not a separator for ordergate.
    Keep,
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
    /// How long an idle connection to a backend stays open for reuse. Default: 60s.
    pub idle_timeout: Duration,
    /// The backends given as `IP:PORT`, in file order.
    pub backends: Vec<BackendConfig>,
    /// The backends given by name (`name:port` or `srv`), in file order; the
    /// snapshot serves each address they resolve to as a backend.
    pub named: Vec<NamedBackend>,
    /// Active health checks; `None`: backends are taken as healthy (passive checks still apply).
    pub health: Option<HealthConfig>,
    /// Passive outlier detection.
    pub outlier: OutlierConfig,
    /// When fewer than this percentage of backends can take traffic, spread over all
    /// of them instead of crushing the few left. Default: 50.
    pub panic_threshold: u8,
    /// Time over which a backend that became healthy ramps up to its full share.
    /// Default: 0s (off).
    pub slow_start: Duration,
    /// Limits retries so they cannot multiply load during an outage.
    pub retry_budget: RetryBudgetConfig,
    /// The queue, priority shares and concurrency limit.
    pub admission: AdmissionConfig,
    /// The pool that takes this pool's traffic when none of its backends can
    /// (index into [`Config::pools`]). Default: none.
    pub backup: Option<usize>,
    /// How long this pool must be able to serve, unbroken, before its traffic
    /// comes back from the backup. Default: 10s.
    pub failback_after: Duration,
    /// `[pools.tls]`: TLS to every backend of the pool, health probes
    /// included. Default: none (plain HTTP).
    pub tls: Option<UpstreamTlsConfig>,
}

/// `[pools.health]`: active probes of every backend of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// HTTP or TCP.
    pub probe: Probe,
    /// Time between probes of one backend. Default: 1s.
    pub interval: Duration,
    /// Time a probe may take before it counts as failed. Default: 500ms.
    pub timeout: Duration,
    /// Random extra delay (0 to this) before each probe, so probes of many backends
    /// do not align. Default: 10% of the interval.
    pub jitter: Duration,
    /// Consecutive passing probes before an unhealthy backend takes traffic again. Default: 2.
    pub healthy_threshold: u32,
    /// Consecutive failing probes before a backend is marked down. Default: 2.
    pub unhealthy_threshold: u32,
    /// Whether a new backend takes traffic before its first passing probe. Default: false.
    pub start_healthy: bool,
}

/// What a health probe does.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// An HTTP/1.1 request; passes when the status is one of `expect_status`.
    Http {
        /// Method. Default: GET.
        method: Method,
        /// Path. Default: /health.
        path: String,
        /// Host header; default: the backend's address.
        host: Option<String>,
        /// Statuses that pass. Default: 200.
        expect_status: Vec<u16>,
    },
    /// A TCP connect; passes when the connection opens.
    Tcp,
}

/// `[pools.outlier]`: ejection of backends that fail real requests.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Consecutive gateway failures (refused, reset, timeout, 502/503/504) that eject
    /// a backend; 0 turns this off. Default: 3.
    pub consecutive_gateway_failures: u32,
    /// Consecutive 5xx answers that eject a backend; 0 turns this off. Default: 5.
    pub consecutive_5xx: u32,
    /// Ejection time, multiplied by the number of times the backend was ejected. Default: 5s.
    pub base_ejection: Duration,
    /// Longest ejection. Default: 60s.
    pub max_ejection: Duration,
    /// Most backends of the pool ejected at once, in percent. Default: 50.
    pub max_ejected_percent: u8,
}

/// `[pools.retry_budget]`: retries allowed per recent requests.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries as a percentage of the requests of the last 10 seconds. Default: 20.
    pub percent: u8,
    /// Retries per second allowed whatever the traffic, so a quiet pool can still
    /// retry. Default: 3.
    pub min_per_second: u32,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where the backend listens.
    pub addr: SocketAddr,
    /// Relative share of traffic. Default: 1.
    pub weight: u32,
    /// Most concurrent requests sent to this backend; more wait in the pool's
    /// queue. Default: the pool's `max_in_flight` (256).
    pub max_in_flight: u32,
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
    /// Overall deadline of a request, retries and backoff included. Default: 15s.
    pub timeout: Duration,
    /// When and how a failed request is tried again.
    pub retry: RetryConfig,
    /// Priority class in the pool's queue. Default: normal.
    pub priority: Priority,
    /// Replace a backend's 5xx body (perhaps a stack trace) with the page,
    /// keeping the status. Default: true.
    pub intercept_errors: bool,
    /// Pages for this route instead of the server's. Default: none.
    pub pages: Option<Pages>,
    /// Requests per second allowed per client key. Default: none.
    pub rate_limit: Option<RateLimitConfig>,
    /// Largest request body: a larger declared `Content-Length` gets the 413
    /// page before any backend is contacted; a chunked body that grows past it
    /// is cut. Default: 1 MiB.
    pub max_body_bytes: u64,
    /// Idempotency at the edge. Default: off.
    pub idempotency: Option<IdempotencyConfig>,
    /// A maintenance window for this route. Default: none.
    pub maintenance: Option<MaintenanceConfig>,
    /// Stale answers for reads when the backends fail. Default: off.
    pub stale: Option<StaleConfig>,
    /// How long a stream (a WebSocket, an event stream, a long poll) may stay
    /// idle in either direction, its answer head included; it replaces the
    /// pool's `request_timeout` and the route's `timeout` for streams.
    /// Default: 5m.
    pub stream_idle_timeout: Duration,
    /// Every request on the route is a long poll: it waits for its answer as a
    /// stream does (`stream_idle_timeout`). Default: false.
    pub long_poll: bool,
    /// A plain-HTTP request gets a redirect to HTTPS. Default:
    /// `server.https_redirect` (false).
    pub https_redirect: bool,
    /// The backend gets the path without `path_prefix`. Default: false.
    pub strip_prefix: bool,
    /// Headers set on or removed from the request to the backend.
    pub request_headers: HeaderRules,
    /// Headers set on or removed from the backend's answer.
    pub response_headers: HeaderRules,
}

/// Headers a route sets (replacing what was there) and removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Set, in order, after the removals.
    pub set: Vec<(HeaderName, http::HeaderValue)>,
    /// Removed.
    pub remove: Vec<HeaderName>,
}

/// `[routes.stale]`: the last good answer to each read, served (marked stale)
/// when the backends fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleConfig {
    /// How long a good answer is kept for this purpose. Default: 10m.
    pub max_age: Duration,
    /// Memory for the route's copies. Default: 64 MiB.
    pub max_bytes: u64,
    /// Statuses worth keeping. Default: [200].
    pub statuses: Vec<u16>,
    /// Serve a copy instead of an error page (backend failure, 5xx, timeout,
    /// no healthy backend, shed). Default: true.
    pub on_error: bool,
    /// Serve a copy instead of waiting in the pool's queue. Default: false.
    pub on_overload: bool,
    /// Keep and serve answers to requests with cookies or `Authorization`.
    /// Default: false.
    pub private_ok: bool,
    /// Cookies that do not make a request private, besides ordergate's own
    /// (`ordergate_*`, e.g. the waiting room's pass). Default: none.
    pub ignore_cookies: Vec<String>,
}

/// `[routes.idempotency]`: ordergate itself makes a keyed order happen at
/// most once (see `idempotency`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// The header carrying the key. Default: the retry section's
    /// `idempotency_key_header` (`idempotency-key`).
    pub header: HeaderName,
    /// Methods whose requests are keyed. Default: POST, PATCH.
    pub methods: Vec<Method>,
    /// Whether a keyed method without a key is refused (400). Default: false.
    pub required: bool,
    /// How long a record is kept. Default: 24h.
    pub ttl: Duration,
    /// What makes two shoppers' keys distinct. Required: a credential, or
    /// `global` said explicitly.
    pub scope: IdempotencyScope,
    /// Answer headers never replayed, besides `Set-Cookie` (which never is).
    /// Default: none.
    pub per_shopper_headers: Vec<HeaderName>,
    /// Whether the order servers honour the key themselves. Default: false.
    pub backend_dedupes: bool,
    /// Memory for all records of the route, answers included. Default: 256 MiB.
    pub max_bytes: u64,
    /// Largest answer kept for replays. Default: 64 KiB.
    pub max_response_bytes: usize,
    /// How long a repeat waits for the first request with its key. Default: 10s.
    pub wait_for_first: Duration,
    /// Where shoppers see their orders, linked from the pages that say an
    /// order may exist. Default: none.
    pub orders_url: Option<String>,
}

/// What makes two shoppers' idempotency keys distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyScope {
    /// Keys are global to the route (said explicitly: one shopper's key
    /// replays to another).
    Global,
    /// The client's IP address.
    ClientIp,
    /// The value of a request header (e.g. an API token).
    Header(HeaderName),
    /// The value of a cookie (e.g. the session cookie).
    Cookie(String),
}

/// `[routes.rate_limit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Requests per second allowed for one key.
    pub requests_per_second: u32,
    /// What identifies a client.
    pub key: RateKey,
    /// Requests a client may send above the rate in a window after a window
    /// within it. Default: 0.
    pub burst: u32,
    /// Most clients one instance counts in memory per route; beyond it the
    /// least recently seen are forgotten (and counted). Default: 250000.
    pub max_clients: u32,
}

/// What a rate limit counts per.
#[derive(Debug, Clone, PartialEq)]
pub enum RateKey {
    /// The client's IP address.
    ClientIp,
    /// The value of a request header; a request without it is counted by
    /// its client address.
    Header(HeaderName),
}

/// `[routes.retry]`: the retry policy of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Most tries of one request, the first included; 1 turns retries off. Default: 3.
    pub attempts: u32,
    /// Failures worth another try. Default: connect_failure, reset, timeout, 502, 503, 504.
    pub on: RetryOn,
    /// Time one try may take; `None`: the pool's request timeout. Default: none.
    pub per_try_timeout: Option<Duration>,
    /// Backoff before the first retry; doubles each retry, with full jitter. Default: 25ms.
    pub backoff_base: Duration,
    /// Longest backoff. Default: 250ms.
    pub backoff_max: Duration,
    /// Header carrying an idempotency key. Default: `idempotency-key`.
    pub idempotency_key_header: HeaderName,
    /// Whether a non-idempotent request with an idempotency key may be retried after it
    /// reached a backend. Default: true.
    pub retry_with_idempotency_key: bool,
    /// Methods that are never replayed once sent (unless keyed). Always POST and
    /// PATCH; a route may add more (e.g. PUT, DELETE).
    pub unsafe_methods: Vec<Method>,
}

/// Failures a retry policy answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// The connection to the backend could not be opened (nothing was sent).
    pub connect_failure: bool,
    /// The backend closed or reset the connection before answering.
    pub reset: bool,
    /// The backend did not answer in time.
    pub timeout: bool,
    /// Backend statuses worth another try.
    pub statuses: Vec<u16>,
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

/// Problems grouped by the part of the file they are in, in the order the
/// reference config has them; within a part, in the order found.
fn by_section(mut problems: Vec<ConfigError>) -> Vec<ConfigError> {
    const SECTIONS: [&str; 6] = ["server", "admin", "log", "pools", "routes", "rooms"];
    problems.sort_by_key(|p| {
        SECTIONS
            .iter()
            .position(|s| p.path.starts_with(s))
            .unwrap_or(if p.path.is_empty() { 0 } else { SECTIONS.len() })
    });
    problems
}

impl Config {
    /// Parses and validates a config from TOML text, returning every problem found.
    /// Relative paths (pages, certificates) are taken from the current directory.
    pub fn from_toml(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::from_toml_in(text, Path::new("."))
    }

    /// Parses and validates a config from TOML text; relative paths in it are
    /// resolved against `base` (the config file's directory).
    pub fn from_toml_in(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut root = toml::de::DeTable::parse(text).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("invalid TOML: {}", e.to_string().trim_end()),
            }]
        })?;
        // Unknown keys and wrong types first, each dropped once reported...
        let mut problems = schema::check(root.get_mut());
        let file: FileConfig =
            match serde::Deserialize::deserialize(toml::de::Deserializer::from(root)) {
                Ok(file) => file,
                Err(mut e) => {
                    e.set_input(Some(text));
                    problems.push(ConfigError {
                        path: String::new(),
                        message: format!("invalid config: {}", e.to_string().trim_end()),
                    });
                    return Err(problems);
                }
            };
        // ...then every check of the rest, reported together; a key already
        // reported is not reported again as missing.
        match validate::validate(file, base) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(by_section(problems)),
            Err(more) => {
                for problem in more {
                    if !problems.iter().any(|p| p.path == problem.path) {
                        problems.push(problem);
                    }
                }
                Err(by_section(problems))
            }
        }
    }

    /// Reads, parses and validates a config file, returning every problem found.
    /// Relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                path: String::new(),
                message: format!("cannot read config file {}: {e}", path.display()),
            }]
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml_in(&text, base)
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
        for tls in &self.server.tls {
            let _ = writeln!(
                out,
                "TLS listener {}: {} (valid until {}), http2 {}{}",
                tls.listen,
                tls.cert.display(),
                tls.cert_key.not_after(),
                if tls.http2 { "on" } else { "off" },
                if tls.strict_sni { ", strict SNI" } else { "" }
            );
            for certificate in &tls.certificates {
                let _ = writeln!(
                    out,
                    "  for {}: {} (valid until {})",
                    certificate.cert_key.names().join(", "),
                    certificate.cert.display(),
                    certificate.cert_key.not_after()
                );
            }
        }
        let _ = writeln!(out, "{}", self.server.edge_summary());
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
            let _ = writeln!(out, "    {}", route.edge_summary());
        }
        for room in &self.rooms {
            let _ = writeln!(
                out,
                "room {} on {}: {}max_active {}, admit_per_minute {}, session {:?}",
                room.name,
                room.routes.join(", "),
                match room.mode {
                    RoomMode::OnOverload => "",
                    RoomMode::Always => "always, ",
                    RoomMode::Off => "OFF, ",
                },
                room.max_active.map_or("-".to_string(), |n| n.to_string()),
                room.admit_per_minute
                    .map_or("-".to_string(), |n| n.to_string()),
                room.session
            );
        }
        if self.pools.iter().any(|p| !p.named.is_empty()) {
            let servers: Vec<String> = self.dns.servers.iter().map(|s| s.to_string()).collect();
            let _ = writeln!(
                out,
                "dns: {}, TTL held to {:?}..{:?}, timeout {:?}",
                if servers.is_empty() {
                    "the system's servers (/etc/resolv.conf)".to_string()
                } else {
                    format!("servers {}", servers.join(", "))
                },
                self.dns.min_ttl,
                self.dns.max_ttl,
                self.dns.timeout
            );
        }
        if let Some(tracing) = &self.tracing {
            let _ = writeln!(
                out,
                "tracing: spans to {} (OTLP/HTTP), {}% of requests kept by chance{}, and every request that ends in a page or is retried",
                tracing.otlp,
                tracing.ratio * 100.0,
                if tracing.client_sampled { " or by the client's sampled flag" } else { "" }
            );
        }
        if let StoreConfig::Redis(redis) = &self.store {
            let _ = writeln!(
                out,
                "store: redis {} (key prefix {:?}, timeout {:?}, {} connections{}); idempotency records, rate limits and waiting-room lines shared",
                redis.url,
                redis.key_prefix,
                redis.timeout,
                redis.pool_size,
                if redis.password.is_some() { ", password set" } else { "" }
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
                .chain(pool.named.iter().map(|n| match n.weight {
                    Some(weight) => format!("{} (by DNS, weight {weight} each)", n.target),
                    None => format!("{} (by DNS)", n.target),
                }))
                .collect();
            let health = match &pool.health {
                Some(HealthConfig {
                    probe: Probe::Http { path, .. },
                    interval,
                    ..
                }) => format!("probe {path} every {interval:?}"),
                Some(HealthConfig { interval, .. }) => format!("probe TCP every {interval:?}"),
                None => "no probes".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<16} {}, connect {:?}, request {:?}, {}{}: {}",
                pool.name,
                balance,
                pool.connect_timeout,
                pool.request_timeout,
                health,
                pool.tls
                    .as_ref()
                    .map_or(String::new(), |tls| format!(", {}", tls.describe())),
                backends.join(", ")
            );
        }
        for warning in self.warnings() {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }

    /// Settings that are allowed but weaken something, for the log at start
    /// and after a reload, and for `ordergate check`.
    pub fn warnings(&self) -> Vec<String> {
        self.pools
            .iter()
            .filter(|pool| pool.tls.as_ref().is_some_and(|tls| !tls.verify))
            .map(|pool| {
                format!(
                    "pool {}: tls.verify = false: the backends' certificates are NOT checked, so anyone on the path to them can pose as them and read the orders",
                    pool.name
                )
            })
            .collect()
    }
}
