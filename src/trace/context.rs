//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` and `tracestate` request headers, read strictly. A client's
//! `traceparent` is kept only when it is exactly what the spec allows (lower
//! case hex, the right lengths, no all-zero id, not version `ff`, one header);
//! anything else restarts the trace, and then its `tracestate` is dropped
//! unread, as the spec asks. A `tracestate` is kept only when every list
//! member is well formed, keys are unique, there are at most 32 members and
//! the whole is at most 512 bytes; otherwise it is dropped (not repaired).
//! Nothing here allocates.

use http::header::GetAll;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header names (as `HeaderName`s: a lookup by one skips parsing the name).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// See [`TRACEPARENT`].
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` kept, in bytes (the spec's propagation minimum).
pub const MAX_TRACESTATE_BYTES: usize = 512;
/// Most list members a `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The `sampled` bit of trace-flags.
pub const SAMPLED: u8 = 0x01;

/// A valid `traceparent`: who the caller is in which trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace, never all zeros.
    pub trace_id: [u8; 16],
    /// The caller's span, never all zeros.
    pub parent_id: [u8; 8],
    /// trace-flags; only [`SAMPLED`] means anything in version 00.
    pub flags: u8,
}

impl TraceParent {
    /// Whether the caller recorded its span.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

/// The client's `traceparent`, when there is exactly one and it is valid.
pub fn client_traceparent(headers: &HeaderMap) -> Option<TraceParent> {
    single(headers.get_all(TRACEPARENT)).and_then(|v| parse_traceparent(v.as_bytes()))
}

/// Whether the client's `tracestate` lines (one list, however many lines)
/// may be passed on as they are; none at all is `false`.
pub fn client_tracestate_is_valid(headers: &HeaderMap) -> bool {
    let values = headers.get_all(TRACESTATE);
    let mut total = 0usize;
    let mut members = 0usize;
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut any = false;
    for value in values.iter() {
        any = true;
        // Lines are joined with a comma: count it.
        total += value.len() + usize::from(total > 0);
        if total > MAX_TRACESTATE_BYTES {
            return false;
        }
        if !members_valid(value.as_bytes(), &mut keys, &mut members) {
            return false;
        }
    }
    any && members > 0
}

/// The one value of a header sent once; `None` for none or several.
fn single(values: GetAll<'_, HeaderValue>) -> Option<&HeaderValue> {
    let mut iter = values.iter();
    let first = iter.next()?;
    iter.next().is_none().then_some(first)
}

/// Parses a `traceparent` value per the spec: version 00 is exactly 55
/// characters; a later version is read as 00 for its first 55, and must then
/// end or go on with `-`. Version `ff`, upper-case hex and all-zero ids are
/// invalid.
pub fn parse_traceparent(text: &[u8]) -> Option<TraceParent> {
    if text.len() < 55 {
        return None;
    }
    let version = hex_byte(&text[0..2])?;
    if version == 0xff || (version == 0 && text.len() != 55) {
        return None;
    }
    if version > 0 && text.len() > 55 && text[55] != b'-' {
        return None;
    }
    if text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, byte) in trace_id.iter_mut().enumerate() {
        *byte = hex_byte(&text[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, byte) in parent_id.iter_mut().enumerate() {
        *byte = hex_byte(&text[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&text[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// Two lower-case hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    Some(hex_digit(pair[0])? << 4 | hex_digit(pair[1])?)
}

fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lower-case hex into `out` (twice as long).
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (i, byte) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(byte >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// The `traceparent` ordergate sends: version 00, `trace_id`, `span_id`
/// (the attempt's span), `flags`.
pub fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    write_hex(trace_id, &mut out[3..35]);
    write_hex(span_id, &mut out[36..52]);
    write_hex(&[flags], &mut out[53..55]);
    out
}

/// Checks the members of one `tracestate` line, adding their keys to
/// `keys[..*count]` (duplicates and more than 32 members are invalid).
fn members_valid<'a>(
    line: &'a [u8],
    keys: &mut [&'a [u8]; MAX_TRACESTATE_MEMBERS],
    count: &mut usize,
) -> bool {
    for member in line.split(|&b| b == b',') {
        let member = trim_ows(member);
        if member.is_empty() {
            // Empty members are allowed and ignored.
            continue;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        if !key_valid(key) || !value_valid(value) {
            return false;
        }
        if *count == MAX_TRACESTATE_MEMBERS || keys[..*count].contains(&key) {
            return false;
        }
        keys[*count] = key;
        *count += 1;
    }
    true
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ' && b != b'\t');
    let end = bytes.iter().rposition(|&b| b != b' ' && b != b'\t');
    match (start, end) {
        (Some(start), Some(end)) => &bytes[start..=end],
        _ => &[],
    }
}

/// `simple-key` or `tenant-id@system-id`.
fn key_valid(key: &[u8]) -> bool {
    let key_char = |b: u8| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
    };
    match key.iter().position(|&b| b == b'@') {
        None => {
            (1..=256).contains(&key.len())
                && key[0].is_ascii_lowercase()
                && key.iter().all(|&b| key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && (tenant[0].is_ascii_lowercase() || tenant[0].is_ascii_digit())
                && tenant.iter().all(|&b| key_char(b))
                && (1..=14).contains(&system.len())
                && system[0].is_ascii_lowercase()
                && system.iter().all(|&b| key_char(b))
        }
    }
}

/// 1 to 256 printable ASCII characters but `,` and `=`, not ending in a space.
fn value_valid(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn a_valid_traceparent_is_read() {
        let parent = parse_traceparent(GOOD.as_bytes()).expect("valid");
        assert_eq!(parent.trace_id[0], 0x4b);
        assert_eq!(parent.trace_id[15], 0x36);
        assert_eq!(
            parent.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(parent.sampled());
        let unsampled = parse_traceparent(
            &GOOD.as_bytes()[..53]
                .iter()
                .chain(b"00")
                .copied()
                .collect::<Vec<_>>(),
        );
        assert!(!unsampled.expect("valid").sampled());
        // A later version: its first 55 characters as 00, then more after a dash.
        let later = format!("01{}-what-comes-next", &GOOD[2..]);
        assert!(parse_traceparent(later.as_bytes()).is_some());
        let later_exact = format!("cc{}", &GOOD[2..]);
        assert!(parse_traceparent(later_exact.as_bytes()).is_some());
    }

    #[test]
    fn forged_and_garbage_traceparents_are_refused() {
        let bad = [
            // version ff is invalid
            format!("ff{}", &GOOD[2..]),
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01".to_string(),
            // upper-case hex
            GOOD.to_ascii_uppercase(),
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01".to_string(),
            // wrong lengths
            GOOD[..54].to_string(),
            format!("{GOOD}0"),
            format!("{GOOD}-extra"),
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01".to_string(),
            // a later version that goes on without a dash
            format!("01{}x", &GOOD[2..]),
            // separators and digits
            GOOD.replace('-', "_"),
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x".to_string(),
            String::new(),
            "<script>alert(1)</script>".repeat(4),
            "x".repeat(10_000),
        ];
        for text in &bad {
            assert_eq!(parse_traceparent(text.as_bytes()), None, "{text:?}");
        }
        // Non-ASCII bytes never panic.
        let mut weird = GOOD.as_bytes().to_vec();
        weird[10] = 0xc3;
        assert_eq!(parse_traceparent(&weird), None);
    }

    #[test]
    fn two_traceparent_headers_are_none() {
        assert!(client_traceparent(&headers(TRACEPARENT.as_str(), &[GOOD])).is_some());
        assert!(client_traceparent(&headers(TRACEPARENT.as_str(), &[GOOD, GOOD])).is_none());
        assert!(client_traceparent(&HeaderMap::new()).is_none());
    }

    #[test]
    fn formatting_round_trips() {
        let parent = parse_traceparent(GOOD.as_bytes()).expect("valid");
        let text = format_traceparent(&parent.trace_id, &parent.parent_id, 1);
        assert_eq!(&text[..], GOOD.as_bytes());
    }

    #[test]
    fn tracestate_is_kept_only_when_valid() {
        let valid =
            |values: &[&str]| client_tracestate_is_valid(&headers(TRACESTATE.as_str(), values));
        assert!(valid(&["congo=t61rcWkgMzE"]));
        assert!(valid(&["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"]));
        assert!(valid(&["rojo=1", "congo=2"]));
        assert!(valid(&["tenant1@vendor=x,  ,other=y"]));
        // Spaces around members are allowed (and not part of the value).
        assert!(valid(&[" a=1 , b=2\t"]));
        assert!(!valid(&[]));
        assert!(!valid(&[""]));
        // Duplicate keys, across lines too.
        assert!(!valid(&["a=1,a=2"]));
        assert!(!valid(&["a=1", "a=2"]));
        // Bad keys and values.
        for bad in [
            "A=1",
            "1a=1",
            "a",
            "=1",
            "a=",
            "a=b=c",
            "a@=1",
            "a@B=1",
            "a@waytoolongsystemid=1",
            "a=\u{e9}",
        ] {
            assert!(!valid(&[bad]), "{bad:?}");
        }
        assert!(!value_valid(b"\x7f") && !value_valid(b"x\x00"));
        // 32 members are fine, 33 are too many.
        let members: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert!(valid(&[&members[..32].join(",")]));
        assert!(!valid(&[&members.join(",")]));
        // Over 512 bytes is dropped.
        let long = format!("a={}", "v".repeat(250));
        let near = [long.as_str(), long.replacen("a=", "b=", 1).as_str()].join(",");
        assert!(valid(&[&near]));
        let over = [near.as_str(), "c=123456789"].join(",");
        assert!(over.len() > MAX_TRACESTATE_BYTES);
        assert!(!valid(&[&over]));
    }
}
