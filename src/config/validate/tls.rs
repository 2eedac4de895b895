//! `[[server.tls]]`: TLS listeners, each with a default certificate and more
//! chosen by the client's server name (SNI). Every file is loaded and checked
//! by `config::tls::load`; then the names: a certificate chosen by name must
//! have some, and no name may belong to two certificates of one listener,
//! because which of them a shopper gets would be a guess.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::values::socket_addr;
use super::Problems;
use crate::config::file::{FileTls, FileTlsCertificate};
use crate::config::tls::CertKey;
use crate::config::{TlsCertificate, TlsConfig, TrustConfig};

/// Every TLS listener that passed its checks; `seen` holds the shopper
/// listeners parsed so far, so an address used twice is reported.
pub(super) fn listeners(
    file: &[FileTls],
    base: &Path,
    seen: &mut HashSet<SocketAddr>,
    trust: &TrustConfig,
    problems: &mut Problems,
) -> Vec<TlsConfig> {
    file.iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            listener(
                &format_args!("server.tls[{i}]"),
                entry,
                base,
                seen,
                trust,
                problems,
            )
        })
        .collect()
}

fn listener(
    at: &dyn fmt::Display,
    entry: &FileTls,
    base: &Path,
    seen: &mut HashSet<SocketAddr>,
    trust: &TrustConfig,
    problems: &mut Problems,
) -> Option<TlsConfig> {
    let proxy_protocol = super::trust::proxy_protocol(
        &format_args!("{at}.proxy_protocol"),
        entry.proxy_protocol.as_deref(),
        trust,
        problems,
    );
    let mut missing = false;
    for (key, value) in [
        ("listen", &entry.listen),
        ("cert", &entry.cert),
        ("key", &entry.key),
    ] {
        if value.is_empty() {
            problems.add(
                format!("{at}.{key}"),
                "is required: a TLS listener needs listen, cert and key (the default certificate)",
            );
            missing = true;
        }
    }
    let listen = if entry.listen.is_empty() {
        None
    } else {
        match socket_addr(&entry.listen) {
            Ok(addr) if seen.insert(addr) => Some(addr),
            Ok(_) => {
                problems.add(
                    format!("{at}.listen"),
                    format!("{:?} is already a listener", entry.listen),
                );
                None
            }
            Err(message) => {
                problems.add(format!("{at}.listen"), message);
                None
            }
        }
    };
    let default = if missing {
        None
    } else {
        load(at, &entry.cert, &entry.key, base, problems)
    };
    // The certificates are checked even when the default is not, so that
    // `check` reports every bad file at once.
    let mut certificates = Vec::new();
    let mut all_loaded = true;
    for (j, file) in entry.certificates.iter().flatten().enumerate() {
        let at = format!("{at}.certificates[{j}]");
        match certificate(&at, file, base, problems) {
            Some(certificate) => certificates.push((at, certificate)),
            None => all_loaded = false,
        }
    }
    let strict_sni = entry.strict_sni.unwrap_or(false);
    let (default, listen) = (default?, listen?);
    let (cert, key, cert_key) = default;
    check_names(at, (&cert, &cert_key), &certificates, strict_sni, problems);
    all_loaded.then(|| TlsConfig {
        listen,
        cert,
        key,
        cert_key,
        certificates: certificates.into_iter().map(|(_, c)| c).collect(),
        strict_sni,
        http2: entry.http2.unwrap_or(true),
        proxy_protocol,
    })
}

/// A certificate and key, loaded and checked; problems are reported at
/// `{at}.cert` or `{at}.key`.
fn load(
    at: &dyn fmt::Display,
    cert: &str,
    key: &str,
    base: &Path,
    problems: &mut Problems,
) -> Option<(PathBuf, PathBuf, CertKey)> {
    let cert = base.join(cert);
    let key = base.join(key);
    match crate::config::tls::load(&cert, &key) {
        Ok(cert_key) => Some((cert, key, cert_key)),
        Err((file, message)) => {
            problems.add(format!("{at}.{}", file.key_name()), message);
            None
        }
    }
}

fn certificate(
    at: &dyn fmt::Display,
    file: &FileTlsCertificate,
    base: &Path,
    problems: &mut Problems,
) -> Option<TlsCertificate> {
    let mut missing = false;
    for (key, value) in [("cert", &file.cert), ("key", &file.key)] {
        if value.is_empty() {
            problems.add(
                format!("{at}.{key}"),
                "is required: a certificate chosen by SNI needs cert and key",
            );
            missing = true;
        }
    }
    if missing {
        return None;
    }
    let (cert, key, cert_key) = load(at, &file.cert, &file.key, base, problems)?;
    if cert_key.names().is_empty() {
        let hint = if cert_key.unusable_names().is_empty() {
            format!(
                "{} has no DNS name in its subjectAltName, so no server name (SNI) can choose it (the subject's common name is not used)",
                cert.display()
            )
        } else {
            format!(
                "{}: no DNS name of its subjectAltName can match a server name ({}); a wildcard must be the whole leftmost label, e.g. \"*.shop.example\"",
                cert.display(),
                cert_key.unusable_names().join(", ")
            )
        };
        problems.add(
            format!("{at}.cert"),
            format!("{hint}; reissue it with the names it serves (openssl: -addext \"subjectAltName=DNS:www.shop.example\"), or make it the listener's default (server.tls.cert)"),
        );
        return None;
    }
    Some(TlsCertificate {
        cert,
        key,
        cert_key,
    })
}

