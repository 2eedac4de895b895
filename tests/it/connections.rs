//! Honest connections: every answer ordergate writes either leaves the
//! shopper's keep-alive connection usable for the next request or says
//! `Connection: close` and closes it. Also the request size limits (431, 413)
//! and the header and keep-alive timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::conn::Conn;
use crate::support::failing::{one_backend, Failing};
use crate::support::{admin_section, wait_until, Fleet, Proxy, Response};

fn says_close(response: &Response) -> bool {
    response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
}

/// After `response` on `conn`: if the answer said `Connection: close`, the
/// server closes the connection; otherwise the next request on it succeeds.
/// Returns whether the connection was kept.
fn next_request_or_close(what: &str, conn: &mut Conn, response: &Response) -> bool {
    if says_close(response) {
        assert!(
            conn.closed_within(Duration::from_secs(5)),
            "{what}: said Connection: close but kept the connection open"
        );
        return false;
    }
    match conn.get("/api/products/1") {
        Ok(next) => assert_eq!(next.status, 200, "{what}: the next request: {next:?}"),
        Err(e) => {
            panic!("{what}: the answer said keep-alive, then the next request failed raw: {e:?}")
        }
    }
    true
}

/// Sends one request on a fresh keep-alive connection, checks the page kind
/// and then the connection.
fn check(
    proxy: &Proxy,
    what: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    (page, keeps): (&str, bool),
) {
    let mut conn = Conn::open(proxy.addr);
    let response = conn
        .request(method, path, headers, body)
        .unwrap_or_else(|e| panic!("{what}: raw failure {e:?}"));
    assert_eq!(
        response.header("x-ordergate-page"),
        Some(page),
        "{what}: {} {:?}",
        response.status,
        response.headers
    );
    assert!(response.header("x-request-id").is_some(), "{what}");
    let kept = next_request_or_close(what, &mut conn, &response);
    assert_eq!(kept, keeps, "{what}: connection kept = {kept}");
}

