//! The SRE's view, against the real binary: the status page in headless
//! Chromium while a backend is killed, the Grafana dashboard and the alert
//! rules checked against a live `/metrics`, the systemd unit and the
//! logrotate example, SIGUSR1 reopening the access log, and `--version`.
//!
//! Chromium, promtool (Debian's `prometheus`), systemd-analyze and logrotate
//! are installed with apt-get when missing; a part that needs one skips with
//! a message only when it cannot be installed.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::programs::{chromium_or_skip, find_chromium, headless_chromium};
use crate::support::{
    admin, admin_section, bin, exit_within, free_port, request, wait_until, Fleet, Proxy, TempFile,
};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What a finished program said.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a command to its end, or kills it after `timeout`.
fn run(mut command: Command, timeout: Duration) -> Result<Ran, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|stream| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    })
    .collect();
    let status = exit_within(&mut child, timeout);
    let mut texts = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let (stdout, stderr) = (
        texts.next().unwrap_or_default(),
        texts.next().unwrap_or_default(),
    );
    match status {
        Some(status) => Ok(Ran {
            ok: status.success(),
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{command:?} did not finish within {timeout:?}\n{stderr}"
        )),
    }
}

fn backend_state(status: &serde_json::Value, addr: SocketAddr) -> String {
    status["pools"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["addr"] == addr.to_string())
        .and_then(|b| b["state"].as_str())
        .unwrap_or("missing")
        .to_string()
}

/// Headless Chromium on `url`, with its own profile directory.
fn chromium(browser: &Path, url: &str, args: &[&str]) -> Ran {
    let profile = TempFile::new("profile", "");
    let mut command = headless_chromium(browser, &profile.path.with_file_name("chromium"));
    command
        .args(["--hide-scrollbars", "--mute-audio"])
        .args(args)
        .arg(url);
    let ran = run(command, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
    assert!(ran.ok, "chromium failed:\n{}", ran.stderr);
    ran
}

/// The `data-state` of the status page's row of `addr`, from its DOM.
fn row_state(dom: &str, addr: SocketAddr) -> Option<String> {
    let at = dom.find(&format!("data-backend=\"{addr}\""))?;
    let start = dom[..at].rfind('<')?;
    let tag = &dom[start..at + dom[at..].find('>')?];
    let state = tag.split("data-state=\"").nth(1)?;
    Some(state[..state.find('"')?].to_string())
}

fn status_page_config(port: u16, addrs: &[SocketAddr], admin_extra: &str) -> String {
    let backends: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "{}{admin_extra}\n[[pools]]\nname = \"orders\"\nbackends = [ {} ]\n[pools.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\n[[routes]]\nname = \"checkout\"\npath_prefix = \"/api/orders\"\npool = \"orders\"\n\n[[routes]]\nname = \"catalog\"\npool = \"orders\"\n",
        admin_section(port),
        backends.join(", ")
    )
}

