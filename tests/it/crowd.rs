//! A hostile flash-sale crowd against the real binary: each test is one thing
//! a scalper, a bot or a curious shopper tries (issue 23's rows), and what
//! ordergate does about it. Each failed on the main before the fix.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::conn::Conn;
use crate::support::{
    admin, admin_section, free_port, metric_value, parse_response, request, wait_until, Fleet,
    Proxy, Response,
};

const SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

/// One pool of the fleet's backends behind a catch-all route, with `extra`
/// appended (more routes, rooms).
fn shop(fleet: &Fleet, admin_port: u16, route: &str, extra: &str) -> String {
    shop_with_admin(&admin_section(admin_port), fleet, route, extra)
}

fn shop_with_admin(admin: &str, fleet: &Fleet, route: &str, extra: &str) -> String {
    format!(
        "{admin}[[pools]]\nname = \"orders\"\nrequest_timeout = \"500ms\"\nbackends = {}\n[pools.outlier]\nconsecutive_gateway_failures = 1000\nconsecutive_5xx = 1000\n\n[[routes]]\nname = \"shop\"\npool = \"orders\"\n{route}\n{extra}",
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
    assert!(headers.get("x-real-ip").is_none(), "{headers}");
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

/// Row 8: a page on another site posts to the admin API (a simple request:
/// `text/plain`, or no body) or reaches it by DNS rebinding (its own host
/// name); with and without a token, nothing changes. The admin's own page
/// (same origin, JSON) still can.
#[test]
fn a_web_page_cannot_close_the_shop_through_the_admin_api() {
    let fleet = Fleet::start(1);
    let room = format!(
        "[[rooms]]\nname = \"sale\"\nroutes = [\"shop\"]\nsecret = \"{SECRET}\"\nmax_active = 100\n"
    );
    let token = "an-operator-token-0123456789";
    for with_token in [false, true] {
        let port = free_port();
        let admin_toml = match with_token {
            false => admin_section(port),
            true => format!("[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n\n"),
        };
        let _proxy = Proxy::start(&shop_with_admin(&admin_toml, &fleet, "", &room));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let backend = fleet.addrs[0];
        let bearer = format!("Bearer {token}");
        let auth: &[(&str, &str)] = if with_token {
            &[("authorization", &bearer)]
        } else {
            &[]
        };
        let attempt = |path: &str, headers: &[(&str, &str)], body: &str| {
            let all: Vec<(&str, &str)> = auth.iter().chain(headers).copied().collect();
            request(addr, "POST", path, &all, body.as_bytes()).expect("an answer")
        };
        let drain = format!("/backends/orders/{backend}/drain");
        let window = r#"{"message": "closed by a web page"}"#;
        let case = |what: &str| format!("token {with_token}: {what}");
        for (what, path, headers, body, status) in [
            (
                "text/plain close",
                "/rooms/sale/close",
                vec![("content-type", "text/plain")],
                "",
                415,
            ),
            ("bodyless drain", drain.as_str(), vec![], "", 415),
            (
                "form maintenance",
                "/maintenance",
                vec![("content-type", "application/x-www-form-urlencoded")],
                window,
                415,
            ),
            (
                "rebinding close",
                "/rooms/sale/close",
                vec![
                    ("host", "attacker.example:80"),
                    ("content-type", "application/json"),
                ],
                "",
                421,
            ),
            (
                "cross-origin drain",
                drain.as_str(),
                vec![
                    ("origin", "http://attacker.example"),
                    ("content-type", "application/json"),
                ],
                "",
                403,
            ),
            (
                "cross-site maintenance",
                "/maintenance",
                vec![
                    ("sec-fetch-site", "cross-site"),
                    ("content-type", "application/json"),
                ],
                window,
                403,
            ),
        ] {
            let answer = attempt(path, &headers, body);
            assert_eq!(answer.status, status, "{}: {}", case(what), answer.text());
        }
        let rebinding_read = request(addr, "GET", "/status", &[("host", "attacker.example")], b"")
            .expect("an answer");
        assert_eq!(rebinding_read.status, 421, "{}", case("a rebinding read"));

        let read = |path: &str| {
            let answer = request(addr, "GET", path, auth, b"").expect("an answer");
            assert_eq!(answer.status, 200, "{path}: {}", answer.text());
            answer.json()
        };
        assert_eq!(
            read("/rooms")["rooms"][0]["control"],
            "auto",
            "{}",
            case("room")
        );
        let status = read("/status");
        assert_eq!(
            status["pools"][0]["backends"][0]["drained"],
            false,
            "{}",
            case("drain")
        );
        assert_eq!(
            read("/maintenance")["windows"].as_array().map(Vec::len),
            Some(0),
            "{}",
            case("maintenance")
        );
        let refused = metric_value(
            &request(addr, "GET", "/metrics", auth, b"")
                .expect("metrics")
                .text(),
            "ordergate_admin_refused_total{reason=\"not_json\"}",
        );
        assert_eq!(refused, 3.0, "{}", case("counted"));

        // The admin's own page: same origin, JSON, (the token).
        let origin = format!("http://{addr}");
        let own = attempt(
            "/rooms/sale/close",
            &[
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
                ("content-type", "application/json"),
            ],
            "",
        );
        assert_eq!(own.status, 200, "{}: {}", case("own page"), own.text());
        assert_eq!(read("/rooms")["rooms"][0]["control"], "closed");
    }
}

/// Row 9: connections that never finish their request head are closed after
/// `admin.header_timeout`, and no more than `admin.max_connections` are held
/// at once; the admin API answers again once they are gone.
#[test]
fn admin_connections_that_never_finish_are_capped_and_closed() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let admin_toml = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 4\nheader_timeout = \"1s\"\n\n"
    );
    let _proxy = Proxy::start(&shop_with_admin(&admin_toml, &fleet, "", ""));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut slow: Vec<Conn> = (0..4)
        .map(|_| {
            let mut conn = Conn::open(addr);
            conn.send_raw(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .expect("a partial head");
            conn
        })
        .collect();
    // The cap is full: the next connection is closed without an answer.
    let over_cap = wait_until(Duration::from_secs(2), || {
        let mut conn = Conn::open(addr);
        let _ = conn.send_raw(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        conn.closed_within(Duration::from_millis(300))
    });
    assert!(over_cap, "a fifth connection is refused");
    for (i, conn) in slow.iter_mut().enumerate() {
        assert!(
            conn.closed_within(Duration::from_secs(3)),
            "slow connection {i} closed after the header timeout"
        );
    }
    assert!(
        wait_until(Duration::from_secs(2), || admin(port, "GET", "/healthz")
            .status
            == 200),
        "the admin API answers again"
    );
    let metrics = admin(port, "GET", "/metrics").text();
    assert!(
        metric_value(
            &metrics,
            "ordergate_admin_refused_total{reason=\"too_many_connections\"}"
        ) >= 1.0
    );
    assert!(
        metric_value(
            &metrics,
            "ordergate_admin_refused_total{reason=\"header_timeout\"}"
        ) >= 4.0
    );
}

/// Sends `raw` (a whole request with `Connection: close`) from the loopback
/// address `source` (any of 127.0.0.0/8), as if from another client, and
/// reads the answer.
fn send_from(source: [u8; 4], to: SocketAddr, raw: &str) -> Response {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((source, 0)).into())
        .expect("bind a loopback source address");
    socket.connect(&to.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(raw.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    parse_response(&answer).expect("an answer")
}

/// One GET from the loopback address `source`.
fn request_from(source: [u8; 4], to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    send_from(source, to, &head)
}

/// Row 6: thousands of distinct clients, one request each, on a route limited
/// to one request a second per client: none is refused. Requests without the
/// key header are counted per address, not in one bucket.
#[test]
fn a_per_client_limit_never_throttles_a_crowd_of_distinct_clients() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let limit = "[routes.rate_limit]\nrequests_per_second = 1\nkey = \"header:x-shopper\"\n";
    let proxy = Proxy::start(&shop(&fleet, port, limit, ""));
    let mut conn = Conn::open(proxy.addr);
    let mut refused = 0;
    for shopper in 0..3000 {
        let id = format!("shopper-{shopper}");
        let answer = conn
            .request("GET", "/api/products/1", &[("x-shopper", &id)], b"")
            .expect("an answer");
        refused += usize::from(answer.status == 429);
    }
    assert_eq!(refused, 0, "of 3000 distinct clients at their rate");
    let again = conn
        .request(
            "GET",
            "/api/products/1",
            &[("x-shopper", "shopper-2999")],
            b"",
        )
        .expect("an answer");
    assert_eq!(again.status, 429, "a client over its rate is refused");

    // Without the header: one budget per address.
    for source in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]] {
        let first = request_from(source, proxy.addr, "/api/products/1", &[]);
        assert_eq!(first.status, 200, "{source:?}: its own budget");
    }
    let second = request_from([127, 0, 0, 2], proxy.addr, "/api/products/1", &[]);
    assert_eq!(second.status, 429, "the same address is over its rate");
}

