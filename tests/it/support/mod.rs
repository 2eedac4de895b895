//! Black-box test support: a simulated order [`Fleet`] and a real ordergate
//! [`Proxy`], both child processes of the `ordergate` binary on loopback ports
//! chosen at run time, plus a small HTTP client that reports resets and empty
//! replies as such, and [`wait_until`] for waiting on conditions.

#![allow(dead_code, unreachable_pub)]

pub mod conn;
pub mod failing;
pub mod programs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test: this build's, or the one `ORDERGATE_UNDER_TEST`
/// names (to show that a test fails on an older build; the simulated fleet
/// is always this build's, [`sim_bin`]).
pub fn bin() -> &'static str {
    static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::env::var("ORDERGATE_UNDER_TEST")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_ordergate").to_string())
    });
    &BIN
}

/// The binary that runs `ordergate sim`: always this build's.
pub fn sim_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ordergate")
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for `child` to exit; kills it (and reaps it) when it
/// does not. Its exit status, `None` when it was killed.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// A request to the admin API on `port` of the loopback address; panics on a
/// reset or empty reply.
pub fn admin(port: u16, method: &str, path: &str) -> Response {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    request(addr, method, path, admin_headers(method), b"")
        .unwrap_or_else(|e| panic!("admin {method} {path}: {e:?}"))
}

/// What an admin request says: a state change is JSON (the admin API refuses
/// anything else).
pub fn admin_headers(method: &str) -> &'static [(&'static str, &'static str)] {
    match method {
        "GET" | "HEAD" => &[],
        _ => &[("content-type", "application/json")],
    }
}

/// Whether the admin API on `port` answers `/readyz` with `status` within
/// `timeout`.
pub fn readyz_within(port: u16, status: u16, timeout: Duration) -> bool {
    wait_until(timeout, || admin(port, "GET", "/readyz").status == status)
}

/// The addresses `ordergate sim` reports on its `stdout` ("ordergate sim
/// listening on ADDR"), once `n` came; the ones that came if `timeout` passes
/// first. The output is read to its end on a thread of its own.
pub fn sim_addresses(
    stdout: ChildStdout,
    n: usize,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Vec<SocketAddr>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("ordergate sim listening on ") {
                if let Ok(addr) = addr.trim().parse::<SocketAddr>() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut addrs = Vec::new();
    while addrs.len() < n {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(addr) => addrs.push(addr),
            Err(_) => return Err(addrs),
        }
    }
    Ok(addrs)
}

/// A child process that is killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ordergate sim` serving several backends from one process.
pub struct Fleet {
    /// The backends' addresses, in the order they were asked for.
    pub addrs: Vec<SocketAddr>,
    process: Process,
}

impl Fleet {
    /// Starts `n` simulated backends on free loopback ports.
    pub fn start(n: usize) -> Fleet {
        Fleet::start_with(n, &[])
    }

    /// Starts `n` simulated backends with extra `ordergate sim` flags.
    pub fn start_with(n: usize, flags: &[&str]) -> Fleet {
        let any = vec![SocketAddr::from(([127, 0, 0, 1], 0)); n];
        Fleet::start_on(&any, flags)
    }

    /// Starts simulated backends on these addresses (port 0: a free one), e.g.
    /// to bring a killed fleet back where it was.
    pub fn start_on(addrs: &[SocketAddr], flags: &[&str]) -> Fleet {
        let n = addrs.len();
        let mut command = Command::new(sim_bin());
        command.arg("sim");
        for addr in addrs {
            command.args(["--listen", &addr.to_string()]);
        }
        command.args(flags);
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ordergate sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let process = Process(child);
        match sim_addresses(stdout, n, Duration::from_secs(10)) {
            Ok(addrs) => Fleet { addrs, process },
            Err(got) => panic!("sim did not report {n} listeners within 10s (got {got:?})"),
        }
    }

    /// Kills the fleet's process with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }

    /// Sets the mode of one backend (`PUT /__sim/mode`), e.g. `{"latency_ms":200}`.
    pub fn set_mode(&self, backend: SocketAddr, mode: &str) {
        let response = request(
            backend,
            "PUT",
            "/__sim/mode",
            &[("content-type", "application/json")],
            mode.as_bytes(),
        )
        .expect("PUT /__sim/mode");
        assert_eq!(response.status, 200, "set mode: {}", response.text());
    }

