//! `[[pools]]`: backends, balancing, health checks, outlier detection, the
//! retry budget and the admission queue.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use super::values::{
    check_name, count, duration_or, method, percent, priority, socket_addr, status,
};
use super::Problems;
use crate::config::file::{
    FileBackend, FileHealth, FileOutlier, FilePool, FileQueue, FileRetryBudget, FileUpstreamTls,
};
use crate::config::schema::entry_path;
use crate::config::{
    is_host_name, AdmissionConfig, BackendConfig, Balance, DnsTarget, HashKey, HealthConfig,
    LimitConfig, NamedBackend, OutlierConfig, PoolConfig, Probe, RetryBudgetConfig,
    UpstreamTlsConfig,
};

pub(super) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const MAX_WEIGHT: i64 = 1000;
pub(super) const DEFAULT_MAX_IN_FLIGHT: u32 = 256;

pub(super) fn pool(
    index: usize,
    file: &FilePool,
    base: &Path,
    problems: &mut Problems,
) -> PoolConfig {
    let at = entry_path("pools", index, &file.name);
    check_name(&at, &file.name, problems);
    let balance = balance(&at, file, problems);
    let connect_timeout = duration_or(
        &format_args!("{at}.connect_timeout"),
        file.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT,
        false,
        problems,
    );
    let request_timeout = duration_or(
        &format_args!("{at}.request_timeout"),
        file.request_timeout.as_deref(),
        DEFAULT_REQUEST_TIMEOUT,
        false,
        problems,
    );
    let idle_timeout = duration_or(
        &format_args!("{at}.idle_timeout"),
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
        &format_args!("{at}.max_in_flight"),
        file.max_in_flight,
        DEFAULT_MAX_IN_FLIGHT,
        1,
        problems,
    );
    let mut backends = Vec::new();
    let mut named = Vec::new();
    let mut seen = HashSet::new();
    let mut seen_names = HashSet::new();
    for (i, entry) in file.backends.iter().enumerate() {
        let key = if entry.srv.is_some() { "srv" } else { "addr" };
        let twice = |problems: &mut Problems, what: &str| {
            problems.add(
                format!("{at}.backends[{i}].{key}"),
                format!("{what:?} is listed twice in this pool; raise its weight instead"),
            );
        };
        match backend(
            &format_args!("{at}.backends[{i}]"),
            entry,
            max_in_flight,
            problems,
        ) {
            Some(Parsed::Addr(backend)) if seen.insert(backend.addr) => backends.push(backend),
            Some(Parsed::Addr(_)) => twice(problems, &entry.addr),
            Some(Parsed::Named(backend)) if seen_names.insert(backend.target.clone()) => {
                named.push(backend);
            }
            Some(Parsed::Named(backend)) => twice(problems, &backend.target.to_string()),
            None => {}
        }
    }
    // Named backends give the TLS name (SNI) themselves; IP backends have none.
    let by_name_only = backends.is_empty() && !named.is_empty();
    PoolConfig {
        name: file.name.clone(),
        balance,
        connect_timeout,
        request_timeout,
        idle_timeout,
        backends,
        named,
        health: file
            .health
            .as_ref()
            .map(|h| health(&format_args!("{at}.health"), h, problems)),
        outlier: outlier(
            &format_args!("{at}.outlier"),
            file.outlier.as_ref(),
            problems,
        ),
        panic_threshold: percent(
            &format_args!("{at}.panic_threshold"),
            file.panic_threshold,
            50,
            problems,
        ),
        slow_start: duration_or(
            &format_args!("{at}.slow_start"),
            file.slow_start.as_deref(),
            Duration::ZERO,
            true,
            problems,
        ),
        retry_budget: retry_budget(
            &format_args!("{at}.retry_budget"),
            file.retry_budget.as_ref(),
            problems,
        ),
        admission: admission(&format_args!("{at}.queue"), file.queue.as_ref(), problems),
        // Resolved by `backups` once every pool is known.
        backup: None,
        failback_after: duration_or(
            &format_args!("{at}.failback_after"),
            file.failback_after.as_deref(),
            Duration::from_secs(10),
            true,
            problems,
        ),
        tls: file
            .tls
            .as_ref()
            .and_then(|t| tls(&format_args!("{at}.tls"), t, base, by_name_only, problems)),
    }
}

