//! A connection before HTTP: on a listener with `proxy_protocol`, the PROXY
//! header an L4 balancer sends first, read before anything else (before the
//! TLS handshake on a TLS listener) and taken as the connection's peer
//! address, so everything after it (`client`, rate limits, hashing, the
//! room, the access log) sees the shopper rather than the balancer.
//!
//! Only a trusted proxy (`server.trusted_proxies`) may send one: a
//! connection from any other peer on such a listener is closed at once, and
//! so is one whose header is malformed or does not arrive within
//! `server.header_timeout`. Each refusal is counted
//! (`ordergate_proxy_protocol_refused_total{reason}`) and logged at debug
//! level (a scanner must not flood the log).
//!
//! pingora 0.9 runs a hook before the TLS handshake ([`BeforeTls`]) but none
//! on plaintext listeners, so plaintext connections go through
//! [`ProxyProtocolApp`], which reads the header and then serves the
//! connection's requests itself. Listeners without the setting pay nothing:
//! the wrapper is installed only when some plaintext listener asks for it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream, UniqueID};
use pingora::server::ShutdownWatch;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::io::AsyncRead;

use crate::config::ProxyProtocol;
use crate::proxy_protocol;
use crate::telemetry::Metrics;

/// Why a connection was refused before HTTP: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// The peer is not a trusted proxy.
    Untrusted,
    /// The header did not follow the protocol, or the connection ended in it.
    Malformed,
    /// The header did not arrive within `server.header_timeout`.
    Timeout,
    /// The connection closed before sending anything (a balancer's TCP
    /// check); not counted.
    Empty,
}

impl Refused {
    const ALL: [Refused; 3] = [Refused::Untrusted, Refused::Malformed, Refused::Timeout];

    fn as_str(self) -> &'static str {
        match self {
            Refused::Untrusted => "untrusted",
            Refused::Malformed => "malformed",
            Refused::Timeout => "timeout",
            Refused::Empty => "empty",
        }
    }
}

/// `ordergate_proxy_protocol_refused_total`, registered once.
#[derive(Debug)]
struct RefusedVec(IntCounterVec);

impl RefusedVec {
    fn new(registry: &Registry) -> RefusedVec {
        let counter = IntCounterVec::new(
            Opts::new(
                "ordergate_proxy_protocol_refused_total",
                "Connections closed before HTTP on a proxy_protocol listener, by reason (untrusted peer, malformed header, timeout)",
            ),
            &["reason"],
        )
        .expect("static metric");
        registry
            .register(Box::new(counter.clone()))
            .expect("metric names are unique");
        for reason in Refused::ALL {
            counter.with_label_values(&[reason.as_str()]);
        }
        RefusedVec(counter)
    }
}

/// What the current config says of a peer: read for each new connection,
/// so a reload applies to the next one.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Whether the peer is a trusted proxy.
    pub trusted: bool,
    /// How long its header may take (`server.header_timeout`).
    pub timeout: Duration,
}

/// The PROXY protocol settings of a set of listeners, and the config's word
/// on each peer.
pub struct Expectations {
    listeners: Vec<(SocketAddr, ProxyProtocol)>,
    policy: Box<dyn Fn(IpAddr) -> Policy + Send + Sync>,
    refused: Arc<RefusedVec>,
}

impl Expectations {
    /// The listeners (their `listen` address and setting; `Off` ones are
    /// left out) and the policy for peers.
    pub fn new(
        listeners: impl IntoIterator<Item = (SocketAddr, ProxyProtocol)>,
        policy: impl Fn(IpAddr) -> Policy + Send + Sync + 'static,
        metrics: &Metrics,
    ) -> Expectations {
        Expectations {
            listeners: listeners
                .into_iter()
                .filter(|(_, expect)| *expect != ProxyProtocol::Off)
                .collect(),
            policy: Box::new(policy),
            refused: metrics.registered(RefusedVec::new),
        }
    }

