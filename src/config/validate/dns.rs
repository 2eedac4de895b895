//! `[dns]`: the resolver for backends given by name.

use std::time::Duration;

use super::values::{duration_or, socket_addr};
use super::Problems;
use crate::config::file::FileDns;
use crate::config::DnsConfig;

/// Shorter than this, a pool's backend list would churn with every answer.
const MIN_MIN_TTL: Duration = Duration::from_millis(100);

/// Validates `[dns]`; no table is the system's resolver with the defaults.
pub(super) fn dns(file: Option<&FileDns>, problems: &mut Problems) -> DnsConfig {
    let defaults = DnsConfig::default();
    let Some(file) = file else {
        return defaults;
    };
    let mut servers = Vec::new();
    for (i, text) in file.servers.iter().flatten().enumerate() {
        match socket_addr(text) {
            Ok(addr) => servers.push(addr),
            Err(message) => problems.add(format!("dns.servers[{i}]"), message),
        }
    }
    let min_ttl = duration_or(
        &"dns.min_ttl",
        file.min_ttl.as_deref(),
        defaults.min_ttl,
        false,
        problems,
    );
    let max_ttl = duration_or(
        &"dns.max_ttl",
        file.max_ttl.as_deref(),
        defaults.max_ttl,
        false,
        problems,
    );
    if min_ttl < MIN_MIN_TTL {
        problems.add(
            "dns.min_ttl",
            format!("{min_ttl:?} is too short; use at least {MIN_MIN_TTL:?}, e.g. \"1s\""),
        );
    }
    if max_ttl < min_ttl {
        problems.add(
            "dns.max_ttl",
            format!(
                "{max_ttl:?} is shorter than dns.min_ttl ({min_ttl:?}); raise it or lower min_ttl"
            ),
        );
    }
    DnsConfig {
        servers,
        min_ttl,
        max_ttl: max_ttl.max(min_ttl),
        timeout: duration_or(
            &"dns.timeout",
            file.timeout.as_deref(),
            defaults.timeout,
            false,
            problems,
        ),
    }
}
