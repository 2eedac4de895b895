//! Black-box overload tests: the degradation pages for every failure a shopper
//! can meet, the queue, priorities with reserved shares, and rate limiting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::failing::{one_backend, Failing};
use crate::support::{admin_section, request, wait_until, Fleet, Proxy, Response};

/// What each kind of client asks for: (name, headers).
const CLIENTS: [(&str, &[(&str, &str)]); 4] = [
    ("json-en", &[("accept", "application/json")]),
    (
        "json-zh",
        &[
            ("accept", "application/json"),
            ("accept-language", "zh-CN,zh;q=0.9"),
        ],
    ),
    (
        "html-en",
        &[
            ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ("accept-language", "en-US"),
        ],
    ),
    (
        "html-zh",
        &[
            ("accept", "text/html,*/*;q=0.8"),
            ("accept-language", "zh-CN"),
        ],
    ),
];

fn has_chinese(text: &str) -> bool {
    text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

/// Checks one page: ordergate's marker, status, Retry-After, format, language,
/// the request id, and that nothing internal leaks.
fn check_page(
    case: &str,
    client: &str,
    response: &Response,
    status: u16,
    reason: &str,
    retry_after: bool,
) {
    let at = format!("{case} / {client}");
    let text = response.text();
    assert_eq!(response.status, status, "{at}: {text}");
    assert_eq!(
        response.header("x-ordergate-page"),
        Some(reason),
        "{at}: {:?}",
        response.headers
    );
    assert_eq!(
        response.header("retry-after").is_some(),
        retry_after,
        "{at}: Retry-After"
    );
    let id = response
        .header("x-request-id")
        .unwrap_or_else(|| panic!("{at}: no request id"));
    assert!(text.contains(id), "{at}: the page shows the request id");
    let html = client.starts_with("html");
    let content_type = response.header("content-type").unwrap_or_default();
    assert_eq!(
        content_type.starts_with("text/html"),
        html,
        "{at}: {content_type}"
    );
    if !html {
        let page = response.json();
        assert_eq!(page["error"]["code"], reason, "{at}: {text}");
        assert_eq!(page["request_id"], id, "{at}");
    }
    assert_eq!(has_chinese(&text), client.ends_with("zh"), "{at}: language");
    for leak in [
        "127.0.0.1",
        "pingora",
        "forced status",
        "Peer",
        "panicked",
        "Traceback",
    ] {
        assert!(!text.contains(leak), "{at}: leaks {leak:?}: {text}");
    }
}

/// Requests waiting in the queue of the pool at `pool` (its index in the config),
/// as the admin API reports.
fn waiting(admin_port: u16, pool: usize) -> u64 {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let Ok(status) = crate::support::get(addr, "/status") else {
        return 0;
    };
    let waiting = &status.json()["pools"][pool]["queue"]["waiting"];
    ["low", "normal", "high", "critical"]
        .iter()
        .filter_map(|p| waiting[*p].as_u64())
        .sum()
}

fn send(proxy_addr: SocketAddr, method: &str, path: &str, client: &[(&str, &str)]) -> Response {
    let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
    request(proxy_addr, method, path, client, body)
        .unwrap_or_else(|e| panic!("{method} {path}: raw failure {e:?}"))
}

/// `GET path` on another thread, with the given client headers.
fn spawn_send(
    addr: SocketAddr,
    path: &'static str,
    headers: &[(&str, &str)],
) -> std::thread::JoinHandle<Response> {
    let owned: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    std::thread::spawn(move || {
        let headers: Vec<(&str, &str)> = owned
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        send(addr, "GET", path, &headers)
    })
}

#[test]
fn every_failure_is_a_friendly_page_in_the_shoppers_format_and_language() {
    let failing = Failing::start(4);
    let fleet = &failing.fleet;
    let config = failing.config();
    for (client, headers) in CLIENTS {
        // A fresh proxy per client: the queue's drain-rate estimate from an earlier
        // round would shed at once (rightly) instead of showing queue full/timeout.
        let admin_port = crate::support::free_port();
        let proxy = Proxy::start(&format!("{}{config}", admin_section(admin_port)));
        // No route.
        check_page(
            "no route",
            client,
            &send(proxy.addr, "GET", "/nowhere", headers),
            404,
            "no_route",
            false,
        );

        // No healthy backend: the only backend's port is closed and probes say so.
        let down = wait_until(Duration::from_secs(5), || {
            send(proxy.addr, "GET", "/dead/1", headers).header("x-ordergate-page")
                == Some("no_healthy_backend")
        });
        assert!(down, "{client}: the dead backend is marked down");
        check_page(
            "no healthy backend",
            client,
            &send(proxy.addr, "GET", "/dead/1", headers),
            503,
            "no_healthy_backend",
            true,
        );

        // A backend's 500 body (which could be a stack trace) is replaced, its status kept.
        check_page(
            "upstream 500",
            client,
            &send(proxy.addr, "GET", "/broken/1", headers),
            500,
            "upstream_status",
            false,
        );

        // A reset after the order was sent is not replayed: a 502 page.
        check_page(
            "reset",
            client,
            &send(proxy.addr, "POST", "/resetting/orders", headers),
            502,
            "upstream_reset",
            true,
        );

        // The slow pool takes one request at a time, queues one more for 300 ms,
        // and the route's deadline is 1 s against a 3 s backend.
        let addr = proxy.addr;
        let first = spawn_send(addr, "/slow/1", headers);
        assert!(wait_until(Duration::from_secs(2), || fleet.in_flight() == 1));
        let second = spawn_send(addr, "/slow/2", headers);
        assert!(
            wait_until(Duration::from_secs(2), || waiting(admin_port, 2) == 1),
            "the second request waits"
        );
        check_page(
            "queue full",
            client,
            &send(proxy.addr, "GET", "/slow/3", headers),
            503,
            "queue_full",
            true,
        );
        let second = second.join().expect("second");
        check_page("queue timeout", client, &second, 503, "queue_timeout", true);
        let first = first.join().expect("first");
        check_page(
            "upstream timeout",
            client,
            &first,
            504,
            "upstream_timeout",
            true,
        );
        assert!(wait_until(Duration::from_secs(5), || fleet.in_flight() == 0));

        // Rate limited: one request per second per client.
        let limited = wait_until(Duration::from_secs(3), || {
            send(proxy.addr, "GET", "/limited/1", headers).status == 429
        });
        assert!(limited, "{client}: the rate limit answers 429");
        check_page(
            "rate limited",
            client,
            &send(proxy.addr, "GET", "/limited/1", headers),
            429,
            "rate_limited",
            true,
        );
    }
}

#[test]
fn the_waiting_page_refreshes_after_retry_after() {
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 1000}"#);
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"p\"\nmax_in_flight = 1\nbackends = {}\n[pools.queue]\nmax_waiting = 0\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        one_backend(fleet.addrs[0])
    ));
    let addr = proxy.addr;
    let busy = std::thread::spawn(move || crate::support::get(addr, "/api/products/1"));
    assert!(wait_until(Duration::from_secs(2), || fleet.in_flight() == 1));
    let page = send(
        proxy.addr,
        "GET",
        "/api/products/2",
        &[("accept", "text/html")],
    );
    assert_eq!(page.status, 503);
    let retry_after = page.header("retry-after").expect("Retry-After").to_string();
    let text = page.text();
    assert!(
        text.contains(&format!("http-equiv=\"refresh\" content=\"{retry_after}\"")),
        "{text}"
    );
    assert_eq!(busy.join().expect("busy").expect("answer").status, 200);
}

