//! `[routes.idempotency]`: keyed orders that happen at most once.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;
use http::Method;

use super::values::{duration_or, method, size, KIB, MIB};
use super::Problems;
use crate::config::file::FileIdempotency;
use crate::config::{IdempotencyConfig, IdempotencyScope};

const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_WAIT_FOR_FIRST: Duration = Duration::from_secs(10);
const DEFAULT_MAX_BYTES: u64 = 256 * MIB;
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * KIB;

/// Validates the table; `retry_header` is the retry section's
/// `idempotency_key_header`, the default key header.
pub(super) fn idempotency(
    at: &dyn fmt::Display,
    file: &FileIdempotency,
    retry_header: &HeaderName,
    problems: &mut Problems,
) -> IdempotencyConfig {
    let header = match file.header.as_deref() {
        None => retry_header.clone(),
        Some(text) => HeaderName::from_str(text).unwrap_or_else(|_| {
            problems.add(
                format!("{at}.header"),
                format!("{text:?} is not a header name; write e.g. \"idempotency-key\""),
            );
            retry_header.clone()
        }),
    };
    let methods = match &file.methods {
        None => vec![Method::POST, Method::PATCH],
        Some(names) => {
            if names.is_empty() {
                problems.add(
                    format!("{at}.methods"),
                    "is empty, so no request is keyed; list methods (e.g. [\"POST\"]) or remove the table",
                );
            }
            names
                .iter()
                .enumerate()
                .filter_map(|(j, name)| {
                    method(name)
                        .map_err(|message| problems.add(format!("{at}.methods[{j}]"), message))
                        .ok()
                })
                .collect()
        }
    };
    let ttl = duration_or(
        &format_args!("{at}.ttl"),
        file.ttl.as_deref(),
        DEFAULT_TTL,
        false,
        problems,
    );
    let wait_for_first = duration_or(
        &format_args!("{at}.wait_for_first"),
        file.wait_for_first.as_deref(),
        DEFAULT_WAIT_FOR_FIRST,
        true,
        problems,
    );
    let max_bytes = size(
        &format_args!("{at}.max_bytes"),
        file.max_bytes.as_ref(),
        DEFAULT_MAX_BYTES,
        (64 * KIB, 64 * 1024 * MIB),
        problems,
    );
    let max_response_bytes = size(
        &format_args!("{at}.max_response_bytes"),
        file.max_response_bytes.as_ref(),
        DEFAULT_MAX_RESPONSE_BYTES,
        (0, 16 * MIB),
        problems,
    );
    if max_response_bytes > max_bytes / 4 {
        problems.add(
            format!("{at}.max_response_bytes"),
            format!(
                "{max_response_bytes} bytes is more than a quarter of max_bytes ({max_bytes}); a few answers would fill the store"
            ),
        );
    }
    if let Some(url) = &file.orders_url {
        if url.is_empty() || url.chars().any(char::is_control) {
            problems.add(
                format!("{at}.orders_url"),
                format!("{url:?} is not a link; write a path or URL, e.g. \"/account/orders\""),
            );
        }
    }
    IdempotencyConfig {
        header,
        methods,
        required: file.required.unwrap_or(false),
        ttl,
        scope: scope(&format_args!("{at}.scope"), file.scope.as_deref(), problems),
        per_shopper_headers: per_shopper_headers(at, file.per_shopper_headers.as_deref(), problems),
        backend_dedupes: file.backend_dedupes.unwrap_or(false),
        max_bytes,
        max_response_bytes: max_response_bytes as usize,
        wait_for_first,
        orders_url: file.orders_url.clone(),
    }
}

/// Header names, each valid.
fn per_shopper_headers(
    at: &dyn fmt::Display,
    names: Option<&[String]>,
    problems: &mut Problems,
) -> Vec<HeaderName> {
    let names = names.unwrap_or_default();
    names
        .iter()
        .enumerate()
        .filter_map(|(i, name)| match HeaderName::from_str(name) {
            Ok(name) => Some(name),
            Err(_) => {
                problems.add(
                    format!("{at}.per_shopper_headers[{i}]"),
                    format!("{name:?} is not a header name"),
                );
                None
            }
        })
        .collect()
}

/// The scope: required, so that one shopper's key never replays to another
/// unless the config says so.
fn scope(at: &dyn fmt::Display, text: Option<&str>, problems: &mut Problems) -> IdempotencyScope {
    const CHOICES: &str = "\"cookie:NAME\" (e.g. \"cookie:session\"), \"header:NAME\", \"authorization\", \"client_ip\", or \"global\" to share keys between shoppers";
    let scope = match text {
        None => {
            problems.add(
                at,
                format!("is required: what keeps two shoppers' keys apart; use {CHOICES}"),
            );
            return IdempotencyScope::Global;
        }
        Some("none") => {
            problems.add(
                at,
                "\"none\" is now spelled \"global\" (one shopper's key replays to every other); prefer a shopper's credential such as \"cookie:session\"",
            );
            return IdempotencyScope::Global;
        }
        Some("global") => Some(IdempotencyScope::Global),
        Some("authorization") => Some(IdempotencyScope::Header(http::header::AUTHORIZATION)),
        Some("client_ip") => Some(IdempotencyScope::ClientIp),
        Some(text) => {
            if let Some(name) = text.strip_prefix("header:") {
                HeaderName::from_str(name)
                    .ok()
                    .map(IdempotencyScope::Header)
            } else if let Some(name) = text.strip_prefix("cookie:") {
                (!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b'='))
                    .then(|| IdempotencyScope::Cookie(name.to_owned()))
            } else {
                None
            }
        }
    };
    scope.unwrap_or_else(|| {
        problems.add(
            at,
            format!(
                "{:?} is not a scope; use {CHOICES}",
                text.unwrap_or_default()
            ),
        );
        IdempotencyScope::Global
    })
}
