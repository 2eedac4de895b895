//! `FileConfig -> Config`: runs every check and returns all problems at once, each
//! with its key path, the bad value and what would fix it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use std::path::Path;

use super::file::{
    FileAdmin, FileBackend, FileHealth, FileLog, FileOutlier, FilePool, FileQueue, FileRateLimit,
    FileRetry, FileRetryBudget, FileRoute, FileServer,
};
use super::schema::entry_path;
use super::{
    parse_duration, AccessLog, AdminConfig, AdmissionConfig, BackendConfig, Balance, Config,
    ConfigError, FileConfig, HashKey, HealthConfig, LimitConfig, OutlierConfig, Pages, PoolConfig,
    Priority, Probe, RateKey, RateLimitConfig, RetryBudgetConfig, RetryConfig, RetryOn,
    RouteConfig, ServerConfig, TlsConfig,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_THREADS: usize = 2;
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
const DEFAULT_UPSTREAM_KEEPALIVE: u32 = 1024;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_WEIGHT: i64 = 1000;
const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const DEFAULT_MAX_REQUEST_HEADER_BYTES: u64 = 32 * KIB;
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_READ_BUFFER: u64 = 4 * KIB;
const DEFAULT_MAX_BODY_BYTES: u64 = MIB;
/// pingora's own ceiling for a request head (`MAX_HEADER_SIZE`).
const MAX_REQUEST_HEADER_BYTES: u64 = MIB - 1;

/// Collects problems while the checks run.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates a parsed file into a [`Config`], or returns every problem found.
pub(super) fn validate(file: FileConfig, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut problems = Problems::default();
    let server = server(&file.server, base, &mut problems);
    let admin = file.admin.as_ref().map(|a| admin(a, &mut problems));
    check_listeners_apart(&server, admin.as_ref(), &mut problems);
    let access_log = access_log(file.log.as_ref(), base, &mut problems);
    let pools: Vec<PoolConfig> = file
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| self::pool(i, pool, &mut problems))
        .collect();
    check_unique_pool_names(&file.pools, &mut problems);
    let routes = routes(&file.routes, &file.pools, base, &mut problems);
    let pages_dirs = file
        .server
        .pages
        .iter()
        .chain(file.routes.iter().filter_map(|r| r.pages.as_ref()))
        .map(|dir| base.join(dir))
        .collect();
    if problems.0.is_empty() {
        Ok(Config {
            server,
            pools,
            routes,
            admin,
            access_log,
            pages_dirs,
        })
    } else {
        Err(problems.0)
    }
}

fn admin(file: &FileAdmin, problems: &mut Problems) -> AdminConfig {
    let text = file.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = socket_addr(text).unwrap_or_else(|message| {
        problems.add("admin.listen", message);
        SocketAddr::from(([127, 0, 0, 1], 9901))
    });
    let token = match (&file.token, &file.token_env) {
        (Some(_), Some(_)) => {
            problems.add("admin", "set token or token_env, not both");
            None
        }
        (Some(token), None) => Some(token.clone()),
        (None, Some(var)) => {
            match std::env::var(var) {
                Ok(token) => Some(token),
                Err(_) => {
                    problems.add(
                    "admin.token_env",
                    format!("the environment variable {var:?} is not set; export it or use admin.token"),
                );
                    None
                }
            }
        }
        (None, None) => None,
    };
    if let Some(token) = &token {
        if token.len() < 16 || token.bytes().any(|b| !b.is_ascii_graphic()) {
            problems.add(
                "admin.token",
                "must be at least 16 printable characters without spaces",
            );
        }
    }
    if token.is_none() && !listen.ip().is_loopback() {
        problems.add(
            "admin",
            format!("listen {listen} is not a loopback address, so a token is required: set admin.token or admin.token_env"),
        );
    }
    AdminConfig { listen, token }
}

