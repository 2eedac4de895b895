//! Following one order, against the real binary: W3C trace context through
//! ordergate and the spans it exports. A real OTLP/HTTP receiver runs in the
//! test (hyper on a loopback port chosen at run time, decoding protobuf with
//! `opentelemetry-proto`); the simulated backends echo the `traceparent` they
//! received (`x-sim-traceparent`, or `/__sim/echo`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::support::{
    admin, admin_section, check, metric_value, request, wait_until, Fleet, Proxy, TempFile,
};

/// The client's trace, in its `traceparent`.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn client_traceparent() -> String {
    format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
}

/// An OTLP/HTTP receiver on a loopback port: keeps every span it is sent.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Paths and content types of the exports received.
    posts: Arc<Mutex<Vec<(String, String)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("collector runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("collector port");
        let addr = listener.local_addr().expect("collector address");
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let posts: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (kept, seen) = (Arc::clone(&spans), Arc::clone(&posts));
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, seen) = (Arc::clone(&kept), Arc::clone(&seen));
                let service = hyper::service::service_fn(move |request| {
                    let (kept, seen) = (Arc::clone(&kept), Arc::clone(&seen));
                    async move { Ok::<_, hyper::Error>(receive(request, &kept, &seen).await) }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            posts,
            _runtime: runtime,
        }
    }

    /// The `[tracing]` table sending here, keeping `ratio` of traces by chance.
    fn tracing_toml(&self, ratio: f64) -> String {
        format!(
            "[tracing]\notlp = \"http://{}\"\nratio = {ratio:?}\ninterval = \"50ms\"\n",
            self.addr
        )
    }

    /// The spans received of the trace `trace_id` (hex).
    fn trace(&self, trace_id: &str) -> Vec<Span> {
        let spans = self.spans.lock().expect("spans");
        spans
            .iter()
            .filter(|span| hex(&span.trace_id) == trace_id)
            .cloned()
            .collect()
    }

    /// Waits up to 10 s for `count` spans of `trace_id`.
    fn wait_trace(&self, trace_id: &str, count: usize) -> Vec<Span> {
        let arrived = wait_until(Duration::from_secs(10), || {
            self.trace(trace_id).len() >= count
        });
        let spans = self.trace(trace_id);
        assert!(
            arrived,
            "{count} spans of trace {trace_id} within 10s; got {:#?}",
            spans
        );
        spans
    }
}

/// One OTLP export: decoded, its spans kept; 200 with an empty answer.
async fn receive(
    request: http::Request<hyper::body::Incoming>,
    kept: &Mutex<Vec<Span>>,
    seen: &Mutex<Vec<(String, String)>>,
) -> http::Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    seen.lock().expect("posts").push((path, content_type));
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let status = match ExportTraceServiceRequest::decode(body) {
        Ok(export) => {
            let mut kept = kept.lock().expect("spans");
            for resource in export.resource_spans {
                for scope in resource.scope_spans {
                    kept.extend(scope.spans);
                }
            }
            http::StatusCode::OK
        }
        Err(_) => http::StatusCode::BAD_REQUEST,
    };
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute<'s>(span: &'s Span, key: &str) -> Option<&'s Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => s.clone(),
        other => panic!("{key} of {}: {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attribute(span, key) {
        Some(Value::IntValue(n)) => *n,
        other => panic!("{key} of {}: {other:?}", span.name),
    }
}

/// `00-<trace>-<span>-<flags>` split into its parts.
fn traceparent_parts(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (
        parts[1].to_string(),
        parts[2].to_string(),
        parts[3].to_string(),
    )
}

