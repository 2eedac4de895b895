//! `[maintenance]` and `[routes.maintenance]`: planned maintenance windows.

use std::fmt;
use std::str::FromStr;

use http::header::HeaderName;

use super::Problems;
use crate::config::file::FileMaintenance;
use crate::config::{parse_time, Cidr, MaintenanceConfig};

pub(super) fn maintenance(
    at: &dyn fmt::Display,
    file: &FileMaintenance,
    problems: &mut Problems,
) -> MaintenanceConfig {
    let until = file.until.as_deref().and_then(|text| {
        parse_time(text)
            .map_err(|message| problems.add(format!("{at}.until"), message))
            .ok()
    });
    let allow_cidrs = file
        .allow_cidrs
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, text)| {
            Cidr::from_str(text)
                .map_err(|message| problems.add(format!("{at}.allow_cidrs[{i}]"), message))
                .ok()
        })
        .collect();
    let allow_header = file.allow_header.as_deref().and_then(|text| {
        HeaderName::from_str(text)
            .map_err(|_| {
                problems.add(
                    format!("{at}.allow_header"),
                    format!("{text:?} is not a header name; write e.g. \"x-staff-token\""),
                )
            })
            .ok()
    });
    let allow_token = match (&file.allow_token, &file.allow_token_env) {
        (Some(_), Some(_)) => {
            problems.add(at, "set allow_token or allow_token_env, not both");
            None
        }
        (Some(token), None) => Some(token.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(token) if !token.is_empty() => Some(token),
            _ => {
                problems.add(
                    format!("{at}.allow_token_env"),
                    format!("environment variable {var} is not set or empty"),
                );
                None
            }
        },
        (None, None) => None,
    };
    if allow_header.is_some() != allow_token.is_some() {
        problems.add(
            at,
            "allow_header and allow_token (or allow_token_env) go together: staff pass with the header carrying the token",
        );
    }
    if allow_token.as_ref().is_some_and(|t| t.len() < 16) {
        problems.add(
            format!("{at}.allow_token"),
            "is shorter than 16 characters; use a long random secret",
        );
    }
    MaintenanceConfig {
        active: file.active.unwrap_or(true),
        until,
        message: file.message.clone(),
        allow_cidrs,
        allow_header,
        allow_token,
    }
}
