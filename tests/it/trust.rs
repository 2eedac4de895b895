//! Operator trust (issue 17): a start that fails fails loudly, and check,
//! status, metrics and logs tell the truth. One test per numbered item of the
//! issue, against the real binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{
    admin, admin_section, exit_within, free_port, readyz_within, wait_until, Fleet, Proxy, TempFile,
};

fn pool_and_route(fleet: &Fleet) -> String {
    format!(
        "[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        fleet.backends_toml(&[1])
    )
}

/// Runs `ordergate run` on `config` and waits up to `timeout` for it to exit;
/// returns its exit status (None: still running, then killed) and stderr.
fn run_until_exit(config: &str, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
    let file = TempFile::new("ordergate.toml", config);
    let mut child = Command::new(crate::support::bin())
        .args(["run", "-c"])
        .arg(&file.path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ordergate run");
    let status = exit_within(&mut child, timeout);
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// A certificate and key for `localhost`, written to temporary files.
struct CertFiles {
    cert: rcgen::Certificate,
    cert_file: TempFile,
    key_file: TempFile,
}

fn cert_files() -> CertFiles {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    CertFiles {
        cert_file: TempFile::new("cert.pem", &certified.cert.pem()),
        key_file: TempFile::new("key.pem", &certified.signing_key.serialize_pem()),
        cert: certified.cert,
    }
}

fn tls_section(addr: SocketAddr, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[[server.tls]]\nlisten = \"{addr}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// Item 1: cert and key swapped. `run` exits 1 within 5 s naming the file,
/// before it says it is listening, and nothing panics.
#[test]
fn a_swapped_certificate_and_key_fail_the_start_with_the_file_named() {
    let fleet = Fleet::start(1);
    let files = cert_files();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[server]\nlisten = [\"{listen}\"]\n{}\n{}",
        tls_section(tls, &files.key_file.path, &files.cert_file.path),
        pool_and_route(&fleet)
    );
    let started = Instant::now();
    let (status, stderr) = run_until_exit(&config, Duration::from_secs(5));
    let status = status.unwrap_or_else(|| panic!("still running after 5 s:\n{stderr}"));
    assert!(!status.success(), "exit status {status}:\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let key_path = files.key_file.path.display().to_string();
    assert!(
        stderr.contains(&key_path) && stderr.contains("swapped"),
        "the message names the file and the reason:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}

/// Item 2: the admin API on a shopper listener's address. `run` exits 1 within
/// 5 s naming the address.
#[test]
fn an_admin_listener_on_a_proxy_address_fails_the_start() {
    let fleet = Fleet::start(1);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[server]\nlisten = [\"{listen}\"]\n[admin]\nlisten = \"{listen}\"\n{}",
        pool_and_route(&fleet)
    );
    let (status, stderr) = run_until_exit(&config, Duration::from_secs(5));
    let status = status.unwrap_or_else(|| panic!("still running after 5 s:\n{stderr}"));
    assert!(!status.success(), "exit status {status}:\n{stderr}");
    assert!(
        stderr.contains(&listen.to_string()) && stderr.contains("admin.listen"),
        "the message names the address:\n{stderr}"
    );
}

/// Item 3: `/readyz` says 200 only once every listener (plain and TLS) accepts
/// connections, and lists them.
#[test]
fn readiness_waits_for_every_listener() {
    let fleet = Fleet::start(1);
    let files = cert_files();
    let port = free_port();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = format!(
        "[server]\nlisten = [\"{listen}\"]\ngrace_period = \"0s\"\n{}\n{}{}",
        tls_section(tls, &files.cert_file.path, &files.key_file.path),
        admin_section(port),
        pool_and_route(&fleet)
    );
    let file = TempFile::new("ordergate.toml", &config);
    let mut child = Command::new(crate::support::bin())
        .args(["run", "-c"])
        .arg(&file.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut ready = None;
    let became_ready = wait_until(Duration::from_secs(15), || {
        match crate::support::get(admin_addr, "/readyz") {
            Ok(answer) if answer.status == 200 => {
                // Right after a 200, every listener must accept.
                let accepting = [listen, tls]
                    .iter()
                    .all(|addr| TcpStream::connect(addr).is_ok());
                ready = Some((answer.json(), accepting));
                true
            }
            _ => false,
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(became_ready, "ready within 15 s");
    let (body, accepting) = ready.expect("an answer");
    assert!(accepting, "/readyz said 200 before every listener accepted");
    assert_eq!(body["ready"], true);
    let listed: Vec<&str> = body["listeners"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, [listen.to_string(), tls.to_string()], "{body}");
}

/// Item 5: the queue limit is the real one before the first request.
#[test]
fn the_queue_limit_is_real_before_the_first_request() {
    let fleet = Fleet::start(2);
    let port = free_port();
    let proxy = Proxy::start(&format!(
        "{}[[pools]]\nname = \"p\"\nmax_in_flight = 100\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
        admin_section(port),
        fleet.backends_toml(&[1, 1])
    ));
    let status = admin(port, "GET", "/status").json();
    assert_eq!(status["pools"][0]["queue"]["limit"], 200, "{status}");
    let metrics = admin(port, "GET", "/metrics").text();
    assert!(
        metrics.contains("ordergate_concurrency_limit{pool=\"p\"} 200"),
        "{metrics}"
    );
    drop(proxy);
}

/// Item 6: every series with a bounded label set exists at zero from the start;
/// build information and process metrics are exported.
#[test]
fn bounded_series_exist_at_zero_from_the_start() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let proxy = Proxy::start(&format!(
        "{}{}",
        admin_section(port),
        pool_and_route(&fleet)
    ));
    let text = admin(port, "GET", "/metrics").text();
    for series in [
        "ordergate_retries_total{reason=\"reset\",route=\"r\"} 0",
        "ordergate_retries_total{reason=\"connect_failure\",route=\"r\"} 0",
        "ordergate_retries_denied_total{reason=\"budget\",route=\"r\"} 0",
        "ordergate_rejections_total{reason=\"shed\",route=\"r\"} 0",
        "ordergate_rejections_total{reason=\"no_route\",route=\"(none)\"} 0",
        "ordergate_config_reloads_total{result=\"success\"} 0",
        "ordergate_config_reloads_total{result=\"failure\"} 0",
        "ordergate_queue_wait_seconds_count{pool=\"p\",priority=\"critical\"} 0",
        "ordergate_pool_panics_total{pool=\"p\"} 0",
        "ordergate_framework_events_total{event=\"upstream_reuse_race\"} 0",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    let build = text
        .lines()
        .find(|l| l.starts_with("ordergate_build_info{"))
        .unwrap_or_else(|| panic!("no ordergate_build_info in:\n{text}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("revision=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
    assert!(!build.contains("revision=\"\""), "{build}");
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(text.contains(process), "missing {process}");
    }
    drop(proxy);
}

/// Sends `n` GETs one after another on one keep-alive connection; returns the statuses.
fn keepalive_gets(addr: SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut statuses = Vec::new();
    for _ in 0..n {
        let head = format!("GET {path} HTTP/1.1\r\nHost: shop.test\r\n\r\n");
        if writer.write_all(head.as_bytes()).is_err() {
            break;
        }
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                let mut size = String::new();
                let _ = reader.read_line(&mut size);
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; size + 2];
                let _ = reader.read_exact(&mut chunk);
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
        }
        statuses.push(status);
    }
    statuses
}

/// Item 7: healthy traffic logs no ERROR line. pingora's routine ERRORs — a
/// pooled backend connection taken at the same moment ("failed to acquire
/// reusable stream"), a client that opens a TLS connection and closes it
/// without a handshake (a load balancer's TCP check) — are debug and counted.
#[test]
fn healthy_traffic_logs_no_error_line() {
    let fleet = Fleet::start(2);
    let port = free_port();
    let files = cert_files();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server_extra = format!(
        "grace_period = \"0s\"\n{}",
        tls_section(tls, &files.cert_file.path, &files.key_file.path)
    );
    let proxy = Proxy::try_start_with(
        &server_extra,
        &format!(
            "{}[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            admin_section(port),
            fleet.backends_toml(&[1, 1])
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let statuses = keepalive_gets(proxy.addr, "/api/products/1", 200);
    assert_eq!(statuses, vec![200; 200]);
    for _ in 0..20 {
        assert_eq!(proxy.get("/api/products/1").status, 200);
    }
    // TCP checks of the TLS listener: connect, then close without a handshake.
    for _ in 0..3 {
        drop(TcpStream::connect(tls).expect("connect the TLS listener"));
    }
    let counted = |metrics: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("ordergate_framework_events_total{event=\"tls_handshake_failed\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(5), || counted(
            &admin(port, "GET", "/metrics").text()
        ) >= 3.0),
        "failed handshakes are counted"
    );
    let errors: Vec<String> = proxy
        .logs()
        .into_iter()
        .map(|(_, line)| line)
        .filter(|line| line.contains(" ERROR ") || line.contains("[ERROR"))
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines on healthy traffic: {errors:#?}"
    );
}

/// Item 9: an admin weight override is shown beside the config's weight, does
/// not count as a config generation, survives a reload visibly, and `value=0`
/// returns to the file's weight.
#[test]
fn a_weight_override_is_shown_as_an_override_and_value_0_resets_it() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let body = |weight: u32| {
        format!(
            "{}[[pools]]\nname = \"p\"\nbackends = {}\n[[routes]]\nname = \"r\"\npool = \"p\"\n",
            admin_section(port),
            fleet.backends_toml(&[weight])
        )
    };
    let proxy = Proxy::start(&body(1));
    let backend = fleet.addrs[0];
    let set = admin(
        port,
        "POST",
        &format!("/backends/p/{backend}/weight?value=7"),
    );
    assert_eq!(set.status, 200, "{}", set.text());
    let status = admin(port, "GET", "/status").json();
    assert_eq!(
        status["generation"], 1,
        "an admin action is not a config generation"
    );
    assert_eq!(status["reload"]["admin_changes"], 1, "{status}");
    let entry = &status["pools"][0]["backends"][0];
    assert_eq!(entry["weight"], 7, "{entry}");
    assert_eq!(entry["config_weight"], 1, "{entry}");
    assert_eq!(entry["weight_override"], 7, "{entry}");

    proxy.rewrite_config(&body(3));
    let reload = admin(port, "POST", "/reload");
    assert_eq!(reload.status, 200, "{}", reload.text());
    let notes = reload.json()["notes"].to_string();
    assert!(
        notes.contains("keeps the weight 7") && notes.contains("value=0"),
        "{notes}"
    );
    let status = admin(port, "GET", "/status").json();
    assert_eq!(status["generation"], 2);
    let entry = &status["pools"][0]["backends"][0];
    assert_eq!(
        (entry["weight"].clone(), entry["config_weight"].clone()),
        (7.into(), 3.into())
    );

    let reset = admin(
        port,
        "POST",
        &format!("/backends/p/{backend}/weight?value=0"),
    );
    assert_eq!(reset.status, 200, "{}", reset.text());
    let status = admin(port, "GET", "/status").json();
    let entry = &status["pools"][0]["backends"][0];
    assert_eq!(entry["weight"], 3, "{entry}");
    assert!(entry["weight_override"].is_null(), "{entry}");
    assert_eq!(status["generation"], 2);
}

/// The certificate a TLS listener serves: whether a client that trusts only
/// `trusted` completes a handshake with it.
fn handshake_trusts(addr: SocketAddr, trusted: &rcgen::Certificate) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(trusted.der().clone())
        .expect("trust the certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut connection =
        rustls::ClientConnection::new(Arc::new(config), name).expect("client connection");
    let Ok(mut socket) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    while connection.is_handshaking() {
        if connection.complete_io(&mut socket).is_err() {
            return false;
        }
    }
    true
}

/// Item 10: a certificate renewed in place (same paths, new files) is served
/// after SIGHUP, and the reload says so.
#[test]
fn a_certificate_renewed_in_place_is_served_after_sighup() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let first = cert_files();
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server_extra = format!(
        "grace_period = \"0s\"\n{}",
        tls_section(tls, &first.cert_file.path, &first.key_file.path)
    );
    let proxy = Proxy::try_start_with(
        &server_extra,
        &format!("{}{}", admin_section(port), pool_and_route(&fleet)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(wait_until(Duration::from_secs(5), || handshake_trusts(
        tls,
        &first.cert
    )));

    let renewed =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    std::fs::write(&first.cert_file.path, renewed.cert.pem()).expect("write cert");
    std::fs::write(&first.key_file.path, renewed.signing_key.serialize_pem()).expect("write key");
    proxy.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || handshake_trusts(
            tls,
            &renewed.cert
        )),
        "the renewed certificate is served"
    );
    assert!(!handshake_trusts(tls, &first.cert), "the old one is not");
    let status = admin(port, "GET", "/status").json();
    let notes = status["reload"]["last_notes"].to_string();
    assert!(notes.contains("new certificate"), "{status}");
}

/// Item 11: SIGTERM on an idle process exits at once, not after the grace
/// period; `shutdown_delay` keeps serving while `/readyz` says 503; a final
/// line says what was finished and what was cut.
#[test]
fn sigterm_waits_the_shutdown_delay_serving_then_exits_once_idle() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let mut proxy = Proxy::try_start_with(
        "grace_period = \"10s\"\nshutdown_delay = \"2s\"",
        &format!("{}{}", admin_section(port), pool_and_route(&fleet)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(readyz_within(port, 200, Duration::from_secs(5)));
    let sent = Instant::now();
    proxy.signal("TERM");
    assert!(
        readyz_within(port, 503, Duration::from_secs(1)),
        "readiness turns false at once"
    );
    // Still serving during the delay.
    assert_eq!(proxy.get("/api/products/1").status, 200);
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "the check ran within the delay"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(6))
        .expect("exits soon after the delay, not after the 10 s grace period");
    assert!(status.success(), "{status}");
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "took {took:?}"
    );
    assert!(
        proxy.logged_within(Duration::from_secs(2), |l| l.contains("shutdown complete")
            && l.contains("finished")
            && l.contains("cut"))
    );
}

/// Item 7, during a graceful upgrade: the new process polls for the old one's
/// sockets until it gets SIGQUIT; pingora logs each poll at ERROR, ordergate
/// at debug, counted. Neither process logs an ERROR line.
#[test]
fn a_graceful_upgrade_logs_no_error_line() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let mut old = Proxy::start(&format!(
        "{}{}",
        admin_section(port),
        pool_and_route(&fleet)
    ));
    let new = old.start_upgrade_waiting();
    assert!(
        wait_until(Duration::from_secs(5), || new
            .logs()
            .iter()
            .any(|(_, l)| l.contains("send it SIGQUIT"))),
        "the new process says what it waits for"
    );
    old.signal("QUIT");
    let status = old
        .wait_exit(Duration::from_secs(15))
        .expect("the old process exits");
    assert!(status.success(), "old process: {status}");
    assert_eq!(new.get("/api/products/1").status, 200);
    let metrics = admin(port, "GET", "/metrics").text();
    let waits = metrics
        .lines()
        .find(|l| l.starts_with("ordergate_framework_events_total{event=\"upgrade_socket_wait\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(waits.is_some_and(|n| n >= 1.0), "{waits:?}");
    for (who, logs) in [("old", old.logs()), ("new", new.logs())] {
        let errors: Vec<&String> = logs
            .iter()
            .map(|(_, line)| line)
            .filter(|line| line.contains(" ERROR "))
            .collect();
        assert!(errors.is_empty(), "{who} process logged ERROR: {errors:#?}");
    }
}
