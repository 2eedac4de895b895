//! Per-request context: what one request carries from phase to phase.

use std::sync::Arc;

use crate::respond::Outcome;
use crate::state::Snapshot;
use crate::upstream::InFlight;

/// State of one request through the proxy phases.
#[derive(Debug)]
pub struct RequestCtx {
    /// The config snapshot this request uses from start to end.
    pub snapshot: Arc<Snapshot>,
    /// The request id, sent upstream and back to the client.
    pub request_id: String,
    /// The matched route, as an index into `snapshot.routes`.
    pub route: Option<usize>,
    /// The backend request now in flight, counted until this drops.
    pub in_flight: Option<InFlight>,
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
            in_flight: None,
            outcome: None,
        }
    }
}
