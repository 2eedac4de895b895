//! A request's path, normalised once before anything looks at it — routing,
//! the waiting room's bypass paths, maintenance allow rules, idempotency —
//! and what the backend gets, so a path cannot mean one thing to ordergate
//! and another to the order server (`/health/../api/orders` is `/api/orders`).
//!
//! The steps (RFC 3986 §6.2.2, as Envoy's `normalize_path` and
//! `merge_slashes`):
//! 1. percent-encoded unreserved characters (`%2E`, `%41`, …) are decoded;
//! 2. an encoded `/` or `\` (`%2F`, `%5C`) or a bare `\` — which backends
//!    disagree about — is refused by default (`escaped_slashes = "reject"`,
//!    the `bad_request` page) or left as it is (`"keep"`, then `%2F` is not a
//!    separator here, and a bare `\` is not one either);
//! 3. runs of `/` become one (`merge_slashes`, on by default);
//! 4. `.` and `..` segments are removed; `..` never climbs above the root.
//!
//! The query is not touched. A path that needs none of it (the usual case)
//! costs one scan and no allocation.

use std::borrow::Cow;

use pingora::http::RequestHeader;

pub use crate::config::{EscapedSlashes, PathPolicy};

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An encoded `/` or `\`, or a bare `\`, under `escaped_slashes = "reject"`.
    EscapedSlash,
    /// The request target is not UTF-8 (what ordergate reads of it would be
    /// a rendering, not what the backend gets), or its normal form is not a
    /// valid target.
    Unreadable,
}

/// Normalises the path of `request` in place: afterwards its URI is the one
/// source of the target, the path routing and every rule read and the
/// backend gets (an absolute-form target is sent in origin form).
pub fn normalize_request(request: &mut RequestHeader, policy: PathPolicy) -> Result<(), Refused> {
    if !request.raw_path_is_utf8() {
        return Err(Refused::Unreadable);
    }
    let uri = &request.uri;
    let normal = normalize(uri.path(), policy)?;
    let verbatim_target = request.raw_path()
        != uri
            .path_and_query()
            .map_or(&b"/"[..], |pq| pq.as_str().as_bytes());
    if matches!(normal, Cow::Borrowed(_)) && !verbatim_target {
        return Ok(());
    }
    let target = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal.into_owned(),
    };
    let uri = http::Uri::try_from(target).map_err(|_| Refused::Unreadable)?;
    request.set_uri(uri);
    Ok(())
}

/// The normalised form of `path` (the part before `?`).
pub fn normalize(path: &str, policy: PathPolicy) -> Result<Cow<'_, str>, Refused> {
    if !needs_work(path, policy) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, policy)?;
    let mut out = String::with_capacity(decoded.len());
    let absolute = decoded.starts_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').collect();
    let last = parts.len().saturating_sub(1);
    for (i, segment) in parts.iter().enumerate() {
        let trailing = i == last;
        match *segment {
            "." => {
                if trailing {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if trailing {
                    segments.push("");
                }
            }
            "" if i == 0 && absolute => {}
            "" if policy.merge_slashes && !trailing => {}
            other => segments.push(other),
        }
    }
    if absolute {
        out.push('/');
    }
    out.push_str(&segments.join("/"));
    Ok(Cow::Owned(out))
}

/// Whether any step could change or refuse `path`.
fn needs_work(path: &str, policy: PathPolicy) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'%' | b'\\' => true,
        b'/' => {
            let next = bytes.get(i + 1).copied();
            (policy.merge_slashes && next == Some(b'/')) || next == Some(b'.')
        }
        _ => false,
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Decodes `%XX` of unreserved characters; refuses (or keeps) encoded
/// slashes and backslashes; leaves other escapes and bad ones as they are.
fn decode_unreserved(path: &str, policy: PathPolicy) -> Result<Cow<'_, str>, Refused> {
    let reject = policy.escaped_slashes == EscapedSlashes::Reject;
    let bytes = path.as_bytes();
    if reject && bytes.contains(&b'\\') {
        return Err(Refused::EscapedSlash);
    }
    if !bytes.contains(&b'%') {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(b'/' | b'\\') if reject => return Err(Refused::EscapedSlash),
            Some(b) if is_unreserved(b) => {
                out.push(b);
                i += 3;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Only ASCII was decoded into ASCII: still valid UTF-8.
    Ok(Cow::Owned(
        String::from_utf8(out).unwrap_or_else(|_| path.to_owned()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: PathPolicy = PathPolicy {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn norm(path: &str) -> Result<String, Refused> {
        normalize(path, DEFAULT).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_duplicate_slashes_go() {
        for (raw, normal) in [
            ("/api/products/1", "/api/products/1"),
            ("/", "/"),
            ("/health/../api/products/1", "/api/products/1"),
            ("/api/x/../orders", "/api/orders"),
            ("/api/./orders", "/api/orders"),
            ("//api///orders", "/api/orders"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/api/orders/.", "/api/orders/"),
            ("/api/orders/..", "/api/"),
            ("/api/orders/", "/api/orders/"),
            ("/api//", "/api/"),
            ("/a/.hidden/b", "/a/.hidden/b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/health/%2E%2E/api/orders", "/api/orders"),
            ("/health/%2e./api", "/api"),
            ("/%61pi/orders", "/api/orders"),
            ("/search/caf%C3%A9", "/search/caf%C3%A9"),
            ("/bad/%zz/%4", "/bad/%zz/%4"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn a_plain_path_is_borrowed() {
        assert!(matches!(
            normalize("/api/products/1", DEFAULT),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/a.b/c", DEFAULT), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn encoded_slashes_are_refused_or_kept_by_policy() {
        for raw in [
            "/api/x%2F..%2Forders",
            "/api%5corders",
            "/api\\orders",
            "/a%2f",
        ] {
            assert_eq!(norm(raw), Err(Refused::EscapedSlash), "{raw}");
        }
        let keep = PathPolicy {
            escaped_slashes: EscapedSlashes::Keep,
            ..DEFAULT
        };
        let kept = |raw| normalize(raw, keep).map(Cow::into_owned);
        assert_eq!(
            kept("/api/x%2F..%2Forders").as_deref(),
            Ok("/api/x%2F..%2Forders")
        );
        assert_eq!(kept("/a/%2F/../b").as_deref(), Ok("/a/b"));
    }

    #[test]
    fn the_request_carries_the_normal_path_and_its_query() {
        let mut request = RequestHeader::build("GET", b"/health/../api//products/1?a=../b", None)
            .expect("request");
        normalize_request(&mut request, DEFAULT).expect("normal");
        assert_eq!(request.uri.path(), "/api/products/1");
        assert_eq!(request.raw_path(), b"/api/products/1?a=../b");

        let mut absolute =
            RequestHeader::build("GET", b"http://shop.example/x/../orders", None).expect("request");
        normalize_request(&mut absolute, DEFAULT).expect("normal");
        assert_eq!(absolute.raw_path(), b"/orders");

        let mut plain = RequestHeader::build("GET", b"/api/products/1", None).expect("request");
        normalize_request(&mut plain, DEFAULT).expect("normal");
        assert_eq!(plain.raw_path(), b"/api/products/1");

        let mut escaped = RequestHeader::build("GET", b"/a%2F..%2Fb", None).expect("request");
        assert_eq!(
            normalize_request(&mut escaped, DEFAULT),
            Err(Refused::EscapedSlash)
        );
    }

    #[test]
    fn merging_slashes_can_be_turned_off() {
        let keep_slashes = PathPolicy {
            merge_slashes: false,
            ..DEFAULT
        };
        let normal = normalize("//a//b/../c", keep_slashes).map(Cow::into_owned);
        assert_eq!(normal.as_deref(), Ok("//a//c"));
    }
}
