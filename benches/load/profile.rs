//! `--profile`: where each proxy's CPU time goes during the closed-loop
//! maximum of `steady` and `new-connections`. `perf record` samples the proxy
//! process; the samples are summed by component (kernel, pingora, tokio, the
//! allocator, ordergate's own code...) into one table, and the raw
//! `<scenario>-<target>.perf.data` files stay in the report directory for
//! `perf report -i`. Sampling costs the proxy a little CPU: the CPU per
//! request of a profiled run reads a few percent high.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::Action;
use crate::procs::{descendants, which, Kind};

/// Components, in table order.
const COMPONENTS: [&str; 9] = [
    "kernel (syscalls, TCP, wake-ups)",
    "proxy's own code",
    "pingora",
    "tokio",
    "allocator",
    "http, httparse, bytes",
    "libc",
    "std, core, futures",
    "other",
];

/// `perf` on PATH, or why the profile cannot run.
pub(crate) fn perf() -> Result<PathBuf, String> {
    which("perf").ok_or_else(|| "perf not found: apt-get install linux-perf".to_owned())
}

/// An action that samples `pid` and its children (nginx and HAProxy workers)
/// for `duration` into `out`; blocks until done.
pub(crate) fn record(perf: PathBuf, pid: u32, duration: Duration, out: PathBuf) -> Action {
    Box::new(move || {
        let pids: Vec<String> = descendants(pid).iter().map(u32::to_string).collect();
        let status = Command::new(perf)
            .args(["record", "-q", "-F", "999", "-p", &pids.join(","), "-o"])
            .arg(&out)
            .args(["--", "sleep", &format!("{:.2}", duration.as_secs_f64())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("perf record: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("perf record exited with {status}"))
        }
    })
}

/// The component a sample belongs to, from its object and symbol names.
fn component(dso: &str, symbol: &str) -> &'static str {
    let own = |name: &str| dso.starts_with(name);
    let index = if dso.contains("kernel") {
        0
    } else if symbol.contains("ordergate::")
        || own("nginx")
        || own("haproxy")
        || symbol.contains("pingora_floor::")
    {
        1
    } else if symbol.contains("pingora") {
        2
    } else if symbol.contains("tokio::") || symbol.contains("mio::") {
        3
    } else if symbol.starts_with("mi_")
        || symbol.starts_with("_mi_")
        || symbol.contains("malloc")
        || symbol.contains("free")
    {
        4
    } else if symbol.contains("http::") || symbol.contains("httparse") || symbol.contains("bytes::")
    {
        5
    } else if dso.starts_with("libc") || dso.starts_with("[vdso]") {
        6
    } else if symbol.contains("core::") || symbol.contains("std::") || symbol.contains("futures") {
        7
    } else {
        8
    };
    COMPONENTS[index]
}

/// Shares (percent of samples) per component of one recording.
pub(crate) fn breakdown(perf: &Path, data: &Path) -> Result<Vec<(&'static str, f64)>, String> {
    let output = Command::new(perf)
        .args([
            "report",
            "-q",
            "--stdio",
            "--no-children",
            "--percent-limit",
            "0",
        ])
        .args(["--sort", "dso,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("perf report: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut shares = COMPONENTS.map(|c| (c, 0.0));
    for line in text.lines() {
        // "    12.34%  ordergate  [.] pingora_proxy::...": share, object, kind, symbol.
        let mut fields = line.split_whitespace();
        let (Some(share), Some(dso), Some(_kind)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(share) = share.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        let symbol = fields.collect::<Vec<_>>().join(" ");
        let name = component(dso, &symbol);
        if let Some(slot) = shares.iter_mut().find(|(c, _)| *c == name) {
            slot.1 += share;
        }
    }
    if shares.iter().all(|(_, s)| *s == 0.0) {
        return Err(format!("no samples in {}", data.display()));
    }
    Ok(shares.to_vec())
}

/// One profiled target: its shares per component, and its CPU time per
/// request in the same phase (µs), to turn shares into time.
pub(crate) struct Profile {
    /// The target.
    pub(crate) kind: Kind,
    /// Proxy CPU µs per request of the profiled phase.
    pub(crate) cpu_per_request: Option<f64>,
    /// Percent of samples per component.
    pub(crate) shares: Vec<(&'static str, f64)>,
}

/// The markdown table (a column per target) and its JSON.
pub(crate) fn table(rows: &[Profile]) -> (String, Value) {
    let mut out = String::from(
        "Where the proxy's CPU time goes in the closed-loop maximum (`perf record`): share of samples \
         (µs per request)\n\n| component |",
    );
    for row in rows {
        let _ = write!(out, " {} |", row.kind.name());
    }
    out.push_str("\n|---|");
    out.push_str(&"--:|".repeat(rows.len()));
    out.push('\n');
    for component in COMPONENTS {
        let _ = write!(out, "| {component} |");
        for row in rows {
            let share = row
                .shares
                .iter()
                .find(|(c, _)| *c == component)
                .map_or(0.0, |(_, s)| *s);
            let _ = match row.cpu_per_request {
                Some(cpu) => write!(out, " {share:.1}% ({:.1}) |", cpu * share / 100.0),
                None => write!(out, " {share:.1}% |"),
            };
        }
        out.push('\n');
    }
    let json = rows
        .iter()
        .map(|row| {
            let shares: serde_json::Map<String, Value> = row
                .shares
                .iter()
                .map(|(c, s)| ((*c).to_owned(), json!(s)))
                .collect();
            (
                row.kind.name().to_owned(),
                json!({ "cpu_us_per_request": row.cpu_per_request, "percent": shares }),
            )
        })
        .collect::<serde_json::Map<_, _>>();
    (out, Value::Object(json))
}
