//! Upstream: pools of backends, their live state, and how a request picks one.
//!
//! Live state ([`Backend`]: requests in flight, latency EWMA) outlives config
//! snapshots: the [`Registry`] hands the same `Arc<Backend>` to every snapshot that
//! names the same (pool, address), so a reload keeps counters. A [`Pool`] is part of
//! a snapshot: its backend list and balancing tables are immutable.

mod backend;
mod balance;
mod pool;

pub use backend::{Backend, InFlight, Registry};
pub use balance::key_hash;
pub use pool::Pool;
