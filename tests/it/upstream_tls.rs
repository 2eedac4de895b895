//! TLS to backends (`[pools.tls]`) against a real nginx that serves TLS and
//! wants a client certificate (`ssl_verify_client on`): the right settings
//! serve and pass probes; a wrong CA or a missing client certificate never
//! reach a shopper as anything but ordergate's page; a reload that changes
//! the CA reuses no connection checked under the old one; `check` refuses
//! settings that would check nothing or cannot work.
//!
//! nginx is not installed by the tests: `./dev.sh test` installs it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;

use crate::support::programs::find;
use crate::support::{admin, admin_section, free_port, wait_until, Proxy, TempFile};

/// The name on the backend's certificate.
const NAME: &str = "orders.internal";
/// The subject of ordergate's client certificate, as nginx reports it.
const CLIENT_DN: &str = "CN=ordergate-client";

/// A directory of test files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "ordergate-upstream-tls-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and the files signed by it, plus a second CA that signed nothing here.
struct Pki {
    dir: Dir,
    ca: String,
    other_ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let mut params = CertificateParams::new(names).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = Dir::new(name);
        let (ca_pem, issuer) = ca("ordergate test CA");
        let (other_pem, _) = ca("some other CA");
        let (server_cert, server_key) =
            leaf(&issuer, &[NAME], NAME, ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf(
            &issuer,
            &[],
            "ordergate-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca: dir.write("ca.pem", &ca_pem),
            other_ca: dir.write("other-ca.pem", &other_pem),
            server_cert: dir.write("server.pem", &server_cert),
            server_key: dir.write("server.key", &server_key),
            client_cert: dir.write("client.pem", &client_cert),
            client_key: dir.write("client.key", &client_key),
            dir,
        }
    }

    /// A `[pools.tls]` inline table with the right client certificate.
    fn tls(&self, ca: &str) -> String {
        format!(
            "{{ sni = \"{NAME}\", ca_file = \"{ca}\", client_cert = \"{}\", client_key = \"{}\" }}",
            self.client_cert, self.client_key
        )
    }
}

/// A real nginx serving TLS on a free loopback port, wanting a client
/// certificate of the test CA; killed on drop.
struct Nginx {
    addr: std::net::SocketAddr,
    child: Child,
    error_log: PathBuf,
}