/// A name (exact or wildcard) claimed by two certificates of the listener is a
/// problem naming both; so is a strict listener whose default has no names
/// (no handshake could get it).
fn check_names(
    at: &dyn fmt::Display,
    default: (&Path, &CertKey),
    certificates: &[(String, TlsCertificate)],
    strict_sni: bool,
    problems: &mut Problems,
) {
    let default_at = format!("{at}.cert");
    let all = std::iter::once((default_at.as_str(), default.0, default.1)).chain(
        certificates
            .iter()
            .map(|(at, c)| (at.as_str(), c.cert.as_path(), &c.cert_key)),
    );
    let mut owners: HashMap<&str, (&str, &Path)> = HashMap::new();
    for (cert_at, path, cert_key) in all {
        for name in cert_key.names() {
            match owners.get(name.as_str()) {
                // The default comes first, so the second claimant is always
                // a certificate of the list.
                Some((owner_at, owner_path)) => problems.add(
                    format!("{cert_at}.cert"),
                    format!(
                        "{} and {} ({owner_at}) both claim {name:?}; one name is served by one certificate: leave it in only one of them",
                        path.display(),
                        owner_path.display()
                    ),
                ),
                None => {
                    owners.insert(name, (cert_at, path));
                }
            }
        }
    }
    if strict_sni && default.1.names().is_empty() {
        problems.add(
            format!("{at}.strict_sni"),
            format!(
                "is true, but the default certificate {} has no DNS name in its subjectAltName, so no handshake could get it; give it its names or set strict_sni = false",
                default.0.display()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "ordergate-validate-tls-{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            Dir(dir)
        }

        /// `{file}.pem` and `{file}.key` for a certificate with these SAN entries.
        fn cert(&self, file: &str, names: &[&str]) {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .expect("params");
            if names.is_empty() {
                params
                    .subject_alt_names
                    .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
            }
            let cert = params.self_signed(&key).expect("certificate");
            std::fs::write(self.0.join(format!("{file}.pem")), cert.pem()).expect("write");
            std::fs::write(self.0.join(format!("{file}.key")), key.serialize_pem()).expect("write");
        }

        fn errors(&self, tls: &str) -> Vec<String> {
            let text = format!(
                "[server]\nlisten = [\"127.0.0.1:8080\"]\n{tls}\n[[pools]]\nname = \"p\"\nbackends = [ {{ addr = \"127.0.0.1:9001\" }} ]\n[[routes]]\nname = \"r\"\npool = \"p\"\n"
            );
            match Config::from_toml_in(&text, &self.0) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.iter().map(ToString::to_string).collect(),
            }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const LISTENER: &str =
        "[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncert = \"default.pem\"\nkey = \"default.key\"\n";

    #[test]
    fn a_listener_with_certificates_by_name_loads() {
        let dir = Dir::new("good");
        dir.cert("default", &["shop.test"]);
        dir.cert("www", &["www.shop.test"]);
        dir.cert("api", &["*.api.shop.test", "api.shop.test"]);
        let text = format!(
            "{LISTENER}strict_sni = true\n[[server.tls.certificates]]\ncert = \"www.pem\"\nkey = \"www.key\"\n[[server.tls.certificates]]\ncert = \"api.pem\"\nkey = \"api.key\"\n"
        );
        assert_eq!(dir.errors(&text), Vec::<String>::new());
    }

    #[test]
    fn missing_keys_unusable_names_and_a_nameless_strict_default_are_problems() {
        let dir = Dir::new("bad");
        dir.cert("default", &[]);
        dir.cert("partial", &["w*.shop.test"]);
        let text = format!(
            "{LISTENER}strict_sni = true\n[[server.tls.certificates]]\ncert = \"partial.pem\"\n[[server.tls.certificates]]\ncert = \"partial.pem\"\nkey = \"partial.key\"\n"
        );
        let errors = dir.errors(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(errors[0].starts_with("server.tls[0].certificates[0].key: is required"));
        assert!(
            errors[1].starts_with("server.tls[0].certificates[1].cert: ")
                && errors[1].contains("(w*.shop.test)")
                && errors[1].contains("whole leftmost label"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].starts_with("server.tls[0].strict_sni: is true, but the default certificate"),
            "{}",
            errors[2]
        );
    }
}
