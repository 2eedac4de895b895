//! TLS to a pool's backends, as pingora takes it on each peer: the name (sent
//! as SNI, and the name the certificate must carry), whether certificates are
//! checked, the CA certificates and the client certificate.
//!
//! pingora reuses an idle upstream connection for a peer of the same hash,
//! which covers the scheme, the SNI, the client certificate's serial and the
//! verify flags, but not the per-peer CA. So after a reload that changes
//! `ca_file`, or renews a client certificate under the same serial, a
//! connection checked under the old settings would serve the new ones; the
//! peer's `group_key` (pingora's own way to keep connections apart) carries a
//! fingerprint of every setting and file, so it never does.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use crate::config::UpstreamTlsConfig;

/// A pool's TLS settings, built once per snapshot and put on every peer.
pub struct PeerTls {
    config: UpstreamTlsConfig,
    /// Empty when no name is set (`verify = false` only).
    sni: String,
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
    group_key: u64,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("config", &self.config)
            .field("group_key", &self.group_key)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// The pingora form of validated settings. Validation parsed every
    /// certificate with the parser pingora uses and checked the key as
    /// pingora reads it, so pingora's constructors (which panic on bad input)
    /// cannot here.
    pub fn new(config: &UpstreamTlsConfig) -> PeerTls {
        let ca = config.ca.as_ref().map(|bundle| {
            let certs: Vec<WrappedX509> = bundle
                .certs
                .iter()
                .map(|der| WrappedX509::new(der.to_vec(), parse_x509))
                .collect();
            Arc::<CaType>::from(certs)
        });
        let client = config.client.as_ref().map(|client| {
            let chain = client.chain.iter().map(|der| der.to_vec()).collect();
            Arc::new(CertKey::new(chain, client.key_der().to_vec()))
        });
        PeerTls {
            sni: config.sni.clone().unwrap_or_default(),
            ca,
            client,
            group_key: fingerprint(config),
            config: config.clone(),
        }
    }

    /// The settings as the config file gave them, for `/status`.
    pub fn config(&self) -> &UpstreamTlsConfig {
        &self.config
    }

    /// A TLS peer for `addr` with these settings; `name` is the DNS name the
    /// address was resolved from, the SNI when `tls.sni` sets none.
    pub fn peer(&self, addr: std::net::SocketAddr, name: Option<&str>) -> HttpPeer {
        // Without any name (verify = false only) the backend's IP stands in:
        // pingora 0.9.1's rustls connector means an empty name to skip SNI and
        // every check, but then fails every handshake parsing it as a server
        // name. rustls sends no SNI for an IP, and nothing is checked anyway.
        let sni = match (self.sni.is_empty(), name) {
            (false, _) => self.sni.clone(),
            (true, Some(name)) => name.to_string(),
            (true, None) => addr.ip().to_string(),
        };
        let mut peer = HttpPeer::new(addr, true, sni);
        peer.options.verify_cert = self.config.verify;
        peer.options.verify_hostname = self.config.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group_key;
        peer
    }
}

/// A hash of everything that decides what a connection was checked against
/// and what it showed the backend.
fn fingerprint(config: &UpstreamTlsConfig) -> u64 {
    let mut hasher = DefaultHasher::new();
    config.sni.hash(&mut hasher);
    config.verify.hash(&mut hasher);
    for der in config.ca.iter().flat_map(|ca| ca.certs.iter()) {
        der.as_ref().hash(&mut hasher);
    }
    for der in config.client.iter().flat_map(|c| c.chain.iter()) {
        der.as_ref().hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use pingora::upstreams::peer::Peer;

    struct Files(std::path::PathBuf);

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A CA file, a client certificate and its key in a fresh directory.
    fn files(name: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("ordergate-peer-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (file, names) in [("ca", "ca.test"), ("other-ca", "ca.test"), ("client", "c")] {
            let pair = rcgen::generate_simple_self_signed(vec![names.to_string()]).expect("cert");
            std::fs::write(dir.join(format!("{file}.pem")), pair.cert.pem()).expect("write");
            std::fs::write(
                dir.join(format!("{file}.key")),
                pair.signing_key.serialize_pem(),
            )
            .expect("write");
        }
        Files(dir)
    }

    fn tls(files: &Files, table: &str) -> UpstreamTlsConfig {
        let text = format!(
            "[[pools]]\nname = \"p\"\nbackends = [ {{ addr = \"orders.internal:9443\" }} ]\ntls = {table}\n[[routes]]\nname = \"r\"\npool = \"p\"\n"
        );
        let config = Config::from_toml_in(&text, &files.0).unwrap_or_else(|e| panic!("{e:?}"));
        config.pools[0].tls.clone().expect("tls")
    }

    #[test]
    fn peers_carry_every_setting_and_connections_of_other_settings_stay_apart() {
        let files = files("apply");
        let full = tls(
            &files,
            "{ sni = \"orders.internal\", ca_file = \"ca.pem\", client_cert = \"client.pem\", client_key = \"client.key\" }",
        );
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9443));
        let peer = PeerTls::new(&full).peer(addr, None);
        assert!(peer.tls());
        assert_eq!(peer.sni(), "orders.internal");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.get_ca().map(|ca| ca.len()), Some(1));
        assert!(peer.get_client_cert_key().is_some());

        // Only the CA differs: pingora's own hash would not tell them apart.
        let other_ca = tls(
            &files,
            "{ sni = \"orders.internal\", ca_file = \"other-ca.pem\", client_cert = \"client.pem\", client_key = \"client.key\" }",
        );
        let other = PeerTls::new(&other_ca).peer(addr, None);
        assert_ne!(peer.reuse_hash(), other.reuse_hash());
        assert_eq!(
            peer.reuse_hash(),
            PeerTls::new(&full).peer(addr, None).reuse_hash(),
            "the same settings share connections"
        );

        let unchecked = PeerTls::new(&tls(&files, "{ verify = false }")).peer(addr, None);
        assert!(unchecked.tls());
        assert_eq!(
            unchecked.sni(),
            "127.0.0.1",
            "a name rustls can parse, sent as no SNI"
        );
        assert!(!unchecked.options.verify_cert);
        assert!(unchecked.get_ca().is_none() && unchecked.get_client_cert_key().is_none());

        // A backend resolved from a name is reached with that name, unless
        // tls.sni sets one for the pool.
        let by_name = PeerTls::new(&tls(&files, "{ ca_file = \"ca.pem\" }"));
        let named = by_name.peer(addr, Some("orders.internal"));
        assert_eq!(named.sni(), "orders.internal");
        assert!(named.options.verify_cert && named.options.verify_hostname);
        assert_ne!(
            named.reuse_hash(),
            by_name.peer(addr, Some("other.internal")).reuse_hash(),
            "connections checked for one name never serve another"
        );
        assert_eq!(
            PeerTls::new(&full).peer(addr, Some("other.internal")).sni(),
            "orders.internal"
        );
    }
}
