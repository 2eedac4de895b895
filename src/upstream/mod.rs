//! Upstream: pools of backends, their live state, and how a request picks one.
//!
//! Live state ([`Backend`]: requests in flight, latency, health, ejection;
//! [`PoolState`]: retry budget) outlives config snapshots: the [`Registry`] hands
//! the same entry to every snapshot that names the same pool and address, so a
//! reload keeps it. A [`Pool`] is part of a snapshot: its backend list, balancing
//! tables and settings are immutable.

mod backend;
mod balance;
mod budget;
pub mod checker;
pub mod dns;
pub mod failover;
pub mod health;
pub mod outlier;
mod pool;
pub mod tls;

pub use backend::{Availability, Backend, InFlight, PoolState, ProbeReport, Registry};
pub use balance::key_hash;
pub use budget::RetryBudget;
pub use pool::{Pick, Pool};
