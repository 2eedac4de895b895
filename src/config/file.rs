//! The serde mirror of the TOML file. Values stay as written (strings), so that
//! validation can name the key and the bad value in its messages. `schema.rs`
//! has already checked keys and types; keys required by validation default to
//! empty here, so a missing one is reported with the rest, not by serde alone.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]`.
    #[serde(default)]
    pub server: FileServer,
    /// `[[pools]]`.
    #[serde(default)]
    pub pools: Vec<FilePool>,
    /// `[[routes]]`.
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    /// `[[rooms]]`: waiting rooms.
    #[serde(default)]
    pub rooms: Vec<FileRoom>,
    /// `[admin]`.
    pub admin: Option<FileAdmin>,
    /// `[log]`.
    pub log: Option<FileLog>,
    /// `[maintenance]`: for every route.
    pub maintenance: Option<FileMaintenance>,
    /// `[store]`: where shared records live.
    pub store: Option<FileStore>,
    /// `[dns]`: the resolver for backends given by name.
    pub dns: Option<FileDns>,
    /// `[tracing]`: trace context and spans over OTLP.
    pub tracing: Option<FileTracing>,
}

/// `[tracing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    /// The OTLP/HTTP collector's URL.
    pub otlp: Option<String>,
    /// Share of traces kept by chance.
    pub ratio: Option<FileNumber>,
    /// Keep traces the client marks sampled.
    pub client_sampled: Option<bool>,
    /// `service.name` of the spans.
    pub service_name: Option<String>,
    /// Longest wait for the collector.
    pub timeout: Option<String>,
    /// Longest wait before a batch is sent.
    pub interval: Option<String>,
}

/// A number written with or without a fraction (`1` or `0.25`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum FileNumber {
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
}

impl FileNumber {
    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            FileNumber::Int(n) => n as f64,
            FileNumber::Float(x) => x,
        }
    }
}

/// `[dns]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    /// Name servers, `IP:PORT`.
    pub servers: Option<Vec<String>>,
    /// Shortest time an answer is kept.
    pub min_ttl: Option<String>,
    /// Longest time an answer is kept.
    pub max_ttl: Option<String>,
    /// Longest wait for one answer.
    pub timeout: Option<String>,
}

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStore {
    /// `memory` or `redis`.
    pub kind: Option<String>,
    /// `redis://host:port/db` or `rediss://...`.
    pub url: Option<String>,
    /// Environment variable holding the Redis password.
    pub password_env: Option<String>,
    /// Prefix of every Redis key.
    pub key_prefix: Option<String>,
    /// Longest wait for one Redis operation.
    pub timeout: Option<String>,
    /// Connections to Redis.
    pub pool_size: Option<i64>,
}

/// `[maintenance]` and `[routes.maintenance]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMaintenance {
    /// Whether the table opens a window (false: only allow rules).
    pub active: Option<bool>,
    /// RFC 3339 end of the window.
    pub until: Option<String>,
    /// Shown to shoppers.
    pub message: Option<String>,
    /// Client networks that pass through.
    pub allow_cidrs: Option<Vec<String>>,
    /// Header that lets staff pass with the token.
    pub allow_header: Option<String>,
    /// The secret value of `allow_header`.
    pub allow_token: Option<String>,
    /// Environment variable holding the secret value.
    pub allow_token_env: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// Listen address.
    pub listen: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// Names the admin API answers to, besides IP addresses and `localhost`.
    pub hosts: Option<Vec<String>>,
    /// Most admin connections open at once.
    pub max_connections: Option<i64>,
    /// Longest wait for a request head (and between requests).
    pub header_timeout: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    /// `off`, `stdout` or a file path.
    pub access: Option<String>,
}

/// `[[server.tls]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Listen address.
    #[serde(default)]
    pub listen: String,
    /// Certificate chain (PEM).
    #[serde(default)]
    pub cert: String,
    /// Private key (PEM).
    #[serde(default)]
    pub key: String,
    /// More certificates, chosen by SNI.
    pub certificates: Option<Vec<FileTlsCertificate>>,
    /// Refuse handshakes whose SNI matches no certificate.
    pub strict_sni: Option<bool>,
    /// Offer HTTP/2 by ALPN.
    pub http2: Option<bool>,
    /// PROXY protocol header before the handshake.
    pub proxy_protocol: Option<String>,
}

