//! Stale answers for reads against the real binary: a product page served
//! once is served again, marked stale, when every backend fails (reset, 500,
//! hang past the timeout); never for private requests, never past `max_age`,
//! and within the memory budget.

use std::time::Duration;

use crate::support::{admin, admin_section, request, wait_until, Fleet, Proxy, Response};

fn config(fleet: &Fleet, admin_port: u16, stale: &str) -> String {
    format!(
        "{}[[pools]]\nname = \"catalog\"\nrequest_timeout = \"300ms\"\nbackends = {}\n[pools.outlier]\nconsecutive_gateway_failures = 1000\nconsecutive_5xx = 1000\n\n[[routes]]\nname = \"catalog\"\npool = \"catalog\"\n[routes.retry]\nattempts = 1\n[routes.stale]\n{stale}\n",
        admin_section(admin_port),
        fleet.backends_toml(&[])
    )
}

fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Response {
    request(proxy.addr, "GET", path, headers, b"").expect("an answer")
}

#[test]
fn a_kept_copy_stands_in_when_the_backends_fail() {
    let fleet = Fleet::start(1);
    let backend = fleet.addrs[0];
    let proxy = Proxy::start(&config(&fleet, crate::support::free_port(), ""));
    let fresh = get(&proxy, "/api/products/7", &[]);
    assert_eq!(fresh.status, 200);
    assert!(fresh.header("x-ordergate-stale").is_none());

    for (fault, mode) in [
        ("reset", r#"{"fault": "reset"}"#),
        ("500", r#"{"fault": null, "status": 500}"#),
        ("hang", r#"{"status": null, "fault": "hang"}"#),
    ] {
        fleet.set_mode(backend, mode);
        let stale = get(&proxy, "/api/products/7", &[]);
        assert_eq!(stale.status, 200, "{fault}: {:?}", stale.headers);
        assert_eq!(stale.header("x-ordergate-stale"), Some("true"), "{fault}");
        assert_eq!(stale.header("warning"), Some("110 - \"Response is Stale\""));
        assert!(stale
            .header("age")
            .and_then(|a| a.parse::<u64>().ok())
            .is_some());
        assert_eq!(
            stale.body, fresh.body,
            "{fault}: the kept answer, byte for byte"
        );
        // A read never kept gets the page.
        let other = get(&proxy, "/api/products/8", &[]);
        assert!(
            other.header("x-ordergate-page").is_some(),
            "{fault}: {other:?}"
        );
        // Private requests never get a shared copy.
        for private in [("cookie", "session=abc"), ("authorization", "Bearer x")] {
            let page = get(&proxy, "/api/products/7", &[private]);
            assert!(
                page.header("x-ordergate-page").is_some(),
                "{fault} {private:?}"
            );
        }
    }
}

#[test]
fn a_copy_is_not_served_past_max_age() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&config(
        &fleet,
        crate::support::free_port(),
        "max_age = \"1s\"",
    ));
    assert_eq!(get(&proxy, "/api/products/1", &[]).status, 200);
    fleet.set_mode(fleet.addrs[0], r#"{"fault": "reset"}"#);
    assert_eq!(
        get(&proxy, "/api/products/1", &[]).header("x-ordergate-stale"),
        Some("true")
    );
    let expired = wait_until(Duration::from_secs(5), || {
        get(&proxy, "/api/products/1", &[]).header("x-ordergate-page") == Some("upstream_reset")
    });
    assert!(expired, "the copy expires after max_age");
}

#[test]
fn copies_stay_within_the_memory_budget() {
    let fleet = Fleet::start(1);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&config(&fleet, admin_port, "max_bytes = \"64KiB\""));
    for i in 0..600 {
        assert_eq!(get(&proxy, &format!("/api/products/{i}"), &[]).status, 200);
    }
    let metrics = admin(admin_port, "GET", "/metrics").text();
    let bytes = metrics
        .lines()
        .find(|l| l.starts_with("ordergate_stale_bytes{route=\"catalog\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("ordergate_stale_bytes");
    assert!(bytes > 0.0 && bytes <= 64.0 * 1024.0, "{bytes}");
    fleet.set_mode(fleet.addrs[0], r#"{"fault": "reset"}"#);
    let served = (0..600)
        .filter(|i| {
            get(&proxy, &format!("/api/products/{i}"), &[]).header("x-ordergate-stale")
                == Some("true")
        })
        .count();
    assert!(
        served > 0 && served < 600,
        "some copies fit, not all: {served}"
    );
}