#[test]
fn status_page_shows_every_backend_and_the_killed_one_as_down() {
    let Some(browser) = chromium_or_skip("status page test") else {
        return;
    };
    let fleet = Fleet::start(2);
    let mut doomed = Fleet::start(1);
    let (fine, drained, killed) = (fleet.addrs[0], fleet.addrs[1], doomed.addrs[0]);
    let port = free_port();
    let proxy = Proxy::start(&status_page_config(port, &[fine, drained, killed], ""));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let status = admin(port, "GET", "/status").json();
            [fine, drained, killed]
                .iter()
                .all(|a| backend_state(&status, *a) == "serving")
        }),
        "every backend serves at first"
    );
    for i in 0..30 {
        assert_eq!(proxy.get(&format!("/api/products/{i}")).status, 200);
    }

    // The kill: the backend's process dies, probes fail, it goes down.
    doomed.kill();
    assert!(
        wait_until(Duration::from_secs(10), || backend_state(
            &admin(port, "GET", "/status").json(),
            killed
        ) == "unhealthy"),
        "the killed backend is marked down"
    );
    let status = admin(port, "GET", "/status").json();
    let down = status["pools"][0]["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["addr"] == killed.to_string()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(down["probe"]["last_ok"], false, "{down}");
    assert!(
        down["probe"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{down}"
    );
    assert!(down["probe"]["changed_ago_s"].as_f64().is_some(), "{down}");
    assert!(status["uptime_seconds"].as_f64() > Some(0.0), "{status}");
    let catalog = status["route_stats"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == "catalog"))
        .cloned()
        .unwrap_or_default();
    assert!(
        catalog["totals"]["requests"]["2xx"].as_u64() >= Some(30),
        "{status}"
    );
    assert!(catalog["totals"]["latency"]["count"].as_u64() >= Some(30));

    // Shoppers keep coming while the page polls, so it has rates to show.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (Arc::clone(&stop), proxy.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = crate::support::get(addr, "/api/products/1");
                let _ = crate::support::get(addr, "/api/orders/1");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let url = format!("http://127.0.0.1:{port}/");
    let dom = chromium(
        &browser,
        &url,
        &["--virtual-time-budget=5000", "--dump-dom"],
    )
    .stdout;
    let target = repo().join("target").join("sre");
    std::fs::create_dir_all(&target).expect("target/sre");
    std::fs::write(target.join("status-page.html"), &dom).expect("save the DOM");
    for (name, size) in [
        ("status-page.png", "1280,660"),
        ("status-page-phone.png", "390,1400"),
    ] {
        let path = target.join(name);
        let _ = std::fs::remove_file(&path);
        chromium(
            &browser,
            &url,
            &[
                &format!("--window-size={size}"),
                "--virtual-time-budget=5000",
                &format!("--screenshot={}", path.display()),
            ],
        );
        let png = std::fs::read(&path).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
        eprintln!("sre: screenshot in {}", path.display());
    }

    assert_eq!(row_state(&dom, fine).as_deref(), Some("up"), "{dom}");
    assert_eq!(row_state(&dom, drained).as_deref(), Some("up"), "{dom}");
    assert_eq!(row_state(&dom, killed).as_deref(), Some("down"), "{dom}");
    // In words, not only in colour, with why.
    assert!(dom.contains(">down</span>"), "{dom}");
    assert!(dom.contains("last probe failed"), "{dom}");
    assert!(dom.contains(&format!("version {}", env!("CARGO_PKG_VERSION"))));
    assert!(dom.contains("2 of 3 backends up"), "{dom}");
    assert!(dom.contains("data-route=\"checkout\""), "{dom}");
    assert!(
        dom.contains("<span id=\"polled\" class=\"note\" aria-live=\"polite\">updated "),
        "the page polled /status: {dom}"
    );
    assert!(
        !dom.contains(">Undrain<") && dom.contains(">Drain<"),
        "{dom}"
    );
    // Rates and percentiles from successive polls, while shoppers come.
    let catalog = dom
        .split("<tr data-route=\"catalog\">")
        .nth(1)
        .and_then(|row| row.split("</tr>").next())
        .unwrap_or_default();
    let cell = |label: &str| {
        catalog
            .split(&format!("data-label=\"{label}\" class=\"num\">"))
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        cell("req/s").parse::<f64>().is_ok_and(|r| r > 0.0),
        "req/s: {catalog}"
    );
    assert!(cell("p99").ends_with(" ms"), "p99: {catalog}");
    // No rooms here: the section stays hidden.
    assert!(dom.contains("<section id=\"rooms\" hidden"), "{dom}");

    // Draining one of the two left: the page shows it drained, and the pool
    // in panic mode (one of three can take traffic).
    assert_eq!(
        admin(port, "POST", &format!("/backends/orders/{drained}/drain")).status,
        200
    );
    let dom = chromium(
        &browser,
        &url,
        &["--virtual-time-budget=5000", "--dump-dom"],
    )
    .stdout;
    std::fs::write(target.join("status-page-drained.html"), &dom).expect("save the DOM");
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    assert_eq!(row_state(&dom, fine).as_deref(), Some("up"), "{dom}");
    assert_eq!(
        row_state(&dom, drained).as_deref(),
        Some("drained"),
        "{dom}"
    );
    assert_eq!(row_state(&dom, killed).as_deref(), Some("down"), "{dom}");
    assert!(dom.contains("1 of 3 backends up"), "{dom}");
    assert!(dom.contains(">Undrain<"), "{dom}");
}

/// Serves the status page and canned `/status` and `/rooms` answers, on a
/// thread of its own, for as long as the test runs; returns the address.
fn serve_canned(status: serde_json::Value, rooms: serde_json::Value) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (kind, body) = match path {
                "/status" => ("application/json", status.to_string()),
                "/rooms" => ("application/json", rooms.to_string()),
                _ => (
                    "text/html; charset=utf-8",
                    include_str!("../../src/admin/status.html").to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = std::io::Write::write_all(&mut stream, response.as_bytes());
        }
    });
    addr
}

