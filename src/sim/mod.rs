//! A simulated fleet of e-commerce order servers, for `ordergate sim`,
//! `ordergate demo`, integration tests and benches.
//!
//! One process serves any number of listen addresses. They behave like order
//! services in front of one shared database: an order created through one
//! address can be read, or replayed by idempotency key, through any other.
//! Each address has its own [`Mode`] (latency, forced status, capacity,
//! [`Fault`]), set from the command line and changed at run time with
//! `PUT /__sim/mode`.
//!
//! Endpoints (every answer is JSON and carries `x-sim-backend: <address>`;
//! an order-service answer to a request with a `traceparent` echoes it in
//! `x-sim-traceparent`):
//!
//! | endpoint | answer |
//! | --- | --- |
//! | `GET /health` | `{"status":"ok"}` |
//! | `GET /api/products/{id}` | a product, the same for the same id |
//! | `POST /api/orders` | 201 and the new order; 200 with `idempotent-replay: true` for a known `Idempotency-Key` (unless the mode ignores keys) |
//! | `GET /api/orders/{id}` | the stored order, or 404 |
//! | any method, `/__sim/echo` | the method, path, query, headers and body received |
//! | `GET /__sim/stats` | requests and accepted connections per listener, orders created, idempotent replays, requests in flight |
//! | `GET`/`PUT /__sim/mode` | this listener's mode; `PUT` changes it (or every listener's with `"all": true`) |
//! | `POST /__sim/reset` | forgets orders and counters, restores the command-line modes |
//! | `GET /__sim/events?count=N&gap_ms=M` | `text/event-stream`: `N` events (default 3), the first at once, then one every `M` ms (default 1000) |
//! | `GET /__sim/ws` | a WebSocket upgrade; echoes every message, answers pings |
//!
//! The `/__sim/*` endpoints always answer at once, whatever the mode.

mod body;
mod conn;
mod control;
mod fleet;
mod mode;
mod orders;
mod service;
mod streams;
#[cfg(test)]
mod tests;
pub mod websocket;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use mode::{Fault, Mode};

use fleet::Fleet;

/// Command-line arguments of `ordergate sim`: the addresses to serve and the
/// mode every address starts in.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to serve on; repeat for several backends sharing one order book (port 0 picks a free port).
    #[arg(long = "listen", required = true)]
    pub listen: Vec<SocketAddr>,

    /// Delay before every answer, in milliseconds.
    #[arg(long = "latency-ms", default_value_t = 0)]
    pub latency_ms: u64,

    /// Vary the delay at random by up to this many milliseconds either way.
    #[arg(long = "jitter-ms", default_value_t = 0)]
    pub jitter_ms: u64,

    /// Answer every request with this HTTP status (200-599) instead of serving it.
    #[arg(long = "status", value_parser = clap::value_parser!(u16).range(200..=599))]
    pub status: Option<u16>,

    /// Handle at most this many requests at once on each address; the others
    /// wait, like on a saturated server.
    #[arg(long = "capacity", value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: Option<u32>,

    /// Fault to inject into every request.
    #[arg(long = "fault", value_enum, default_value_t = Fault::None)]
    pub fault: Fault,

    /// Make a new order for every POST, with or without an `Idempotency-Key`,
    /// like an order service that does not dedupe.
    #[arg(long = "ignore-idempotency")]
    pub ignore_idempotency: bool,
}

impl SimArgs {
    /// Arguments serving `listen` in the default mode: no latency, no forced
    /// status, no capacity limit, no fault.
    pub fn new(listen: Vec<SocketAddr>) -> Self {
        SimArgs {
            listen,
            latency_ms: 0,
            jitter_ms: 0,
            status: None,
            capacity: None,
            fault: Fault::None,
            ignore_idempotency: false,
        }
    }

    /// The mode every address starts in (and returns to on `POST /__sim/reset`).
    pub fn mode(&self) -> Mode {
        Mode {
            latency_ms: self.latency_ms,
            jitter_ms: self.jitter_ms,
            status: self.status,
            capacity: self.capacity,
            fault: self.fault,
            ignore_idempotency: self.ignore_idempotency,
        }
    }
}

/// Runs the fleet until the process is killed: binds every address, prints one
/// line per listener to stdout, `ordergate sim listening on ADDRESS` with the
/// address actually bound, then serves.
///
/// Errors (e.g. an address already in use) name the address.
pub fn run(args: SimArgs) -> Result<(), String> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let (addrs, tasks) = start(&args).await?;
        let mut stdout = std::io::stdout();
        for addr in &addrs {
            // Serve on even if nobody reads stdout any more.
            let _ = writeln!(stdout, "ordergate sim listening on {addr}");
            let _ = stdout.flush();
        }
        wait(tasks).await
    })
}

/// Starts the fleet on a background thread with its own runtime (for
/// `ordergate demo` and tests). Returns the bound addresses, in the order of
/// `args.listen`, once all are listening, or an error naming the address that
/// failed. The fleet serves until the process ends; the listeners of one call
/// share one order book.
pub fn spawn(args: SimArgs) -> Result<Vec<SocketAddr>, String> {
    let (ready, listening) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ordergate-sim".to_owned())
        .spawn(move || {
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async {
                match start(&args).await {
                    Ok((addrs, tasks)) => {
                        let _ = ready.send(Ok(addrs));
                        if let Err(e) = wait(tasks).await {
                            log::error!("{e}");
                        }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| format!("cannot start the sim thread: {e}"))?;
    listening
        .recv()
        .map_err(|_| "the sim thread ended before listening".to_owned())?
}

/// The runtime the fleet runs on.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ordergate-sim-worker")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the sim runtime: {e}"))
}

/// Binds every address and starts accepting; returns the bound addresses and
/// the accept loops.
async fn start(args: &SimArgs) -> Result<(Vec<SocketAddr>, Vec<JoinHandle<()>>), String> {
    if args.listen.is_empty() {
        return Err("no address to listen on".to_owned());
    }
    let mut sockets = Vec::with_capacity(args.listen.len());
    let mut addrs = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let socket = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = socket
            .local_addr()
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        sockets.push(socket);
        addrs.push(bound);
    }
    let fleet = Fleet::new(args.mode(), &addrs);
    let tasks = sockets
        .into_iter()
        .zip(fleet.listeners())
        .map(|(socket, listener)| {
            tokio::spawn(conn::accept_loop(
                socket,
                Arc::clone(listener),
                Arc::clone(&fleet),
            ))
        })
        .collect();
    Ok((addrs, tasks))
}

/// Waits for the accept loops, which only end if one of them panicked.
async fn wait(tasks: Vec<JoinHandle<()>>) -> Result<(), String> {
    for task in tasks {
        task.await
            .map_err(|e| format!("a sim listener stopped: {e}"))?;
    }
    Ok(())
}
