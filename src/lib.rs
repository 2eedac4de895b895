//! ordergate: a reverse proxy and load balancer for e-commerce order servers.
//!
//! A request's way through the proxy (pingora phases → modules):
//!
//! ```text
//! new_ctx                  state     hold the current config Snapshot for the whole request
//! request_filter           forward   request id
//!                          route     Route by host, path prefix, method   (none → respond 404)
//! upstream_peer            upstream  Pool → Backend by the pool's algorithm, counted in flight
//!                                    (none can take it → respond 503)
//! upstream_request_filter  forward   X-Forwarded-For / -Proto, X-Request-Id
//! upstream_response_filter upstream  latency into the backend's peak EWMA
//! response_filter          forward   X-Request-Id back to the client
//! fail_to_proxy            respond   the one place a failure becomes a page (502/503/504/...)
//! logging                            access log; the in-flight count ends
//! ```
//!
//! Config flows `file.toml -> config::FileConfig -> validate -> config::Config ->
//! state::Snapshot`; live backend state sits in `upstream::Registry` and outlives
//! snapshots.

pub mod admin;
pub mod admission;
pub mod cli;
pub mod config;
pub mod ctx;
pub mod demo;
pub mod forward;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod retry;
pub mod route;
pub mod server;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod upstream;