/// `[[server.tls.certificates]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTlsCertificate {
    /// Certificate chain (PEM).
    #[serde(default)]
    pub cert: String,
    /// Private key (PEM).
    #[serde(default)]
    pub key: String,
}

/// `[pools.queue]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQueue {
    /// Most waiting requests.
    pub max_waiting: Option<i64>,
    /// Longest wait.
    pub timeout: Option<String>,
    /// `"capacity"`, `"adaptive"` or a number.
    pub limit: Option<toml::Value>,
    /// Adaptive limit bounds.
    pub adaptive_min: Option<i64>,
    /// Adaptive limit bounds.
    pub adaptive_max: Option<i64>,
    /// Reserved share per priority class, in percent.
    pub reserved: Option<std::collections::BTreeMap<String, i64>>,
}

/// `[routes.rate_limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimit {
    /// Requests per second per key.
    pub requests_per_second: Option<i64>,
    /// `client_ip` or `header:NAME`.
    pub key: Option<String>,
    /// Requests a client may send above the rate, once.
    pub burst: Option<i64>,
    /// Most clients counted at once in this instance's memory.
    pub max_clients: Option<i64>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    /// Listen addresses.
    pub listen: Option<Vec<String>>,
    /// Worker threads.
    pub threads: Option<i64>,
    /// Grace period on shutdown.
    pub grace_period: Option<String>,
    /// Time to keep serving with readiness false before the listeners close.
    pub shutdown_delay: Option<String>,
    /// Idle connections to backends kept open for reuse, per worker thread.
    pub upstream_keepalive: Option<i64>,
    /// Degradation pages directory.
    pub pages: Option<String>,
    /// TLS listeners.
    pub tls: Option<Vec<FileTls>>,
    /// Largest request head (request line and headers).
    pub max_request_header_bytes: Option<toml::Value>,
    /// Time to receive a whole request head.
    pub header_timeout: Option<String>,
    /// Idle time between requests on a keep-alive connection.
    pub keepalive_timeout: Option<String>,
    /// Read buffer per shopper connection.
    pub read_buffer: Option<toml::Value>,
    /// Whether runs of `/` in a path become one.
    pub merge_slashes: Option<bool>,
    /// `reject` or `keep`: paths with `%2F`, `%5C` or `\`.
    pub escaped_slashes: Option<String>,
    /// Redirect plain-HTTP requests to HTTPS (every route's default).
    pub https_redirect: Option<bool>,
    /// The port HTTPS redirects name.
    pub https_port: Option<i64>,
    /// `[server.hsts]`.
    pub hsts: Option<FileHsts>,
    /// Networks whose PROXY header and forwarded headers are believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// The header a trusted proxy names the client in.
    pub client_ip_header: Option<String>,
    /// PROXY protocol header on the `listen` listeners.
    pub proxy_protocol: Option<String>,
}

/// `[[pools]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    /// Pool name.
    #[serde(default)]
    pub name: String,
    /// Balancing algorithm.
    pub balance: Option<String>,
    /// Consistent-hash key.
    pub hash_key: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Option<String>,
    /// Request timeout.
    pub request_timeout: Option<String>,
    /// How long an idle connection to a backend is kept for reuse.
    pub idle_timeout: Option<String>,
    /// Backends.
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    /// `[pools.health]`: active health checks.
    pub health: Option<FileHealth>,
    /// `[pools.outlier]`: passive outlier detection.
    pub outlier: Option<FileOutlier>,
    /// Healthy share (percent) under which the pool panics.
    pub panic_threshold: Option<i64>,
    /// Ramp-up time of a backend that became healthy.
    pub slow_start: Option<String>,
    /// `[pools.retry_budget]`.
    pub retry_budget: Option<FileRetryBudget>,
    /// Concurrent requests per backend.
    pub max_in_flight: Option<i64>,
    /// `[pools.queue]`.
    pub queue: Option<FileQueue>,
    /// The pool that takes this pool's traffic when none of its backends can.
    pub backup: Option<String>,
    /// How long the pool must be able to serve before traffic comes back from its backup.
    pub failback_after: Option<String>,
    /// `[pools.tls]`: TLS to the pool's backends.
    pub tls: Option<FileUpstreamTls>,
}

