//! Several ordergate instances sharing one real Redis (`[store] kind =
//! "redis"`): keyed orders sent to different instances make one order per
//! key, a rate limit holds across instances, and Redis killed, restarted or
//! frozen never fails an order. Each test starts its own `redis-server` (from
//! Debian's package; `./dev.sh test` installs it) on a free loopback port with
//! a temporary directory, and stops it. No mock Redis.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::{
    admin_section, free_port, get, request, wait_until, Fleet, HttpError, Proxy, Response, TempFile,
};
use ordergate::live::LiveState;
use ordergate::ratelimit::MemoryRateLimiter;
use ordergate::store::redis::RedisRateLimiter;
use ordergate::store::room::{Arrival, CheckIn, Control, Limits, MemoryLine, RoomLine};
use ordergate::store::{RedisConfig, StoreConfig};
use ordergate::telemetry::Metrics;

/// A `redis-server` of this test: no persistence, so a restart starts empty
/// (the worst case for ordergate).
pub(crate) struct RedisServer {
    port: u16,
    dir: TempFile,
    child: Option<Child>,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let dir = TempFile::new("redis.conf", "");
        let mut redis = RedisServer {
            port: free_port(),
            dir,
            child: None,
        };
        redis.restart();
        redis
    }

    /// Starts (again) on the same port and directory; waits until it answers.
    fn restart(&mut self) {
        let dir = self.dir.path.parent().expect("temp dir").to_path_buf();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it: apt-get install redis-server (./dev.sh test does)")
            });
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(10), || self.ping()),
            "redis-server did not answer on port {} within 10s",
            self.port
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} redis-server");
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A frozen server still dies of SIGKILL.
            self.kill();
        }
    }
}

/// Pools and routes of one instance: route "orders" keyed, route "limited"
/// with a rate limit of `rate` per second per `x-user`.
fn config(fleet: &Fleet, redis: &RedisServer, admin_port: u16, rate: u32, timeout: &str) -> String {
    format!(
        "{admin}[store]\nkind = \"redis\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\n\n\n[[pools]]\nname = \"orders\"\nbackends = {backends}\n\n[[routes]]\nname = \"orders\"\npool = \"orders\"\npath_prefix = \"/api/orders\"\n[routes.idempotency]\nscope = \"global\"\n\n[[routes]]\nname = \"limited\"\npool = \"orders\"\npath_prefix = \"/api/limited\"\n[routes.rate_limit]\nrequests_per_second = {rate}\nkey = \"header:x-user\"\n",
        admin = admin_section(admin_port),
        url = redis.url(),
        backends = fleet.backends_toml(&[]),
    )
}

/// An instance and its admin port.
struct Instance {
    proxy: Proxy,
    admin: SocketAddr,
}

