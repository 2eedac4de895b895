//! Black-box operations tests: hot reload under load, state that survives
//! reloads, drain, metrics, admin auth, TLS and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    admin, admin_section, readyz_within, request, wait_until, Fleet, Proxy, Response,
};

fn backends(addrs: &[SocketAddr], weights: &[u32]) -> String {
    let list: Vec<String> = addrs
        .iter()
        .zip(weights.iter().chain(std::iter::repeat(&1)))
        .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
        .collect();
    format!("[ {} ]", list.join(", "))
}

/// Sends GETs from `clients` threads until stopped; returns the failures seen.
fn steady_load(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(usize, Vec<String>)>> {
    (0..clients)
        .map(|_| {
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let (mut ok, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match crate::support::get(addr, "/api/products/1") {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                        Err(e) => failures.push(format!("{e:?}")),
                    }
                }
                (ok, failures)
            })
        })
        .collect()
}

#[test]
fn a_hundred_reloads_under_load_fail_no_request() {
    let fleet = Fleet::start(3);
    let port = crate::support::free_port();
    let variants: Vec<String> = vec![
        // weights change
        format!(
            "[[pools]]\nname = \"p\"\nbackends = {}\n",
            backends(&fleet.addrs, &[1, 2, 3])
        ),
        // a backend removed
        format!(
            "[[pools]]\nname = \"p\"\nbackends = {}\n",
            backends(&fleet.addrs[..2], &[1, 1])
        ),
        // a backend added back, different algorithm
        format!(
            "[[pools]]\nname = \"p\"\nbalance = \"least_request\"\nbackends = {}\n",
            backends(&fleet.addrs, &[1, 1, 1])
        ),
    ];
    let routes = ["[[routes]]\nname = \"all\"\npool = \"p\"\n", "[[routes]]\nname = \"all\"\npool = \"p\"\n[[routes]]\nname = \"orders\"\npath_prefix = \"/api/orders\"\npool = \"p\"\n"];
    let body = |i: usize| {
        format!(
            "{}{}\n{}",
            admin_section(port),
            variants[i % 3],
            routes[i % 2]
        )
    };
    let proxy = Proxy::start(&body(0));

    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_load(proxy.addr, 3, &stop);
    let (mut valid, mut invalid) = (0, 0);
    for i in 0..100 {
        if i % 5 == 4 {
            proxy.rewrite_config(&format!(
                "{}[[routes]]\nname = \"all\"\npool = \"missing\"\n",
                admin_section(port)
            ));
            let answer = admin(port, "POST", "/reload");
            assert_eq!(answer.status, 422, "{}", answer.text());
            invalid += 1;
        } else {
            proxy.rewrite_config(&body(i));
            let answer = admin(port, "POST", "/reload");
            assert_eq!(answer.status, 200, "{}", answer.text());
            valid += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        let (ok, failures) = client.join().expect("client");
        assert!(
            failures.is_empty(),
            "requests failed during reloads: {failures:?}"
        );
        served += ok;
    }
    assert!(
        served >= 30,
        "load kept flowing during the reloads: {served}"
    );

    let status = admin(port, "GET", "/status").json();
    assert_eq!(status["generation"], 1 + valid, "only valid reloads count");
    assert_eq!(invalid, 20);
    // The last reload was valid; make one invalid and see its error in /status.
    proxy.rewrite_config(&format!(
        "{}[[routes]]\nname = \"all\"\npool = \"missing\"\n",
        admin_section(port)
    ));
    assert_eq!(admin(port, "POST", "/reload").status, 422);
    let status = admin(port, "GET", "/status").json();
    assert_eq!(status["reload"]["last_ok"], false);
    let errors = status["reload"]["last_errors"].to_string();
    assert!(
        errors.contains("pool \\\"missing\\\" is not defined"),
        "{errors}"
    );
    assert_eq!(
        proxy.get("/api/products/1").status,
        200,
        "the old config still serves"
    );
}

#[test]
fn sighup_and_file_changes_reload_too() {
    let fleet = Fleet::start(2);
    let port = crate::support::free_port();
    let body = |addr: SocketAddr| {
        format!("{}[[pools]]\nname = \"p\"\nbackends = [ {{ addr = \"{addr}\" }} ]\n[[routes]]\nname = \"all\"\npool = \"p\"\n", admin_section(port))
    };
    let proxy = Proxy::start(&body(fleet.addrs[0]));
    assert!(wait_until(Duration::from_secs(5), || proxy
        .logs()
        .iter()
        .any(|(_, l)| l.contains("reload triggers ready"))));
    assert_eq!(proxy.get("/api/products/1").backend(), fleet.addrs[0]);

    // A file change alone is noticed.
    proxy.rewrite_config(&body(fleet.addrs[1]));
    assert!(wait_until(Duration::from_secs(5), || proxy
        .get("/api/products/1")
        .backend()
        == fleet.addrs[1]));

    // SIGHUP reloads as well.
    proxy.rewrite_config(&body(fleet.addrs[0]));
    proxy.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || proxy
        .get("/api/products/1")
        .backend()
        == fleet.addrs[0]));
    let status = admin(port, "GET", "/status").json();
    assert!(status["generation"].as_u64() >= Some(3), "{status}");
}