#[test]
fn the_page_shows_ejections_queues_reload_errors_maintenance_and_rooms() {
    let Some(browser) = chromium_or_skip("status page test") else {
        return;
    };
    // A real /status, then what an incident would change in it.
    let fleet = Fleet::start(2);
    let port = free_port();
    let _proxy = Proxy::start(&status_page_config(port, &fleet.addrs, ""));
    let mut status = admin(port, "GET", "/status").json();
    let (steady, ejected) = (fleet.addrs[0].to_string(), fleet.addrs[1].to_string());
    {
        let pool = &mut status["pools"][0];
        pool["queue"]["waiting"]["high"] = 3.into();
        pool["queue"]["waiting"]["low"] = 40.into();
        let backends = pool["backends"].as_array_mut().expect("backends");
        for backend in backends.iter_mut() {
            if backend["addr"] == ejected {
                backend["state"] = "ejected".into();
                backend["ejected"] = true.into();
                backend["ejected_for_s"] = 12.0.into();
            } else {
                backend["weight"] = 5.into();
                backend["weight_override"] = 5.into();
            }
        }
    }
    for route in status["route_stats"].as_array_mut().expect("route_stats") {
        if route["name"] == "checkout" {
            route["serving_pool"] = "orders-dr".into();
        }
    }
    status["store"] = serde_json::json!({
        "kind": "redis", "up": false, "down_since": "2026-11-29T12:00:00Z",
        "last_error": "connection refused", "fallbacks": 12
    });
    status["reload"]["last_ok"] = false.into();
    status["reload"]["last_trigger"] = "sighup".into();
    status["reload"]["last_errors"] = serde_json::json!([
        "routes[0] \"checkout\": pool \"payment\" is not defined (pools: orders)"
    ]);
    status["maintenance"] = serde_json::json!([
        { "route": "checkout", "source": "admin", "until": "2026-11-29T14:00:00Z", "message": "stock count" }
    ]);
    let rooms = serde_json::json!({ "rooms": [{
        "name": "sale", "routes": ["checkout", "catalog"], "mode": "always", "control": "paused",
        "before_open": false, "length": 1234, "active": 500, "max_active": 500,
        "admitted_per_minute": 120.0, "estimated_wait_s": 610.0
    }]});
    let addr = serve_canned(status, rooms);
    let dom = chromium(
        &browser,
        &format!("http://{addr}/"),
        &["--virtual-time-budget=5000", "--dump-dom"],
    )
    .stdout;
    let target = repo().join("target").join("sre");
    std::fs::create_dir_all(&target).expect("target/sre");
    std::fs::write(target.join("status-page-incident.html"), &dom).expect("save the DOM");

    assert_eq!(
        row_state(&dom, fleet.addrs[1]).as_deref(),
        Some("ejected"),
        "{dom}"
    );
    assert!(dom.contains("ejected, 12 s left"), "{dom}");
    assert_eq!(row_state(&dom, fleet.addrs[0]).as_deref(), Some("up"));
    assert!(dom.contains("(override; config 1)"), "{steady}: {dom}");
    assert!(dom.contains("43 (high 3, low 40)"), "{dom}");
    assert!(dom.contains("Last reload FAILED (sighup"), "{dom}");
    assert!(dom.contains("pool \"payment\" is not defined"), "{dom}");
    assert!(
        dom.contains(
            "Notice: maintenance of route checkout until 2026-11-29T14:00:00Z (admin): stock count"
        ),
        "{dom}"
    );
    // The waiting room, shown because /rooms answered.
    assert!(!dom.contains("<section id=\"rooms\" hidden"), "{dom}");
    assert!(dom.contains("data-room=\"sale\""), "{dom}");
    assert!(
        dom.contains(">1234<") && dom.contains("500 / 500") && dom.contains("10 min"),
        "{dom}"
    );
    assert!(dom.contains("paused, mode always"), "{dom}");
    assert!(dom.contains("→ served by backup orders-dr"), "{dom}");
    assert!(dom.contains(">store redis DOWN<"), "{dom}");
    assert!(
        dom.contains("Problem: the shared store (redis) does not answer since 2026-11-29T12:00:00Z: connection refused"),
        "{dom}"
    );
}

