//! Streams: WebSocket tunnels and long answers (server-sent events, long
//! polls). An order-status page keeps one open for minutes with long quiet
//! gaps, so a stream is bounded by how long it may stay *idle*
//! (`routes.stream_idle_timeout`, default 5 minutes), never by the pool's
//! `request_timeout` or the route's `timeout`, which are sized for answers
//! that take seconds.
//!
//! A request is a stream when it asks to upgrade to a WebSocket, accepts
//! `text/event-stream`, or its route says `long_poll = true`. Such a request
//! waits for its answer head, and then for every further byte in either
//! direction, up to the idle timeout. Once the backend answers with a stream
//! (`101 Switching Protocols`, or `Content-Type: text/event-stream`), the
//! request gives its pool slot and its backend's in-flight count back: a
//! thousand shoppers watching their orders do not starve checkout. Open
//! streams are counted apart (`ordergate_streams_open`). At shutdown a stream
//! is held to the end of the grace period like any request, then cut.
//!
//! ordergate never compresses answers, so an event stream is forwarded
//! chunk by chunk as the backend flushes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::telemetry::Metrics;

/// Streams open in this process, all routes together (for the shutdown log).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Streams open now in this process.
pub fn open_now() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// The kind of stream a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// An HTTP/1.1 upgrade to the WebSocket protocol.
    WebSocket,
    /// A request that accepts `text/event-stream` (the browser's `EventSource`).
    EventStream,
    /// A request on a `long_poll` route: its answer may be slow to come.
    LongPoll,
}

impl StreamKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::WebSocket => "websocket",
            StreamKind::EventStream => "event_stream",
            StreamKind::LongPoll => "long_poll",
        }
    }
}

