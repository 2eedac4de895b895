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
//! With `--nets MS` it also carries the other safety nets ordergate puts on
//! every request, written the plain pingora way: a request id (the client's
//! `X-Request-Id` when it is sane, else 32 random hex digits) sent to the
//! backend and returned on the answer, `X-Forwarded-For` and
//! `X-Forwarded-Proto` set by the proxy, and the client's `Forwarded`,
//! `X-Forwarded-Host` and `X-Real-IP` removed (target `pingora-floor-nets`).
//! It is the floor that ordergate's instructions per request are held
//! against (`benches/instructions-floor.sh`).
//!
//! ```sh
//! cargo run --release --example pingora_floor -- [--timeouts MS | --nets MS] LISTEN BACKEND [BACKEND ...]
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
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
    /// Request id and forwarding headers (`--nets`).
    nets: bool,
}

/// Headers a client may send to claim another address or host.
const CLAIMS: [&str; 3] = ["forwarded", "x-forwarded-host", "x-real-ip"];

/// The client's request id when it is 1 to 128 letters, digits or `-_.:`,
/// else 32 random hex digits.
fn request_id(from_client: Option<&[u8]>) -> String {
    match from_client {
        Some(id)
            if (1..=128).contains(&id.len())
                && id.iter().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                }) =>
        {
            String::from_utf8_lossy(id).into_owned()
        }
        _ => format!("{:032x}", fastrand::u128(..)),
    }
}

#[async_trait]
impl ProxyHttp for Floor {
    /// The request id (`--nets`), empty otherwise.
    type CTX = String;

    fn new_ctx(&self) -> String {
        String::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut String) -> Result<bool> {
        if self.nets {
            let headers = &session.req_header().headers;
            *ctx = request_id(headers.get("x-request-id").map(|v| v.as_bytes()));
        }
        Ok(false)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut String,
    ) -> Result<()> {
        if !self.nets {
            return Ok(());
        }
        for claim in CLAIMS {
            upstream.remove_header(claim);
        }
        match session.client_addr().and_then(|a| a.as_inet()) {
            Some(addr) => upstream.insert_header("x-forwarded-for", addr.ip().to_string())?,
            None => {
                upstream.remove_header("x-forwarded-for");
            }
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        upstream.insert_header("x-request-id", ctx.as_str())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut String,
    ) -> Result<()> {
        if self.nets {
            response.insert_header("x-request-id", ctx.as_str())?;
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut String,
    ) -> Result<Box<HttpPeer>> {
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
            "usage: pingora_floor [--timeouts MS | --nets MS] LISTEN BACKEND [BACKEND ...] (addresses as IP:PORT)"
        );
        ExitCode::from(2)
    };
    let mut timeouts = None;
    let nets = args.first().is_some_and(|a| a == "--nets");
    if args
        .first()
        .is_some_and(|a| a == "--timeouts" || a == "--nets")
    {
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
            nets,
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