/// `[pools.tls]`; `None` when something is wrong (and reported). Files are
/// taken relative to the config file's directory.
pub(super) fn tls(
    at: &dyn fmt::Display,
    file: &FileUpstreamTls,
    base: &Path,
    by_name_only: bool,
    problems: &mut Problems,
) -> Option<UpstreamTlsConfig> {
    use crate::config::upstream_tls::{check_sni, client_key_name, load_ca, load_client};
    let mut ok = true;
    let mut fail = |key: &str, message: String| {
        problems.add(format!("{at}.{key}"), message);
        ok = false;
    };
    let verify = file.verify.unwrap_or(true);
    if let Some(sni) = &file.sni {
        if let Err(message) = check_sni(sni) {
            fail("sni", message);
        }
    } else if verify && !by_name_only {
        // pingora's rustls connector takes an empty name as "no SNI and no
        // certificate checks at all": never let that happen by omission.
        fail(
            "sni",
            "is required while verify = true: some backends are IP:PORT, so there is no name to check their certificates against; set tls.sni to the name on the backends' certificate, e.g. \"orders.internal\" (or verify = false to not check certificates)".to_string(),
        );
    }
    let mut ca = None;
    match file.ca_file.as_deref() {
        None => {}
        Some(_) if !verify => fail(
            "ca_file",
            "is not used with verify = false (certificates are not checked); remove it or set verify = true".to_string(),
        ),
        Some("") => fail(
            "ca_file",
            "is empty; write the path of the CA certificates (PEM) the backends' certificates chain to".to_string(),
        ),
        Some(path) => match load_ca(&base.join(path)) {
            Ok(bundle) => ca = Some(bundle),
            Err(message) => fail("ca_file", message),
        },
    }
    let mut client = None;
    match (file.client_cert.as_deref(), file.client_key.as_deref()) {
        (None, None) => {}
        (Some(_), None) => fail(
            "client_key",
            "is required with client_cert: write the path of the client certificate's private key (PEM)".to_string(),
        ),
        (None, Some(_)) => fail(
            "client_cert",
            "is required with client_key: write the path of the client certificate (PEM)".to_string(),
        ),
        (Some(cert), Some(key)) => match load_client(&base.join(cert), &base.join(key)) {
            Ok(loaded) => client = Some(loaded),
            Err((which, message)) => fail(client_key_name(which), message),
        },
    }
    ok.then(|| UpstreamTlsConfig {
        sni: file.sni.clone(),
        verify,
        ca,
        client,
    })
}

/// Resolves `pools[].backup` to pool indexes; an unknown pool, a pool that is
/// its own backup, or a cycle of backups is a problem.
pub(super) fn backups(files: &[FilePool], pools: &mut [PoolConfig], problems: &mut Problems) {
    for (i, file) in files.iter().enumerate() {
        let Some(name) = &file.backup else { continue };
        let at = format!("{}.backup", entry_path("pools", i, &file.name));
        match files.iter().position(|p| &p.name == name) {
            Some(j) if j == i => problems.add(at, "a pool cannot be its own backup"),
            Some(j) => {
                if let Some(pool) = pools.get_mut(i) {
                    pool.backup = Some(j);
                }
            }
            None => {
                let defined: Vec<&str> = files.iter().map(|p| p.name.as_str()).collect();
                problems.add(
                    at,
                    format!(
                        "pool {name:?} is not defined (defined: {})",
                        defined.join(", ")
                    ),
                );
            }
        }
    }
    for (start, file) in files.iter().enumerate() {
        let mut seen = vec![start];
        let mut next = pools.get(start).and_then(|p| p.backup);
        while let Some(pool) = next {
            if pool != start && seen.contains(&pool) {
                // A cycle further along: reported from its own pools.
                break;
            }
            if pool == start {
                let chain: Vec<&str> = seen
                    .iter()
                    .chain(std::iter::once(&pool))
                    .filter_map(|&k| files.get(k).map(|p| p.name.as_str()))
                    .collect();
                problems.add(
                    format!("{}.backup", entry_path("pools", start, &file.name)),
                    format!("backups form a cycle: {}", chain.join(" -> ")),
                );
                break;
            }
            seen.push(pool);
            next = pools.get(pool).and_then(|p| p.backup);
        }
    }
}

