//! ordergate: a reverse proxy and load balancer for e-commerce order servers.
//!
//! A request's way through the proxy (pingora phases → modules):
//!
//! ```text
//! (each connection)        accept     a PROXY protocol header from a trusted balancer names the client
//! (each TLS handshake)     sni        the certificate for the client's server name (or the default)
//! (each connection)        connection header and keep-alive timeouts around pingora's HTTP/1 reads
//! new_ctx                  state      hold the current config Snapshot for the whole request
//! request_filter           client     the shopper's address: the peer, or whom a trusted proxy names
//!                          forward    request id
//!                          trace      W3C trace context: the client's trace, or a new one
//!                          connection request head size                     (over → 431 page)
//!                          route      Route by host, path prefix, method    (none → 404 page)
//!                          ctx        the serving Pool: the route's, or its backup while it is down
//!                          connection declared body size                    (over → 413 page)
//!                          stream     a WebSocket, event stream or long poll waits by the
//!                                     route's stream_idle_timeout
//!                          route      rate limit per client key             (over → 429 page)
//!                          maintenance an open window                       (→ 503 maintenance page)
//!                          room       waiting room: pass, ticket or bypass  (in line → 503 waiting page)
//!                          idempotency a keyed repeat                       (→ replay, 409, 422, 400)
//!                          admission  a slot in the Pool, by priority       (full → backup pool;
//!                                     timeout, shed → 503 page or a stale copy)
//! request_body_filter      connection a body growing past the limit         (→ cut, 413 page)
//! upstream_peer            upstream   Pool → Backend by the pool's algorithm, counted in flight
//!                                     (none can take it → the backup pool, else 503 page)
//! fail_to_connect,         upstream   passive health (outlier ejection)
//! error_while_proxy        retry      order safety, conditions, budget, deadline → another Backend
//! upstream_request_filter  forward    X-Forwarded-For / -Proto, X-Request-Id
//!                          trace      traceparent naming this attempt's span
//! upstream_response_filter upstream   latency, passive health; retry a retryable status;
//!                          respond    swap a 5xx body for the page
//!                          stream     an opened stream gives its pool slot back
//!                          idempotency, stale: start recording the answer (kept at its end)
//! response_filter          forward    X-Request-Id back to the client; a new room pass
//! fail_to_proxy            respond    the one place a failure becomes a page (502/503/504/...),
//!                          stale      or a kept copy of the read; the page decides the connection
//! logging                  idempotency settle the keyed request's record
//! logging                  telemetry  metrics, access log; the slot and the in-flight count end
//!                          trace      kept (ratio, page, retry) → spans to the OTLP export queue
//! ```
//!
//! Beside them: `upstream::checker` (active probes, on the pools its caller
//! gives), `reload` (SIGHUP and file changes), `admin` (status, metrics,
//! reload, drain, maintenance windows, waiting rooms).
//!
//! Leaves every module may import: `config` (the validated config types),
//! `outcome` (the closed set of ways a request ends without a backend's
//! answer), `kept` (answers kept to be sent again: replays and stale copies)
//! and `pages` (the page catalog `respond` renders).
//!
//! Config flows `file.toml -> config::FileConfig -> validate -> config::Config ->
//! state::Snapshot`; live backend and pool state sits in `upstream::Registry`,
//! each route's live state (rate-limit counts, idempotency records, stale
//! copies, waiting-room lines) in `live::LiveState`, both outliving snapshots.

pub mod accept;
pub mod admin;
pub mod admission;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod ctx;
pub mod demo;
pub mod forward;
pub mod idempotency;
pub mod kept;
pub mod live;
pub mod maintenance;
pub mod outcome;
pub mod pages;
pub mod path;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod reload;
pub mod respond;
pub mod retry;
pub mod rewrite;
pub mod room;
pub mod route;
pub mod secret;
pub mod server;
pub mod sim;
pub mod sni;
pub mod stale;
pub mod state;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod trace;
pub mod upstream;