impl Instance {
    /// `timeout`: the store's; the tests of correctness give a loaded CI
    /// machine room (a timeout is a fallback, and a fallback may split a key).
    fn start(fleet: &Fleet, redis: &RedisServer, rate: u32, timeout: &str) -> Instance {
        let port = free_port();
        let proxy = Proxy::start(&config(fleet, redis, port, rate, timeout));
        Instance {
            proxy,
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let text = get(self.admin, "/metrics").expect("GET /metrics").text();
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn log_count(&self, needle: &str) -> usize {
        self.proxy
            .logs()
            .iter()
            .filter(|(_, line)| line.contains(needle))
            .count()
    }
}

fn three_instances(fleet: &Fleet, redis: &RedisServer, rate: u32) -> Vec<Instance> {
    (0..3)
        .map(|_| Instance::start(fleet, redis, rate, "1s"))
        .collect()
}

/// One test at a time: each runs three instances, a fleet and a Redis, and
/// measures time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`serial`], a fresh redis-server and `n` order backends that create an
/// order for every request, keyed or not (`--ignore-idempotency`), run with
/// `flags` besides.
fn redis_and_orders(
    n: usize,
    flags: &[&str],
) -> (std::sync::MutexGuard<'static, ()>, RedisServer, Fleet) {
    let serial = serial();
    let redis = RedisServer::start();
    let fleet = Fleet::start_with(n, &[&["--ignore-idempotency"], flags].concat());
    (serial, redis, fleet)
}

fn order(addr: SocketAddr, key: &str) -> Result<Response, HttpError> {
    request(
        addr,
        "POST",
        "/api/orders",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("idempotency-key", key),
        ],
        br#"{"sku":"tea"}"#,
    )
}

fn orders_created(fleet: &Fleet) -> u64 {
    fleet.stats()["orders_created"].as_u64().unwrap_or(0)
}

/// What a client got: status and body.
type Answer = (u16, Vec<u8>);

const FALLBACK_LOG: &str = "fall back to this instance's memory";
const RECOVERY_LOG: &str = "answers again; new";

#[test]
fn keyed_orders_sent_to_several_instances_make_one_order_per_key() {
    let (_serial, redis, fleet) = redis_and_orders(4, &["--latency-ms", "30"]);
    let instances = three_instances(&fleet, &redis, 1000);
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.proxy.addr).collect();
    const KEYS: usize = 2000;
    let next = AtomicU64::new(0);
    let answers: Mutex<HashMap<usize, Vec<Answer>>> = Mutex::new(HashMap::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= KEYS {
                    return;
                }
                let key = format!("multi-{i}");
                // Two or three instances, at once or one after the other.
                let targets: Vec<SocketAddr> = match i % 4 {
                    0 => addrs.clone(),
                    1 => vec![addrs[i % 3], addrs[(i + 1) % 3]],
                    2 => vec![addrs[i % 3], addrs[(i + 2) % 3], addrs[(i + 1) % 3]],
                    _ => vec![addrs[(i + 1) % 3], addrs[i % 3]],
                };
                let concurrent = i % 4 < 2;
                let results: Vec<Result<Response, HttpError>> = if concurrent {
                    std::thread::scope(|inner| {
                        let handles: Vec<_> = targets
                            .iter()
                            .map(|addr| {
                                let key = key.clone();
                                inner.spawn(move || order(*addr, &key))
                            })
                            .collect();
                        handles
                            .into_iter()
                            .map(|h| h.join().expect("client"))
                            .collect()
                    })
                } else {
                    targets.iter().map(|addr| order(*addr, &key)).collect()
                };
                let mut got = Vec::new();
                for result in results {
                    match result {
                        Ok(response) => got.push((response.status, response.body.to_vec())),
                        Err(e) => failures
                            .lock()
                            .expect("failures")
                            .push(format!("{key}: {e:?}")),
                    }
                }
                answers.lock().expect("answers").insert(i, got);
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    assert!(failures.is_empty(), "raw errors: {failures:?}");
    let answers = answers.into_inner().expect("answers");
    for instance in &instances {
        for (_, line) in instance.proxy.logs() {
            if line.contains("store:") {
                println!("{line}");
            }
        }
    }
    for instance in &instances {
        assert_eq!(
            instance.log_count(FALLBACK_LOG),
            0,
            "Redis did not answer within the timeout on a loaded machine: a fallback may split a key"
        );
    }
    let mut sent = 0;
    for (i, got) in &answers {
        sent += got.len();
        let (status, body) = &got[0];
        assert_eq!(*status, 201, "key {i}: {}", String::from_utf8_lossy(body));
        for (other_status, other_body) in got {
            assert_eq!(
                (other_status, other_body),
                (status, body),
                "key {i}: every client gets the first answer"
            );
        }
    }
    assert_eq!(answers.len(), KEYS);
    assert_eq!(
        orders_created(&fleet),
        KEYS as u64,
        "exactly one order per key"
    );
    println!(
        "{KEYS} keys, {sent} keyed requests over 3 instances in {:?}: {} orders",
        started.elapsed(),
        orders_created(&fleet)
    );
    for instance in &instances {
        assert_eq!(instance.metric("ordergate_store_up"), 1.0);
        assert_eq!(instance.log_count(FALLBACK_LOG), 0);
    }
    let status = get(instances[0].admin, "/status").expect("status").json();
    assert_eq!(status["store"]["kind"], "redis");
    assert_eq!(status["store"]["up"], true);
}

#[test]
fn a_rate_limit_holds_across_three_instances() {
    let _serial = serial();
    let redis = RedisServer::start();
    let fleet = Fleet::start(2);
    let instances = three_instances(&fleet, &redis, 50);
    let stop = AtomicBool::new(false);
    let admitted: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    let limited = AtomicU64::new(0);
    let other = AtomicU64::new(0);
    // The first (partial) second may admit a whole second's worth at once:
    // the rate is measured over the ten seconds after it.
    const WARM: Duration = Duration::from_secs(2);
    const RUN: Duration = Duration::from_secs(10);
    let started = Instant::now();
    std::thread::scope(|scope| {
        // Four clients per instance, all as one user: about 3 x 4 x 40/s
        // offered, ten times the limit.
        for instance in &instances {
            for _ in 0..4 {
                let addr = instance.proxy.addr;
                let (stop, admitted, limited, other) = (&stop, &admitted, &limited, &other);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match request(addr, "GET", "/api/limited", &[("x-user", "alice")], b"") {
                            Ok(r) if r.status == 429 => {
                                limited.fetch_add(1, Ordering::Relaxed);
                            }
                            // The fleet's own answer (a 404 for this path).
                            Ok(r) if r.header("x-ordergate-page").is_none() => {
                                admitted.lock().expect("admitted").push(Instant::now());
                            }
                            _ => {
                                other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(25));
                    }
                });
            }
        }
        std::thread::sleep(WARM + RUN);
        stop.store(true, Ordering::Relaxed);
    });
    let admitted = admitted.into_inner().expect("admitted");
    let total = admitted.len();
    let ok = admitted
        .iter()
        .filter(|at| (WARM..WARM + RUN).contains(&at.duration_since(started)))
        .count();
    let per_second = ok as f64 / RUN.as_secs_f64();
    println!(
        "rate limit 50/s over 3 instances: {ok} admitted in {RUN:?} after {WARM:?} ({per_second:.1}/s; {total} in all), {} limited, {} other",
        limited.into_inner(),
        other.load(Ordering::Relaxed)
    );
    assert_eq!(other.into_inner(), 0);
    assert!(
        (45.0..=55.0).contains(&per_second),
        "50/s ±10% across instances, got {per_second:.1}/s"
    );
    // Another user has a count of its own.
    let bob = request(
        instances[0].proxy.addr,
        "GET",
        "/api/limited",
        &[("x-user", "bob")],
        b"",
    )
    .expect("bob");
    assert_ne!(bob.status, 429);
}