#[test]
fn a_backend_marked_down_stays_down_across_a_reload() {
    let fleet = Fleet::start(2);
    let (sick, fine) = (fleet.addrs[0], fleet.addrs[1]);
    let port = crate::support::free_port();
    let body = |weight: u32| {
        format!(
            "{}[[pools]]\nname = \"p\"\nbackends = [ {{ addr = \"{sick}\" }}, {{ addr = \"{fine}\", weight = {weight} }} ]\n[pools.health]\ninterval = \"60s\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n[[routes]]\nname = \"all\"\npool = \"p\"\n",
            admin_section(port)
        )
    };
    fleet.set_mode(sick, r#"{"status": 503}"#);
    let proxy = Proxy::start(&body(1));
    // The first probe (at start) finds it down; the next one is a minute away.
    assert!(wait_until(Duration::from_secs(3), || {
        admin(port, "GET", "/status").json()["pools"][0]["backends"][0]["state"] == "unhealthy"
    }));
    fleet.set_mode(sick, r#"{"status": null}"#);
    let before = fleet.stats()["listeners"][sick.to_string()]["requests"]
        .as_u64()
        .unwrap_or(0);

    proxy.rewrite_config(&body(2));
    assert_eq!(admin(port, "POST", "/reload").status, 200);
    for _ in 0..50 {
        assert_eq!(proxy.get("/api/products/1").backend(), fine);
    }
    let after = fleet.stats()["listeners"][sick.to_string()]["requests"]
        .as_u64()
        .unwrap_or(0);
    // Only probes may reach it (none are due): no shopper traffic.
    assert!(
        after <= before + 1,
        "the down backend got traffic after the reload ({before} -> {after})"
    );
    assert_eq!(
        admin(port, "GET", "/status").json()["pools"][0]["backends"][0]["state"],
        "unhealthy"
    );
}

#[test]
fn a_drained_backend_finishes_its_requests_and_gets_no_new_ones() {
    let fleet = Fleet::start(2);
    let (drained, other) = (fleet.addrs[0], fleet.addrs[1]);
    fleet.set_mode(drained, r#"{"latency_ms": 800}"#);
    let port = crate::support::free_port();
    let proxy = Proxy::start(&format!(
        "{}[[pools]]\nname = \"p\"\nbalance = \"round_robin\"\nbackends = {}\n[[routes]]\nname = \"all\"\npool = \"p\"\n",
        admin_section(port),
        backends(&fleet.addrs, &[1, 1])
    ));
    // Round robin sends the first request to the first backend.
    let addr = proxy.addr;
    let in_flight = std::thread::spawn(move || crate::support::get(addr, "/api/products/1"));
    assert!(wait_until(Duration::from_secs(2), || fleet.in_flight() == 1));
    let answer = admin(port, "POST", &format!("/backends/p/{drained}/drain"));
    assert_eq!(answer.status, 200, "{}", answer.text());

    for _ in 0..20 {
        assert_eq!(proxy.get("/api/products/1").backend(), other);
    }
    let finished = in_flight.join().expect("client").expect("answer");
    assert_eq!(finished.status, 200);
    assert_eq!(
        finished.backend(),
        drained,
        "the drained backend finished what it had"
    );

    assert_eq!(
        admin(port, "POST", &format!("/backends/p/{drained}/undrain")).status,
        200
    );
    assert!(wait_until(Duration::from_secs(5), || proxy
        .get("/api/products/1")
        .backend()
        == drained));
    assert_eq!(
        admin(port, "POST", "/backends/p/127.0.0.1:1/drain").status,
        404
    );
}

fn scrape(port: u16) -> prometheus_parse::Scrape {
    let text = admin(port, "GET", "/metrics").text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("/metrics parses as Prometheus text")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_parse_grow_and_count_each_request_in_its_series() {
    let fleet = Fleet::start(1);
    let port = crate::support::free_port();
    let proxy = Proxy::start(&format!(
        "{}[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"shop\"\npool = \"p\"\n",
        admin_section(port),
        backends(&fleet.addrs, &[1])
    ));
    assert_eq!(proxy.get("/api/products/1").status, 200);
    let first = scrape(port);
    let ok_before = value(
        &first,
        "ordergate_requests_total",
        &[("route", "shop"), ("code", "2xx")],
    );
    assert_eq!(proxy.get("/api/products/1").status, 200);
    let backend = fleet.addrs[0].to_string();
    let second = scrape(port);
    assert_eq!(
        value(
            &second,
            "ordergate_requests_total",
            &[("route", "shop"), ("code", "2xx")]
        ),
        ok_before + 1.0
    );
    assert!(
        value(
            &second,
            "ordergate_upstream_attempts_total",
            &[("pool", "p"), ("backend", &backend), ("result", "success")]
        ) >= 2.0
    );
    assert_eq!(
        value(
            &second,
            "ordergate_backend_up",
            &[("pool", "p"), ("backend", &backend)]
        ),
        1.0
    );
    assert_eq!(value(&second, "ordergate_config_generation", &[]), 1.0);
    // A free slot is no wait: nothing queued, so the queue-wait series (there
    // from the start) count nothing.
    let text = admin(port, "GET", "/metrics").text();
    for priority in ["critical", "high", "normal", "low"] {
        let series =
            format!("ordergate_queue_wait_seconds_count{{pool=\"p\",priority=\"{priority}\"}} 0");
        assert!(
            text.contains(&series),
            "queue waits recorded for requests that never queued, or no series: {series}"
        );
    }
    // Counters only grow.
    for sample in &first.samples {
        if let prometheus_parse::Value::Counter(before) = sample.value {
            let after = value(
                &second,
                &sample.metric,
                &sample
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            assert!(
                after >= before,
                "{} went down: {before} -> {after}",
                sample.metric
            );
        }
    }
    assert!(second
        .samples
        .iter()
        .any(|s| s.metric.starts_with("ordergate_request_duration_seconds")));
}

#[test]
fn a_public_admin_listener_needs_a_token() {
    let fleet = Fleet::start(1);
    let port = crate::support::free_port();
    let pools = format!(
        "[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backends(&fleet.addrs, &[1])
    );
    let refused = Proxy::try_start(&format!("[admin]\nlisten = \"0.0.0.0:{port}\"\n\n{pools}"));
    let why = refused.err().expect("must refuse to start");
    assert!(why.contains("a token is required"), "{why}");

    let token = "s3cret-token-for-tests";
    let proxy = Proxy::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{token}\"\n\n{pools}"
    ));
    assert_eq!(admin(port, "GET", "/status").status, 401);
    assert_eq!(
        admin(port, "GET", "/healthz").status,
        200,
        "liveness needs no token"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let bearer = format!("Bearer {token}");
    let ok = request(addr, "GET", "/status", &[("authorization", &bearer)], b"").expect("status");
    assert_eq!(ok.status, 200);
    let wrong = request(
        addr,
        "GET",
        "/status",
        &[("authorization", "Bearer wrong-token-wrong-token")],
        b"",
    )
    .expect("status");
    assert_eq!(wrong.status, 401);
    drop(proxy);
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let fleet = Fleet::start(1);
    fleet.set_mode(fleet.addrs[0], r#"{"latency_ms": 1000}"#);
    let port = crate::support::free_port();
    let body = format!(
        "{}[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        admin_section(port),
        backends(&fleet.addrs, &[1])
    );
    // A grace period of 3 s instead of the tests' usual 0.
    let mut proxy =
        Proxy::try_start_with("grace_period = \"3s\"", &body).unwrap_or_else(|e| panic!("{e}"));
    let results = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, results) = (proxy.addr, Arc::clone(&results));
            std::thread::spawn(move || {
                let answer = crate::support::get(addr, "/api/products/1");
                if let Ok(mut results) = results.lock() {
                    results.push(answer.map(|r| r.status).map_err(|e| format!("{e:?}")));
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(2), || fleet.in_flight() == 4));
    let sent_at = Instant::now();
    proxy.signal("TERM");
    assert!(
        readyz_within(port, 503, Duration::from_secs(2)),
        "readiness turns false"
    );
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpStream::connect(
            proxy.addr
        )
        .is_err()),
        "new connections are refused once shutdown starts"
    );
    for client in clients {
        client.join().expect("client");
    }
    let results = results.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(results, vec![Ok(200); 4], "requests in flight finished");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("ordergate exits");
    assert!(status.success(), "exit status {status}");
    // The requests needed about 1 s: the process exits then, not at the end of
    // the 3 s grace period, and says what it finished and cut.
    assert!(
        sent_at.elapsed() < Duration::from_millis(2500),
        "exited {:?} after SIGTERM",
        sent_at.elapsed()
    );
    assert!(proxy.logged_within(Duration::from_secs(2), |l| l
        .contains("4 requests finished, 0 cut")));
}

/// HTTPS requests for `paths`, one after the other on one keep-alive
/// connection (the last says `Connection: close`), with a client that trusts
/// only `cert`; returns the responses and the ALPN protocol the server chose
/// when `alpn` was offered (then no request is sent).
fn https(
    addr: SocketAddr,
    cert: &rcgen::Certificate,
    paths: &[&str],
    alpn: &[&[u8]],
) -> (Vec<Response>, Option<Vec<u8>>) {
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.der().clone())
        .expect("trust the test certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let socket = std::net::TcpStream::connect(addr).expect("connect TLS listener");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(connection, socket);
    if alpn.contains(&&b"h2"[..]) {
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
        }
        return (Vec::new(), tls.conn.alpn_protocol().map(<[u8]>::to_vec));
    }
    let mut responses = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let last = i + 1 == paths.len();
        let connection = if last { "close" } else { "keep-alive" };
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: {connection}\r\n\r\n");
        tls.write_all(request.as_bytes()).expect("send over TLS");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the answer is whole (the server may close without
        // close_notify once the last answer is complete).
        let response = loop {
            if let Ok(response) = crate::support::parse_response(&raw) {
                if !last {
                    break Some(response);
                }
            }
            match tls.read(&mut buf) {
                Ok(n) if n > 0 => raw.extend_from_slice(&buf[..n]),
                _ => break crate::support::parse_response(&raw).ok(),
            }
        };
        responses.push(response.unwrap_or_else(|| {
            panic!(
                "request {} of {} got no whole answer over TLS: {:?}",
                i + 1,
                paths.len(),
                String::from_utf8_lossy(&raw)
            )
        }));
    }
    let alpn = tls.conn.alpn_protocol().map(<[u8]>::to_vec);
    (responses, alpn)
}

#[test]
fn tls_listener_serves_https_with_a_certificate_made_at_test_time() {
    let fleet = Fleet::start(1);
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("generate a certificate");
    let cert_file = crate::support::TempFile::new("cert.pem", &certified.cert.pem());
    let key_file = crate::support::TempFile::new("key.pem", &certified.signing_key.serialize_pem());
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let server_extra = format!(
        "grace_period = \"0s\"\n[[server.tls]]\nlisten = \"{tls_addr}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_file.path.display(),
        key_file.path.display()
    );
    let body = format!(
        "[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        backends(&fleet.addrs, &[1])
    );
    let proxy = Proxy::try_start_with(&server_extra, &body).unwrap_or_else(|e| panic!("{e}"));
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(tls_addr).is_ok()
    }));

    // Three requests on one keep-alive connection: the connection waits for
    // the second and third outside pingora's request (`connection.rs`).
    let (responses, _) = https(
        tls_addr,
        &certified.cert,
        &["/__sim/echo", "/__sim/echo", "/__sim/echo"],
        &[],
    );
    assert_eq!(responses.len(), 3);
    for response in &responses {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["headers"]["x-forwarded-proto"], "https");
    }
    let (_, alpn) = https(tls_addr, &certified.cert, &["/"], &[b"h2", b"http/1.1"]);
    assert_eq!(
        alpn.as_deref(),
        Some(&b"h2"[..]),
        "HTTP/2 is offered to clients"
    );
    // Plain HTTP still works on the other listener.
    assert_eq!(proxy.get("/api/products/1").status, 200);
}

