//! Telemetry: Prometheus metrics (one registry, bounded labels) and the JSON
//! access log.

mod access;
mod metrics;
mod room;
mod store;

pub(crate) use access::now_rfc3339;
pub use access::{AccessLogReopen, AccessLogger, AccessRecord};
pub use metrics::{
    BackendMetrics, ConnectionsClosed, FrameworkEvent, IdempotencyMetrics, IdempotencyResult,
    LatencyTotals, Metrics, RouteMetrics, RouteTotals, UpstreamResult, REVISION,
};
pub use room::RoomMetrics;
pub use store::{StoreFeature, StoreMetrics};