#[test]
fn the_page_shows_a_real_waiting_room_line() {
    let Some(browser) = chromium_or_skip("status page test") else {
        return;
    };
    let fleet = Fleet::start(1);
    let port = free_port();
    let mut config = status_page_config(port, &fleet.addrs, "");
    config.push_str(
        "\n[[rooms]]\nname = \"sale\"\nroutes = [\"checkout\"]\nsecret = \"a-test-secret-that-is-long-enough-0123456789\"\nmode = \"always\"\nmax_active = 1\n",
    );
    let proxy = Proxy::start(&config);
    // One shopper gets in; the next three wait in line.
    for _ in 0..4 {
        proxy.get("/api/orders/1");
    }
    assert!(wait_until(Duration::from_secs(5), || {
        admin(port, "GET", "/rooms").json()["rooms"][0]["length"].as_u64() >= Some(3)
    }));
    let dom = chromium(
        &browser,
        &format!("http://127.0.0.1:{port}/"),
        &["--virtual-time-budget=3000", "--dump-dom"],
    )
    .stdout;
    assert!(!dom.contains("<section id=\"rooms\" hidden"), "{dom}");
    let row = dom
        .split("<tr data-room=\"sale\">")
        .nth(1)
        .and_then(|row| row.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for the room: {dom}"));
    assert!(row.contains("checkout"), "{row}");
    assert!(
        row.contains("data-label=\"waiting\" class=\"num warn\">3<"),
        "{row}"
    );
    assert!(row.contains("1 / 1"), "{row}");
}

#[test]
fn the_page_needs_no_token_but_the_data_does() {
    let fleet = Fleet::start(1);
    let port = free_port();
    let token = "s3cret-token-for-the-sre-test";
    let proxy = Proxy::start(&status_page_config(
        port,
        &fleet.addrs,
        &format!("token = \"{token}\"\n"),
    ));
    let page = admin(port, "GET", "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = page.text();
    assert!(html.contains("sessionStorage") && html.contains("/status"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing is fetched from elsewhere"
    );
    assert!(
        !html.contains(&fleet.addrs[0].to_string()),
        "no data in the page"
    );
    assert_eq!(admin(port, "GET", "/ui").status, 200);
    assert_eq!(admin(port, "GET", "/status").status, 401);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let auth = format!("Bearer {token}");
    let status = request(addr, "GET", "/status", &[("authorization", &auth)], b"")
        .expect("status")
        .json();
    assert!(status["uptime_seconds"].as_f64().is_some(), "{status}");

    // In a browser: the page asks for the token and shows no data.
    let Some(browser) = find_chromium() else {
        eprintln!("SKIPPED the browser half: chromium is not installed");
        return;
    };
    let dom = chromium(
        &browser,
        &format!("http://127.0.0.1:{port}/"),
        &["--virtual-time-budget=3000", "--dump-dom"],
    )
    .stdout;
    assert!(
        dom.contains("<form class=\"token\" id=\"token-form\">"),
        "{dom}"
    );
    assert!(
        dom.contains("NOT UPDATED: the admin API needs its token"),
        "{dom}"
    );
    assert!(!dom.contains("data-backend="), "{dom}");
    drop(proxy);
}

/// A minimal WebSocket client (RFC 6455, text frames) for the DevTools
/// protocol: enough to drive the status page's buttons.
struct WebSocket {
    stream: std::net::TcpStream,
}

impl WebSocket {
    fn connect(url: &str) -> WebSocket {
        let rest = url.strip_prefix("ws://").expect("a ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = std::net::TcpStream::connect(host).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let handshake = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        std::io::Write::write_all(&mut stream, handshake.as_bytes()).expect("handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("handshake answer");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        WebSocket { stream }
    }

    fn send(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        std::io::Write::write_all(&mut self.stream, &frame).expect("send a frame");
    }

    /// The next text message (fragments joined, control frames skipped).
    fn recv(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).expect("a frame");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n).expect("length");
                    u64::from(u16::from_be_bytes(n))
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n).expect("length");
                    u64::from_be_bytes(n)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).expect("frame size")];
            self.stream.read_exact(&mut payload).expect("payload");
            let opcode = head[0] & 0x0f;
            if opcode >= 0x8 {
                continue;
            }
            message.extend_from_slice(&payload);
            if head[0] & 0x80 != 0 {
                return String::from_utf8_lossy(&message).into_owned();
            }
        }
    }
}

/// One page of a headless Chromium, driven through the DevTools protocol.
struct DevTools {
    socket: WebSocket,
    next_id: u64,
    /// What to type into the next `prompt()`.
    prompt_answer: String,
    _browser: ChildGuard,
}

/// Kills the browser when the test ends, whatever happens.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl DevTools {
    fn open(browser: &Path, url: &str, profile: &Path) -> DevTools {
        let port = free_port();
        let child = headless_chromium(browser, profile)
            .arg(format!("--remote-debugging-port={port}"))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let guard = ChildGuard(child);
        let devtools = SocketAddr::from(([127, 0, 0, 1], port));
        let mut ws_url = None;
        assert!(
            wait_until(Duration::from_secs(30), || {
                let Some(list) = devtools_list(devtools) else {
                    return false;
                };
                let targets: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
                ws_url = targets
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_string);
                ws_url.is_some()
            }),
            "chromium's DevTools did not list the page"
        );
        let socket = WebSocket::connect(&ws_url.unwrap_or_default());
        let mut tools = DevTools {
            socket,
            next_id: 0,
            prompt_answer: String::new(),
            _browser: guard,
        };
        tools.call("Page.enable", serde_json::json!({}));
        tools
    }

    /// Sends a command and returns its result; answers dialogs on the way.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        self.socket
            .send(&serde_json::json!({ "id": id, "method": method, "params": params }).to_string());
        loop {
            let message: serde_json::Value =
                serde_json::from_str(&self.socket.recv()).unwrap_or_default();
            if message["method"] == "Page.javascriptDialogOpening" {
                self.next_id += 1;
                let answer = serde_json::json!({
                    "id": self.next_id,
                    "method": "Page.handleJavaScriptDialog",
                    "params": { "accept": true, "promptText": self.prompt_answer },
                });
                self.socket.send(&answer.to_string());
            } else if message["id"] == id {
                return message["result"].clone();
            }
        }
    }

    /// Evaluates JavaScript in the page; its value.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let result = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        result["result"]["value"].clone()
    }
}

