//! `[routes.stale]`: stale answers for reads when the backends fail.

use std::fmt;
use std::time::Duration;

use super::values::{duration_or, size, status, KIB, MIB};
use super::Problems;
use crate::config::file::FileStale;
use crate::config::StaleConfig;

pub(super) fn stale(
    at: &dyn fmt::Display,
    file: &FileStale,
    problems: &mut Problems,
) -> StaleConfig {
    let statuses = match &file.statuses {
        None => vec![200],
        Some(codes) => codes
            .iter()
            .enumerate()
            .filter_map(|(i, code)| status(&format_args!("{at}.statuses[{i}]"), *code, problems))
            .collect(),
    };
    let (mut on_error, mut on_overload) = (true, false);
    if let Some(when) = &file.when {
        on_error = false;
        for (i, condition) in when.iter().enumerate() {
            match condition.as_str() {
                "error" => on_error = true,
                "overload" => on_overload = true,
                other => problems.add(
                    format!("{at}.when[{i}]"),
                    format!("{other:?} is not a condition; use \"error\" and/or \"overload\""),
                ),
            }
        }
    }
    StaleConfig {
        max_age: duration_or(
            &format_args!("{at}.max_age"),
            file.max_age.as_deref(),
            Duration::from_secs(600),
            false,
            problems,
        ),
        max_bytes: size(
            &format_args!("{at}.max_bytes"),
            file.max_bytes.as_ref(),
            64 * MIB,
            (64 * KIB, 64 * 1024 * MIB),
            problems,
        ),
        statuses,
        on_error,
        on_overload,
        private_ok: file.private_ok.unwrap_or(false),
        ignore_cookies: ignore_cookies(at, file.ignore_cookies.as_deref(), problems),
    }
}

/// Cookie names, each a valid token (RFC 6265 `cookie-name`).
fn ignore_cookies(
    at: &dyn fmt::Display,
    names: Option<&[String]>,
    problems: &mut Problems,
) -> Vec<String> {
    let names = names.unwrap_or_default();
    for (i, name) in names.iter().enumerate() {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !token {
            problems.add(
                format!("{at}.ignore_cookies[{i}]"),
                format!("{name:?} is not a cookie name"),
            );
        }
    }
    names.to_vec()
}
