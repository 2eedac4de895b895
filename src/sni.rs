//! Which certificate a TLS handshake gets. The client's server name (SNI)
//! picks the certificate whose subjectAltName holds it exactly, else the one
//! holding the wildcard of its parent (`*.shop.example` for
//! `www.shop.example`: one label, never `a.b.shop.example` nor
//! `shop.example`); no match, or no server name, gets the listener's default
//! certificate — or, with `strict_sni`, none, which ends the handshake.
//!
//! A listener's certificates are one [`CertSet`], built from the validated
//! config and swapped whole by a reload, so a handshake sees the old set or
//! the new one, never half of each. Listeners themselves are fixed at start.
//!
//! The pick runs on every handshake: two hash lookups on the name rustls
//! already lower-cased, an `ArcSwap` load and an `Arc` clone; nothing is
//! allocated unless a name arrives in upper case (rustls 0.23 never hands one
//! over, `hs.rs` lower-cases it first).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;

use crate::config::tls::CertKey;
use crate::config::TlsConfig;

/// A listener's certificates, indexed by the names they serve.
#[derive(Debug)]
pub struct CertSet {
    default: Arc<CertifiedKey>,
    /// Exact names (`www.shop.example`).
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Wildcards by the name they stand under: `*.shop.example` is at `shop.example`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    strict_sni: bool,
    /// Every certificate with its file, the default first (status and reload notes).
    served: Vec<Served>,
}

#[derive(Debug, Clone)]
struct Served {
    cert: PathBuf,
    cert_key: CertKey,
}

impl CertSet {
    /// The set a validated listener config describes. Validation already
    /// refused names claimed twice; were one claimed twice anyway, the default
    /// and then the earlier certificate in the list would keep it.
    pub fn new(config: &TlsConfig) -> CertSet {
        let default = Served {
            cert: config.cert.clone(),
            cert_key: config.cert_key.clone(),
        };
        let served: Vec<Served> = std::iter::once(default)
            .chain(config.certificates.iter().map(|c| Served {
                cert: c.cert.clone(),
                cert_key: c.cert_key.clone(),
            }))
            .collect();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for served in &served {
            for name in served.cert_key.names() {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut wildcard, parent),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_string())
                    .or_insert_with(|| served.cert_key.certified());
            }
        }
        CertSet {
            default: config.cert_key.certified(),
            exact,
            wildcard,
            strict_sni: config.strict_sni,
            served,
        }
    }

    /// The certificate for a handshake that asked for `server_name`; `None`
    /// refuses the handshake.
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let fallback = || (!self.strict_sni).then(|| Arc::clone(&self.default));
        // A listener with only its default certificate needs no lookup.
        if self.served.len() == 1 && !self.strict_sni {
            return fallback();
        }
        let Some(name) = server_name else {
            return fallback();
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if let Some(found) = self.exact.get(name) {
            return Some(Arc::clone(found));
        }
        let parent = match name.split_once('.') {
            Some((label, parent)) if !label.is_empty() && !parent.is_empty() => parent,
            _ => return fallback(),
        };
        match self.wildcard.get(parent) {
            Some(found) => Some(Arc::clone(found)),
            None => fallback(),
        }
    }

    /// What `/status` shows: files, names and expiry, no key material.
    pub fn status(&self, listen: SocketAddr) -> ListenerStatus {
        ListenerStatus {
            listen,
            strict_sni: self.strict_sni,
            certificates: self
                .served
                .iter()
                .enumerate()
                .map(|(i, served)| CertificateStatus {
                    cert: served.cert.display().to_string(),
                    default: i == 0,
                    names: served.cert_key.names().to_vec(),
                    not_after: chrono::DateTime::<chrono::Utc>::from(served.cert_key.expires())
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                })
                .collect(),
        }
    }

    /// What serving `new` instead of `self` changes, for the reload notes.
    fn changes(&self, new: &CertSet, listen: SocketAddr) -> Vec<String> {
        let mut notes = Vec::new();
        let at = format!("TLS listener {listen}");
        if let (Some(old), Some(now)) = (self.served.first(), new.served.first()) {
            if old.cert != now.cert || old.cert_key != now.cert_key {
                notes.push(format!(
                    "{at}: serving the new certificate from {} as the default (valid until {})",
                    now.cert.display(),
                    now.cert_key.not_after()
                ));
            }
        }
        let by_name =
            |set: &CertSet| -> Vec<Served> { set.served.iter().skip(1).cloned().collect() };
        let (old, now) = (by_name(self), by_name(new));
        for served in &now {
            let names = served.cert_key.names().join(", ");
            match old.iter().find(|o| o.cert == served.cert) {
                None => notes.push(format!(
                    "{at}: now serving {} for {names} (valid until {})",
                    served.cert.display(),
                    served.cert_key.not_after()
                )),
                Some(o) if o.cert_key != served.cert_key => notes.push(format!(
                    "{at}: serving the new certificate from {} for {names} (valid until {})",
                    served.cert.display(),
                    served.cert_key.not_after()
                )),
                Some(_) => {}
            }
        }
        for gone in old.iter().filter(|o| !now.iter().any(|n| n.cert == o.cert)) {
            notes.push(format!(
                "{at}: no longer serving {} (for {})",
                gone.cert.display(),
                gone.cert_key.names().join(", ")
            ));
        }
        if self.strict_sni != new.strict_sni {
            notes.push(format!(
                "{at}: strict_sni is now {}",
                if new.strict_sni {
                    "on: a handshake without a known server name is refused"
                } else {
                    "off: a handshake without a known server name gets the default certificate"
                }
            ));
        }
        notes
    }
}

