//! `[dns]` and backends by name: how names in `pools.backends` are resolved
//! and re-resolved (`upstream::dns` does it; these are the settings).

use std::net::SocketAddr;
use std::time::Duration;

/// `[dns]`: the resolver for backends given by name (`addr = "name:port"` or
/// `srv = "_http._tcp.name"`). Without the table, the system's resolver
/// settings (`/etc/resolv.conf`) and the defaults below.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    /// Name servers to ask, `IP:PORT`, over UDP (and TCP for long answers).
    /// Default: empty, the servers of `/etc/resolv.conf`.
    pub servers: Vec<SocketAddr>,
    /// Shortest time an answer is kept before it is asked again (a record's TTL
    /// under it is raised to it; also the wait before asking again after a
    /// failure). Default: 1s.
    pub min_ttl: Duration,
    /// Longest time an answer is kept before it is asked again, whatever its
    /// TTL (HAProxy's `hold valid`, nginx's `valid=`). Default: 60s.
    pub max_ttl: Duration,
    /// Longest wait for one answer from a name server. Default: 2s.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            servers: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

/// What a named backend resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DnsTarget {
    /// `addr = "orders.internal:8080"`: every A and AAAA record, on `port`.
    Host {
        /// The host name, without a trailing dot.
        name: String,
        /// The port every address is reached on.
        port: u16,
    },
    /// `srv = "_http._tcp.orders.internal"`: each SRV target of the lowest
    /// priority, resolved to its addresses, on the SRV port with the SRV weight.
    Srv {
        /// The SRV record's name, without a trailing dot.
        name: String,
    },
}

impl DnsTarget {
    /// The name asked for (a host name, or an SRV record's name).
    pub fn name(&self) -> &str {
        match self {
            DnsTarget::Host { name, .. } | DnsTarget::Srv { name } => name,
        }
    }
}

impl std::fmt::Display for DnsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsTarget::Host { name, port } => write!(f, "{name}:{port}"),
            DnsTarget::Srv { name } => write!(f, "srv {name}"),
        }
    }
}

/// A backend given by name: each address it resolves to is a backend of the
/// pool, with its own health and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedBackend {
    /// What to resolve.
    pub target: DnsTarget,
    /// The weight of each address; `None`: 1, or the SRV record's weight.
    pub weight: Option<u32>,
    /// Most concurrent requests sent to each address. Default: the pool's
    /// `max_in_flight` (256).
    pub max_in_flight: u32,
}

/// Whether `name` is a host name DNS can be asked for: dot-separated labels
/// of letters, digits, `-` and `_` (SRV names), each 1 to 63 characters, not
/// starting or ending with `-`; 253 characters in all. A trailing dot is allowed.
pub fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // All digits and dots is an IPv4 address gone wrong, not a name.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for ok in [
            "orders.internal",
            "orders",
            "_http._tcp.orders.internal",
            "a-b.c.",
            "o1",
        ] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a..b",
            "-a.b",
            "a-.b",
            "orders internal",
            "10.0.0.1",
            "a:b",
            &"a".repeat(64),
        ] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }
}
