//! The cheapest proxy pingora can be: round robin over fixed backends, no
//! routing, no health, no retries, no timeouts, no metrics, no added headers.
//! The load benches run it beside ordergate (target `pingora-floor`) to show
//! what a request costs in the framework itself, so the part ordergate adds is
//! measured, not guessed.
//!
//! With `--timeouts MS` its backend connections get the timeouts ordergate
//! always sets (connect 1 s, read and write MS, 60 s idle in the pool), so the
//! cost of those timers in pingora shows apart from ordergate's own work
//! (target `pingora-floor-timeouts`).
//!
//! ```sh
//! cargo run --release --example pingora_floor -- [--timeouts MS] LISTEN BACKEND [BACKEND ...]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// The allocator ordergate uses, so the difference is ordergate's work alone.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    /// Read and write timeout of backend connections, if any (`--timeouts`).
    timeouts: Option<Duration>,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        let mut peer = HttpPeer::new(self.backends[turn], false, String::new());
        if let Some(timeout) = self.timeouts {
            peer.options.connection_timeout = Some(Duration::from_secs(1));
            peer.options.read_timeout = Some(timeout);
            peer.options.write_timeout = Some(timeout);
            peer.options.idle_timeout = Some(Duration::from_secs(60));
        }
        Ok(Box::new(peer))
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!(
            "usage: pingora_floor [--timeouts MS] LISTEN BACKEND [BACKEND ...] (addresses as IP:PORT)"
        );
        ExitCode::from(2)
    };
    let mut timeouts = None;
    if args.first().is_some_and(|a| a == "--timeouts") {
        let Some(ms) = args.get(1).and_then(|ms| ms.parse::<u64>().ok()) else {
            return usage();
        };
        timeouts = Some(Duration::from_millis(ms));
        args.drain(..2);
    }
    let Some((listen, backends)) = args.split_first().filter(|(_, b)| !b.is_empty()) else {
        return usage();
    };
    let Ok(backends) = backends
        .iter()
        .map(|b| b.parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()
    else {
        return usage();
    };
    // The same server settings as ordergate's bench config: one thread, one
    // runtime per thread, ordergate's default upstream keep-alive pool.
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 1024,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: format!("/tmp/pingora-floor-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/pingora-floor-{}.sock", std::process::id()),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Floor {
            backends,
            next: AtomicUsize::new(0),
            timeouts,
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
