//! The access log: one JSON object per line and request, written to stdout or
//! a file, or nowhere (the default). A file is reopened at its path on
//! request ([`AccessLogReopen`], on SIGUSR1), so logrotate can move it away and
//! ordergate goes on writing to a new file.

use parking_lot::Mutex;
use std::fs::OpenOptions;
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::config::AccessLog;

/// One finished request, as the access log writes it.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 time the request finished, UTC.
    pub time: String,
    /// The request id.
    pub request_id: &'a str,
    /// The W3C trace id (32 hex digits), when tracing is on.
    pub trace_id: Option<&'a str>,
    /// The shopper's address (the connection's peer, or the client a
    /// trusted proxy names).
    pub client: Option<std::net::IpAddr>,
    /// Route name, or null when none matched.
    pub route: Option<&'a str>,
    /// Pool name.
    pub pool: Option<&'a str>,
    /// The backend that served (or last failed) the request.
    pub backend: Option<String>,
    /// Request method.
    pub method: &'a str,
    /// Request path (without the query string).
    pub path: &'a str,
    /// Status sent to the client (0 when none could be sent).
    pub status: u16,
    /// Upstream attempts made.
    pub attempts: u32,
    /// Seconds spent waiting in the pool's queue.
    pub queue_wait: f64,
    /// Seconds from the last attempt's start to its response header.
    pub upstream_time: Option<f64>,
    /// Seconds from request to the end of the response.
    pub total_time: f64,
    /// Response body bytes sent.
    pub bytes: usize,
    /// ordergate's outcome reason when it answered itself (`no_route`, `shed`, ...).
    pub outcome: Option<&'static str>,
}

/// Where access records go.
pub struct AccessLogger {
    sink: Option<Arc<Mutex<Sink>>>,
}

/// The open writer, and the file it writes to (none for stdout).
struct Sink {
    writer: Box<dyn Write + Send>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("enabled", &self.enabled())
            .finish()
    }
}

fn open_file(path: &Path) -> Result<Box<dyn Write + Send>, String> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open access log {}: {e}", path.display()))?;
    Ok(Box::new(LineWriter::new(file)))
}

impl AccessLogger {
    /// Opens the access log the config names.
    pub fn open(config: &AccessLog) -> Result<AccessLogger, String> {
        let sink = match config {
            AccessLog::Off => None,
            AccessLog::Stdout => Some(Sink {
                writer: Box::new(LineWriter::new(std::io::stdout())),
                path: None,
            }),
            AccessLog::File(path) => Some(Sink {
                writer: open_file(path)?,
                path: Some(path.clone()),
            }),
        };
        Ok(AccessLogger {
            sink: sink.map(|sink| Arc::new(Mutex::new(sink))),
        })
    }

    /// Whether records are written at all (skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// A handle that reopens the log file, for the signal handler.
    pub fn reopener(&self) -> AccessLogReopen {
        AccessLogReopen {
            sink: self.sink.clone(),
        }
    }

    /// Writes one record as a JSON line.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let Some(sink) = &self.sink else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        {
            let mut sink = sink.lock();
            if let Err(e) = sink.writer.write_all(&line) {
                log::warn!("access log write failed: {e}");
            }
        }
    }
}

/// Reopens the access log file at its configured path (logrotate's
/// `postrotate` sends SIGUSR1 after moving the file away).
#[derive(Clone)]
pub struct AccessLogReopen {
    sink: Option<Arc<Mutex<Sink>>>,
}

impl std::fmt::Debug for AccessLogReopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogReopen").finish_non_exhaustive()
    }
}

impl AccessLogReopen {
    /// Opens the file anew and writes to it from the next record on; returns
    /// the path, or `None` when the log is off or goes to stdout. On an error
    /// the old file stays in use.
    pub fn reopen(&self) -> Result<Option<PathBuf>, String> {
        let Some(sink) = &self.sink else {
            return Ok(None);
        };
        let path = sink.lock().path.clone();
        let Some(path) = path else { return Ok(None) };
        // Open before taking the lock: requests keep logging meanwhile.
        let writer = open_file(&path)?;
        let mut sink = sink.lock();
        if let Err(e) = sink.writer.flush() {
            log::warn!("access log: flushing the old file failed: {e}");
        }
        sink.writer = writer;
        Ok(Some(path))
    }
}

/// The current UTC time as RFC 3339 with milliseconds, e.g. `2026-11-26T02:10:00.123Z`.
pub(crate) fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_writes_to_a_new_file_at_the_same_path() {
        let dir = std::env::temp_dir().join(format!("ordergate-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("access.log");
        let logger = AccessLogger::open(&AccessLog::File(path.clone())).expect("open");
        let record = |id| AccessRecord {
            time: now_rfc3339(),
            request_id: id,
            trace_id: None,
            client: None,
            route: None,
            pool: None,
            backend: None,
            method: "GET",
            path: "/",
            status: 200,
            attempts: 1,
            queue_wait: 0.0,
            upstream_time: None,
            total_time: 0.0,
            bytes: 0,
            outcome: None,
        };
        logger.write(&record("before"));
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        // Until reopened, records follow the moved file.
        logger.write(&record("moved"));
        assert_eq!(logger.reopener().reopen(), Ok(Some(path.clone())));
        logger.write(&record("after"));
        let old = std::fs::read_to_string(&rotated).expect("rotated file");
        let new = std::fs::read_to_string(&path).expect("new file");
        assert!(
            old.contains("\"before\"") && old.contains("\"moved\""),
            "{old}"
        );
        assert!(
            new.contains("\"after\"") && !new.contains("\"before\""),
            "{new}"
        );
        let off = AccessLogger::open(&AccessLog::Off).expect("off");
        assert_eq!(off.reopener().reopen(), Ok(None));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn times_are_rfc3339_in_utc_with_milliseconds() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z'), "{now}");
        assert!(chrono::DateTime::parse_from_rfc3339(&now).is_ok(), "{now}");
    }
}