pub(super) fn admission(
    at: &dyn fmt::Display,
    file: Option<&FileQueue>,
    problems: &mut Problems,
) -> AdmissionConfig {
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
        &format_args!("{at}.timeout"),
        file.and_then(|f| f.timeout.as_deref()),
        Duration::from_secs(5),
        false,
        problems,
    );
    let bound = |key: &str, value: Option<i64>, default: usize, problems: &mut Problems| {
        count(
            &format_args!("{at}.{key}"),
            value,
            default as u32,
            1,
            problems,
        ) as usize
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
                reserved[p as usize] = percent(
                    &format_args!("{at}.reserved.{class}"),
                    Some(*share),
                    0,
                    problems,
                )
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

pub(super) fn health(
    at: &dyn fmt::Display,
    file: &FileHealth,
    problems: &mut Problems,
) -> HealthConfig {
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
                        status(&format_args!("{at}.expect_status[{i}]"), *code, problems)
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
        &format_args!("{at}.interval"),
        file.interval.as_deref(),
        Duration::from_secs(1),
        false,
        problems,
    );
    let timeout = duration_or(
        &format_args!("{at}.timeout"),
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
            &format_args!("{at}.jitter"),
            file.jitter.as_deref(),
            interval / 10,
            true,
            problems,
        ),
        healthy_threshold: count(
            &format_args!("{at}.healthy_threshold"),
            file.healthy_threshold,
            2,
            1,
            problems,
        ),
        unhealthy_threshold: count(
            &format_args!("{at}.unhealthy_threshold"),
            file.unhealthy_threshold,
            2,
            1,
            problems,
        ),
        start_healthy: file.start_healthy.unwrap_or(false),
    }
}

pub(super) fn outlier(
    at: &dyn fmt::Display,
    file: Option<&FileOutlier>,
    problems: &mut Problems,
) -> OutlierConfig {
    let get = |f: fn(&FileOutlier) -> Option<i64>| file.and_then(f);
    let get_str = |f: fn(&FileOutlier) -> Option<&String>| file.and_then(f).map(String::as_str);
    let base_ejection = duration_or(
        &format_args!("{at}.base_ejection"),
        get_str(|f| f.base_ejection.as_ref()),
        Duration::from_secs(5),
        false,
        problems,
    );
    let max_ejection = duration_or(
        &format_args!("{at}.max_ejection"),
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
            &format_args!("{at}.consecutive_gateway_failures"),
            get(|f| f.consecutive_gateway_failures),
            3,
            0,
            problems,
        ),
        consecutive_5xx: count(
            &format_args!("{at}.consecutive_5xx"),
            get(|f| f.consecutive_5xx),
            5,
            0,
            problems,
        ),
        base_ejection,
        max_ejection,
        max_ejected_percent: percent(
            &format_args!("{at}.max_ejected_percent"),
            get(|f| f.max_ejected_percent),
            50,
            problems,
        ),
    }
}

pub(super) fn retry_budget(
    at: &dyn fmt::Display,
    file: Option<&FileRetryBudget>,
    problems: &mut Problems,
) -> RetryBudgetConfig {
    RetryBudgetConfig {
        percent: percent(
            &format_args!("{at}.percent"),
            file.and_then(|f| f.percent),
            20,
            problems,
        ),
        min_per_second: count(
            &format_args!("{at}.min_per_second"),
            file.and_then(|f| f.min_per_second),
            3,
            0,
            problems,
        ),
    }
}

