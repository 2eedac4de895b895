//! `[server] trusted_proxies`, `client_ip_header` and the listeners'
//! `proxy_protocol`: whose word ordergate takes for the client's address.

use std::fmt;
use std::str::FromStr;

use http::header::HeaderName;

use super::Problems;
use crate::config::file::FileServer;
use crate::config::{Cidr, ProxyProtocol, TrustConfig};

/// Headers naming the client that a trusted proxy may not use: ordergate
/// sets them itself or they are not about the client.
const NOT_A_CLIENT_HEADER: [&str; 3] = ["host", "x-forwarded-proto", "x-request-id"];

pub(super) fn trust(file: &FileServer, problems: &mut Problems) -> TrustConfig {
    let mut trust = TrustConfig::default();
    for (i, text) in file.trusted_proxies.iter().flatten().enumerate() {
        match Cidr::from_str(text) {
            Ok(cidr) => trust.proxies.push(cidr),
            Err(message) => problems.add(format!("server.trusted_proxies[{i}]"), message),
        }
    }
    if let Some(name) = &file.client_ip_header {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(header) if header == http::header::FORWARDED => problems.add(
                "server.client_ip_header",
                "\"forwarded\" (RFC 7239) is not read; use \"x-forwarded-for\" or a one-address header such as \"cf-connecting-ip\"",
            ),
            Ok(header) if !NOT_A_CLIENT_HEADER.contains(&header.as_str()) => {
                trust.client_ip_header = header;
            }
            Ok(_) => problems.add(
                "server.client_ip_header",
                format!("{name:?} does not name the client; use \"x-forwarded-for\" or a header such as \"cf-connecting-ip\""),
            ),
            Err(_) => problems.add(
                "server.client_ip_header",
                format!("{name:?} is not a header name, e.g. \"x-forwarded-for\""),
            ),
        }
    }
    trust
}

/// A listener's `proxy_protocol` (`at` is its key path). A header is only
/// believed from a trusted proxy, so a listener that expects one needs
/// `trusted_proxies`.
pub(super) fn proxy_protocol(
    at: &dyn fmt::Display,
    text: Option<&str>,
    trust: &TrustConfig,
    problems: &mut Problems,
) -> ProxyProtocol {
    let version = match text {
        None | Some("off") => ProxyProtocol::Off,
        Some("v1") => ProxyProtocol::V1,
        Some("v2") => ProxyProtocol::V2,
        Some("auto") => ProxyProtocol::Auto,
        Some(other) => {
            problems.add(
                at,
                format!("{other:?} is not a PROXY protocol setting; use \"off\", \"v1\", \"v2\" or \"auto\""),
            );
            ProxyProtocol::Off
        }
    };
    if version != ProxyProtocol::Off && trust.proxies.is_empty() {
        problems.add(
            at,
            "expects a PROXY protocol header, but server.trusted_proxies is empty, so every connection would be refused; list the balancer's addresses there",
        );
    }
    version
}
