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

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method};
use std::net::IpAddr;

pub use crate::config::{IdempotencyConfig as Settings, IdempotencyScope as Scope};
use crate::kept::{replayable_headers, BodyRecorder, StoredAnswer};
use crate::outcome::Outcome;
use crate::store::{Begin, Fingerprint, RecordKey};
use crate::telemetry::IdempotencyResult;

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

    /// The scope value of a request: empty for `global`; otherwise a digest
    /// of the shopper's credential (the named cookie or header), or of the
    /// client's address when it sent none — so shoppers without a session
    /// never share keys, and no credential is stored in a record's key.
    fn scope_value(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> String {
        let credential: Option<&[u8]> = match &self.scope {
            Scope::Global => return String::new(),
            Scope::ClientIp => None,
            Scope::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            Scope::Cookie(name) => crate::forward::cookies(headers, name)
                .next()
                .map(str::as_bytes),
        };
        let address;
        let (kind, value): (&[u8], &[u8]) = match credential.filter(|v| !v.is_empty()) {
            Some(credential) => (b"credential\0", credential),
            None => {
                address = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
                (b"address\0", address.as_bytes())
            }
        };
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(kind);
        context.update(value);
        let digest = context.finish();
        digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The key if it is 1-255 printable ASCII characters (space to `~`), as the
/// draft's structured-field string allows.
pub fn valid_key(bytes: &[u8]) -> Option<&str> {
    let printable =
        (1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    printable.then(|| std::str::from_utf8(bytes).ok()).flatten()
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

/// A route's idempotency: its settings, its records (live, shared across
/// snapshots) and its metrics.
#[derive(Debug, Clone)]
pub struct RouteIdempotency {
    /// The route's `[routes.idempotency]`.
    pub settings: Settings,
    /// The route's records.
    pub store: std::sync::Arc<dyn crate::store::IdempotencyStore>,
    /// `ordergate_idempotency_total` of the route.
    pub metrics: crate::telemetry::IdempotencyMetrics,
}

/// What the record of a keyed request says to do with it.
#[derive(Debug)]
pub enum Verdict {
    /// The first request with its key: forward it (and settle its record when
    /// it ends, [`RouteIdempotency::settle`]).
    Forward,
    /// Answer with the first request's stored answer; nothing is forwarded.
    Replay(std::sync::Arc<StoredAnswer>),
    /// Answer with this page; nothing is forwarded.
    Refuse(Outcome),
}

impl RouteIdempotency {
    /// The request's record key: `Ok(None)` when the request is not keyed,
    /// the page when its key is missing (and required) or malformed (counted).
    pub fn key_of(
        &self,
        route: &str,
        method: &Method,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
    ) -> Result<Option<RecordKey>, Outcome> {
        match self.settings.check(route, method, headers, client_ip) {
            KeyCheck::NotKeyed | KeyCheck::Absent => Ok(None),
            KeyCheck::Missing => {
                self.metrics.count(IdempotencyResult::Missing);
                Err(Outcome::IdempotencyKeyMissing)
            }
            KeyCheck::Invalid => {
                self.metrics.count(IdempotencyResult::Invalid);
                Err(Outcome::IdempotencyKeyInvalid)
            }
            KeyCheck::Key(key) => Ok(Some(key)),
        }
    }

    /// Looks the record up (creating it for the first request) and waits, up
    /// to `wait_for_first`, for a first request still in flight.
    pub async fn begin(&self, key: &RecordKey, fingerprint: &Fingerprint) -> Verdict {
        let deadline = tokio::time::Instant::now() + self.settings.wait_for_first;
        let mut waited = false;
        loop {
            let begin = self
                .store
                .get_or_begin(key, fingerprint, self.settings.ttl)
                .await;
            let (result, verdict) = match begin {
                Begin::First => (IdempotencyResult::First, Verdict::Forward),
                Begin::Done(answer) if waited => {
                    (IdempotencyResult::Waited, Verdict::Replay(answer))
                }
                Begin::Done(answer) => (IdempotencyResult::Replayed, Verdict::Replay(answer)),
                Begin::DoneNotStored => (
                    IdempotencyResult::TooLarge,
                    Verdict::Refuse(Outcome::AlreadyProcessed),
                ),
                Begin::Unknown => (
                    IdempotencyResult::OutcomeUnknown,
                    Verdict::Refuse(Outcome::OrderOutcomeUnknown),
                ),
                Begin::Mismatch => (
                    IdempotencyResult::ReusedMismatch,
                    Verdict::Refuse(Outcome::IdempotencyKeyReused),
                ),
                Begin::InFlight(waiter) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if !left.is_zero() && waiter.settled_within(left).await {
                        // Settled (or released): look again.
                        waited = true;
                        continue;
                    }
                    (
                        IdempotencyResult::InProgress,
                        Verdict::Refuse(Outcome::IdempotencyInProgress),
                    )
                }
            };
            self.metrics.count(result);
            return verdict;
        }
    }

    /// Settles the record of the first request once it ended.
    pub async fn settle(&self, request: KeyedRequest, may_have_reached: bool, request_id: &str) {
        let key = request.key.clone();
        match self
            .settings
            .settle(request.ending(may_have_reached, request_id))
        {
            Settle::Complete(answer) => self.store.complete(&key, answer).await,
            Settle::Release => {
                self.metrics.count(IdempotencyResult::Released);
                self.store.release(&key).await;
            }
            Settle::Unknown => self.store.mark_unknown(&key).await,
        }
    }
}

/// Bodies up to this size are read before forwarding, so the fingerprint
/// covers them (pingora keeps them for the upstream, like a retry). A larger
/// or chunked body is fingerprinted by its length only.
pub const FINGERPRINTED_BODY: u64 = 64 * 1024;

/// The length of a keyed request's body when it is to be read before
/// forwarding (declared, up to [`FINGERPRINTED_BODY`]); `None` for a larger
/// or chunked one, fingerprinted by [`declared_only`].
pub fn body_to_read(headers: &HeaderMap) -> Option<usize> {
    crate::connection::declared_length(headers)
        .filter(|len| *len <= FINGERPRINTED_BODY)
        .and_then(|len| usize::try_from(len).ok())
}

/// What the fingerprint covers of a body that is not read: its declared length.
pub fn declared_only(headers: &HeaderMap) -> Bytes {
    let declared = crate::connection::declared_length(headers);
    Bytes::from(format!("length:{declared:?}"))
}

/// The first request with a key, on its way: what its record will say.
#[derive(Debug)]
pub struct KeyedRequest {
    /// The record.
    pub key: RecordKey,
    head: Option<(u16, Vec<(String, Bytes)>)>,
    body: BodyRecorder,
    body_complete: bool,
}

impl KeyedRequest {
    /// The first request with `key`.
    pub fn new(key: RecordKey) -> KeyedRequest {
        KeyedRequest {
            key,
            head: None,
            body: BodyRecorder::default(),
            body_complete: false,
        }
    }

    /// A backend's final answer header (a retry replaces an earlier one),
    /// kept without `Set-Cookie` and the route's `per_shopper` headers: a
    /// replay never hands one shopper's session to another.
    pub fn answer_head(&mut self, status: u16, headers: &HeaderMap, per_shopper: &[HeaderName]) {
        self.head = Some((status, replayable_headers(headers, per_shopper)));
        self.body = BodyRecorder::default();
        self.body_complete = false;
    }

    /// A chunk of the backend's answer body; `end` when it is whole.
    pub fn answer_body(&mut self, chunk: Option<&Bytes>, end: bool, max: usize) {
        if let Some(chunk) = chunk {
            self.body.push(chunk, max);
        }
        self.body_complete |= end;
    }

    /// How the request ended: `may_have_reached` when a connection to a
    /// backend was open for it (the request may have been sent).
    pub fn ending(self, may_have_reached: bool, request_id: &str) -> Ending {
        match self.head {
            Some((status, headers)) if self.body_complete || status >= 500 => {
                match self.body.finish() {
                    Some(body) => Ending::Answered(StoredAnswer {
                        status,
                        headers,
                        body,
                        request_id: request_id.to_owned(),
                    }),
                    None => Ending::AnsweredTooLarge(status),
                }
            }
            // An answer cut short: the backend acted, the shopper did not see it.
            Some(_) => Ending::Lost,
            None if may_have_reached => Ending::Lost,
            None => Ending::NeverReached,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kept::tests::headers;
    use http::HeaderName;
    use std::time::Duration;

    fn settings() -> Settings {
        Settings {
            header: HeaderName::from_static("idempotency-key"),
            methods: vec![Method::POST, Method::PATCH],
            required: false,
            ttl: Duration::from_secs(86_400),
            scope: Scope::Cookie("session".into()),
            per_shopper_headers: vec![HeaderName::from_static("x-shopper-token")],
            backend_dedupes: false,
            max_bytes: 1 << 20,
            max_response_bytes: 64 * 1024,
            wait_for_first: Duration::from_secs(10),
            orders_url: None,
        }
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
        let KeyCheck::Key(record) = key else {
            panic!("a key: {key:?}")
        };
        assert_eq!(
            (record.route.as_str(), record.key.as_str()),
            ("r", "order-1")
        );
        assert_eq!(record.scope.len(), 32, "a digest, not the session itself");
        assert!(!record.scope.contains("s9"));
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

    fn scope_of(s: &Settings, pairs: &[(&'static str, &'static str)], ip: [u8; 4]) -> String {
        let mut all = vec![("idempotency-key", "k")];
        all.extend_from_slice(pairs);
        match s.check("r", &Method::POST, &headers(&all), Some(IpAddr::from(ip))) {
            KeyCheck::Key(record) => record.scope,
            other => panic!("a key: {other:?}"),
        }
    }

    #[test]
    fn shoppers_never_share_a_scope_unless_it_is_global() {
        let s = settings();
        let alice = scope_of(&s, &[("cookie", "session=alice")], [10, 0, 0, 1]);
        assert_eq!(
            alice,
            scope_of(&s, &[("cookie", "session=alice")], [10, 0, 0, 2]),
            "her phone moved networks"
        );
        assert_ne!(
            alice,
            scope_of(&s, &[("cookie", "session=bob")], [10, 0, 0, 1])
        );
        // Without the cookie: by address, never one shared anonymous scope.
        let anonymous = scope_of(&s, &[], [10, 0, 0, 1]);
        assert_ne!(anonymous, scope_of(&s, &[], [10, 0, 0, 2]));
        assert_ne!(anonymous, alice);
        assert_eq!(
            anonymous,
            scope_of(&s, &[("cookie", "session=")], [10, 0, 0, 1])
        );
        // A cookie whose value is an address is not that address's scope.
        assert_ne!(
            anonymous,
            scope_of(&s, &[("cookie", "session=10.0.0.1")], [10, 0, 0, 1])
        );
        let global = Settings {
            scope: Scope::Global,
            ..settings()
        };
        assert_eq!(
            scope_of(&global, &[("cookie", "session=alice")], [10, 0, 0, 1]),
            ""
        );
        assert_eq!(scope_of(&global, &[], [10, 0, 0, 9]), "");
    }

    #[test]
    fn a_replay_carries_no_cookie_and_no_per_shopper_header() {
        let mut keyed = KeyedRequest::new(RecordKey {
            route: "r".into(),
            scope: String::new(),
            key: "k".into(),
        });
        let answer = headers(&[
            ("content-type", "application/json"),
            ("set-cookie", "session=alice; HttpOnly"),
            ("x-shopper-token", "alice-token"),
            ("location", "/orders/1"),
        ]);
        keyed.answer_head(201, &answer, &settings().per_shopper_headers);
        let (_, kept) = keyed.head.as_ref().expect("a head");
        let names: Vec<&str> = kept.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
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
    }
}
