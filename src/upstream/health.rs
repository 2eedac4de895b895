//! Active health checks: the per-backend state machine (rise and fall thresholds)
//! and the probes themselves (HTTP/1.1 or TCP connect; over the pool's TLS for
//! a pool with `[pools.tls]`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::connectors::TransportConnector;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthConfig, Probe};

/// What active checks know of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No probe has passed yet (a new backend).
    Unproven,
    /// Probes pass.
    Healthy,
    /// Probes fail.
    Unhealthy,
}

impl Health {
    /// Lower-case name for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unproven => "unproven",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Consecutive probe results and the health they add up to.
#[derive(Debug, Clone)]
pub struct HealthState {
    health: Health,
    passes: u32,
    failures: u32,
}

impl HealthState {
    /// A new backend's state.
    pub fn new() -> HealthState {
        HealthState {
            health: Health::Unproven,
            passes: 0,
            failures: 0,
        }
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Counts one probe result; returns the new health when it changed. A new
    /// backend becomes healthy on its first passing probe; after that, it takes
    /// `healthy_threshold` passes in a row to come back and `unhealthy_threshold`
    /// failures in a row to go down.
    pub fn record(&mut self, passed: bool, config: &HealthConfig) -> Option<Health> {
        let next = if passed {
            self.passes += 1;
            self.failures = 0;
            match self.health {
                Health::Unproven => Health::Healthy,
                Health::Unhealthy if self.passes >= config.healthy_threshold => Health::Healthy,
                other => other,
            }
        } else {
            self.failures += 1;
            self.passes = 0;
            if self.failures >= config.unhealthy_threshold {
                Health::Unhealthy
            } else {
                self.health
            }
        };
        let changed = next != self.health;
        self.health = next;
        changed.then_some(next)
    }
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState::new()
    }
}

/// The wait before a backend's next probe: the interval plus a random share of
/// the jitter, so probes of many backends drift apart.
pub fn next_probe_delay(config: &HealthConfig) -> Duration {
    let jitter_nanos = config.jitter.as_nanos().min(u128::from(u64::MAX)) as u64;
    config.interval + Duration::from_nanos(fastrand::u64(0..=jitter_nanos))
}

/// Where a probe connects.
pub enum Target {
    /// The backend's address, plain TCP.
    Tcp(SocketAddr),
    /// The backend as the pool's requests reach it: through pingora's
    /// connector with the pool's TLS (name, certificate checks, CA, client
    /// certificate), so a probe passes only where a request could connect.
    Tls {
        /// The pool's peer for the backend.
        peer: Box<HttpPeer>,
        /// The connector (it holds the system's CA certificates).
        connector: Arc<TransportConnector>,
        /// The `Host` of an HTTP probe that sets none: the pool's `tls.sni`,
        /// else the backend's address.
        host: String,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "Tcp({addr})"),
            Target::Tls { peer, .. } => write!(f, "Tls({peer})"),
        }
    }
}

/// Probes a backend once; `Ok` when it passes, `Err` says why not.
pub async fn probe(target: &Target, config: &HealthConfig) -> Result<(), String> {
    match tokio::time::timeout(config.timeout, probe_inner(target, &config.probe)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    }
}

async fn probe_inner(target: &Target, probe: &Probe) -> Result<(), String> {
    match target {
        Target::Tcp(addr) => {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            exchange(stream, &addr.to_string(), probe).await
        }
        Target::Tls {
            peer,
            connector,
            host,
        } => {
            // A TCP probe passes on a finished handshake: what a request needs.
            let stream = connector
                .new_stream(peer.as_ref())
                .await
                .map_err(|e| format!("TLS connect: {e}"))?;
            exchange(stream, host, probe).await.map_err(|why| {
                if why == "status 400" {
                    // nginx's answer to a missing or refused client certificate.
                    format!("{why} (a TLS backend answers 400 when it wants a client certificate it did not get or accept: check tls.client_cert)")
                } else {
                    why
                }
            })
        }
    }
}

/// The HTTP probe's request and the status of its answer, on a connected stream.
async fn exchange<S>(mut stream: S, default_host: &str, probe: &Probe) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Probe::Http {
        method,
        path,
        host,
        expect_status,
    } = probe
    else {
        return Ok(());
    };
    let host = host.as_deref().unwrap_or(default_host);
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ordergate-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    stream.flush().await.map_err(|e| format!("send: {e}"))?;
    // The status line fits in the first read of a sane server; read a little more
    // only when it does not.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 || head.len() > 4096 {
            return Err("connection closed before a status line".to_string());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = parse_status(&head).ok_or("the answer is not HTTP")?;
    if expect_status.contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rise: u32, fall: u32) -> HealthConfig {
        HealthConfig {
            probe: Probe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(200),
            jitter: Duration::from_millis(100),
            healthy_threshold: rise,
            unhealthy_threshold: fall,
            start_healthy: false,
        }
    }

    #[test]
    fn first_pass_proves_a_new_backend_then_thresholds_apply() {
        let config = config(2, 3);
        let mut state = HealthState::new();
        assert_eq!(state.record(true, &config), Some(Health::Healthy));
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(false, &config), None);
        assert_eq!(
            state.record(true, &config),
            None,
            "a pass resets the failure count"
        );
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.record(false, &config), Some(Health::Unhealthy));
        assert_eq!(state.record(true, &config), None);
        assert_eq!(state.record(true, &config), Some(Health::Healthy));
    }

    #[test]
    fn an_unproven_backend_that_fails_goes_down() {
        let config = config(2, 2);
        let mut state = HealthState::new();
        assert_eq!(state.record(false, &config), None);
        assert_eq!(state.health(), Health::Unproven);
        assert_eq!(state.record(false, &config), Some(Health::Unhealthy));
    }

    #[test]
    fn probe_delay_stays_within_interval_plus_jitter() {
        let config = config(1, 1);
        let delays: Vec<Duration> = (0..1000).map(|_| next_probe_delay(&config)).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= config.interval && *d <= config.interval + config.jitter));
        let spread = delays.iter().max().copied().unwrap_or_default()
            - delays.iter().min().copied().unwrap_or_default();
        assert!(
            spread > Duration::from_millis(80),
            "jitter spreads probes: {spread:?}"
        );
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Busy\r\nx: y"), Some(503));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
    }

    #[tokio::test]
    async fn http_probe_checks_the_status_and_tcp_probe_the_connection() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for status in [200, 503] {
                if let Ok((mut stream, _)) = listener.accept().await {
                    let mut buf = [0u8; 512];
                    let _ = stream.read(&mut buf).await;
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            }
        });
        let http = HealthConfig {
            probe: Probe::Http {
                method: http::Method::GET,
                path: "/health".into(),
                host: None,
                expect_status: vec![200],
            },
            ..config(1, 1)
        };
        let target = Target::Tcp(addr);
        assert_eq!(probe(&target, &http).await, Ok(()));
        assert_eq!(probe(&target, &http).await, Err("status 503".to_string()));
        let closed = Target::Tcp(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert!(probe(&closed, &config(1, 1)).await.is_err());
    }
}
