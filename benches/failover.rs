//! How fast does ordergate stop routing to a backend that crashed, and do shoppers
//! notice? Three simulated backends (one process each) behind ordergate with
//! probes every 500 ms; client threads send a steady stream of requests; one
//! backend is killed with SIGKILL mid-run. Prints, for GETs and for keyed POSTs:
//! the time from the kill to the last request routed to the dead backend, and the
//! client-visible failures.
//!
//! Run with `cargo bench --bench failover` (add `-- --quick` for a short smoke run).

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Fleet, Proxy};

const CLIENTS: usize = 4;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let run_for = if quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(6)
    };
    for kind in ["GET", "POST with Idempotency-Key"] {
        scenario(kind, run_for);
    }
}

fn scenario(kind: &'static str, run_for: Duration) {
    let mut fleets: Vec<Fleet> = (0..3).map(|_| Fleet::start(1)).collect();
    let list: Vec<String> = fleets
        .iter()
        .map(|f| format!("{{ addr = \"{}\" }}", f.addrs[0]))
        .collect();
    let proxy = Proxy::start(&format!(
        "[[pools]]\nname = \"orders\"\nbackends = [ {} ]\n[pools.health]\ninterval = \"500ms\"\ntimeout = \"250ms\"\nstart_healthy = true\n\n[[routes]]\nname = \"all\"\npool = \"orders\"\n",
        list.join(", ")
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (stop, sent, addr) = (Arc::clone(&stop), Arc::clone(&sent), proxy.addr);
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let answer = if kind == "GET" {
                        support::get(addr, "/api/products/1")
                    } else {
                        let key = format!("bench-{client}-{n}");
                        support::request(
                            addr,
                            "POST",
                            "/api/orders",
                            &[("idempotency-key", &key)],
                            b"{}",
                        )
                    };
                    sent.fetch_add(1, Ordering::Relaxed);
                    match answer {
                        Ok(r) if r.status < 300 => {}
                        Ok(r) => failures.push(format!("status {}", r.status)),
                        Err(e) => failures.push(format!("{e:?}")),
                    }
                }
                failures
            })
        })
        .collect();

    std::thread::sleep(run_for / 3);
    let dead = fleets[0].addrs[0].to_string();
    fleets[0].kill();
    let killed_at = Instant::now();
    std::thread::sleep(run_for * 2 / 3);
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap_or_default())
        .collect();

    let log = proxy.access_log();
    let last_routed = log
        .iter()
        .filter(|(at, line)| *at >= killed_at && line.contains(&dead))
        .map(|(at, _)| at.duration_since(killed_at))
        .max();
    let retried = log
        .iter()
        .filter(|(at, line)| *at >= killed_at && line.contains(&dead) && line.contains(" status=2"))
        .count();
    println!(
        "{kind}: {} requests, {CLIENTS} clients",
        sent.load(Ordering::Relaxed)
    );
    match last_routed {
        Some(t) => println!(
            "  last request routed to the killed backend: {} ms after SIGKILL",
            t.as_millis()
        ),
        None => println!("  no request was routed to the killed backend after SIGKILL"),
    }
    println!("  requests that tried it and were retried elsewhere: {retried}");
    println!(
        "  client-visible failures: {} {:?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
}