pub(super) fn balance(at: &dyn fmt::Display, file: &FilePool, problems: &mut Problems) -> Balance {
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

pub(super) fn hash_key(text: &str) -> Result<HashKey, String> {
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

/// A backend as validated: an address, or a name to resolve.
enum Parsed {
    Addr(BackendConfig),
    Named(NamedBackend),
}

fn backend(
    at: &dyn fmt::Display,
    file: &FileBackend,
    pool_max_in_flight: u32,
    problems: &mut Problems,
) -> Option<Parsed> {
    let max_in_flight = count(
        &format_args!("{at}.max_in_flight"),
        file.max_in_flight,
        pool_max_in_flight,
        1,
        problems,
    );
    let weight = match file.weight {
        None => None,
        Some(w @ 1..=MAX_WEIGHT) => Some(w as u32),
        Some(w) => {
            problems.add(
                format!("{at}.weight"),
                format!(
                    "{w} is out of range; use 1 to {MAX_WEIGHT} (remove the backend to send it nothing)"
                ),
            );
            None
        }
    };
    if let Some(srv) = &file.srv {
        if !file.addr.is_empty() {
            problems.add(
                format!("{at}.srv"),
                "is set beside addr; a backend is either addr = \"IP:PORT\" / \"name:PORT\" or srv = \"_http._tcp.name\", not both",
            );
            return None;
        }
        if !is_host_name(srv) {
            problems.add(
                format!("{at}.srv"),
                format!("{srv:?} is not a DNS name; write the SRV record's name, e.g. \"_http._tcp.orders.internal\""),
            );
            return None;
        }
        return Some(Parsed::Named(NamedBackend {
            target: DnsTarget::Srv {
                name: srv.trim_end_matches('.').to_string(),
            },
            weight,
            max_in_flight,
        }));
    }
    if file.addr.is_empty() {
        problems.add(
            format!("{at}.addr"),
            "is required: the backend's IP:PORT or name:PORT, e.g. \"127.0.0.1:9001\" or \"orders.internal:8080\" (or srv = \"_http._tcp.orders.internal\")",
        );
        return None;
    }
    if let Ok(addr) = socket_addr(&file.addr) {
        return Some(Parsed::Addr(BackendConfig {
            addr,
            weight: weight.unwrap_or(1),
            max_in_flight,
        }));
    }
    match host_port(file.addr.trim()) {
        Ok((name, port)) => Some(Parsed::Named(NamedBackend {
            target: DnsTarget::Host { name, port },
            weight,
            max_in_flight,
        })),
        Err(message) => {
            problems.add(format!("{at}.addr"), message);
            None
        }
    }
}

/// `name:PORT` of a backend given by name.
fn host_port(text: &str) -> Result<(String, u16), String> {
    let Some((name, port)) = text.rsplit_once(':') else {
        return Err(if is_host_name(text) {
            format!("{text:?} has no port; write name:PORT, e.g. \"{text}:8080\"")
        } else {
            format!("{text:?} is neither IP:PORT nor name:PORT; write e.g. \"127.0.0.1:9001\" or \"orders.internal:8080\"")
        });
    };
    if !is_host_name(name) || name.contains(':') {
        // Looks like an address (or is no name at all): say what an address needs.
        return Err(socket_addr(text).err().unwrap_or_default().replace(
            "is not an IP:PORT address",
            "is neither IP:PORT nor name:PORT",
        ));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((name.trim_end_matches('.').to_string(), port)),
        _ => Err(format!(
            "{text:?}: {port:?} is not a port; write name:PORT with a port from 1 to 65535, e.g. \"{name}:8080\""
        )),
    }
}

pub(super) fn check_unique_pool_names(pools: &[FilePool], problems: &mut Problems) {
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
