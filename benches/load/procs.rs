//! The processes of a load run: simulated backends (`ordergate sim`), the
//! proxies under test (ordergate, nginx, HAProxy) started from temporary
//! configs, CPU pinning with `taskset`, and CPU time read from `/proc`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support;

/// The proxy under test runs on this CPU; the load generator and backends on
/// [`LOAD_CPU`].
const PROXY_CPU: usize = 0;
/// CPU of the load generator and the simulated backends.
const LOAD_CPU: usize = 1;

/// Whether processes are pinned to CPUs (set once at start).
static PINNING: AtomicUsize = AtomicUsize::new(0);

/// Pins this process (all its threads, and so every child started later) to
/// [`LOAD_CPU`] when `taskset` exists and there are at least two CPUs. Returns
/// a line describing what was done.
pub(crate) fn pin_self(enabled: bool) -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !enabled {
        return "CPU pinning off (--no-pin)".to_owned();
    }
    if cpus < 2 {
        return format!("CPU pinning off: {cpus} CPU");
    }
    if which("taskset").is_none() {
        return "CPU pinning off: taskset not found (apt-get install util-linux)".to_owned();
    }
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &LOAD_CPU.to_string()])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {
            PINNING.store(1, Ordering::Relaxed);
            format!("proxy under test pinned to CPU {PROXY_CPU}; load generator and backends to CPU {LOAD_CPU}")
        }
        _ => "CPU pinning off: taskset failed".to_owned(),
    }
}

/// A command that runs `program` on the proxy CPU when pinning is on, behind
/// `wrapper` (a program and its arguments, e.g. `prlimit --nofile=N:N --`) if any.
fn proxy_command(program: &Path, wrapper: &[String]) -> Command {
    let mut words: Vec<std::ffi::OsString> = Vec::new();
    if PINNING.load(Ordering::Relaxed) == 1 {
        words.extend(["taskset".into(), "-c".into(), PROXY_CPU.to_string().into()]);
    }
    words.extend(wrapper.iter().map(Into::into));
    words.push(program.into());
    let mut command = Command::new(&words[0]);
    command.args(&words[1..]);
    command
}

/// The path of `program` on PATH (or in the sbin directories, where Debian
/// puts nginx and haproxy).
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory, removed on drop.
pub(crate) struct TempDir {
    /// Where it is.
    pub(crate) path: PathBuf,
}

impl TempDir {
    /// Creates `ordergate-load-<pid>-<n>-<name>` under the system temp dir.
    pub(crate) fn new(name: &str) -> Result<TempDir, String> {
        let path = std::env::temp_dir().join(format!(
            "ordergate-load-{}-{}-{name}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        Ok(TempDir { path })
    }

    /// Writes a file in the directory; returns its path.
    pub(crate) fn write(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let path = self.path.join(name);
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process, stopped on drop: SIGCONT (in case it was stopped), then
/// SIGTERM and a short wait, then SIGKILL of it and any children it left.
pub(crate) struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(mut command: Command, name: &str) -> Result<Proc, String> {
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc {
            child,
            name: name.to_owned(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let family = descendants(self.pid());
        let _ = signal(self.pid(), "CONT");
        let _ = signal(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.exited().is_none() {
            eprintln!("{} did not stop on SIGTERM: SIGKILL", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in family.into_iter().skip(1) {
            let _ = signal(pid, "KILL");
        }
    }
}

/// Sends a signal (`STOP`, `CONT`, `KILL`, `TERM`) with `kill`.
pub(crate) fn signal(pid: u32, name: &str) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("run kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{name} {pid} failed"))
    }
}

/// `pid` and every process below it (found by scanning the parent pids in /proc).
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(child) {
                parents.push((child, stat.ppid));
            }
        }
    }
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    family
}

struct Stat {
    ppid: u32,
    /// utime + stime, and cutime + cstime (children that exited and were
    /// waited for, such as workers retired by a reload), in clock ticks.
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15,
    // cutime 16, cstime 17.
    let ppid = fields.get(1)?.parse().ok()?;
    let mut ticks = 0;
    for index in 11..=14 {
        ticks += fields.get(index)?.parse::<u64>().ok()?;
    }
    Some(Stat { ppid, ticks })
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// CPU time (user + system) used so far by `pid` and its descendants, in µs.
pub(crate) fn cpu_micros(pid: u32) -> u64 {
    let ticks: u64 = descendants(pid)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.ticks)
        .sum();
    ticks * 1_000_000 / clock_ticks()
}

/// Resident memory of `pid` and its descendants (nginx and HAProxy workers),
/// in KiB, from `VmRSS` in /proc; `None` when `pid` is gone.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let own = vm_rss(pid)?;
    let children: u64 = descendants(pid)
        .into_iter()
        .skip(1)
        .filter_map(vm_rss)
        .sum();
    Some(own + children)
}

fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open file descriptors of `pid` and its descendants, from /proc/PID/fd.
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    let count = |p: u32| {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .ok()
            .map(|d| d.count())
    };
    let own = count(pid)?;
    Some(
        own + descendants(pid)
            .into_iter()
            .skip(1)
            .filter_map(count)
            .sum::<usize>(),
    )
}