#[test]
fn one_order_is_one_trace_with_its_queue_wait_and_both_attempts() {
    let collector = Collector::start();
    let primary = Fleet::start(1);
    let backup = Fleet::start(1);
    let (resetting, healthy) = (primary.addrs[0], backup.addrs[0]);
    // One slot in the primary pool: a second request waits in its queue.
    // Its one backend resets; the backup pool's backend answers the retry.
    let proxy = Proxy::start(&format!(
        r#"
[[pools]]
name = "primary"
backup = "dr"
backends = [ {{ addr = "{resetting}" }} ]
[pools.queue]
limit = 1
timeout = "10s"

[[pools]]
name = "dr"
backends = [ {{ addr = "{healthy}" }} ]

[[routes]]
name = "shop"
pool = "primary"
timeout = "20s"
[routes.retry]
# One try per pool: the reset sends the request to the backup pool.
attempts = 1

{tracing}"#,
        tracing = collector.tracing_toml(0.0),
    ));

    // A slow request holds the only slot...
    primary.set_mode(resetting, r#"{"latency_ms": 1000}"#);
    let addr = proxy.addr;
    let blocker = std::thread::spawn(move || request(addr, "GET", "/api/products/7", &[], b""));
    assert!(
        wait_until(Duration::from_secs(5), || primary.in_flight() == 1),
        "the slow request reached the backend"
    );
    // ...and the backend resets every request after it.
    primary.set_mode(resetting, r#"{"latency_ms": 0, "fault": "reset"}"#);

    let started = std::time::Instant::now();
    let traceparent = client_traceparent();
    let response = proxy.send(
        "GET",
        "/api/products/1",
        &[
            ("traceparent", &traceparent),
            ("tracestate", "shop=checkout"),
        ],
        b"",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.backend(), healthy);
    let waited = started.elapsed();
    let _ = blocker.join();

    // The backend that answered was told of the second attempt's span.
    let received = response
        .header("x-sim-traceparent")
        .expect("the backend got a traceparent");
    let (trace, parent, flags) = traceparent_parts(received);
    assert_eq!(trace, CLIENT_TRACE, "the client's trace is kept");
    assert_eq!(flags, "01", "a retried request is always kept: sampled");

    // Edge span, queue wait, two attempts: four spans, at ratio 0.
    let spans = collector.wait_trace(CLIENT_TRACE, 4);
    let edge = spans
        .iter()
        .find(|s| s.parent_span_id == hex_bytes(CLIENT_SPAN))
        .expect("the edge span, child of the client's span");
    assert_eq!(edge.kind, 2, "server span");
    assert_eq!(text(edge, "ordergate.route"), "shop");
    assert_eq!(text(edge, "ordergate.pool"), "dr");
    assert_eq!(text(edge, "ordergate.backend"), healthy.to_string());
    assert_eq!(int(edge, "http.response.status_code"), 200);
    assert_eq!(int(edge, "ordergate.retries"), 1, "{spans:#?}");
    assert_eq!(
        text(edge, "ordergate.request_id"),
        response.header("x-request-id").unwrap_or_default()
    );
    assert!(
        edge.events.iter().any(|e| e.name == "failover"),
        "the move to the backup pool is an event: {:?}",
        edge.events
    );
    assert_eq!(
        edge.trace_state, "shop=checkout",
        "a valid tracestate is kept"
    );

    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == edge.span_id)
        .collect();
    let queue = children
        .iter()
        .find(|s| s.name == "admission queue")
        .expect("the queue wait");
    let queued = Duration::from_nanos(queue.end_time_unix_nano - queue.start_time_unix_nano);
    assert!(
        queued >= Duration::from_millis(200) && queued <= waited,
        "queued {queued:?} of {waited:?}"
    );
    assert_eq!(text(queue, "ordergate.result"), "admitted");

    let mut attempts: Vec<&&Span> = children.iter().filter(|s| s.kind == 3).collect();
    attempts.sort_by_key(|s| int(s, "ordergate.attempt"));
    assert_eq!(attempts.len(), 2, "{children:#?}");
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(int(first, "server.port"), i64::from(resetting.port()));
    assert_eq!(text(first, "error.type"), "reset");
    assert_eq!(text(first, "ordergate.pool"), "primary");
    assert!(first.start_time_unix_nano >= queue.end_time_unix_nano);
    assert_eq!(int(second, "server.port"), i64::from(healthy.port()));
    assert_eq!(text(second, "ordergate.pool"), "dr");
    assert_eq!(int(second, "http.response.status_code"), 200);
    assert_eq!(
        hex(&second.span_id),
        parent,
        "the backend's traceparent names the second attempt's span"
    );
    assert_ne!(first.span_id, second.span_id);

    let posts = collector.posts.lock().expect("posts").clone();
    assert!(
        posts
            .iter()
            .all(|(path, kind)| path == "/v1/traces" && kind == "application/x-protobuf"),
        "{posts:?}"
    );
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The headers `/__sim/echo` says the backend received.
fn echoed(proxy: &Proxy, headers: &[(&str, &str)]) -> serde_json::Value {
    let response = proxy.send("GET", "/__sim/echo", headers, b"");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["headers"].clone()
}

fn simple_config(fleet: &Fleet, extra: &str) -> String {
    format!(
        r#"
[[pools]]
name = "orders"
backends = {backends}

[[routes]]
name = "shop"
pool = "orders"

{extra}"#,
        backends = fleet.backends_toml(&[]),
    )
}

#[test]
fn with_tracing_off_the_clients_trace_headers_pass_through_untouched() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&simple_config(&fleet, ""));
    let none = echoed(&proxy, &[]);
    assert!(none.get("traceparent").is_none(), "{none}");
    assert!(none.get("tracestate").is_none(), "{none}");
    // Whatever the client sent, valid or not, is the backend's to judge.
    let garbage = "00-NOT-A-TRACE-ff";
    let sent = echoed(
        &proxy,
        &[("traceparent", garbage), ("tracestate", "Bad Key=1")],
    );
    assert_eq!(sent["traceparent"], garbage);
    assert_eq!(sent["tracestate"], "Bad Key=1");
    let valid = client_traceparent();
    assert_eq!(
        echoed(&proxy, &[("traceparent", &valid)])["traceparent"],
        valid.as_str()
    );
}