#[test]
fn the_access_log_writes_one_json_line_per_request() {
    let fleet = Fleet::start(1);
    let log = crate::support::TempFile::new("access.log", "");
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"{}\"\n\n[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"shop\"\npath_prefix = \"/api\"\npool = \"p\"\n",
        log.path.display(),
        backends(&fleet.addrs, &[1])
    ));
    assert_eq!(
        proxy
            .send(
                "GET",
                "/api/products/1",
                &[("x-request-id", "log-test-1")],
                b""
            )
            .status,
        200
    );
    assert_eq!(proxy.get("/elsewhere").status, 404);
    let mut lines = Vec::new();
    assert!(wait_until(Duration::from_secs(3), || {
        lines = std::fs::read_to_string(&log.path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= 2
    }));
    let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON line");
    assert_eq!(first["request_id"], "log-test-1");
    assert_eq!(first["route"], "shop");
    assert_eq!(first["pool"], "p");
    assert_eq!(first["backend"], fleet.addrs[0].to_string());
    assert_eq!(first["status"], 200);
    assert_eq!(first["attempts"], 1);
    assert!(first["total_time"].as_f64().is_some() && first["bytes"].as_u64() > Some(0));
    let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("JSON line");
    assert_eq!(second["status"], 404);
    assert_eq!(second["outcome"], "no_route");
    assert!(second["route"].is_null());
}