/// Two listeners on one port conflict when their addresses are equal or one
/// of them is the unspecified address (0.0.0.0 or [::] takes the port on every
/// address). Exact duplicates among the shopper listeners are reported where
/// they are parsed.
fn check_listeners_apart(
    server: &ServerConfig,
    admin: Option<&AdminConfig>,
    problems: &mut Problems,
) {
    let mut listeners: Vec<(String, SocketAddr)> = Vec::new();
    listeners.extend(
        server
            .listen
            .iter()
            .enumerate()
            .map(|(i, addr)| (format!("server.listen[{i}]"), *addr)),
    );
    listeners.extend(
        server
            .tls
            .iter()
            .enumerate()
            .map(|(i, tls)| (format!("server.tls[{i}].listen"), tls.listen)),
    );
    let shopper_listeners = listeners.len();
    if let Some(admin) = admin {
        listeners.push(("admin.listen".to_string(), admin.listen));
    }
    let overlap = |a: SocketAddr, b: SocketAddr| {
        a.port() == b.port()
            && a.port() != 0
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (j, (path, addr)) in listeners.iter().enumerate() {
        for (earlier_path, earlier) in &listeners[..j] {
            if !overlap(*addr, *earlier) || (j < shopper_listeners && addr == earlier) {
                continue;
            }
            let message = if addr == earlier {
                format!("{addr} is also {earlier_path}; every listener needs an address of its own")
            } else {
                format!(
                    "{addr} overlaps {earlier_path} ({earlier}): an unspecified address takes the port on every address; use another port"
                )
            };
            let message = if path == "admin.listen" {
                format!("{message} (the admin API's default is {DEFAULT_ADMIN_LISTEN})")
            } else {
                message
            };
            problems.add(path.clone(), message);
        }
    }
}

fn access_log(file: Option<&FileLog>, base: &Path, problems: &mut Problems) -> AccessLog {
    match file.and_then(|f| f.access.as_deref()) {
        None | Some("off") => AccessLog::Off,
        Some("stdout") => AccessLog::Stdout,
        Some("") => {
            problems.add(
                "log.access",
                "is empty; use \"off\", \"stdout\" or a file path",
            );
            AccessLog::Off
        }
        Some(path) => AccessLog::File(base.join(path)),
    }
}

fn server(file: &FileServer, base: &Path, problems: &mut Problems) -> ServerConfig {
    let listen_text = file
        .listen
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
    if listen_text.is_empty() {
        problems.add(
            "server.listen",
            format!("is empty; give at least one address, e.g. [\"{DEFAULT_LISTEN}\"]"),
        );
    }
    let mut listen = Vec::new();
    let mut seen = HashSet::new();
    for (i, text) in listen_text.iter().enumerate() {
        let path = format!("server.listen[{i}]");
        match socket_addr(text) {
            Ok(addr) if !seen.insert(addr) => {
                problems.add(path, format!("{text:?} is listed twice"))
            }
            Ok(addr) => listen.push(addr),
            Err(message) => problems.add(path, message),
        }
    }
    let threads = match file.threads {
        None => DEFAULT_THREADS,
        Some(n @ 1..=256) => n as usize,
        Some(n) => {
            problems.add(
                "server.threads",
                format!("{n} is out of range; use 1 to 256 (one per core is typical)"),
            );
            DEFAULT_THREADS
        }
    };
    let grace_period = duration_or(
        "server.grace_period",
        file.grace_period.as_deref(),
        DEFAULT_GRACE_PERIOD,
        true,
        problems,
    );
    let shutdown_delay = duration_or(
        "server.shutdown_delay",
        file.shutdown_delay.as_deref(),
        Duration::ZERO,
        true,
        problems,
    );
    let upstream_keepalive = count(
        "server.upstream_keepalive",
        file.upstream_keepalive,
        DEFAULT_UPSTREAM_KEEPALIVE,
        // pingora's pool misbehaves at 0 (it keeps connections and warns on every request).
        1,
        problems,
    ) as usize;
    let mut tls = Vec::new();
    for (i, entry) in file.tls.iter().flatten().enumerate() {
        let at = format!("server.tls[{i}]");
        let mut missing = false;
        for (key, value) in [
            ("listen", &entry.listen),
            ("cert", &entry.cert),
            ("key", &entry.key),
        ] {
            if value.is_empty() {
                problems.add(
                    format!("{at}.{key}"),
                    "is required: a TLS listener needs listen, cert and key",
                );
                missing = true;
            }
        }
        if missing {
            continue;
        }
        let listen_addr = match socket_addr(&entry.listen) {
            Ok(addr) if seen.insert(addr) => Some(addr),
            Ok(_) => {
                problems.add(
                    format!("{at}.listen"),
                    format!("{:?} is already a listener", entry.listen),
                );
                None
            }
            Err(message) => {
                problems.add(format!("{at}.listen"), message);
                None
            }
        };
        let cert = base.join(&entry.cert);
        let key = base.join(&entry.key);
        let cert_key = match super::tls::load(&cert, &key) {
            Ok(cert_key) => Some(cert_key),
            Err((file, message)) => {
                problems.add(format!("{at}.{}", file.key_name()), message);
                None
            }
        };
        if let (Some(listen), Some(cert_key)) = (listen_addr, cert_key) {
            tls.push(TlsConfig {
                listen,
                cert,
                key,
                cert_key,
                http2: entry.http2.unwrap_or(true),
            });
        }
    }
    let pages = match &file.pages {
        None => Pages::builtin(),
        Some(dir) => load_pages("server.pages", base, dir, problems).unwrap_or_else(Pages::builtin),
    };
    let max_request_header_bytes = size(
        "server.max_request_header_bytes",
        file.max_request_header_bytes.as_ref(),
        DEFAULT_MAX_REQUEST_HEADER_BYTES,
        (KIB, MAX_REQUEST_HEADER_BYTES),
        problems,
    ) as usize;
    let header_timeout = duration_or(
        "server.header_timeout",
        file.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
        false,
        problems,
    );
    let keepalive_timeout = duration_or(
        "server.keepalive_timeout",
        file.keepalive_timeout.as_deref(),
        DEFAULT_KEEPALIVE_TIMEOUT,
        true,
        problems,
    );
    let read_buffer = size(
        "server.read_buffer",
        file.read_buffer.as_ref(),
        DEFAULT_READ_BUFFER,
        (512, 4 * MIB),
        problems,
    ) as usize;
    ServerConfig {
        listen,
        threads,
        grace_period,
        shutdown_delay,
        upstream_keepalive,
        tls,
        max_request_header_bytes,
        header_timeout,
        keepalive_timeout,
        read_buffer,
        pages,
    }
}

fn load_pages(at: &str, base: &Path, dir: &str, problems: &mut Problems) -> Option<Pages> {
    let full = base.join(dir);
    match Pages::load(&full) {
        Ok(pages) => Some(pages),
        Err(errors) => {
            for error in errors {
                problems.add(at, format!("{}: {error}", full.display()));
            }
            None
        }
    }
}

fn pool(index: usize, file: &FilePool, problems: &mut Problems) -> PoolConfig {
    let at = entry_path("pools", index, &file.name);
    check_name(&at, &file.name, problems);
    let balance = balance(&at, file, problems);
    let connect_timeout = duration_or(
        &format!("{at}.connect_timeout"),
        file.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT,
        false,
        problems,
    );
    let request_timeout = duration_or(
        &format!("{at}.request_timeout"),
        file.request_timeout.as_deref(),
        DEFAULT_REQUEST_TIMEOUT,
        false,
        problems,
    );
    let idle_timeout = duration_or(
        &format!("{at}.idle_timeout"),
        file.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
        false,
        problems,
    );
    if file.backends.is_empty() {
        problems.add(
            format!("{at}.backends"),
            "is empty; list at least one backend, e.g. [ { addr = \"127.0.0.1:9001\" } ]",
        );
    }
    let max_in_flight = count(
        &format!("{at}.max_in_flight"),
        file.max_in_flight,
        DEFAULT_MAX_IN_FLIGHT,
        1,
        problems,
    );
    let mut backends = Vec::new();
    let mut seen = HashSet::new();
    for (i, entry) in file.backends.iter().enumerate() {
        if let Some(backend) = backend(
            &format!("{at}.backends[{i}]"),
            entry,
            max_in_flight,
            problems,
        ) {
            if seen.insert(backend.addr) {
                backends.push(backend);
            } else {
                problems.add(
                    format!("{at}.backends[{i}].addr"),
                    format!(
                        "{:?} is listed twice in this pool; raise its weight instead",
                        entry.addr
                    ),
                );
            }
        }
    }
    PoolConfig {
        name: file.name.clone(),
        balance,
        connect_timeout,
        request_timeout,
        idle_timeout,
        backends,
        health: file
            .health
            .as_ref()
            .map(|h| health(&format!("{at}.health"), h, problems)),
        outlier: outlier(&format!("{at}.outlier"), file.outlier.as_ref(), problems),
        panic_threshold: percent(
            &format!("{at}.panic_threshold"),
            file.panic_threshold,
            50,
            problems,
        ),
        slow_start: duration_or(
            &format!("{at}.slow_start"),
            file.slow_start.as_deref(),
            Duration::ZERO,
            true,
            problems,
        ),
        retry_budget: retry_budget(
            &format!("{at}.retry_budget"),
            file.retry_budget.as_ref(),
            problems,
        ),
        admission: admission(&format!("{at}.queue"), file.queue.as_ref(), problems),
    }
}

fn admission(at: &str, file: Option<&FileQueue>, problems: &mut Problems) -> AdmissionConfig {
    let max_waiting = match file.and_then(|f| f.max_waiting) {
        None => 1000,
        Some(n @ 0..=1_000_000) => n as usize,
        Some(n) => {
            problems.add(
                format!("{at}.max_waiting"),
                format!("{n} is out of range; use 0 (no queue) to 1000000"),
            );
            1000
        }
    };
    let queue_timeout = duration_or(
        &format!("{at}.timeout"),
        file.and_then(|f| f.timeout.as_deref()),
        Duration::from_secs(5),
        false,
        problems,
    );
    let bound = |key: &str, value: Option<i64>, default: usize, problems: &mut Problems| {
        count(&format!("{at}.{key}"), value, default as u32, 1, problems) as usize
    };
    let limit = match file.and_then(|f| f.limit.as_ref()) {
        None => LimitConfig::Capacity,
        Some(toml::Value::String(s)) if s == "capacity" => LimitConfig::Capacity,
        Some(toml::Value::String(s)) if s == "adaptive" => {
            let min = bound(
                "adaptive_min",
                file.and_then(|f| f.adaptive_min),
                4,
                problems,
            );
            let max = bound(
                "adaptive_max",
                file.and_then(|f| f.adaptive_max),
                1000,
                problems,
            );
            if min > max {
                problems.add(
                    format!("{at}.adaptive_min"),
                    format!("{min} is above adaptive_max {max}"),
                );
            }
            LimitConfig::Adaptive {
                min,
                max,
                initial: min.max(20).min(max),
            }
        }
        Some(toml::Value::Integer(n)) if (1..=1_000_000).contains(n) => {
            LimitConfig::Fixed(*n as usize)
        }
        Some(other) => {
            problems.add(
                format!("{at}.limit"),
                format!("{other} is not a limit; use \"capacity\", \"adaptive\" or a number of concurrent requests"),
            );
            LimitConfig::Capacity
        }
    };
    if !matches!(limit, LimitConfig::Adaptive { .. }) {
        for (key, set) in [
            ("adaptive_min", file.and_then(|f| f.adaptive_min).is_some()),
            ("adaptive_max", file.and_then(|f| f.adaptive_max).is_some()),
        ] {
            if set {
                problems.add(
                    format!("{at}.{key}"),
                    "only applies to limit = \"adaptive\"",
                );
            }
        }
    }
    let mut reserved = [0u8; 4];
    for (class, share) in file.and_then(|f| f.reserved.as_ref()).into_iter().flatten() {
        match priority(class) {
            Ok(p) => {
                reserved[p as usize] =
                    percent(&format!("{at}.reserved.{class}"), Some(*share), 0, problems)
            }
            Err(message) => problems.add(format!("{at}.reserved.{class}"), message),
        }
    }
    let total: u32 = reserved.iter().map(|r| u32::from(*r)).sum();
    if total > 100 {
        problems.add(
            format!("{at}.reserved"),
            format!("shares add up to {total}%; they must add up to at most 100"),
        );
    }
    AdmissionConfig {
        max_waiting,
        queue_timeout,
        reserved,
        limit,
    }
}

fn priority(name: &str) -> Result<Priority, String> {
    Priority::from_str(name).map_err(|_| {
        format!(
            "{name:?} is not a priority class; use \"critical\", \"high\", \"normal\" or \"low\""
        )
    })
}

fn rate_limit(at: &str, file: &FileRateLimit, problems: &mut Problems) -> RateLimitConfig {
    let requests_per_second = match file.requests_per_second {
        Some(n @ 1..=1_000_000) => n as u32,
        None => {
            problems.add(
                format!("{at}.requests_per_second"),
                "is required: the requests per second allowed per client key, e.g. 20",
            );
            1
        }
        Some(n) => {
            problems.add(
                format!("{at}.requests_per_second"),
                format!("{n} is out of range; use 1 to 1000000"),
            );
            1
        }
    };
    let key = match file.key.as_deref() {
        None | Some("client_ip") => RateKey::ClientIp,
        Some(text) => {
            match text.strip_prefix("header:").map(HeaderName::from_str) {
                Some(Ok(name)) => RateKey::Header(name),
                _ => {
                    problems.add(
                    format!("{at}.key"),
                    format!("{text:?} is not a rate-limit key; use \"client_ip\" or \"header:NAME\""),
                );
                    RateKey::ClientIp
                }
            }
        }
    };
    RateLimitConfig {
        requests_per_second,
        key,
    }
}

fn health(at: &str, file: &FileHealth, problems: &mut Problems) -> HealthConfig {
    let probe = match file.kind.as_deref().unwrap_or("http") {
        "http" => {
            let path = file.path.clone().unwrap_or_else(|| "/health".to_string());
            if !path.starts_with('/') || path.contains([' ', '\r', '\n']) {
                problems.add(
                    format!("{at}.path"),
                    format!("{path:?} is not a request path; it must start with \"/\", e.g. \"/health\""),
                );
            }
            let method = match file.method.as_deref() {
                None => Method::GET,
                Some(name) => method(name).unwrap_or_else(|message| {
                    problems.add(format!("{at}.method"), message);
                    Method::GET
                }),
            };
            let host = file.host.clone();
            if let Some(host) = &host {
                if host.is_empty() || host.contains([' ', '\r', '\n', '/']) {
                    problems.add(format!("{at}.host"), format!("{host:?} is not a host name"));
                }
            }
            let expect_status = match &file.expect_status {
                None => vec![200],
                Some(list) if list.is_empty() => {
                    problems.add(
                        format!("{at}.expect_status"),
                        "is empty, so every probe would fail; list the passing statuses, e.g. [200]",
                    );
                    vec![200]
                }
                Some(list) => list
                    .iter()
                    .enumerate()
                    .filter_map(|(i, code)| {
                        status(&format!("{at}.expect_status[{i}]"), *code, problems)
                    })
                    .collect(),
            };
            Probe::Http {
                method,
                path,
                host,
                expect_status,
            }
        }
        "tcp" => {
            for (key, set) in [
                ("path", file.path.is_some()),
                ("method", file.method.is_some()),
                ("host", file.host.is_some()),
                ("expect_status", file.expect_status.is_some()),
            ] {
                if set {
                    problems.add(
                        format!("{at}.{key}"),
                        "only applies to kind = \"http\"; remove it or change kind",
                    );
                }
            }
            Probe::Tcp
        }
        other => {
            problems.add(
                format!("{at}.kind"),
                format!("{other:?} is not a probe kind; use \"http\" or \"tcp\""),
            );
            Probe::Tcp
        }
    };
    let interval = duration_or(
        &format!("{at}.interval"),
        file.interval.as_deref(),
        Duration::from_secs(1),
        false,
        problems,
    );
    let timeout = duration_or(
        &format!("{at}.timeout"),
        file.timeout.as_deref(),
        Duration::from_millis(500),
        false,
        problems,
    );
    if timeout > interval {
        problems.add(
            format!("{at}.timeout"),
            format!("{timeout:?} is longer than the interval {interval:?}; probes would overlap, so make it at most the interval"),
        );
    }
    HealthConfig {
        probe,
        interval,
        timeout,
        jitter: duration_or(
            &format!("{at}.jitter"),
            file.jitter.as_deref(),
            interval / 10,
            true,
            problems,
        ),
        healthy_threshold: count(
            &format!("{at}.healthy_threshold"),
            file.healthy_threshold,
            2,
            1,
            problems,
        ),
        unhealthy_threshold: count(
            &format!("{at}.unhealthy_threshold"),
            file.unhealthy_threshold,
            2,
            1,
            problems,
        ),
        start_healthy: file.start_healthy.unwrap_or(false),
    }
}

fn outlier(at: &str, file: Option<&FileOutlier>, problems: &mut Problems) -> OutlierConfig {
    let get = |f: fn(&FileOutlier) -> Option<i64>| file.and_then(f);
    let get_str = |f: fn(&FileOutlier) -> Option<&String>| file.and_then(f).map(String::as_str);
    let base_ejection = duration_or(
        &format!("{at}.base_ejection"),
        get_str(|f| f.base_ejection.as_ref()),
        Duration::from_secs(5),
        false,
        problems,
    );
    let max_ejection = duration_or(
        &format!("{at}.max_ejection"),
        get_str(|f| f.max_ejection.as_ref()),
        Duration::from_secs(60),
        false,
        problems,
    );
    if max_ejection < base_ejection {
        problems.add(
            format!("{at}.max_ejection"),
            format!("{max_ejection:?} is shorter than base_ejection {base_ejection:?}; make it at least as long"),
        );
    }
    OutlierConfig {
        consecutive_gateway_failures: count(
            &format!("{at}.consecutive_gateway_failures"),
            get(|f| f.consecutive_gateway_failures),
            3,
            0,
            problems,
        ),
        consecutive_5xx: count(
            &format!("{at}.consecutive_5xx"),
            get(|f| f.consecutive_5xx),
            5,
            0,
            problems,
        ),
        base_ejection,
        max_ejection,
        max_ejected_percent: percent(
            &format!("{at}.max_ejected_percent"),
            get(|f| f.max_ejected_percent),
            50,
            problems,
        ),
    }
}

fn retry_budget(
    at: &str,
    file: Option<&FileRetryBudget>,
    problems: &mut Problems,
) -> RetryBudgetConfig {
    RetryBudgetConfig {
        percent: percent(
            &format!("{at}.percent"),
            file.and_then(|f| f.percent),
            20,
            problems,
        ),
        min_per_second: count(
            &format!("{at}.min_per_second"),
            file.and_then(|f| f.min_per_second),
            3,
            0,
            problems,
        ),
    }
}

fn retry(at: &str, file: Option<&FileRetry>, problems: &mut Problems) -> RetryConfig {
    let duration =
        |key: &str, text: Option<&String>, default: Duration, problems: &mut Problems| {
            duration_or(
                &format!("{at}.{key}"),
                text.map(String::as_str),
                default,
                false,
                problems,
            )
        };
    let on = match file.and_then(|f| f.on.as_ref()) {
        None => RetryOn {
            connect_failure: true,
            reset: true,
            timeout: true,
            statuses: vec![502, 503, 504],
        },
        Some(list) => {
            let mut on = RetryOn::default();
            for (i, item) in list.iter().enumerate() {
                match item.as_str() {
                    "connect_failure" => on.connect_failure = true,
                    "reset" => on.reset = true,
                    "timeout" => on.timeout = true,
                    code => match code.parse::<i64>() {
                        Ok(code) if (500..=599).contains(&code) => on.statuses.push(code as u16),
                        _ => problems.add(
                            format!("{at}.on[{i}]"),
                            format!("{item:?} is not a retry condition; use \"connect_failure\", \"reset\", \"timeout\" or a 5xx status such as \"503\""),
                        ),
                    },
                }
            }
            on
        }
    };
    let backoff_base = duration(
        "backoff_base",
        file.and_then(|f| f.backoff_base.as_ref()),
        Duration::from_millis(25),
        problems,
    );
    let backoff_max = duration(
        "backoff_max",
        file.and_then(|f| f.backoff_max.as_ref()),
        Duration::from_millis(250),
        problems,
    );
    if backoff_max < backoff_base {
        problems.add(
            format!("{at}.backoff_max"),
            format!("{backoff_max:?} is shorter than backoff_base {backoff_base:?}; make it at least as long"),
        );
    }
    let header_text = file
        .and_then(|f| f.idempotency_key_header.clone())
        .unwrap_or_else(|| "idempotency-key".to_string());
    let idempotency_key_header = HeaderName::from_str(&header_text).unwrap_or_else(|_| {
        problems.add(
            format!("{at}.idempotency_key_header"),
            format!("{header_text:?} is not a valid header name, e.g. \"idempotency-key\""),
        );
        HeaderName::from_static("idempotency-key")
    });
    let mut unsafe_methods = vec![Method::POST, Method::PATCH];
    for (i, name) in file
        .and_then(|f| f.unsafe_methods.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        match method(name) {
            Ok(m) if !unsafe_methods.contains(&m) => unsafe_methods.push(m),
            Ok(_) => {}
            Err(message) => problems.add(format!("{at}.unsafe_methods[{i}]"), message),
        }
    }
    RetryConfig {
        attempts: match file.and_then(|f| f.attempts) {
            None => 3,
            Some(n @ 1..=10) => n as u32,
            Some(n) => {
                problems.add(
                    format!("{at}.attempts"),
                    format!("{n} is out of range; use 1 (no retries) to 10"),
                );
                3
            }
        },
        on,
        per_try_timeout: file.and_then(|f| f.per_try_timeout.as_ref()).map(|text| {
            duration(
                "per_try_timeout",
                Some(text),
                Duration::from_secs(1),
                problems,
            )
        }),
        backoff_base,
        backoff_max,
        idempotency_key_header,
        retry_with_idempotency_key: file
            .and_then(|f| f.retry_with_idempotency_key)
            .unwrap_or(true),
        unsafe_methods,
    }
}

fn status(at: &str, code: i64, problems: &mut Problems) -> Option<u16> {
    if (100..=599).contains(&code) {
        Some(code as u16)
    } else {
        problems.add(at, format!("{code} is not an HTTP status; use 100 to 599"));
        None
    }
}

fn percent(at: &str, value: Option<i64>, default: u8, problems: &mut Problems) -> u8 {
    match value {
        None => default,
        Some(v @ 0..=100) => v as u8,
        Some(v) => {
            problems.add(at, format!("{v} is not a percentage; use 0 to 100"));
            default
        }
    }
}

/// A size in bytes, written as a whole number (`65536`) or with a unit
/// (`"64KiB"`, `"1MiB"`, `"512B"`), within `range`.
fn size(
    at: &str,
    value: Option<&toml::Value>,
    default: u64,
    range: (u64, u64),
    problems: &mut Problems,
) -> u64 {
    let Some(value) = value else {
        return default;
    };
    let parsed = match value {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(text) => parse_size(text),
        _ => None,
    };
    match parsed {
        Some(bytes) if (range.0..=range.1).contains(&bytes) => bytes,
        Some(bytes) => {
            problems.add(
                at,
                format!(
                    "{bytes} bytes is out of range; use {} to {} bytes",
                    range.0, range.1
                ),
            );
            default
        }
        None => {
            problems.add(
                at,
                format!("{value} is not a size; write bytes (65536) or with a unit: \"64KiB\", \"1MiB\""),
            );
            default
        }
    }
}

/// `"64KiB"` → 65536. Units: B, KiB (or KB, K), MiB (or MB, M); 1024-based.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit = match text[digits..].trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" | "kb" => KIB,
        "M" | "MB" | "MiB" | "m" | "mb" => MIB,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// A whole number of at least `min` (and at most a million, to catch typos).
fn count(at: &str, value: Option<i64>, default: u32, min: i64, problems: &mut Problems) -> u32 {
    match value {
        None => default,
        Some(v) if (min..=1_000_000).contains(&v) => v as u32,
        Some(v) => {
            problems.add(
                at,
                format!("{v} is out of range; use a whole number from {min} to 1000000"),
            );
            default
        }
    }
}

fn balance(at: &str, file: &FilePool, problems: &mut Problems) -> Balance {
    const NAMES: &str = "round_robin, random, least_request, peak_ewma, consistent_hash";
    let name = file.balance.as_deref().unwrap_or("round_robin");
    let balance = match name {
        "round_robin" => Balance::RoundRobin,
        "random" => Balance::Random,
        "least_request" => Balance::LeastRequest,
        "peak_ewma" => Balance::PeakEwma,
        "consistent_hash" => {
            let Some(text) = file.hash_key.as_deref() else {
                problems.add(
                    format!("{at}.hash_key"),
                    "is required when balance = \"consistent_hash\"; e.g. \"header:x-cart-id\", \"cookie:cart\" or \"client_ip\"",
                );
                return Balance::RoundRobin;
            };
            match hash_key(text) {
                Ok(key) => return Balance::ConsistentHash(key),
                Err(message) => {
                    problems.add(format!("{at}.hash_key"), message);
                    return Balance::RoundRobin;
                }
            }
        }
        other => {
            problems.add(
                format!("{at}.balance"),
                format!("{other:?} is not an algorithm; use one of: {NAMES}"),
            );
            Balance::RoundRobin
        }
    };
    if let Some(key) = &file.hash_key {
        problems.add(
            format!("{at}.hash_key"),
            format!(
                "{key:?} is only used with balance = \"consistent_hash\" (this pool uses {name:?}); remove it or change balance"
            ),
        );
    }
    balance
}

fn hash_key(text: &str) -> Result<HashKey, String> {
    let usage = "use \"header:NAME\", \"cookie:NAME\" or \"client_ip\"";
    if text == "client_ip" {
        return Ok(HashKey::ClientIp);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::from_str(name)
            .map(HashKey::Header)
            .map_err(|_| format!("{text:?}: {name:?} is not a valid header name; {usage}"));
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        return if valid {
            Ok(HashKey::Cookie(name.to_string()))
        } else {
            Err(format!(
                "{text:?}: {name:?} is not a valid cookie name; {usage}"
            ))
        };
    }
    Err(format!("{text:?} is not a hash key; {usage}"))
}

fn backend(
    at: &str,
    file: &FileBackend,
    pool_max_in_flight: u32,
    problems: &mut Problems,
) -> Option<BackendConfig> {
    let max_in_flight = count(
        &format!("{at}.max_in_flight"),
        file.max_in_flight,
        pool_max_in_flight,
        1,
        problems,
    );
    let weight = match file.weight {
        None => 1,
        Some(w @ 1..=MAX_WEIGHT) => w as u32,
        Some(w) => {
            problems.add(
                format!("{at}.weight"),
                format!(
                    "{w} is out of range; use 1 to {MAX_WEIGHT} (remove the backend to send it nothing)"
                ),
            );
            1
        }
    };
    if file.addr.is_empty() {
        problems.add(
            format!("{at}.addr"),
            "is required: the backend's IP:PORT, e.g. \"127.0.0.1:9001\"",
        );
        return None;
    }
    match socket_addr(&file.addr) {
        Ok(addr) => Some(BackendConfig {
            addr,
            weight,
            max_in_flight,
        }),
        Err(message) => {
            problems.add(format!("{at}.addr"), message);
            None
        }
    }
}

fn check_unique_pool_names(pools: &[FilePool], problems: &mut Problems) {
    let mut seen = HashSet::new();
    for (i, pool) in pools.iter().enumerate() {
        if !seen.insert(pool.name.as_str()) {
            problems.add(
                entry_path("pools", i, &pool.name),
                "this pool name is already used by an earlier pool; pool names must be unique",
            );
        }
    }
}

fn routes(
    files: &[FileRoute],
    pools: &[FilePool],
    base: &Path,
    problems: &mut Problems,
) -> Vec<RouteConfig> {
    if files.is_empty() {
        problems.add(
            "routes",
            "no routes are defined; add a [[routes]] table with a name and a pool",
        );
    }
    let mut names = HashSet::new();
    let mut matchers = Vec::new();
    let mut routes = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let at = entry_path("routes", i, &file.name);
        check_name(&at, &file.name, problems);
        if !names.insert(file.name.as_str()) {
            problems.add(
                &at,
                "this route name is already used by an earlier route; route names must be unique",
            );
        }
        let route = route(&at, file, pools, base, problems);
        let matcher = (
            route.host.clone(),
            route.path_prefix.clone(),
            route.methods.clone(),
        );
        if let Some(earlier) = matchers.iter().position(|m| *m == matcher) {
            problems.add(
                &at,
                format!(
                    "matches exactly the same requests as routes[{earlier}] {:?}, so it would never be used; change its host, path_prefix or methods",
                    files[earlier].name
                ),
            );
        }
        matchers.push(matcher);
        routes.push(route);
    }
    routes
}

