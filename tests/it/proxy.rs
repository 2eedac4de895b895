//! Black-box tests of routing, balancing and forwarding through the real binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{Fleet, Proxy};

fn pool(name: &str, balance: &str, backends: &str) -> String {
    format!("[[pools]]\nname = \"{name}\"\n{balance}\nbackends = {backends}\n\n")
}

fn route(name: &str, matcher: &str, pool: &str) -> String {
    format!("[[routes]]\nname = \"{name}\"\n{matcher}\npool = \"{pool}\"\n\n")
}

fn count_backends(responses: impl IntoIterator<Item = SocketAddr>) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for addr in responses {
        *counts.entry(addr).or_default() += 1;
    }
    counts
}

#[test]
fn routes_by_host_path_and_method() {
    let fleet = Fleet::start(3);
    let one = |i: usize| format!("[ {{ addr = \"{}\" }} ]", fleet.addrs[i]);
    let config = [
        pool("catalog", "", &one(0)),
        pool("orders", "", &one(1)),
        pool("vip", "", &one(2)),
        route("catalog", "path_prefix = \"/\"", "catalog"),
        route(
            "checkout",
            "path_prefix = \"/api/orders\"\nmethods = [\"POST\"]",
            "orders",
        ),
        route(
            "vip",
            "host = \"vip.shop.test\"\npath_prefix = \"/api\"",
            "vip",
        ),
    ]
    .concat();
    let proxy = Proxy::start(&config);

    assert_eq!(proxy.get("/api/products/1").backend(), fleet.addrs[0]);
    let order = proxy.send(
        "POST",
        "/api/orders",
        &[("content-type", "application/json")],
        b"{\"sku\":\"a\"}",
    );
    assert_eq!(order.status, 201, "{}", order.text());
    assert_eq!(order.backend(), fleet.addrs[1]);
    // GET on the same path is not the checkout route.
    assert_eq!(
        proxy.get("/api/orders/ord-000001").backend(),
        fleet.addrs[0]
    );
    let vip = proxy.send(
        "POST",
        "/api/orders",
        &[("host", "VIP.shop.test:8080")],
        b"{}",
    );
    assert_eq!(vip.backend(), fleet.addrs[2], "host beats a longer path");
}