#[test]
fn redis_killed_and_restarted_mid_load_fails_no_order() {
    let (_serial, mut redis, fleet) = redis_and_orders(4, &["--latency-ms", "10"]);
    let instances = three_instances(&fleet, &redis, 1000);
    let stop = AtomicBool::new(false);
    let keys = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut down_seen = [false; 3];
    std::thread::scope(|scope| {
        for t in 0..12 {
            let addr = instances[t % 3].proxy.addr;
            let (stop, keys, sent, failures) = (&stop, &keys, &sent, &failures);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("outage-{}", keys.fetch_add(1, Ordering::Relaxed));
                    // A double click on one instance: deduplicated even while
                    // Redis is down.
                    let mut first_body = None;
                    for _ in 0..2 {
                        sent.fetch_add(1, Ordering::Relaxed);
                        match order(addr, &key) {
                            Ok(r) if r.status == 201 => {
                                if let Some(body) = &first_body {
                                    if *body != r.body {
                                        failures
                                            .lock()
                                            .expect("f")
                                            .push(format!("{key}: two answers"));
                                    }
                                }
                                first_body = Some(r.body);
                            }
                            Ok(r) => failures.lock().expect("f").push(format!(
                                "{key}: {} {}",
                                r.status,
                                r.text()
                            )),
                            Err(e) => failures.lock().expect("f").push(format!("{key}: {e:?}")),
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        redis.kill();
        let killed = Instant::now();
        // Every instance notices, logs it once and says so in its metrics.
        assert!(
            wait_until(Duration::from_secs(4), || {
                for (i, instance) in instances.iter().enumerate() {
                    down_seen[i] |= instance.metric("ordergate_store_up") == 0.0;
                }
                down_seen.iter().all(|d| *d)
            }),
            "store_up 0 on every instance during the outage: {down_seen:?}"
        );
        let ready = get(instances[0].admin, "/readyz").expect("readyz");
        assert_eq!(ready.status, 200, "still ready without Redis");
        std::thread::sleep(Duration::from_secs(5).saturating_sub(killed.elapsed()));
        redis.restart();
        assert!(
            wait_until(Duration::from_secs(10), || instances
                .iter()
                .all(|i| i.log_count(RECOVERY_LOG) == 1)),
            "recovery logged on every instance"
        );
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().expect("failures");
    let keys = keys.into_inner();
    println!(
        "outage: {} keyed requests, {keys} keys, {} orders, {} failed; fallbacks {:?}",
        sent.into_inner(),
        orders_created(&fleet),
        failures.len(),
        instances
            .iter()
            .map(|i| i.metric("ordergate_store_fallbacks_total"))
            .collect::<Vec<_>>()
    );
    assert!(failures.is_empty(), "failed orders: {failures:?}");
    assert_eq!(orders_created(&fleet), keys, "one order per key");
    for instance in &instances {
        assert_eq!(instance.log_count(FALLBACK_LOG), 1, "fallback logged once");
        assert_eq!(instance.log_count(RECOVERY_LOG), 1, "recovery logged once");
        assert!(instance.metric("ordergate_store_fallbacks_total") > 0.0);
        assert_eq!(instance.metric("ordergate_store_up"), 1.0);
    }
    // New records go to Redis again: a key sent to two instances is one order.
    let before = orders_created(&fleet);
    let a = order(instances[0].proxy.addr, "after-recovery").expect("a");
    let b = order(instances[1].proxy.addr, "after-recovery").expect("b");
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(a.body, b.body);
    assert_eq!(b.header("idempotency-replayed"), Some("true"));
    assert_eq!(orders_created(&fleet), before + 1);
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort_unstable();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

fn timed_orders(instance: &Instance, prefix: &str, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let started = Instant::now();
            let response = order(instance.proxy.addr, &format!("{prefix}-{i}")).expect("an answer");
            assert_eq!(response.status, 201, "{}", response.text());
            started.elapsed()
        })
        .collect()
}

#[test]
fn a_frozen_redis_costs_a_request_at_most_the_timeout() {
    let (_serial, redis, fleet) = redis_and_orders(2, &["--latency-ms", "5"]);
    let instance = Instance::start(&fleet, &redis, 1000, "20ms");
    let before = p99(timed_orders(&instance, "warm", 200));
    redis.signal("STOP");
    let frozen = Instant::now();
    let during = timed_orders(&instance, "frozen", 200);
    let first = during[0];
    let during = p99(during);
    redis.signal("CONT");
    println!(
        "SIGSTOP: first request {first:?}, p99 {before:?} before, {during:?} while frozen ({:?})",
        frozen.elapsed()
    );
    assert!(
        instance
            .proxy
            .logs()
            .iter()
            .any(|(_, line)| line.contains("no answer within 20ms")),
        "the operation timed out at the store's timeout"
    );
    assert!(
        first < Duration::from_millis(20) + before + Duration::from_millis(50),
        "the first request waits the timeout, then falls back: {first:?}"
    );
    assert!(
        during <= before + Duration::from_millis(25),
        "p99 rises by no more than the timeout plus 5 ms: {before:?} -> {during:?}"
    );
    assert_eq!(instance.log_count(FALLBACK_LOG), 1);
    assert!(wait_until(Duration::from_secs(5), || instance
        .log_count(RECOVERY_LOG)
        == 1));
    assert_eq!(orders_created(&fleet), 400);
}

#[test]
fn an_instance_that_dies_mid_order_leaves_outcome_unknown_after_its_lease() {
    let (_serial, redis, fleet) = redis_and_orders(1, &["--latency-ms", "1500"]);
    // Lease: the route's timeout (2 s) plus 10 s.
    let body = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"250ms\"\n\n[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"orders\"\npool = \"orders\"\ntimeout = \"2s\"\n[routes.idempotency]\nscope = \"global\"\nwait_for_first = \"1s\"\n",
        redis.url(),
        fleet.backends_toml(&[])
    );
    let mut dying = Proxy::start(&body);
    let survivor = Proxy::start(&body);
    let began = Instant::now();
    let addr = dying.addr;
    let in_flight = std::thread::spawn(move || order(addr, "dies-1"));
    assert!(wait_until(Duration::from_secs(5), || fleet.in_flight() == 1));
    dying.signal("KILL");
    let _ = dying.wait_exit(Duration::from_secs(5));
    assert!(
        in_flight.join().expect("client").is_err(),
        "its shopper lost the answer"
    );
    // Within the lease: the first may still be running somewhere.
    let waiting = order(survivor.addr, "dies-1").expect("an answer");
    assert_eq!(waiting.status, 409);
    assert_eq!(
        waiting.header("x-ordergate-page"),
        Some("idempotency_in_progress")
    );
    // After it: never "new", but "check your orders".
    std::thread::sleep(Duration::from_secs(12).saturating_sub(began.elapsed()));
    assert!(
        wait_until(Duration::from_secs(5), || {
            let answer = order(survivor.addr, "dies-1").expect("an answer");
            answer.header("x-ordergate-page") == Some("order_outcome_unknown")
        }),
        "the lease ran out into outcome unknown"
    );
    assert!(orders_created(&fleet) <= 1, "never forwarded again");
}

#[test]
fn a_reload_switches_stores_for_new_records() {
    let (_serial, redis, fleet) = redis_and_orders(1, &[]);
    let port = free_port();
    let admin = SocketAddr::from(([127, 0, 0, 1], port));
    let routes = format!(
        "[[pools]]\nname = \"orders\"\nbackends = {}\n\n[[routes]]\nname = \"orders\"\npool = \"orders\"\n[routes.idempotency]\nscope = \"global\"\n",
        fleet.backends_toml(&[])
    );
    let memory = format!("{}{routes}", admin_section(port));
    let shared = |port: u16| {
        format!(
            "{}[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"250ms\"\n\n{routes}",
            admin_section(port),
            redis.url()
        )
    };
    let a = Proxy::start(&memory);
    let b = Proxy::start(&shared(free_port()));
    let store = || get(admin, "/status").expect("status").json()["store"].clone();
    assert_eq!(store()["kind"], "memory");
    // In memory: each instance has its own record.
    assert_eq!(order(a.addr, "before").expect("a").status, 201);
    assert_eq!(order(b.addr, "before").expect("b").status, 201);
    assert_eq!(orders_created(&fleet), 2);
    a.rewrite_config(&shared(port));
    a.signal("HUP");
    assert!(wait_until(Duration::from_secs(5), || store()["kind"] == "redis"));
    assert_eq!(store()["up"], true);
    // New records are shared.
    let first = order(a.addr, "after").expect("a");
    let repeat = order(b.addr, "after").expect("b");
    assert_eq!((first.status, repeat.status), (201, 201));
    assert_eq!(repeat.header("idempotency-replayed"), Some("true"));
    assert_eq!(orders_created(&fleet), 3);
    // The record made in memory before the reload is still known to its instance.
    let old = order(a.addr, "before").expect("a");
    assert_eq!(old.header("idempotency-replayed"), Some("true"));
    assert_eq!(orders_created(&fleet), 3);
}

#[test]
fn an_answer_settled_while_redis_was_frozen_reaches_it_afterwards() {
    let (_serial, redis, fleet) = redis_and_orders(1, &["--latency-ms", "1000"]);
    let a = Instance::start(&fleet, &redis, 1000, "100ms");
    let b = Instance::start(&fleet, &redis, 1000, "100ms");
    let addr = a.proxy.addr;
    let first = std::thread::spawn(move || order(addr, "frozen-settle"));
    assert!(wait_until(Duration::from_secs(5), || fleet.in_flight() == 1));
    // Frozen while the order is at the backend: A settles into its memory.
    redis.signal("STOP");
    let first = first.join().expect("client").expect("an answer");
    assert_eq!(first.status, 201);
    redis.signal("CONT");
    assert!(wait_until(Duration::from_secs(5), || a
        .log_count(RECOVERY_LOG)
        == 1));
    // A's next keyed request sends what Redis missed.
    assert_eq!(
        order(a.proxy.addr, "frozen-next").expect("next").status,
        201
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let repeat = order(b.proxy.addr, "frozen-settle").expect("repeat");
            repeat.header("idempotency-replayed") == Some("true") && repeat.body == first.body
        }),
        "the other instance replays the answer settled during the freeze"
    );
    assert_eq!(orders_created(&fleet), 2);
}

/// A shared line on `redis`, as one instance's `LiveState` makes it.
fn shared_line(redis: &RedisServer, prefix: &str) -> std::sync::Arc<dyn RoomLine> {
    let stores = LiveState::default();
    let settings = RedisConfig {
        url: redis.url(),
        password: None,
        key_prefix: prefix.to_owned(),
        timeout: Duration::from_secs(1),
        pool_size: 1,
    };
    stores.configure(&StoreConfig::Redis(settings), &Metrics::new());
    stores.room_line("sale")
}

fn line_limits(max_active: u64, open: bool) -> Limits {
    Limits {
        may_call: open,
        paused: false,
        open,
        max_active: Some(max_active),
        per_second: None,
        session: Duration::from_secs(3600),
        max_session: Duration::from_secs(7200),
        max_waiting: None,
        ticket_timeout: Duration::from_secs(3600),
    }
}

/// What an arrival or check-in says, without the ids (each line has its own).
fn shape_of_arrival(arrival: &Arrival) -> String {
    match arrival {
        Arrival::Admitted(a) => format!("admitted #{} waited {}", a.number, a.waited.is_some()),
        Arrival::Waiting { ahead, .. } => format!("waiting, {ahead} ahead"),
        Arrival::Drawn { drawn, .. } => format!("drawn, {drawn} drawn"),
        Arrival::Full => "full".to_owned(),
    }
}

fn shape_of_check_in(found: &CheckIn) -> String {
    match found {
        CheckIn::Admitted(a) => format!("admitted #{} first {}", a.number, a.first),
        other => format!("{other:?}"),
    }
}

fn arrival_id(arrival: &Arrival) -> u64 {
    match arrival {
        Arrival::Admitted(a) => a.pass,
        Arrival::Waiting { seq, .. } | Arrival::Drawn { seq, .. } => *seq,
        Arrival::Full => 0,
    }
}

/// The Lua scripts do what the memory line does: the same operations on a
/// `MemoryLine` and on a line in Redis used by two "instances" in turn give
/// the same answers (ids aside), step by step.
#[test]
fn the_shared_line_answers_as_the_memory_line_does() {
    let _serial = serial();
    let redis = RedisServer::start();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let memory = MemoryLine::new();
        let a = shared_line(&redis, "same:");
        let b = shared_line(&redis, "same:");
        assert_eq!(a.epoch(), b.epoch(), "one epoch for every instance");
        let mut rng = fastrand::Rng::with_seed(14);
        // (memory id, shared id) of everyone who holds a ticket or pass.
        let mut held: Vec<(u64, u64)> = Vec::new();
        let mut capacity = 2;
        // Before the opening: draws.
        for i in 0..20 {
            let closed = line_limits(capacity, false);
            let (m, _) = memory
                .arrive(1, tokio::time::Instant::now(), &closed, false)
                .await;
            let line = if i % 2 == 0 { &a } else { &b };
            let (s, _) = line
                .arrive(1, tokio::time::Instant::now(), &closed, false)
                .await;
            assert_eq!(shape_of_arrival(&m), shape_of_arrival(&s), "draw {i}");
            held.push((arrival_id(&m), arrival_id(&s)));
        }
        // At the opening the draws take places 0..20 in some order.
        let mut places: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
        for (m_id, s_id) in &held {
            let opened = line_limits(0, true);
            for (i, found) in [
                memory
                    .check_in(*m_id, 1, tokio::time::Instant::now(), &opened)
                    .await
                    .0,
                b.check_in(*s_id, 1, tokio::time::Instant::now(), &opened)
                    .await
                    .0,
            ]
            .into_iter()
            .enumerate()
            {
                match found {
                    CheckIn::Waiting { ahead } => places[i].push(ahead),
                    other => panic!("a draw after the opening: {other:?}"),
                }
            }
        }
        for mut found in places {
            found.sort_unstable();
            assert_eq!(found, (0..20).collect::<Vec<u64>>());
        }
        // Their holders leave (each line calls its draws in its own order;
        // the places they hold are the same).
        held.clear();
        for step in 0..400 {
            let limits = line_limits(capacity, true);
            let line = if rng.bool() { &a } else { &b };
            match rng.u32(0..10) {
                0..=3 => {
                    let direct = rng.u32(0..4) == 0;
                    let (m, _) = memory
                        .arrive(1, tokio::time::Instant::now(), &limits, direct)
                        .await;
                    let (s, _) = line
                        .arrive(1, tokio::time::Instant::now(), &limits, direct)
                        .await;
                    assert_eq!(
                        shape_of_arrival(&m),
                        shape_of_arrival(&s),
                        "step {step}: arrive"
                    );
                    held.push((arrival_id(&m), arrival_id(&s)));
                }
                4..=7 if !held.is_empty() => {
                    let (m_id, s_id) = held[rng.usize(0..held.len())];
                    let (m, _) = memory
                        .check_in(m_id, 1, tokio::time::Instant::now(), &limits)
                        .await;
                    let (s, _) = line
                        .check_in(s_id, 1, tokio::time::Instant::now(), &limits)
                        .await;
                    let (m_shape, s_shape) = (shape_of_check_in(&m), shape_of_check_in(&s));
                    assert_eq!(m_shape, s_shape, "step {step}: check-in");
                    if let (CheckIn::Admitted(m), CheckIn::Admitted(s)) = (m, s) {
                        assert!(
                            memory
                                .touch(m.pass, 1, tokio::time::Instant::now(), &limits)
                                .await,
                            "step {step}"
                        );
                        assert!(
                            line.touch(s.pass, 1, tokio::time::Instant::now(), &limits)
                                .await,
                            "step {step}"
                        );
                    }
                }
                8 => capacity += 1,
                _ => {
                    let m = memory.stats(tokio::time::Instant::now(), &limits).await;
                    let s = line.stats(tokio::time::Instant::now(), &limits).await;
                    assert_eq!(
                        (m.waiting, m.drawn, m.called, m.active),
                        (s.waiting, s.drawn, s.called, s.active),
                        "step {step}: stats {m:?} {s:?}"
                    );
                    assert_eq!(
                        (m.admitted_from_line, m.admitted_direct),
                        (s.admitted_from_line, s.admitted_direct),
                        "step {step}"
                    );
                }
            }
        }
        let limits = line_limits(capacity, true);
        let (m, s) = (
            memory.stats(tokio::time::Instant::now(), &limits).await,
            a.stats(tokio::time::Instant::now(), &limits).await,
        );
        println!("memory {m:?}\nshared {s:?}");
        assert!(s.active > 5 && s.waiting > 5, "{s:?}");
        // Unknown and foreign ids.
        assert_eq!(
            a.check_in(12345, 1, tokio::time::Instant::now(), &limits)
                .await
                .0,
            CheckIn::Unknown
        );
        assert!(
            !a.touch(12345, 1, tokio::time::Instant::now(), &limits)
                .await
        );
        // The operator's setting is shared.
        a.set_control(Control::Paused).await;
        assert_eq!(b.control().await, Control::Paused);
        b.set_control(Control::Auto).await;
        assert_eq!(a.control().await, Control::Auto);

        // Abandoned tickets: skipped at the head once a ticket_timeout late,
        // or lost by a holder who comes back too late; on Redis's clock.
        let a = shared_line(&redis, "abandon:");
        let b = shared_line(&redis, "abandon:");
        let short = Limits {
            ticket_timeout: Duration::from_millis(300),
            ..line_limits(0, true)
        };
        let now = tokio::time::Instant::now;
        let seq = |arrival: Arrival| match arrival {
            Arrival::Waiting { seq, .. } => seq,
            other => panic!("{other:?}"),
        };
        let quitter = seq(a.arrive(1, now(), &short, false).await.0);
        let stayer = seq(a.arrive(1, now(), &short, false).await.0);
        let late = seq(b.arrive(1, now(), &short, false).await.0);
        assert_eq!(
            b.check_in(stayer, 1, now(), &short).await.0,
            CheckIn::Waiting { ahead: 1 }
        );
        let mut skipped = 0;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            skipped += b.check_in(stayer, 1, now(), &short).await.1.abandoned;
        }
        assert_eq!(
            skipped, 2,
            "the quitter, skipped at the head, and the late one behind the stayer, swept"
        );
        // The late one comes back after its timeout: lost (counted already).
        let (found, outcome) = b.check_in(late, 1, now(), &short).await;
        assert_eq!((found, outcome.abandoned), (CheckIn::Unknown, 0));
        assert_eq!(b.check_in(late, 1, now(), &short).await.0, CheckIn::Unknown);
        let (found, outcome) = a.check_in(stayer, 1, now(), &short).await;
        assert_eq!(
            (found, outcome.abandoned),
            (CheckIn::Waiting { ahead: 0 }, 0)
        );
        assert_eq!(
            a.check_in(quitter, 1, now(), &short).await.0,
            CheckIn::Unknown
        );
        let stats = b.stats(now(), &short).await;
        assert_eq!((stats.waiting, stats.abandoned), (1, 2), "{stats:?}");
        assert!(stats.skipped_share > 0.0);
        let open = Limits {
            max_active: Some(1),
            ..short
        };
        match b.check_in(stayer, 1, now(), &open).await.0 {
            CheckIn::Admitted(admission) => {
                assert_eq!(admission.number, 1);
                assert!(admission.waited >= Some(Duration::from_millis(400)));
                assert!(admission.first);
                assert!(a.touch(admission.pass, 1, now(), &open).await);
            }
            other => panic!("{other:?}"),
        }
    });
}

