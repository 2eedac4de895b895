//! Starting the pingora server for a validated config: the proxy on its TCP and
//! TLS listeners, the health checker, the reload watcher and the admin API.
//! Signals: SIGHUP reloads (see `reload`), SIGTERM drains and stops, SIGINT
//! stops, SIGQUIT hands the sockets to a new process, SIGUSR1 reopens the
//! access log file.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ListenerConfig;
use pingora::prelude::*;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    ExecutionPhase, RunArgs, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
    UnixShutdownSignalWatch,
};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::accept::{BeforeTls, Expectations, Policy, ProxyProtocolApp};
use crate::admin::Admin;
use crate::config::{Config, ProxyProtocol, TlsConfig};
use crate::connection::Connections;
use crate::proxy::Proxy;
use crate::reload::ReloadWatcher;
use crate::state::State;
use crate::telemetry::{AccessLogReopen, AccessLogger};
use crate::upstream::checker::{HealthChecker, PoolSource};
use crate::upstream::dns::{DnsHost, DnsResolver};

/// How to start.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// The config file, for reloads.
    pub source: Option<PathBuf>,
    /// Take the listening sockets over from a running ordergate (graceful upgrade).
    pub upgrade: bool,
}

/// SIGTERM: readiness turns false at once; the listeners stay open for
/// `server.shutdown_delay` (so a load balancer watching `/readyz` stops sending
/// first), then pingora's graceful shutdown closes them. SIGINT during the
/// delay shuts down at once.
struct ShutdownWatchWithReadiness {
    state: Arc<State>,
    delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownWatchWithReadiness {
    async fn recv(&self) -> ShutdownSignal {
        let signal = UnixShutdownSignalWatch.recv().await;
        self.state.begin_shutdown();
        match signal {
            ShutdownSignal::GracefulTerminate if !self.delay.is_zero() => {
                log::info!(
                    "shutting down: /readyz says 503; serving on for {:?} (server.shutdown_delay) before the listeners close",
                    self.delay
                );
                tokio::select! {
                    () = tokio::time::sleep(self.delay) => {}
                    again = UnixShutdownSignalWatch.recv() => {
                        if matches!(again, ShutdownSignal::FastShutdown) {
                            log::info!("SIGINT: shutting down now");
                            return again;
                        }
                    }
                }
                log::info!("shutting down: listeners close, requests in flight may finish");
            }
            ShutdownSignal::FastShutdown => {}
            _ => log::info!(
                "shutting down: /readyz says 503, listeners close, requests in flight may finish"
            ),
        }
        signal
    }
}

/// Once pingora has closed the listeners (its grace period starts), waits
/// until no request is in flight or `grace` passed, logs what was finished and
/// what was cut, and exits 0 — pingora alone would sleep the whole grace
/// period however idle the process is.
fn exit_when_drained(
    state: Arc<State>,
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    grace: Duration,
) {
    loop {
        match phases.blocking_recv() {
            Ok(ExecutionPhase::ShutdownGracePeriod) => break,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
    let started = std::time::Instant::now();
    let answered_before = state.metrics.requests_answered();
    let in_flight = state.requests_in_flight();
    log::info!(
        "shutting down: {in_flight} request{} in flight, waiting up to {grace:?} (server.grace_period)",
        if in_flight == 1 { "" } else { "s" }
    );
    while state.requests_in_flight() > 0 && started.elapsed() < grace {
        std::thread::sleep(DRAIN_POLL);
    }
    let cut = state.requests_in_flight();
    let streams_cut = crate::stream::open_now();
    let finished = state
        .metrics
        .requests_answered()
        .saturating_sub(answered_before);
    log::info!(
        "shutdown complete after {:.2}s: {finished} request{} finished, {cut} cut at the end of the grace period ({streams_cut} of them open streams)",
        started.elapsed().as_secs_f64(),
        if finished == 1 { "" } else { "s" }
    );
    std::process::exit(0);
}

/// How often the end of shutdown checks for requests in flight.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// How long listeners may take to accept connections after the start before
/// ordergate gives up (pingora retries a taken port for 30 s by itself).
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// Readiness needs every listener to accept connections: probes each with a
/// TCP connect until all answer, then marks the state ready. A listener that
/// still refuses after [`LISTEN_DEADLINE`] ends the process with exit 1, so a
/// start never half-succeeds.
#[derive(Debug)]
struct ListenerCheck {
    state: Arc<State>,
}

#[async_trait]
impl BackgroundService for ListenerCheck {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let addrs = self.state.listen_addrs();
        let started = tokio::time::Instant::now();
        let mut waiting = addrs.clone();
        loop {
            let mut still = Vec::new();
            for addr in waiting {
                if !accepts(addr).await {
                    still.push(addr);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                self.state.set_listeners_ready();
                let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
                log::info!(
                    "ready: every listener accepts connections ({})",
                    addrs.join(", ")
                );
                return;
            }
            if started.elapsed() > LISTEN_DEADLINE {
                let addrs: Vec<String> = waiting.iter().map(SocketAddr::to_string).collect();
                log::error!(
                    "cannot listen on {}: no connection accepted {LISTEN_DEADLINE:?} after the start; exiting",
                    addrs.join(", ")
                );
                std::process::exit(1);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a listener accepts a TCP connection (on loopback when it listens on
/// every address).
async fn accepts(addr: SocketAddr) -> bool {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(target)
        )
        .await,
        Ok(Ok(_))
    )
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

/// Looks up every backend name once before serving, so the first requests
/// find their backends; a name that does not resolve is logged and looked up
/// again by the resolver service, it does not stop the start.
fn resolve_names_at_start(state: &Arc<State>) -> Result<(), String> {
    if state.config().pools.iter().all(|p| p.named.is_empty()) {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the first DNS lookups: {e}"))?;
    runtime.block_on(crate::upstream::dns::resolve_at_start(&**state));
    Ok(())
}

/// SIGUSR1 reopens the access log file (logrotate's `postrotate`). The handler
/// is installed before the server starts, on a thread of its own, so the
/// signal's default action (exit) never applies while ordergate serves.
fn reopen_access_log_on_sigusr1(reopen: AccessLogReopen) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the SIGUSR1 handler: {e}"))?;
    let mut signals = {
        let _context = runtime.enter();
        signal(SignalKind::user_defined1()).map_err(|e| format!("cannot handle SIGUSR1: {e}"))?
    };
    std::thread::Builder::new()
        .name("sigusr1".to_string())
        .spawn(move || {
            runtime.block_on(async move {
                while signals.recv().await.is_some() {
                    match reopen.reopen() {
                        Ok(Some(path)) => {
                            log::info!("SIGUSR1: access log reopened at {}", path.display())
                        }
                        Ok(None) => log::info!("SIGUSR1: no access log file to reopen"),
                        Err(e) => log::error!("SIGUSR1: {e}; still writing to the old file"),
                    }
                }
            });
        })
        .map_err(|e| format!("cannot start the SIGUSR1 handler: {e}"))?;
    Ok(())
}

/// Serves a config until the process is told to stop. Returns only on a
/// startup error; otherwise the process exits when it shuts down.
pub fn run(config: Config, options: RunOptions) -> Result<(), String> {
    let access_log = AccessLogger::open(&config.access_log)?;
    reopen_access_log_on_sigusr1(access_log.reopener())?;
    let first_port = config.server.listen.first().map_or(0, |a| a.port());
    let grace = config.server.grace_period;
    let conf = ServerConf {
        threads: config.server.threads,
        // One runtime per thread: measured cheaper per request than work stealing.
        work_stealing: false,
        // A backstop only: `exit_when_drained` ends the process as soon as no
        // request is in flight, and at the latest after `grace`.
        grace_period_seconds: Some(grace.as_secs() + 2),
        upstream_keepalive_pool_size: config.server.upstream_keepalive,
        graceful_shutdown_timeout_seconds: Some(1),
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
    let proxy_protocol = config.server.proxy_protocol;
    let shutdown_delay = config.server.shutdown_delay;
    let tls = config.server.tls.clone();
    let admin_config = config.admin.clone();
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    let state = Arc::new(State::new(config, options.source));
    resolve_names_at_start(&state)?;
    // The admin listener first: a shopper listener on its address then fails
    // the check below (`ordergate check` reports it too).
    let admin = admin_config
        .map(|admin| Admin::bind(Arc::clone(&state), admin, options.upgrade))
        .transpose()?;
    if !options.upgrade {
        for addr in state.listen_addrs() {
            check_can_listen(addr)?;
        }
    }

    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if options.upgrade {
        log::info!("waiting for the listening sockets of the running ordergate: send it SIGQUIT");
    }
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
    let proxy_state = Arc::clone(&state);
    let expectations = Arc::new(Expectations::new(
        listen
            .iter()
            .map(|addr| (*addr, proxy_protocol))
            .chain(tls.iter().map(|t| (t.listen, t.proxy_protocol))),
        move |peer| {
            let snapshot = proxy_state.snapshot();
            Policy {
                trusted: snapshot.trust.trusts(peer),
                timeout: snapshot.limits.header_timeout,
            }
        },
        &state.metrics,
    ));
    let listeners = Listeners {
        listen: &listen,
        tls: &tls,
        read_buffer,
        state: &state,
    };
    // Only a listener that expects a PROXY header pays for reading one.
    if proxy_protocol != ProxyProtocol::Off {
        let app = ProxyProtocolApp::new(app, Arc::clone(&expectations));
        server.add_service(listeners.service(app, &expectations)?);
    } else {
        server.add_service(listeners.service(app, &expectations)?);
    }
    server.add_service(background_service(
        "listener check",
        ListenerCheck {
            state: Arc::clone(&state),
        },
    ));
    server.add_service(background_service(
        "health checker",
        HealthChecker::new(Arc::clone(&state) as Arc<dyn PoolSource>),
    ));
    server.add_service(background_service(
        "dns resolver",
        DnsResolver::new(Arc::clone(&state) as Arc<dyn DnsHost>),
    ));
    // Always started: a reload may turn tracing on.
    server.add_service(background_service(
        "trace exporter",
        crate::trace::ExportService::new(Arc::clone(&state.tracer)),
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
    let phases = server.watch_execution_phase();
    let drain_state = Arc::clone(&state);
    std::thread::Builder::new()
        .name("shutdown".to_string())
        .spawn(move || exit_when_drained(drain_state, phases, grace))
        .map_err(|e| format!("cannot start the shutdown thread: {e}"))?;
    server.run(RunArgs {
        shutdown_signal: Box::new(ShutdownWatchWithReadiness {
            state,
            delay: shutdown_delay,
        }),
    });
    Ok(())
}

/// The shopper listeners of the proxy service, plaintext and TLS.
struct Listeners<'a> {
    listen: &'a [SocketAddr],
    tls: &'a [TlsConfig],
    read_buffer: usize,
    state: &'a Arc<State>,
}

impl Listeners<'_> {
    /// The proxy service serving `app` on every listener; TLS listeners that
    /// expect a PROXY header read it before the handshake.
    fn service<A: ServerApp + Send + Sync + 'static>(
        &self,
        app: A,
        expectations: &Arc<Expectations>,
    ) -> Result<Service<A>, String> {
        let mut proxy = Service::new("ordergate proxy".to_string(), app);
        // Every shopper connection holds a read buffer of this size while idle.
        let buffers = L4BufferSettings {
            read: Some(self.read_buffer),
            write: None,
        };
        for addr in self.listen {
            proxy.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
        }
        for listener in self.tls {
            // The certificates were loaded and checked with the config; the
            // resolver picks one per handshake by SNI and takes a reloaded set.
            // pingora never reads the files itself (it would panic on a bad one).
            let resolver = self.state.cert_resolver(listener.listen).ok_or_else(|| {
                format!("TLS listener {}: no certificate loaded", listener.listen)
            })?;
            let mut settings = TlsSettings::intermediate("", "")
                .map_err(|e| format!("TLS listener {}: {e}", listener.listen))?;
            settings.set_cert_resolver(resolver);
            if listener.http2 {
                settings.enable_h2();
            }
            proxy.add_listener(
                ListenerConfig::tcp(listener.listen.to_string())
                    .tls(settings)
                    .l4_buffer(buffers),
            );
        }
        if self
            .tls
            .iter()
            .any(|t| t.proxy_protocol != ProxyProtocol::Off)
        {
            proxy
                .endpoints()
                .set_pre_tls_callback(Arc::new(BeforeTls(Arc::clone(expectations))));
        }
        Ok(proxy)
    }
}

/// Fails early, with a clear message, when a listen address is taken or not ours.
fn check_can_listen(addr: SocketAddr) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}