/// Waits up to `timeout` for a TCP listener at `addr`, failing early when
/// `proc` exits.
fn wait_listening(proc: &mut Proc, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut exited = None;
    let up = support::wait_until(timeout, || {
        if let Some(status) = proc.exited() {
            exited = Some(status);
            return true;
        }
        TcpStream::connect(addr).is_ok()
    });
    match (exited, up) {
        (Some(status), _) => Err(format!("{} exited at start ({status})", proc.name)),
        (None, true) => Ok(()),
        (None, false) => Err(format!(
            "{} did not listen on {addr} within {timeout:?}",
            proc.name
        )),
    }
}

/// One `ordergate sim` process with one listener: a simulated order backend.
pub(crate) struct Backend {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    proc: Proc,
}

impl Backend {
    /// Starts a backend on a free port with extra `ordergate sim` flags.
    pub(crate) fn start(flags: &[String]) -> Result<Backend, String> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Backend::start_listeners(&[any], flags).map(|(backend, _)| backend)
    }

    /// Starts one `ordergate sim` process serving every address of `listen`
    /// (port 0: a free one), all sharing one order book; returns it with the
    /// bound addresses in the order of `listen` (`addr` is the first).
    pub(crate) fn start_listeners(
        listen: &[SocketAddr],
        flags: &[String],
    ) -> Result<(Backend, Vec<SocketAddr>), String> {
        let mut command = Command::new(support::bin());
        command.arg("sim");
        for addr in listen {
            command.arg("--listen").arg(addr.to_string());
        }
        command
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut proc = Proc::spawn(command, "ordergate sim")?;
        let stdout = proc.child.stdout.take().ok_or("ordergate sim: no stdout")?;
        let addrs = support::sim_addresses(stdout, listen.len(), Duration::from_secs(10))
            .map_err(|_| "ordergate sim did not report its addresses within 10s".to_owned())?;
        let addr = *addrs.first().ok_or("ordergate sim reported no address")?;
        Ok((Backend { addr, proc }, addrs))
    }

    /// Starts `n` backends, each its own process.
    pub(crate) fn start_many(n: usize, flags: &[String]) -> Result<Vec<Backend>, String> {
        (0..n).map(|_| Backend::start(flags)).collect()
    }

    /// The process id, for signals.
    pub(crate) fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// What a run asks of the proxy in front of the backends; each proxy gets the
