//! What an edge proxy tells the backend about the request: `X-Request-Id`,
//! `X-Forwarded-For` and `X-Forwarded-Proto`. `Host` is passed through unchanged,
//! so backends see the name the shopper used.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use pingora::http::RequestHeader;

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
    id.iter().map(|&digit| char::from(digit)).collect()
}

/// Adds what the backend is told about the request (`X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Request-Id`) to the request sent upstream.
pub fn add_headers(
    upstream: &mut RequestHeader,
    client: Option<IpAddr>,
    tls: bool,
    request_id: &str,
) -> pingora::Result<()> {
    if let Some(chain) = forwarded_for(&upstream.headers, client) {
        upstream.insert_header("x-forwarded-for", chain)?;
    }
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    upstream.insert_header("x-forwarded-proto", proto)?;
    upstream.insert_header("x-request-id", request_id)
}

fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The `X-Forwarded-For` value to send: the client's address appended to what the
/// request already carried (as nginx's `$proxy_add_x_forwarded_for` does).
pub fn forwarded_for(request: &HeaderMap, client: Option<IpAddr>) -> Option<String> {
    let existing: Vec<&str> = request
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let existing = (!existing.is_empty()).then(|| existing.join(", "));
    match (existing, client) {
        (Some(chain), Some(ip)) => Some(format!("{chain}, {ip}")),
        (Some(chain), None) => Some(chain),
        (None, Some(ip)) => Some(ip.to_string()),
        (None, None) => None,
    }
}

/// The values of the cookie `name` in a request's `Cookie` headers, in order
/// (surrounding quotes removed).
pub fn cookies<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
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
    fn appends_the_client_to_forwarded_for() {
        let ip = Some(IpAddr::from([127, 0, 0, 9]));
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers, ip).as_deref(), Some("127.0.0.9"));
        headers.append("x-forwarded-for", "203.0.113.7".parse().expect("value"));
        headers.append("x-forwarded-for", "198.51.100.1".parse().expect("value"));
        assert_eq!(
            forwarded_for(&headers, ip).as_deref(),
            Some("203.0.113.7, 198.51.100.1, 127.0.0.9")
        );
        let mut blank = HeaderMap::new();
        blank.append("x-forwarded-for", "  ".parse().expect("value"));
        assert_eq!(forwarded_for(&blank, None), None);
    }

    #[test]
    fn adds_the_forwarding_headers() {
        let mut request = RequestHeader::build("GET", b"/", None).expect("request");
        request
            .insert_header("X-Forwarded-For", "203.0.113.7")
            .expect("header");
        add_headers(
            &mut request,
            Some(IpAddr::from([127, 0, 0, 9])),
            true,
            "r-1",
        )
        .expect("headers");
        let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("x-forwarded-for"), Some("203.0.113.7, 127.0.0.9"));
        assert_eq!(header("x-forwarded-proto"), Some("https"));
        assert_eq!(header("x-request-id"), Some("r-1"));
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
