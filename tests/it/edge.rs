//! The real edge (issue 24): behind a CDN or an L4 balancer. The client's
//! address comes from a trusted proxy's `X-Forwarded-For` or PROXY protocol
//! header (a real HAProxy with `send-proxy-v2`, and hand-written headers
//! before plaintext and TLS); a forged header from anyone else is ignored,
//! and a PROXY header from an untrusted peer closes the connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    admin, free_port, metric_value, parse_response, programs, wait_until, Fleet, Proxy, Response,
    TempFile,
};

/// The shop behind `server_extra` (trust settings, PROXY protocol), with an
/// admin API on `admin_port`; `/__sim/echo` shows what the backend got.
fn shop(fleet: &Fleet, admin_port: u16, route_extra: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [[pools]]\nname = \"orders\"\nbackends = {}\n\n\
         [[routes]]\nname = \"shop\"\npool = \"orders\"\n{route_extra}\n",
        fleet.backends_toml(&[1])
    )
}

/// Sends `raw` from the loopback address `source` (after `preamble`, e.g. a
/// PROXY header) and reads the answer to the end.
fn send_from(
    source: [u8; 4],
    to: SocketAddr,
    preamble: &[u8],
    raw: &str,
) -> std::io::Result<Vec<u8>> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect(&to.into())?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(preamble)?;
    stream.write_all(raw.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

fn get_from(source: [u8; 4], to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let answer = send_from(source, to, b"", &head).expect("an answer");
    parse_response(&answer).expect("HTTP")
}

/// The `X-Forwarded-For` the backend received, from a `/__sim/echo` answer.
fn forwarded_for(echo: &Response) -> String {
    assert_eq!(echo.status, 200, "{}", echo.text());
    echo.json()["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// From an untrusted peer, `X-Forwarded-For` is ordergate's; from a trusted
/// proxy (a CDN) its chain is kept and extended, and the client it names is
/// the one rate limits count: two shoppers behind the same CDN node are two
/// clients, one shopper twice is one.
#[test]
fn a_trusted_proxys_forwarded_for_names_the_client_and_a_forged_one_is_ignored() {
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let config = shop(
        &fleet,
        admin_port,
        "[routes.rate_limit]\nrequests_per_second = 1\n",
    );
    let proxy = Proxy::try_start_with(
        "grace_period = \"0s\"\ntrusted_proxies = [\"127.0.0.2\"]",
        &config,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let forged = [("x-forwarded-for", "203.0.113.66")];
    let direct = get_from([127, 0, 0, 1], proxy.addr, "/__sim/echo", &forged);
    assert_eq!(
        forwarded_for(&direct),
        "127.0.0.1",
        "a forged header is replaced"
    );

    let from_cdn = |client: &str| {
        get_from(
            [127, 0, 0, 2],
            proxy.addr,
            "/__sim/echo",
            &[("x-forwarded-for", client), ("x-forwarded-proto", "https")],
        )
    };
    let first = from_cdn("198.51.100.1");
    assert_eq!(forwarded_for(&first), "198.51.100.1, 127.0.0.2");
    assert_eq!(first.json()["headers"]["x-forwarded-proto"], "https");
    assert_eq!(from_cdn("198.51.100.2").status, 200, "another shopper");
    assert_eq!(
        from_cdn("198.51.100.1").status,
        429,
        "the same shopper again"
    );
    let edge = &admin(admin_port, "GET", "/status").json()["edge"];
    assert_eq!(edge["trusted_proxies"], serde_json::json!(["127.0.0.2/32"]));
    assert_eq!(edge["client_ip_header"], "x-forwarded-for");
    assert_eq!(edge["proxy_protocol"], "off");
}

/// A real HAProxy in front sends `send-proxy-v2`: the backend is told the
/// shopper's address, not HAProxy's. A peer outside `trusted_proxies`
/// sending a PROXY header, and a trusted one sending garbage, are cut off
/// and counted.
#[test]
fn behind_haproxy_with_send_proxy_v2_the_shopper_is_the_client() {
    let haproxy_bin =
        programs::ensure(&["haproxy"], "haproxy").expect("haproxy (./dev.sh test installs it)");
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let proxy = Proxy::try_start_with(
        "grace_period = \"0s\"\ntrusted_proxies = [\"127.0.0.1\"]\nproxy_protocol = \"v2\"",
        &shop(&fleet, admin_port, ""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _haproxy = HaProxy::start(&haproxy_bin, front, proxy.addr);

    let mut seen = String::new();
    let through = wait_until(Duration::from_secs(10), || {
        match send_from(
            [127, 0, 0, 7],
            front,
            b"",
            "GET /__sim/echo HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n",
        ) {
            Ok(answer) => match parse_response(&answer) {
                Ok(response) if response.status == 200 => {
                    seen = forwarded_for(&response);
                    true
                }
                _ => false,
            },
            Err(_) => false,
        }
    });
    assert!(through, "a request through HAProxy is answered");
    assert_eq!(seen, "127.0.0.7", "the shopper behind HAProxy");

    // Untrusted: closed before HTTP, nothing answered.
    let header = b"PROXY TCP4 203.0.113.66 127.0.0.1 5000 80\r\n";
    let get = "GET /__sim/echo HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n";
    let answer = send_from([127, 0, 0, 9], proxy.addr, header, get).unwrap_or_default();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // Trusted, but v1 where v2 is expected.
    let answer = send_from([127, 0, 0, 1], proxy.addr, header, get).unwrap_or_default();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let metrics = admin(admin_port, "GET", "/metrics").text();
    for reason in ["untrusted", "malformed"] {
        let series = format!("ordergate_proxy_protocol_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric_value(&metrics, &series), 1.0, "{reason}");
    }
}

/// A PROXY v1 header before the TLS handshake names the client on a TLS
/// listener (what an L4 balancer passing TLS through sends).
#[test]
fn a_proxy_header_before_tls_names_the_client() {
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert = TempFile::new("cert.pem", &certified.cert.pem());
    let key = TempFile::new("key.pem", &certified.signing_key.serialize_pem());
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[[server.tls]]\nlisten = \"{tls_addr}\"\ncert = \"{}\"\nkey = \"{}\"\nproxy_protocol = \"v1\"\nhttp2 = false\n\n{}",
        cert.path.display(),
        key.path.display(),
        shop(&fleet, admin_port, "")
    );
    let _proxy = Proxy::try_start_with(
        "grace_period = \"0s\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
        &config,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Every listener accepts once the proxy is ready (the plaintext one may
    // come up first).
    assert!(crate::support::readyz_within(
        admin_port,
        200,
        Duration::from_secs(10)
    ));

    let mut socket = TcpStream::connect(tls_addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    socket
        .write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n")
        .expect("header");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("trust");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let connection = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
    let mut tls = rustls::StreamOwned::new(connection, socket);
    tls.write_all(b"GET /__sim/echo HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let response = parse_response(&answer).expect("an answer over TLS");
    assert_eq!(forwarded_for(&response), "198.51.100.7");
    assert_eq!(response.json()["headers"]["x-forwarded-proto"], "https");
}

/// `check` explains trust settings it cannot use.
#[test]
fn check_refuses_unusable_trust_settings() {
    for (server, says) in [
        ("proxy_protocol = \"v2\"", "server.trusted_proxies is empty"),
        (
            "trusted_proxies = [\"10.0.0.0/33\"]",
            "server.trusted_proxies[0]",
        ),
        ("trusted_proxies = [\"cdn.example\"]", "is not a network"),
        ("proxy_protocol = \"v3\"", "is not a PROXY protocol setting"),
        ("client_ip_header = \"forwarded\"", "is not read"),
    ] {
        let config = format!(
            "[server]\n{server}\n\n[[pools]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n"
        );
        let file = TempFile::new("ordergate.toml", &config);
        let checked = crate::support::check(&file.path);
        assert!(!checked.ok, "{server}: {}", checked.stdout);
        assert!(
            checked.stderr.contains(says),
            "{server}: {}",
            checked.stderr
        );
    }
    let good = TempFile::new(
        "ordergate.toml",
        "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\nproxy_protocol = \"v2\"\n\n\
         [[pools]]\nname = \"p\"\nbackends = [{ addr = \"127.0.0.1:1\" }]\n\n\
         [[routes]]\nname = \"r\"\npool = \"p\"\nstrip_prefix = true\n",
    );
    let checked = crate::support::check(&good.path);
    assert!(checked.ok, "{}", checked.stderr);
    for says in [
        "edge: trusted proxies 10.0.0.0/8 (client from x-forwarded-for); PROXY protocol listen v2",
        "streams idle 300s; https_redirect false; strip_prefix true",
    ] {
        assert!(checked.stdout.contains(says), "{says}: {}", checked.stdout);
    }
}

/// HAProxy in TCP mode on `front`, sending each connection to `to` with a
/// PROXY v2 header; stopped on drop.
struct HaProxy {
    child: Child,
    _config: TempFile,
}

impl HaProxy {
    fn start(binary: &std::path::Path, front: SocketAddr, to: SocketAddr) -> HaProxy {
        let config = TempFile::new(
            "haproxy.cfg",
            &format!(
                "global\n  maxconn 100\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\n\
                 frontend shoppers\n  bind {front}\n  default_backend ordergate\n\n\
                 backend ordergate\n  server og {to} send-proxy-v2\n"
            ),
        );
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config.path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        HaProxy {
            child,
            _config: config,
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plain HTTP is sent to HTTPS (301 for GET, 308 for POST, the query kept);
/// a request a trusted TLS-terminating proxy says is HTTPS is served, with
/// `Strict-Transport-Security`; a route may opt out.
#[test]
fn plain_http_is_redirected_to_https_and_hsts_rides_on_https_answers() {
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let config = format!(
        "{}\n[[routes]]\nname = \"health\"\npool = \"orders\"\npath_prefix = \"/health\"\nhttps_redirect = false\n",
        shop(&fleet, admin_port, "")
    );
    let proxy = Proxy::try_start_with(
        "grace_period = \"0s\"\nhttps_redirect = true\nhttps_port = 8443\ntrusted_proxies = [\"127.0.0.2\"]\n\
         [server.hsts]\nmax_age = \"8760h\"\ninclude_subdomains = true",
        &config,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let get = proxy.send(
        "GET",
        "/api/products/1?x=1",
        &[("host", "shop.test:8080")],
        b"",
    );
    assert_eq!(get.status, 301, "{}", get.text());
    assert_eq!(
        get.header("location"),
        Some("https://shop.test:8443/api/products/1?x=1")
    );
    let post = proxy.send(
        "POST",
        "/api/orders",
        &[("host", "shop.test"), ("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(post.status, 308);
    assert_eq!(
        post.header("location"),
        Some("https://shop.test:8443/api/orders")
    );
    assert_eq!(proxy.get("/health").status, 200, "the route opted out");
    assert!(proxy
        .get("/health")
        .header("strict-transport-security")
        .is_none());

    let via_tls_proxy = get_from(
        [127, 0, 0, 2],
        proxy.addr,
        "/api/products/1",
        &[("x-forwarded-proto", "https")],
    );
    assert_eq!(via_tls_proxy.status, 200, "{}", via_tls_proxy.text());
    assert_eq!(
        via_tls_proxy.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    // The same claim from anyone else is not believed.
    let forged = get_from(
        [127, 0, 0, 3],
        proxy.addr,
        "/api/products/1",
        &[("x-forwarded-proto", "https")],
    );
    assert_eq!(forged.status, 301);
}

/// A route strips its prefix from the path the backend gets, and sets and
/// removes request and answer headers.
#[test]
fn a_route_strips_its_prefix_and_rewrites_headers() {
    let fleet = Fleet::start(1);
    let admin_port = free_port();
    let route = "path_prefix = \"/shop\"\nstrip_prefix = true\n\
                 [routes.request_headers]\nset = { \"x-storefront\" = \"cn\" }\nremove = [\"x-debug\"]\n\
                 [routes.response_headers]\nset = { \"x-frame-options\" = \"DENY\" }\nremove = [\"x-sim-backend\"]\n";
    let proxy = Proxy::start(&shop(&fleet, admin_port, route));
    let echo = proxy.send("GET", "/shop/__sim/echo?q=1", &[("x-debug", "1")], b"");
    assert_eq!(echo.status, 200, "{}", echo.text());
    let seen = echo.json();
    assert_eq!(seen["path"], "/__sim/echo");
    assert_eq!(seen["headers"]["x-storefront"], "cn");
    assert!(seen["headers"]["x-debug"].is_null(), "{seen}");
    assert_eq!(echo.header("x-frame-options"), Some("DENY"));
    assert!(echo.header("x-sim-backend").is_none());
    let status = admin(admin_port, "GET", "/status").json();
    let route = &status["route_stats"][0];
    assert_eq!(route["strip_prefix"], true);
    assert_eq!(
        route["request_headers"]["set"],
        serde_json::json!(["x-storefront"])
    );
    assert_eq!(
        route["response_headers"]["remove"],
        serde_json::json!(["x-sim-backend"])
    );
    assert_eq!(route["stream_idle_timeout_s"], 300.0);
}

/// `check` refuses header rules it cannot honour.
#[test]
fn check_refuses_rules_on_headers_ordergate_owns() {
    for (route, says) in [
        (
            "[routes.request_headers]\nremove = [\"x-forwarded-for\"]",
            "set by pingora or ordergate",
        ),
        (
            "[routes.response_headers]\nset = { \"content-length\" = \"1\" }",
            "set by pingora or ordergate",
        ),
        (
            "[routes.request_headers]\nset = { \"bad header\" = \"x\" }",
            "is not a header name",
        ),
    ] {
        let config = format!(
            "[[pools]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n\n[[routes]]\nname = \"r\"\npool = \"p\"\n{route}\n"
        );
        let file = TempFile::new("ordergate.toml", &config);
        let checked = crate::support::check(&file.path);
        assert!(!checked.ok, "{route}: {}", checked.stdout);
        assert!(checked.stderr.contains(says), "{route}: {}", checked.stderr);
    }
}