/// closest equivalent of every setting.
#[derive(Clone, Debug)]
pub(crate) struct ProxySpec {
    /// The backends.
    pub(crate) backends: Vec<SocketAddr>,
    /// Least-connections style balancing instead of round robin.
    pub(crate) least: bool,
    /// ordergate's algorithm when `least` (`least_request` or `peak_ewma`).
    pub(crate) ordergate_least: String,
    /// Per-backend concurrency cap and a queue of 64 waiting for 500 ms.
    pub(crate) overload_guard: bool,
    /// Checkout (POST /api/orders) critical with 50% reserved, the rest low.
    pub(crate) priorities: bool,
    /// Active health checks every second (nginx has only passive ones).
    pub(crate) health: bool,
    /// Longest wait for the backend's answer (per try).
    pub(crate) read_timeout: Duration,
    /// ordergate's admin listener (for `POST /reload`).
    pub(crate) admin: bool,
}

impl ProxySpec {
    /// Round robin, no caps, no probes, a 5 s read timeout.
    pub(crate) fn new(backends: Vec<SocketAddr>) -> ProxySpec {
        ProxySpec {
            backends,
            least: false,
            ordergate_least: "least_request".to_owned(),
            overload_guard: false,
            priorities: false,
            health: false,
            read_timeout: Duration::from_secs(5),
            admin: false,
        }
    }
}

/// Per-backend concurrency cap of the overload guard.
pub(crate) const GUARD_MAX_IN_FLIGHT: u32 = 8;
/// Queue length of the overload guard.
const GUARD_QUEUE: u32 = 64;
/// Longest queue wait of the overload guard, in ms.
const GUARD_QUEUE_MS: u64 = 500;

/// Which proxy (or none) the load goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Straight to the backends: the physical limit.
    Direct,
    /// ordergate.
    Ordergate,
    /// nginx (Debian package).
    Nginx,
    /// HAProxy (Debian package).
    Haproxy,
    /// `examples/pingora_floor.rs`: pingora with nothing of ordergate's on
    /// top, to tell the framework's cost per request from ordergate's.
    PingoraFloor,
    /// The same floor with the backend timeouts ordergate always sets (read,
    /// write, connect, pool idle): what those timers alone cost in pingora.
    PingoraFloorTimeouts,
    /// The floor with every safety net ordergate puts on a request: the
    /// timeouts, a request id (to the backend and on the answer), the
    /// forwarding headers set and the client's claims removed.
    PingoraFloorNets,
}

impl Kind {
    /// Every kind, in report order.
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Direct,
        Kind::Ordergate,
        Kind::PingoraFloor,
        Kind::PingoraFloorTimeouts,
        Kind::PingoraFloorNets,
        Kind::Nginx,
        Kind::Haproxy,
    ];

    /// The name used in `--targets` and reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Ordergate => "ordergate",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::PingoraFloor => "pingora-floor",
            Kind::PingoraFloorTimeouts => "pingora-floor-timeouts",
            Kind::PingoraFloorNets => "pingora-floor-nets",
        }
    }

    /// Parses a `--targets` entry.
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the target can run here; prints why not.
    pub(crate) fn available(self) -> bool {
        let program = match self {
            Kind::Direct | Kind::Ordergate => return true,
            Kind::PingoraFloor | Kind::PingoraFloorTimeouts | Kind::PingoraFloorNets => {
                return build_pingora_floor().is_some()
            }
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        };
        if which(program).is_some() {
            true
        } else {
            eprintln!("{program} not found: apt-get install {program} (skipping it)");
            false
        }
    }
}

/// Changes to how a target starts, for the scenarios that need them.
#[derive(Default)]
pub(crate) struct Tweaks {
    /// Edits the proxy's config text before it is written (nginx, HAProxy,
    /// ordergate; the pingora floor has none).
    pub(crate) edit: Option<Box<dyn Fn(String) -> String>>,
    /// A program and its arguments the proxy runs under (e.g. `prlimit`).
    pub(crate) wrapper: Vec<String>,
    /// More addresses to wait for before the target counts as started.
    pub(crate) also_listening: Vec<SocketAddr>,
}

impl Tweaks {
    fn config(&self, text: String) -> String {
        match &self.edit {
            Some(edit) => edit(text),
            None => text,
        }
    }
}