#[test]
fn an_invalid_client_traceparent_is_replaced_and_its_tracestate_dropped() {
    let collector = Collector::start();
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&simple_config(&fleet, &collector.tracing_toml(0.0)));
    let too_long_state = format!(
        "a={},b={},c={}",
        "x".repeat(200),
        "y".repeat(200),
        "z".repeat(200)
    );
    let too_many = (0..33)
        .map(|i| format!("k{i}=v"))
        .collect::<Vec<_>>()
        .join(",");
    let forged = [
        format!("ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
        format!("00-{}-{CLIENT_SPAN}-01", "0".repeat(32)),
        format!("00-{CLIENT_TRACE}-{}-01", "0".repeat(16)),
        format!("00-{}-{CLIENT_SPAN}-01", CLIENT_TRACE.to_uppercase()),
        format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra"),
        format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}"),
        "<script>alert(1)</script>".to_string(),
        "x".repeat(4000),
    ];
    for bad in &forged {
        let seen = echoed(&proxy, &[("traceparent", bad), ("tracestate", "shop=1")]);
        let sent = seen["traceparent"]
            .as_str()
            .expect("a traceparent")
            .to_string();
        let (trace, span, _) = traceparent_parts(&sent);
        assert_ne!(trace, CLIENT_TRACE, "{bad}: restarted");
        assert_eq!(trace.len(), 32);
        assert_eq!(span.len(), 16);
        assert!(
            sent.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'),
            "{sent}"
        );
        assert!(
            seen.get("tracestate").is_none(),
            "{bad}: tracestate dropped: {seen}"
        );
    }
    // Two traceparent headers are one too many.
    let valid = client_traceparent();
    let twice = echoed(&proxy, &[("traceparent", &valid), ("traceparent", &valid)]);
    let (trace, _, _) = traceparent_parts(twice["traceparent"].as_str().expect("one"));
    assert_ne!(trace, CLIENT_TRACE);

    // A valid one is joined: same trace, ordergate's attempt as the parent.
    let kept = echoed(
        &proxy,
        &[("traceparent", &valid), ("tracestate", "shop=1,pay=2")],
    );
    let (trace, span, flags) = traceparent_parts(kept["traceparent"].as_str().expect("one"));
    assert_eq!(trace, CLIENT_TRACE);
    assert_ne!(span, CLIENT_SPAN);
    assert_eq!(flags, "00", "ratio 0 and the client's flag not followed");
    assert_eq!(kept["tracestate"], "shop=1,pay=2");
    // ...but an oversized or crowded tracestate is dropped.
    for state in [&too_long_state, &too_many] {
        let seen = echoed(&proxy, &[("traceparent", &valid), ("tracestate", state)]);
        assert!(seen.get("tracestate").is_none(), "{seen}");
        assert_eq!(
            traceparent_parts(seen["traceparent"].as_str().expect("one")).0,
            CLIENT_TRACE
        );
    }
}

