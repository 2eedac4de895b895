//! Per-request context: what one request carries from phase to phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::respond::Outcome;
use crate::route::Route;
use crate::state::Snapshot;
use crate::upstream::{InFlight, Pool};

/// State of one request through the proxy phases.
#[derive(Debug)]
pub struct RequestCtx {
    /// The config snapshot this request uses from start to end.
    pub snapshot: Arc<Snapshot>,
    /// The request id, sent upstream and back to the client.
    pub request_id: String,
    /// The matched route, as an index into `snapshot.routes`.
    pub route: Option<usize>,
    /// When the route's overall deadline passes.
    pub deadline: Option<Instant>,
    /// The attempt now in flight at a backend, counted until this drops.
    pub in_flight: Option<InFlight>,
    /// Backends tried so far, in order.
    pub tried: Vec<SocketAddr>,
    /// The wait before the next attempt, when a retry was decided.
    pub backoff: Option<Duration>,
    /// How the request ended, when ordergate rather than a backend decided.
    pub outcome: Option<Outcome>,
}

impl RequestCtx {
    /// A fresh context holding the current snapshot.
    pub fn new(snapshot: Arc<Snapshot>) -> RequestCtx {
        RequestCtx {
            snapshot,
            request_id: String::new(),
            route: None,
            deadline: None,
            in_flight: None,
            tried: Vec::new(),
            backoff: None,
            outcome: None,
        }
    }

    /// The matched route and its pool, once the request was classified.
    pub fn route_and_pool(&self) -> Option<(&Route, &Pool)> {
        let route = self.snapshot.routes.get(self.route?)?;
        let pool = self.snapshot.pools.get(route.pool)?;
        Some((route, pool))
    }

    /// Tries made so far.
    pub fn tries(&self) -> u32 {
        self.tried.len() as u32
    }

    /// Time left before the route's deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        })
    }
}