/// A running target: where clients send, and the proxy process (not for direct).
pub(crate) struct Target {
    /// Addresses clients connect to (connection `i` uses `addrs[i % len]`).
    pub(crate) addrs: Vec<SocketAddr>,
    /// ordergate's admin listener, when asked for.
    pub(crate) admin: Option<SocketAddr>,
    /// The config text the proxy was started with (for the report).
    pub(crate) config: String,
    proc: Option<Proc>,
    dir: Option<TempDir>,
}

impl Target {
    /// Starts the target in front of `spec.backends`.
    pub(crate) fn start(kind: Kind, spec: &ProxySpec) -> Result<Target, String> {
        Target::start_tweaked(kind, spec, &Tweaks::default())
    }

    /// Starts the target with its config edited or its command wrapped.
    pub(crate) fn start_tweaked(
        kind: Kind,
        spec: &ProxySpec,
        tweaks: &Tweaks,
    ) -> Result<Target, String> {
        match kind {
            Kind::Direct => Ok(Target {
                addrs: spec.backends.clone(),
                admin: None,
                config: String::new(),
                proc: None,
                dir: None,
            }),
            Kind::Ordergate => start_ordergate(spec, tweaks),
            Kind::Nginx => start_nginx(spec, tweaks),
            Kind::Haproxy => start_haproxy(spec, tweaks),
            Kind::PingoraFloor => start_pingora_floor(spec, tweaks, None),
            Kind::PingoraFloorTimeouts => start_pingora_floor(spec, tweaks, Some("--timeouts")),
            Kind::PingoraFloorNets => start_pingora_floor(spec, tweaks, Some("--nets")),
        }
    }

    /// The proxy's root process id (none for direct).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The end of the proxy's own log (ordergate stderr, nginx error log), for
    /// diagnosing a failed run.
    pub(crate) fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let text = std::fs::read_to_string(dir.path.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Lines the proxy wrote to its error log (stderr) so far.
    pub(crate) fn log_lines(&self) -> usize {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path.join("stderr.log")).ok())
            .map_or(0, |t| t.lines().count())
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], support::free_port()))
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The ordergate config for a spec.
pub(crate) fn ordergate_config(
    spec: &ProxySpec,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
) -> String {
    let mut text = format!(
        "[server]\nlisten = [\"{listen}\"]\nthreads = 1\ngrace_period = \"0s\"\n\n[log]\naccess = \"off\"\n\n"
    );
    if let Some(admin) = admin {
        text.push_str(&format!("[admin]\nlisten = \"{admin}\"\n\n"));
    }
    let balance = if spec.least {
        spec.ordergate_least.as_str()
    } else {
        "round_robin"
    };
    let backends: Vec<String> = spec
        .backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    text.push_str(&format!(
        "[[pools]]\nname = \"orders\"\nbalance = \"{balance}\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"{}\"\nbackends = [ {} ]\n",
        millis(spec.read_timeout),
        backends.join(", ")
    ));
    if spec.overload_guard {
        text.push_str(&format!("max_in_flight = {GUARD_MAX_IN_FLIGHT}\n"));
    }
    if spec.health {
        text.push_str(
            "[pools.health]\nkind = \"http\"\npath = \"/health\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\nstart_healthy = true\n",
        );
    }
    if spec.overload_guard {
        text.push_str(&format!(
            "[pools.queue]\nmax_waiting = {GUARD_QUEUE}\ntimeout = \"{GUARD_QUEUE_MS}ms\"\n"
        ));
        if spec.priorities {
            text.push_str("reserved = { critical = 50 }\n");
        }
    }
    if spec.priorities {
        text.push_str(
            "\n[[routes]]\nname = \"checkout\"\npath_prefix = \"/api/orders\"\nmethods = [\"POST\"]\npriority = \"critical\"\npool = \"orders\"\n\n[[routes]]\nname = \"browse\"\npriority = \"low\"\npool = \"orders\"\n",
        );
    } else {
        text.push_str("\n[[routes]]\nname = \"all\"\npool = \"orders\"\n");
    }
    text
}

