//! Backup pools against the real binary: every primary backend killed under a
//! stream of GETs and keyed POSTs, the backup takes over within the failing
//! requests themselves (no page, no duplicated order), and traffic returns to
//! the primary only after `failback_after`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{admin, admin_section, request, wait_until, Fleet, Proxy};

/// When a shopper got an answer, whether the backup pool gave it, and whether
/// it was a new order (201).
type Served = (Instant, bool, bool);

fn orders(fleet: &Fleet) -> u64 {
    fleet.stats()["orders_created"].as_u64().unwrap_or(0)
}

#[test]
fn the_backup_pool_takes_over_when_the_primary_dies_and_gives_back_after_failback() {
    // Neither fleet dedupes keys: a request sent to both would make two orders.
    let mut primary = Fleet::start_with(2, &["--ignore-idempotency"]);
    let backup = Fleet::start_with(1, &["--ignore-idempotency"]);
    let admin_port = crate::support::free_port();
    let proxy = Proxy::start(&format!(
        r#"{admin}
[[pools]]
name = "primary"
backup = "dr"
failback_after = "2s"
backends = {primary}
[pools.health]
kind = "tcp"
interval = "100ms"
timeout = "100ms"
healthy_threshold = 1
unhealthy_threshold = 1
start_healthy = true
[pools.outlier]
base_ejection = "500ms"

[[pools]]
name = "dr"
backends = {dr}

[[routes]]
name = "shop"
pool = "primary"
"#,
        admin = admin_section(admin_port),
        primary = primary.backends_toml(&[]),
        dr = backup.backends_toml(&[]),
    ));
    let backup_addrs: HashSet<SocketAddr> = backup.addrs.iter().copied().collect();

    // Shoppers: GETs and keyed POSTs back to back, recording who answered when.
    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<Mutex<Vec<Served>>> = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (stop, served, failures) = (
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&failures),
            );
            let backup_addrs = backup_addrs.clone();
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("c{client}-{n}");
                    let response = if n % 2 == 0 {
                        request(addr, "GET", &format!("/api/products/{n}"), &[], b"")
                    } else {
                        request(
                            addr,
                            "POST",
                            "/api/orders",
                            &[
                                ("content-type", "application/json"),
                                ("idempotency-key", &key),
                            ],
                            b"{\"sku\":\"tea\"}",
                        )
                    };
                    match response {
                        Ok(r) if r.status < 300 => {
                            let from_backup = r
                                .header("x-sim-backend")
                                .and_then(|b| b.parse().ok())
                                .is_some_and(|b: SocketAddr| backup_addrs.contains(&b));
                            served.lock().expect("served").push((
                                Instant::now(),
                                from_backup,
                                r.status == 201,
                            ));
                        }
                        Ok(r) => failures.lock().expect("failures").push(format!(
                            "{} {:?}",
                            r.status,
                            r.header("x-ordergate-page")
                        )),
                        Err(e) => failures.lock().expect("failures").push(format!("{e:?}")),
                    }
                }
            })
        })
        .collect();
    let from_backup = |since: Instant| {
        served
            .lock()
            .expect("served")
            .iter()
            .filter(|(at, backup, _)| *at >= since && *backup)
            .count()
    };
    assert!(wait_until(Duration::from_secs(5), || served
        .lock()
        .expect("served")
        .len()
        > 50));
    assert_eq!(
        from_backup(Instant::now() - Duration::from_secs(60)),
        0,
        "primary serves first"
    );

    let killed = Instant::now();
    primary.kill();
    assert!(
        wait_until(Duration::from_secs(5), || from_backup(killed) > 20),
        "the backup takes over"
    );
    // A long outage: traffic stays on the backup, never bouncing back to the
    // dead primary (panic mode does not count as able to serve).
    assert!(wait_until(Duration::from_secs(10), || {
        from_backup(killed + Duration::from_secs(3)) > 10
    }));
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|(_, line)| line.contains("traffic is back")),
        "no failback while the primary is dead"
    );
    let first_backup = served
        .lock()
        .expect("served")
        .iter()
        .find(|(at, backup, _)| *at >= killed && *backup)
        .map(|(at, _, _)| at.duration_since(killed));
    let status = admin(admin_port, "GET", "/metrics").text();
    assert!(
        status.contains("ordergate_pool_active{pool=\"primary\",serving=\"dr\"} 1"),
        "{status}"
    );

    // The primary comes back where it was: traffic returns after failback_after.
    let back = Instant::now();
    let restarted = Fleet::start_on(&primary.addrs, &["--ignore-idempotency"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let served = served.lock().expect("served");
            served
                .iter()
                .rev()
                .take(20)
                .all(|(at, backup, _)| *at > back && !*backup)
        }),
        "traffic returns to the primary"
    );
    let last_backup = served
        .lock()
        .expect("served")
        .iter()
        .filter(|(_, backup, _)| *backup)
        .map(|(at, _, _)| *at)
        .max()
        .expect("the backup served");
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    let failures = failures.lock().expect("failures");
    eprintln!(
        "failover: first answer from the backup {first_backup:?} after the kill; backup served until {:?} after the primary came back; {} failures",
        last_backup.saturating_duration_since(back),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "no shopper saw a failure: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(
        last_backup.duration_since(back) >= Duration::from_secs(2),
        "not back before failback_after: {:?}",
        last_backup.duration_since(back)
    );
    // Every order on the backup and on the restarted primary is one 201 a
    // shopper saw from it: nothing was sent to both pools.
    let served = served.lock().expect("served");
    let created_by = |backup: bool| {
        served
            .iter()
            .filter(|(at, from_backup, created)| {
                *created && *from_backup == backup && (backup || *at > back)
            })
            .count() as u64
    };
    assert_eq!(orders(&backup), created_by(true), "orders on the backup");
    assert_eq!(
        orders(&restarted),
        created_by(false),
        "orders on the restarted primary"
    );
}