/// Row 4: dot segments, doubled slashes and encoded slashes do not walk a
/// request past the room's bypass or onto another route; the backend gets
/// the path ordergate routed on.
#[test]
fn a_path_means_the_same_to_ordergate_and_the_backend() {
    let fleet = Fleet::start(1);
    let config = format!(
        "{}[[pools]]\nname = \"orders\"\nbackends = {}\n\n\
         [[routes]]\nname = \"checkout\"\npath_prefix = \"/api/orders\"\nmethods = [\"POST\"]\npool = \"orders\"\n\
         [routes.idempotency]\nrequired = true\nscope = \"global\"\n\n\
         [[routes]]\nname = \"shop\"\npool = \"orders\"\n\n\
         [[rooms]]\nname = \"sale\"\nroutes = [\"shop\"]\nsecret = \"{SECRET}\"\nmode = \"always\"\nmax_active = 1\n\
         [rooms.bypass]\npaths = [\"/health\"]\n",
        admin_section(free_port()),
        fleet.backends_toml(&[])
    );
    let proxy = Proxy::start(&config);
    let get = |path: &str| request(proxy.addr, "GET", path, &[], b"").expect("an answer");

    // The only place inside is taken.
    let first = get("/api/products/1");
    assert_eq!(first.status, 200, "{first:?}");
    // A bypass path walked back out of is the room's.
    for sneaky in [
        "/health/../api/products/1",
        "/health/%2E%2E/api/products/1",
        "//health/..//api/products/1",
    ] {
        let answer = get(sneaky);
        assert_eq!(
            answer.header("x-ordergate-page"),
            Some("waiting_room"),
            "{sneaky}: {answer:?}"
        );
    }
    // The bypass itself still passes, normalised on its way to the backend.
    let echo = get("/health/./../health//../__sim/echo?x=/../y");
    assert_eq!(
        echo.header("x-ordergate-page"),
        Some("waiting_room"),
        "not a bypass path"
    );
    let bypass = get("/health/x/..//y");
    assert_ne!(
        bypass.header("x-ordergate-page"),
        Some("waiting_room"),
        "{bypass:?}"
    );

    // An order sneaked past checkout's rules lands on checkout.
    let order = request(proxy.addr, "POST", "/api/x/../orders", &[], b"{}").expect("an answer");
    assert_eq!(order.status, 400, "{order:?}");
    assert_eq!(
        order.header("x-ordergate-page"),
        Some("idempotency_key_missing")
    );
    // Encoded slashes: refused with the bad_request page.
    for escaped in ["/api/x%2F..%2Forders", "/api%5Corders", "/api/x%2f"] {
        let answer = request(proxy.addr, "POST", escaped, &[], b"{}").expect("an answer");
        assert_eq!(answer.status, 400, "{escaped}: {answer:?}");
        assert_eq!(
            answer.header("x-ordergate-page"),
            Some("bad_request"),
            "{escaped}"
        );
    }
    let stats = fleet.stats();
    assert_eq!(
        stats["orders_created"], 0,
        "no order reached a backend: {stats}"
    );
}

