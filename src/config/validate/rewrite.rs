//! `server.https_redirect`, `https_port`, `[server.hsts]` and the routes'
//! `request_headers` / `response_headers`: what the edge changes on the way.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;
use http::HeaderValue;

use super::values::duration_or;
use super::Problems;
use crate::config::file::{FileHeaderRules, FileHsts};
use crate::config::HeaderRules;

/// Two years, what the HSTS preload list recommends.
const DEFAULT_HSTS_MAX_AGE: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// Headers a rule may not touch: they frame the message or the connection
/// (pingora and ordergate write them), or ordergate owns them.
const NOT_RULED: [&str; 11] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

pub(super) fn header_rules(
    at: &dyn fmt::Display,
    file: Option<&FileHeaderRules>,
    problems: &mut Problems,
) -> HeaderRules {
    let mut rules = HeaderRules::default();
    let Some(file) = file else {
        return rules;
    };
    let mut name = |key: String, text: &str| match HeaderName::from_str(text) {
        Ok(name) if NOT_RULED.contains(&name.as_str()) => {
            problems.add(
                key,
                format!("{text:?} is set by pingora or ordergate itself; a rule cannot change it"),
            );
            None
        }
        Ok(name) => Some(name),
        Err(_) => {
            problems.add(key, format!("{text:?} is not a header name"));
            None
        }
    };
    for (i, text) in file.remove.iter().flatten().enumerate() {
        if let Some(header) = name(format!("{at}.remove[{i}]"), text) {
            rules.remove.push(header);
        }
    }
    let mut bad_values = Vec::new();
    for (text, value) in file.set.iter().flatten() {
        let Some(header) = name(format!("{at}.set.{text}"), text) else {
            continue;
        };
        match HeaderValue::from_str(value) {
            Ok(value) => rules.set.push((header, value)),
            Err(_) => bad_values.push(text.clone()),
        }
    }
    for text in bad_values {
        problems.add(
            format!("{at}.set.{text}"),
            "is not a valid header value (no line breaks or control characters)",
        );
    }
    rules
}

pub(super) fn https_port(value: Option<i64>, problems: &mut Problems) -> u16 {
    match value {
        None => 443,
        Some(port @ 1..=65535) => port as u16,
        Some(port) => {
            problems.add(
                "server.https_port",
                format!("{port} is not a port; use 1 to 65535"),
            );
            443
        }
    }
}

/// The `Strict-Transport-Security` value of `[server.hsts]`.
pub(super) fn hsts(file: Option<&FileHsts>, problems: &mut Problems) -> Option<HeaderValue> {
    let file = file?;
    let max_age = duration_or(
        &"server.hsts.max_age",
        file.max_age.as_deref(),
        DEFAULT_HSTS_MAX_AGE,
        true,
        problems,
    );
    let mut value = format!("max-age={}", max_age.as_secs());
    if file.include_subdomains.unwrap_or(false) {
        value.push_str("; includeSubDomains");
    }
    if file.preload.unwrap_or(false) {
        if !file.include_subdomains.unwrap_or(false)
            || max_age < Duration::from_secs(365 * 24 * 3600)
        {
            problems.add(
                "server.hsts.preload",
                "browsers preload only with include_subdomains = true and max_age of a year or more",
            );
        }
        value.push_str("; preload");
    }
    HeaderValue::from_str(&value).ok()
}
