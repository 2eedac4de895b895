//! Idempotency at the edge: a request carrying an idempotency key reaches a
//! backend at most once per key, even when the order servers ignore keys.
//! Repeats get the first request's stored answer, wait for it while it is in
//! flight, or are told plainly that the outcome is unknown; they are never
//! forwarded again unless the first provably did nothing (it never reached a
//! backend, or a backend answered 5xx).
//!
//! Following the IETF `Idempotency-Key` header draft: the key is the client's;
//! the record is keyed by (route, scope value, key) and fingerprinted by
//! method, path, query and a digest of the body, so a key reused for another
//! request is refused (422), not replayed.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method};

use crate::store::{Fingerprint, RecordKey, StoredAnswer};

/// A route's `[routes.idempotency]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The header carrying the key. Default: the retry section's
    /// `idempotency_key_header` (`idempotency-key`).
    pub header: HeaderName,
    /// Methods whose requests are keyed. Default: POST, PATCH.
    pub methods: Vec<Method>,
    /// Whether a keyed method without a key is refused (400). Default: false.
    pub required: bool,
    /// How long a record is kept. Default: 24h.
    pub ttl: Duration,
    /// What makes two shoppers' keys distinct. Default: none.
    pub scope: Scope,
    /// Whether the order servers honour the key themselves. Default: false.
    pub backend_dedupes: bool,
    /// Memory for all records of the route, answers included. Default: 256 MiB.
    pub max_bytes: u64,
    /// Largest answer kept for replays. Default: 64 KiB.
    pub max_response_bytes: usize,
    /// How long a repeat waits for the first request with its key. Default: 10s.
    pub wait_for_first: Duration,
}

/// What makes two shoppers' keys distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Keys are global to the route.
    None,
    /// The client's IP address.
    ClientIp,
    /// The value of a request header (e.g. an API token).
    Header(HeaderName),
    /// The value of a cookie (e.g. the session cookie).
    Cookie(String),
}

/// What a request's key says before anything else happens.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// The route does not key this method: proceed as usual.
    NotKeyed,
    /// A keyed method without a key, on a route that does not require one.
    Absent,
    /// A keyed method without a key on a route that requires one: 400.
    Missing,
    /// A key that is not 1-255 printable ASCII characters: 400.
    Invalid,
    /// A valid key: the record to look up.
    Key(RecordKey),
}