/// What the backend sees of a normalised path (no room in the way).
#[test]
fn the_backend_gets_the_normal_path() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&shop(&fleet, free_port(), "", ""));
    let echo = request(
        proxy.addr,
        "GET",
        "/x/..//__sim/./echo?next=/../a",
        &[],
        b"",
    )
    .expect("an answer");
    assert_eq!(echo.status, 200, "{echo:?}");
    let seen = echo.json();
    assert_eq!(seen["path"], "/__sim/echo", "{seen}");
    assert_eq!(seen["query"], "next=/../a", "{seen}");
}

/// One keyed order from the loopback address `source`.
fn order_from(
    source: [u8; 4],
    to: SocketAddr,
    key: &str,
    body: &str,
    cookie: Option<&str>,
) -> Response {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let raw = format!(
        "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\nContent-Type: application/json\r\nIdempotency-Key: {key}\r\n{cookie}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send_from(source, to, &raw)
}

fn set_cookie(response: &Response) -> Option<&str> {
    response.header("set-cookie")
}

/// Row 5: a prober reuses a guest shopper's idempotency key (read off her
/// screen, or guessed): with the same body it gets a new order of its own,
/// never her answer or her session cookie; with another body, no 422 that
/// would say the key exists. Her own retry is a replay without her cookie.
/// A route without a scope does not pass `check`.
#[test]
fn an_idempotency_key_never_reaches_another_shopper() {
    let fleet = Fleet::start(1);
    let checkout = "[routes.idempotency]\nscope = \"cookie:session\"\n";
    let proxy = Proxy::start(&shop(&fleet, free_port(), checkout, ""));
    // The order servers ignore keys: ordergate is what keeps an order once.
    fleet.set_mode(fleet.addrs[0], r#"{"ignore_idempotency": true}"#);
    let (alice, mallory) = ([127, 0, 0, 5], [127, 0, 0, 6]);
    let body = r#"{"sku":"limited-sneaker"}"#;

    let first = order_from(alice, proxy.addr, "order-1", body, None);
    assert_eq!(first.status, 201, "{first:?}");
    let her_session = set_cookie(&first).expect("the guest session").to_string();

    let probe = order_from(mallory, proxy.addr, "order-1", body, None);
    assert_eq!(
        probe.status, 201,
        "a new order of the prober's own: {probe:?}"
    );
    assert!(probe.header("idempotency-replayed").is_none(), "{probe:?}");
    assert_ne!(probe.body, first.body, "not her answer");
    assert_ne!(
        set_cookie(&probe),
        Some(her_session.as_str()),
        "not her session"
    );
    let other_body = order_from(
        mallory,
        proxy.addr,
        "order-1",
        r#"{"sku":"x"}"#,
        Some("session=mallory"),
    );
    assert_eq!(
        other_body.status, 201,
        "no 422 telling the key exists: {other_body:?}"
    );

    // Her own retry (the answer was lost: no cookie yet) is a replay, and a
    // replay carries no Set-Cookie.
    let retry = order_from(alice, proxy.addr, "order-1", body, None);
    assert_eq!(
        retry.header("idempotency-replayed"),
        Some("true"),
        "{retry:?}"
    );
    assert_eq!(retry.body, first.body);
    assert_eq!(set_cookie(&retry), None, "{retry:?}");

    // `check` wants a scope.
    let file = crate::support::TempFile::new(
        "ordergate.toml",
        &shop(
            &fleet,
            free_port(),
            "[routes.idempotency]\nrequired = true\n",
            "",
        ),
    );
    let output = std::process::Command::new(crate::support::bin())
        .args(["check", "-c"])
        .arg(&file.path)
        .output()
        .expect("run check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("idempotency.scope: is required"),
        "{stderr}"
    );
}

/// A shopper of the room `sale` on one loopback address, keeping the room's
/// cookie as a browser does.
struct Shopper {
    source: [u8; 4],
    cookie: Option<String>,
}

impl Shopper {
    fn at(source: [u8; 4]) -> Shopper {
        Shopper {
            source,
            cookie: None,
        }
    }

    /// A product page: whether it got through the room (and the cookie, kept).
    fn visit(&mut self, proxy: &Proxy) -> bool {
        let cookie = self.cookie.clone();
        let mut headers = vec![("accept", "application/json")];
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie.as_str()));
        }
        let answer = request_from(self.source, proxy.addr, "/api/products/1", &headers);
        if let Some(set) = answer
            .headers
            .iter()
            .find(|(name, value)| name == "set-cookie" && value.starts_with("ordergate_room_sale="))
        {
            self.cookie = set.1.split(';').next().map(str::to_owned);
        }
        answer.header("x-ordergate-page").is_none()
    }

    fn holds_pass(&self) -> bool {
        self.cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("ordergate_room_sale=p."))
    }
}