const ROOM_SECRET: &str = "a-test-secret-that-is-long-enough-0123456789";

impl Instance {
    /// An instance with the room "sale" (`mode = "always"`, `extra` settings)
    /// on route "sale" (`/api`), its line in `redis`.
    fn start_room(fleet: &Fleet, redis: &RedisServer, timeout: &str, extra: &str) -> Instance {
        let port = free_port();
        let body = format!(
            "{admin}[store]\nkind = \"redis\"\nurl = \"{url}\"\ntimeout = \"{timeout}\"\n\n[[pools]]\nname = \"orders\"\nbackends = {backends}\n\n[[routes]]\nname = \"sale\"\npath_prefix = \"/api\"\npool = \"orders\"\n\n[[rooms]]\nname = \"sale\"\nroutes = [\"sale\"]\nsecret = \"{ROOM_SECRET}\"\nmode = \"always\"\n{}{extra}\n", crate::room::ONE_ADDRESS,
            admin = admin_section(port),
            url = redis.url(),
            backends = fleet.backends_toml(&[]),
        );
        Instance {
            proxy: Proxy::start(&body),
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn room_action(&self, action: &str) {
        let answer = request(
            self.admin,
            "POST",
            &format!("/rooms/sale/{action}"),
            crate::support::admin_headers("POST"),
            b"",
        )
        .expect("admin API");
        assert_eq!(answer.status, 200, "{}", answer.text());
    }

    fn room_status(&self) -> serde_json::Value {
        get(self.admin, "/rooms").expect("GET /rooms").json()["rooms"][0].clone()
    }
}

/// Three instances with the waiting room `sale` (`mode = "always"`, plus
/// `extra`) on one Redis.
fn three_rooms(fleet: &Fleet, redis: &RedisServer, timeout: &str, extra: &str) -> Vec<Instance> {
    (0..3)
        .map(|_| Instance::start_room(fleet, redis, timeout, extra))
        .collect()
}

/// A shopper's browser: the room's cookie, sent back on every visit.
#[derive(Debug, Clone, Default)]
struct Shopper {
    cookie: Option<String>,
    /// The first ticket's number.
    ticket: Option<u64>,
    /// The pass's admission number, once in.
    number: Option<u64>,
}

/// What a visit met: through to the fleet, or the waiting page's JSON.
#[derive(Debug)]
enum Visit {
    Passed,
    Waiting(serde_json::Value),
}

const ROOM_COOKIE: &str = "ordergate_room_sale";

impl Shopper {
    /// A visit; `Err` for anything a shopper must never see (a reset, a raw
    /// error, an answer that is neither the site nor the waiting page).
    fn visit(&mut self, addr: SocketAddr) -> Result<Visit, String> {
        let cookie = self.cookie.as_ref().map(|v| format!("{ROOM_COOKIE}={v}"));
        let mut headers = vec![("accept", "application/json")];
        if let Some(cookie) = &cookie {
            headers.push(("cookie", cookie.as_str()));
        }
        let response =
            request(addr, "GET", "/api/products/1", &headers, b"").map_err(|e| format!("{e:?}"))?;
        for (name, value) in &response.headers {
            let set = value
                .strip_prefix(&format!("{ROOM_COOKIE}="))
                .and_then(|rest| rest.split(';').next());
            if let (true, Some(value)) = (name == "set-cookie", set) {
                self.cookie = Some(value.to_owned());
            }
        }
        let fields = self.fields();
        match fields.first().map(String::as_str) {
            Some("t") => {
                self.ticket = self.ticket.or(self.id());
            }
            Some("p") => {
                self.number = u64::from_str_radix(&fields[4], 16).ok();
            }
            _ => {}
        }
        match (response.status, response.header("x-ordergate-page")) {
            (503, Some("waiting_room")) => Ok(Visit::Waiting(response.json())),
            (200, None) => Ok(Visit::Passed),
            (status, page) => Err(format!("{status} {page:?}: {}", response.text())),
        }
    }

    fn fields(&self) -> Vec<String> {
        self.cookie
            .as_deref()
            .map(|c| c.split('.').map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The ticket number or pass id the cookie carries.
    fn id(&self) -> Option<u64> {
        u64::from_str_radix(self.fields().get(3)?, 16).ok()
    }

    /// Whether the cookie names a place or pass of an instance's own
    /// (fallback) line rather than the shared one.
    fn local(&self) -> bool {
        self.id().is_some_and(|id| {
            if id >> 63 == 1 {
                id & (1 << 62) != 0
            } else {
                id & (1 << 61) != 0
            }
        })
    }
}

fn waiting_page(visit: Result<Visit, String>) -> serde_json::Value {
    match visit {
        Ok(Visit::Waiting(page)) => page,
        other => panic!("expected the waiting page, got {other:?}"),
    }
}

#[test]
fn three_instances_share_one_waiting_line_admitted_in_ticket_order() {
    let _serial = serial();
    let redis = RedisServer::start();
    let fleet = Fleet::start(2);
    let instances = three_rooms(
        &fleet,
        &redis,
        "1s",
        "admit_per_minute = 1200\nrefresh = \"1s\"\nsession = \"5m\"\nticket_timeout = \"30s\"",
    );
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.proxy.addr).collect();

    // Paused through one instance: every instance's room is paused.
    instances[0].room_action("pause");
    for instance in &instances {
        assert_eq!(instance.room_status()["control"], "paused");
    }

    // 300 shoppers arrive, each at an instance of its own luck.
    const SHOPPERS: usize = 300;
    let next = AtomicU64::new(0);
    let shoppers: Mutex<Vec<Shopper>> = Mutex::new(vec![Shopper::default(); SHOPPERS]);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= SHOPPERS {
                    return;
                }
                let mut shopper = Shopper::default();
                match shopper.visit(addrs[fastrand::usize(..3)]) {
                    Ok(Visit::Waiting(page)) => assert!(
                        page["estimated_wait_s"].is_null(),
                        "no estimate while paused: {page}"
                    ),
                    other => failures
                        .lock()
                        .expect("failures")
                        .push(format!("shopper {i}: {other:?}")),
                }
                shoppers.lock().expect("shoppers")[i] = shopper;
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    assert!(failures.is_empty(), "{failures:?}");
    let mut shoppers = shoppers.into_inner().expect("shoppers");
    assert!(shoppers.iter().all(|s| s.ticket.is_some() && !s.local()));
    assert_eq!(instances[2].room_status()["length"], SHOPPERS as u64);

    // One line: each shopper has the same place whichever instance answers,
    // and the place is the ticket's rank among all tickets.
    let mut tickets: Vec<u64> = shoppers.iter().filter_map(|s| s.ticket).collect();
    tickets.sort_unstable();
    tickets.dedup();
    assert_eq!(tickets.len(), SHOPPERS, "every ticket number once");
    for (i, shopper) in shoppers.iter_mut().enumerate() {
        let first = fastrand::usize(..3);
        let second = (first + 1 + fastrand::usize(..2)) % 3;
        let a = waiting_page(shopper.visit(addrs[first]));
        let b = waiting_page(shopper.visit(addrs[second]));
        assert_eq!(a["position"], b["position"], "shopper {i}: {a} {b}");
        let rank = tickets
            .binary_search(&shopper.ticket.unwrap_or(0))
            .unwrap_or(usize::MAX);
        assert_eq!(a["position"], rank as u64 + 1, "shopper {i}: {a}");
        assert!(b["estimated_wait_s"].is_null(), "still paused: {b}");
    }

    // Opened through another instance: the line moves (20 a second),
    // shoppers checking in wherever the balancer sends them.
    instances[1].room_action("open");
    let started = Instant::now();
    let due: Mutex<Vec<(Instant, usize)>> =
        Mutex::new((0..SHOPPERS).map(|i| (Instant::now(), i)).collect());
    let shoppers = Mutex::new(shoppers);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let next = {
                    let mut due = due.lock().expect("due");
                    if due.is_empty() || Instant::now() > deadline {
                        return;
                    }
                    let now = Instant::now();
                    due.iter()
                        .position(|(at, _)| *at <= now)
                        .map(|k| due.swap_remove(k))
                };
                let Some((_, i)) = next else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let mut shopper = shoppers.lock().expect("shoppers")[i].clone();
                let visit = shopper.visit(addrs[fastrand::usize(..3)]);
                shoppers.lock().expect("shoppers")[i] = shopper;
                match visit {
                    Ok(Visit::Passed) => {}
                    Ok(Visit::Waiting(page)) => {
                        let refresh = page["refresh_s"].as_u64().unwrap_or(1);
                        due.lock()
                            .expect("due")
                            .push((Instant::now() + Duration::from_secs(refresh), i));
                    }
                    Err(e) => failures.lock().expect("failures").push(e),
                }
            });
        }
    });
    let failures = failures.into_inner().expect("failures");
    assert!(failures.is_empty(), "{failures:?}");
    let mut shoppers = shoppers.into_inner().expect("shoppers");
    let admitted = shoppers.iter().filter(|s| s.number.is_some()).count();
    println!(
        "room over 3 instances: {admitted} of {SHOPPERS} admitted in {:?}",
        started.elapsed()
    );
    assert_eq!(admitted, SHOPPERS, "everyone got in");
    // Admitted strictly in ticket order, across instances.
    shoppers.sort_by_key(|s| s.ticket);
    for pair in shoppers.windows(2) {
        assert!(
            pair[0].number < pair[1].number,
            "ticket {:?} admitted as {:?}, after ticket {:?} admitted as {:?}",
            pair[0].ticket,
            pair[0].number,
            pair[1].ticket,
            pair[1].number
        );
    }
    // Every instance sees the shared line's numbers.
    for instance in &instances {
        let status = instance.room_status();
        assert_eq!(status["length"], 0, "{status}");
        assert_eq!(status["admitted_from_line"], SHOPPERS as u64, "{status}");
        assert_eq!(instance.metric("ordergate_store_up"), 1.0);
        assert_eq!(instance.log_count(FALLBACK_LOG), 0);
    }
}