#[test]
fn a_page_carries_the_trace_id_and_its_trace_is_kept() {
    let collector = Collector::start();
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"fault": "refuse"}"#);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&format!(
        "{}{}",
        admin_section(admin_port),
        simple_config(&fleet, &collector.tracing_toml(0.0))
    ));
    let traceparent = client_traceparent();
    let page = proxy.send(
        "GET",
        "/api/products/1",
        &[
            ("traceparent", &traceparent),
            ("accept", "application/json"),
        ],
        b"",
    );
    assert!(page.status >= 500, "{} {}", page.status, page.text());
    let json = page.json();
    assert_eq!(json["trace_id"], CLIENT_TRACE, "{json}");
    let request_id = json["request_id"].as_str().expect("request id").to_string();
    assert!(
        !page.text().contains(CLIENT_SPAN),
        "span internals never reach the page"
    );
    // A forged traceparent never reaches the page: the request gets a trace
    // of its own.
    let forged = proxy.send(
        "GET",
        "/api/products/1",
        &[
            ("traceparent", "00-<script>alert(1)</script>-x-01"),
            ("accept", "application/json"),
        ],
        b"",
    );
    let own = forged.json()["trace_id"].as_str().unwrap_or("").to_string();
    assert!(
        own.len() == 32 && own.bytes().all(|b| b.is_ascii_hexdigit()) && own != CLIENT_TRACE,
        "{}",
        forged.text()
    );

    // Kept at ratio 0: it ended in a page.
    let spans = collector.wait_trace(CLIENT_TRACE, 2);
    let edge = spans.iter().find(|s| s.kind == 2).expect("edge span");
    assert_eq!(
        text(edge, "ordergate.page"),
        json["error"]["code"].as_str().unwrap_or("?")
    );
    assert_eq!(
        edge.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );

    // /status samples the error with both ids; the access log has both.
    let status = admin(admin_port, "GET", "/status").json();
    let samples = status["error_samples"].as_array().expect("samples").clone();
    assert!(
        samples
            .iter()
            .any(|s| s["request_id"] == request_id.as_str() && s["trace_id"] == CLIENT_TRACE),
        "{samples:?}"
    );
    assert!(proxy.logged_within(Duration::from_secs(5), |line| {
        line.contains(" access]") && line.contains(&request_id) && line.contains(CLIENT_TRACE)
    }));
}

#[test]
fn a_reload_moves_the_export_and_a_dead_collector_costs_only_a_counter() {
    let fleet = Fleet::start(1);
    let dead = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let admin_port = crate::support::free_port();
    let config = |otlp: SocketAddr| {
        format!(
            "{}{}",
            admin_section(admin_port),
            simple_config(
                &fleet,
                &format!("[tracing]\notlp = \"http://{otlp}\"\nratio = 1\ninterval = \"20ms\"\ntimeout = \"200ms\"\n")
            )
        )
    };
    let proxy = Proxy::start(&config(dead));
    // Nobody listens: requests are answered as usual, spans dropped and counted.
    for _ in 0..5 {
        assert_eq!(proxy.get("/api/products/1").status, 200);
    }
    let dropped = |reason: &str| {
        let metrics = admin(admin_port, "GET", "/metrics").text();
        metric_value(
            &metrics,
            &format!("ordergate_tracing_spans_dropped_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || dropped("export_failed") >= 1.0),
        "export failures are counted"
    );

    // A reload points the export at a live collector.
    let collector = Collector::start();
    proxy.rewrite_config(&config(collector.addr));
    proxy.signal("HUP");
    assert!(proxy.logged_within(Duration::from_secs(10), |line| line
        .contains("config reloaded")));
    let traceparent = client_traceparent();
    let response = proxy.send(
        "GET",
        "/api/products/1",
        &[("traceparent", &traceparent)],
        b"",
    );
    assert_eq!(response.status, 200);
    let spans = collector.wait_trace(CLIENT_TRACE, 2);
    assert!(spans.iter().any(|s| s.kind == 2), "{spans:#?}");
}

#[test]
fn check_reports_bad_tracing_settings() {
    let config = TempFile::new(
        "ordergate.toml",
        r#"
[server]
listen = ["127.0.0.1:0"]

[[pools]]
name = "orders"
backends = [ { addr = "127.0.0.1:9" } ]

[[routes]]
name = "shop"
pool = "orders"

[tracing]
otlp = "https://collector:4318"
ratio = 1.5
interval = "0s"
service_name = "has space"
"#,
    );
    let checked = check(&config.path);
    assert!(!checked.ok, "{}", checked.stdout);
    for wanted in [
        "tracing.otlp",
        "https is not supported",
        "tracing.ratio",
        "1.5 is not a share",
        "tracing.interval",
        "tracing.service_name",
    ] {
        assert!(
            checked.stderr.contains(wanted),
            "{wanted}: {}",
            checked.stderr
        );
    }
    let no_port = TempFile::new(
        "ordergate.toml",
        "[[pools]]\nname = \"o\"\nbackends = [ { addr = \"127.0.0.1:9\" } ]\n[[routes]]\nname = \"r\"\npool = \"o\"\n[tracing]\notlp = \"http://collector\"\nratio = \"half\"\n",
    );
    let checked = check(&no_port.path);
    assert!(!checked.ok);
    assert!(
        checked.stderr.contains("names no port"),
        "{}",
        checked.stderr
    );
    assert!(
        checked.stderr.contains("tracing.ratio"),
        "{}",
        checked.stderr
    );
}
