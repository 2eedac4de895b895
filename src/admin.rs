//! The admin API, on its own listener (loopback by default):
//!
//! | request | answer |
//! |---|---|
//! | `GET /` or `/ui` | the status page: HTML that polls `/status` every 2 s (no token needed for the page itself; it asks for one when `/status` does) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when every listener accepts connections, 503 before that and while shutting down |
//! | `GET /status` | JSON: config generation and source, last reload, pools (with their TLS to backends), backends, queues, TLS listeners' certificates (names and expiry) |
//! | `GET /metrics` | Prometheus text |
//! | `POST /reload` | re-read the config file; 200 with the generation, or 422 with every error |
//! | `POST /backends/{pool}/{addr}/drain` | no new requests to the backend; those in flight finish |
//! | `POST /backends/{pool}/{addr}/undrain` | back in rotation |
//! | `GET /rooms` | JSON: each waiting room's line length, shoppers on the site, admissions per minute, estimated wait, the operator's setting |
//! | `POST /rooms/{name}/open` | admit again (also before `opens_at`) |
//! | `POST /rooms/{name}/close` | the room steps aside: everyone passes; the line is kept |
//! | `POST /rooms/{name}/pause` | nobody is admitted; everybody keeps their place |
//! | `POST /backends/{pool}/{addr}/weight?value=N` | override its weight (1–1000) until `value=0` returns to the config's; not a config generation |
//!
//! With a token configured, every request but `/healthz`, `/readyz` and the
//! status page's HTML needs `Authorization: Bearer <token>`. The page holds
//! no data: its script sends the token (kept in the tab's `sessionStorage`)
//! with every call. With or without a token, [`guard`] refuses other sites'
//! pages (DNS rebinding, cross-site posts); connections are capped and must
//! send their request head in time.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::time::Instant;

mod guard;
mod maintenance;
mod rooms;

use crate::admission::Priority;
use crate::config::{AdminConfig, UpstreamTlsConfig};
use crate::state::State;
use crate::upstream::{Availability, Backend, Pool};

/// The status page: HTML, CSS and script in one file, nothing fetched from
/// elsewhere.
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// What the status page may do: its own inline script and style, calls to
/// this listener, nothing from elsewhere; never inside another site's frame
/// (its buttons drain backends).
const STATUS_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// When the process started serving, for `uptime_seconds` in `/status`.
static STARTED: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// Pause before trying again after a failed accept.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The admin API service.
#[derive(Debug)]
pub struct Admin {
    state: Arc<State>,
    config: AdminConfig,
    listener: parking_lot::Mutex<Option<std::net::TcpListener>>,
}

