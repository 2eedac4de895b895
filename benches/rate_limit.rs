//! How exact are the rate limits at scale? 1 000, 10 000 and 100 000
//! distinct clients a second, each sending at 1 or 20 requests a second on a
//! route limited to exactly that rate: the share refused (every refusal is a
//! false 429: no client goes over its rate), the memory the counts take, and
//! the CPU per request; then the same against a real `redis-server` (when
//! installed), with the memory Redis takes.
//!
//! Time is the limiters' own manual clock (microseconds), so 5 s of traffic
//! run as fast as the limiter can count them and every run counts the same.
//! Each client has a random phase and spaces its requests evenly.
//!
//! Run with `cargo bench --bench rate_limit` (`-- --quick`: fewer seconds,
//! no 100 000-client Redis case).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ordergate::live::LiveState;
use ordergate::ratelimit::{ManualClock, MemoryRateLimiter, Quota, RateLimiter};
use ordergate::store::redis::RedisRateLimiter;
use ordergate::store::{RedisConfig, StoreConfig};
use ordergate::telemetry::Metrics;

/// One request: when (µs) and whose.
type Event = (u64, u32);

/// The requests of `second`: each client's `rate` evenly spaced from its phase.
fn second_of_requests(second: u64, phases: &[u64], rate: u32) -> Vec<Event> {
    let gap = 1_000_000 / u64::from(rate);
    let mut events: Vec<Event> = Vec::with_capacity(phases.len() * rate as usize);
    for (client, phase) in phases.iter().enumerate() {
        for k in 0..u64::from(rate) {
            events.push((second * 1_000_000 + phase + k * gap, client as u32));
        }
    }
    events.sort_unstable();
    events
}

/// What one case measured.
struct Measured {
    requests: u64,
    refused: u64,
    cpu_ns: f64,
}

/// Offers `seconds` of traffic of `clients` at `rate` to `limiter`.
async fn offer(
    limiter: &dyn RateLimiter,
    clock: &ManualClock,
    clients: u32,
    rate: u32,
    seconds: u64,
) -> Measured {
    let gap = 1_000_000 / u64::from(rate);
    // A phase of 0 would put a request exactly on a window's edge, exactly
    // a second after the one before: the estimate still counts that one (a
    // refusal a real client, never periodic to the microsecond, does not meet).
    let phases: Vec<u64> = (0..clients).map(|_| fastrand::u64(1..gap)).collect();
    let keys: Vec<Vec<u8>> = (0..clients)
        .map(|c| format!("h:shopper-{c}").into_bytes())
        .collect();
    let quota = Quota {
        per_second: rate,
        burst: 0,
        max_clients: 250_000,
    };
    let (mut requests, mut refused, mut busy) = (0u64, 0u64, Duration::ZERO);
    for second in 0..seconds {
        let events = second_of_requests(second, &phases, rate);
        let started = Instant::now();
        for (at, client) in events {
            clock.set_us(at);
            requests += 1;
            if !limiter.admit(&keys[client as usize], quota).await {
                refused += 1;
            }
        }
        busy += started.elapsed();
    }
    Measured {
        requests,
        refused,
        cpu_ns: busy.as_nanos() as f64 / requests as f64,
    }
}

fn report(store: &str, clients: u32, rate: u32, measured: &Measured, memory: String) {
    let per_request = if store == "redis" {
        "ns/request (a round trip)"
    } else {
        "ns/request (CPU)"
    };
    println!(
        "{store:6} {clients:>7} clients × {rate:>2}/s  {:>9} requests  false 429 {:>7.4}%  memory {memory:>10}  {:>6.0} {per_request}",
        measured.requests,
        100.0 * measured.refused as f64 / measured.requests as f64,
        measured.cpu_ns
    );
}

fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / (1024.0 * 1024.0))
}

/// A `redis-server` of this bench on a free loopback port, without
/// persistence; killed on drop.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = RedisServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.command("PING").is_none_or(|r| !r.contains("PONG")) {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// One inline command; the reply's text (a bulk reply read whole).
    fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).ok()?;
        match first.strip_prefix('$') {
            Some(len) => {
                let len: usize = len.trim().parse().ok()?;
                let mut body = vec![0; len];
                reader.read_exact(&mut body).ok()?;
                String::from_utf8(body).ok()
            }
            None => Some(first),
        }
    }

    fn used_memory(&self) -> Option<f64> {
        let info = self.command("INFO memory")?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds = if quick { 2 } else { 5 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("rate limits, {seconds} s of traffic per case, every client at its limit");
    for clients in [1_000, 10_000, 100_000] {
        for rate in [1, 20] {
            let clock = ManualClock::default();
            let limiter = MemoryRateLimiter::with_clock(clock.clone());
            let measured = runtime.block_on(offer(&limiter, &clock, clients, rate, seconds));
            let memory = format!(
                "{} (evicted {})",
                mib(limiter.memory_bytes() as f64),
                limiter.evicted_clients()
            );
            report("memory", clients, rate, &measured, memory);
        }
    }

    let Some(server) = RedisServer::start() else {
        println!("redis: redis-server is not installed; skipped (apt-get install redis-server)");
        return;
    };
    let live = LiveState::default();
    let metrics = Metrics::new();
    live.configure(
        &StoreConfig::Redis(RedisConfig {
            url: format!("redis://127.0.0.1:{}/0", server.port),
            password: None,
            key_prefix: "bench:".to_owned(),
            timeout: Duration::from_secs(2),
            pool_size: 4,
        }),
        &metrics,
    );
    let Some(shared) = live.shared() else {
        println!("redis: not configured; skipped");
        return;
    };
    let cases: &[(u32, u32)] = if quick {
        &[(1_000, 1), (10_000, 1)]
    } else {
        &[(1_000, 1), (1_000, 20), (10_000, 1), (100_000, 1)]
    };
    for (i, &(clients, rate)) in cases.iter().enumerate() {
        let before = server.used_memory().unwrap_or(0.0);
        let clock = ManualClock::default();
        let local = Arc::new(MemoryRateLimiter::new());
        let limiter = RedisRateLimiter::new(Arc::clone(&shared), &format!("case-{i}"), local)
            .on_clock(clock.clone());
        let measured = runtime.block_on(offer(&limiter, &clock, clients, rate, 2));
        let after = server.used_memory().unwrap_or(0.0);
        // Keys expire 2.5 s of real time after their window: a long case
        // shows less than its peak.
        report("redis", clients, rate, &measured, mib(after - before));
        assert_eq!(metrics.store.fallbacks(), 0, "Redis counted every request");
    }
}
