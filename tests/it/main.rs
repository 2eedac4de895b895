//! The integration suite in one binary: each module is one capability, tried
//! against the real `ordergate` binary (or, for `properties`, the library) with
//! simulated order backends on loopback ports chosen at run time. One binary
//! links pingora once; `cargo test --test it room::` runs one capability.

mod support;

mod backup;
mod check;
mod connections;
mod crowd;
mod dns;
mod edge;
mod hostile;
mod idempotency;
mod maintenance;
mod operations;
mod overload;
mod properties;
mod proxy;
mod redis;
mod resilience;
mod room;
mod room_line;
mod sni;
mod sre;
mod stale;
mod streams;
mod tracing;
mod trust;
mod upstream_tls;
