//! The load generator: HTTP/1.1 over tokio, a pool of keep-alive connections
//! (or a new connection per request), open-loop constant-rate arrivals with
//! latency measured from the *scheduled* send time (no coordinated omission),
//! a closed-loop mode (connections back to back), and every response classified.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::stats::{Class, Recorder};

/// What kind of request to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GET /api/products/N` (browsing, priority low in flash-sale).
    Browse,
    /// `POST /api/orders` with a unique `Idempotency-Key` (checkout, critical).
    Checkout,
    /// `POST /api/orders` without an idempotency key.
    Order,
    /// `POST /api/orders` with a [`BIG_BODY`]-byte body that is not JSON (the
    /// backend reads it all and answers a small 400; nothing is stored).
    BigPost,
    /// `POST /__sim/echo` with a [`BIG_BODY`]-byte body: the backend sends it
    /// back, so the answer is as large.
    BigAnswer,
}

/// Body size of [`Kind::BigPost`] and [`Kind::BigAnswer`]: 256 KiB.
pub(crate) const BIG_BODY: usize = 256 * 1024;

impl Kind {
    /// The name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Browse => "browse",
            Kind::Checkout => "checkout",
            Kind::Order => "order",
            Kind::BigPost => "big-post",
            Kind::BigAnswer => "big-answer",
        }
    }

    /// Whether the request may create an order.
    pub(crate) fn creates_order(self) -> bool {
        matches!(self, Kind::Checkout | Kind::Order)
    }
}

/// How one order-creating request ended, for the order accounting of `soak`.
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    /// Its sequence number, also sent in the order body as `"ref"`.
    pub(crate) seq: u64,
    /// Keyed (checkout) or not (order).
    pub(crate) kind: Kind,
    /// What the client got.
    pub(crate) class: Class,
    /// The client sent it a second time (a keep-alive connection found closed).
    pub(crate) resent: bool,
}

/// Outcomes of the order-creating requests of a run, when asked for.
pub(crate) type Ledger = Arc<Mutex<Vec<Sent>>>;

/// One phase of a run.
#[derive(Clone, Debug)]
pub(crate) struct Phase {
    /// Label in reports (`3x`, `open 50%`, ...).
    pub(crate) name: String,
    /// Closed or open loop.
    pub(crate) load: Load,
    /// How long it lasts.
    pub(crate) duration: Duration,
    /// Whether it appears in reports (a warm-up does not).
    pub(crate) report: bool,
}

/// How load is offered during a phase.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Load {
    /// `connections` clients, each sending its next request when the previous
    /// answer arrived: the maximum throughput.
    Closed {
        /// Concurrent connections.
        connections: usize,
    },
    /// Requests scheduled at fixed intervals, sent on the connection pool.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

/// Something done at a moment of the run (kill a backend, reload, ...).
pub(crate) struct Event {
    /// When, from the start of the run.
    pub(crate) at: Duration,
    /// What, for reports.
    pub(crate) label: String,
    /// The action (blocking is fine: it runs on a blocking thread).
    pub(crate) action: Action,
}

/// Something done to the system under test during a run (kill a backend,
/// reload the proxy...).
pub(crate) type Action = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Everything about how to drive one target.
pub(crate) struct Plan {
    /// Name of the target, for progress lines.
    pub(crate) label: String,
    /// Where to connect; connection `i` uses `addrs[i % len]`.
    pub(crate) addrs: Vec<SocketAddr>,
    /// The phases, back to back.
    pub(crate) phases: Vec<Phase>,
    /// Request mix: the kinds, sent in turn.
    pub(crate) mix: Vec<Kind>,
    /// Size of the open-loop connection pool.
    pub(crate) pool: usize,
    /// Keep connections alive (false: a new TCP connection per request).
    pub(crate) keepalive: bool,
    /// A request with no answer this long after its scheduled time is a timeout.
    pub(crate) timeout: Duration,
    /// Things to do during the run.
    pub(crate) events: Vec<Event>,
    /// Print one progress line per second to stderr (the harness turns it
    /// off in CI and when stderr is not a terminal).
    pub(crate) progress: bool,
    /// Where to note how each order-creating request ended (soak).
    pub(crate) ledger: Option<Ledger>,
}

/// One request to make.
#[derive(Clone, Copy)]
struct Job {
    scheduled: Instant,
    phase: usize,
    seq: u64,
}

/// State shared by the workers of one run.
struct Shared {
    addrs: Vec<SocketAddr>,
    mix: Vec<Kind>,
    keepalive: bool,
    timeout: Duration,
    recorder: Arc<Mutex<Recorder>>,
    run_id: u64,
    next_conn: AtomicU64,
    next_seq: AtomicU64,
    ledger: Option<Ledger>,
}

