//! `[[rooms]]`: waiting rooms in front of routes.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::header::HeaderName;

use super::values::{check_name, duration_or, method};
use super::Problems;
use crate::config::file::{FileBypass, FileRoom, FileRoute};
use crate::config::schema::entry_path;
use crate::config::{parse_time, Bypass, RoomConfig, RoomMode, Secret};

const DEFAULT_SESSION: Duration = Duration::from_secs(300);
const DEFAULT_MAX_SESSION: Duration = Duration::from_secs(1800);
const DEFAULT_MAX_WAITING: u32 = 1_000_000;
const DEFAULT_TICKET_RATE_PER_ADDRESS: u32 = 20;
const DEFAULT_REFRESH: Duration = Duration::from_secs(10);
const DEFAULT_TICKET_TIMEOUT: Duration = Duration::from_secs(60);
/// Shortest HMAC key: 256 bits, the output size of SHA-256.
const MIN_SECRET_BYTES: usize = 32;

pub(super) fn rooms(
    files: &[FileRoom],
    routes: &[FileRoute],
    problems: &mut Problems,
) -> Vec<RoomConfig> {
    let mut names = HashSet::new();
    let mut covered: Vec<(&str, &str)> = Vec::new();
    let mut rooms = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let at = entry_path("rooms", i, &file.name);
        check_name(&at, &file.name, problems);
        if !names.insert(file.name.as_str()) {
            problems.add(
                at,
                "this room name is already used by an earlier room; room names must be unique (they name the shoppers' cookies)",
            );
        }
        if file.routes.is_empty() {
            let defined: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
            problems.add(
                format!("{at}.routes"),
                format!(
                    "is required: the names of the routes the room covers (defined: {})",
                    defined.join(", ")
                ),
            );
        }
        for (j, route) in file.routes.iter().enumerate() {
            if !routes.iter().any(|r| &r.name == route) {
                let defined: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
                problems.add(
                    format!("{at}.routes[{j}]"),
                    format!(
                        "route {route:?} is not defined (defined: {})",
                        defined.join(", ")
                    ),
                );
            } else if let Some((_, other)) = covered.iter().find(|(r, _)| r == route) {
                problems.add(
                    format!("{at}.routes[{j}]"),
                    format!("route {route:?} is already covered by room {other:?}; a route has at most one room"),
                );
            } else {
                covered.push((route, &file.name));
            }
        }
        rooms.push(room(&at, file, problems));
    }
    rooms
}