fn room_shop(fleet: &Fleet, admin_port: u16, room: &str) -> String {
    shop(
        fleet,
        admin_port,
        "",
        &format!(
            "[[rooms]]\nname = \"sale\"\nroutes = [\"shop\"]\nsecret = \"{SECRET}\"\n{room}\n"
        ),
    )
}

/// Row 1: one shopper's pass, posted on social media, is replayed from 50
/// other clients: at most two of them get in, one at a time (a pass serves
/// one network at a time and may move twice, so a phone going from Wi-Fi to
/// mobile data and back keeps it); then it is spent.
#[test]
fn a_shared_pass_lets_a_few_in_not_everyone() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let proxy = Proxy::start(&room_shop(
        &fleet,
        port,
        "mode = \"always\"\nmax_active = 3\n",
    ));
    let mut owner = Shopper::at([127, 0, 0, 10]);
    assert!(owner.visit(&proxy) && owner.holds_pass());
    let mut let_in = 0;
    for i in 0..50u8 {
        let mut copier = Shopper {
            source: [127, 0, 1, i + 1],
            cookie: owner.cookie.clone(),
        };
        // Let in on the shared pass itself (not as a new shopper the room
        // had space for: that one gets a pass of its own).
        let passed = copier.visit(&proxy);
        let_in += usize::from(passed && copier.cookie == owner.cookie);
    }
    assert!(let_in <= 2, "{let_in} of 50 got in on one pass");
    assert!(
        !owner.visit(&proxy),
        "the spent pass lets nobody in: its holder queues again"
    );
    let rooms = admin(port, "GET", "/rooms").json();
    assert!(
        rooms["rooms"][0]["active"].as_u64().is_some_and(|a| a <= 3),
        "{rooms}"
    );
}

