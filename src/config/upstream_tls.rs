//! TLS to a pool's backends (`[pools.tls]`): the name ordergate asks for and
//! checks, the CA certificates the backends' certificates must chain to, and
//! the client certificate it shows them.
//!
//! As with the listeners' certificates (`tls.rs`), every file is loaded and
//! checked when the config is validated, so `ordergate check`, the start and
//! every reload name a bad file and the reason. pingora panics on a
//! certificate or key it cannot parse (`CertKey::new`, `parse_x509`, the
//! client key's `try_into().unwrap()` in its rustls connector); it only ever
//! gets material parsed here the way it parses it, with the same parser.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::tls::{self, File};

/// `[pools.tls]`: how ordergate speaks TLS to every backend of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTlsConfig {
    /// The name sent as SNI and that the backends' certificates must be valid
    /// for. Required while `verify` is on and some backend is `IP:PORT` (there
    /// is no other name); without it, a backend given by name is reached with
    /// its own name, and an IP backend (`verify = false` only) with no SNI.
    pub sni: Option<String>,
    /// Whether the backends' certificates are checked: a chain to `ca_file`
    /// (or the system's roots), valid now, for `sni`. Default: true.
    pub verify: bool,
    /// The CA certificates the backends' certificates must chain to; none:
    /// the system's roots, as pingora loads them at start. Default: none.
    pub ca: Option<CaBundle>,
    /// The certificate ordergate shows backends that ask for one (mutual
    /// TLS). Default: none.
    pub client: Option<ClientCert>,
}

impl UpstreamTlsConfig {
    /// One line for `check`, logs and reload notes, e.g. `TLS to
    /// orders.internal (CA conf/ca.pem, client certificate conf/client.pem
    /// valid until ...)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.verify {
            parts.push(match &self.ca {
                Some(ca) => format!("CA {}", ca.path.display()),
                None => "the system's CAs".to_string(),
            });
        } else {
            parts.push("certificates NOT checked".to_string());
        }
        if let Some(client) = &self.client {
            parts.push(format!(
                "client certificate {} valid until {}",
                client.cert_path.display(),
                client.not_after()
            ));
        }
        format!(
            "TLS{} ({})",
            self.sni
                .as_deref()
                .map_or(String::new(), |sni| format!(" to {sni}")),
            parts.join(", ")
        )
    }
}

/// The certificates of `ca_file`, each parsed and accepted as a trust anchor.
#[derive(Debug, Clone, PartialEq)]
pub struct CaBundle {
    /// Where they were read from.
    pub path: PathBuf,
    /// The certificates, DER, in file order.
    pub certs: Arc<[CertificateDer<'static>]>,
}

/// A client certificate chain and its key, checked to belong together.
#[derive(Clone)]
pub struct ClientCert {
    /// Where the chain was read from.
    pub cert_path: PathBuf,
    /// Where the key was read from.
    pub key_path: PathBuf,
    /// The chain, DER, the client's own certificate first.
    pub chain: Arc<[CertificateDer<'static>]>,
    key: Arc<PrivateKeyDer<'static>>,
    not_after: String,
}

impl ClientCert {
    /// The private key, DER (PKCS#8, PKCS#1 or SEC1), as pingora takes it.
    pub fn key_der(&self) -> &[u8] {
        self.key.secret_der()
    }