#[test]
fn requests_beyond_the_backend_cap_wait_and_then_succeed() {
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 300}"#);
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"p\"\nmax_in_flight = 2\nbackends = {}\n[pools.queue]\nmax_waiting = 10\ntimeout = \"5s\"\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        one_backend(fleet.addrs[0])
    ));
    let started = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let addr = proxy.addr;
            std::thread::spawn(move || crate::support::get(addr, "/api/products/1"))
        })
        .collect();
    let mut peak = 0;
    while !clients.iter().all(|c| c.is_finished()) {
        peak = peak.max(fleet.in_flight());
        std::thread::sleep(Duration::from_millis(20));
    }
    for client in clients {
        assert_eq!(client.join().expect("client").expect("answer").status, 200);
    }
    assert!(
        peak <= 2,
        "the backend saw {peak} requests at once, over its cap of 2"
    );
    // Six 300 ms requests two at a time cannot finish in under three rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_waiter_that_disconnects_frees_its_place() {
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 1500}"#);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&format!(
        "{}[[pools]]\nname = \"p\"\nmax_in_flight = 1\nbackends = {}\n[pools.queue]\nmax_waiting = 1\ntimeout = \"10s\"\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        admin_section(admin_port),
        one_backend(fleet.addrs[0])
    ));
    let addr = proxy.addr;
    let holder = std::thread::spawn(move || crate::support::get(addr, "/api/products/1"));
    assert!(wait_until(Duration::from_secs(2), || fleet.in_flight() == 1));

    // A waiter that gives up: connect, send, and close without reading.
    {
        use std::io::Write;
        let mut stream = std::net::TcpStream::connect(proxy.addr).expect("connect");
        stream
            .write_all(b"GET /api/products/2 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .expect("send");
        assert!(
            wait_until(Duration::from_secs(2), || waiting(admin_port, 0) == 1),
            "it waits"
        );
    }
    assert!(
        wait_until(Duration::from_secs(2), || waiting(admin_port, 0) == 0),
        "its place is freed"
    );
    // Its place is free again: this one is queued, not refused as queue full.
    let queued = crate::support::get(proxy.addr, "/api/products/3").expect("answer");
    assert_eq!(queued.status, 200, "{}", queued.text());
    assert_eq!(holder.join().expect("holder").expect("answer").status, 200);
}