impl StreamKind {
    const ALL: [StreamKind; 3] = [
        StreamKind::WebSocket,
        StreamKind::EventStream,
        StreamKind::LongPoll,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// The stream metric families, registered once per process
/// ([`Metrics::registered`]).
#[derive(Debug)]
struct StreamVecs {
    open: IntGaugeVec,
    opened: IntCounterVec,
    idle_closed: IntCounterVec,
}

impl StreamVecs {
    fn new(registry: &Registry) -> StreamVecs {
        let labels = &["route", "kind"];
        let open = IntGaugeVec::new(
            Opts::new(
                "ordergate_streams_open",
                "Streams (WebSockets, event streams, long polls) open now, by route and kind",
            ),
            labels,
        )
        .expect("static metric");
        let opened = IntCounterVec::new(
            Opts::new(
                "ordergate_streams_total",
                "Streams a backend opened (101, text/event-stream, a long poll's answer), by route and kind",
            ),
            labels,
        )
        .expect("static metric");
        let idle_closed = IntCounterVec::new(
            Opts::new(
                "ordergate_streams_idle_closed_total",
                "Streams closed because they stayed idle past stream_idle_timeout, by route",
            ),
            &["route"],
        )
        .expect("static metric");
        for metric in [
            Box::new(open.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(opened.clone()),
            Box::new(idle_closed.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        StreamVecs {
            open,
            opened,
            idle_closed,
        }
    }
}

/// One route's stream metric handles, resolved when a snapshot is built.
#[derive(Debug, Clone)]
pub struct RouteStreams {
    open: [IntGauge; 3],
    opened: [IntCounter; 3],
    idle_closed: IntCounter,
}

impl RouteStreams {
    /// The handles of `route`.
    pub fn new(metrics: &Metrics, route: &str) -> RouteStreams {
        let vecs = metrics.registered(StreamVecs::new);
        let by_kind = |kind: StreamKind| [route, kind.as_str()];
        RouteStreams {
            open: StreamKind::ALL.map(|kind| vecs.open.with_label_values(&by_kind(kind))),
            opened: StreamKind::ALL.map(|kind| vecs.opened.with_label_values(&by_kind(kind))),
            idle_closed: vecs.idle_closed.with_label_values(&[route]),
        }
    }

    /// Counts a stream the backend opened; it is counted open until the
    /// returned guard drops.
    pub fn open(&self, kind: StreamKind) -> OpenStream {
        self.opened[kind.index()].inc();
        let gauge = self.open[kind.index()].clone();
        gauge.inc();
        OPEN.fetch_add(1, Ordering::Relaxed);
        OpenStream {
            gauge,
            idle_closed: self.idle_closed.clone(),
        }
    }
}

/// A stream counted open; it stops being counted when dropped.
#[derive(Debug)]
pub struct OpenStream {
    gauge: IntGauge,
    idle_closed: IntCounter,
}

impl OpenStream {
    /// The stream ends because it stayed idle too long.
    pub fn idled_out(self) {
        self.idle_closed.inc();
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.gauge.dec();
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stream a request asks for, if any. `long_poll` is the route's setting.
pub fn requested(method: &Method, headers: &HeaderMap, long_poll: bool) -> Option<StreamKind> {
    if method == Method::GET && is_websocket_upgrade(headers) {
        return Some(StreamKind::WebSocket);
    }
    if accepts_event_stream(headers) {
        return Some(StreamKind::EventStream);
    }
    long_poll.then_some(StreamKind::LongPoll)
}

/// The stream the backend's answer opened, if any: a protocol switch (a
/// WebSocket), or an event stream. Such an answer holds no pool slot while
/// it lasts.
pub fn opened(status: u16, headers: &HeaderMap) -> Option<StreamKind> {
    if status == 101 {
        return Some(StreamKind::WebSocket);
    }
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| media_type_is(v, "text/event-stream"))
        .then_some(StreamKind::EventStream)
}

/// How long each wait for the backend may take in an attempt:
/// `stream_idle` (the route's `stream_idle_timeout`) when the request is a
/// stream, otherwise `attempt` (the pool's `request_timeout` within the
/// route's deadline).
pub fn read_timeout(stream_idle: Option<Duration>, attempt: Duration) -> Duration {
    stream_idle.unwrap_or(attempt)
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    list_has(headers, http::header::UPGRADE, |token| {
        token.trim().eq_ignore_ascii_case("websocket")
    }) && list_has(headers, http::header::CONNECTION, |token| {
        token.trim().eq_ignore_ascii_case("upgrade")
    })
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    list_has(headers, http::header::ACCEPT, |item| {
        media_type_is(item, "text/event-stream")
    })
}

/// Whether an item of the comma-separated header `name` (every line of it)
/// satisfies `wanted`.
fn list_has(
    headers: &HeaderMap,
    name: http::header::HeaderName,
    wanted: impl Fn(&str) -> bool,
) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(wanted)
}

/// Whether a media type (with or without parameters) is `expected`. Runs
/// on every answer's `Content-Type`: a value too short to hold `expected`
/// is refused before any splitting.
fn media_type_is(value: &str, expected: &str) -> bool {
    if value.len() < expected.len() {
        return false;
    }
    let media = value.split_once(';').map_or(value, |(media, _)| media);
    // Header values are visible ASCII, spaces and tabs: ASCII trimming is
    // the whole of it.
    media.trim_ascii().eq_ignore_ascii_case(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_websocket_upgrade_is_a_stream() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert_eq!(
            requested(&Method::GET, &ws, false),
            Some(StreamKind::WebSocket)
        );
        // An upgrade needs both headers, and a GET.
        let half = headers(&[("upgrade", "websocket")]);
        assert_eq!(requested(&Method::GET, &half, false), None);
        assert_eq!(requested(&Method::POST, &ws, false), None);
        let h2c = headers(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        assert_eq!(requested(&Method::GET, &h2c, false), None);
    }

    #[test]
    fn an_event_source_is_a_stream_and_a_long_poll_route_makes_every_request_one() {
        let sse = headers(&[("accept", "text/html, text/event-stream;q=0.9")]);
        assert_eq!(
            requested(&Method::GET, &sse, false),
            Some(StreamKind::EventStream)
        );
        let json = headers(&[("accept", "application/json")]);
        assert_eq!(requested(&Method::GET, &json, false), None);
        assert_eq!(
            requested(&Method::GET, &json, true),
            Some(StreamKind::LongPoll)
        );
    }

    #[test]
    fn a_switch_or_an_event_stream_answer_opens_a_stream() {
        assert_eq!(opened(101, &HeaderMap::new()), Some(StreamKind::WebSocket));
        let sse = headers(&[("content-type", "Text/Event-Stream; charset=utf-8")]);
        assert_eq!(opened(200, &sse), Some(StreamKind::EventStream));
        let json = headers(&[("content-type", "application/json")]);
        assert_eq!(opened(200, &json), None);
        let long = headers(&[("content-type", "application/json; charset=utf-8")]);
        assert_eq!(opened(200, &long), None);
        let spaced = headers(&[("content-type", "text/event-stream ;charset=utf-8")]);
        assert_eq!(opened(200, &spaced), Some(StreamKind::EventStream));
        let prefix = headers(&[("content-type", "text/event-streams")]);
        assert_eq!(opened(200, &prefix), None);
    }

    #[test]
    fn a_stream_waits_by_its_idle_timeout() {
        let (idle, attempt) = (Duration::from_secs(300), Duration::from_secs(10));
        assert_eq!(read_timeout(None, attempt), attempt);
        assert_eq!(read_timeout(Some(idle), attempt), idle);
    }
}