/// `[pools.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    /// Server name sent and checked.
    pub sni: Option<String>,
    /// CA certificates (PEM) the backends' certificates must chain to.
    pub ca_file: Option<String>,
    /// Whether the backends' certificates are checked.
    pub verify: Option<bool>,
    /// Client certificate chain (PEM).
    pub client_cert: Option<String>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<String>,
}

/// `[pools.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    /// `http` or `tcp`.
    pub kind: Option<String>,
    /// HTTP path to probe.
    pub path: Option<String>,
    /// HTTP method of the probe.
    pub method: Option<String>,
    /// Host header of the probe.
    pub host: Option<String>,
    /// Statuses that pass.
    pub expect_status: Option<Vec<i64>>,
    /// Time between probes.
    pub interval: Option<String>,
    /// Time a probe may take.
    pub timeout: Option<String>,
    /// Random extra delay added to each interval.
    pub jitter: Option<String>,
    /// Passing probes to become healthy.
    pub healthy_threshold: Option<i64>,
    /// Failing probes to become unhealthy.
    pub unhealthy_threshold: Option<i64>,
    /// Whether a new backend takes traffic before its first passing probe.
    pub start_healthy: Option<bool>,
}

/// `[pools.outlier]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlier {
    /// Consecutive gateway failures that eject.
    pub consecutive_gateway_failures: Option<i64>,
    /// Consecutive 5xx that eject.
    pub consecutive_5xx: Option<i64>,
    /// Ejection time per ejection so far.
    pub base_ejection: Option<String>,
    /// Longest ejection.
    pub max_ejection: Option<String>,
    /// Largest share of the pool ejected at once.
    pub max_ejected_percent: Option<i64>,
}

/// `[pools.retry_budget]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetryBudget {
    /// Retries as a percentage of recent requests.
    pub percent: Option<i64>,
    /// Retries always allowed per second.
    pub min_per_second: Option<i64>,
}

/// One entry of `backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    /// `IP:PORT` or `name:PORT`.
    #[serde(default)]
    pub addr: String,
    /// An SRV record's name, instead of `addr`.
    pub srv: Option<String>,
    /// Relative weight.
    pub weight: Option<i64>,
    /// Concurrent requests to this backend.
    pub max_in_flight: Option<i64>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    /// Route name.
    #[serde(default)]
    pub name: String,
    /// Host to match.
    pub host: Option<String>,
    /// Path prefix to match.
    pub path_prefix: Option<String>,
    /// Methods to match.
    pub methods: Option<Vec<String>>,
    /// Pool to send to.
    #[serde(default)]
    pub pool: String,
    /// Overall deadline of a request, retries included.
    pub timeout: Option<String>,
    /// `[routes.retry]`.
    pub retry: Option<Box<FileRetry>>,
    /// Priority class.
    pub priority: Option<String>,
    /// Replace upstream 5xx bodies with the page.
    pub intercept_errors: Option<bool>,
    /// Pages directory for this route.
    pub pages: Option<String>,
    /// `[routes.rate_limit]`.
    pub rate_limit: Option<Box<FileRateLimit>>,
    /// Largest request body.
    pub max_body_bytes: Option<toml::Value>,
    /// `[routes.idempotency]`.
    pub idempotency: Option<Box<FileIdempotency>>,
    /// `[routes.maintenance]`.
    pub maintenance: Option<Box<FileMaintenance>>,
    /// `[routes.stale]`.
    pub stale: Option<Box<FileStale>>,
    /// Redirect plain-HTTP requests to HTTPS.
    pub https_redirect: Option<bool>,
    /// Strip the path prefix from the path the backend gets.
    pub strip_prefix: Option<bool>,
    /// `[routes.request_headers]`.
    pub request_headers: Option<Box<FileHeaderRules>>,
    /// `[routes.response_headers]`.
    pub response_headers: Option<Box<FileHeaderRules>>,
    /// Idle limit of WebSockets, event streams and long polls.
    pub stream_idle_timeout: Option<String>,
    /// Every request on the route is a long poll.
    pub long_poll: Option<bool>,
}

/// `[server.hsts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHsts {
    /// How long browsers remember to use HTTPS.
    pub max_age: Option<String>,
    /// The rule covers subdomains.
    pub include_subdomains: Option<bool>,
    /// Ask to be preloaded into browsers.
    pub preload: Option<bool>,
}

