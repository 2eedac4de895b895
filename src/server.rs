//! Starting the pingora server for a validated config: the proxy on its TCP and
//! TLS listeners, the health checker, the reload watcher and the admin API.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch, UnixShutdownSignalWatch};
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::Config;
use crate::connection::Connections;
use crate::proxy::Proxy;
use crate::reload::ReloadWatcher;
use crate::state::State;
use crate::telemetry::AccessLogger;
use crate::upstream::checker::HealthChecker;

/// How to start.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The config file, for reloads.
    pub source: Option<PathBuf>,
    /// Take the listening sockets over from a running ordergate (graceful upgrade).
    pub upgrade: bool,
}

/// Marks the state as shutting down (readiness false) when SIGTERM arrives, then
/// lets pingora shut down gracefully as usual.
struct ShutdownWatchWithReadiness {
    state: Arc<State>,
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownWatchWithReadiness {
    async fn recv(&self) -> ShutdownSignal {
        let signal = UnixShutdownSignalWatch.recv().await;
        self.state.begin_shutdown();
        log::info!("shutting down: readiness is now false, requests in flight may finish");
        signal
    }
}

/// Most file descriptors asked for when the hard limit is unlimited (Linux's
/// default `fs.nr_open`).
const MAX_OPEN_FILES: u64 = 1 << 20;

/// Every shopper connection and every backend connection takes a file
/// descriptor, and the usual soft limit (1024) would cap a flash sale at about
/// 500 shoppers. Like HAProxy, raise the soft limit to the hard one at start
/// (`main` does, for every command that serves; the load benches too).
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            log::warn!("cannot read the open files limit: {e}");
            return;
        }
    };
    let wanted = hard.min(MAX_OPEN_FILES);
    if soft >= wanted {
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
        Ok(()) => log::info!("open files limit raised from {soft} to {wanted}"),
        Err(e) => log::warn!(
            "open files limit stays at {soft} ({e}): about {} shoppers at once",
            soft / 2
        ),
    }
}

/// Serves a config until the process is told to stop. Returns only on a
/// startup error; otherwise pingora exits the process when it shuts down.
pub fn run(config: Config, options: RunOptions) -> Result<(), String> {
    if !options.upgrade {
        for addr in config
            .server
            .listen
            .iter()
            .chain(config.server.tls.iter().map(|t| &t.listen))
        {
            check_can_listen(*addr)?;
        }
    }
    let access_log = AccessLogger::open(&config.access_log)?;
    let first_port = config.server.listen.first().map_or(0, |a| a.port());
    let grace = config.server.grace_period.as_secs();
    let conf = ServerConf {
        threads: config.server.threads,
        // One runtime per thread: measured cheaper per request than work stealing.
        work_stealing: false,
        grace_period_seconds: Some(grace),
        upstream_keepalive_pool_size: config.server.upstream_keepalive,
        graceful_shutdown_timeout_seconds: Some(grace.max(1)),
        // Per listener port, so several ordergate processes can share a machine.
        pid_file: format!("/tmp/ordergate-{first_port}.pid"),
        upgrade_sock: format!("/tmp/ordergate-{first_port}-upgrade.sock"),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let listen = config.server.listen.clone();
    let read_buffer = config.server.read_buffer;
    let tls = config.server.tls.clone();
    let admin_config = config.admin.clone();
    let state = Arc::new(State::new(config, options.source));
    let admin = admin_config
        .map(|admin| Admin::bind(Arc::clone(&state), admin, options.upgrade))
        .transpose()?;

    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let limits_state = Arc::clone(&state);
    let app = Connections::new(
        pingora::proxy::http_proxy(
            &server.configuration,
            Proxy::new(Arc::clone(&state), access_log),
        ),
        move || limits_state.connection_limits(),
        state.metrics.connections_closed.clone(),
    );
    let mut proxy = Service::new("ordergate proxy".to_string(), app);
    // Every shopper connection holds a read buffer of this size while idle.
    let buffers = L4BufferSettings {
        read: Some(read_buffer),
        write: None,
    };
    for addr in &listen {
        proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    for listener in &tls {
        let cert = listener.cert.to_string_lossy();
        let key = listener.key.to_string_lossy();
        let mut settings = TlsSettings::intermediate(&cert, &key).map_err(|e| {
            format!(
                "TLS listener {}: cannot load {cert} / {key}: {e}",
                listener.listen
            )
        })?;
        if listener.http2 {
            settings.enable_h2();
        }
        proxy.add_listener(
            ListenerConfig::tcp(listener.listen.to_string())
                .tls(settings)
                .l4_buffer(buffers),
        );
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "health checker",
        HealthChecker::new(Arc::clone(&state)),
    ));
    server.add_service(background_service(
        "reload watcher",
        ReloadWatcher::new(Arc::clone(&state)),
    ));
    if let Some(admin) = admin {
        server.add_service(background_service("admin API", admin));
    }
    let addrs: Vec<String> = listen
        .iter()
        .map(SocketAddr::to_string)
        .chain(tls.iter().map(|t| format!("{} (TLS)", t.listen)))
        .collect();
    log::info!("ordergate listening on {}", addrs.join(", "));
    server.run(RunArgs {
        shutdown_signal: Box::new(ShutdownWatchWithReadiness { state }),
    });
    Ok(())
}

/// Fails early, with a clear message, when a listen address is taken or not ours.
fn check_can_listen(addr: SocketAddr) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}