/// DevTools' list of targets. Its HTTP server keeps the connection open
/// whatever the request says, so the body is read by its Content-Length.
fn devtools_list(devtools: SocketAddr) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(devtools).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // It answers only requests that name it by address.
    let get = format!("GET /json/list HTTP/1.1\r\nHost: {devtools}\r\n\r\n");
    std::io::Write::write_all(&mut stream, get.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

#[test]
fn the_page_buttons_drain_undrain_and_weigh_with_the_token_from_the_tab() {
    let Some(browser) = chromium_or_skip("status page buttons test") else {
        return;
    };
    let fleet = Fleet::start(2);
    let port = free_port();
    let token = "another-secret-token-for-buttons";
    let _proxy = Proxy::start(&status_page_config(
        port,
        &fleet.addrs,
        &format!("token = \"{token}\"\n"),
    ));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let auth = format!("Bearer {token}");
    let backend = |addr: SocketAddr| {
        let status = request(
            admin_addr,
            "GET",
            "/status",
            &[("authorization", &auth)],
            b"",
        )
        .expect("status")
        .json();
        status["pools"][0]["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["addr"] == addr.to_string()))
            .cloned()
            .unwrap_or_default()
    };
    let profile = TempFile::new("profile", "");
    let mut page = DevTools::open(
        &browser,
        &format!("http://127.0.0.1:{port}/"),
        &profile.path.with_file_name("chromium"),
    );
    assert!(wait_until(Duration::from_secs(10), || page
        .eval("!document.getElementById('token-form').hidden")
        == true));
    page.eval(&format!(
        "document.getElementById('token').value = '{token}'; document.getElementById('token-form').requestSubmit(); true"
    ));
    assert!(
        wait_until(Duration::from_secs(10), || page
            .eval("document.querySelectorAll('tr[data-backend]').length")
            == 2),
        "the page shows the backends once it has the token"
    );
    assert_eq!(
        page.eval(&format!(
            "sessionStorage.getItem('ordergate-admin-token') === '{token}' && localStorage.length === 0"
        )),
        true,
        "the token is kept in the tab only"
    );
    let target = fleet.addrs[1];
    let row = format!("tr[data-backend=\"{target}\"]");
    let click = |page: &mut DevTools, label: &str| {
        page.eval(&format!(
            "[...document.querySelectorAll('{row} button')].find(b => b.textContent.startsWith('{label}')).click(); true"
        ))
    };

    click(&mut page, "Drain");
    assert!(wait_until(Duration::from_secs(5), || backend(target)
        ["drained"]
        == true));
    assert!(
        wait_until(Duration::from_secs(5), || page
            .eval(&format!("document.querySelector('{row}').dataset.state"))
            == "drained"),
        "the page shows the drain at once"
    );
    assert!(page
        .eval("document.getElementById('message').textContent")
        .as_str()
        .is_some_and(|m| m.contains("drain done")));

    click(&mut page, "Undrain");
    assert!(wait_until(Duration::from_secs(5), || backend(target)
        ["drained"]
        == false));

    page.prompt_answer = "7".to_string();
    click(&mut page, "Weight");
    assert!(wait_until(Duration::from_secs(5), || backend(target)
        ["weight_override"]
        == 7));
    assert_eq!(
        backend(fleet.addrs[0])["weight_override"],
        serde_json::Value::Null
    );
    page.prompt_answer = "0".to_string();
    click(&mut page, "Weight");
    assert!(wait_until(Duration::from_secs(5), || backend(target)
        ["weight_override"]
        .is_null()));
}

/// Metric names a PromQL expression reads. Functions, keywords, label
/// matchers, ranges and grouping labels are skipped; an unknown function
/// is returned as `fn:NAME` so a typo cannot hide.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    const FUNCTIONS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "topk",
        "bottomk",
        "rate",
        "irate",
        "increase",
        "delta",
        "changes",
        "resets",
        "histogram_quantile",
        "clamp_min",
        "clamp_max",
        "abs",
        "label_values",
        "label_replace",
        "avg_over_time",
        "max_over_time",
        "min_over_time",
        "sum_over_time",
        "vector",
        "scalar",
    ];
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Drop string literals, label matchers and ranges.
    let mut plain = String::new();
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        match (closing, c) {
            (None, '"') => closing = Some('"'),
            (None, '{') => closing = Some('}'),
            (None, '[') => closing = Some(']'),
            (None, c) => plain.push(c),
            (Some(end), c) if c == end => {
                closing = None;
                plain.push(' ');
            }
            (Some(_), _) => {}
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let call = chars.get(next) == Some(&'(');
        if GROUPING.contains(&word.as_str()) {
            if call {
                // Skip the label list.
                i = next + chars[next..].iter().position(|c| *c == ')').unwrap_or(0) + 1;
            }
        } else if FUNCTIONS.contains(&word.as_str()) {
            // `sum by (x) (...)` puts the grouping before the call.
        } else if call {
            names.insert(format!("fn:{word}"));
        } else if !KEYWORDS.contains(&word.as_str()) {
            names.insert(word);
        }
    }
    names
}

