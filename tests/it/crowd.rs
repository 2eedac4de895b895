//! A hostile flash-sale crowd against the real binary: each test is one thing
//! a scalper, a bot or a curious shopper tries (issue 23's rows), and what
//! ordergate does about it. Each failed on the main before the fix.

use crate::support::{admin_section, free_port, request, Fleet, Proxy};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

/// One pool of the fleet's backends behind a catch-all route, with `extra`
/// appended (more routes, rooms).
fn shop(fleet: &Fleet, admin_port: u16, route: &str, extra: &str) -> String {
    format!(
        "{}[[pools]]\nname = \"orders\"\nrequest_timeout = \"500ms\"\nbackends = {}\n[pools.outlier]\nconsecutive_gateway_failures = 1000\nconsecutive_5xx = 1000\n\n[[routes]]\nname = \"shop\"\npool = \"orders\"\n{route}\n{extra}",
        admin_section(admin_port),
        fleet.backends_toml(&[])
    )
}

/// Row 10: a client claims another address and host in every forwarding
/// header; the order server sees only what ordergate says.
#[test]
fn forged_forwarding_headers_never_reach_the_backend() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&shop(&fleet, free_port(), "", ""));
    let echo = request(
        proxy.addr,
        "GET",
        "/__sim/echo",
        &[
            ("x-forwarded-for", "203.0.113.66"),
            (
                "forwarded",
                "for=203.0.113.66;host=evil.example;proto=https",
            ),
            ("x-real-ip", "203.0.113.66"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ],
        b"",
    )
    .expect("an answer");
    assert_eq!(echo.status, 200);
    let seen = echo.json();
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1", "{headers}");
    assert_eq!(headers["x-real-ip"], "127.0.0.1", "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");
    assert!(headers.get("forwarded").is_none(), "{headers}");
    assert!(headers.get("x-forwarded-host").is_none(), "{headers}");
}

/// Row 11: an admitted shopper whose only cookies are the room's pass and an
/// analytics cookie the route ignores gets the kept copy when the pool
/// fails, as a cookieless shopper does; a session cookie still keeps it away.
#[test]
fn a_room_pass_does_not_make_a_read_private() {
    let fleet = Fleet::start(1);
    let room = format!(
        "[[rooms]]\nname = \"sale\"\nroutes = [\"shop\"]\nsecret = \"{SECRET}\"\nmode = \"always\"\nmax_active = 100\n"
    );
    let stale = "[routes.stale]\nignore_cookies = [\"_ga\"]\n";
    let proxy = Proxy::start(&shop(&fleet, free_port(), stale, &room));
    // The first visit gets a pass (the room has space) and is the kept copy.
    let first = request(proxy.addr, "GET", "/api/products/7", &[], b"").expect("an answer");
    assert_eq!(first.status, 200, "{first:?}");
    let pass = first
        .headers
        .iter()
        .find(|(name, _)| name == "set-cookie")
        .and_then(|(_, value)| value.split(';').next())
        .expect("the room's pass")
        .to_string();
    assert!(pass.starts_with("ordergate_room_sale=p."), "{pass}");

    fleet.set_mode(fleet.addrs[0], r#"{"fault": "reset"}"#);
    let cookie = format!("{pass}; _ga=GA1.2.3");
    let stale = request(
        proxy.addr,
        "GET",
        "/api/products/7",
        &[("cookie", &cookie)],
        b"",
    )
    .expect("an answer");
    assert_eq!(stale.header("x-ordergate-stale"), Some("true"), "{stale:?}");
    assert_eq!(stale.body, first.body);

    let session = format!("{pass}; session=s3cret");
    let private = request(
        proxy.addr,
        "GET",
        "/api/products/7",
        &[("cookie", &session)],
        b"",
    )
    .expect("an answer");
    assert!(private.header("x-ordergate-stale").is_none(), "{private:?}");
    assert!(private.header("x-ordergate-page").is_some(), "{private:?}");
}
