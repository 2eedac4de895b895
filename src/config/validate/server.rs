//! `[server]`, `[admin]` and `[log]`: listeners (which must not overlap; TLS
//! listeners and their certificates are checked in `tls`), timeouts and sizes
//! of shopper connections, the admin API and the access log.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::values::{count, duration_or, load_pages, size, socket_addr, KIB, MIB};
use super::Problems;
use crate::config::file::{FileAdmin, FileLog, FileServer};
use crate::config::{AccessLog, AdminConfig, EscapedSlashes, Pages, PathPolicy, ServerConfig};

pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub(super) const DEFAULT_THREADS: usize = 2;
pub(super) const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_UPSTREAM_KEEPALIVE: u32 = 1024;
pub(super) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
pub(super) const DEFAULT_MAX_REQUEST_HEADER_BYTES: u64 = 32 * KIB;
pub(super) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_ADMIN_MAX_CONNECTIONS: u32 = 64;
pub(super) const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_READ_BUFFER: u64 = 4 * KIB;
/// pingora's own ceiling for a request head (`MAX_HEADER_SIZE`).
pub(super) const MAX_REQUEST_HEADER_BYTES: u64 = MIB - 1;

pub(super) fn admin(file: &FileAdmin, problems: &mut Problems) -> AdminConfig {
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
    AdminConfig {
        listen,
        token,
        hosts: admin_hosts(file.hosts.as_deref().unwrap_or_default(), problems),
        max_connections: count(
            &"admin.max_connections",
            file.max_connections,
            DEFAULT_ADMIN_MAX_CONNECTIONS,
            1,
            problems,
        ),
        header_timeout: duration_or(
            &"admin.header_timeout",
            file.header_timeout.as_deref(),
            DEFAULT_ADMIN_HEADER_TIMEOUT,
            false,
            problems,
        ),
    }
}

/// `admin.hosts`: DNS names (letters, digits, `-` and `.`), kept in lower case.
fn admin_hosts(names: &[String], problems: &mut Problems) -> Vec<String> {
    let mut hosts = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            hosts.push(name.to_ascii_lowercase());
        } else {
            problems.add(
                format!("admin.hosts[{i}]"),
                format!("{name:?} is not a host name; write it without scheme or port, e.g. \"ops.shop.example\""),
            );
        }
    }
    hosts
}

/// Two listeners on one port conflict when their addresses are equal or one
/// of them is the unspecified address (0.0.0.0 or [::] takes the port on every
/// address). Exact duplicates among the shopper listeners are reported where
/// they are parsed.
pub(super) fn check_listeners_apart(
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

pub(super) fn access_log(
    file: Option<&FileLog>,
    base: &Path,
    problems: &mut Problems,
) -> AccessLog {
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

pub(super) fn server(file: &FileServer, base: &Path, problems: &mut Problems) -> ServerConfig {
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
        &"server.grace_period",
        file.grace_period.as_deref(),
        DEFAULT_GRACE_PERIOD,
        true,
        problems,
    );
    let shutdown_delay = duration_or(
        &"server.shutdown_delay",
        file.shutdown_delay.as_deref(),
        Duration::ZERO,
        true,
        problems,
    );
    let upstream_keepalive = count(
        &"server.upstream_keepalive",
        file.upstream_keepalive,
        DEFAULT_UPSTREAM_KEEPALIVE,
        // pingora's pool misbehaves at 0 (it keeps connections and warns on every request).
        1,
        problems,
    ) as usize;
    let trust = super::trust::trust(file, problems);
    let tls = super::tls::listeners(
        file.tls.as_deref().unwrap_or_default(),
        base,
        &mut seen,
        &trust,
        problems,
    );
    let pages = match &file.pages {
        None => Pages::builtin(),
        Some(dir) => {
            load_pages(&"server.pages", base, dir, problems).unwrap_or_else(Pages::builtin)
        }
    };
    let max_request_header_bytes = size(
        &"server.max_request_header_bytes",
        file.max_request_header_bytes.as_ref(),
        DEFAULT_MAX_REQUEST_HEADER_BYTES,
        (KIB, MAX_REQUEST_HEADER_BYTES),
        problems,
    ) as usize;
    let header_timeout = duration_or(
        &"server.header_timeout",
        file.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
        false,
        problems,
    );
    let keepalive_timeout = duration_or(
        &"server.keepalive_timeout",
        file.keepalive_timeout.as_deref(),
        DEFAULT_KEEPALIVE_TIMEOUT,
        true,
        problems,
    );
    let read_buffer = size(
        &"server.read_buffer",
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
        path: path_policy(file, problems),
        https_redirect: file.https_redirect.unwrap_or(false),
        https_port: super::rewrite::https_port(file.https_port, problems),
        hsts: super::rewrite::hsts(file.hsts.as_ref(), problems),
        proxy_protocol: super::trust::proxy_protocol(
            &"server.proxy_protocol",
            file.proxy_protocol.as_deref(),
            &trust,
            problems,
        ),
        trust,
    }
}

fn path_policy(file: &FileServer, problems: &mut Problems) -> PathPolicy {
    let escaped_slashes = match file.escaped_slashes.as_deref() {
        None | Some("reject") => EscapedSlashes::Reject,
        Some("keep") => EscapedSlashes::Keep,
        Some(other) => {
            problems.add(
                "server.escaped_slashes",
                format!("{other:?} is not a policy; use \"reject\" (the 400 page) or \"keep\""),
            );
            EscapedSlashes::Reject
        }
    };
    PathPolicy {
        merge_slashes: file.merge_slashes.unwrap_or(true),
        escaped_slashes,
    }
}