    /// The fleet's counters (`GET /__sim/stats`).
    pub fn stats(&self) -> serde_json::Value {
        let response = get(self.addrs[0], "/__sim/stats").expect("GET /__sim/stats");
        serde_json::from_slice(&response.body).expect("stats are JSON")
    }

    /// Requests the fleet is handling right now.
    pub fn in_flight(&self) -> u64 {
        self.stats()["in_flight"].as_u64().unwrap_or(0)
    }

    /// A backends config line: `[ { addr = "..." , weight = w }, ... ]`.
    pub fn backends_toml(&self, weights: &[u32]) -> String {
        let entries: Vec<String> = self
            .addrs
            .iter()
            .zip(weights.iter().chain(std::iter::repeat(&1)))
            .map(|(addr, weight)| format!("{{ addr = \"{addr}\", weight = {weight} }}"))
            .collect();
        format!("[ {} ]", entries.join(", "))
    }
}

static NEXT_FILE: AtomicUsize = AtomicUsize::new(0);

/// A file in a fresh temporary directory, removed with its directory on drop.
pub struct TempFile {
    /// Where the file is.
    pub path: PathBuf,
}

impl TempFile {
    /// Writes `text` to a new temporary file.
    pub fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!(
            "ordergate-test-{}-{}",
            std::process::id(),
            NEXT_FILE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write temp file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// An `[admin]` table listening on a loopback port.
pub fn admin_section(port: u16) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n\n")
}

/// What `ordergate check` said of a config file.
pub struct Checked {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its report (and warnings).
    pub stdout: String,
    /// Its problems.
    pub stderr: String,
}

/// Runs `ordergate check -c path`.
pub fn check(path: &std::path::Path) -> Checked {
    let output = Command::new(bin())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run ordergate check");
    Checked {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The value of one series (name and labels, as Prometheus writes them) in
/// Prometheus text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The real ordergate binary serving a temporary config.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    server_extra: String,
    logs: Logs,
    config: Arc<TempFile>,
    process: Process,
}

impl Proxy {
    /// Starts ordergate with `[server] listen` on a free port, followed by `body`
    /// (pools and routes), and waits until it accepts connections.
    pub fn start(body: &str) -> Proxy {
        match Proxy::try_start(body) {
            Ok(proxy) => proxy,
            Err(why) => panic!("{why}"),
        }
    }

    /// Like [`Proxy::start`], but returns why ordergate did not come up.
    pub fn try_start(body: &str) -> Result<Proxy, String> {
        Proxy::try_start_with("grace_period = \"0s\"", body)
    }

    /// Like [`Proxy::try_start`], with more `[server]` keys (`server_extra`).
    pub fn try_start_with(server_extra: &str, body: &str) -> Result<Proxy, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let text = Proxy::config_text(addr, server_extra, body);
        let config = Arc::new(TempFile::new("ordergate.toml", &text));
        let (process, logs) = spawn_ordergate(&config.path, false);
        let mut process = process;
        let mut exited = None;
        let up = wait_until(Duration::from_secs(15), || {
            if let Ok(Some(status)) = process.0.try_wait() {
                exited = Some(status);
                return true;
            }
            TcpStream::connect(addr).is_ok()
        });
        if let Some(status) = exited {
            std::thread::sleep(Duration::from_millis(100));
            let logs: Vec<String> = logs
                .lock()
                .map(|l| l.iter().map(|(_, line)| line.clone()).collect())
                .unwrap_or_default();
            return Err(format!(
                "ordergate exited early ({status}) with config:\n{text}\n{}",
                logs.join("\n")
            ));
        }
        if !up {
            return Err(format!("ordergate did not listen on {addr} within 15s"));
        }
        Ok(Proxy {
            addr,
            server_extra: server_extra.to_string(),
            logs,
            config,
            process,
        })
    }

    fn config_text(addr: SocketAddr, server_extra: &str, body: &str) -> String {
        format!("[server]\nlisten = [\"{addr}\"]\nthreads = 2\n{server_extra}\n\n{body}")
    }

    /// [`Proxy::start_upgrade`], returned once the new process waits on the
    /// upgrade socket (removed first, so that it is the new one's).
    pub fn start_upgrade_waiting(&self) -> Proxy {
        let upgrade_socket =
            PathBuf::from(format!("/tmp/ordergate-{}-upgrade.sock", self.addr.port()));
        let _ = std::fs::remove_file(&upgrade_socket);
        let new = self.start_upgrade();
        assert!(
            wait_until(Duration::from_secs(10), || upgrade_socket.exists()),
            "the new process waits for the sockets"
        );
        new
    }

    /// Starts a second ordergate on the same config with `--upgrade`: it waits
    /// for this one's listening sockets, handed over on `SIGQUIT`.
    pub fn start_upgrade(&self) -> Proxy {
        let (process, logs) = spawn_ordergate(&self.config.path, true);
        Proxy {
            addr: self.addr,
            server_extra: self.server_extra.clone(),
            logs,
            config: Arc::clone(&self.config),
            process,
        }
    }

    /// Replaces the config file with the same `[server]` table and a new body.
    pub fn rewrite_config(&self, body: &str) {
        let text = Proxy::config_text(self.addr, &self.server_extra, body);
        std::fs::write(&self.config.path, text).expect("rewrite config");
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to ordergate.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for ordergate to exit; its exit status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.process.0.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// The lines ordergate wrote to stderr so far, each with when it arrived.
    pub fn logs(&self) -> Vec<(Instant, String)> {
        self.logs
            .lock()
            .map(|logs| logs.clone())
            .unwrap_or_default()
    }

    /// Whether a log line for which `wanted` holds comes within `timeout`.
    pub fn logged_within(&self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> bool {
        wait_until(timeout, || self.logs().iter().any(|(_, line)| wanted(line)))
    }

    /// Access-log lines so far (`RUST_LOG` enables them for tests).
    pub fn access_log(&self) -> Vec<(Instant, String)> {
        self.logs()
            .into_iter()
            .filter(|(_, line)| line.contains(" access]"))
            .collect()
    }

    /// `GET path` through the proxy.
    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e:?}"))
    }

    /// A request through the proxy; panics on a reset or empty reply.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"))
    }
}

