//! A kept request's record turned into OpenTelemetry spans (the OTLP protobuf
//! types of `opentelemetry-proto`): the edge span (kind server, the whole
//! request at ordergate) and its children: the waiting room's decision, the
//! wait for a pool slot, and one client span per attempt; a move to a backup
//! pool is an event on the edge span. Attribute names follow the
//! OpenTelemetry HTTP conventions where one fits, `ordergate.*` otherwise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

use super::record::{Step, Trace};

/// How the request ended, for the edge span.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Request path, without the query.
    pub path: &'a str,
    /// Status sent to the client (0: none could be sent).
    pub status: u16,
    /// The route, when one matched.
    pub route: Option<&'a str>,
    /// The pool that served at the end.
    pub pool: Option<&'a str>,
    /// ordergate's own ending: a page's outcome or a kept answer's kind.
    pub outcome: Option<&'static str>,
    /// Whether the shopper got one of ordergate's pages.
    pub page: bool,
    /// The waiting room in front of the route.
    pub room: Option<&'a str>,
    /// The `tracestate` passed on, when kept.
    pub tracestate: Option<&'a str>,
}

/// The spans of one kept request; `pool_name` names a pool by its index in
/// the request's snapshot.
pub fn build<'p>(
    trace: &Trace,
    ending: &Ending<'_>,
    pool_name: impl Fn(usize) -> &'p str,
) -> Vec<Span> {
    let end = trace.now();
    let start = trace.wall_start();
    let at = |offset: Duration| unix_nanos(start, offset);
    let trace_id = trace.trace_id.to_vec();
    let edge_id = trace.span_id.to_vec();
    let trace_state = ending.tracestate.unwrap_or_default().to_string();
    let mut spans = Vec::with_capacity(3 + trace.attempts.len());

    let mut attributes = vec![
        string("http.request.method", ending.method),
        string("url.path", ending.path),
        string("ordergate.request_id", ending.request_id),
        int("ordergate.attempts", trace.attempts.len() as i64),
        int(
            "ordergate.retries",
            trace.attempts.len().saturating_sub(1) as i64,
        ),
    ];
    if ending.status != 0 {
        attributes.push(int("http.response.status_code", i64::from(ending.status)));
    }
    if let Some(route) = ending.route {
        attributes.push(string("ordergate.route", route));
    }
    if let Some(pool) = ending.pool {
        attributes.push(string("ordergate.pool", pool));
    }
    if let Some(last) = trace.attempts.last() {
        attributes.push(string("ordergate.backend", &last.backend.to_string()));
    }
    if let Some(outcome) = ending.outcome {
        attributes.push(string("ordergate.outcome", outcome));
    }
    if ending.page {
        if let Some(page) = ending.outcome {
            attributes.push(string("ordergate.page", page));
        }
    }
    if let Some(result) = trace.idempotency {
        attributes.push(string("ordergate.idempotency", result));
    }
    if let Some(queue) = &trace.queue {
        let wait = queue.end.saturating_sub(queue.start);
        attributes.push(double("ordergate.queue_wait_s", wait.as_secs_f64()));
    }
    let events = trace
        .failovers
        .iter()
        .map(|failover| Event {
            time_unix_nano: at(failover.at),
            name: "failover".to_string(),
            attributes: vec![
                string("ordergate.pool.from", pool_name(failover.from)),
                string("ordergate.pool.to", pool_name(failover.to)),
            ],
            dropped_attributes_count: 0,
        })
        .collect();
    let failed = ending.page || ending.status >= 500 || ending.status == 0;
    spans.push(Span {
        trace_id: trace_id.clone(),
        span_id: edge_id.clone(),
        trace_state: trace_state.clone(),
        parent_span_id: trace.parent_id.map(|id| id.to_vec()).unwrap_or_default(),
        flags: span_flags(trace.parent_id.is_some()),
        name: match ending.route {
            Some(route) => format!("{} {route}", ending.method),
            None => ending.method.to_string(),
        },
        kind: SpanKind::Server as i32,
        start_time_unix_nano: at(Duration::ZERO),
        end_time_unix_nano: at(end),
        attributes,
        dropped_attributes_count: 0,
        events,
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(status(failed, ending.outcome)),
    });

    let child = |name: &str, step: &Step, mut attributes: Vec<KeyValue>| {
        attributes.push(string("ordergate.result", step.result));
        if let Some(position) = step.position {
            attributes.push(int("ordergate.room.position", position as i64));
        }
        Span {
            trace_id: trace_id.clone(),
            span_id: super::record::new_span_id().to_vec(),
            trace_state: trace_state.clone(),
            parent_span_id: edge_id.clone(),
            flags: span_flags(false),
            name: name.to_string(),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: at(step.start),
            end_time_unix_nano: at(step.end),
            attributes,
            status: Some(Status::default()),
            ..Span::default()
        }
    };
    if let Some(room) = &trace.room {
        let attributes = ending
            .room
            .map(|name| vec![string("ordergate.room", name)])
            .unwrap_or_default();
        spans.push(child("waiting room", room, attributes));
    }
    if let Some(queue) = &trace.queue {
        let attributes = ending
            .pool
            .map(|pool| vec![string("ordergate.pool", pool)])
            .unwrap_or_default();
        spans.push(child("admission queue", queue, attributes));
    }

    for (i, attempt) in trace.attempts.iter().enumerate() {
        let mut attributes = vec![
            int("ordergate.attempt", i as i64 + 1),
            string("ordergate.pool", pool_name(attempt.pool)),
            string("server.address", &attempt.backend.ip().to_string()),
            int("server.port", i64::from(attempt.backend.port())),
        ];
        if let Some(status) = attempt.status {
            attributes.push(int("http.response.status_code", i64::from(status)));
        }
        if let Some(failure) = attempt.failure {
            attributes.push(string("error.type", failure));
        }
        if let Some(decision) = attempt.decision {
            attributes.push(string("ordergate.retry", decision));
        }
        spans.push(Span {
            trace_id: trace_id.clone(),
            span_id: attempt.span_id.to_vec(),
            trace_state: trace_state.clone(),
            parent_span_id: edge_id.clone(),
            flags: span_flags(false),
            name: format!("attempt {}", i + 1),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: at(attempt.start),
            end_time_unix_nano: at(attempt.end.unwrap_or(end)),
            attributes,
            status: Some(status(attempt.failure.is_some(), attempt.failure)),
            ..Span::default()
        });
    }
    spans
}