#[test]
fn checkout_gets_through_while_browsing_saturates_the_pool() {
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 100}"#);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&format!(
        r#"{}[[pools]]
name = "orders"
max_in_flight = 4
backends = {}
[pools.queue]
max_waiting = 8
timeout = "2s"
reserved = {{ critical = 50 }}

[[routes]]
name = "checkout"
path_prefix = "/api/orders"
methods = ["POST"]
priority = "critical"
pool = "orders"

[[routes]]
name = "browse"
priority = "low"
pool = "orders"
"#,
        admin_section(admin_port),
        one_backend(fleet.addrs[0])
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let browsers: Vec<_> = (0..12)
        .map(|_| {
            let (stop, addr) = (Arc::clone(&stop), proxy.addr);
            std::thread::spawn(move || {
                let mut shed = 0;
                while !stop.load(Ordering::Relaxed) {
                    match crate::support::get(addr, "/api/products/1") {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            assert!(
                                r.header("x-ordergate-page").is_some(),
                                "browse failure without a page: {}",
                                r.status
                            );
                            shed += 1;
                        }
                        Err(e) => panic!("browse: raw failure {e:?}"),
                    }
                }
                shed
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || waiting(admin_port, 0) > 0),
        "browsing fills the queue"
    );
    let mut checkout_failures = Vec::new();
    for i in 0..20 {
        let key = format!("checkout-{i}");
        match request(
            proxy.addr,
            "POST",
            "/api/orders",
            &[("idempotency-key", &key)],
            b"{}",
        ) {
            Ok(r) if r.status == 201 => {}
            Ok(r) => checkout_failures.push(format!("{} {}", r.status, r.text())),
            Err(e) => checkout_failures.push(format!("{e:?}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let shed: usize = browsers
        .into_iter()
        .map(|b| b.join().expect("browser"))
        .sum();
    assert!(
        checkout_failures.is_empty(),
        "checkout failed: {checkout_failures:?}"
    );
    assert!(shed > 0, "browsing saturated the pool and some was shed");
}

#[test]
fn a_route_can_have_its_own_pages() {
    let fleet = Fleet::start(1);
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/pages/en.toml");
    let english = std::fs::read_to_string(shipped).expect("shipped pages");
    let custom = english.replacen(
        "We are very busy right now",
        "Checkout is taking a short break",
        1,
    );
    assert_ne!(custom, english);
    let pages = crate::support::TempFile::new("en.toml", &custom);
    let dir = pages
        .path
        .parent()
        .expect("pages dir")
        .display()
        .to_string();
    let dead = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"dead\"\npanic_threshold = 0\nbackends = {}\n[pools.outlier]\nconsecutive_gateway_failures = 1\nmax_ejected_percent = 100\n\n[[pools]]\nname = \"live\"\nbackends = {}\n\n[[routes]]\nname = \"checkout\"\npath_prefix = \"/checkout\"\npages = \"{dir}\"\npool = \"dead\"\n\n[[routes]]\nname = \"browse\"\npool = \"live\"\n",
        one_backend(dead),
        one_backend(fleet.addrs[0])
    ));
    // The first try finds the port closed and ejects the only backend.
    let _ = send(proxy.addr, "GET", "/checkout/1", &[]);
    let page = send(proxy.addr, "GET", "/checkout/1", &[("accept", "text/html")]);
    assert_eq!(page.header("x-ordergate-page"), Some("no_healthy_backend"));
    assert!(
        page.text().contains("Checkout is taking a short break"),
        "{}",
        page.text()
    );
    let other = send(
        proxy.addr,
        "GET",
        "/api/products/1",
        &[("accept", "text/html")],
    );
    assert_eq!(other.status, 200, "the browse route still serves");
}

#[test]
fn an_empty_backend_5xx_is_replaced_by_a_complete_page() {
    // A backend that answers every request with an empty 503, as load shedders do.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let backend = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ =
                stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n[routes.retry]\nattempts = 1\n",
        one_backend(backend)
    ));
    let page = send(
        proxy.addr,
        "GET",
        "/api/products/1",
        &[("accept", "application/json")],
    );
    assert_eq!(page.status, 503);
    assert_eq!(page.header("x-ordergate-page"), Some("upstream_status"));
    assert_eq!(page.json()["error"]["code"], "upstream_status");
}