#[test]
fn redis_killed_while_shoppers_wait_the_room_serves_from_memory_then_shares_again() {
    let _serial = serial();
    let mut redis = RedisServer::start();
    let fleet = Fleet::start(2);
    let instances = three_rooms(
        &fleet,
        &redis,
        "250ms",
        "max_active = 2\nrefresh = \"1s\"\nsession = \"5m\"",
    );
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.proxy.addr).collect();
    let mut inside: Vec<Shopper> = vec![Shopper::default(); 2];
    for (i, shopper) in inside.iter_mut().enumerate() {
        assert!(matches!(shopper.visit(addrs[i]), Ok(Visit::Passed)));
    }
    let mut line: Vec<Shopper> = vec![Shopper::default(); 6];
    for (i, shopper) in line.iter_mut().enumerate() {
        let page = waiting_page(shopper.visit(addrs[i % 3]));
        assert_eq!(page["position"], i as u64 + 1, "{page}");
    }

    redis.kill();
    // Shoppers inside keep shopping; waiting ones see the waiting page; no
    // raw error, on any instance.
    let mut failures = Vec::new();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        for shopper in inside.iter_mut() {
            match shopper.visit(addrs[fastrand::usize(..3)]) {
                Ok(Visit::Passed) => {}
                other => failures.push(format!("inside: {other:?}")),
            }
        }
        for shopper in line.iter_mut() {
            if let Err(e) = shopper.visit(addrs[fastrand::usize(..3)]) {
                failures.push(e);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(failures.is_empty(), "{failures:?}");
    for instance in &instances {
        assert!(
            wait_until(Duration::from_secs(5), || instance
                .metric("ordergate_store_up")
                == 0.0),
            "store_up 0 during the outage"
        );
        assert_eq!(get(instance.admin, "/readyz").expect("readyz").status, 200);
    }
    // New shoppers get this instance's own line: each instance admits up to
    // its max_active, then gives tickets of its own.
    let mut newcomers: Vec<Shopper> = vec![Shopper::default(); 4];
    let mut local_pages = Vec::new();
    for shopper in newcomers.iter_mut() {
        match shopper.visit(addrs[0]) {
            Ok(Visit::Waiting(page)) => local_pages.push(page),
            Ok(Visit::Passed) => {}
            Err(e) => panic!("a newcomer during the outage: {e}"),
        }
        assert!(
            shopper.local(),
            "a ticket or pass of the instance's own line"
        );
    }
    assert!(!local_pages.is_empty());
    // Their place is kept by that instance.
    let mut again = newcomers[3].clone();
    if let Ok(Visit::Waiting(page)) = again.visit(addrs[0]) {
        assert_eq!(
            Some(&page["position"]),
            local_pages.last().map(|p| &p["position"])
        );
    }
    let fallbacks: f64 = instances
        .iter()
        .map(|i| i.metric("ordergate_store_fallbacks_total{feature=\"room\"}"))
        .sum();
    assert!(fallbacks > 0.0);

    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || instances
            .iter()
            .all(|i| i.log_count(RECOVERY_LOG) == 1)),
        "recovery logged on every instance"
    );
    // New shoppers are in the shared line again (Redis restarted empty: a
    // new line), one line for every instance.
    let mut after: Vec<Shopper> = vec![Shopper::default(); 4];
    for (i, shopper) in after.iter_mut().enumerate() {
        let visit = shopper.visit(addrs[i % 3]);
        assert!(!shopper.local(), "shared again: {visit:?}");
        match (i, visit) {
            (0 | 1, Ok(Visit::Passed)) => {}
            (2 | 3, Ok(Visit::Waiting(page))) => assert_eq!(page["position"], i as u64 - 1),
            (_, other) => panic!("shopper {i} after the recovery: {other:?}"),
        }
    }
    for (i, addr) in addrs.iter().enumerate() {
        assert_eq!(
            waiting_page(after[3].visit(*addr))["position"],
            2,
            "the same place on instance {i}"
        );
    }
    // Redis restarted empty: the passes of the shoppers inside are gone with
    // the line (README: with persistence they are kept); they are new shoppers
    // of the shared line, never an error.
    for shopper in inside.iter_mut() {
        let visit = shopper.visit(addrs[2]);
        assert!(visit.is_ok() && !shopper.local(), "{visit:?}");
    }
    for instance in &instances {
        assert_eq!(instance.log_count(FALLBACK_LOG), 1, "fallback logged once");
        assert_eq!(instance.log_count(RECOVERY_LOG), 1, "recovery logged once");
        assert_eq!(instance.metric("ordergate_store_up"), 1.0);
    }
}

