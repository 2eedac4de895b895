//! Several certificates on one TLS listener, chosen by the client's server
//! name (issue 24): exact names, one-label wildcards, the default for unknown
//! names and for none, `strict_sni`, a reload that swaps the whole set (and
//! one that keeps it because a file is bad), `/status`, and `check`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

use crate::support::{admin, admin_section, free_port, wait_until, Fleet, Proxy, TempFile};

/// Accepts whatever certificate the server shows (it is what the test looks
/// at); still checks the handshake signature, so the key matches it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate a TLS handshake with `addr` gets when the client sends
/// `sni` (None: no server name at all), as DER; or why the handshake failed.
fn served(addr: SocketAddr, sni: Option<&str>) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    let name =
        ServerName::try_from(sni.unwrap_or("localhost").to_string()).map_err(|e| e.to_string())?;
    let mut connection =
        ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    while connection.is_handshaking() {
        connection
            .complete_io(&mut socket)
            .map_err(|e| e.to_string())?;
    }
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| der.as_ref().to_vec())
        .ok_or_else(|| "no certificate".to_string())
}

/// The DNS names of a served certificate, for messages.
fn names_of(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec!["(unparsable)".to_string()];
    };
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A certificate and key made for the test, written as `{file}.pem` and
/// `{file}.key` in a directory.
struct Cert {
    der: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
}

impl Cert {
    /// A self-signed certificate whose subjectAltName holds `names` (an IP
    /// address alone when `names` is empty).
    fn make(dir: &Path, file: &str, names: &[&str]) -> Cert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("certificate parameters");
        if names.is_empty() {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        }
        let cert = params.self_signed(&key).expect("certificate");
        let made = Cert {
            der: cert.der().to_vec(),
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        // The key first: a reload that sees the new certificate sees its key.
        std::fs::write(&made.key, key.serialize_pem()).expect("write key");
        std::fs::write(&made.cert, cert.pem()).expect("write certificate");
        made
    }