/// Lines a child wrote to stderr, each with when it arrived.
type Logs = Arc<Mutex<Vec<(Instant, String)>>>;

/// Spawns `ordergate run` on a config file, collecting its stderr lines.
fn spawn_ordergate(config: &std::path::Path, upgrade: bool) -> (Process, Logs) {
    let mut command = Command::new(bin());
    command.args(["run", "-c"]).arg(config);
    if upgrade {
        command.arg("--upgrade");
    }
    let mut child = command
        .env(
            "RUST_LOG",
            "info,pingora_core=warn,pingora_proxy=warn,access=info",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ordergate run");
    let logs = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = child.stderr.take() {
        let logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut logs) = logs.lock() {
                    logs.push((Instant::now(), line));
                }
            }
        });
    }
    (Process(child), logs)
}

/// What went wrong at the HTTP level: what a shopper must never see.
#[derive(Debug)]
pub enum HttpError {
    /// The connection was reset.
    Reset,
    /// The connection closed before a complete response.
    Empty,
    /// The reply was not HTTP.
    Malformed(String),
    /// Any other I/O error (refused, timed out, ...).
    Io(std::io::Error),
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case, in order.
    pub headers: Vec<(String, String)>,
    /// The whole body (chunked bodies decoded).
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Which simulated backend answered.
    pub fn backend(&self) -> SocketAddr {
        self.header("x-sim-backend")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no x-sim-backend in {:?}", self.headers))
    }
}

/// `GET path` on `addr`.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response, HttpError> {
    request(addr, "GET", path, &[], b"")
}

/// Sends one request on a new connection (`Connection: close`) and reads the
/// whole response within 20 seconds.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let mut stream = TcpStream::connect(addr).map_err(HttpError::Io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(HttpError::Io)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(io_error)?;
    stream.write_all(body).map_err(io_error)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io_error)?;
    parse_response(&raw)
}

fn io_error(e: std::io::Error) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
            HttpError::Reset
        }
        _ => HttpError::Io(e),
    }
}

pub fn parse_response(mut raw: &[u8]) -> Result<Response, HttpError> {
    // Skip interim answers such as `100 Continue`.
    while raw.starts_with(b"HTTP/1.1 1") || raw.starts_with(b"HTTP/1.0 1") {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(HttpError::Empty)?;
        raw = &raw[end + 4..];
    }
    if raw.is_empty() {
        return Err(HttpError::Empty);
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Empty)?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| HttpError::Malformed(status_line.to_string()))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if rest.len() < len {
            return Err(HttpError::Empty);
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(HttpError::Empty)?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| HttpError::Malformed(size_text.to_string()))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err(HttpError::Empty);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
