//! Certificates and keys of the TLS listeners.
//!
//! They are loaded and checked when the config is validated — the certificate
//! parses, the key parses, the key belongs to the certificate, the certificate
//! is valid today — so `ordergate check`, the start and every reload catch a bad
//! file with its name and the reason, and nothing later can panic on one. The
//! DNS names of the certificate's subjectAltName are read here too: they are
//! the server names (SNI) it is chosen for. A listener serves through
//! [`crate::sni::CertResolver`], which a reload swaps: a renewed certificate
//! (same paths, new files) is served from the next handshake on.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate chain with its private key, checked to belong together.
#[derive(Clone)]
pub struct CertKey {
    certified: Arc<CertifiedKey>,
    /// When the end-entity certificate expires, as the certificate says it.
    not_after: String,
    /// The same instant, for machines (`/status`).
    expires: SystemTime,
    /// The server names it is chosen for, from its subjectAltName.
    names: Vec<String>,
    /// DNS names of its subjectAltName that no server name can match.
    unusable: Vec<String>,
}

impl CertKey {
    /// The chain and key, ready for rustls.
    pub fn certified(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }

    /// When the certificate expires (e.g. `Nov 29 11:00:00 2027 +00:00`).
    pub fn not_after(&self) -> &str {
        &self.not_after
    }

    /// When the certificate expires, as a time.
    pub fn expires(&self) -> SystemTime {
        self.expires
    }

    /// The DNS names of the end-entity certificate's subjectAltName, in lower
    /// case without a trailing dot, each once, in the certificate's order:
    /// exact names (`www.shop.example`) and wildcards (`*.shop.example`). The
    /// subject's common name is not one of them (clients ignore it too).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// DNS names of the subjectAltName that are not served because no server
    /// name can match them: a `*` that is not a whole leftmost label
    /// (`w*.shop.example`, `*`), as rustls/webpki clients refuse them too.
    pub fn unusable_names(&self) -> &[String] {
        &self.unusable
    }
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey")
            .field("certificates", &self.certified.cert.len())
            .field("not_after", &self.not_after)
            .field("names", &self.names)
            .finish()
    }
}

/// Two are the same when their certificate chains are byte for byte the same
/// (a new key always comes with a new certificate).
impl PartialEq for CertKey {
    fn eq(&self, other: &CertKey) -> bool {
        self.certified.cert == other.certified.cert
    }
}

/// Which of the two files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
}

impl File {
    /// The config key naming the file: `cert` or `key`.
    pub fn key_name(self) -> &'static str {
        match self {
            File::Cert => "cert",
            File::Key => "key",
        }
    }
}

/// Reads and checks a certificate chain and its key. The error names the file
/// and says what is wrong with it, in words an operator can act on.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertKey, (File, String)> {
    load_with_key(cert_path, key_path).map(|(cert_key, _)| cert_key)
}

/// [`load`], also giving the private key as read, for a client certificate
/// (pingora takes the key as DER, not as a signing key).
pub(super) fn load_with_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(CertKey, PrivateKeyDer<'static>), (File, String)> {
    let cert_pem = read(cert_path).map_err(|e| (File::Cert, e))?;
    let key_pem = read(key_path).map_err(|e| (File::Key, e))?;
    let chain = certificates(cert_path, &cert_pem, &key_pem).map_err(|e| (File::Cert, e))?;
    let key = private_key(key_path, &key_pem, &cert_pem).map_err(|e| (File::Key, e))?;
    let inspected = inspect(cert_path, &chain).map_err(|e| (File::Cert, e))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| {
            (
                File::Key,
                format!(
                    "{}: the private key cannot be used: {e}",
                    key_path.display()
                ),
            )
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err((
                File::Key,
                format!(
                    "{} is not the key of the certificate in {} (is it the key of another certificate?)",
                    key_path.display(),
                    cert_path.display()
                ),
            ))
        }
        Err(e) => {
            return Err((
                File::Cert,
                format!(
                    "{}: the certificate cannot be used with {}: {e}",
                    cert_path.display(),
                    key_path.display()
                ),
            ))
        }
    }
    Ok((
        CertKey {
            certified: Arc::new(certified),
            not_after: inspected.not_after,
            expires: inspected.expires,
            names: inspected.names,
            unusable: inspected.unusable,
        },
        key,
    ))
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

pub(super) fn holds_key(pem: &[u8]) -> bool {
    PrivateKeyDer::from_pem_slice(pem).is_ok()
}

fn holds_certificate(pem: &[u8]) -> bool {
    CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok())
}

fn certificates(
    path: &Path,
    pem: &[u8],
    key_pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: the PEM text is damaged: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(if holds_key(pem) && holds_certificate(key_pem) {
            format!(
                "{} holds a private key, not a certificate: cert and key look swapped",
                path.display()
            )
        } else if holds_key(pem) {
            format!(
                "{} holds a private key, not a certificate (want -----BEGIN CERTIFICATE-----)",
                path.display()
            )
        } else {
            format!(
                "{} holds no PEM certificate (want -----BEGIN CERTIFICATE-----)",
                path.display()
            )
        });
    }
    Ok(chain)
}

fn private_key(path: &Path, pem: &[u8], cert_pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) if holds_certificate(pem) => {
            Err(if holds_key(cert_pem) {
                format!(
                    "{} holds a certificate, not a private key: cert and key look swapped",
                    path.display()
                )
            } else {
                format!(
                    "{} holds a certificate, not a private key (want -----BEGIN PRIVATE KEY-----)",
                    path.display()
                )
            })
        }
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(format!(
            "{} holds no PEM private key (want -----BEGIN PRIVATE KEY-----)",
            path.display()
        )),
        Err(e) => Err(format!("{}: the PEM text is damaged: {e}", path.display())),
    }
}