/// `[routes.request_headers]`, `[routes.response_headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeaderRules {
    /// Headers set (replacing what was there).
    pub set: Option<std::collections::BTreeMap<String, String>>,
    /// Headers removed.
    pub remove: Option<Vec<String>>,
}

/// `[routes.stale]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStale {
    /// How long a good answer is kept.
    pub max_age: Option<String>,
    /// Memory for the route's copies.
    pub max_bytes: Option<toml::Value>,
    /// Statuses worth keeping.
    pub statuses: Option<Vec<i64>>,
    /// `"error"` and/or `"overload"`.
    pub when: Option<Vec<String>>,
    /// Keep and serve answers to requests with cookies or Authorization.
    pub private_ok: Option<bool>,
    /// Cookies that do not make a request private (besides ordergate's own).
    pub ignore_cookies: Option<Vec<String>>,
}

/// `[routes.idempotency]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdempotency {
    /// The header carrying the key.
    pub header: Option<String>,
    /// Methods whose requests are keyed.
    pub methods: Option<Vec<String>>,
    /// Whether a keyed method without a key is refused.
    pub required: Option<bool>,
    /// How long a record is kept.
    pub ttl: Option<String>,
    /// `none`, `client_ip`, `header:NAME` or `cookie:NAME`.
    pub scope: Option<String>,
    /// Answer headers never replayed, besides `Set-Cookie`.
    pub per_shopper_headers: Option<Vec<String>>,
    /// Whether the order servers honour the key themselves.
    pub backend_dedupes: Option<bool>,
    /// Memory for all records of the route.
    pub max_bytes: Option<toml::Value>,
    /// Largest answer kept for replays.
    pub max_response_bytes: Option<toml::Value>,
    /// How long a repeat waits for the first request.
    pub wait_for_first: Option<String>,
    /// Where shoppers see their orders.
    pub orders_url: Option<String>,
}

/// `[routes.retry]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    /// Most tries of one request, the first included.
    pub attempts: Option<i64>,
    /// Conditions to retry on.
    pub on: Option<Vec<String>>,
    /// Time one try may take.
    pub per_try_timeout: Option<String>,
    /// First backoff.
    pub backoff_base: Option<String>,
    /// Longest backoff.
    pub backoff_max: Option<String>,
    /// Header whose presence makes a non-idempotent request replayable.
    pub idempotency_key_header: Option<String>,
    /// Whether a request with an idempotency key may be retried after it reached a backend.
    pub retry_with_idempotency_key: Option<bool>,
    /// Methods this route treats as non-idempotent besides POST and PATCH.
    pub unsafe_methods: Option<Vec<String>>,
}

/// `[[rooms]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoom {
    /// Room name.
    #[serde(default)]
    pub name: String,
    /// Names of the routes it covers.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Most shoppers on the site at once.
    pub max_active: Option<i64>,
    /// New shoppers let in per minute.
    pub admit_per_minute: Option<i64>,
    /// How long a pass lasts after the last request.
    pub session: Option<String>,
    /// How long a pass lasts at all.
    pub max_session: Option<String>,
    /// Most shoppers waiting in line.
    pub max_waiting: Option<i64>,
    /// New tickets (or passes) one address may get a second.
    pub ticket_rate_per_address: Option<i64>,
    /// How often the waiting page checks again.
    pub refresh: Option<String>,
    /// How long a waiting shopper may go without checking in.
    pub ticket_timeout: Option<String>,
    /// HMAC key.
    pub secret: Option<String>,
    /// Environment variable holding the HMAC key.
    pub secret_env: Option<String>,
    /// `on_overload`, `always` or `off`.
    pub mode: Option<String>,
    /// `[rooms.bypass]`.
    pub bypass: Option<FileBypass>,
    /// RFC 3339 opening time (a TOML date-time or a string).
    pub opens_at: Option<toml::Value>,
}

/// `[rooms.bypass]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBypass {
    /// Path prefixes that never wait.
    pub paths: Option<Vec<String>>,
    /// Methods that never wait.
    pub methods: Option<Vec<String>>,
    /// A header whose presence (or value) never waits.
    pub header: Option<String>,
    /// The value the header must have.
    pub header_value: Option<String>,
}