    /// When the client certificate expires (e.g. `Nov 29 11:00:00 2027 +00:00`).
    pub fn not_after(&self) -> &str {
        &self.not_after
    }
}

/// Never shows the key.
impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("certificates", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The same files with the same certificates (a new key always comes with a
/// new certificate, and a key that does not match is refused).
impl PartialEq for ClientCert {
    fn eq(&self, other: &ClientCert) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.chain == other.chain
    }
}

/// Whether `sni` is a name rustls can send and check a certificate against
/// (a DNS name or an IP address); says why not.
pub(super) fn check_sni(sni: &str) -> Result<(), String> {
    if sni.is_empty() {
        return Err("is empty; write the name on the backends' certificate, e.g. \"orders.internal\" (to send no name, remove the key and set verify = false)".to_string());
    }
    ServerName::try_from(sni)
        .map(drop)
        .map_err(|_| format!("{sni:?} is not a host name or IP address; write the name on the backends' certificate, e.g. \"orders.internal\""))
}

/// Reads the CA certificates of `path`: at least one, each parsed as pingora
/// parses it and accepted by rustls as a trust anchor.
pub(super) fn load_ca(path: &Path) -> Result<CaBundle, String> {
    let pem = tls::read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: the PEM text is damaged: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(if tls::holds_key(&pem) {
            format!(
                "{} holds a private key, not CA certificates (want -----BEGIN CERTIFICATE-----)",
                path.display()
            )
        } else {
            format!(
                "{} holds no PEM certificate (want the CA certificates, -----BEGIN CERTIFICATE-----)",
                path.display()
            )
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in certs.iter().enumerate() {
        let which = format!("certificate {} of {}", i + 1, certs.len());
        x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("{}: {which} cannot be parsed: {e}", path.display()))?;
        roots
            .add(der.clone())
            .map_err(|e| format!("{}: {which} cannot be a trust anchor: {e}", path.display()))?;
    }
    Ok(CaBundle {
        path: path.to_path_buf(),
        certs: certs.into(),
    })
}

/// Which key of `[pools.tls]` names a file of the client certificate.
pub(super) fn client_key_name(file: File) -> &'static str {
    match file {
        File::Cert => "client_cert",
        File::Key => "client_key",
    }
}

/// Reads and checks a client certificate and its key: both parse, the key is
/// the certificate's, the certificate is valid today, and rustls takes them
/// for client authentication the way pingora hands them over.
pub(super) fn load_client(cert_path: &Path, key_path: &Path) -> Result<ClientCert, (File, String)> {
    let (cert_key, key) = tls::load_with_key(cert_path, key_path)?;
    let chain: Vec<CertificateDer<'static>> = cert_key.certified().cert.clone();
    // pingora keeps the key as bytes and tells its format from the DER again
    // (unwrapping the result): make sure that works.
    let key = PrivateKeyDer::try_from(key.secret_der().to_vec()).map_err(|e| {
        (
            File::Key,
            format!(
                "{}: the key's format cannot be told from its DER ({e}); convert it to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)",
                key_path.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .and_then(|builder| {
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain.clone(), key.clone_key())
        })
        .map_err(|e| {
            (
                File::Cert,
                format!(
                    "{} with {} cannot be used as a client certificate: {e}",
                    cert_path.display(),
                    key_path.display()
                ),
            )
        })?;
    Ok(ClientCert {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        chain: chain.into(),
        key: Arc::new(key),
        not_after: cert_key.not_after().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "ordergate-upstream-tls-{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("dir");
            Dir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write");
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn names_are_checked_as_rustls_sends_them() {
        assert!(check_sni("orders.internal").is_ok());
        assert!(check_sni("10.0.0.7").is_ok());
        assert!(check_sni("").expect_err("an error").contains("is empty"));
        assert!(check_sni("orders internal")
            .expect_err("an error")
            .contains("not a host name"));
    }

    #[test]
    fn a_ca_file_loads_and_bad_ones_say_why() {
        let dir = Dir::new("ca");
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).expect("ca");
        let two = format!("{}{}", ca.cert.pem(), ca.cert.pem());
        let bundle = load_ca(&dir.write("ca.pem", &two)).expect("loads");
        assert_eq!(bundle.certs.len(), 2);

        let key =
            load_ca(&dir.write("key.pem", &ca.signing_key.serialize_pem())).expect_err("an error");
        assert!(key.contains("key.pem holds a private key"), "{key}");
        let junk = load_ca(&dir.write("junk.pem", "hello")).expect_err("an error");
        assert!(junk.contains("holds no PEM certificate"), "{junk}");
        let missing = load_ca(&dir.0.join("none.pem")).expect_err("an error");
        assert!(missing.contains("cannot read"), "{missing}");
        let damaged = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let bad = load_ca(&dir.write("bad.pem", damaged)).expect_err("an error");
        assert!(bad.contains("certificate 1 of 1"), "{bad}");
    }

    #[test]
    fn a_client_certificate_loads_with_its_key_only() {
        let dir = Dir::new("client");
        let one = rcgen::generate_simple_self_signed(vec!["client".to_string()]).expect("one");
        let other = rcgen::generate_simple_self_signed(vec!["client".to_string()]).expect("two");
        let cert = dir.write("client.pem", &one.cert.pem());
        let key = dir.write("client.key", &one.signing_key.serialize_pem());
        let wrong = dir.write("other.key", &other.signing_key.serialize_pem());
        let client = load_client(&cert, &key).expect("loads");
        assert_eq!(client.chain.len(), 1);
        assert_eq!(
            PrivateKeyDer::try_from(client.key_der().to_vec()).map(|_| ()),
            Ok(())
        );
        assert!(!format!("{client:?}").contains("key:"), "{client:?}");
        let (file, message) = load_client(&cert, &wrong).expect_err("an error");
        assert_eq!(client_key_name(file), "client_key");
        assert!(message.contains("not the key"), "{message}");
    }
}