fn route(
    at: &str,
    file: &FileRoute,
    pools: &[FilePool],
    base: &Path,
    problems: &mut Problems,
) -> RouteConfig {
    let pool = match pools.iter().position(|p| p.name == file.pool) {
        Some(index) => index,
        None if file.pool.is_empty() => {
            let defined: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            problems.add(
                format!("{at}.pool"),
                format!(
                    "is required: the pool that serves the route (defined: {})",
                    defined.join(", ")
                ),
            );
            0
        }
        None => {
            let defined: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
            let defined = if defined.is_empty() {
                "no pools are defined; add a [[pools]] table".to_string()
            } else {
                format!("defined: {}", defined.join(", "))
            };
            problems.add(
                at,
                format!("pool {:?} is not defined ({defined})", file.pool),
            );
            0
        }
    };
    let host = file.host.as_ref().and_then(|host| {
        let host = host.to_ascii_lowercase();
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            Some(host)
        } else {
            problems.add(
                format!("{at}.host"),
                format!(
                    "{host:?} is not a host name; write the bare name without scheme, port or path, e.g. \"shop.example\""
                ),
            );
            None
        }
    });
    let path_prefix = file.path_prefix.clone().unwrap_or_else(|| "/".to_string());
    if !path_prefix.starts_with('/') || path_prefix.contains(['?', '#', ' ']) {
        problems.add(
            format!("{at}.path_prefix"),
            format!("{path_prefix:?} is not a path prefix; it must start with \"/\" and hold no query, e.g. \"/api/orders\""),
        );
    }
    let methods = file.methods.as_ref().map(|names| {
        if names.is_empty() {
            problems.add(
                format!("{at}.methods"),
                "is empty, so the route matches nothing; list methods or remove the key to accept any",
            );
        }
        names
            .iter()
            .enumerate()
            .filter_map(|(j, name)| match method(name) {
                Ok(method) => Some(method),
                Err(message) => {
                    problems.add(format!("{at}.methods[{j}]"), message);
                    None
                }
            })
            .collect()
    });
    let timeout = duration_or(
        &format!("{at}.timeout"),
        file.timeout.as_deref(),
        Duration::from_secs(15),
        false,
        problems,
    );
    RouteConfig {
        name: file.name.clone(),
        host,
        path_prefix,
        methods,
        pool,
        timeout,
        retry: retry(&format!("{at}.retry"), file.retry.as_ref(), problems),
        priority: match file.priority.as_deref() {
            None => Priority::Normal,
            Some(name) => priority(name).unwrap_or_else(|message| {
                problems.add(format!("{at}.priority"), message);
                Priority::Normal
            }),
        },
        intercept_errors: file.intercept_errors.unwrap_or(true),
        pages: file
            .pages
            .as_ref()
            .and_then(|dir| load_pages(&format!("{at}.pages"), base, dir, problems)),
        rate_limit: file
            .rate_limit
            .as_ref()
            .map(|r| rate_limit(&format!("{at}.rate_limit"), r, problems)),
        max_body_bytes: size(
            &format!("{at}.max_body_bytes"),
            file.max_body_bytes.as_ref(),
            DEFAULT_MAX_BODY_BYTES,
            (0, 1 << 40),
            problems,
        ),
    }
}