impl Admin {
    /// Binds the admin listener now, so that a taken port fails at start with a
    /// clear message and connections made before the service runs wait in the
    /// backlog. The socket has SO_REUSEPORT: during a graceful upgrade (`upgrade`)
    /// the new process listens beside the old one until that one exits.
    pub fn bind(state: Arc<State>, config: AdminConfig, upgrade: bool) -> Result<Admin, String> {
        std::sync::LazyLock::force(&STARTED);
        if !upgrade {
            // A plain bind fails if anything else holds the port.
            std::net::TcpListener::bind(config.listen).map_err(|e| {
                format!("cannot listen for the admin API on {}: {e}", config.listen)
            })?;
        }
        let listener = reuseport_listener(config.listen)
            .map_err(|e| format!("cannot listen for the admin API on {}: {e}", config.listen))?;
        Ok(Admin {
            state,
            config,
            listener: parking_lot::Mutex::new(Some(listener)),
        })
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[async_trait]
impl BackgroundService for Admin {
    // The admin API keeps answering during a graceful shutdown (readiness then
    // says 503), until the process exits.
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().take() else {
            return;
        };
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                log::error!("admin API on {}: {e}", self.config.listen);
                return;
            }
        };
        log::info!("admin API listening on {}", self.config.listen);
        let config = Arc::new(self.config.clone());
        let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections as usize));
        let guard_metrics = guard::GuardMetrics::of(&self.state.metrics);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: pause rather than spin.
                    log::warn!("admin API: accept failed: {e}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            // Over the cap, the connection is closed at once: descriptors are
            // shared with the shopper listeners.
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                guard_metrics.count(guard::Reason::TooManyConnections);
                drop(stream);
                continue;
            };
            let state = Arc::clone(&self.state);
            let config = Arc::clone(&config);
            let guard_metrics = Arc::clone(&guard_metrics);
            tokio::spawn(async move {
                let header_timeout = config.header_timeout;
                let service = service_fn(move |request| {
                    let state = Arc::clone(&state);
                    let config = Arc::clone(&config);
                    async move { Ok::<_, Infallible>(handle(&state, &config, request).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    if e.is_timeout() {
                        guard_metrics.count(guard::Reason::HeaderTimeout);
                    }
                    log::debug!("admin connection: {e}");
                }
                drop(permit);
            });
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

async fn handle(
    state: &State,
    config: &AdminConfig,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/" | "/ui");
    if let Err(refusal) = guard::check(config, &method, request.headers(), open) {
        guard::GuardMetrics::of(&state.metrics).count(refusal.reason());
        let mut response = error(refusal.status(), refusal.message());
        if refusal == guard::Refusal::Unauthorized {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        return response;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""] | ["ui"]) => status_page(),
        (&Method::GET, ["healthz"]) => reply(StatusCode::OK, json!({ "status": "alive" })),
        (&Method::GET, ["readyz"]) => readiness(state),
        (&Method::GET, ["status"]) => reply(StatusCode::OK, status(state)),
        (&Method::GET, ["metrics"]) => {
            update_scrape_gauges(state);
            rooms::update_gauges(state).await;
            let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::POST, ["reload"]) => match state.reload("admin") {
            Ok(generation) => reply(
                StatusCode::OK,
                json!({ "generation": generation, "notes": state.reload_status().last_notes }),
            ),
            Err(errors) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "errors": errors }),
            ),
        },
        (&Method::GET, ["maintenance"]) => maintenance::list(state),
        (&Method::POST, ["maintenance"]) => maintenance::open(state, request).await,
        (&Method::DELETE, ["maintenance"]) => {
            maintenance::close(state, request.uri().query().unwrap_or(""))
        }
        (&Method::GET, ["rooms"]) => rooms::list(state).await,
        (&Method::POST, ["rooms", name, action]) => rooms::action(state, name, action).await,
        (&Method::POST, ["backends", pool, addr, action]) => {
            let query = request.uri().query().unwrap_or("").to_string();
            backend_action(state, pool, addr, action, &query)
        }
        (_, ["" | "ui" | "healthz" | "readyz" | "status" | "metrics"])
        | (_, ["reload" | "maintenance"])
        | (_, ["backends", ..])
        | (_, ["rooms", ..]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no admin endpoint {path}")),
    }
}

fn status_page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
    let headers = response.headers_mut();
    let static_header = http::HeaderValue::from_static;
    headers.insert(
        http::header::CONTENT_TYPE,
        static_header("text/html; charset=utf-8"),
    );
    headers.insert(http::header::CACHE_CONTROL, static_header("no-store"));
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        static_header(STATUS_PAGE_CSP),
    );
    headers.insert(http::header::X_FRAME_OPTIONS, static_header("DENY"));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        static_header("nosniff"),
    );
    response
}

/// Ready when every listener was seen accepting connections and the process
/// is not shutting down.
fn readiness(state: &State) -> Response<Full<Bytes>> {
    let listeners: Vec<String> = state
        .listen_addrs()
        .iter()
        .map(SocketAddr::to_string)
        .collect();
    if state.is_shutting_down() {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reason": "shutting down", "listeners": listeners }),
        )
    } else if !state.listeners_ready() {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reason": "listeners do not accept connections yet", "listeners": listeners }),
        )
    } else {
        reply(
            StatusCode::OK,
            json!({ "ready": true, "listeners": listeners }),
        )
    }
}

fn backend_action(
    state: &State,
    pool: &str,
    addr: &str,
    action: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{addr:?} is not an IP:PORT address"),
        );
    };
    let Some(backend) = state.registry().find_backend(pool, addr) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no backend {addr}"),
        );
    };
    match action {
        "drain" | "undrain" => {
            let drained = action == "drain";
            backend.set_drained(drained);
            log::warn!(
                "pool {pool}: backend {addr} {}",
                if drained { "drained" } else { "undrained" }
            );
            reply(
                StatusCode::OK,
                json!({ "pool": pool, "backend": addr.to_string(), "drained": drained, "in_flight": backend.in_flight() }),
            )
        }
        "weight" => {
            let value = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("value="))
                .and_then(|v| v.parse::<u32>().ok());
            match value {
                Some(weight @ 0..=1000) => {
                    let admin_changes = state.set_weight(&backend, weight);
                    let config_weight = state
                        .config()
                        .pools
                        .iter()
                        .find(|p| p.name == pool)
                        .and_then(|p| p.backends.iter().find(|b| b.addr == addr))
                        .map(|b| b.weight);
                    if weight == 0 {
                        log::warn!("pool {pool}: backend {addr} weight override removed: the config's weight {} applies", config_weight.unwrap_or(1));
                    } else {
                        log::warn!("pool {pool}: backend {addr} weight overridden to {weight} (the config says {}; value=0 returns to it)", config_weight.unwrap_or(1));
                    }
                    reply(
                        StatusCode::OK,
                        json!({
                            "pool": pool,
                            "backend": addr.to_string(),
                            "weight": if weight == 0 { config_weight } else { Some(weight) },
                            "config_weight": config_weight,
                            "weight_override": if weight == 0 { None } else { Some(weight) },
                            "admin_changes": admin_changes,
                        }),
                    )
                }
                _ => error(
                    StatusCode::BAD_REQUEST,
                    "give the weight as ?value=N, 1 to 1000 (0 restores the config's weight)",
                ),
            }
        }
        other => error(
            StatusCode::NOT_FOUND,
            format!("no backend action {other:?}; use drain, undrain or weight"),
        ),
    }
}