#[test]
fn promql_metrics_finds_only_metric_names() {
    let names = promql_metrics(
        "histogram_quantile(0.99, sum by (route, le) (rate(ordergate_request_duration_seconds_bucket{job=~\"$job\",route=~\"a|b\"}[$__rate_interval]))) > 2 and on (pool) ordergate_backend_up / 1e9",
    );
    let expected: BTreeSet<String> = [
        "ordergate_request_duration_seconds_bucket",
        "ordergate_backend_up",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
    assert!(promql_metrics("sumx(foo)").contains("fn:sumx"));
}

/// Every metric family name in a live `/metrics` of the real binary, with a
/// config that has every kind of series: health checks, idempotency, a backup
/// pool, a maintenance window, stale answers, a waiting room.
fn live_metric_names() -> BTreeSet<String> {
    let fleet = Fleet::start(2);
    let port = free_port();
    let config = format!(
        "{}[[pools]]\nname = \"orders\"\nbackup = \"orders-dr\"\nbackends = [ {{ addr = \"{}\" }} ]\n[pools.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\n[[pools]]\nname = \"orders-dr\"\nbackends = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"checkout\"\npath_prefix = \"/api/orders\"\npool = \"orders\"\n[routes.idempotency]\nscope = \"global\"\nheader = \"idempotency-key\"\n[routes.maintenance]\nmessage = \"stock count\"\n\n[[routes]]\nname = \"catalog\"\npool = \"orders\"\n[routes.stale]\nmax_age = \"10m\"\n\n[[rooms]]\nname = \"sale\"\nroutes = [\"catalog\"]\nsecret = \"a-test-secret-that-is-long-enough-0123456789\"\nmode = \"on_overload\"\nmax_active = 100\n",
        admin_section(port),
        fleet.addrs[0],
        fleet.addrs[1]
    );
    let proxy = Proxy::start(&config);
    assert_eq!(proxy.get("/api/products/1").status, 200);
    let text = admin(port, "GET", "/metrics").text();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every PromQL expression of the dashboard: panel targets, annotations and
/// template variables.
fn dashboard_queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    ("query", serde_json::Value::String(q)) if q.starts_with("label_values(") => {
                        // label_values(metric, label): the metric only.
                        let inner = q.trim_start_matches("label_values(");
                        out.push(inner.split([',', ')']).next().unwrap_or("").to_string());
                    }
                    _ => dashboard_queries(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The `expr:` values of a Prometheus rule file (single line or `|` blocks).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        if !indent.trim().is_empty() && indent.trim() != "-" {
            continue;
        }
        let rest = rest.trim();
        if rest == "|" || rest == ">" {
            let mut block = Vec::new();
            while i < lines.len()
                && (lines[i].trim().is_empty()
                    || lines[i].len() - lines[i].trim_start().len() > indent.len())
            {
                block.push(lines[i].trim());
                i += 1;
            }
            exprs.push(block.join("\n").trim().to_string());
        } else {
            exprs.push(rest.trim_matches(['"', '\'']).to_string());
        }
    }
    exprs
}

/// Checks rules with promtool when it can be had; says so when not.
fn promtool_check(rules: &Path) {
    let Some(promtool) = crate::support::programs::ensure(&["promtool"], "prometheus") else {
        eprintln!(
            "SKIPPED promtool check of {}: promtool is not installed and apt-get could not install Debian's prometheus",
            rules.display()
        );
        return;
    };
    let mut command = Command::new(promtool);
    command.args(["check", "rules"]).arg(rules);
    let ran = run(command, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ran.ok,
        "promtool check rules {}:\n{}{}",
        rules.display(),
        ran.stdout,
        ran.stderr
    );
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = live_metric_names();
    assert!(
        exported.contains("ordergate_requests_total"),
        "{exported:?}"
    );

    let path = repo().join("conf/grafana/ordergate.json");
    let text = std::fs::read_to_string(&path).expect("conf/grafana/ordergate.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "ordergate");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 30, "{queries:?}");
    let mut used = BTreeSet::new();
    for query in &queries {
        let names = promql_metrics(query);
        assert!(!names.is_empty(), "no metric in {query:?}");
        for name in names {
            assert!(
                exported.contains(&name),
                "the dashboard queries {name}, which /metrics does not export, in {query:?}"
            );
            used.insert(name);
        }
    }
    for needed in [
        "ordergate_requests_total",
        "ordergate_rejections_total",
        "ordergate_queue_depth",
        "ordergate_request_duration_seconds_bucket",
        "ordergate_backend_up",
        "ordergate_backend_ejected",
        "ordergate_retries_total",
        "ordergate_retries_denied_total",
        "ordergate_config_reloads_total",
        "ordergate_connections_closed_total",
        "ordergate_idempotency_total",
        "ordergate_room_waiting",
        "ordergate_pool_active",
        "ordergate_stale_served_total",
        "ordergate_maintenance_open",
        "ordergate_store_up",
    ] {
        assert!(used.contains(needed), "the dashboard shows no {needed}");
    }
    let heatmap = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["type"] == "heatmap");
    assert!(heatmap, "a latency heatmap");

    // The dashboard's queries, with Grafana's variables filled in, are PromQL
    // promtool accepts (as recording rules).
    let dir = TempFile::new("dashboard-rules.yml", "");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        let query = query
            .replace("$__rate_interval", "1m")
            .replace("$job", ".*")
            .replace("$route", ".*")
            .replace("$pool", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::Value::String(query)
        ));
    }
    std::fs::write(&dir.path, rules).expect("write rules");
    promtool_check(&dir.path);

    let alerts_path = repo().join("conf/prometheus/alerts.yml");
    let alerts = std::fs::read_to_string(&alerts_path).expect("conf/prometheus/alerts.yml");
    let exprs = rule_exprs(&alerts);
    assert!(exprs.len() >= 5, "{exprs:?}");
    for expr in &exprs {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        for name in names {
            assert!(
                exported.contains(&name),
                "an alert reads {name}, which /metrics does not export, in {expr:?}"
            );
        }
    }
    for alert in [
        "OrdergatePoolNoHealthyBackend",
        "OrdergateShedding",
        "OrdergateRetryBudgetExhausted",
        "OrdergateReloadFailed",
        "OrdergateLatencyP99High",
    ] {
        assert!(
            alerts.contains(&format!("alert: {alert}\n")),
            "alerts.yml has {alert}"
        );
    }
    promtool_check(&alerts_path);
}