    /// Whether any listener expects a header.
    pub fn any(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// What the listener a connection arrived on (by its local address)
    /// expects: `Off` for a listener without the setting.
    fn on(&self, local: Option<SocketAddr>) -> ProxyProtocol {
        let Some(local) = local else {
            return ProxyProtocol::Off;
        };
        self.listeners
            .iter()
            .find(|(listen, _)| {
                listen.port() == local.port()
                    && (listen.ip().is_unspecified() || listen.ip() == local.ip())
            })
            .map_or(ProxyProtocol::Off, |(_, expect)| *expect)
    }

    /// Reads the header a connection's listener expects and makes the
    /// client it names the connection's peer. `Err` closes the connection.
    async fn take_header<S>(&self, stream: &mut S) -> Result<(), Refused>
    where
        S: AsyncRead + Unpin + GetSocketDigest + UniqueID + ?Sized,
    {
        let digest = stream.get_socket_digest();
        let local = digest.as_ref().and_then(|d| inet(d.local_addr()));
        let expect = self.on(local);
        if expect == ProxyProtocol::Off {
            return Ok(());
        }
        let peer = digest.as_ref().and_then(|d| inet(d.peer_addr()));
        let result = self.read(stream, expect, peer).await;
        match result {
            Ok(Some(client)) => {
                // A fresh digest of the same socket, with the client as its
                // peer: the HTTP session reads the peer from it.
                let digest = SocketDigest::from_raw_fd(stream.id());
                let _ =
                    digest
                        .peer_addr
                        .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
                            client,
                        )));
                stream.set_socket_digest(digest);
                Ok(())
            }
            // A header that names nobody (a balancer's own check): the peer stays.
            Ok(None) => Ok(()),
            Err(Refused::Empty) => Err(Refused::Empty),
            Err(refused) => {
                self.refused.0.with_label_values(&[refused.as_str()]).inc();
                log::debug!(
                    "PROXY protocol: connection from {peer:?} refused ({})",
                    refused.as_str()
                );
                Err(refused)
            }
        }
    }

    async fn read<S>(
        &self,
        stream: &mut S,
        expect: ProxyProtocol,
        peer: Option<SocketAddr>,
    ) -> Result<Option<SocketAddr>, Refused>
    where
        S: AsyncRead + Unpin + ?Sized,
    {
        let Some(peer) = peer else {
            return Err(Refused::Untrusted);
        };
        let policy = (self.policy)(peer.ip());
        if !policy.trusted {
            return Err(Refused::Untrusted);
        }
        match tokio::time::timeout(policy.timeout, proxy_protocol::read_header(stream, expect))
            .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(why)) if why.is_empty() => Err(Refused::Empty),
            Ok(Err(why)) => {
                log::debug!("PROXY protocol from {peer}: {why}");
                Err(Refused::Malformed)
            }
            Err(_) => Err(Refused::Timeout),
        }
    }
}

fn inet(addr: Option<&pingora::protocols::l4::socket::SocketAddr>) -> Option<SocketAddr> {
    addr.and_then(|a| a.as_inet()).copied()
}

/// Plaintext listeners: reads the PROXY header, then serves the
/// connection's requests with the app inside.
pub struct ProxyProtocolApp<A> {
    inner: Arc<A>,
    expectations: Arc<Expectations>,
}

impl<A> ProxyProtocolApp<A> {
    /// `inner` behind the header `expectations` of the plaintext listeners.
    pub fn new(inner: A, expectations: Arc<Expectations>) -> ProxyProtocolApp<A> {
        ProxyProtocolApp {
            inner: Arc::new(inner),
            expectations,
        }
    }
}

#[async_trait]
impl<A> ServerApp for ProxyProtocolApp<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if stream.get_ssl_digest().is_some() {
            // TLS listeners took their header before the handshake.
            return self.inner.process_new(stream, shutdown).await;
        }
        self.expectations.take_header(&mut *stream).await.ok()?;
        // The header comes once per connection, so this serves every request
        // on it here rather than be called again for the next one.
        let mut next = self.inner.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.inner.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// TLS listeners: the header arrives before the handshake.
pub struct BeforeTls(pub Arc<Expectations>);

#[async_trait]
impl PreTlsProcess for BeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        self.0.take_header(stream).await.map_err(|refused| {
            pingora::Error::explain(
                pingora::ErrorType::AcceptError,
                format!("PROXY protocol: {}", refused.as_str()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expectations(listeners: &[(&str, ProxyProtocol)]) -> Expectations {
        Expectations::new(
            listeners
                .iter()
                .map(|(addr, expect)| (addr.parse().expect("addr"), *expect)),
            |_| Policy {
                trusted: true,
                timeout: Duration::from_secs(1),
            },
            &Metrics::new(),
        )
    }

    #[test]
    fn a_connection_gets_its_listeners_setting() {
        let e = expectations(&[
            ("0.0.0.0:8080", ProxyProtocol::V2),
            ("127.0.0.1:8081", ProxyProtocol::V1),
            ("127.0.0.1:8082", ProxyProtocol::Off),
        ]);
        assert!(e.any());
        let at = |addr: &str| e.on(Some(addr.parse().expect("addr")));
        assert_eq!(at("10.1.2.3:8080"), ProxyProtocol::V2, "any address");
        assert_eq!(at("127.0.0.1:8081"), ProxyProtocol::V1);
        assert_eq!(at("127.0.0.2:8081"), ProxyProtocol::Off, "another address");
        assert_eq!(at("127.0.0.1:8082"), ProxyProtocol::Off);
        assert_eq!(e.on(None), ProxyProtocol::Off);
        assert!(!expectations(&[("127.0.0.1:1", ProxyProtocol::Off)]).any());
    }
}
