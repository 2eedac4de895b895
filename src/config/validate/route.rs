//! `[[routes]]`: matching, the pool, the deadline, retries, priority, rate
//! limits, pages and the body limit.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use super::values::{check_name, count, duration_or, load_pages, method, priority, size, MIB};
use super::Problems;
use crate::config::file::{FilePool, FileRateLimit, FileRetry, FileRoute};
use crate::config::schema::entry_path;
use crate::config::{Priority, RateKey, RateLimitConfig, RetryConfig, RetryOn, RouteConfig};

pub(super) const DEFAULT_MAX_BODY_BYTES: u64 = MIB;
pub(super) const DEFAULT_RATE_LIMIT_MAX_CLIENTS: u32 = 250_000;
/// Envoy's `stream_idle_timeout` default: long enough for an order-status
/// page's quiet minutes, short enough that a vanished client's stream ends.
pub(super) const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The routes; `https_redirect` is `server.https_redirect`, each route's default.
pub(super) fn routes(
    files: &[FileRoute],
    pools: &[FilePool],
    base: &Path,
    https_redirect: bool,
    problems: &mut Problems,
) -> Vec<Arc<RouteConfig>> {
    if files.is_empty() {
        problems.add(
            "routes",
            "no routes are defined; add a [[routes]] table with a name and a pool",
        );
    }
    let mut names = HashSet::new();
    // What each route matches → the first route that matches it.
    let mut matchers: HashMap<SameRequests, usize, foldhash::fast::RandomState> =
        HashMap::default();
    let mut routes = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let at = entry_path("routes", i, &file.name);
        check_name(&at, &file.name, problems);
        if !names.insert(file.name.as_str()) {
            problems.add(
                at,
                "this route name is already used by an earlier route; route names must be unique",
            );
        }
        let route = Arc::new(route(&at, file, pools, base, https_redirect, problems));
        match matchers.entry(SameRequests(Arc::clone(&route))) {
            Entry::Occupied(earlier) => {
                let earlier = *earlier.get();
                problems.add(
                    at,
                    format!(
                        "matches exactly the same requests as routes[{earlier}] {:?}, so it would never be used; change its host, path_prefix or methods",
                        files[earlier].name
                    ),
                );
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        routes.push(route);
    }
    routes
}

/// A route as what it matches, for finding two routes that match the same
/// requests: the same host, the same prefix (a trailing `/` does not count)
/// and the same methods in any order.
struct SameRequests(Arc<RouteConfig>);

impl SameRequests {
    fn prefix(&self) -> &str {
        self.0.path_prefix.trim_end_matches('/')
    }
}

impl PartialEq for SameRequests {
    fn eq(&self, other: &Self) -> bool {
        let same_methods = match (&self.0.methods, &other.0.methods) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.iter().all(|m| b.contains(m)) && b.iter().all(|m| a.contains(m))
            }
            _ => false,
        };
        self.0.host == other.0.host && self.prefix() == other.prefix() && same_methods
    }
}

impl Eq for SameRequests {}

impl Hash for SameRequests {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Not the methods themselves: `eq` tells apart the few routes of one
        // host and prefix that differ by methods.
        self.0.host.hash(state);
        self.prefix().hash(state);
        self.0.methods.is_some().hash(state);
    }
}

pub(super) fn route(
    at: &dyn fmt::Display,
    file: &FileRoute,
    pools: &[FilePool],
    base: &Path,
    https_redirect: bool,
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
    let retry = retry(&format_args!("{at}.retry"), file.retry.as_deref(), problems);
    let idempotency = file.idempotency.as_ref().map(|table| {
        super::idempotency::idempotency(
            &format_args!("{at}.idempotency"),
            table,
            &retry.idempotency_key_header,
            problems,
        )
    });
    let timeout = duration_or(
        &format_args!("{at}.timeout"),
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
        retry,
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
            .and_then(|dir| load_pages(&format_args!("{at}.pages"), base, dir, problems)),
        rate_limit: file
            .rate_limit
            .as_ref()
            .map(|r| rate_limit(&format_args!("{at}.rate_limit"), r, problems)),
        max_body_bytes: size(
            &format_args!("{at}.max_body_bytes"),
            file.max_body_bytes.as_ref(),
            DEFAULT_MAX_BODY_BYTES,
            (0, 1 << 40),
            problems,
        ),
        idempotency,
        maintenance: file.maintenance.as_ref().map(|m| {
            super::maintenance::maintenance(&format_args!("{at}.maintenance"), m, problems)
        }),
        stale: file
            .stale
            .as_ref()
            .map(|table| super::stale::stale(&format_args!("{at}.stale"), table, problems)),
        stream_idle_timeout: duration_or(
            &format_args!("{at}.stream_idle_timeout"),
            file.stream_idle_timeout.as_deref(),
            DEFAULT_STREAM_IDLE_TIMEOUT,
            false,
            problems,
        ),
        long_poll: file.long_poll.unwrap_or(false),
        https_redirect: file.https_redirect.unwrap_or(https_redirect),
        strip_prefix: file.strip_prefix.unwrap_or(false),
        request_headers: super::rewrite::header_rules(
            &format_args!("{at}.request_headers"),
            file.request_headers.as_deref(),
            problems,
        ),
        response_headers: super::rewrite::header_rules(
            &format_args!("{at}.response_headers"),
            file.response_headers.as_deref(),
            problems,
        ),
    }
}

pub(super) fn rate_limit(
    at: &dyn fmt::Display,
    file: &FileRateLimit,
    problems: &mut Problems,
) -> RateLimitConfig {
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
        burst: count(&format_args!("{at}.burst"), file.burst, 0, 0, problems),
        max_clients: count(
            &format_args!("{at}.max_clients"),
            file.max_clients,
            DEFAULT_RATE_LIMIT_MAX_CLIENTS,
            1000,
            problems,
        ),
    }
}

pub(super) fn retry(
    at: &dyn fmt::Display,
    file: Option<&FileRetry>,
    problems: &mut Problems,
) -> RetryConfig {
    let duration =
        |key: &str, text: Option<&String>, default: Duration, problems: &mut Problems| {
            duration_or(
                &format_args!("{at}.{key}"),
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