impl Shared {
    fn record(&self, job: &Job, kind: Kind, class: Class, done: Instant) {
        if let Ok(mut recorder) = self.recorder.lock() {
            recorder.record(
                job.phase,
                kind,
                job.scheduled.into_std(),
                done.into_std(),
                class,
            );
        }
    }

    fn addr(&self) -> SocketAddr {
        let i = self.next_conn.fetch_add(1, Ordering::Relaxed) as usize;
        self.addrs[i % self.addrs.len()]
    }

    fn request(&self, kind: Kind, seq: u64) -> Vec<u8> {
        let connection = if self.keepalive {
            ""
        } else {
            "Connection: close\r\n"
        };
        match kind {
            Kind::Browse => format!(
                "GET /api/products/{} HTTP/1.1\r\nHost: shop.test\r\nAccept: application/json\r\nUser-Agent: ordergate-load\r\n{connection}\r\n",
                seq % 1000
            )
            .into_bytes(),
            Kind::Checkout | Kind::Order => {
                // The ref lets soak tell which request made which order.
                let body = format!(r#"{{"sku":"tea","quantity":1,"ref":{seq}}}"#);
                let key = if kind == Kind::Checkout {
                    format!("Idempotency-Key: load-{:x}-{seq}\r\n", self.run_id)
                } else {
                    String::new()
                };
                format!(
                    "POST /api/orders HTTP/1.1\r\nHost: shop.test\r\nAccept: application/json\r\nUser-Agent: ordergate-load\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\n{connection}\r\n{body}",
                    body.len()
                )
                .into_bytes()
            }
            Kind::BigPost | Kind::BigAnswer => {
                let path = if kind == Kind::BigPost {
                    "/api/orders"
                } else {
                    "/__sim/echo"
                };
                let mut request = format!(
                    "POST {path} HTTP/1.1\r\nHost: shop.test\r\nAccept: application/json\r\nUser-Agent: ordergate-load\r\nContent-Type: text/plain\r\nContent-Length: {BIG_BODY}\r\n{connection}\r\n"
                )
                .into_bytes();
                request.resize(request.len() + BIG_BODY, b'x');
                request
            }
        }
    }
}

/// Runs a plan against a target and returns the recorder with the results.
/// `cpu` reads the proxy's CPU time (µs), sampled at each phase boundary.
pub(crate) async fn run(plan: Plan, cpu: Arc<dyn Fn() -> Option<u64> + Send + Sync>) -> Recorder {
    let start = Instant::now();
    let phase_names: Vec<(String, Duration, bool)> = plan
        .phases
        .iter()
        .map(|p| (p.name.clone(), p.duration, p.report))
        .collect();
    let recorder = Arc::new(Mutex::new(Recorder::new(
        &plan.label,
        start.into_std(),
        &phase_names,
        &plan.mix,
    )));
    let shared = Arc::new(Shared {
        addrs: plan.addrs,
        mix: plan.mix,
        keepalive: plan.keepalive,
        timeout: plan.timeout,
        recorder: Arc::clone(&recorder),
        run_id: u64::from(std::process::id()) << 32 | u64::from(fastrand::u32(..)),
        next_conn: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
        ledger: plan.ledger,
    });

    // Events.
    let mut event_tasks = Vec::new();
    for event in plan.events {
        let recorder = Arc::clone(&recorder);
        event_tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + event.at).await;
            let at = start.elapsed();
            let action = event.action;
            let result = tokio::task::spawn_blocking(action)
                .await
                .unwrap_or_else(|e| Err(format!("event panicked: {e}")));
            if let Err(why) = &result {
                eprintln!(
                    "[{}] event {:?} failed: {why}",
                    shared_label(&recorder),
                    event.label
                );
            }
            if let Ok(mut r) = recorder.lock() {
                r.event(at, &event.label, result.err());
            }
        }));
    }

    // Progress.
    let progress = plan.progress.then(|| {
        let recorder = Arc::clone(&recorder);
        tokio::spawn(async move {
            let mut second = 1u64;
            loop {
                tokio::time::sleep_until(start + Duration::from_millis(second * 1000 + 20)).await;
                if let Ok(r) = recorder.lock() {
                    eprintln!("{}", r.progress_line(Duration::from_secs(second)));
                }
                second += 1;
            }
        })
    });

    // The open-loop pool, fed by the scheduler.
    let (tx, rx) = mpsc::unbounded_channel::<Job>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let needs_pool = plan
        .phases
        .iter()
        .any(|p| matches!(p.load, Load::Open { .. }));
    let pool: Vec<_> = if needs_pool {
        (0..plan.pool.max(1))
            .map(|_| {
                let (rx, shared) = (Arc::clone(&rx), Arc::clone(&shared));
                tokio::spawn(async move {
                    let mut conn = None;
                    loop {
                        let job = { rx.lock().await.recv().await };
                        let Some(job) = job else { break };
                        execute(&shared, &mut conn, job).await;
                    }
                })
            })
            .collect()
    } else {
        Vec::new()
    };

    let mut phase_start = start;
    for (index, phase) in plan.phases.iter().enumerate() {
        let phase_end = phase_start + phase.duration;
        let cpu_before = cpu();
        if let Ok(mut r) = recorder.lock() {
            r.phase_begin(index, phase_start.into_std(), cpu_before);
        }
        match phase.load {
            Load::Open { rate } => {
                let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
                let mut at = phase_start;
                while at < phase_end {
                    if at > Instant::now() {
                        tokio::time::sleep_until(at).await;
                    }
                    let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut r) = recorder.lock() {
                        r.offered(at.into_std());
                    }
                    if tx
                        .send(Job {
                            scheduled: at,
                            phase: index,
                            seq,
                        })
                        .is_err()
                    {
                        break;
                    }
                    at += interval;
                }
                tokio::time::sleep_until(phase_end).await;
            }
            Load::Closed { connections } => {
                let workers: Vec<_> = (0..connections.max(1))
                    .map(|_| {
                        let shared = Arc::clone(&shared);
                        tokio::spawn(async move {
                            let mut conn = None;
                            while Instant::now() < phase_end {
                                let job = Job {
                                    scheduled: Instant::now(),
                                    phase: index,
                                    seq: shared.next_seq.fetch_add(1, Ordering::Relaxed),
                                };
                                if let Ok(mut r) = shared.recorder.lock() {
                                    r.offered(job.scheduled.into_std());
                                }
                                execute(&shared, &mut conn, job).await;
                            }
                        })
                    })
                    .collect();
                for worker in workers {
                    let _ = worker.await;
                }
            }
        }
        let cpu_after = cpu();
        if let Ok(mut r) = recorder.lock() {
            r.phase_done(index, Instant::now().into_std(), cpu_after);
        }
        phase_start = phase_end.max(Instant::now());
    }
    // Let the open-loop requests still in flight finish (each ends by its timeout).
    drop(tx);
    let drain_deadline = Instant::now() + plan.timeout + Duration::from_secs(1);
    for mut worker in pool {
        if tokio::time::timeout_at(drain_deadline, &mut worker)
            .await
            .is_err()
        {
            worker.abort();
        }
    }
    for task in event_tasks {
        // Events after the end of the run are not run.
        task.abort();
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let mut recorder = recorder
        .lock()
        .map(|r| r.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    recorder.finish(start.elapsed());
    recorder
}

fn shared_label(recorder: &Mutex<Recorder>) -> String {
    recorder.lock().map(|r| r.label.clone()).unwrap_or_default()
}

/// A keep-alive connection and what was read past the last response.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    used: bool,
}