/// `key=value` lines of a unit file, values of repeated keys in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// A systemd time span like `30s`, `2min`, `90` (seconds).
fn unit_seconds(span: &str) -> Option<u64> {
    let digits: String = span.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    match &span[digits.len()..] {
        "" | "s" | "sec" => Some(n),
        "min" | "m" => Some(n * 60),
        _ => None,
    }
}

#[test]
fn the_systemd_unit_runs_check_first_stops_gracefully_and_verifies() {
    let path = repo().join("conf/systemd/ordergate.service");
    let unit = std::fs::read_to_string(&path).expect("conf/systemd/ordergate.service");
    let one = |key: &str| {
        let values = unit_values(&unit, key);
        assert_eq!(values.len(), 1, "{key} once: {values:?}");
        values[0].clone()
    };
    assert!(one("ExecStartPre").contains("ordergate check -c /etc/ordergate/ordergate.toml"));
    assert!(one("ExecStart").contains("ordergate run -c /etc/ordergate/ordergate.toml"));
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert!(unit_seconds(&one("LimitNOFILE")).is_some_and(|n| n >= 65_536));
    // Stopping waits for shutdown_delay and grace_period, so the timeout must
    // outlast both for the shipped config.
    let shipped = ordergate::config::Config::load(&repo().join("conf/ordergate.toml"))
        .expect("conf/ordergate.toml");
    let needed = shipped.server.shutdown_delay + shipped.server.grace_period;
    let timeout = unit_seconds(&one("TimeoutStopSec")).expect("TimeoutStopSec in seconds");
    assert!(
        Duration::from_secs(timeout) > needed,
        "TimeoutStopSec {timeout}s must exceed shutdown_delay + grace_period ({needed:?})"
    );

    let Some(analyze) = crate::support::programs::ensure(&["systemd-analyze"], "systemd") else {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed and apt-get could not install it");
        return;
    };
    // Verify the unit as shipped, with the binary path pointing at this build
    // (verify checks that the commands exist).
    let copy = TempFile::new(
        "ordergate.service",
        &unit.replace("/usr/local/bin/ordergate", bin()),
    );
    let mut command = Command::new(analyze);
    command.arg("verify").arg(&copy.path);
    let ran = run(command, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let complaints: Vec<&str> = ran
        .stderr
        .lines()
        .chain(ran.stdout.lines())
        .filter(|line| line.contains("ordergate.service"))
        .collect();
    assert!(
        ran.ok && complaints.is_empty(),
        "systemd-analyze verify:\n{}{}",
        ran.stdout,
        ran.stderr
    );
}

/// A proxy writing its access log to a file in a fresh directory.
fn proxy_with_access_log() -> (Fleet, Proxy, TempFile) {
    let fleet = Fleet::start(1);
    let log = TempFile::new("access.log", "");
    let proxy = Proxy::start(&format!(
        "[log]\naccess = \"{}\"\n\n[[pools]]\nname = \"p\"\nbackends = [ {{ addr = \"{}\" }} ]\n\n[[routes]]\nname = \"all\"\npool = \"p\"\n",
        log.path.display(),
        fleet.addrs[0]
    ));
    (fleet, proxy, log)
}

fn file_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
}