impl Settings {
    /// Whether requests of `method` are keyed on this route.
    pub fn keys(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// Whether ordergate may send a keyed request again after it reached a
    /// backend: only when the backends dedupe keys themselves. Otherwise a
    /// keyed order follows the rule of unkeyed ones (another try only when it
    /// never reached a backend), whatever the retry section says.
    pub fn allows_replay(&self, method: &Method) -> bool {
        self.backend_dedupes || !self.keys(method)
    }

    /// Reads the key (and the scope value) of a request on `route`.
    pub fn check(
        &self,
        route: &str,
        method: &Method,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> KeyCheck {
        if !self.keys(method) {
            return KeyCheck::NotKeyed;
        }
        let mut values = headers.get_all(&self.header).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return match headers.contains_key(&self.header) {
                // Two keys on one request: which one would count?
                true => KeyCheck::Invalid,
                false if self.required => KeyCheck::Missing,
                false => KeyCheck::Absent,
            };
        };
        let Some(key) = valid_key(value.as_bytes()) else {
            return KeyCheck::Invalid;
        };
        KeyCheck::Key(RecordKey {
            route: route.to_owned(),
            scope: self.scope_value(headers, client_ip),
            key: key.to_owned(),
        })
    }

    fn scope_value(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> String {
        match &self.scope {
            Scope::None => String::new(),
            Scope::ClientIp => client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            Scope::Header(name) => headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
            Scope::Cookie(name) => cookie(headers, name).unwrap_or_default().to_owned(),
        }
    }
}

/// The key if it is 1-255 printable ASCII characters (space to `~`), as the
/// draft's structured-field string allows.
pub fn valid_key(bytes: &[u8]) -> Option<&str> {
    let printable =
        (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    printable.then(|| std::str::from_utf8(bytes).ok()).flatten()
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// What makes two requests with one key the same request: method, path and
/// query, and the body (SHA-256).
pub fn fingerprint(method: &Method, path_and_query: &str, body: &[u8]) -> Fingerprint {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(method.as_str().as_bytes());
    context.update(b" ");
    context.update(path_and_query.as_bytes());
    context.update(b"\n");
    context.update(body);
    let mut fingerprint = [0; 32];
    fingerprint.copy_from_slice(context.finish().as_ref());
    fingerprint
}

/// What becomes of the record once the first request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settle {
    /// A backend answered: keep the answer (`None`: too large to keep).
    Complete(Option<StoredAnswer>),
    /// Nothing happened that a repeat could meet: forget the key.
    Release,
    /// The answer was lost after the request reached a backend.
    Unknown,
}

/// How the first request with a key ended, as far as its record is concerned.
#[derive(Debug)]
pub enum Ending {
    /// A backend's whole answer (status, headers, body) went through.
    Answered(StoredAnswer),
    /// A backend answered, but the answer was larger than `max_response_bytes`.
    AnsweredTooLarge(u16),
    /// The request failed without reaching any backend.
    NeverReached,
    /// The request failed after it may have reached a backend (reset, timeout,
    /// an answer cut short).
    Lost,
}

impl Settings {
    /// What to do with the record: 2xx and 4xx answers are kept; a 5xx or a
    /// failure before any backend releases the key; a lost answer makes the
    /// outcome unknown — unless the backends dedupe keys, when a repeat may be
    /// forwarded with the key (release).
    pub fn settle(&self, ending: Ending) -> Settle {
        match ending {
            Ending::Answered(answer) if answer.status >= 500 => Settle::Release,
            Ending::Answered(answer) => Settle::Complete(Some(answer)),
            Ending::AnsweredTooLarge(status) if status >= 500 => Settle::Release,
            Ending::AnsweredTooLarge(_) => Settle::Complete(None),
            Ending::NeverReached => Settle::Release,
            Ending::Lost if self.backend_dedupes => Settle::Release,
            Ending::Lost => Settle::Unknown,
        }
    }
}

/// Headers that describe one connection, not the answer: never stored.
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "x-request-id",
    "date",
];

/// The headers of a backend's answer worth replaying, in order.
pub fn stored_headers(headers: &HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

/// Collects a backend's answer body for the record, up to the route's limit.
#[derive(Debug, Default)]
pub struct BodyRecorder {
    chunks: Vec<Bytes>,
    len: usize,
    too_large: bool,
}

impl BodyRecorder {
    /// Adds a chunk; past `max` bytes the body is no longer kept.
    pub fn push(&mut self, chunk: &Bytes, max: usize) {
        if self.too_large {
            return;
        }
        self.len += chunk.len();
        if self.len > max {
            self.too_large = true;
            self.chunks.clear();
        } else {
            self.chunks.push(chunk.clone());
        }
    }

    /// The whole body, or `None` when it grew past the limit.
    pub fn finish(self) -> Option<Bytes> {
        if self.too_large {
            return None;
        }
        Some(match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut body = Vec::with_capacity(self.len);
                for chunk in &self.chunks {
                    body.extend_from_slice(chunk);
                }
                Bytes::from(body)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            header: HeaderName::from_static("idempotency-key"),
            methods: vec![Method::POST, Method::PATCH],
            required: false,
            ttl: Duration::from_secs(86_400),
            scope: Scope::Cookie("session".into()),
            backend_dedupes: false,
            max_bytes: 1 << 20,
            max_response_bytes: 64 * 1024,
            wait_for_first: Duration::from_secs(10),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn keys_are_read_scoped_and_checked() {
        let s = settings();
        assert_eq!(
            s.check(
                "r",
                &Method::GET,
                &headers(&[("idempotency-key", "k")]),
                None
            ),
            KeyCheck::NotKeyed
        );
        assert_eq!(
            s.check("r", &Method::POST, &headers(&[]), None),
            KeyCheck::Absent
        );
        let required = Settings {
            required: true,
            ..settings()
        };
        assert_eq!(
            required.check("r", &Method::POST, &headers(&[]), None),
            KeyCheck::Missing
        );
        let key = s.check(
            "r",
            &Method::POST,
            &headers(&[
                ("idempotency-key", "order-1"),
                ("cookie", "a=1; session=s9"),
            ]),
            None,
        );
        assert_eq!(
            key,
            KeyCheck::Key(RecordKey {
                route: "r".into(),
                scope: "s9".into(),
                key: "order-1".into()
            })
        );
        assert_eq!(
            s.check(
                "r",
                &Method::POST,
                &headers(&[("idempotency-key", "a"), ("idempotency-key", "b")]),
                None
            ),
            KeyCheck::Invalid
        );
    }

    #[test]
    fn a_key_is_1_to_255_printable_ascii() {
        assert_eq!(valid_key(b"order-1 x"), Some("order-1 x"));
        assert_eq!(valid_key(b""), None);
        assert_eq!(valid_key(&[b'a'; 256]), None);
        assert!(valid_key(&[b'a'; 255]).is_some());
        assert_eq!(valid_key(b"tab\there"), None);
        assert_eq!(valid_key("ключ".as_bytes()), None);
    }

    #[test]
    fn the_fingerprint_covers_method_target_and_body() {
        let base = fingerprint(&Method::POST, "/api/orders?a=1", b"{}");
        assert_eq!(base, fingerprint(&Method::POST, "/api/orders?a=1", b"{}"));
        assert_ne!(base, fingerprint(&Method::PATCH, "/api/orders?a=1", b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, "/api/orders?a=2", b"{}"));
        assert_ne!(base, fingerprint(&Method::POST, "/api/orders?a=1", b"{ }"));
    }

    fn answer(status: u16) -> StoredAnswer {
        StoredAnswer {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            request_id: String::new(),
        }
    }

    #[test]
    fn what_becomes_of_a_record() {
        let s = settings();
        assert!(matches!(
            s.settle(Ending::Answered(answer(201))),
            Settle::Complete(Some(_))
        ));
        assert!(matches!(
            s.settle(Ending::Answered(answer(409))),
            Settle::Complete(Some(_))
        ));
        assert_eq!(s.settle(Ending::Answered(answer(503))), Settle::Release);
        assert_eq!(
            s.settle(Ending::AnsweredTooLarge(200)),
            Settle::Complete(None)
        );
        assert_eq!(s.settle(Ending::NeverReached), Settle::Release);
        assert_eq!(s.settle(Ending::Lost), Settle::Unknown);
        let dedupes = Settings {
            backend_dedupes: true,
            ..settings()
        };
        assert_eq!(dedupes.settle(Ending::Lost), Settle::Release);
        assert!(dedupes.allows_replay(&Method::POST));
        assert!(!s.allows_replay(&Method::POST));
        assert!(s.allows_replay(&Method::GET));
    }

    #[test]
    fn hop_by_hop_headers_are_not_stored_and_bodies_are_bounded() {
        let stored = stored_headers(&headers(&[
            ("content-type", "application/json"),
            ("connection", "keep-alive"),
            ("content-length", "2"),
            ("x-request-id", "r"),
            ("location", "/api/orders/7"),
        ]));
        let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
        let mut body = BodyRecorder::default();
        body.push(&Bytes::from_static(b"ab"), 4);
        body.push(&Bytes::from_static(b"cd"), 4);
        assert_eq!(body.finish(), Some(Bytes::from_static(b"abcd")));
        let mut large = BodyRecorder::default();
        large.push(&Bytes::from_static(b"abc"), 4);
        large.push(&Bytes::from_static(b"de"), 4);
        assert_eq!(large.finish(), None);
    }
}