#[test]
fn no_route_is_a_404_page_with_request_id() {
    let fleet = Fleet::start(1);
    let config = [
        pool("orders", "", &fleet.backends_toml(&[1])),
        route("orders", "path_prefix = \"/api/orders\"", "orders"),
    ]
    .concat();
    let proxy = Proxy::start(&config);

    let response = proxy.get("/api/ordersX");
    assert_eq!(response.status, 404);
    assert!(
        response.header("x-sim-backend").is_none(),
        "ordergate answers, not a backend"
    );
    let id = response.header("x-request-id").expect("request id");
    let page = response.json();
    assert_eq!(page["error"]["code"], "no_route");
    assert_eq!(page["request_id"], id);

    let html = proxy.send(
        "GET",
        "/nowhere",
        &[("accept", "text/html"), ("x-request-id", "shopper-1")],
        b"",
    );
    assert_eq!(html.status, 404);
    assert!(html
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(html.text().contains("shopper-1"), "{}", html.text());
}

#[test]
fn weighted_round_robin_follows_weights() {
    let fleet = Fleet::start(3);
    let config = [
        pool(
            "orders",
            "balance = \"round_robin\"",
            &fleet.backends_toml(&[1, 2, 3]),
        ),
        route("all", "", "orders"),
    ]
    .concat();
    let proxy = Proxy::start(&config);

    let counts = count_backends((0..600).map(|_| proxy.get("/api/products/1").backend()));
    for (addr, weight) in fleet.addrs.iter().zip([1usize, 2, 3]) {
        let got = counts.get(addr).copied().unwrap_or(0);
        let want = 100 * weight;
        // Smooth round robin is exact over whole cycles; allow 5% for safety.
        assert!(
            got.abs_diff(want) <= want / 20,
            "{addr}: {got} of 600, want {want}: {counts:?}"
        );
    }
}

#[test]
fn least_request_sends_most_traffic_away_from_a_slow_backend() {
    let (on_slow, total, counts) = with_a_slow_backend("least_request", 8, 25);
    // Round robin would give the slow backend a third (67 of 200).
    assert!(
        on_slow * 10 < total,
        "slow backend got {on_slow} of {total}: {counts:?}"
    );
}

#[test]
fn peak_ewma_sends_most_traffic_away_from_a_slow_backend() {
    let (on_slow, total, counts) = with_a_slow_backend("peak_ewma", 4, 40);
    assert!(
        on_slow * 10 < total,
        "slow backend got {on_slow} of {total}: {counts:?}"
    );
}

/// Three backends of weight 1 balanced by `balance`, the first answering in
/// 300 ms: `clients` threads each send `each` requests. The answers from the
/// slow backend, all of them, and the count per backend.
fn with_a_slow_backend(
    balance: &str,
    clients: usize,
    each: usize,
) -> (usize, usize, HashMap<SocketAddr, usize>) {
    let fleet = Fleet::start(3);
    let slow = fleet.addrs[0];
    fleet.set_mode(slow, r#"{"latency_ms": 300}"#);
    let config = [
        pool(
            "orders",
            &format!("balance = \"{balance}\""),
            &fleet.backends_toml(&[1, 1, 1]),
        ),
        route("all", "", "orders"),
    ]
    .concat();
    let proxy = Proxy::start(&config);
    let counts = concurrent_counts(&proxy, clients, each);
    let total: usize = counts.values().sum();
    let on_slow = counts.get(&slow).copied().unwrap_or(0);
    (on_slow, total, counts)
}

/// `clients` threads each send `each` requests; counts answers per backend.
fn concurrent_counts(proxy: &Proxy, clients: usize, each: usize) -> HashMap<SocketAddr, usize> {
    let addr = proxy.addr;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                (0..each)
                    .map(|_| {
                        crate::support::get(addr, "/api/products/1")
                            .expect("response")
                            .backend()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    count_backends(
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("client thread")),
    )
}

#[test]
fn consistent_hash_keeps_carts_and_moves_about_one_nth_when_a_backend_leaves() {
    let fleet = Fleet::start(3);
    let carts: Vec<String> = (0..300).map(|i| format!("cart-{i}")).collect();
    let placement = |proxy: &Proxy| -> Vec<SocketAddr> {
        carts
            .iter()
            .map(|cart| {
                proxy
                    .send("GET", "/api/products/1", &[("x-cart-id", cart)], b"")
                    .backend()
            })
            .collect()
    };
    let hashed = "balance = \"consistent_hash\"\nhash_key = \"header:x-cart-id\"";

    let all = Proxy::start(
        &[
            pool("carts", hashed, &fleet.backends_toml(&[1, 1, 1])),
            route("all", "", "carts"),
        ]
        .concat(),
    );
    let before = placement(&all);
    assert_eq!(before, placement(&all), "a cart stays on its backend");
    let spread = count_backends(before.iter().copied());
    assert_eq!(spread.len(), 3, "{spread:?}");
    drop(all);

    let removed = fleet.addrs[2];
    let two = format!(
        "[ {{ addr = \"{}\" }}, {{ addr = \"{}\" }} ]",
        fleet.addrs[0], fleet.addrs[1]
    );
    let fewer = Proxy::start(&[pool("carts", hashed, &two), route("all", "", "carts")].concat());
    let after = placement(&fewer);
    let mut moved = 0;
    for (old, new) in before.iter().zip(&after) {
        if old != new {
            moved += 1;
            assert_eq!(*old, removed, "only carts of the removed backend move");
        }
    }
    // About 1/3 of 300 carts lived on the removed backend.
    assert!((50..=150).contains(&moved), "moved {moved} of 300");
}

#[test]
fn forwards_client_headers_and_request_ids() {
    let fleet = Fleet::start(1);
    let config = [
        pool("orders", "", &fleet.backends_toml(&[1])),
        route("all", "", "orders"),
    ]
    .concat();
    let proxy = Proxy::start(&config);

    let echo = proxy.send(
        "GET",
        "/__sim/echo",
        &[
            ("host", "shop.example"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-request-id", "abc-123"),
        ],
        b"",
    );
    assert_eq!(echo.status, 200);
    assert_eq!(echo.header("x-request-id"), Some("abc-123"));
    let seen = echo.json();
    let headers = &seen["headers"];
    assert_eq!(headers["host"], "shop.example");
    // A client's claim is not passed on (see crowd::forged_forwarding_headers).
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-request-id"], "abc-123");

    // An unsafe id is replaced by a fresh one, the same upstream and back.
    let echo = proxy.send(
        "GET",
        "/__sim/echo",
        &[("x-request-id", "bad id<script>")],
        b"",
    );
    let id = echo.header("x-request-id").expect("request id").to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(echo.json()["headers"]["x-request-id"], id.as_str());
}

#[test]
fn a_dead_backend_is_a_friendly_502_not_a_raw_error() {
    let port = crate::support::free_port();
    let config = [
        pool(
            "orders",
            "connect_timeout = \"200ms\"",
            &format!("[ {{ addr = \"127.0.0.1:{port}\" }} ]"),
        ),
        route("all", "", "orders"),
    ]
    .concat();
    let proxy = Proxy::start(&config);
    let response = proxy.get("/api/products/1");
    assert_eq!(response.status, 502);
    assert_eq!(response.header("retry-after"), Some("2"));
    assert_eq!(response.json()["error"]["code"], "connect_failed");
}

#[test]
fn a_slow_backend_is_a_504_page_after_the_request_timeout() {
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 3000}"#);
    let config = [
        pool(
            "orders",
            "request_timeout = \"300ms\"",
            &fleet.backends_toml(&[1]),
        ),
        route("all", "", "orders"),
    ]
    .concat();
    let proxy = Proxy::start(&config);
    let started = std::time::Instant::now();
    let response = proxy.get("/api/products/1");
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(response.json()["error"]["code"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered before the backend did"
    );
}

/// Connections the fleet's first backend accepted so far.
fn backend_connections(fleet: &Fleet) -> u64 {
    let stats = fleet.stats();
    stats["listeners"][fleet.addrs[0].to_string()]["connections"]
        .as_u64()
        .expect("connections in stats")
}

/// Sends `clients` requests at once, each on its own connection, and checks
/// every one was answered by the backend.
fn burst(proxy: &Proxy, clients: usize) {
    let addr = proxy.addr;
    let threads: Vec<_> = (0..clients)
        .map(|_| std::thread::spawn(move || crate::support::get(addr, "/api/products/1")))
        .collect();
    for thread in threads {
        let response = thread.join().expect("client thread").expect("response");
        assert_eq!(response.status, 200, "{}", response.text());
    }
}

/// Backend connections a second burst of `clients` opens, after a first one.
fn connections_opened_by_a_second_burst(fleet: &Fleet, server: &str, clients: usize) -> u64 {
    let config = [
        pool("orders", "max_in_flight = 1000", &fleet.backends_toml(&[1])),
        route("all", "", "orders"),
    ]
    .concat();
    let proxy = Proxy::try_start_with(server, &config).expect("start");
    burst(&proxy, clients);
    let before = backend_connections(fleet);
    burst(&proxy, clients);
    // The stats request itself came on a connection of its own.
    backend_connections(fleet) - before - 1
}

#[test]
fn backend_connections_are_kept_for_reuse_up_to_upstream_keepalive() {
    let fleet = Fleet::start(1);
    // Every request of a burst is in flight at once.
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 1000}"#);
    // 350 at once: above pingora's own default pool (128 per thread, 256
    // here), within ordergate's default (1024 per thread).
    let opened = connections_opened_by_a_second_burst(&fleet, "", 350);
    assert!(opened <= 20, "the default pool let {opened} connections go");
    // 50 per thread (100 here): the second burst of 200 needs about 100 new ones.
    let opened = connections_opened_by_a_second_burst(&fleet, "upstream_keepalive = 50", 200);
    assert!(
        opened >= 60,
        "only {opened} new connections: the pool kept more than 100"
    );
}

#[test]
fn a_shopper_who_leaves_is_logged_as_client_gone_not_as_an_error() {
    use std::io::Write;
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 2000}"#);
    let config = [
        pool("orders", "", &fleet.backends_toml(&[1])),
        route("all", "", "orders"),
    ]
    .concat();
    let proxy = Proxy::start(&config);
    let mut client = std::net::TcpStream::connect(proxy.addr).expect("connect");
    client
        .write_all(b"GET /api/products/1 HTTP/1.1\r\nhost: shop\r\n\r\n")
        .expect("send");
    // Gone while the backend is still working on it.
    assert!(crate::support::wait_until(Duration::from_secs(5), || fleet
        .in_flight()
        == 1));
    drop(client);
    assert!(
        crate::support::wait_until(Duration::from_secs(5), || proxy
            .access_log()
            .iter()
            .any(|(_, line)| line.contains("outcome=client_gone"))),
        "no access record for the shopper who left: {:#?}",
        proxy.logs()
    );
    let errors: Vec<String> = proxy
        .logs()
        .into_iter()
        .map(|(_, line)| line)
        .filter(|line| line.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