/// Sends one job's request and records how it ended.
async fn execute(shared: &Shared, conn: &mut Option<Conn>, job: Job) {
    let kind = shared.mix[(job.seq % shared.mix.len() as u64) as usize];
    let deadline = job.scheduled + shared.timeout;
    if Instant::now() >= deadline {
        // Waited for a free connection longer than the timeout: never sent.
        shared.record(&job, kind, Class::Timeout, Instant::now());
        return;
    }
    let request = shared.request(kind, job.seq);
    let mut resent = false;
    let class = match tokio::time::timeout_at(deadline, exchange(shared, conn, &request)).await {
        Err(_) => {
            *conn = None;
            Class::Timeout
        }
        Ok(Err(Failure::Stale)) => {
            *conn = None;
            if let Ok(mut r) = shared.recorder.lock() {
                r.stale();
            }
            resent = true;
            // Once more on a fresh connection.
            match tokio::time::timeout_at(deadline, exchange(shared, conn, &request)).await {
                Err(_) => {
                    *conn = None;
                    Class::Timeout
                }
                Ok(Err(_)) => {
                    *conn = None;
                    Class::Reset
                }
                Ok(Ok(response)) => response.class(),
            }
        }
        Ok(Err(Failure::Reset)) => {
            *conn = None;
            Class::Reset
        }
        Ok(Ok(response)) => response.class(),
    };
    if let (Some(ledger), true) = (&shared.ledger, kind.creates_order()) {
        if let Ok(mut ledger) = ledger.lock() {
            ledger.push(Sent {
                seq: job.seq,
                kind,
                class: class.clone(),
                resent,
            });
        }
    }
    shared.record(&job, kind, class, Instant::now());
    if !shared.keepalive {
        *conn = None;
    }
}

/// A response, as much as the classification needs.
struct Response {
    status: u16,
    page: Option<String>,
    retry_after: bool,
    close: bool,
}

impl Response {
    fn class(&self) -> Class {
        match (&self.page, self.status) {
            (Some(reason), status) => Class::Page {
                status,
                reason: reason.clone(),
                retry_after: self.retry_after,
            },
            (None, status) if status >= 500 => Class::OtherError { status },
            (None, status) => Class::Success { status },
        }
    }
}