#[test]
fn a_graceful_upgrade_hands_the_listener_over_without_failing_requests() {
    let fleet = Fleet::start(1);
    // With an admin listener too: the new process must share its port.
    let port = crate::support::free_port();
    let body = format!(
        "{}[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        admin_section(port),
        backends(&fleet.addrs, &[1])
    );
    let mut old =
        Proxy::try_start_with("grace_period = \"3s\"", &body).unwrap_or_else(|e| panic!("{e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_load(old.addr, 2, &stop);

    let new = old.start_upgrade_waiting();
    old.signal("QUIT");
    let status = old
        .wait_exit(Duration::from_secs(10))
        .expect("the old process exits");
    assert!(status.success(), "old process: {status}");
    // The new one serves on the same address while the load goes on.
    for _ in 0..20 {
        assert_eq!(new.get("/api/products/1").status, 200);
    }
    stop.store(true, Ordering::Relaxed);
    // Every answered request succeeded. pingora closes connections whose request
    // header has not arrived yet when the old process starts shutting down, so a
    // connection opened at that very instant can end without an answer
    // (README, Known limits): allow one such drop per client, nothing else.
    for client in clients {
        let (ok, failures) = client.join().expect("client");
        assert!(ok > 0);
        let answered: Vec<&String> = failures
            .iter()
            .filter(|f| *f != "Empty" && *f != "Reset")
            .collect();
        assert!(
            answered.is_empty(),
            "answered requests failed during the upgrade: {answered:?}"
        );
        assert!(
            failures.len() <= 1,
            "connections dropped during the upgrade: {failures:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || admin(port, "GET", "/healthz")
            .status
            == 200),
        "the new process serves the admin API"
    );
}

/// Starts ordergate in front of `fleet` under `prlimit --nofile=SOFT:HARD`,
/// its stderr to `stderr`; returns the process, its listen address and the
/// config file (kept while the process runs).
fn start_under_prlimit(
    fleet: &Fleet,
    nofile: &str,
    stderr: std::process::Stdio,
) -> (std::process::Child, SocketAddr, crate::support::TempFile) {
    let port = crate::support::free_port();
    let config = crate::support::TempFile::new(
        "ordergate.toml",
        &format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\ngrace_period = \"0s\"\n\n[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"shop\"\npool = \"p\"\n",
            backends(&fleet.addrs, &[1])
        ),
    );
    let child = std::process::Command::new("prlimit")
        .arg(format!("--nofile={nofile}"))
        .arg(crate::support::bin())
        .args(["run", "-c"])
        .arg(&config.path)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("prlimit (util-linux) starts ordergate");
    (child, SocketAddr::from(([127, 0, 0, 1], port)), config)
}

#[test]
fn at_the_descriptor_limit_open_connections_are_served_and_the_log_says_it_once() {
    let fleet = Fleet::start(1);
    let log = crate::support::TempFile::new("stderr.log", "");
    let stderr = std::fs::File::create(&log.path).expect("log file");
    let (mut child, addr, _config) = start_under_prlimit(&fleet, "128:128", stderr.into());
    assert!(
        wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect(addr).is_ok()
        }),
        "ordergate did not start"
    );
    let ask = |stream: &mut std::net::TcpStream| -> Option<u16> {
        use std::io::{Read, Write};
        stream
            .write_all(b"GET /api/products/1 HTTP/1.1\r\nHost: shop.test\r\n\r\n")
            .ok()?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(response) = crate::support::parse_response(&raw) {
                return Some(response.status);
            }
            let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
            raw.extend_from_slice(&buf[..n]);
        }
    };
    let connect = || {
        let stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(stream)
    };
    // 40 shoppers on keep-alive connections, then a crowd that takes every
    // descriptor left (the newcomers past the limit wait in the backlog).
    let mut shoppers: Vec<_> = (0..40).filter_map(|_| connect()).collect();
    for shopper in &mut shoppers {
        assert_eq!(ask(shopper), Some(200));
    }
    let crowd: Vec<_> = (0..200).filter_map(|_| connect()).collect();
    let hit = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log.path).is_ok_and(|t| t.contains("out of file descriptors"))
    });
    // The shoppers who were in keep being answered: a 200 when a pooled
    // backend connection is free, at worst a page (never a dead connection).
    for shopper in &mut shoppers {
        let status = ask(shopper);
        assert!(matches!(status, Some(200 | 502 | 503)), "{status:?}");
    }
    let alive = child.try_wait().expect("child status").is_none();
    drop(crowd);
    // Once the crowd left, newcomers are served again.
    let served_again = wait_until(Duration::from_secs(10), || {
        connect().as_mut().and_then(ask) == Some(200)
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log.path).expect("log");
    assert!(hit, "the limit was never reached or never logged:\n{text}");
    assert!(alive, "ordergate exited at the descriptor limit:\n{text}");
    assert!(served_again, "no shopper was served after the crowd left");
    assert_eq!(
        text.matches("out of file descriptors").count(),
        1,
        "said once:\n{text}"
    );
    for noise in [
        "Accept() failed",
        "Too many open files",
        "keeps failing",
        "ejected",
    ] {
        assert!(!text.contains(noise), "{noise:?} in the log:\n{text}");
    }
}

/// The soft limit of open files of process `pid`, from /proc.
fn open_files_soft_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit_at_start() {
    let fleet = Fleet::start(1);
    // Started the way a default shell leaves it: a soft limit far below the hard one.
    let (mut child, addr, _config) =
        start_under_prlimit(&fleet, "256:4096", std::process::Stdio::null());
    let up = wait_until(Duration::from_secs(15), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let limit = open_files_soft_limit(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "ordergate did not start");
    assert_eq!(limit, Some(4096));
}