/// What the end-entity certificate says about itself.
struct Inspected {
    not_after: String,
    expires: SystemTime,
    names: Vec<String>,
    unusable: Vec<String>,
}

/// Every certificate of the chain must parse and be valid now; returns when
/// the end-entity certificate expires and the names it serves.
fn inspect(path: &Path, chain: &[CertificateDer<'static>]) -> Result<Inspected, String> {
    let now = x509_parser::time::ASN1Time::now();
    let mut inspected = Inspected {
        not_after: String::new(),
        expires: SystemTime::UNIX_EPOCH,
        names: Vec::new(),
        unusable: Vec::new(),
    };
    for (i, der) in chain.iter().enumerate() {
        let which = if i == 0 {
            "the certificate".to_string()
        } else {
            format!("certificate {} of the chain", i + 1)
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("{}: {which} cannot be parsed: {e}", path.display()))?;
        let validity = cert.validity();
        if validity.not_after < now {
            return Err(format!(
                "{}: {which} ({}) expired on {}",
                path.display(),
                cert.subject(),
                validity.not_after
            ));
        }
        if validity.not_before > now {
            return Err(format!(
                "{}: {which} ({}) is not valid before {}",
                path.display(),
                cert.subject(),
                validity.not_before
            ));
        }
        if i == 0 {
            inspected.not_after = validity.not_after.to_string();
            // Valid now, so after the epoch.
            let seconds = u64::try_from(validity.not_after.timestamp()).unwrap_or(0);
            inspected.expires = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
            let san = cert.subject_alternative_name().map_err(|e| {
                format!(
                    "{}: the subjectAltName of the certificate cannot be read: {e}",
                    path.display()
                )
            })?;
            for name in san.iter().flat_map(|san| &san.value.general_names) {
                if let x509_parser::extensions::GeneralName::DNSName(name) = name {
                    let name = normalize(name);
                    let list = if servable(&name) {
                        &mut inspected.names
                    } else {
                        &mut inspected.unusable
                    };
                    if !list.contains(&name) {
                        list.push(name);
                    }
                }
            }
        }
    }
    Ok(inspected)
}

/// Lower case, without the trailing dot of a fully qualified name: the form
/// rustls hands the resolver a client's server name in.
fn normalize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// An exact name, or a wildcard whose `*` is the whole leftmost label of at
/// least two labels (`*.shop.example`); never an empty label.
fn servable(name: &str) -> bool {
    let exact = |name: &str| {
        !name.is_empty() && !name.contains('*') && name.split('.').all(|label| !label.is_empty())
    };
    match name.strip_prefix("*.") {
        Some(parent) => exact(parent),
        None => exact(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: std::path::PathBuf,
    }

    impl Files {
        fn new(name: &str) -> Files {
            let dir =
                std::env::temp_dir().join(format!("ordergate-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("dir");
            Files { dir }
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn pair() -> (String, String) {
        let cert =
            rcgen::generate_simple_self_signed(vec!["shop.test".to_string()]).expect("certificate");
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_good_pair_loads_and_bad_ones_are_named_with_the_reason() {
        let files = Files::new("unit");
        let (cert, key) = pair();
        let (_, other_key) = pair();
        let cert_path = files.write("cert.pem", &cert);
        let key_path = files.write("key.pem", &key);
        let other_key_path = files.write("other.pem", &other_key);
        let junk = files.write("junk.pem", "hello");
        assert!(load(&cert_path, &key_path).is_ok());

        let swapped = load(&key_path, &cert_path).expect_err("swapped").1;
        assert!(
            swapped.contains("key.pem") && swapped.contains("swapped"),
            "{swapped}"
        );
        let mismatch = load(&cert_path, &other_key_path).expect_err("mismatch").1;
        assert!(
            mismatch.contains("other.pem") && mismatch.contains("not the key"),
            "{mismatch}"
        );
        let garbage = load(&junk, &key_path).expect_err("junk").1;
        assert!(
            garbage.contains("junk.pem") && garbage.contains("no PEM certificate"),
            "{garbage}"
        );
        let missing = load(&files.dir.join("none.pem"), &key_path)
            .expect_err("missing")
            .1;
        assert!(
            missing.contains("cannot read") && missing.contains("none.pem"),
            "{missing}"
        );
    }

    #[test]
    fn an_expired_certificate_is_refused_with_its_date() {
        let files = Files::new("expired");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["shop.test".to_string()]).expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).expect("certificate");
        let cert_path = files.write("old.pem", &cert.pem());
        let key_path = files.write("old.key", &key.serialize_pem());
        let error = load(&cert_path, &key_path).expect_err("expired").1;
        assert!(
            error.contains("old.pem") && error.contains("expired on") && error.contains("2021"),
            "{error}"
        );
    }

    #[test]
    fn the_served_names_are_the_dns_names_of_the_subject_alt_name() {
        let files = Files::new("names");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![
            "WWW.Shop.Test.".to_string(),
            "*.api.shop.test".to_string(),
            "www.shop.test".to_string(),
            "w*.bad.test".to_string(),
        ])
        .expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.self_signed(&key).expect("certificate");
        let cert_path = files.write("names.pem", &cert.pem());
        let key_path = files.write("names.key", &key.serialize_pem());
        let loaded = load(&cert_path, &key_path).expect("loads");
        assert_eq!(loaded.names(), ["www.shop.test", "*.api.shop.test"]);
        assert_eq!(loaded.unusable_names(), ["w*.bad.test"]);
        assert!(loaded.expires() > SystemTime::now());
    }
}
