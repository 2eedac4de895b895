//! `tls`: what does TLS cost ordergate (rustls) next to nginx (OpenSSL)?
//! Full handshakes per second and proxy CPU per handshake (a new connection
//! per request, session resumption off), and proxy CPU per request over
//! keep-alive HTTPS connections; the same two loads in plaintext beside them,
//! so the part TLS adds is a difference measured in the same run.
//!
//! A self-signed ECDSA P-256 certificate for `localhost` is made at run time
//! (rcgen) in a temporary directory. The load generator is blocking threads
//! with rustls client connections (`rustls::StreamOwned`), pinned with the
//! backends to the other CPU; it verifies the handshake signature but not the
//! chain (the certificate is self-signed).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use serde_json::{json, Value};

use crate::client::complete_response;
use crate::procs::{self, Kind, ProxySpec, Target, TempDir, Tweaks};
use crate::scenarios::{Ctx, ScenarioResult};
use crate::stats::{self, Class, Percentiles};

/// Client threads, each with one connection at a time.
const THREADS: usize = 16;

/// Accepts the run's self-signed certificate; checks the handshake signature.
#[derive(Debug)]
struct SelfSigned(Arc<CryptoProvider>);

impl ServerCertVerifier for SelfSigned {
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

fn client_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("rustls client: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SelfSigned(provider)))
        .with_no_client_auth();
    // Every new connection is a full handshake.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One of the four loads.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    tls: bool,
    keepalive: bool,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "TLS, new connection per request",
        tls: true,
        keepalive: false,
    },
    Mode {
        name: "plaintext, new connection per request",
        tls: false,
        keepalive: false,
    },
    Mode {
        name: "TLS keep-alive",
        tls: true,
        keepalive: true,
    },
    Mode {
        name: "plaintext keep-alive",
        tls: false,
        keepalive: true,
    },
];

fn open(addr: SocketAddr, tls: Option<&Arc<ClientConfig>>) -> Result<Stream, String> {
    let socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = socket.set_nodelay(true);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = socket.set_write_timeout(Some(Duration::from_secs(5)));
    match tls {
        None => Ok(Stream::Plain(socket)),
        Some(config) => {
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let conn =
                ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
            Ok(Stream::Tls(Box::new(StreamOwned::new(conn, socket))))
        }
    }
}