fn availability_name(availability: Availability) -> &'static str {
    match availability {
        Availability::Serving(_) => "serving",
        Availability::Unhealthy(_) => "unhealthy",
        Availability::Ejected => "ejected",
        Availability::Drained => "drained",
    }
}

/// Seconds from `then` to `now`, rounded to milliseconds.
fn seconds_since(now: Instant, then: Instant) -> f64 {
    (now.saturating_duration_since(then).as_secs_f64() * 1000.0).round() / 1000.0
}

type AttemptTotals = BTreeMap<(String, String), BTreeMap<String, u64>>;

fn backend_status(
    pool: &Pool,
    index: usize,
    backend: &Backend,
    now: Instant,
    attempts: &AttemptTotals,
) -> Value {
    let (weight, max_in_flight) = pool.weight_and_cap(index).unwrap_or_default();
    // An admin override wins over the file until `weight?value=0`: show both.
    let availability = backend.availability(now, pool.health());
    // Time left of an ejection; 0 while an ejected backend whose time is up
    // waits for a passing probe.
    let ejected_for = (availability == Availability::Ejected).then(|| {
        backend
            .ejected_until()
            .map_or(0.0, |until| seconds_since(until, now))
    });
    let probe = pool.health().map(|_| {
        let report = backend.probe_report();
        json!({
            "last_ago_s": report.last.as_ref().map(|(at, _)| seconds_since(now, *at)),
            "last_ok": report.last.as_ref().map(|(_, error)| error.is_none()),
            "last_error": report.last.as_ref().and_then(|(_, error)| error.clone()),
            "changed_ago_s": report.changed.map(|at| seconds_since(now, at)),
        })
    });
    // Share of its full weight a returning backend gets (slow start), 1 when done.
    let slow_start = pool.slow_start();
    let slow_start_progress = match availability {
        Availability::Serving(since) if !slow_start.is_zero() => {
            Some((since.as_secs_f64() / slow_start.as_secs_f64()).min(1.0))
        }
        _ => None,
    };
    let attempts = attempts
        .get(&(pool.name.clone(), backend.addr.to_string()))
        .cloned()
        .unwrap_or_default();
    json!({
        "ejected_for_s": ejected_for,
        "probe": probe,
        "slow_start_progress": slow_start_progress,
        "ewma_latency_ms": (backend.ewma_latency().as_secs_f64() * 1e6).round() / 1e3,
        "attempts": attempts,
        "addr": backend.addr.to_string(),
        "state": availability_name(availability),
        "health": if pool.health().is_some() { backend.health().as_str() } else { "not_checked" },
        "ejected": availability == Availability::Ejected,
        "drained": backend.is_drained(),
        "in_flight": backend.in_flight(),
        "weight": weight,
        "config_weight": pool.config_weight(index),
        "weight_override": backend.weight_override(),
        "max_in_flight": max_in_flight,
        "dns_name": pool.backend_name(index),
    })
}