#[test]
fn every_page_leaves_a_usable_connection_or_says_close() {
    let failing = Failing::start(5);
    let fleet = &failing.fleet;
    let hanging = fleet.addrs[4];
    fleet.set_mode(hanging, r#"{"fault": "hang"}"#);
    let refused = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let admin_port = crate::support::free_port();
    let config = format!(
        r#"{admin}
[[pools]]
name = "refused"
backends = {refused_pool}

[[pools]]
name = "hanging"
request_timeout = "300ms"
backends = {hanging_pool}

[[routes]]
name = "ok"
path_prefix = "/api"
pool = "healthy"
max_body_bytes = 100

[[routes]]
name = "refused"
path_prefix = "/refused"
pool = "refused"
[routes.retry]
attempts = 1

[[routes]]
name = "hanging"
path_prefix = "/hanging"
pool = "hanging"
[routes.retry]
attempts = 1
{failing}"#,
        admin = admin_section(admin_port),
        refused_pool = one_backend(refused),
        hanging_pool = one_backend(hanging),
        failing = failing.config(),
    );
    let proxy = Proxy::start(&config);
    let json = [("accept", "application/json")];

    check(
        &proxy,
        "no route",
        "GET",
        "/nowhere",
        &[],
        b"",
        ("no_route", true),
    );
    let big = "x".repeat(40 * 1024);
    check(
        &proxy,
        "header too large",
        "GET",
        "/api/products/1",
        &[("x-big", big.as_str())],
        b"",
        ("header_too_large", false),
    );
    check(
        &proxy,
        "body too large",
        "POST",
        "/api/orders",
        &json,
        &[b'x'; 1000],
        ("body_too_large", false),
    );
    let limited = wait_until(Duration::from_secs(3), || {
        crate::support::get(proxy.addr, "/limited/1").is_ok_and(|r| r.status == 429)
    });
    assert!(limited, "the rate limit answers 429");
    check(
        &proxy,
        "rate limited",
        "GET",
        "/limited/1",
        &[],
        b"",
        ("rate_limited", true),
    );

    let down = wait_until(Duration::from_secs(5), || {
        crate::support::get(proxy.addr, "/dead/1")
            .is_ok_and(|r| r.header("x-ordergate-page") == Some("no_healthy_backend"))
    });
    assert!(down, "the dead backend is marked down");
    check(
        &proxy,
        "no healthy backend",
        "GET",
        "/dead/1",
        &[],
        b"",
        ("no_healthy_backend", true),
    );
    check(
        &proxy,
        "connect failure",
        "GET",
        "/refused/1",
        &[],
        b"",
        ("connect_failed", false),
    );
    check(
        &proxy,
        "reset (GET)",
        "GET",
        "/resetting/1",
        &[],
        b"",
        ("upstream_reset", false),
    );
    check(
        &proxy,
        "reset (POST)",
        "POST",
        "/resetting/orders",
        &json,
        b"{\"sku\":\"tea\"}",
        ("upstream_reset", false),
    );
    check(
        &proxy,
        "timeout",
        "GET",
        "/hanging/1",
        &[],
        b"",
        ("upstream_timeout", false),
    );
    check(
        &proxy,
        "intercepted 500",
        "GET",
        "/broken/1",
        &[],
        b"",
        ("upstream_status", false),
    );

    // The slow pool takes one request at a time and queues one more for 300 ms.
    let addr = proxy.addr;
    let first = std::thread::spawn(move || {
        let mut conn = Conn::open(addr);
        let response = conn.get("/slow/1").expect("first");
        let kept = next_request_or_close("upstream timeout (queued pool)", &mut conn, &response);
        (response, kept)
    });
    assert!(wait_until(Duration::from_secs(2), || fleet.in_flight() == 1));
    let second = std::thread::spawn(move || {
        let mut conn = Conn::open(addr);
        let response = conn.get("/slow/2").expect("second");
        let kept = next_request_or_close("queue timeout", &mut conn, &response);
        (response, kept)
    });
    assert!(
        wait_until(Duration::from_secs(2), || waiting(admin_port) == 1),
        "the second request waits"
    );
    check(
        &proxy,
        "queue full",
        "GET",
        "/slow/3",
        &[],
        b"",
        ("queue_full", true),
    );
    let (second, kept) = second.join().expect("second");
    assert_eq!(second.header("x-ordergate-page"), Some("queue_timeout"));
    assert!(kept, "queue timeout keeps the connection");
    let (first, kept) = first.join().expect("first");
    assert_eq!(first.header("x-ordergate-page"), Some("upstream_timeout"));
    assert!(
        !kept,
        "pingora closes the connection after a failure at a backend"
    );

    // With the drain rate now measured as nearly zero, a newcomer is shed at once.
    let addr = proxy.addr;
    let busy = std::thread::spawn(move || crate::support::get(addr, "/slow/4"));
    assert!(wait_until(Duration::from_secs(2), || fleet.in_flight() == 1));
    let mut shed_seen = false;
    assert!(wait_until(Duration::from_secs(3), || {
        let mut conn = Conn::open(proxy.addr);
        let Ok(response) = conn.get("/slow/5") else {
            return false;
        };
        if response.header("x-ordergate-page") == Some("shed") {
            assert!(next_request_or_close("shed", &mut conn, &response));
            shed_seen = true;
        }
        shed_seen
    }));
    let _ = busy.join();
}

fn waiting(admin_port: u16) -> u64 {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let Ok(status) = crate::support::get(addr, "/status") else {
        return 0;
    };
    let pools = status.json()["pools"].clone();
    let Some(slow) = pools
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == "slow"))
    else {
        return 0;
    };
    ["low", "normal", "high", "critical"]
        .iter()
        .filter_map(|p| slow["queue"]["waiting"][*p].as_u64())
        .sum()
}

/// The bug as a shopper met it: both backends reset, one keep-alive client
/// (like a browser: it reuses its connection unless told to close) sends
/// GETs and POSTs. Every request gets a page; none meets a dead connection.
#[test]
fn a_keep_alive_shopper_never_meets_a_dead_connection_after_a_page() {
    let fleet = Fleet::start(2);
    fleet.set_mode(fleet.addrs[0], r#"{"fault": "reset"}"#);
    fleet.set_mode(fleet.addrs[1], r#"{"fault": "reset_after_body"}"#);
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\n",
        fleet.backends_toml(&[1, 1])
    ));
    let mut conn = Conn::open(proxy.addr);
    let mut reconnects = 0;
    for i in 0..6 {
        for (method, path, body) in [
            ("GET", format!("/api/products/{i}"), &b""[..]),
            ("POST", "/api/orders".to_string(), &b"{\"sku\":\"tea\"}"[..]),
        ] {
            let response = conn
                .request(method, &path, &[], body)
                .unwrap_or_else(|e| panic!("{method} {i}: raw {e:?}"));
            assert_eq!(response.status, 502, "{method} {i}");
            assert!(response.header("x-ordergate-page").is_some());
            if says_close(&response) {
                assert!(conn.closed_within(Duration::from_secs(5)));
                conn = Conn::open(proxy.addr);
                reconnects += 1;
            }
        }
    }
    assert!(
        reconnects > 0,
        "pingora closes after a backend failure, and the page says so"
    );
}