    fn entry(&self) -> String {
        format!(
            "[[server.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// A `[[server.tls]]` listener on `addr` with `default` and the `more` entries.
fn listener(addr: SocketAddr, default: &Cert, strict: bool, more: &[&Cert]) -> String {
    let mut text = format!(
        "[[server.tls]]\nlisten = \"{addr}\"\ncert = \"{}\"\nkey = \"{}\"\nstrict_sni = {strict}\n",
        default.cert.display(),
        default.key.display()
    );
    for cert in more {
        text.push_str(&cert.entry());
    }
    text
}

/// Asserts which certificate each server name gets from `addr`.
fn assert_served(addr: SocketAddr, cases: &[(Option<&str>, &Cert)]) {
    for (sni, expected) in cases {
        let got = served(addr, *sni).unwrap_or_else(|e| panic!("{sni:?} on {addr}: {e}"));
        assert!(
            got == expected.der,
            "{sni:?} on {addr} got the certificate for {:?}, not the one for {:?}",
            names_of(&got),
            names_of(&expected.der)
        );
    }
}

#[test]
fn certificates_are_chosen_by_sni_and_a_reload_swaps_the_whole_set() {
    let fleet = Fleet::start(1);
    let files = TempFile::new("README", "certificates of the sni test");
    let dir = files.path.parent().expect("temp dir");
    let default = Cert::make(dir, "default", &["shop.test"]);
    let www = Cert::make(dir, "www", &["www.shop.test"]);
    let api = Cert::make(dir, "api", &["*.api.shop.test"]);
    let port = free_port();
    let open = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let strict = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // `[[server.tls]]` after the other tables (valid TOML), so that
    // `rewrite_config` can change it.
    let body = |listeners: String| {
        format!(
            "{}[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n\n{listeners}",
            admin_section(port),
            fleet.backends_toml(&[1])
        )
    };
    let proxy = Proxy::try_start_with(
        "grace_period = \"0s\"",
        &body(
            listener(open, &default, false, &[&www, &api])
                + &listener(strict, &default, true, &[&www, &api]),
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(wait_until(Duration::from_secs(5), || served(open, None)
        .is_ok()
        && served(strict, Some("shop.test")).is_ok()));

    assert_served(
        open,
        &[
            (Some("www.shop.test"), &www),
            (Some("WWW.Shop.Test"), &www),
            (Some("orders.api.shop.test"), &api),
            (Some("a.b.api.shop.test"), &default),
            (Some("api.shop.test"), &default),
            (Some("shop.test"), &default),
            (Some("unknown.test"), &default),
            (None, &default),
        ],
    );
    // strict_sni: names still pick, the rest is refused, and the listener
    // goes on serving.
    assert_served(
        strict,
        &[
            (Some("www.shop.test"), &www),
            (Some("x.api.shop.test"), &api),
        ],
    );
    for sni in [Some("unknown.test"), None] {
        let refused = served(strict, sni);
        assert!(refused.is_err(), "{sni:?} is refused: {refused:?}");
    }
    assert_served(strict, &[(Some("shop.test"), &default)]);

    // /status: each listener's certificates, names and expiry, no key material.
    let status = admin(port, "GET", "/status");
    let text = status.text();
    assert!(
        !text.contains("PRIVATE") && !text.contains("BEGIN"),
        "{text}"
    );
    let json = status.json();
    let listeners = json["tls"].as_array().expect("tls in /status");
    assert_eq!(listeners.len(), 2, "{}", json["tls"]);
    assert_eq!(listeners[0]["listen"], open.to_string());
    assert_eq!(listeners[0]["strict_sni"], false);
    assert_eq!(listeners[1]["strict_sni"], true);
    let certificates = listeners[0]["certificates"]
        .as_array()
        .expect("certificates");
    let names: Vec<&serde_json::Value> = certificates.iter().map(|c| &c["names"]).collect();
    assert_eq!(
        names,
        [
            &serde_json::json!(["shop.test"]),
            &serde_json::json!(["www.shop.test"]),
            &serde_json::json!(["*.api.shop.test"])
        ]
    );
    assert_eq!(certificates[0]["default"], true);
    assert_eq!(certificates[0]["cert"], default.cert.display().to_string());
    for certificate in certificates {
        let not_after = certificate["not_after"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(not_after).is_ok(),
            "{certificate}"
        );
    }

    // A reload: www renewed in place, api removed, a new name added.
    let renewed = Cert::make(dir, "www", &["www.shop.test"]);
    let added = Cert::make(dir, "new", &["new.shop.test"]);
    proxy.rewrite_config(&body(
        listener(open, &default, false, &[&renewed, &added])
            + &listener(strict, &default, true, &[&www, &api]),
    ));
    proxy.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || {
            served(open, Some("new.shop.test")).is_ok_and(|der| der == added.der)
        }),
        "the added certificate is served"
    );
    assert_served(
        open,
        &[
            (Some("www.shop.test"), &renewed),
            (Some("new.shop.test"), &added),
            (Some("x.api.shop.test"), &default),
            (None, &default),
        ],
    );
    let status = admin(port, "GET", "/status").json();
    let notes = status["reload"]["last_notes"].to_string();
    assert!(
        notes.contains("now serving") && notes.contains("no longer serving"),
        "{notes}"
    );

    // A bad file keeps the whole old set, and the reload says why.
    std::fs::write(&added.cert, "not a certificate").expect("break the file");
    let refused = admin(port, "POST", "/reload");
    assert_eq!(refused.status, 422, "{}", refused.text());
    let errors = refused.json()["errors"].to_string();
    assert!(
        errors.contains("server.tls[0].certificates[1].cert")
            && errors.contains(&added.cert.display().to_string()),
        "{errors}"
    );
    assert_served(
        open,
        &[
            (Some("www.shop.test"), &renewed),
            (Some("new.shop.test"), &added),
        ],
    );
    assert_eq!(
        admin(port, "GET", "/status").json()["reload"]["last_ok"],
        false
    );
}

#[test]
fn check_reports_a_name_claimed_twice_and_a_certificate_without_names() {
    let files = TempFile::new("README", "certificates of the sni check test");
    let dir = files.path.parent().expect("temp dir");
    let default = Cert::make(dir, "default", &["shop.test"]);
    let www = Cert::make(dir, "www", &["www.shop.test", "*.api.shop.test"]);
    let again = Cert::make(dir, "again", &["WWW.shop.test"]);
    let nameless = Cert::make(dir, "nameless", &[]);
    let config = dir.join("ordergate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\n{}[[pools]]\nname = \"p\"\nbackends = [ {{ addr = \"127.0.0.1:9001\" }} ]\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            free_port(),
            listener(
                SocketAddr::from(([127, 0, 0, 1], free_port())),
                &default,
                false,
                &[&www, &again, &nameless]
            )
        ),
    )
    .expect("write config");
    let crate::support::Checked { ok, stderr, .. } = crate::support::check(&config);
    assert!(!ok, "check must fail:\n{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");
    let duplicate = stderr
        .lines()
        .find(|l| l.contains("server.tls[0].certificates[1].cert:"))
        .unwrap_or_else(|| panic!("no problem for the name claimed twice:\n{stderr}"));
    for expected in [
        again.cert.display().to_string(),
        www.cert.display().to_string(),
        "server.tls[0].certificates[0]".to_string(),
        "\"www.shop.test\"".to_string(),
    ] {
        assert!(duplicate.contains(&expected), "{expected} in {duplicate}");
    }
    let no_names = stderr
        .lines()
        .find(|l| l.contains("server.tls[0].certificates[2].cert:"))
        .unwrap_or_else(|| panic!("no problem for the certificate without names:\n{stderr}"));
    assert!(
        no_names.contains(&nameless.cert.display().to_string())
            && no_names.contains("no DNS name in its subjectAltName")
            && no_names.contains("subjectAltName=DNS:"),
        "{no_names}"
    );
}