fn room(at: &dyn fmt::Display, file: &FileRoom, problems: &mut Problems) -> RoomConfig {
    let positive = |key: &str, value: Option<i64>, problems: &mut Problems| match value {
        None => None,
        Some(n @ 1..=100_000_000) => Some(n as u32),
        Some(n) => {
            problems.add(
                format!("{at}.{key}"),
                format!("{n} is out of range; use a whole number from 1 to 100000000 (0 would let nobody in)"),
            );
            None
        }
    };
    let max_active = positive("max_active", file.max_active, problems);
    let admit_per_minute = positive("admit_per_minute", file.admit_per_minute, problems);
    if file.max_active.is_none() && file.admit_per_minute.is_none() {
        problems.add(
            at,
            "has no capacity: set max_active (shoppers on the site at once) and/or admit_per_minute (new shoppers let in per minute)",
        );
    }
    let session = duration_or(
        &format_args!("{at}.session"),
        file.session.as_deref(),
        DEFAULT_SESSION,
        false,
        problems,
    );
    let max_session = duration_or(
        &format_args!("{at}.max_session"),
        file.max_session.as_deref(),
        DEFAULT_MAX_SESSION.max(session),
        false,
        problems,
    );
    if max_session < session {
        problems.add(
            format!("{at}.max_session"),
            format!("{max_session:?} is shorter than session ({session:?}): every pass would end before it idles out; make it at least {session:?}"),
        );
    }
    let max_waiting = match file.max_waiting {
        None => DEFAULT_MAX_WAITING,
        Some(n @ 1..=100_000_000) => n as u32,
        Some(n) => {
            problems.add(
                format!("{at}.max_waiting"),
                format!("{n} is out of range; use a whole number from 1 to 100000000"),
            );
            DEFAULT_MAX_WAITING
        }
    };
    let ticket_rate_per_address = match file.ticket_rate_per_address {
        None => DEFAULT_TICKET_RATE_PER_ADDRESS,
        Some(n @ 1..=1_000_000) => n as u32,
        Some(n) => {
            problems.add(
                format!("{at}.ticket_rate_per_address"),
                format!("{n} is out of range; use a whole number from 1 to 1000000"),
            );
            DEFAULT_TICKET_RATE_PER_ADDRESS
        }
    };
    let refresh = duration_or(
        &format_args!("{at}.refresh"),
        file.refresh.as_deref(),
        DEFAULT_REFRESH,
        false,
        problems,
    );
    if refresh < Duration::from_secs(1) {
        problems.add(
            format!("{at}.refresh"),
            "is shorter than 1s; the waiting page checks again in whole seconds",
        );
    }
    let ticket_timeout = duration_or(
        &format_args!("{at}.ticket_timeout"),
        file.ticket_timeout.as_deref(),
        DEFAULT_TICKET_TIMEOUT,
        false,
        problems,
    );
    if ticket_timeout < refresh * 2 {
        problems.add(
            format!("{at}.ticket_timeout"),
            format!(
                "{ticket_timeout:?} is shorter than twice refresh ({refresh:?}): shoppers who keep the page open would lose their place; make it at least {:?}",
                refresh * 2
            ),
        );
    }
    let mode = match file.mode.as_deref() {
        None | Some("on_overload") => RoomMode::OnOverload,
        Some("always") => RoomMode::Always,
        Some("off") => RoomMode::Off,
        Some(other) => {
            problems.add(
                format!("{at}.mode"),
                format!("{other:?} is not a mode; use \"on_overload\", \"always\" or \"off\""),
            );
            RoomMode::OnOverload
        }
    };
    let opens_at = file.opens_at.as_ref().and_then(|value| {
        let text = match value {
            toml::Value::Datetime(d) => d.to_string(),
            other => other.as_str().unwrap_or_default().to_owned(),
        };
        parse_time(&text)
            .map_err(|message| problems.add(format!("{at}.opens_at"), message))
            .ok()
    });
    RoomConfig {
        name: file.name.clone(),
        routes: file.routes.clone(),
        max_active,
        admit_per_minute,
        session,
        max_session,
        max_waiting,
        ticket_rate_per_address,
        refresh,
        ticket_timeout,
        secret: secret(at, file, problems),
        mode,
        bypass: file
            .bypass
            .as_ref()
            .map(|b| bypass(&format_args!("{at}.bypass"), b, problems))
            .unwrap_or_default(),
        opens_at,
    }
}

fn secret(at: &dyn fmt::Display, file: &FileRoom, problems: &mut Problems) -> Secret {
    let (key, value) = match (&file.secret, &file.secret_env) {
        (Some(_), Some(_)) => {
            problems.add(at, "set secret or secret_env, not both");
            return Secret(Vec::new());
        }
        (Some(secret), None) => ("secret", secret.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) => ("secret_env", value),
            Err(_) => {
                problems.add(
                    format!("{at}.secret_env"),
                    format!("the environment variable {var:?} is not set; export it with a random value of 32 bytes or more (e.g. `openssl rand -hex 32`)"),
                );
                return Secret(Vec::new());
            }
        },
        (None, None) => {
            problems.add(
                at,
                "has no secret: set secret_env (recommended) or secret to a random value of 32 bytes or more (e.g. `openssl rand -hex 32`); it signs tickets and passes",
            );
            return Secret(Vec::new());
        }
    };
    if value.len() < MIN_SECRET_BYTES {
        problems.add(
            format!("{at}.{key}"),
            format!(
                "is {} bytes; use 32 bytes or more (e.g. `openssl rand -hex 32`), or anyone could forge passes",
                value.len()
            ),
        );
    }
    Secret(value.into_bytes())
}

