//! Order safety at the edge: against a fleet that ignores idempotency keys
//! (`ordergate sim --ignore-idempotency`), ordergate alone makes a keyed order
//! happen at most once — double clicks, shopper retries after a lost answer,
//! reused keys, released keys, expiry, eviction, reloads and load.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    admin_headers, admin_section, request, wait_until, Fleet, HttpError, Proxy, Response,
};

/// One pool "orders" over the fleet and one route "orders" with `[routes.idempotency]`.
fn config(fleet: &Fleet, idempotency: &str) -> String {
    format!(
        "[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"orders\"\npool = \"orders\"\n[routes.idempotency]\nscope = \"global\"\n{idempotency}\n",
        fleet.backends_toml(&[])
    )
}

fn order(addr: SocketAddr, key: Option<&str>, body: &str) -> Result<Response, HttpError> {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    request(addr, "POST", "/api/orders", &headers, body.as_bytes())
}

fn orders_created(fleet: &Fleet) -> u64 {
    fleet.stats()["orders_created"].as_u64().unwrap_or(0)
}

fn page(response: &Response) -> Option<&str> {
    response.header("x-ordergate-page")
}

#[test]
fn a_double_click_makes_one_order_and_every_click_gets_its_answer() {
    let fleet = Fleet::start_with(2, &["--ignore-idempotency", "--latency-ms", "300"]);
    let proxy = Proxy::start(&config(&fleet, ""));
    for clicks in [2, 20] {
        let key = format!("click-{clicks}");
        let before = orders_created(&fleet);
        let answers: Vec<Response> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..clicks)
                .map(|_| {
                    let key = key.clone();
                    scope.spawn(move || order(proxy.addr, Some(&key), r#"{"sku":"tea"}"#))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client").expect("an answer"))
                .collect()
        });
        assert_eq!(
            orders_created(&fleet) - before,
            1,
            "{clicks} clicks, one order"
        );
        let first = &answers[0];
        assert_eq!(first.status, 201);
        for answer in &answers {
            assert_eq!(answer.status, first.status);
            assert_eq!(answer.body, first.body, "every click sees the same order");
        }
        let replayed = answers
            .iter()
            .filter(|a| a.header("idempotency-replayed") == Some("true"))
            .count();
        assert_eq!(replayed, clicks - 1);
        let originals: HashSet<_> = answers
            .iter()
            .filter_map(|a| a.header("x-original-request-id"))
            .collect();
        assert_eq!(originals.len(), 1, "one original request id");
        let ids: HashSet<_> = answers
            .iter()
            .filter_map(|a| a.header("x-request-id"))
            .collect();
        assert_eq!(ids.len(), clicks, "each answer has its own request id");
    }
}

#[test]
fn a_repeat_after_a_lost_answer_is_told_to_check_its_orders() {
    let fleet = Fleet::start_with(1, &["--ignore-idempotency"]);
    fleet.set_mode(fleet.addrs[0], r#"{"fault": "reset_after_body"}"#);
    let proxy = Proxy::start(&config(&fleet, "orders_url = \"/account/orders\""));
    let first = order(proxy.addr, Some("lost-1"), r#"{"sku":"tea"}"#).expect("first");
    assert_eq!(page(&first), Some("upstream_reset"));
    assert_eq!(orders_created(&fleet), 1);
    fleet.set_mode(fleet.addrs[0], r#"{"fault": null}"#);
    for _ in 0..3 {
        let repeat = order(proxy.addr, Some("lost-1"), r#"{"sku":"tea"}"#).expect("repeat");
        assert_eq!(repeat.status, 409);
        assert_eq!(page(&repeat), Some("order_outcome_unknown"));
        assert_eq!(repeat.json()["orders_url"], "/account/orders");
    }
    assert_eq!(orders_created(&fleet), 1, "never a second order");
}

#[test]
fn with_deduping_backends_a_lost_answer_is_forwarded_again_with_the_key() {
    // The fleet dedupes keys; one backend commits then resets.
    let fleet = Fleet::start(2);
    fleet.set_mode(fleet.addrs[0], r#"{"fault": "reset_after_body"}"#);
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"orders\"\nbackends = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"orders\"\npool = \"orders\"\n[routes.idempotency]\nscope = \"global\"\nbackend_dedupes = true\n",
        fleet.addrs[0]
    ));
    let first = order(proxy.addr, Some("dd-1"), r#"{"sku":"tea"}"#).expect("first");
    assert_eq!(page(&first), Some("upstream_reset"), "{first:?}");
    fleet.set_mode(fleet.addrs[0], r#"{"fault": null}"#);
    let repeat = order(proxy.addr, Some("dd-1"), r#"{"sku":"tea"}"#).expect("repeat");
    assert!(repeat.status < 300, "the single order's answer: {repeat:?}");
    assert!(repeat.json()["order_id"].is_string());
    let again = order(proxy.addr, Some("dd-1"), r#"{"sku":"tea"}"#).expect("again");
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.body, repeat.body);
    assert_eq!(orders_created(&fleet), 1);
}

#[test]
fn reused_missing_and_invalid_keys_are_refused_and_never_forwarded() {
    let fleet = Fleet::start_with(1, &["--ignore-idempotency"]);
    let proxy = Proxy::start(&config(&fleet, "required = true"));
    let first = order(proxy.addr, Some("k-1"), r#"{"sku":"tea"}"#).expect("first");
    assert_eq!(first.status, 201);
    let reused = order(proxy.addr, Some("k-1"), r#"{"sku":"coffee"}"#).expect("reused");
    assert_eq!(reused.status, 422);
    assert_eq!(page(&reused), Some("idempotency_key_reused"));
    let missing = order(proxy.addr, None, r#"{"sku":"tea"}"#).expect("missing");
    assert_eq!(missing.status, 400);
    assert_eq!(page(&missing), Some("idempotency_key_missing"));
    let long = "k".repeat(256);
    for key in [long.as_str(), "ключ"] {
        let invalid = order(proxy.addr, Some(key), r#"{"sku":"tea"}"#).expect("invalid");
        assert_eq!(invalid.status, 400, "{key:?}");
        assert_eq!(page(&invalid), Some("idempotency_key_invalid"));
    }
    assert_eq!(orders_created(&fleet), 1, "only the first was forwarded");
    // Reads are not keyed.
    let read = crate::support::get(proxy.addr, "/api/products/1").expect("read");
    assert_eq!(read.status, 200);
}

#[test]
fn a_5xx_answer_releases_the_key() {
    let fleet = Fleet::start_with(1, &["--ignore-idempotency"]);
    fleet.set_mode(fleet.addrs[0], r#"{"status": 500}"#);
    let proxy = Proxy::start(&config(&fleet, ""));
    let failed = order(proxy.addr, Some("r-1"), r#"{"sku":"tea"}"#).expect("first");
    assert_eq!(failed.status, 500);
    fleet.set_mode(fleet.addrs[0], r#"{"status": null}"#);
    let repeat = order(proxy.addr, Some("r-1"), r#"{"sku":"tea"}"#).expect("repeat");
    assert_eq!(repeat.status, 201, "forwarded again: {repeat:?}");
    assert_eq!(orders_created(&fleet), 1);
}

#[test]
fn records_expire_and_the_memory_budget_evicts() {
    let fleet = Fleet::start_with(1, &["--ignore-idempotency"]);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&format!(
        "{}{}",
        admin_section(admin_port),
        config(
            &fleet,
            "ttl = \"1s\"\nmax_bytes = \"64KiB\"\nmax_response_bytes = \"4KiB\""
        )
    ));
    assert_eq!(
        order(proxy.addr, Some("t-1"), r#"{"sku":"tea"}"#)
            .expect("first")
            .status,
        201
    );
    let replay = order(proxy.addr, Some("t-1"), r#"{"sku":"tea"}"#).expect("replay");
    assert_eq!(replay.header("idempotency-replayed"), Some("true"));
    // After the TTL the key behaves as new.
    let started = Instant::now();
    let expired = wait_until(Duration::from_secs(5), || {
        order(proxy.addr, Some("t-1"), r#"{"sku":"tea"}"#)
            .is_ok_and(|r| r.status == 201 && r.header("idempotency-replayed").is_none())
    });
    assert!(expired, "expired after the TTL");
    assert!(started.elapsed() >= Duration::from_millis(500));
    // 64 KiB holds a few hundred records: more keys evict the oldest.
    for i in 0..600 {
        let response =
            order(proxy.addr, Some(&format!("e-{i}")), r#"{"sku":"tea"}"#).expect("order");
        assert_eq!(response.status, 201);
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let metrics = crate::support::get(admin, "/metrics")
        .expect("metrics")
        .text();
    let evictions = metrics
        .lines()
        .find(|l| l.starts_with("ordergate_idempotency_evictions{route=\"orders\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(evictions > 0.0, "evictions counted:\n{metrics}");
    let bytes = metrics
        .lines()
        .find(|l| l.starts_with("ordergate_idempotency_store_bytes{route=\"orders\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::MAX);
    assert!(bytes <= 64.0 * 1024.0, "within the budget: {bytes}");
    assert!(metrics.contains("ordergate_idempotency_total{result=\"first\",route=\"orders\"}"));
}

#[test]
fn records_survive_a_reload_under_load() {
    let fleet = Fleet::start_with(2, &["--ignore-idempotency"]);
    let admin_port = crate::support::free_port();
    let body = format!("{}{}", admin_section(admin_port), config(&fleet, ""));
    let proxy = Proxy::start(&body);
    for i in 0..50 {
        assert_eq!(
            order(proxy.addr, Some(&format!("s-{i}")), "{}")
                .expect("order")
                .status,
            201
        );
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let addr = proxy.addr;
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = crate::support::get(addr, &format!("/api/products/{n}"));
                n += 1;
            }
        })
    };
    for weight in [2, 3, 1] {
        proxy.rewrite_config(&format!(
            "{}{}",
            admin_section(admin_port),
            config(&fleet, "").replace("weight = 1", &format!("weight = {weight}"))
        ));
        let reloaded =
            request(admin, "POST", "/reload", admin_headers("POST"), b"").expect("reload");
        assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.join();
    for i in 0..50 {
        let again = order(proxy.addr, Some(&format!("s-{i}")), "{}").expect("repeat");
        assert_eq!(again.header("idempotency-replayed"), Some("true"), "s-{i}");
    }
    assert_eq!(orders_created(&fleet), 50);
}

/// Per key index: each answer's status and order id.
type Seen = HashMap<usize, Vec<(u16, Option<String>)>>;

/// 5 000 keyed orders at about 500/s, 20% of keys sent twice and 5% sent
/// concurrently, one backend committing then resetting: never more orders than
/// distinct keys that got an order, and no raw failure.
#[test]
fn under_load_with_a_failing_backend_no_key_makes_two_orders() {
    let fleet = Fleet::start_with(3, &["--ignore-idempotency"]);
    fleet.set_mode(fleet.addrs[0], r#"{"fault": "reset_after_body"}"#);
    let proxy = Proxy::start(&config(&fleet, ""));
    const ORDERS: usize = 5_000;
    const CLIENTS: usize = 20;
    // key index -> answers seen
    let answers: Arc<Mutex<Seen>> = Arc::default();
    let raw_failures = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for client in 0..CLIENTS {
            let answers = Arc::clone(&answers);
            let raw_failures = Arc::clone(&raw_failures);
            let addr = proxy.addr;
            scope.spawn(move || {
                for i in (client..ORDERS).step_by(CLIENTS) {
                    // Pace to about 500 orders/s overall.
                    let due = started + Duration::from_micros((i as u64) * 2_000);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let key = format!("load-{i}");
                    let sends = if i % 5 == 0 { 2 } else { 1 };
                    let concurrent = i % 20 == 0;
                    let mut results = Vec::new();
                    if concurrent {
                        std::thread::scope(|inner| {
                            let handles: Vec<_> = (0..sends)
                                .map(|_| inner.spawn(|| order(addr, Some(&key), "{}")))
                                .collect();
                            for h in handles {
                                results.push(h.join().expect("client"));
                            }
                        });
                    } else {
                        for _ in 0..sends {
                            results.push(order(addr, Some(&key), "{}"));
                        }
                    }
                    for result in results {
                        match result {
                            Ok(r) => {
                                let order_id = r.json()["order_id"].as_str().map(str::to_owned);
                                answers
                                    .lock()
                                    .expect("answers")
                                    .entry(i)
                                    .or_default()
                                    .push((r.status, order_id));
                            }
                            Err(e) => raw_failures
                                .lock()
                                .expect("failures")
                                .push(format!("{key}: {e:?}")),
                        }
                    }
                }
            });
        }
    });
    let raw = raw_failures.lock().expect("failures");
    assert!(
        raw.is_empty(),
        "raw failures: {:?}",
        &raw[..raw.len().min(5)]
    );
    let answers = answers.lock().expect("answers");
    // A key "got an order" when some answer carried one, or an answer said
    // its outcome is unknown (the backend committed, then reset).
    let mut with_order = 0;
    for (key, seen) in answers.iter() {
        let ids: HashSet<_> = seen.iter().filter_map(|(_, id)| id.clone()).collect();
        assert!(ids.len() <= 1, "key {key}: two different orders {ids:?}");
        let unknown = seen
            .iter()
            .any(|(status, _)| *status == 409 || *status == 502);
        if !ids.is_empty() || unknown {
            with_order += 1;
        }
    }
    let created = orders_created(&fleet);
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for (status, _) in answers.values().flatten() {
        *by_status.entry(*status).or_default() += 1;
    }
    eprintln!(
        "load: {} keys, {created} orders created, {with_order} keys with an order or an unknown outcome, answers by status {by_status:?}, {:?}",
        answers.len(),
        started.elapsed()
    );
    assert!(
        created <= with_order,
        "{created} orders for {with_order} keys that got an order or an unknown outcome"
    );
    assert!(
        created > (ORDERS as u64) / 2,
        "most orders went through: {created}"
    );
}
