//! Shared checks of single values (durations, counts, sizes, percentages,
//! names, addresses, methods, priorities, pages directories): each reports a
//! problem with its key path and returns a usable default, so checking goes on.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::Method;

use super::Problems;
use crate::config::{parse_duration, Pages, Priority};

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;

pub(super) fn load_pages(
    at: &dyn fmt::Display,
    base: &Path,
    dir: &str,
    problems: &mut Problems,
) -> Option<Pages> {
    let full = base.join(dir);
    match Pages::load(&full) {
        Ok(pages) => Some(pages),
        Err(errors) => {
            for error in errors {
                problems.add(at, format!("{}: {error}", full.display()));
            }
            None
        }
    }
}

pub(super) fn priority(name: &str) -> Result<Priority, String> {
    Priority::from_str(name).map_err(|_| {
        format!(
            "{name:?} is not a priority class; use \"critical\", \"high\", \"normal\" or \"low\""
        )
    })
}

pub(super) fn status(at: &dyn fmt::Display, code: i64, problems: &mut Problems) -> Option<u16> {
    if (100..=599).contains(&code) {
        Some(code as u16)
    } else {
        problems.add(at, format!("{code} is not an HTTP status; use 100 to 599"));
        None
    }
}

pub(super) fn percent(
    at: &dyn fmt::Display,
    value: Option<i64>,
    default: u8,
    problems: &mut Problems,
) -> u8 {
    match value {
        None => default,
        Some(v @ 0..=100) => v as u8,
        Some(v) => {
            problems.add(at, format!("{v} is not a percentage; use 0 to 100"));
            default
        }
    }
}

/// A size in bytes, written as a whole number (`65536`) or with a unit
/// (`"64KiB"`, `"1MiB"`, `"512B"`), within `range`.
pub(super) fn size(
    at: &dyn fmt::Display,
    value: Option<&toml::Value>,
    default: u64,
    range: (u64, u64),
    problems: &mut Problems,
) -> u64 {
    let Some(value) = value else {
        return default;
    };
    let parsed = match value {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(text) => parse_size(text),
        _ => None,
    };
    match parsed {
        Some(bytes) if (range.0..=range.1).contains(&bytes) => bytes,
        Some(bytes) => {
            problems.add(
                at,
                format!(
                    "{bytes} bytes is out of range; use {} to {} bytes",
                    range.0, range.1
                ),
            );
            default
        }
        None => {
            problems.add(
                at,
                format!("{value} is not a size; write bytes (65536) or with a unit: \"64KiB\", \"1MiB\""),
            );
            default
        }
    }
}

/// `"64KiB"` → 65536. Units: B, KiB (or KB, K), MiB (or MB, M); 1024-based.
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit = match text[digits..].trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" | "kb" => KIB,
        "M" | "MB" | "MiB" | "m" | "mb" => MIB,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// A whole number of at least `min` (and at most a million, to catch typos).
pub(super) fn count(
    at: &dyn fmt::Display,
    value: Option<i64>,
    default: u32,
    min: i64,
    problems: &mut Problems,
) -> u32 {
    match value {
        None => default,
        Some(v) if (min..=1_000_000).contains(&v) => v as u32,
        Some(v) => {
            problems.add(
                at,
                format!("{v} is out of range; use a whole number from {min} to 1000000"),
            );
            default
        }
    }
}

pub(super) fn method(name: &str) -> Result<Method, String> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
    ];
    if KNOWN.contains(&name) {
        Method::from_str(name).map_err(|e| format!("{name:?}: {e}"))
    } else if KNOWN.contains(&name.to_ascii_uppercase().as_str()) {
        Err(format!(
            "{name:?} must be upper case: {:?}",
            name.to_ascii_uppercase()
        ))
    } else {
        Err(format!(
            "{name:?} is not an HTTP method; use {}",
            KNOWN.join(", ")
        ))
    }
}

/// Names become metric labels and log fields: keep them short and plain.
pub(super) fn check_name(at: &dyn fmt::Display, name: &str, problems: &mut Problems) {
    if name.is_empty() {
        problems.add(
            format!("{at}.name"),
            "is required: a name of 1 to 64 letters, digits, '_' or '-', used in logs and metrics",
        );
        return;
    }
    let valid = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        problems.add(
            format!("{at}.name"),
            format!("{name:?} is not a valid name; use 1 to 64 letters, digits, '_' or '-'"),
        );
    }
}

pub(super) fn socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text.trim()).map_err(|_| {
        format!(
            "{text:?} is not an IP:PORT address; write e.g. \"127.0.0.1:9001\" or \"[::1]:9001\""
        )
    })
}

pub(super) fn duration_or(
    path: &dyn fmt::Display,
    text: Option<&str>,
    default: Duration,
    zero_allowed: bool,
    problems: &mut Problems,
) -> Duration {
    let Some(text) = text else {
        return default;
    };
    match parse_duration(text) {
        Ok(d) if d.is_zero() && !zero_allowed => {
            problems.add(path, format!("{text:?} must be longer than zero"));
            default
        }
        Ok(d) => d,
        Err(message) => {
            problems.add(path, message);
            default
        }
    }
}