fn bypass(at: &dyn fmt::Display, file: &FileBypass, problems: &mut Problems) -> Bypass {
    let paths = file.paths.clone().unwrap_or_default();
    for (j, path) in paths.iter().enumerate() {
        if !path.starts_with('/') {
            problems.add(
                format!("{at}.paths[{j}]"),
                format!("{path:?} must start with '/', e.g. \"/api/payments/callback\""),
            );
        }
    }
    let methods = file
        .methods
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(j, name)| {
            method(name)
                .map_err(|message| problems.add(format!("{at}.methods[{j}]"), message))
                .ok()
        })
        .collect();
    let header = match (&file.header, &file.header_value) {
        (None, None) => None,
        (None, Some(_)) => {
            problems.add(
                format!("{at}.header_value"),
                "needs header: the name of the header that carries it",
            );
            None
        }
        (Some(name), value) => match HeaderName::from_str(name) {
            Ok(name) => Some((name, value.clone())),
            Err(_) => {
                problems.add(
                    format!("{at}.header"),
                    format!("{name:?} is not a header name; write e.g. \"x-staff-pass\""),
                );
                None
            }
        },
    };
    Bypass {
        paths,
        methods,
        header,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, RoomMode};
    use std::time::Duration;

    const BASE: &str = "[[pools]]\nname = \"orders\"\nbackends = [ { addr = \"127.0.0.1:9\" } ]\n[[routes]]\nname = \"sale\"\npool = \"orders\"\n[[routes]]\nname = \"checkout\"\npath_prefix = \"/checkout\"\npool = \"orders\"\n";

    #[test]
    fn a_room_with_defaults_and_a_toml_date_time() {
        let text = format!(
            "{BASE}[[rooms]]\nname = \"sale\"\nroutes = [\"sale\", \"checkout\"]\nadmit_per_minute = 3000\nsecret = \"{}\"\nopens_at = 2026-12-01T10:00:00+08:00\n[rooms.bypass]\npaths = [\"/api/payments/callback\"]\nmethods = [\"OPTIONS\"]\nheader = \"x-staff\"\nheader_value = \"s3cret\"\n",
            "k".repeat(32)
        );
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let room = &config.rooms[0];
        assert_eq!(room.routes, ["sale", "checkout"]);
        assert_eq!(room.mode, RoomMode::OnOverload);
        assert_eq!(room.session, Duration::from_secs(300));
        assert_eq!(room.refresh, Duration::from_secs(10));
        assert_eq!(room.ticket_timeout, Duration::from_secs(60));
        assert_eq!(room.max_active, None);
        assert_eq!(room.admit_per_minute, Some(3000));
        assert_eq!(
            room.opens_at,
            crate::config::parse_time("2026-12-01T02:00:00Z").ok()
        );
        assert_eq!(room.bypass.methods, [http::Method::OPTIONS]);
        assert_eq!(format!("{:?}", room.secret), "Secret(32 bytes)");
    }

    #[test]
    fn every_problem_of_a_room_is_reported() {
        let text = format!(
            "{BASE}[[rooms]]\nname = \"bad room\"\nroutes = []\nmax_active = 0\nsecret = \"x\"\nsecret_env = \"Y\"\nmode = \"sometimes\"\nrefresh = \"40s\"\nopens_at = \"tomorrow\"\n[rooms.bypass]\npaths = [\"api\"]\nheader_value = \"v\"\n"
        );
        let problems: Vec<String> = Config::from_toml(&text)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        let all = problems.join("\n");
        for expected in [
            "rooms[0] \"bad room\".name: \"bad room\" is not a valid name",
            "rooms[0] \"bad room\".routes: is required",
            "rooms[0] \"bad room\".max_active: 0 is out of range",
            "rooms[0] \"bad room\": set secret or secret_env, not both",
            "rooms[0] \"bad room\".mode: \"sometimes\" is not a mode",
            "rooms[0] \"bad room\".ticket_timeout: 60s is shorter than twice refresh (40s)",
            "rooms[0] \"bad room\".opens_at: \"tomorrow\" is not an RFC 3339 time",
            "rooms[0] \"bad room\".bypass.paths[0]: \"api\" must start with '/'",
            "rooms[0] \"bad room\".bypass.header_value: needs header",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
    }
}