/// The Redis limiter keeps the rate-limit contract the memory one keeps: the
/// same cases, on a real Redis, on the cases' clock (the Redis limiter's
/// memory fallback would pass them too, so the test also checks that Redis
/// answered every call).
#[test]
fn the_redis_rate_limiter_keeps_the_contract() {
    let _serial = serial();
    let redis = RedisServer::start();
    let live = LiveState::default();
    let settings = RedisConfig {
        url: redis.url(),
        password: None,
        key_prefix: "contract:".to_owned(),
        timeout: Duration::from_secs(1),
        pool_size: 1,
    };
    let metrics = Metrics::new();
    live.configure(&StoreConfig::Redis(settings), &metrics);
    let shared = live.shared().expect("redis configured");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cases = AtomicU64::new(0);
    runtime.block_on(ordergate::ratelimit::contract::run_all(|clock| {
        // A route per case: each starts with no counts.
        let route = format!("case-{}", cases.fetch_add(1, Ordering::Relaxed));
        let local = std::sync::Arc::new(MemoryRateLimiter::new());
        std::sync::Arc::new(
            RedisRateLimiter::new(std::sync::Arc::clone(&shared), &route, local).on_clock(clock),
        )
    }));
    assert!(cases.load(Ordering::Relaxed) >= 5);
    assert_eq!(metrics.store.fallbacks(), 0, "Redis counted every request");
}
