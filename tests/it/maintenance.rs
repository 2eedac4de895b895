//! Maintenance mode against the real binary: windows from the admin API and
//! from the config, the page with Retry-After up to the window's end, staff
//! passing through, and live windows outliving a reload.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::support::{admin_section, request, Fleet, Proxy, Response};

const STAFF_TOKEN: &str = "staff-secret-0123456789";

fn config(fleet: &Fleet, admin_port: u16, route_extra: &str) -> String {
    format!(
        "{}[[pools]]\nname = \"shop\"\nbackends = {}\n\n[[routes]]\nname = \"checkout\"\npath_prefix = \"/api/orders\"\npool = \"shop\"\n{route_extra}\n[[routes]]\nname = \"catalog\"\npool = \"shop\"\n\n[maintenance]\nactive = false\nallow_header = \"x-staff\"\nallow_token = \"{STAFF_TOKEN}\"\nallow_cidrs = [\"10.0.0.0/8\"]\n",
        admin_section(admin_port),
        fleet.backends_toml(&[])
    )
}

fn admin(port: u16, method: &str, path: &str, body: &str) -> Response {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    request(
        addr,
        method,
        path,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .expect("admin request")
}

fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    // Good enough for tests: UTC, from days since the epoch.
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Response {
    request(proxy.addr, "GET", path, headers, b"").expect("an answer")
}

#[test]
fn maintenance_from_the_admin_api_closes_the_shop_but_not_for_staff() {
    let fleet = Fleet::start(1);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&config(&fleet, admin_port, ""));
    let json = [("accept", "application/json")];
    assert_eq!(
        get(&proxy, "/api/orders/1", &json).status,
        404,
        "the sim answers"
    );

    // Everything, for ten minutes, with a message.
    let until = SystemTime::now() + Duration::from_secs(600);
    let opened = admin(
        admin_port,
        "POST",
        "/maintenance",
        &format!(
            r#"{{"until": "{}", "message": "Back at 02:00 UTC"}}"#,
            rfc3339(until)
        ),
    );
    assert_eq!(opened.status, 200, "{}", opened.text());
    let page = get(&proxy, "/api/products/1", &json);
    assert_eq!(page.status, 503);
    assert_eq!(page.header("x-ordergate-page"), Some("maintenance"));
    let retry_after: u64 = page
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(
        (590..=600).contains(&retry_after),
        "up to the end: {retry_after}"
    );
    assert_eq!(page.json()["notice"], "Back at 02:00 UTC");
    let html = get(
        &proxy,
        "/api/products/1",
        &[("accept", "text/html"), ("accept-language", "zh-CN")],
    );
    assert!(html.text().contains("Back at 02:00 UTC"));
    assert!(html.text().contains("维护"));

    // Staff with the token pass; a wrong token does not.
    let staff = get(&proxy, "/api/products/1", &[("x-staff", STAFF_TOKEN)]);
    assert_eq!(staff.status, 200);
    let guess = get(
        &proxy,
        "/api/products/1",
        &[("x-staff", "wrong-secret-012345678")],
    );
    assert_eq!(guess.status, 503);

    // The window survives a reload of the config.
    let reloaded = admin(admin_port, "POST", "/reload", "");
    assert_eq!(reloaded.status, 200);
    assert_eq!(get(&proxy, "/api/products/1", &json).status, 503);
    let status = admin(admin_port, "GET", "/status", "").json();
    assert_eq!(status["maintenance"][0]["source"], "admin");
    let metrics = admin(admin_port, "GET", "/metrics", "").text();
    assert!(
        metrics.contains("ordergate_maintenance_open{route=\"*\"} 1"),
        "{metrics}"
    );

    // Off again.
    let closed = admin(admin_port, "DELETE", "/maintenance", "");
    assert_eq!(closed.status, 200);
    assert_eq!(get(&proxy, "/api/products/1", &json).status, 200);
    assert_eq!(admin(admin_port, "DELETE", "/maintenance", "").status, 404);
}

#[test]
fn one_route_in_maintenance_leaves_the_others_open() {
    let fleet = Fleet::start(1);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&config(&fleet, admin_port, ""));
    let opened = admin(
        admin_port,
        "POST",
        "/maintenance",
        r#"{"route": "checkout"}"#,
    );
    assert_eq!(opened.status, 200, "{}", opened.text());
    let checkout = get(&proxy, "/api/orders/1", &[]);
    assert_eq!(checkout.header("x-ordergate-page"), Some("maintenance"));
    assert_eq!(
        checkout.header("retry-after"),
        Some("300"),
        "open-ended: 5 minutes"
    );
    assert_eq!(
        get(&proxy, "/api/products/1", &[]).status,
        200,
        "the catalog stays open"
    );
    let unknown = admin(admin_port, "POST", "/maintenance", r#"{"route": "nope"}"#);
    assert_eq!(unknown.status, 404);
    let past = admin(
        admin_port,
        "POST",
        "/maintenance",
        r#"{"until": "2001-01-01T00:00:00Z"}"#,
    );
    assert_eq!(past.status, 400);
    let junk = admin(
        admin_port,
        "POST",
        "/maintenance",
        r#"{"until": "tomorrow"}"#,
    );
    assert_eq!(junk.status, 400);
}

#[test]
fn a_configured_window_ends_by_itself() {
    let fleet = Fleet::start(1);
    let admin_port = crate::support::free_port();
    let until = SystemTime::now() + Duration::from_secs(3);
    let proxy = Proxy::start(&config(
        &fleet,
        admin_port,
        &format!(
            "[routes.maintenance]\nuntil = \"{}\"\nmessage = \"Deploying\"\n",
            rfc3339(until)
        ),
    ));
    let page = get(&proxy, "/api/orders/1", &[("accept", "application/json")]);
    assert_eq!(page.header("x-ordergate-page"), Some("maintenance"));
    assert_eq!(page.json()["notice"], "Deploying");
    let reopened = crate::support::wait_until(Duration::from_secs(8), || {
        get(&proxy, "/api/orders/1", &[])
            .header("x-ordergate-page")
            .is_none()
    });
    assert!(reopened, "the route reopens at until");
}
