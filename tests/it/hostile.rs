//! Hostile input against the real binary: request smuggling attempts, broken
//! framing, odd targets, oversized heads. Each gets a clean 4xx or a close —
//! never a 2xx for a smuggled request — and the proxy keeps serving.

use std::time::Duration;

use crate::support::conn::Conn;
use crate::support::{Fleet, Proxy, Response};

/// One proxy in front of one simulated backend, every path routed.
fn setup() -> (Fleet, Proxy) {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\n",
        fleet.backends_toml(&[1])
    ));
    (fleet, proxy)
}

/// Sends raw bytes on a fresh connection and collects every answer until the
/// proxy closes the connection or goes quiet.
fn answers(proxy: &Proxy, raw: &[u8]) -> Vec<Response> {
    let mut conn = Conn::open(proxy.addr);
    // A write may fail once the proxy closed on the first bytes: what it
    // answered before that is still read below.
    let _ = conn.send_raw(raw);
    conn.drain_responses(Duration::from_secs(2))
}

/// The proxy still serves a normal shopper.
fn still_serving(proxy: &Proxy, case: &str) {
    let response = crate::support::get(proxy.addr, "/api/products/1")
        .unwrap_or_else(|e| panic!("{case}: the proxy stopped serving: {e:?}"));
    assert_eq!(response.status, 200, "{case}: after it, a normal request");
}

/// Every answer is a clean client error, and none is a success for the
/// smuggled request (the sim echoes nothing of it: a smuggled request would be
/// a second answer).
fn rejected(case: &str, responses: &[Response], allowed_successes: usize) {
    let successes = responses.iter().filter(|r| r.status < 300).count();
    assert!(
        successes <= allowed_successes,
        "{case}: {successes} successful answers: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for response in responses.iter().filter(|r| r.status >= 300) {
        assert!(
            (400..500).contains(&response.status),
            "{case}: {} is not a client error",
            response.status
        );
    }
}

