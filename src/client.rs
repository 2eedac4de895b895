//! Who the shopper is, as far as the network can tell: the client's address
//! and whether they reached the shop over HTTPS.
//!
//! The connection's peer is the client unless it is a trusted proxy
//! (`server.trusted_proxies`: a CDN, an L4 balancer, a proxy in front).
//! Only then is its word taken:
//! - `X-Forwarded-For` (the default `server.client_ip_header`) is read right
//!   to left, skipping trusted hops; the first address that is not a trusted
//!   proxy is the client. When every hop is trusted, the leftmost is. An entry
//!   that is not an address ends the walk at the hop right of it, so garbage
//!   a client put in front of the chain is never taken for its address.
//! - A one-address header (`CF-Connecting-IP`, `True-Client-IP`) names the
//!   client directly.
//! - `X-Forwarded-Proto: https` says the shopper used HTTPS to the proxy.
//!
//! A peer that is not trusted claims nothing: its forwarded headers are
//! ignored here and replaced on the way to the backends (`forward`). The
//! PROXY protocol header is read before HTTP (`accept`) and becomes the
//! connection's peer address, so it passes through the same rule.
//!
//! The address found is what rate limits, `client_ip` hashing, the waiting
//! room's per-address bounds, maintenance allow lists, the access log and
//! `X-Forwarded-For` use.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::config::TrustConfig;

/// The shopper, as the request's network path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Client {
    /// The client's address, when known.
    pub ip: Option<IpAddr>,
    /// The connection's peer, when it is a trusted proxy that spoke for the
    /// client.
    pub proxy: Option<IpAddr>,
    /// Whether the shopper reached the shop over HTTPS (to ordergate, or to a
    /// trusted proxy that says so).
    pub https: bool,
}

/// The shopper behind a connection from `peer` (over TLS or not) carrying
/// `headers`.
pub fn identify(
    peer: Option<IpAddr>,
    tls: bool,
    headers: &HeaderMap,
    trust: &TrustConfig,
) -> Client {
    let direct = Client {
        ip: peer,
        proxy: None,
        https: tls,
    };
    let Some(proxy) = peer.filter(|ip| trust.trusts(*ip)) else {
        return direct;
    };
    let claimed = if trust.client_ip_header.as_str() == "x-forwarded-for" {
        forwarded_for(headers, trust)
    } else {
        headers
            .get(&trust.client_ip_header)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_addr)
    };
    Client {
        ip: Some(claimed.unwrap_or(proxy)),
        proxy: Some(proxy),
        https: tls || says_https(headers),
    }
}

/// The client named by `X-Forwarded-For` (every line, in order), right to
/// left past trusted hops.
fn forwarded_for(headers: &HeaderMap, trust: &TrustConfig) -> Option<IpAddr> {
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut nearest = None;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_addr(hop) else {
            return nearest;
        };
        if !trust.trusts(ip) {
            return Some(ip);
        }
        nearest = Some(ip);
    }
    nearest
}

/// An address as proxies write it: `192.0.2.7`, `2001:db8::1`, with a port
/// (`192.0.2.7:5000`, `[2001:db8::1]:5000`) or in brackets.
fn parse_addr(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        })
        .map(|ip: IpAddr| ip.to_canonical())
}

fn says_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn trust(cidrs: &[&str], header: &'static str) -> TrustConfig {
        TrustConfig {
            proxies: cidrs
                .iter()
                .map(|c| crate::config::Cidr::from_str(c).expect("cidr"))
                .collect(),
            client_ip_header: http::header::HeaderName::from_static(header),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_claims_nothing() {
        let forged = headers(&[
            ("x-forwarded-for", "203.0.113.66"),
            ("x-forwarded-proto", "https"),
        ]);
        for trust in [
            trust(&[], "x-forwarded-for"),
            trust(&["10.0.0.0/8"], "x-forwarded-for"),
        ] {
            let client = identify(Some(ip("198.51.100.1")), false, &forged, &trust);
            assert_eq!(
                client,
                Client {
                    ip: Some(ip("198.51.100.1")),
                    proxy: None,
                    https: false
                }
            );
        }
    }

    #[test]
    fn a_trusted_chain_is_read_right_to_left_past_trusted_hops() {
        let trust = trust(&["10.0.0.0/8", "192.0.2.0/24"], "x-forwarded-for");
        let chain = headers(&[
            ("x-forwarded-for", "203.0.113.66, 198.51.100.9"),
            ("x-forwarded-for", "192.0.2.5"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = identify(Some(ip("10.1.1.1")), false, &chain, &trust);
        assert_eq!(
            client.ip,
            Some(ip("198.51.100.9")),
            "the forged left entry is ignored"
        );
        assert_eq!(client.proxy, Some(ip("10.1.1.1")));
        assert!(client.https);
    }

    #[test]
    fn every_hop_trusted_gives_the_leftmost_and_no_header_the_proxy() {
        let trust = trust(&["10.0.0.0/8"], "x-forwarded-for");
        let inner = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        let client = identify(Some(ip("10.1.1.1")), false, &inner, &trust);
        assert_eq!(client.ip, Some(ip("10.9.9.9")));
        let none = identify(Some(ip("10.1.1.1")), false, &HeaderMap::new(), &trust);
        assert_eq!(none.ip, Some(ip("10.1.1.1")));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_trusted_hop_right_of_it() {
        let trust = trust(&["10.0.0.0/8"], "x-forwarded-for");
        let garbage = headers(&[("x-forwarded-for", "unknown, 10.2.2.2")]);
        let client = identify(Some(ip("10.1.1.1")), false, &garbage, &trust);
        assert_eq!(client.ip, Some(ip("10.2.2.2")));
    }

    #[test]
    fn ports_brackets_and_one_address_headers() {
        assert_eq!(parse_addr("192.0.2.7:5000"), Some(ip("192.0.2.7")));
        assert_eq!(parse_addr("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_addr("::ffff:192.0.2.7"), Some(ip("192.0.2.7")));
        assert_eq!(parse_addr("nope"), None);
        let trust = trust(&["10.0.0.0/8"], "cf-connecting-ip");
        let cdn = headers(&[
            ("cf-connecting-ip", "203.0.113.7"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        let client = identify(Some(ip("10.1.1.1")), true, &cdn, &trust);
        assert_eq!(client.ip, Some(ip("203.0.113.7")));
        assert!(client.https);
    }
}