/// OTLP span flags: sampled (it is exported), and whether the parent is
/// remote (the client's span) or local (the edge span), said explicitly.
fn span_flags(remote_parent: bool) -> u32 {
    const SAMPLED: u32 = 0x01;
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    SAMPLED | HAS_IS_REMOTE | if remote_parent { IS_REMOTE } else { 0 }
}

fn status(failed: bool, why: Option<&str>) -> Status {
    if failed {
        Status {
            message: why.unwrap_or_default().to_string(),
            code: StatusCode::Error as i32,
        }
    } else {
        Status::default()
    }
}

fn unix_nanos(start: SystemTime, offset: Duration) -> u64 {
    (start + offset)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A string attribute.
pub(super) fn string(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_string()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

fn double(key: &str, value: f64) -> KeyValue {
    attribute(key, any_value::Value::DoubleValue(value))
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::record::Sampler;
    use http::{HeaderMap, HeaderValue};
    use std::net::SocketAddr;
    use tokio::time::Instant;

    fn attr<'s>(span: &'s Span, key: &str) -> Option<&'s any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn a_retried_request_has_an_edge_span_a_queue_and_two_attempts() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let mut trace = Trace::start(&headers, &Sampler::new(0.0, false), Instant::now());
        trace.queued(Duration::ZERO, "admitted");
        let (a, b) = (
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
        );
        trace.attempt_started(a, 0);
        trace.attempt_failed("reset", None);
        trace.attempt_decided("failover");
        trace.failed_over(0, 1);
        trace.attempt_started(b, 1);
        trace.attempt_answered(200);
        trace.idempotency = Some("first");
        let ending = Ending {
            request_id: "r-1",
            method: "GET",
            path: "/api/products/1",
            status: 200,
            route: Some("shop"),
            pool: Some("dr"),
            outcome: None,
            page: false,
            room: None,
            tracestate: None,
        };
        let names = ["primary", "dr"];
        let spans = build(&trace, &ending, |i| names[i]);
        assert_eq!(spans.len(), 4);
        let edge = &spans[0];
        assert_eq!(edge.trace_id, trace.trace_id.to_vec());
        assert_eq!(
            edge.parent_span_id,
            vec![0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(edge.kind, SpanKind::Server as i32);
        assert_eq!(edge.events.len(), 1);
        assert_eq!(edge.events[0].name, "failover");
        assert_eq!(
            attr(edge, "ordergate.retries"),
            Some(&any_value::Value::IntValue(1))
        );
        assert_eq!(
            attr(edge, "ordergate.idempotency"),
            Some(&any_value::Value::StringValue("first".into()))
        );
        assert_eq!(spans[1].name, "admission queue");
        assert_eq!(spans[1].parent_span_id, edge.span_id);
        let (first, second) = (&spans[2], &spans[3]);
        assert_eq!(first.span_id, trace.attempts[0].span_id.to_vec());
        assert_eq!(first.parent_span_id, edge.span_id);
        assert_eq!(
            attr(first, "error.type"),
            Some(&any_value::Value::StringValue("reset".into()))
        );
        assert_eq!(
            first.status.as_ref().map(|s| s.code),
            Some(StatusCode::Error as i32)
        );
        assert_eq!(
            attr(second, "ordergate.pool"),
            Some(&any_value::Value::StringValue("dr".into()))
        );
        assert!(second.start_time_unix_nano >= first.start_time_unix_nano);
        assert!(edge.end_time_unix_nano >= second.end_time_unix_nano);
    }
}