/// One request on `stream`; the class and whether the connection stays usable.
fn exchange(stream: &mut Stream, buf: &mut Vec<u8>, request: &[u8]) -> (Class, bool) {
    if stream.write_all(request).is_err() {
        return (Class::Reset, false);
    }
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match complete_response(buf, false) {
            Ok(Some((class, close, used))) => {
                buf.drain(..used);
                return (class, !close);
            }
            Ok(None) => {}
            Err(()) => return (Class::Reset, false),
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                return match complete_response(buf, true) {
                    Ok(Some((class, _, _))) => (class, false),
                    _ => (Class::Reset, false),
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What one load measured.
struct Measured {
    ok: u64,
    errors: u64,
    seconds: f64,
    cpu_us: u64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds.max(0.001)
    }

    fn cpu_per_request(&self) -> f64 {
        self.cpu_us as f64 / self.ok.max(1) as f64
    }

    fn cores(&self) -> f64 {
        self.cpu_us as f64 / 1e6 / self.seconds.max(0.001)
    }
}

/// Closed loop: [`THREADS`] threads, each sending its next request when the
/// previous answer arrived, for `seconds`.
fn drive(
    addr: SocketAddr,
    tls: Option<&Arc<ClientConfig>>,
    keepalive: bool,
    seconds: f64,
    rate: Option<f64>,
    pid: Option<u32>,
) -> Measured {
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let latency = Mutex::new(stats::histogram(3));
    let connection = if keepalive {
        ""
    } else {
        "Connection: close\r\n"
    };
    let request = format!(
        "GET /api/products/7 HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nUser-Agent: ordergate-tls\r\n{connection}\r\n"
    );
    let cpu0 = pid.map_or(0, procs::cpu_micros);
    let began = Instant::now();
    let stop = began + Duration::from_secs_f64(seconds);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (ok, errors, latency, request) = (&ok, &errors, &latency, &request);
            scope.spawn(move || {
                let mut own = stats::histogram(3);
                let mut stream: Option<Stream> = None;
                let mut buf = Vec::with_capacity(4096);
                // Paced: each thread sends its share of `rate`, latency from
                // the scheduled time; otherwise back to back.
                let every = rate.map(|r| Duration::from_secs_f64(THREADS as f64 / r.max(1.0)));
                let mut next = began
                    + every.map_or(Duration::ZERO, |e| {
                        e.mul_f64(thread as f64 / THREADS as f64)
                    });
                while Instant::now() < stop {
                    if let Some(every) = every {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += every;
                    }
                    let t0 = match every {
                        Some(every) => next - every,
                        None => Instant::now(),
                    };
                    if stream.is_none() {
                        buf.clear();
                        match open(addr, tls) {
                            Ok(s) => stream = Some(s),
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                    let Some(s) = stream.as_mut() else { continue };
                    let (class, reusable) = exchange(s, &mut buf, request.as_bytes());
                    match class {
                        Class::Success { .. } => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            own.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if !keepalive || !reusable {
                        stream = None;
                    }
                }
                if let Ok(mut all) = latency.lock() {
                    let _ = all.add(&own);
                }
            });
        }
    });
    let seconds = began.elapsed().as_secs_f64();
    let cpu_us = pid.map_or(0, procs::cpu_micros).saturating_sub(cpu0);
    Measured {
        ok: ok.into_inner(),
        errors: errors.into_inner(),
        seconds,
        cpu_us,
        latency: latency.into_inner().unwrap_or_else(|p| p.into_inner()),
    }
}

/// One pass over every target: start it with a TLS listener, run the four
/// loads (closed loop, or paced at `rates`, one per load in [`MODES`] order).
fn pass(
    kinds: &[Kind],
    rates: Option<&[f64]>,
    d: f64,
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
    config: &Arc<ClientConfig>,
    failures: &mut Vec<String>,
) -> Result<Rows, String> {
    // Every target is started first, then each load runs on one target after
    // the other: the ratios of one load are measured seconds, not minutes, apart.
    let mut started = Vec::new();
    for &kind in kinds {
        let backends = procs::Backend::start_many(2, &[])?;
        let spec = ProxySpec::new(backends.iter().map(|b| b.addr).collect());
        let tls_addr = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
        let (cert, key) = (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        );
        let edit: Box<dyn Fn(String) -> String> = match kind {
            Kind::Ordergate => Box::new(move |text: String| {
                format!(
                    "{text}\n[[server.tls]]\nlisten = \"{tls_addr}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nhttp2 = false\n"
                )
            }),
            _ => Box::new(move |text: String| {
                text.replacen(
                    "backlog=4096;",
                    &format!(
                        "backlog=4096;\n        listen {tls_addr} ssl backlog=4096;\n        ssl_certificate {cert};\n        \
                         ssl_certificate_key {key};\n        ssl_session_cache off;\n        ssl_session_tickets off;"
                    ),
                    1,
                )
            }),
        };
        let tweaks = Tweaks {
            edit: Some(edit),
            also_listening: vec![tls_addr],
            ..Tweaks::default()
        };
        let target = match Target::start_tweaked(kind, &spec, &tweaks) {
            Ok(t) => t,
            Err(why) => {
                failures.push(format!("{}: did not run: {why}", kind.name()));
                continue;
            }
        };
        let plain = *target.addrs.first().ok_or("no address")?;
        started.push((kind, target, backends, plain, tls_addr));
    }
    let mut rows: Rows = started.iter().map(|s| (s.0, Vec::new())).collect();
    for (i, mode) in MODES.into_iter().enumerate() {
        for (row, (kind, target, _, plain, tls_addr)) in rows.iter_mut().zip(&started) {
            let (kind, plain, tls_addr) = (*kind, *plain, *tls_addr);
            let (addr, tls) = if mode.tls {
                (tls_addr, Some(config))
            } else {
                (plain, None)
            };
            let rate = rates.and_then(|r| r.get(i).copied());
            // A short warm-up, then the measured run.
            let _ = drive(addr, tls, mode.keepalive, 0.3, rate, None);
            let m = drive(addr, tls, mode.keepalive, d, rate, target.pid());
            eprintln!(
                "tls: {} {} ({}): {:.0} req/s, {:.1} µs CPU/req, {:.2} cores, {} errors",
                kind.name(),
                mode.name,
                rate.map_or("closed loop".to_owned(), |r| format!("paced {r:.0}/s")),
                m.rate(),
                m.cpu_per_request(),
                m.cores(),
                m.errors
            );
            if kind == Kind::Ordergate && m.errors > 0 {
                failures.push(format!("ordergate {}: {} errors", mode.name, m.errors));
            }
            row.1.push((mode, m));
        }
    }
    Ok(rows)
}

type Rows = Vec<(Kind, Vec<(Mode, Measured)>)>;

fn table(title: &str, rows: &Rows) -> String {
    let mut out = format!(
        "{title}:\n\n| target | load | req/s | proxy CPU µs/req | proxy cores | p50 ms | p99 ms | errors |\n|---|---|--:|--:|--:|--:|--:|--:|\n"
    );
    for (kind, measured) in rows {
        for (mode, m) in measured {
            let p = Percentiles::of(&m.latency);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
                kind.name(),
                mode.name,
                m.rate(),
                m.cpu_per_request(),
                m.cores(),
                p.p50,
                p.p99,
                m.errors
            );
        }
    }
    out.push('\n');
    out
}

fn cost(measured: &[(Mode, Measured)], tls: bool, keepalive: bool) -> Option<f64> {
    measured
        .iter()
        .find(|(m, _)| m.tls == tls && m.keepalive == keepalive)
        .map(|(_, m)| m.cpu_per_request())
}

/// Runs the scenario.
pub(crate) fn run(ctx: &Ctx<'_>) -> Result<ScenarioResult, String> {
    let d = ctx.main_duration(10.0, 3.0, 1.0);
    let dir = TempDir::new("tls")?;
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| format!("rcgen: {e}"))?;
    let cert_path = dir.write("cert.pem", &key.cert.pem())?;
    let key_path = dir.write("key.pem", &key.signing_key.serialize_pem())?;
    let config = client_config()?;
    let kinds: Vec<Kind> = ctx
        .targets
        .iter()
        .copied()
        .filter(|k| matches!(k, Kind::Ordergate | Kind::Nginx))
        .collect();
    if kinds.is_empty() {
        return Err("tls compares ordergate and nginx: neither is a target".to_owned());
    }
    let mut failures = Vec::new();
    let closed = pass(
        &kinds,
        None,
        d,
        &cert_path,
        &key_path,
        &config,
        &mut failures,
    )?;
    // Then every target at the same rates: 40% of the slowest maximum per load
    // (a paced blocking client needs a wake-up per request: at 70% it fell behind).
    let rates: Vec<f64> = MODES
        .iter()
        .map(|mode| {
            closed
                .iter()
                .filter_map(|(_, ms)| {
                    ms.iter()
                        .find(|(m, _)| m.name == mode.name)
                        .map(|(_, x)| x.rate())
                })
                .fold(f64::MAX, f64::min)
                .max(10.0)
                * 0.4
        })
        .collect();
    let paced = pass(
        &kinds,
        Some(&rates),
        d,
        &cert_path,
        &key_path,
        &config,
        &mut failures,
    )?;

    let mut summary = format!(
        "{THREADS} client threads, {d:.0} s per load; proxy CPU = utime+stime from /proc (nginx: master + worker) \
         ÷ answers. TLS 1.3, ECDSA P-256 certificate, resumption off (every new connection is a full handshake).\n\n"
    );
    summary.push_str(&table(
        "Closed loop (each target's maximum with this client)",
        &closed,
    ));
    summary.push_str(&table(
        "Paced at the same rate for every target (40% of the slowest maximum of each load; latency from the \
         scheduled time)",
        &paced,
    ));
    let _ = writeln!(
        summary,
        "What TLS adds at the same rate (TLS − plaintext, proxy CPU µs per request, paced pass):\n\n\
         | target | per full handshake (new connection) | per keep-alive request |\n|---|--:|--:|"
    );
    let mut added = Vec::new();
    for (kind, measured) in &paced {
        let hs = cost(measured, true, false)
            .zip(cost(measured, false, false))
            .map(|(a, b)| a - b);
        let ka = cost(measured, true, true)
            .zip(cost(measured, false, true))
            .map(|(a, b)| a - b);
        let _ = writeln!(
            summary,
            "| {} | {} | {} |",
            kind.name(),
            hs.map_or("–".to_owned(), |v| format!("{v:.1}")),
            ka.map_or("–".to_owned(), |v| format!("{v:.1}"))
        );
        added.push((*kind, hs, ka));
    }
    if let (Some(og), Some(ng)) = (
        paced.iter().find(|r| r.0 == Kind::Ordergate),
        paced.iter().find(|r| r.0 == Kind::Nginx),
    ) {
        let _ = writeln!(
            summary,
            "\nordergate ÷ nginx, proxy CPU per request at the same rate: {}.",
            MODES
                .iter()
                .filter_map(|mode| {
                    let a = cost(&og.1, mode.tls, mode.keepalive)?;
                    let b = cost(&ng.1, mode.tls, mode.keepalive)?;
                    Some(format!("{} {:.2}×", mode.name, a / b.max(0.001)))
                })
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let mut json_rows = Vec::new();
    for (pass_name, rows) in [("closed", &closed), ("paced", &paced)] {
        for (kind, measured) in rows {
            for (mode, m) in measured {
                let p = Percentiles::of(&m.latency);
                json_rows.push(json!({
                    "pass": pass_name, "target": kind.name(), "load": mode.name, "tls": mode.tls,
                    "keepalive": mode.keepalive, "req_per_s": m.rate(),
                    "proxy_cpu_us_per_request": m.cpu_per_request(), "proxy_cores": m.cores(),
                    "p50_ms": p.p50, "p99_ms": p.p99, "errors": m.errors,
                }));
            }
        }
    }
    let client_bound = closed
        .iter()
        .flat_map(|(_, m)| m.iter())
        .any(|(_, m)| m.cores() < 0.9);
    let mut notes = vec![
        "The client (blocking threads with rustls) runs its own handshakes on the CPU it shares with the \
         backends; when a proxy uses less than a whole core in the closed loop, the rate is the client's limit. \
         The paced pass compares the proxies at the same rate, where CPU per request is comparable."
            .to_owned(),
    ];
    if client_bound {
        notes.push(
            "In this run the closed loop was bound by the client for at least one load (proxy below 0.9 cores)."
                .to_owned(),
        );
    }
    Ok(ScenarioResult {
        name: "tls".to_owned(),
        description: format!(
            "GET /api/products/7 over HTTPS and plaintext to 2 simulated backends, ordergate (rustls, \
             `[[server.tls]]`, http2 off) against nginx (OpenSSL, `ssl_session_cache off; ssl_session_tickets \
             off`); {THREADS} client threads, first in closed loop, then paced at the same rate for both."
        ),
        runs: Vec::new(),
        notes,
        summary,
        summary_json: json!({
            "threads": THREADS,
            "seconds": d,
            "paced_rates_per_s": MODES.iter().zip(&rates).map(|(m, r)| json!({"load": m.name, "rate": r})).collect::<Vec<_>>(),
            "rows": json_rows,
            "tls_added_us_paced": added.iter().map(|(k, hs, ka)| json!({"target": k.name(), "per_handshake": hs, "per_keepalive_request": ka})).collect::<Vec<Value>>(),
        }),
        failures,
    })
}