/// The backend names of a pool: what each resolved to, when, the TTL in use,
/// and whether the last lookup failed.
fn dns_status(state: &State, config: &crate::config::Config, pool: &str) -> Vec<Value> {
    let time = |t: Option<std::time::SystemTime>| {
        t.map(|t| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
    };
    config
        .pools
        .iter()
        .filter(|p| p.name == pool)
        .flat_map(|p| p.named.iter())
        .map(|named| {
            let r = state
                .resolutions()
                .get(pool, &named.target)
                .unwrap_or_default();
            json!({
                "name": named.target.to_string(),
                "addresses": r.addresses.iter().map(|a| a.addr.to_string()).collect::<Vec<_>>(),
                "last_resolved": time(r.resolved_at),
                "last_attempt": time(r.attempted_at),
                "ttl_s": r.ttl.as_secs_f64(),
                "failing": r.error.is_some(),
                "error": r.error,
                "addresses_dropped": r.dropped,
            })
        })
        .collect()
}

/// A pool's TLS to its backends: names and paths, never key material.
fn upstream_tls_status(tls: &UpstreamTlsConfig) -> Value {
    json!({
        "sni": tls.sni,
        "verify": tls.verify,
        "ca_file": tls.ca.as_ref().map(|ca| ca.path.display().to_string()),
        "client_cert": tls.client.as_ref().map(|c| c.cert_path.display().to_string()),
        "client_cert_not_after": tls.client.as_ref().map(|c| c.not_after()),
    })
}

/// Where ordergate stands at the edge: whose word it takes for the client's
/// address, the PROXY protocol its listeners expect, HTTPS redirects, HSTS.
fn edge_status(config: &crate::config::Config) -> Value {
    let server = &config.server;
    json!({
        "trusted_proxies": server.trust.proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "client_ip_header": server.trust.client_ip_header.as_str(),
        "proxy_protocol": server.proxy_protocol.as_str(),
        "tls_proxy_protocol": server
            .tls
            .iter()
            .map(|t| json!({ "listen": t.listen.to_string(), "proxy_protocol": t.proxy_protocol.as_str() }))
            .collect::<Vec<_>>(),
        "https_redirect": server.https_redirect,
        "https_port": server.https_port,
        "hsts": server.hsts.as_ref().and_then(|v| v.to_str().ok()),
    })
}

/// A route's header rules: the names only (a value may be a credential for
/// the backend).
/// `[tracing]` as served: off, or where spans go and how many are kept.
fn tracing_status(config: &crate::config::Config) -> Value {
    match &config.tracing {
        None => json!({ "enabled": false }),
        Some(tracing) => json!({
            "enabled": true,
            "otlp": tracing.otlp.to_string(),
            "ratio": tracing.ratio,
            "client_sampled": tracing.client_sampled,
            "service_name": tracing.service_name,
        }),
    }
}

fn header_rules_status(rules: &crate::config::HeaderRules) -> Value {
    json!({
        "set": rules.set.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(),
        "remove": rules.remove.iter().map(http::HeaderName::as_str).collect::<Vec<_>>(),
    })
}

fn status(state: &State) -> Value {
    let snapshot = state.snapshot();
    let config = state.config();
    let now = Instant::now();
    let attempts = state.metrics.attempt_totals();
    let route_names: Vec<&str> = snapshot
        .routes
        .iter()
        .map(|r| r.config.name.as_str())
        .collect();
    let pools: Vec<Value> = snapshot
        .pools
        .iter()
        .map(|pool| {
            // Capacity changes with health and drains, not only with traffic.
            pool.state.admission.set_capacity(pool.capacity());
            let admission = pool.state.admission.snapshot();
            let waiting: serde_json::Map<String, Value> = Priority::ALL
                .iter()
                .map(|p| {
                    (
                        p.as_str().to_string(),
                        json!(admission.waiting[*p as usize]),
                    )
                })
                .collect();
            json!({
                "name": pool.name,
                "capacity": pool.capacity(),
                "panic": pool.state.panicking.load(std::sync::atomic::Ordering::Relaxed),
                "health_checked": pool.health().is_some(),
                "slow_start_s": pool.slow_start().as_secs_f64(),
                "tls": pool.tls().map(|tls| upstream_tls_status(tls.config())),
                "dns": dns_status(state, &config, &pool.name),
                "queue": {
                    "in_use": admission.in_use,
                    "waiting": waiting,
                    "limit": admission.limit,
                    "drain_per_second": admission.drain_per_second,
                },
                "backends": pool
                    .backends()
                    .iter()
                    .enumerate()
                    .map(|(i, b)| backend_status(pool, i, b, now, &attempts))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "generation": snapshot.generation,
        "version": env!("CARGO_PKG_VERSION"),
        "revision": crate::telemetry::REVISION,
        "ready": state.listeners_ready() && !state.is_shutting_down(),
        "reload": state.reload_status(),
        "shutting_down": state.is_shutting_down(),
        "uptime_seconds": seconds_since(now, *STARTED),
        "routes": snapshot.routes.iter().map(|r| r.config.name.clone()).collect::<Vec<_>>(),
        "maintenance": maintenance::windows(state),
        "store": state.store_status(),
        "tls": state.tls_status(),
        "edge": edge_status(&state.config()),
        "tracing": tracing_status(&state.config()),
        "error_samples": state.error_samples.list(),
        "route_stats": snapshot
            .routes
            .iter()
            .zip(state.metrics.route_totals(&route_names))
            .map(|(route, totals)| {
                json!({
                    "name": route.config.name,
                    "pool": snapshot.pools.get(route.config.pool).map(|p| p.name.as_str()),
                    "serving_pool": snapshot.pools.get(serving_pool(&snapshot.pools, route.config.pool)).map(|p| p.name.as_str()),
                    "priority": route.config.priority.as_str(),
                    "stream_idle_timeout_s": route.config.stream_idle_timeout.as_secs_f64(),
                    "long_poll": route.config.long_poll,
                    "https_redirect": route.config.https_redirect,
                    "strip_prefix": route.config.strip_prefix,
                    "request_headers": header_rules_status(&route.config.request_headers),
                    "response_headers": header_rules_status(&route.config.response_headers),
                    "totals": totals,
                })
            })
            .collect::<Vec<_>>(),
        "pools": pools,
    })
}

/// The pool that serves a pool's traffic now: the pool itself, or the backup
/// (down the chain) its traffic moved to.
fn serving_pool(pools: &[Pool], first: usize) -> usize {
    let mut index = first;
    for _ in 0..pools.len() {
        match pools.get(index) {
            Some(pool) if pool.state.failover.on_backup() => match pool.backup() {
                Some(backup) => index = backup,
                None => break,
            },
            _ => break,
        }
    }
    index
}

fn update_scrape_gauges(state: &State) {
    let snapshot = state.snapshot();
    let metrics = &state.metrics;
    let now = Instant::now();
    metrics.pool_active.reset();
    for (index, pool) in snapshot.pools.iter().enumerate() {
        if pool.backup().is_some() {
            let serving = serving_pool(&snapshot.pools, index);
            if let Some(serving) = snapshot.pools.get(serving) {
                metrics
                    .pool_active
                    .with_label_values(&[pool.name.as_str(), serving.name.as_str()])
                    .set(1);
            }
        }
    }
    metrics.maintenance_open.reset();
    for window in maintenance::windows(state) {
        let route = window["route"].as_str().unwrap_or("*");
        metrics.maintenance_open.with_label_values(&[route]).set(1);
    }
    for route in snapshot.routes.iter() {
        if let Some(cache) = &route.stale_copies {
            metrics
                .stale_bytes
                .with_label_values(&[route.config.name.as_str()])
                .set(i64::try_from(cache.size_bytes()).unwrap_or(i64::MAX));
        }
        if let Some(idempotency) = &route.idempotency {
            let labels = [route.config.name.as_str()];
            metrics
                .idempotency_store_bytes
                .with_label_values(&labels)
                .set(i64::try_from(idempotency.store.size_bytes()).unwrap_or(i64::MAX));
            metrics
                .idempotency_evictions
                .with_label_values(&labels)
                .set(i64::try_from(idempotency.store.evictions()).unwrap_or(i64::MAX));
        }
        if let Some(limiter) = &route.rate_limiter {
            metrics
                .rate_limit_evicted_clients
                .with_label_values(&[route.config.name.as_str()])
                .set(i64::try_from(limiter.evicted_clients()).unwrap_or(i64::MAX));
        }
    }
    for pool in &snapshot.pools {
        for backend in pool.backends() {
            let labels = [pool.name.as_str(), &backend.addr.to_string()];
            let availability = backend.availability(now, pool.health());
            let up = pool.health().is_none()
                || backend.health() == crate::upstream::health::Health::Healthy;
            metrics
                .backend_up
                .with_label_values(&labels)
                .set(i64::from(up));
            metrics
                .backend_ejected
                .with_label_values(&labels)
                .set(i64::from(availability == Availability::Ejected));
            metrics
                .backend_drained
                .with_label_values(&labels)
                .set(i64::from(backend.is_drained()));
            metrics
                .backend_in_flight
                .with_label_values(&labels)
                .set(backend.in_flight() as i64);
        }
        pool.state.admission.set_capacity(pool.capacity());
        let admission = pool.state.admission.snapshot();
        for priority in Priority::ALL {
            metrics
                .queue_depth
                .with_label_values(&[pool.name.as_str(), priority.as_str()])
                .set(admission.waiting[priority as usize] as i64);
        }
        metrics
            .concurrency_limit
            .with_label_values(&[pool.name.as_str()])
            .set(i64::try_from(admission.limit).unwrap_or(i64::MAX));
    }
}