fn start_ordergate(spec: &ProxySpec, tweaks: &Tweaks) -> Result<Target, String> {
    let dir = TempDir::new("ordergate")?;
    let listen = free_addr();
    let admin = spec.admin.then(free_addr);
    let config = tweaks.config(ordergate_config(spec, listen, admin));
    let path = dir.write("ordergate.toml", &config)?;
    let log = std::fs::File::create(dir.path.join("stderr.log"))
        .map_err(|e| format!("create log: {e}"))?;
    let mut command = proxy_command(Path::new(support::bin()), &tweaks.wrapper);
    command
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    start_proxy(command, "ordergate", listen, admin, config, dir, tweaks)
}

/// Fills `{{NAME}}` placeholders of a template.
fn fill(template: &str, values: &[(&str, String)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (name, value)| {
            text.replace(&format!("{{{{{name}}}}}"), value)
        })
}

/// The nginx config for a spec (from `benches/peers/nginx.conf.tmpl`).
pub(crate) fn nginx_config(spec: &ProxySpec, listen: SocketAddr, prefix: &Path) -> String {
    let servers: Vec<String> = spec
        .backends
        .iter()
        .map(|a| {
            let cap = if spec.overload_guard {
                format!(" max_conns={GUARD_MAX_IN_FLIGHT}")
            } else {
                String::new()
            };
            format!("        server {a} max_fails=3 fail_timeout=5s{cap};")
        })
        .collect();
    fill(
        include_str!("../peers/nginx.conf.tmpl"),
        &[
            ("PREFIX", prefix.display().to_string()),
            ("LISTEN", listen.to_string()),
            ("SERVERS", servers.join("\n")),
            (
                "BALANCE",
                if spec.least { "least_conn;" } else { "" }.to_owned(),
            ),
            ("READ_TIMEOUT", millis(spec.read_timeout)),
        ],
    )
}

fn start_nginx(spec: &ProxySpec, tweaks: &Tweaks) -> Result<Target, String> {
    let program = which("nginx").ok_or("nginx not found: apt-get install nginx")?;
    let dir = TempDir::new("nginx")?;
    let listen = free_addr();
    let config = tweaks.config(nginx_config(spec, listen, &dir.path));
    let path = dir.write("nginx.conf", &config)?;
    let mut command = proxy_command(&program, &tweaks.wrapper);
    command
        .arg("-p")
        .arg(&dir.path)
        .arg("-e")
        .arg(dir.path.join("stderr.log"))
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    start_proxy(command, "nginx", listen, None, config, dir, tweaks)
}

/// The HAProxy config for a spec (from `benches/peers/haproxy.cfg.tmpl`).
pub(crate) fn haproxy_config(spec: &ProxySpec, listen: SocketAddr, prefix: &Path) -> String {
    let servers: Vec<String> = spec
        .backends
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut line = format!("    server b{i} {a}");
            if spec.overload_guard {
                line.push_str(&format!(
                    " maxconn {GUARD_MAX_IN_FLIGHT} maxqueue {GUARD_QUEUE}"
                ));
            }
            if spec.health {
                line.push_str(
                    " check inter 1s fall 2 rise 2 observe layer4 error-limit 3 on-error mark-down",
                );
            }
            line
        })
        .collect();
    let health = if spec.health {
        "    option httpchk GET /health\n    http-check expect status 200\n    timeout check 500ms"
    } else {
        ""
    };
    let queue = if spec.overload_guard {
        format!("{GUARD_QUEUE_MS}ms")
    } else {
        "15s".to_owned()
    };
    fill(
        include_str!("../peers/haproxy.cfg.tmpl"),
        &[
            ("LISTEN", listen.to_string()),
            ("PREFIX", prefix.display().to_string()),
            ("SERVERS", servers.join("\n")),
            (
                "BALANCE",
                if spec.least {
                    "leastconn"
                } else {
                    "roundrobin"
                }
                .to_owned(),
            ),
            ("READ_TIMEOUT", millis(spec.read_timeout)),
            ("QUEUE_TIMEOUT", queue),
            ("HEALTH", health.to_owned()),
        ],
    )
}