/// A TLS listener's certificates in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerStatus {
    /// The listen address.
    pub listen: SocketAddr,
    /// Whether a handshake without a known server name is refused.
    pub strict_sni: bool,
    /// The default certificate first, then those chosen by name.
    pub certificates: Vec<CertificateStatus>,
}

/// One certificate in `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    /// The certificate file.
    pub cert: String,
    /// Whether it is the listener's default.
    pub default: bool,
    /// The names it serves (DNS names of its subjectAltName).
    pub names: Vec<String>,
    /// When it expires, RFC 3339.
    pub not_after: String,
}

/// Hands every TLS handshake of a listener its certificate; a reload swaps
/// the whole set.
#[derive(Debug)]
pub struct CertResolver {
    listen: SocketAddr,
    current: ArcSwap<CertSet>,
}

impl CertResolver {
    /// A resolver serving the certificates of `config`.
    pub fn new(config: &TlsConfig) -> CertResolver {
        CertResolver {
            listen: config.listen,
            current: ArcSwap::from_pointee(CertSet::new(config)),
        }
    }

    /// Serves the certificates of `config` from the next handshake on;
    /// returns what changed, in words for the reload notes.
    pub fn replace(&self, config: &TlsConfig) -> Vec<String> {
        let new = Arc::new(CertSet::new(config));
        let old = self.current.swap(Arc::clone(&new));
        old.changes(&new, self.listen)
    }

