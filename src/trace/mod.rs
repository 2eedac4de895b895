//! Following one order through ordergate: W3C Trace Context in and out, and
//! OpenTelemetry spans over OTLP/HTTP.
//!
//! With `[tracing]` on, a request joins the client's trace when its
//! `traceparent` is valid and starts a new one otherwise (as the request id);
//! every attempt at a backend gets a span of its own, and the backend gets
//! that span as its parent in `traceparent` (the client's `tracestate` goes
//! along when valid, and is removed otherwise). Whether the spans are sent is
//! decided when the request ends: a share of requests by chance
//! (`tracing.ratio`, by trace id), and every request that ended in one of
//! ordergate's pages or took more than one attempt. Until then the request
//! only records ids and offsets ([`Trace`]); spans are built for kept
//! requests only and handed to the [`Exporter`]'s bounded queue, never
//! waited for. With tracing off, nothing is recorded and the client's trace
//! headers pass through untouched.

pub mod context;
mod export;
mod record;
mod spans;

use http::HeaderMap;
use pingora::http::RequestHeader;

pub use export::{encode, ExportService, Exporter, BATCH, QUEUE};
pub use record::{AttemptRecord, Failover, Sampler, Step, Trace};
pub use spans::{build, Ending};

/// Sets the current attempt's `traceparent` on the request to the backend,
/// and removes the client's `tracestate` unless it is passed on.
pub fn set_upstream_headers(trace: &Trace, upstream: &mut RequestHeader) -> pingora::Result<()> {
    if let Some(value) = trace.upstream_traceparent() {
        // A `&'static str` name costs pingora no copy of it for its case map.
        upstream.insert_header("traceparent", value)?;
    }
    if !trace.keep_tracestate && upstream.headers.contains_key(&context::TRACESTATE) {
        upstream.remove_header(&context::TRACESTATE);
    }
    Ok(())
}

/// The end of a traced request: when it is kept, its spans are built and
/// queued for export (or counted dropped when the queue is full). The caller
/// asks [`Trace::keep`] first, so that an unkept request builds nothing.
pub fn finish<'p>(
    trace: &Trace,
    exporter: &Exporter,
    headers: &HeaderMap,
    ending: Ending<'_>,
    pool_name: impl Fn(usize) -> &'p str,
) {
    if !trace.keep(ending.page) {
        return;
    }
    let why = if ending.page {
        "page"
    } else if trace.head_sampled {
        "ratio"
    } else {
        "retry"
    };
    exporter.metrics().kept.with_label_values(&[why]).inc();
    // The edge span, the waits and every attempt.
    let count = 1
        + usize::from(trace.room.is_some())
        + usize::from(trace.queue.is_some())
        + trace.attempts.len();
    if !exporter.has_room() {
        exporter.drop_unbuilt(count);
        return;
    }
    let tracestate = trace
        .keep_tracestate
        .then(|| joined(headers, context::TRACESTATE));
    let ending = Ending {
        tracestate: tracestate.as_deref(),
        ..ending
    };
    exporter.submit(build(trace, &ending, pool_name));
}

/// Every value of a header, joined with commas.
fn joined(headers: &HeaderMap, name: http::HeaderName) -> String {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    values.join(",")
}