#[test]
fn smuggling_and_broken_framing_get_a_clean_error_or_a_close() {
    let (fleet, proxy) = setup();
    let smuggled = "GET /api/products/666 HTTP/1.1\r\nHost: shop.test\r\n\r\n";
    // (case, bytes, successful answers allowed, requests allowed to reach the backend)
    let cases: Vec<(&str, String, usize, u64)> = vec![
        (
            // Transfer-Encoding wins (RFC 9112 §6.3); the rest is not a request.
            "CL+TE",
            format!(
                "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            // The chunked POST itself (an empty body) may be answered; never the GET.
            1,
            1,
        ),
        (
            "two different Content-Lengths",
            format!("POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{smuggled}"),
            0,
            0,
        ),
        (
            "negative Content-Length",
            format!("POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length: -5\r\n\r\n{smuggled}"),
            0,
            0,
        ),
        (
            "huge Content-Length",
            format!("POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 99999999999999999999999\r\n\r\n{smuggled}"),
            0,
            0,
        ),
        (
            "bad chunk size",
            format!("POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{smuggled}"),
            // The POST's head goes out before its body turns out broken; the
            // backend never gets a whole request, and no answer is a success.
            0,
            1,
        ),
        (
            "chunked not last",
            format!("POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
            1,
            1,
        ),
        (
            "NUL in a header",
            "GET /api/products/1 HTTP/1.1\r\nHost: shop.test\r\nX-A: a\0b\r\n\r\n".to_string(),
            0,
            0,
        ),
        (
            "bare CR in a header",
            "GET /api/products/1 HTTP/1.1\r\nHost: shop.test\r\nX-A: a\rb\r\n\r\n".to_string(),
            0,
            0,
        ),
        (
            "space before the colon",
            format!("POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length : 40\r\n\r\n{smuggled}"),
            1,
            1,
        ),
        (
            "10 000 headers",
            format!(
                "GET /api/products/1 HTTP/1.1\r\nHost: shop.test\r\n{}\r\n",
                "X-A: b\r\n".repeat(10_000)
            ),
            0,
            0,
        ),
        (
            "200 KB header",
            format!(
                "GET /api/products/1 HTTP/1.1\r\nHost: shop.test\r\nX-Big: {}\r\n\r\n",
                "b".repeat(200 * 1024)
            ),
            0,
            0,
        ),
    ];
    for (case, raw, successes, forwarded) in &cases {
        let before = backend_requests(&fleet);
        let responses = answers(&proxy, raw.as_bytes());
        eprintln!(
            "{case}: {:?}",
            responses
                .iter()
                .map(|r| (r.status, r.header("x-ordergate-page").map(str::to_owned)))
                .collect::<Vec<_>>()
        );
        rejected(case, &responses, *successes);
        // Nothing but the allowed request reached the backend: no smuggled one.
        let reached = backend_requests(&fleet) - before;
        assert!(
            reached <= *forwarded,
            "{case}: {reached} requests reached the backend"
        );
        still_serving(&proxy, case);
    }
}

/// Requests the simulated backends received so far.
fn backend_requests(fleet: &Fleet) -> u64 {
    let stats = fleet.stats();
    stats["listeners"]
        .as_object()
        .map(|listeners| {
            listeners
                .values()
                .filter_map(|l| l["requests"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_header_over_the_limit_gets_the_431_page_and_is_never_forwarded() {
    let (fleet, proxy) = setup();
    let before = backend_requests(&fleet);
    let responses = answers(
        &proxy,
        format!(
            "GET /api/products/1 HTTP/1.1\r\nHost: shop.test\r\nAccept: application/json\r\nX-Big: {}\r\n\r\n",
            "b".repeat(40 * 1024)
        )
        .as_bytes(),
    );
    assert_eq!(responses.len(), 1, "one answer, then the connection closes");
    let response = &responses[0];
    assert_eq!(response.status, 431);
    assert_eq!(
        response.header("x-ordergate-page"),
        Some("header_too_large")
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(response.header("x-request-id").is_some());
    assert_eq!(response.json()["error"]["code"], "header_too_large");
    assert_eq!(backend_requests(&fleet), before, "never forwarded");
    still_serving(&proxy, "431");
}

#[test]
fn odd_targets_and_old_clients_get_clean_answers() {
    let (_fleet, proxy) = setup();
    for (case, raw) in [
        (
            "absolute-form target",
            "GET http://shop.test/api/products/1 HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        ),
        (
            "asterisk-form target",
            "OPTIONS * HTTP/1.1\r\nHost: shop.test\r\n\r\n",
        ),
        (
            "HTTP/1.0 without Host",
            "GET /api/products/1 HTTP/1.0\r\n\r\n",
        ),
        (
            "CONNECT",
            "CONNECT shop.test:443 HTTP/1.1\r\nHost: shop.test:443\r\n\r\n",
        ),
    ] {
        let responses = answers(&proxy, raw.as_bytes());
        assert!(!responses.is_empty(), "{case}: no answer at all");
        for response in &responses {
            assert!(
                response.status < 500,
                "{case}: {} {:?}",
                response.status,
                response.headers
            );
        }
        still_serving(&proxy, case);
    }
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let (_fleet, proxy) = setup();
    let mut raw = String::new();
    for i in 1..=5 {
        raw.push_str(&format!(
            "GET /api/products/{i} HTTP/1.1\r\nHost: shop.test\r\n\r\n"
        ));
    }
    let mut conn = Conn::open(proxy.addr);
    conn.send_raw(raw.as_bytes()).expect("send");
    for i in 1..=5 {
        let response = conn
            .read_response(false)
            .unwrap_or_else(|e| panic!("pipelined request {i}: {e:?}"));
        assert_eq!(response.status, 200, "pipelined request {i}");
        assert!(
            response.text().contains(&format!("\"id\":{i}"))
                || response.text().contains(&format!("\"{i}\"")),
            "answers in order: {i}: {}",
            response.text()
        );
    }
}