/// Why an exchange failed.
enum Failure {
    /// A reused keep-alive connection was closed before any byte of the
    /// answer: the server had closed it while idle. Worth one more try.
    Stale,
    /// Refused, reset, or closed mid-answer.
    Reset,
}

async fn exchange(
    shared: &Shared,
    slot: &mut Option<Conn>,
    request: &[u8],
) -> Result<Response, Failure> {
    if slot.is_none() {
        let stream = TcpStream::connect(shared.addr())
            .await
            .map_err(|_| Failure::Reset)?;
        let _ = stream.set_nodelay(true);
        *slot = Some(Conn {
            stream,
            buf: BytesMut::with_capacity(8192),
            used: false,
        });
    }
    let Some(conn) = slot.as_mut() else {
        return Err(Failure::Reset);
    };
    let reused = conn.used;
    conn.used = true;
    let fail = |got_bytes: bool| {
        if reused && !got_bytes {
            Failure::Stale
        } else {
            Failure::Reset
        }
    };
    if conn.stream.write_all(request).await.is_err() {
        return Err(fail(false));
    }
    let mut got_bytes = !conn.buf.is_empty();
    loop {
        match parse(&conn.buf) {
            Parsed::Done(response, consumed) => {
                conn.buf.advance(consumed);
                if response.close {
                    *slot = None;
                }
                return Ok(response);
            }
            Parsed::Invalid => return Err(Failure::Reset),
            Parsed::Incomplete | Parsed::UntilEof(_) => {}
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => {
                if let Parsed::UntilEof(response) = parse(&conn.buf) {
                    *slot = None;
                    return Ok(response);
                }
                return Err(fail(got_bytes));
            }
            Ok(_) => got_bytes = true,
            Err(_) => return Err(fail(got_bytes)),
        }
    }
}

/// A complete response at the start of `buf` (`eof`: the server closed after
/// it): how it is classified, whether the server closes the connection, and
/// the bytes it took. `Ok(None)` while incomplete; `Err` when unparsable.
pub(crate) fn complete_response(buf: &[u8], eof: bool) -> Result<Option<(Class, bool, usize)>, ()> {
    match parse(buf) {
        Parsed::Done(response, used) => Ok(Some((response.class(), response.close, used))),
        Parsed::UntilEof(response) if eof => Ok(Some((response.class(), true, buf.len()))),
        Parsed::Invalid => Err(()),
        Parsed::Incomplete | Parsed::UntilEof(_) => Ok(None),
    }
}

enum Parsed {
    Incomplete,
    Invalid,
    /// A complete response and the bytes it took.
    Done(Response, usize),
    /// The head is complete; the body ends when the connection closes.
    UntilEof(Response),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Parsed::Invalid
        } else {
            Parsed::Incomplete
        };
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Invalid;
    };
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let Some(status) = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    else {
        return Parsed::Invalid;
    };
    let mut response = Response {
        status,
        page: None,
        retry_after: false,
        close: status_line.starts_with("HTTP/1.0"),
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                response.close = true;
            } else if value.contains("keep-alive") {
                response.close = false;
            }
        } else if name.eq_ignore_ascii_case("x-ordergate-page") {
            response.page = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("retry-after") {
            response.retry_after = true;
        }
    }
    let body = end + 4;
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Parsed::Done(response, body);
    }
    if chunked {
        return match chunked_end(&buf[body..]) {
            Some(Ok(len)) => Parsed::Done(response, body + len),
            Some(Err(())) => Parsed::Invalid,
            None => Parsed::Incomplete,
        };
    }
    match length {
        Some(len) if buf.len() >= body + len => Parsed::Done(response, body + len),
        Some(_) => Parsed::Incomplete,
        None => {
            response.close = true;
            Parsed::UntilEof(response)
        }
    }
}

/// The length of a complete chunked body at the start of `data`; `None` while
/// incomplete.
fn chunked_end(data: &[u8]) -> Option<Result<usize, ()>> {
    let mut pos = 0;
    loop {
        let line = find(&data[pos..], b"\r\n")?;
        let text = std::str::from_utf8(&data[pos..pos + line]).ok()?;
        let Ok(size) = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return Some(Err(()));
        };
        pos += line + 2;
        if size == 0 {
            // Trailers (usually none) end with an empty line.
            if data.len() >= pos + 2 && &data[pos..pos + 2] == b"\r\n" {
                return Some(Ok(pos + 2));
            }
            let trailer_end = find(&data[pos..], b"\r\n\r\n")?;
            return Some(Ok(pos + trailer_end + 4));
        }
        if data.len() < pos + size + 2 {
            return None;
        }
        pos += size + 2;
    }
}