/// Row 2: a bot takes every place and keeps its passes warm; `max_session`
/// ends them, so the shopper waiting first gets in.
#[test]
fn passes_kept_warm_end_at_max_session() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&room_shop(
        &fleet,
        free_port(),
        "mode = \"always\"\nmax_active = 3\nsession = \"2s\"\nmax_session = \"3s\"\n",
    ));
    let mut bots: Vec<Shopper> = (0..3).map(|i| Shopper::at([127, 0, 2, i + 1])).collect();
    for bot in &mut bots {
        assert!(bot.visit(&proxy) && bot.holds_pass());
    }
    let mut shopper = Shopper::at([127, 0, 3, 1]);
    assert!(!shopper.visit(&proxy), "the site is full: she waits");
    let started = std::time::Instant::now();
    let admitted = wait_until(Duration::from_secs(8), || {
        for bot in &mut bots {
            bot.visit(&proxy);
        }
        shopper.visit(&proxy)
    });
    assert!(admitted, "she was never let in past the warm passes");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(6), "{waited:?}");
}

/// Row 3: in `on_overload` mode, passes given while the pool is calm count
/// against `max_active`: the fourth shopper waits, and is let in as soon as
/// the first passes idle out.
#[test]
fn direct_passes_count_against_max_active() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&room_shop(
        &fleet,
        free_port(),
        "mode = \"on_overload\"\nmax_active = 3\nsession = \"2s\"\n",
    ));
    for i in 0..3 {
        let mut early = Shopper::at([127, 0, 4, i + 1]);
        assert!(
            early.visit(&proxy) && early.holds_pass(),
            "calm: shopper {i} at once"
        );
    }
    let mut fourth = Shopper::at([127, 0, 4, 9]);
    assert!(
        !fourth.visit(&proxy),
        "three passes in use: the fourth waits"
    );
    assert!(
        wait_until(Duration::from_secs(6), || fourth.visit(&proxy)),
        "the fourth is let in once the early passes idle out"
    );
}

/// Row 7 (in part): past `max_waiting`, a newcomer gets the "line is full"
/// page (JSON or HTML, zh or en, Retry-After), not a place.
#[test]
fn past_max_waiting_the_line_is_full() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&room_shop(
        &fleet,
        free_port(),
        "mode = \"always\"\nmax_active = 1\nmax_waiting = 5\n",
    ));
    let mut inside = Shopper::at([127, 0, 5, 1]);
    assert!(inside.visit(&proxy));
    for i in 0..5 {
        assert!(!Shopper::at([127, 0, 5, 10 + i]).visit(&proxy));
    }
    let full = request_from(
        [127, 0, 5, 99],
        proxy.addr,
        "/api/products/1",
        &[("accept", "application/json")],
    );
    assert_eq!(full.status, 503, "{full:?}");
    assert_eq!(full.header("x-ordergate-page"), Some("line_full"));
    assert_eq!(full.header("retry-after"), Some("60"));
    assert!(full.header("set-cookie").is_none(), "no ticket");
    let zh = request_from(
        [127, 0, 5, 98],
        proxy.addr,
        "/api/products/1",
        &[("accept", "text/html"), ("accept-language", "zh-CN")],
    );
    assert_eq!(zh.header("x-ordergate-page"), Some("line_full"));
    assert!(zh.text().contains("排队人数已满"), "{}", zh.text());
}

