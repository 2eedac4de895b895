//! What an edge proxy tells the backend about the request: `X-Request-Id`,
//! `X-Forwarded-For` and `X-Forwarded-Proto`. `Host` is passed through unchanged,
//! so backends see the name the shopper used.

use std::net::IpAddr;

use http::HeaderMap;

/// Longest client-supplied request id that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The request id to use: the client's, when it is sane (1 to 128 characters of
/// letters, digits and `-_.:`), otherwise a new random one.
pub fn request_id(from_client: Option<&[u8]>) -> String {
    match from_client {
        Some(id) if is_sane_request_id(id) => String::from_utf8_lossy(id).into_owned(),
        _ => format!("{:032x}", fastrand::u128(..)),
    }
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
    fn cookie_values_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append("cookie", http::HeaderValue::from_static("a=1; room=x"));
        headers.append("cookie", http::HeaderValue::from_static("room=\"y\""));
        assert_eq!(cookies(&headers, "room").collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(cookies(&headers, "b").count(), 0);
    }
}