#[test]
fn a_chunked_body_growing_past_the_limit_is_cut_and_never_forwarded_whole() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\nmax_body_bytes = 1000\n",
        fleet.backends_toml(&[1])
    ));
    let mut conn = Conn::open(proxy.addr);
    let mut raw =
        b"POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"190\r\n");
        raw.extend_from_slice(&[b'x'; 400]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    conn.send_raw(&raw).expect("send");
    let response = conn.read_response(false).expect("an answer");
    assert_eq!(response.status, 413, "{:?}", response.headers);
    assert_eq!(response.header("x-ordergate-page"), Some("body_too_large"));
    assert!(says_close(&response));
    assert!(conn.closed_within(Duration::from_secs(5)));
    let stats = fleet.stats();
    assert_eq!(
        stats["orders_created"].as_u64().unwrap_or(0),
        0,
        "no order from a cut body: {stats}"
    );
    // A body within the limit still goes through.
    let mut conn = Conn::open(proxy.addr);
    let order = format!("{{\"sku\":\"{}\"}}", "x".repeat(500));
    let ok = conn
        .request("POST", "/api/orders", &[], order.as_bytes())
        .expect("small body");
    assert!(ok.status < 300, "{ok:?}");
}

#[test]
fn slow_headers_and_idle_connections_are_closed_and_counted() {
    let fleet = Fleet::start(1);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::try_start_with(
        "grace_period = \"0s\"\nheader_timeout = \"1s\"\nkeepalive_timeout = \"2s\"",
        &format!(
            "{}[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\n",
            admin_section(admin_port),
            fleet.backends_toml(&[1])
        ),
    )
    .expect("start");
    // A slow-header client: a byte every 200 ms never finishes its head.
    let mut slow = Conn::open(proxy.addr);
    slow.send_raw(b"GET /api/products/1 HTTP/1.1\r\n")
        .expect("send");
    let started = std::time::Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(6) {
        if slow.send_raw(b"X").is_err() || slow.closed_within(Duration::from_millis(200)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow-header connection is closed");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "not before the timeout: {after:?}"
    );

    // An idle keep-alive connection is closed after keepalive_timeout.
    let mut idle = Conn::open(proxy.addr);
    assert_eq!(idle.get("/api/products/1").expect("first").status, 200);
    let idle_since = std::time::Instant::now();
    assert!(
        idle.closed_within(Duration::from_secs(6)),
        "idle connection closed"
    );
    assert!(idle_since.elapsed() >= Duration::from_millis(1500));

    // The connection closes a moment before the count goes up: wait for it.
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    for reason in ["header_timeout", "keepalive_timeout"] {
        let line = format!("ordergate_connections_closed_total{{reason=\"{reason}\"}} 1");
        let counted = wait_until(Duration::from_secs(3), || {
            crate::support::get(admin, "/metrics").is_ok_and(|m| m.text().contains(&line))
        });
        assert!(counted, "{line}");
    }
}

#[test]
fn on_a_keep_alive_connection_the_header_deadline_runs_from_the_first_byte() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::try_start_with(
        "grace_period = \"0s\"\nheader_timeout = \"1s\"\nkeepalive_timeout = \"4s\"",
        &format!(
            "[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\n",
            fleet.backends_toml(&[1])
        ),
    )
    .expect("start");
    let mut conn = Conn::open(proxy.addr);
    assert_eq!(conn.get("/api/products/1").expect("first").status, 200);
    let idle_since = std::time::Instant::now();
    // Idle for 3 s (under keepalive_timeout), then a head that never ends.
    assert!(!conn.closed_within(Duration::from_secs(3)), "kept alive");
    conn.send_raw(b"GET /api/products/1 HTTP/1.1\r\n")
        .expect("send");
    let first_byte = idle_since.elapsed();
    let mut closed = false;
    while idle_since.elapsed() < Duration::from_secs(8) {
        if conn.send_raw(b"X").is_err() || conn.closed_within(Duration::from_millis(100)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow head is closed");
    // header_timeout (1 s) after the first byte; the deadline of the whole
    // wait (keepalive_timeout + header_timeout = 5 s) is not what closed it.
    let after_first_byte = idle_since.elapsed() - first_byte;
    assert!(
        after_first_byte >= Duration::from_millis(900)
            && idle_since.elapsed() < Duration::from_millis(4800),
        "closed {after_first_byte:?} after the first byte, {:?} after the idle start",
        idle_since.elapsed()
    );
}

#[test]
fn slow_header_clients_do_not_stop_a_normal_shopper() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\n",
        fleet.backends_toml(&[1])
    ));
    // Half-open connections that never finish their head (bounded by the
    // test process's own descriptor limit; the load bench goes to 10 000).
    let mut slowloris = Vec::new();
    for _ in 0..400 {
        let mut conn = Conn::open(proxy.addr);
        conn.send_raw(b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Slow: ")
            .expect("send");
        slowloris.push(conn);
    }
    for i in 0..20 {
        let started = std::time::Instant::now();
        let response =
            crate::support::get(proxy.addr, &format!("/api/products/{i}")).expect("served");
        assert_eq!(response.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "served in {:?}",
            started.elapsed()
        );
    }
    drop(slowloris);
}
