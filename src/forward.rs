//! What an edge proxy tells the backend about the request: `X-Request-Id`,
//! `X-Forwarded-For` and `X-Forwarded-Proto`. From a client they are
//! ordergate's own: what the client sent in them, or in `Forwarded` /
//! `X-Real-IP` / `X-Forwarded-Host`, is dropped. From a trusted proxy
//! (`server.trusted_proxies`, see `client`) they are the proxy's word, kept:
//! ordergate appends the proxy's address to its `X-Forwarded-For` and keeps
//! its `X-Forwarded-Proto`. `Host` is passed through unchanged, so backends
//! see the name the shopper used.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::client::Client;

/// The request id's header. A name built once: a lookup by `&str` parses the
/// name on every request.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id to use: the client's, when it is sane (1 to 128 characters of
/// letters, digits and `-_.:`), otherwise a new random one.
pub fn request_id(from_client: Option<&[u8]>) -> String {
    match from_client {
        Some(id) if is_sane_request_id(id) => String::from_utf8_lossy(id).into_owned(),
        _ => new_request_id(),
    }
}

/// 32 random hex digits, written without the formatting machinery (this runs
/// on every request).
fn new_request_id() -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = DIGITS[(bits & 0xf) as usize];
        bits >>= 4;
    }
    // Hex digits only: the check passes, and costs less than a char at a time.
    std::str::from_utf8(&id).map_or_else(|_| String::new(), str::to_owned)
}

/// Headers a client may send to claim another address or host; ordergate
/// removes them and says itself who the client is (it trusts no peer yet).
/// Names built once: a lookup by `&str` parses the name on every request.
const CLAIMS: [HeaderName; 3] = [
    http::header::FORWARDED,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-real-ip"),
];

/// The client's address as an `X-Forwarded-For` value; an IPv4 address is
/// written without the formatting machinery (this runs on every request).
fn forwarded_for(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static(""));
    };
    let mut text = [0u8; 15];
    let len = write_ipv4(v4, &mut text);
    HeaderValue::from_bytes(&text[..len]).unwrap_or(HeaderValue::from_static(""))
}

/// Writes `ip` in dotted decimal into `out`; returns the length.
fn write_ipv4(ip: Ipv4Addr, out: &mut [u8; 15]) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// Sets what the backend is told about the request — `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Request-Id`. From a client, whatever it sent in
/// them is replaced and its `Forwarded`, `X-Real-IP` and `X-Forwarded-Host`
/// removed, so a backend never sees a forged client; from a trusted proxy
/// its chain is kept and the proxy's address appended.
pub fn add_headers(
    upstream: &mut RequestHeader,
    client: &Client,
    request_id: &str,
) -> pingora::Result<()> {
    match client.proxy {
        Some(proxy) => {
            let chain = match upstream.headers.get("x-forwarded-for") {
                Some(chain) => format!("{}, {proxy}", String::from_utf8_lossy(chain.as_bytes())),
                None => proxy.to_string(),
            };
            upstream.insert_header("x-forwarded-for", chain)?;
            if !upstream.headers.contains_key("x-forwarded-proto") {
                upstream.insert_header("x-forwarded-proto", proto(client.https))?;
            }
        }
        None => {
            // One pass over the names rather than a lookup for each claim:
            // a client seldom sends any.
            if upstream.headers.keys().any(|name| CLAIMS.contains(name)) {
                for claim in &CLAIMS {
                    upstream.remove_header(claim);
                }
            }
            match client.ip {
                Some(ip) => upstream.insert_header("x-forwarded-for", forwarded_for(ip))?,
                None => {
                    upstream.remove_header("x-forwarded-for");
                }
            }
            upstream.insert_header("x-forwarded-proto", proto(client.https))?;
        }
    }
    upstream.insert_header("x-request-id", request_id)
}

fn proto(https: bool) -> HeaderValue {
    HeaderValue::from_static(if https { "https" } else { "http" })
}

fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The values of the cookie `name` in a request's `Cookie` headers, in order
/// (surrounding quotes removed).
pub fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    cookie_pairs(headers)
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
}

/// Every `name=value` pair of a request's `Cookie` headers, in order (a pair
/// without `=` has an empty value).
pub fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// The host the request names: the Host header, or the authority of an
/// absolute-form request line.
pub fn request_host(request: &RequestHeader) -> Option<&str> {
    request
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri.host())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn keeps_a_sane_request_id_and_replaces_others() {
        assert_eq!(request_id(Some(b"order-42:a.b_c")), "order-42:a.b_c");
        for bad in [&b""[..], b"has space", b"<script>", &[b'a'; 129]] {
            let id = request_id(Some(bad));
            assert_eq!(id.len(), 32, "{bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(request_id(None), request_id(None));
        let new = request_id(None);
        assert_eq!(new.len(), 32);
        assert!(new
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn forwarded_for_writes_addresses_as_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.23.100.9",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            assert_eq!(
                forwarded_for(ip).to_str().ok(),
                Some(ip.to_string().as_str())
            );
        }
    }

    #[test]
    fn the_client_cannot_forge_its_forwarding_headers() {
        let mut request = RequestHeader::build("GET", b"/", None).expect("request");
        for (name, value) in [
            ("X-Forwarded-For", "203.0.113.66"),
            ("Forwarded", "for=203.0.113.66;host=evil.example"),
            ("X-Real-IP", "203.0.113.66"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
        ] {
            request.append_header(name, value).expect("header");
        }
        let client = Client {
            ip: Some(IpAddr::from([127, 0, 0, 9])),
            ..Client::default()
        };
        add_headers(&mut request, &client, "r-1").expect("headers");
        let values = |name: &str| {
            let all = request.headers.get_all(name).iter();
            all.filter_map(|v| v.to_str().ok()).collect::<Vec<_>>()
        };
        assert_eq!(values("x-forwarded-for"), ["127.0.0.9"]);
        assert!(values("x-real-ip").is_empty());
        assert_eq!(values("x-forwarded-proto"), ["http"]);
        assert_eq!(values("x-request-id"), ["r-1"]);
        assert!(values("forwarded").is_empty());
        assert!(values("x-forwarded-host").is_empty());

        let mut unknown = RequestHeader::build("GET", b"/", None).expect("request");
        unknown
            .append_header("X-Forwarded-For", "203.0.113.66")
            .expect("header");
        let nobody = Client {
            https: true,
            ..Client::default()
        };
        add_headers(&mut unknown, &nobody, "r-2").expect("headers");
        assert!(unknown.headers.get("x-forwarded-for").is_none());
    }

    #[test]
    fn a_trusted_proxys_chain_is_kept_and_extended() {
        let mut request = RequestHeader::build("GET", b"/", None).expect("request");
        for (name, value) in [
            ("X-Forwarded-For", "203.0.113.66, 198.51.100.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "shop.example"),
        ] {
            request.append_header(name, value).expect("header");
        }
        let via_cdn = Client {
            ip: Some(IpAddr::from([198, 51, 100, 2])),
            proxy: Some(IpAddr::from([10, 0, 0, 5])),
            https: true,
        };
        add_headers(&mut request, &via_cdn, "r-3").expect("headers");
        let value = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(
            value("x-forwarded-for"),
            Some("203.0.113.66, 198.51.100.2, 10.0.0.5")
        );
        assert_eq!(value("x-forwarded-proto"), Some("https"));
        assert_eq!(value("x-forwarded-host"), Some("shop.example"));
    }

    #[test]
    fn cookie_values_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", http::HeaderValue::from_static("a=1; room=x"));
        headers.append("cookie", http::HeaderValue::from_static("room=\"y\""));
        assert_eq!(cookies(&headers, "room").collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(cookies(&headers, "b").count(), 0);
    }
}