#[test]
fn sigusr1_reopens_the_access_log_after_it_is_moved() {
    let (_fleet, mut proxy, log) = proxy_with_access_log();
    assert_eq!(proxy.get("/api/products/before-rotation").status, 200);
    assert!(wait_until(Duration::from_secs(5), || file_has(
        &log.path,
        "before-rotation"
    )));
    let rotated = log.path.with_extension("log.1");
    std::fs::rename(&log.path, &rotated).expect("move the log away");
    // Until the signal, ordergate writes to the moved file.
    assert_eq!(proxy.get("/api/products/moved").status, 200);
    assert!(wait_until(Duration::from_secs(5), || file_has(
        &rotated, "moved"
    )));

    proxy.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .logs()
            .iter()
            .any(|(_, l)| l.contains("access log reopened"))),
        "{:?}",
        proxy.logs()
    );
    assert_eq!(proxy.get("/api/products/after-rotation").status, 200);
    assert!(wait_until(Duration::from_secs(5), || file_has(
        &log.path,
        "after-rotation"
    )));
    assert!(!file_has(&log.path, "before-rotation"));
    assert!(!file_has(&rotated, "after-rotation"));
    assert!(
        proxy.wait_exit(Duration::from_millis(100)).is_none(),
        "SIGUSR1 does not stop ordergate"
    );
}

#[test]
fn the_logrotate_example_rotates_and_ordergate_follows() {
    let Some(logrotate) = crate::support::programs::ensure(&["logrotate"], "logrotate") else {
        eprintln!(
            "SKIPPED logrotate test: logrotate is not installed and apt-get could not install it"
        );
        return;
    };
    let example = std::fs::read_to_string(repo().join("conf/logrotate/ordergate"))
        .expect("conf/logrotate/ordergate");
    assert!(example.contains("postrotate") && example.contains("SIGUSR1"));
    let (_fleet, proxy, log) = proxy_with_access_log();
    assert_eq!(proxy.get("/api/products/first-day").status, 200);
    assert!(wait_until(Duration::from_secs(5), || file_has(
        &log.path,
        "first-day"
    )));
    // The example as shipped, for this log file and this process.
    let config = example
        .replace(
            "/var/log/ordergate/access.log",
            &log.path.display().to_string(),
        )
        .replace(
            "systemctl kill --signal=SIGUSR1 ordergate.service",
            &format!("kill -USR1 {}", proxy.pid()),
        );
    let config_file = log.path.with_file_name("logrotate.conf");
    std::fs::write(&config_file, config).expect("write logrotate.conf");
    let mut command = Command::new(logrotate);
    command
        .arg("--force")
        .arg("--state")
        .arg(log.path.with_file_name("logrotate.state"))
        .arg(&config_file);
    let ran = run(command, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert!(ran.ok, "logrotate:\n{}{}", ran.stdout, ran.stderr);
    let rotated = log.path.with_extension("log.1");
    assert!(
        file_has(&rotated, "first-day"),
        "delaycompress keeps .1 plain"
    );
    assert!(wait_until(Duration::from_secs(5), || proxy
        .logs()
        .iter()
        .any(|(_, l)| l.contains("access log reopened"))));
    assert_eq!(proxy.get("/api/products/second-day").status, 200);
    assert!(wait_until(Duration::from_secs(5), || file_has(
        &log.path,
        "second-day"
    )));
    assert!(!file_has(&rotated, "second-day"));
}

#[test]
fn version_names_the_git_revision() {
    let output = Command::new(bin())
        .arg("--version")
        .output()
        .expect("ordergate --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let version = env!("CARGO_PKG_VERSION");
    let revision = text
        .trim()
        .strip_prefix(&format!("ordergate {version} ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("ordergate --version says {text:?}"));
    assert!(
        revision == "unknown"
            || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "{revision:?}"
    );
}