fn start_haproxy(spec: &ProxySpec, tweaks: &Tweaks) -> Result<Target, String> {
    let program = which("haproxy").ok_or("haproxy not found: apt-get install haproxy")?;
    let dir = TempDir::new("haproxy")?;
    let listen = free_addr();
    let config = tweaks.config(haproxy_config(spec, listen, &dir.path));
    let path = dir.write("haproxy.cfg", &config)?;
    let log = std::fs::File::create(dir.path.join("stderr.log"))
        .map_err(|e| format!("create log: {e}"))?;
    let mut command = proxy_command(&program, &tweaks.wrapper);
    command
        .arg("-f")
        .arg(&path)
        // Master-worker in the foreground: SIGUSR2 to this process reloads.
        .args(["-W", "-db"])
        .stdout(Stdio::null())
        .stderr(log);
    start_proxy(command, "haproxy", listen, None, config, dir, tweaks)
}

/// Builds `examples/pingora_floor.rs` (release) once per run and returns its
/// path; prints why not when the build fails.
fn build_pingora_floor() -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_pingora_floor_now).clone()
}

fn build_pingora_floor_now() -> Option<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--example",
            "pingora_floor",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .status();
    // The example lands beside the ordergate binary the bench was built with.
    let path = Path::new(support::bin())
        .parent()
        .map(|dir| dir.join("examples/pingora_floor"));
    match (status, path) {
        (Ok(s), Some(path)) if s.success() && path.exists() => Some(path),
        (status, _) => {
            eprintln!(
                "pingora-floor: building examples/pingora_floor failed ({status:?}); skipping it"
            );
            None
        }
    }
}

/// Starts `examples/pingora_floor` bare (`mode` None) or with `--timeouts` or
/// `--nets` (the timeouts and the other safety nets).
fn start_pingora_floor(
    spec: &ProxySpec,
    tweaks: &Tweaks,
    mode: Option<&str>,
) -> Result<Target, String> {
    let program = build_pingora_floor().ok_or("pingora-floor: no build")?;
    let dir = TempDir::new("pingora-floor")?;
    let listen = free_addr();
    let log = std::fs::File::create(dir.path.join("stderr.log"))
        .map_err(|e| format!("create log: {e}"))?;
    let mut command = proxy_command(&program, &tweaks.wrapper);
    if let Some(mode) = mode {
        // ordergate's defaults: connect 1 s, the pool's request timeout for
        // reads and writes, 60 s idle in the pool.
        command.args([
            mode.to_string(),
            format!("{}", spec.read_timeout.as_millis()),
        ]);
    }
    command
        .arg(listen.to_string())
        .args(spec.backends.iter().map(SocketAddr::to_string))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    let config = format!("pingora_floor {listen} {:?}", spec.backends);
    start_proxy(command, "pingora-floor", listen, None, config, dir, tweaks)
}

/// Spawns a proxy under test and waits until it listens (and its admin
/// listener, when it has one).
fn start_proxy(
    command: Command,
    name: &str,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    config: String,
    dir: TempDir,
    tweaks: &Tweaks,
) -> Result<Target, String> {
    let mut proc = Proc::spawn(command, name)?;
    let mut up =
        wait_listening(&mut proc, listen, Duration::from_secs(15)).and_then(|()| match admin {
            Some(admin) => wait_listening(&mut proc, admin, Duration::from_secs(5)),
            None => Ok(()),
        });
    for addr in &tweaks.also_listening {
        up = up.and_then(|()| wait_listening(&mut proc, *addr, Duration::from_secs(5)));
    }
    let target = Target {
        addrs: vec![listen],
        admin,
        config,
        proc: Some(proc),
        dir: Some(dir),
    };
    match up {
        Ok(()) => Ok(target),
        Err(why) => Err(format!("{why}\n{}", target.log_tail())),
    }
}
