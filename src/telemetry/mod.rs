//! Telemetry: Prometheus metrics (one registry, bounded labels) and the JSON
//! access log.

mod access;
mod descriptors;
mod dns;
mod metrics;
mod store;

pub(crate) use access::now_rfc3339;
pub use access::{AccessLogReopen, AccessLogger, AccessRecord};
pub use descriptors::{is_accept_out_of_descriptors, is_out_of_descriptors, out_of_descriptors};
pub use dns::DnsMetrics;
pub use metrics::{
    BackendMetrics, ConnectionsClosed, FrameworkEvent, IdempotencyMetrics, IdempotencyResult,
    LatencyTotals, Metrics, RouteMetrics, RouteTotals, UpstreamResult, REVISION,
};
pub use store::{StoreFeature, StoreMetrics};
