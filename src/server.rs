//! Starting the pingora server for a validated config.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

use crate::config::Config;
use crate::proxy::Proxy;
use crate::state::State;
use crate::upstream::checker::HealthChecker;

/// Serves a config until the process is told to stop. Returns only on a
/// startup error; otherwise pingora exits the process when it shuts down.
pub fn run(config: Config) -> Result<(), String> {
    for addr in &config.server.listen {
        check_can_listen(*addr)?;
    }
    let first_port = config.server.listen.first().map_or(0, |a| a.port());
    let grace = config.server.grace_period.as_secs();
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace.max(1)),
        // Per listener port, so several ordergate processes can share a machine.
        pid_file: format!("/tmp/ordergate-{first_port}.pid"),
        upgrade_sock: format!("/tmp/ordergate-{first_port}-upgrade.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let state = Arc::new(State::new(&config));
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy::new(Arc::clone(&state)),
        "ordergate proxy",
    );
    for addr in &config.server.listen {
        proxy.add_tcp(&addr.to_string());
    }
    server.add_service(proxy);
    server.add_service(pingora::services::background::background_service(
        "health checker",
        HealthChecker::new(Arc::clone(&state)),
    ));
    log::info!(
        "ordergate listening on {}",
        config
            .server
            .listen
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    server.run_forever()
}

/// Fails early, with a clear message, when a listen address is taken or not ours.
fn check_can_listen(addr: SocketAddr) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}