/// Row 1 (the issue rate): a bot without cookies takes a new ticket with
/// every request; one address gets `ticket_rate_per_address` (20) a second
/// and as many again at once, then the 429 page. A carrier NAT with 100
/// shoppers arriving over five seconds is not slowed.
#[test]
fn one_address_cannot_flood_the_line_but_a_carrier_nat_is_not_slowed() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&room_shop(
        &fleet,
        free_port(),
        "mode = \"always\"\nmax_active = 1\n",
    ));
    let mut inside = Shopper::at([127, 0, 6, 1]);
    assert!(inside.visit(&proxy));

    let mut refused = 0;
    for _ in 0..200 {
        let answer = request_from(
            [127, 0, 6, 2],
            proxy.addr,
            "/api/products/1",
            &[("accept", "application/json")],
        );
        refused += usize::from(answer.status == 429);
    }
    assert!(
        refused >= 150,
        "{refused} of 200 cookieless arrivals from one address refused"
    );

    let nat = [127, 0, 6, 3];
    let started = std::time::Instant::now();
    let mut slowed = 0;
    for shopper in 0..100u64 {
        // Evenly over five seconds.
        let due = Duration::from_millis(shopper * 50);
        while started.elapsed() < due {
            std::thread::sleep(Duration::from_millis(5));
        }
        let answer = request_from(
            nat,
            proxy.addr,
            "/api/products/1",
            &[("accept", "application/json")],
        );
        slowed += usize::from(answer.status == 429);
    }
    assert_eq!(slowed, 0, "shoppers behind one carrier NAT were refused");
}

/// Row 7: a flood of cookieless arrivals behind a live head ticket, the room
/// paused: the abandoned tickets leave the line within `ticket_timeout` (and
/// a sweep), though the head never moves.
#[test]
fn abandoned_tickets_behind_a_live_head_leave_the_line() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let proxy = Proxy::start(&room_shop(
        &fleet,
        port,
        "mode = \"always\"\nmax_active = 1\nrefresh = \"1s\"\nticket_timeout = \"3s\"\nticket_rate_per_address = 1000000\n",
    ));
    let mut inside = Shopper::at([127, 0, 7, 1]);
    assert!(inside.visit(&proxy));
    let mut head = Shopper::at([127, 0, 7, 2]);
    assert!(!head.visit(&proxy), "the head waits");
    assert_eq!(admin(port, "POST", "/rooms/sale/pause").status, 200);
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..2000 {
        let answer = conn
            .request(
                "GET",
                "/api/products/1",
                &[("accept", "application/json")],
                b"",
            )
            .expect("an answer");
        assert_eq!(answer.header("x-ordergate-page"), Some("waiting_room"));
    }
    let length = || admin(port, "GET", "/rooms").json()["rooms"][0]["length"].as_u64();
    // On a loaded machine the first tickets may time out before the last
    // is taken: most of them must still be there.
    let before = length().unwrap_or(0);
    assert!(before > 1001, "2 001 in line, {before} still there");
    let left = wait_until(Duration::from_secs(10), || {
        head.visit(&proxy);
        length() == Some(1)
    });
    assert!(
        left,
        "the abandoned tickets are still in line: {:?}",
        length()
    );
    assert!(!head.visit(&proxy), "the head keeps its place");
}

/// Row 1, the other side: a shopper whose phone goes from Wi-Fi to mobile
/// data and back keeps the pass.
#[test]
fn a_phone_changing_networks_keeps_its_pass() {
    let fleet = Fleet::start(1);
    let proxy = Proxy::start(&room_shop(
        &fleet,
        free_port(),
        "mode = \"always\"\nmax_active = 1\n",
    ));
    let mut phone = Shopper::at([127, 0, 8, 1]);
    assert!(phone.visit(&proxy) && phone.holds_pass());
    for network in [[127, 0, 9, 1], [127, 0, 8, 1]] {
        phone.source = network;
        assert!(phone.visit(&proxy), "on {network:?}");
    }
    let mut next = Shopper::at([127, 0, 8, 2]);
    assert!(
        !next.visit(&proxy),
        "the site is still full: the pass is in use"
    );
}