impl Nginx {
    fn start(pki: &Pki) -> Nginx {
        let nginx = find(&["nginx"]).unwrap_or_else(|| {
            panic!("nginx is not installed; install it: apt-get install nginx (./dev.sh test does)")
        });
        let dir = &pki.dir.0;
        let error_log = dir.join("error.log");
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(temp)).expect("nginx temp dir");
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        // One process (master_process off), so killing the child stops it all.
        let config = format!(
            r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr} ssl;
        server_name {NAME};
        ssl_certificate {server_cert};
        ssl_certificate_key {server_key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        location = /health {{ return 200 "up\n"; }}
        location / {{ return 200 "order for $ssl_client_s_dn on connection $connection\n"; }}
    }}
}}
"#,
            server_cert = pki.server_cert,
            server_key = pki.server_key,
            ca = pki.ca,
        );
        let conf = pki.dir.write("nginx.conf", &config);
        let child = Command::new(nginx)
            .args(["-p", &d.to_string(), "-e", &error_log.display().to_string()])
            .args(["-c", &conf])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            addr,
            child,
            error_log,
        };
        let up = wait_until(Duration::from_secs(10), || {
            nginx.child.try_wait().ok().flatten().is_some()
                || std::net::TcpStream::connect(addr).is_ok()
        });
        if !up || nginx.child.try_wait().ok().flatten().is_some() {
            panic!(
                "nginx did not listen on {addr} within 10s:\n{}",
                std::fs::read_to_string(&nginx.error_log).unwrap_or_default()
            );
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pool of one backend and a route `/{name}` to it. A probed pool has no
/// panic mode: it would send traffic to its one backend although probes
/// took it out, which is not what these tests look at.
fn pool(name: &str, backend: std::net::SocketAddr, tls: &str, probed: bool) -> String {
    let health = if probed {
        "panic_threshold = 0\nhealth = { path = \"/health\", interval = \"200ms\", timeout = \"200ms\", jitter = \"0s\" }\n"
    } else {
        ""
    };
    format!(
        "[[pools]]\nname = \"{name}\"\nbackends = [ {{ addr = \"{backend}\" }} ]\n{health}tls = {tls}\n\n\
         [[routes]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\npool = \"{name}\"\n\n"
    )
}

fn status(port: u16) -> Value {
    admin(port, "GET", "/status").json()
}

fn pool_status(status: &Value, name: &str) -> Value {
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no pool {name} in {status}"))
}

/// The health of the pool's only backend and the last probe's error.
fn backend_health(port: u16, pool: &str) -> (String, String) {
    let pool = pool_status(&status(port), pool);
    let backend = &pool["backends"][0];
    (
        backend["health"].as_str().unwrap_or_default().to_string(),
        backend["probe"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn mutual_tls_serves_and_a_wrong_ca_or_no_client_certificate_is_a_page() {
    let pki = Pki::new("serve");
    let nginx = Nginx::start(&pki);
    let port = free_port();
    let anonymous = format!("{{ sni = \"{NAME}\", ca_file = \"{}\" }}", pki.ca);
    let unchecked = format!(
        "{{ verify = false, client_cert = \"{}\", client_key = \"{}\" }}",
        pki.client_cert, pki.client_key
    );
    let config = [
        admin_section(port),
        pool("good", nginx.addr, &pki.tls(&pki.ca), true),
        pool("wrongca", nginx.addr, &pki.tls(&pki.other_ca), true),
        pool("wrongcadirect", nginx.addr, &pki.tls(&pki.other_ca), false),
        pool("anonymous", nginx.addr, &anonymous, true),
        pool("unchecked", nginx.addr, &unchecked, false),
    ]
    .concat();
    let proxy = Proxy::start(&config);

    // (1) The right CA, name and client certificate: probes pass, orders go through.
    assert!(
        wait_until(Duration::from_secs(10), || backend_health(port, "good").0
            == "healthy"),
        "the probe over TLS passes: {:?}",
        backend_health(port, "good")
    );
    let order = proxy.get("/good/orders/1");
    assert_eq!(order.status, 200, "{}", order.text());
    assert!(
        order.text().contains(CLIENT_DN),
        "nginx saw the client certificate: {}",
        order.text()
    );
    // Kept-alive TLS connections are reused: a handshake is not paid per
    // order. Each of the proxy's two worker threads keeps its own, and a
    // probe may hold one for a moment: ten orders on at most four.
    let connections: std::collections::HashSet<String> = (0..10)
        .map(|i| {
            let text = proxy.get(&format!("/good/orders/{i}")).text();
            text.rsplit(' ')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    assert!(
        connections.len() <= 4,
        "ten orders on {} connections: {connections:?}",
        connections.len()
    );

    // (2) A CA that did not sign the backend's certificate: never healthy,
    // and the shopper gets a page, probed or not.
    assert!(
        wait_until(Duration::from_secs(10), || backend_health(port, "wrongca")
            .0
            == "unhealthy"),
        "{:?}",
        backend_health(port, "wrongca")
    );
    let (_, why) = backend_health(port, "wrongca");
    assert!(
        why.contains("TLS connect") && why.contains("UnknownIssuer"),
        "the probe says why: {why}"
    );
    let down = proxy.get("/wrongca/orders/1");
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.header("x-ordergate-page"), Some("no_healthy_backend"));
    let refused = proxy.get("/wrongcadirect/orders/1");
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_eq!(refused.header("x-ordergate-page"), Some("connect_failed"));
    assert!(!refused.text().contains("nginx"), "{}", refused.text());

    // (3) No client certificate: nginx answers 400 "No required SSL
    // certificate was sent"; the probe fails on it with a hint, and the
    // shopper gets the page.
    assert!(
        wait_until(Duration::from_secs(10), || backend_health(
            port,
            "anonymous"
        )
        .0 == "unhealthy"),
        "{:?}",
        backend_health(port, "anonymous")
    );
    let (_, why) = backend_health(port, "anonymous");
    assert!(
        why.contains("status 400") && why.contains("tls.client_cert"),
        "{why}"
    );
    let anonymous = proxy.get("/anonymous/orders/1");
    assert_eq!(anonymous.status, 503, "{}", anonymous.text());
    assert_eq!(
        anonymous.header("x-ordergate-page"),
        Some("no_healthy_backend")
    );
    assert!(!anonymous.text().contains("SSL certificate"));

    // verify = false: no SNI, nothing checked, and the log says so at start.
    let unverified = proxy.get("/unchecked/orders/1");
    assert_eq!(unverified.status, 200, "{}", unverified.text());
    assert!(proxy.logged_within(Duration::from_secs(5), |line| line
        .contains("pool unchecked: tls.verify = false")
        && line.contains("NOT checked")));

    // /status shows the settings, never key material.
    let text = admin(port, "GET", "/status").text();
    let status: Value = serde_json::from_str(&text).expect("JSON");
    let good = pool_status(&status, "good")["tls"].clone();
    assert_eq!(good["sni"], NAME);
    assert_eq!(good["verify"], true);
    assert_eq!(good["ca_file"], pki.ca.as_str());
    assert_eq!(good["client_cert"], pki.client_cert.as_str());
    assert!(good["client_cert_not_after"].is_string(), "{good}");
    assert_eq!(
        pool_status(&status, "anonymous")["tls"]["client_cert"],
        Value::Null
    );
    assert_eq!(pool_status(&status, "unchecked")["tls"]["verify"], false);
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains(&pki.client_key),
        "no key in /status"
    );
}

#[test]
fn a_reload_that_changes_the_ca_reuses_no_connection_checked_under_the_old_one() {
    let pki = Pki::new("reload");
    let nginx = Nginx::start(&pki);
    let port = free_port();
    let body = |ca: &str| {
        [
            admin_section(port),
            pool("orders", nginx.addr, &pki.tls(ca), false),
        ]
        .concat()
    };
    let proxy = Proxy::start(&body(&pki.ca));
    // Leaves an idle connection to nginx in ordergate's pool.
    let first = proxy.get("/orders/1");
    assert_eq!(first.status, 200, "{}", first.text());

    proxy.rewrite_config(&body(&pki.other_ca));
    let reload = admin(port, "POST", "/reload");
    assert_eq!(reload.status, 200, "{}", reload.text());
    let notes = status(port)["reload"]["last_notes"].to_string();
    assert!(
        notes.contains("pool orders: backends are now reached with TLS to orders.internal")
            && notes.contains("other-ca.pem"),
        "{notes}"
    );
    // The idle connection was checked against the old CA: it must not serve.
    let after = proxy.get("/orders/2");
    assert_eq!(after.status, 502, "{}", after.text());
    assert_eq!(after.header("x-ordergate-page"), Some("connect_failed"));

    proxy.rewrite_config(&body(&pki.ca));
    let back = admin(port, "POST", "/reload");
    assert_eq!(back.status, 200, "{}", back.text());
    let again = proxy.get("/orders/3");
    assert_eq!(again.status, 200, "{}", again.text());
}

#[test]
fn check_refuses_unchecked_tls_missing_files_and_half_a_client_certificate() {
    let pki = Pki::new("check");
    let backend = "127.0.0.1:9443".parse().expect("addr");
    let config = [
        pool(
            "nosni",
            backend,
            &format!("{{ ca_file = \"{}\" }}", pki.ca),
            false,
        ),
        pool(
            "missing",
            backend,
            &format!(
                "{{ sni = \"{NAME}\", ca_file = \"{}/none.pem\" }}",
                pki.dir.0.display()
            ),
            false,
        ),
        pool(
            "half",
            backend,
            &format!(
                "{{ sni = \"{NAME}\", client_cert = \"{}\" }}",
                pki.client_cert
            ),
            false,
        ),
    ]
    .concat();
    let file = TempFile::new("tls.toml", &config);
    let crate::support::Checked { ok, stderr, .. } = crate::support::check(&file.path);
    assert!(!ok, "check must fail:\n{stderr}");
    for expected in [
        "3 problems",
        "pools[0] \"nosni\".tls.sni: is required while verify = true",
        "set tls.sni to the name on the backends' certificate",
        "pools[1] \"missing\".tls.ca_file: cannot read",
        "none.pem",
        "pools[2] \"half\".tls.client_key: is required with client_cert",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    let good = TempFile::new(
        "good.toml",
        &pool("orders", backend, &pki.tls(&pki.ca), false),
    );
    let good = crate::support::check(&good.path);
    let stdout = good.stdout;
    assert!(good.ok, "{stdout}");
    assert!(
        stdout.contains("TLS to orders.internal (CA ") && stdout.contains("client certificate"),
        "{stdout}"
    );
}