    /// The certificates served now.
    pub fn status(&self) -> ListenerStatus {
        self.current.load().status(self.listen)
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsCertificate;

    struct Files(PathBuf);

    impl Files {
        fn new(name: &str) -> Files {
            let dir =
                std::env::temp_dir().join(format!("ordergate-sni-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            Files(dir)
        }

        /// A certificate for `names`, loaded as the config would.
        fn cert(&self, file: &str, names: &[&str]) -> (PathBuf, CertKey) {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .expect("params");
            let cert = params.self_signed(&key).expect("certificate");
            let cert_path = self.0.join(format!("{file}.pem"));
            let key_path = self.0.join(format!("{file}.key"));
            std::fs::write(&cert_path, cert.pem()).expect("write");
            std::fs::write(&key_path, key.serialize_pem()).expect("write");
            let loaded = crate::config::tls::load(&cert_path, &key_path).expect("loads");
            (cert_path, loaded)
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn listener(
        default: &(PathBuf, CertKey),
        more: &[&(PathBuf, CertKey)],
        strict: bool,
    ) -> TlsConfig {
        TlsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            cert: default.0.clone(),
            key: default.0.with_extension("key"),
            cert_key: default.1.clone(),
            certificates: more
                .iter()
                .map(|(cert, cert_key)| TlsCertificate {
                    cert: cert.clone(),
                    key: cert.with_extension("key"),
                    cert_key: cert_key.clone(),
                })
                .collect(),
            strict_sni: strict,
            http2: true,
            proxy_protocol: crate::config::ProxyProtocol::Off,
        }
    }

    /// Which of `certs` `set` serves to `name` (its index), or None.
    fn which(set: &CertSet, name: Option<&str>, certs: &[&(PathBuf, CertKey)]) -> Option<usize> {
        let picked = set.pick(name)?;
        certs
            .iter()
            .position(|(_, c)| c.certified().cert == picked.cert)
    }

    #[test]
    fn exact_names_beat_wildcards_which_cover_one_label_and_the_rest_get_the_default() {
        let files = Files::new("pick");
        let default = files.cert("default", &["shop.test"]);
        let www = files.cert("www", &["www.shop.test"]);
        let api = files.cert("api", &["*.api.shop.test"]);
        let exact_api = files.cert("exact-api", &["orders.api.shop.test"]);
        let all = [&default, &www, &api, &exact_api];
        let set = CertSet::new(&listener(&default, &[&www, &api, &exact_api], false));
        for (name, expected) in [
            (Some("www.shop.test"), 1),
            (Some("WWW.Shop.Test"), 1),
            (Some("www.shop.test."), 1),
            (Some("x.api.shop.test"), 2),
            (Some("orders.api.shop.test"), 3),
            (Some("a.b.api.shop.test"), 0),
            (Some("api.shop.test"), 0),
            (Some("shop.test"), 0),
            (Some("unknown.test"), 0),
            (Some(".api.shop.test"), 0),
            (None, 0),
        ] {
            assert_eq!(which(&set, name, &all), Some(expected), "{name:?}");
        }
    }

    #[test]
    fn strict_sni_refuses_unknown_and_missing_names() {
        let files = Files::new("strict");
        let default = files.cert("default", &["shop.test"]);
        let www = files.cert("www", &["www.shop.test"]);
        let all = [&default, &www];
        let set = CertSet::new(&listener(&default, &[&www], true));
        assert_eq!(which(&set, Some("www.shop.test"), &all), Some(1));
        assert_eq!(which(&set, Some("shop.test"), &all), Some(0));
        assert!(set.pick(Some("unknown.test")).is_none());
        assert!(set.pick(None).is_none());
    }

    #[test]
    fn a_replaced_set_is_served_whole_and_the_notes_say_what_changed() {
        let files = Files::new("replace");
        let default = files.cert("default", &["shop.test"]);
        let www = files.cert("www", &["www.shop.test"]);
        let api = files.cert("api", &["*.api.shop.test"]);
        let resolver = CertResolver::new(&listener(&default, &[&www, &api], false));
        let renewed = files.cert("www", &["www.shop.test"]);
        let added = files.cert("new", &["new.shop.test"]);
        let notes = resolver.replace(&listener(&default, &[&renewed, &added], true));
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes[0].contains("new certificate from") && notes[0].contains("www.pem"));
        assert!(notes[1].contains("now serving") && notes[1].contains("new.shop.test"));
        assert!(notes[2].contains("no longer serving") && notes[2].contains("api.pem"));
        assert!(notes[3].contains("strict_sni is now on"));
        let set = resolver.current.load();
        let all = [&default, &renewed, &added, &api];
        assert_eq!(which(&set, Some("www.shop.test"), &all), Some(1));
        assert_eq!(which(&set, Some("new.shop.test"), &all), Some(2));
        assert!(set.pick(Some("x.api.shop.test")).is_none());
        let status = resolver.status();
        let names: Vec<&[String]> = status
            .certificates
            .iter()
            .map(|c| c.names.as_slice())
            .collect();
        assert_eq!(
            names,
            [
                &["shop.test".to_string()][..],
                &["www.shop.test".to_string()],
                &["new.shop.test".to_string()]
            ]
        );
        assert!(status.certificates[0].default && !status.certificates[1].default);
        assert!(resolver
            .replace(&listener(&default, &[&renewed, &added], true))
            .is_empty());
    }
}
