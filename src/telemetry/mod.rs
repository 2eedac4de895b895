//! Telemetry: Prometheus metrics (one registry, bounded labels), the JSON
//! access log and the recent error samples of `/status`.

mod access;
mod descriptors;
mod dns;
mod metrics;
mod samples;
mod store;
mod tracing;

pub(crate) use access::now_rfc3339;
pub use access::{AccessLogReopen, AccessLogger, AccessRecord};
pub use descriptors::{is_accept_out_of_descriptors, is_out_of_descriptors, out_of_descriptors};
pub use dns::DnsMetrics;
pub use metrics::{
    BackendMetrics, ConnectionsClosed, FrameworkEvent, IdempotencyMetrics, IdempotencyResult,
    LatencyTotals, Metrics, RouteMetrics, RouteTotals, UpstreamResult, REVISION,
};
pub use samples::{ErrorSample, ErrorSamples};
pub use store::{StoreFeature, StoreMetrics};
pub use tracing::{SpansDropped, TracingMetrics};