fn method(name: &str) -> Result<Method, String> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    if KNOWN.contains(&name) {
        Method::from_str(name).map_err(|e| format!("{name:?}: {e}"))
    } else if KNOWN.contains(&name.to_ascii_uppercase().as_str()) {
        Err(format!(
            "{name:?} must be upper case: {:?}",
            name.to_ascii_uppercase()
        ))
    } else {
        Err(format!(
            "{name:?} is not an HTTP method; use {}",
            KNOWN.join(", ")
        ))
    }
}

/// Names become metric labels and log fields: keep them short and plain.
fn check_name(at: &str, name: &str, problems: &mut Problems) {
    if name.is_empty() {
        problems.add(
            format!("{at}.name"),
            "is required: a name of 1 to 64 letters, digits, '_' or '-', used in logs and metrics",
        );
        return;
    }
    let valid = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        problems.add(
            format!("{at}.name"),
            format!("{name:?} is not a valid name; use 1 to 64 letters, digits, '_' or '-'"),
        );
    }
}

fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        format!(
            "{text:?} is not an IP:PORT address; write e.g. \"127.0.0.1:9001\" or \"[::1]:9001\""
        )
    })
}

fn duration_or(
    path: &str,
    text: Option<&str>,
    default: Duration,
    zero_allowed: bool,
    problems: &mut Problems,
) -> Duration {
    let Some(text) = text else {
        return default;
    };
    match parse_duration(text) {
        Ok(d) if d.is_zero() && !zero_allowed => {
            problems.add(path, format!("{text:?} must be longer than zero"));
            default
        }
        Ok(d) => d,
        Err(message) => {
            problems.add(path, message);
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    const GOOD: &str = r#"
        [server]
        listen = ["127.0.0.1:8080"]
        threads = 2
        [[pools]]
        name = "orders"
        balance = "consistent_hash"
        hash_key = "header:x-cart-id"
        connect_timeout = "500ms"
        request_timeout = "5s"
        backends = [ { addr = "127.0.0.1:9001", weight = 1 }, { addr = "127.0.0.1:9002", weight = 2 } ]
        [[pools]]
        name = "catalog"
        backends = [ { addr = "127.0.0.1:9003" } ]
        [[routes]]
        name = "checkout"
        host = "Shop.Example"
        path_prefix = "/api/orders"
        methods = ["POST"]
        pool = "orders"
        [[routes]]
        name = "browse"
        pool = "catalog"
    "#;

    #[test]
    fn accepts_the_documented_shape_and_resolves_references() {
        let config = Config::from_toml(GOOD).expect("valid");
        assert_eq!(config.server.threads, 2);
        assert_eq!(
            config.pools[0].balance,
            Balance::ConsistentHash(HashKey::Header(HeaderName::from_static("x-cart-id")))
        );
        assert_eq!(config.pools[0].connect_timeout, Duration::from_millis(500));
        assert_eq!(config.pools[1].request_timeout, DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(config.pools[1].idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(config.server.upstream_keepalive, 1024);
        assert_eq!(config.pools[0].backends[1].weight, 2);
        assert_eq!(config.routes[0].host.as_deref(), Some("shop.example"));
        assert_eq!(config.routes[0].methods, Some(vec![Method::POST]));
        assert_eq!(config.routes[1].pool, 1);
        assert_eq!(config.routes[1].path_prefix, "/");
    }

    #[test]
    fn reports_every_error_with_its_key_path() {
        let text = r#"
            [server]
            listen = ["localhost"]
            upstream_keepalive = 0
            [[pools]]
            name = "orders"
            balance = "fastest"
            request_timeout = "5"
            idle_timeout = "0s"
            backends = [ { addr = "127.0.0.1:9001", weight = 0 } ]
            [[routes]]
            name = "checkout"
            methods = ["post"]
            pool = "payment"
        "#;
        let errors = errors(text);
        let expected = [
            "server.listen[0]: \"localhost\" is not an IP:PORT address",
            "server.upstream_keepalive: 0 is out of range",
            "pools[0] \"orders\".idle_timeout: ",
            "pools[0] \"orders\".balance: \"fastest\" is not an algorithm",
            "pools[0] \"orders\".request_timeout: \"5\" has no unit",
            "pools[0] \"orders\".backends[0].weight: 0 is out of range",
            "routes[0] \"checkout\".methods[0]: \"post\" must be upper case",
            "routes[0] \"checkout\": pool \"payment\" is not defined (defined: orders)",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for want in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn rejects_unknown_keys_with_their_name() {
        let errors = errors("[server]\nlisten = [\"127.0.0.1:1\"]\nthread = 2\n");
        assert_eq!(
            errors,
            [
                "server.thread: unknown key; did you mean `threads`?",
                "routes: no routes are defined; add a [[routes]] table with a name and a pool",
            ]
        );
    }

    #[test]
    fn consistent_hash_needs_a_valid_key_and_other_algorithms_reject_one() {
        let base = |balance: &str, key: &str| {
            format!(
                "[[pools]]\nname = \"p\"\nbalance = \"{balance}\"\n{key}\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n"
            )
        };
        assert!(errors(&base("consistent_hash", ""))
            .iter()
            .any(|e| e.contains("hash_key: is required")));
        assert!(errors(&base("consistent_hash", "hash_key = \"body\""))
            .iter()
            .any(|e| e.contains("is not a hash key")));
        assert!(errors(&base("round_robin", "hash_key = \"client_ip\""))
            .iter()
            .any(|e| e.contains("only used with")));
        assert!(errors(&base("consistent_hash", "hash_key = \"cookie:cart\"")).is_empty());
    }

    #[test]
    fn rejects_duplicates_and_shadowed_routes() {
        let text = r#"
            [[pools]]
            name = "p"
            backends = [ { addr = "127.0.0.1:1" }, { addr = "127.0.0.1:1" } ]
            [[pools]]
            name = "p"
            backends = [ { addr = "127.0.0.1:2" } ]
            [[routes]]
            name = "a"
            path_prefix = "/x"
            pool = "p"
            [[routes]]
            name = "b"
            path_prefix = "/x"
            pool = "p"
        "#;
        let errors = errors(text);
        assert!(
            errors.iter().any(|e| e.contains("listed twice")),
            "{errors:?}"
        );
        assert!(errors
            .iter()
            .any(|e| e.contains("pool name is already used")));
        assert!(errors.iter().any(|e| e.contains("never be used")));
    }
}
