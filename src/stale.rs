//! Stale answers for reads (RFC 5861 `stale-if-error`): a route keeps the last
//! good answer to each read, and when the backends fail (an error, a 5xx, a
//! timeout, no healthy backend, shedding — and, if asked, instead of queueing)
//! the shopper gets that copy, marked stale, rather than an error page. The
//! copy is used only as a fallback: normal reads always go to the backends.
//!
//! Never kept or served: answers to requests with `Authorization` or cookies
//! (unless the route says `private_ok`; ordergate's own `ordergate_*` cookies
//! and those named in `ignore_cookies` do not count), answers that set cookies or say
//! `Cache-Control: private` / `no-store`, and answers that `Vary: *`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use moka::sync::Cache;
use pingora::http::RequestHeader;

pub use crate::config::StaleConfig;
use crate::kept::{stored_headers, BodyRecorder, StoredAnswer};

/// What identifies a read: method, host, path and query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    method: Method,
    host: String,
    target: String,
}

/// A kept answer and the request header values it varies on.
#[derive(Debug)]
pub struct Copy {
    /// The answer.
    pub answer: StoredAnswer,
    /// The `Vary` headers of the answer and the request's values of them.
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// When it was kept.
    pub stored_at: Instant,
}

impl Copy {
    /// Seconds since it was kept (its `Age`).
    pub fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored_at).as_secs()
    }

    fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| request.get(name) == value.as_ref())
    }

    fn weight(&self, key: &Key) -> u32 {
        let bytes = self.answer.weight() + key.host.len() + key.target.len() + 128;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The kept answers of one route (live state: they survive reloads).
pub struct StaleCache {
    copies: Cache<Key, Arc<Copy>>,
    max_bytes: u64,
    max_age: Duration,
}

impl std::fmt::Debug for StaleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaleCache")
            .field("copies", &self.copies.entry_count())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl StaleCache {
    /// A cache of at most `max_bytes`, each copy kept at most `max_age`.
    pub fn new(max_bytes: u64, max_age: Duration) -> StaleCache {
        StaleCache {
            copies: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Key, copy: &Arc<Copy>| copy.weight(key))
                .time_to_live(max_age)
                .build(),
            max_bytes,
            max_age,
        }
    }

    /// The budget this cache was built with.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// How long this cache keeps a copy.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Keeps a copy.
    pub fn keep(&self, key: Key, copy: Copy) {
        self.copies.insert(key, Arc::new(copy));
    }

    /// The copy for a request, if one is kept and the request matches its `Vary`.
    pub fn find(&self, key: &Key, request: &HeaderMap) -> Option<Arc<Copy>> {
        self.copies.get(key).filter(|copy| copy.matches(request))
    }

    /// Bytes the copies take now (approximate).
    pub fn size_bytes(&self) -> u64 {
        self.copies.run_pending_tasks();
        self.copies.weighted_size()
    }
}

/// The key of a read that may be kept and served stale; `None` for other
/// requests (not GET/HEAD, or private without `private_ok`).
pub fn key_for(
    config: &StaleConfig,
    method: &Method,
    host: &str,
    target: &str,
    headers: &HeaderMap,
) -> Option<Key> {
    let read = *method == Method::GET || *method == Method::HEAD;
    let private = headers.contains_key(AUTHORIZATION) || has_personal_cookie(config, headers);
    (read && (config.private_ok || !private)).then(|| Key {
        method: method.clone(),
        host: host.to_ascii_lowercase(),
        target: target.to_owned(),
    })
}

/// Prefix of the cookies ordergate itself sets (the waiting room's
/// `ordergate_room_NAME`): they say nothing about what the backend answers.
const OWN_COOKIE_PREFIX: &str = "ordergate_";

/// Whether the request carries a cookie that may change the answer: any but
/// ordergate's own and those in `ignore_cookies`.
fn has_personal_cookie(config: &StaleConfig, headers: &HeaderMap) -> bool {
    if !headers.contains_key(COOKIE) {
        return false;
    }
    crate::forward::cookie_pairs(headers).any(|(name, _)| {
        !name.starts_with(OWN_COOKIE_PREFIX) && !config.ignore_cookies.iter().any(|n| n == name)
    })
}

/// Whether an answer may be kept: a listed status, no `Set-Cookie`, no
/// `Cache-Control: private` or `no-store`, no `Vary: *`.
pub fn storable(config: &StaleConfig, status: u16, headers: &HeaderMap) -> bool {
    let cache_control_forbids = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .any(|d| d == "no-store" || d == "private" || d.starts_with("private="));
    let vary_all = vary_names(headers).any(|name| name == "*");
    config.statuses.contains(&status)
        && !headers.contains_key(SET_COOKIE)
        && !cache_control_forbids
        && !vary_all
}

fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
}

/// When a kept copy may stand in for the backends' answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The pool has no free slot: a copy now rather than a wait in the queue
    /// (`on_overload`).
    Overload,
    /// The backends failed or were unreachable (`on_error`).
    Error,
}

/// The route's kept copy of this read, when the route keeps copies for
/// `need` and one matches the request.
pub fn stand_in(
    config: &StaleConfig,
    cache: &StaleCache,
    request: &RequestHeader,
    need: Need,
) -> Option<Arc<Copy>> {
    let wanted = match need {
        Need::Overload => config.on_overload,
        Need::Error => config.on_error,
    };
    if !wanted {
        return None;
    }
    cache.find(&key_of(config, request)?, &request.headers)
}

/// The key of a read from its request head ([`key_for`]).
pub fn key_of(config: &StaleConfig, request: &RequestHeader) -> Option<Key> {
    let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
    let host = crate::forward::request_host(request).unwrap_or_default();
    key_for(config, &request.method, host, target, &request.headers)
}

/// Starts recording a backend's answer to `request` as the route's stale copy,
/// when the read may be kept and the answer is storable.
pub fn record(
    config: &StaleConfig,
    request: &RequestHeader,
    status: u16,
    answer: &HeaderMap,
) -> Option<Box<Recording>> {
    if !storable(config, status, answer) {
        return None;
    }
    let key = key_of(config, request)?;
    Some(Box::new(Recording::new(
        key,
        status,
        answer,
        &request.headers,
        copy_limit(config),
    )))
}

/// The largest body kept as one copy: a sixteenth of the route's budget, so
/// that one large answer cannot push out every other copy.
fn copy_limit(config: &StaleConfig) -> usize {
    usize::try_from(config.max_bytes / 16).unwrap_or(usize::MAX)
}

/// A backend's answer to a read, being collected to keep.
#[derive(Debug)]
pub struct Recording {
    key: Key,
    status: u16,
    headers: Vec<(String, Bytes)>,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    body: BodyRecorder,
    limit: usize,
}

impl Recording {
    /// Starts collecting a storable answer to the request `request`.
    pub fn new(
        key: Key,
        status: u16,
        answer: &HeaderMap,
        request: &HeaderMap,
        limit: usize,
    ) -> Recording {
        let vary = vary_names(answer)
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .map(|name| {
                let value = request.get(&name).cloned();
                (name, value)
            })
            .collect();
        Recording {
            key,
            status,
            headers: stored_headers(answer),
            vary,
            body: BodyRecorder::default(),
            limit,
        }
    }

    /// Adds a body chunk (past the limit the answer is not kept).
    pub fn push(&mut self, chunk: &Bytes) {
        self.body.push(chunk, self.limit);
    }

    /// The whole answer, ready to keep; `None` when it grew past the limit.
    pub fn finish(self, request_id: &str) -> Option<(Key, Copy)> {
        let body = self.body.finish()?;
        Some((
            self.key,
            Copy {
                answer: StoredAnswer {
                    status: self.status,
                    headers: self.headers,
                    body,
                    request_id: request_id.to_owned(),
                },
                vary: self.vary,
                stored_at: Instant::now(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StaleConfig {
        StaleConfig {
            max_age: Duration::from_secs(600),
            max_bytes: 1 << 20,
            statuses: vec![200],
            on_error: true,
            on_overload: false,
            private_ok: false,
            ignore_cookies: vec!["_ga".into()],
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn ordergate_and_ignored_cookies_keep_a_read_public() {
        let c = config();
        let key = |cookie: &'static str| {
            key_for(
                &c,
                &Method::GET,
                "shop",
                "/p/1",
                &headers(&[("cookie", cookie)]),
            )
            .is_some()
        };
        assert!(key("ordergate_room_sale=p.sale.1.2.3.4.ab"));
        assert!(key("_ga=GA1.2; ordergate_room_sale=p"));
        assert!(!key("_ga=GA1.2; session=s3cret"));
        assert!(!key("ordergate_room_sale=p; session=s3cret"));
        assert!(!key("ga=1"), "a name close to an ignored one is personal");
    }

    #[test]
    fn only_public_reads_are_kept() {
        let c = config();
        assert!(key_for(&c, &Method::GET, "Shop", "/p/1", &headers(&[])).is_some());
        assert!(key_for(&c, &Method::POST, "shop", "/p/1", &headers(&[])).is_none());
        assert!(key_for(
            &c,
            &Method::GET,
            "shop",
            "/p/1",
            &headers(&[("cookie", "s=1")])
        )
        .is_none());
        assert!(key_for(
            &c,
            &Method::GET,
            "shop",
            "/",
            &headers(&[("authorization", "x")])
        )
        .is_none());
        let private_ok = StaleConfig {
            private_ok: true,
            ..config()
        };
        assert!(key_for(
            &private_ok,
            &Method::GET,
            "shop",
            "/",
            &headers(&[("cookie", "s")])
        )
        .is_some());
    }

    #[test]
    fn answers_that_are_private_or_personal_are_never_kept() {
        let c = config();
        assert!(storable(
            &c,
            200,
            &headers(&[("cache-control", "max-age=60")])
        ));
        assert!(!storable(&c, 404, &headers(&[])));
        assert!(!storable(&c, 200, &headers(&[("set-cookie", "a=b")])));
        assert!(!storable(
            &c,
            200,
            &headers(&[("cache-control", "public, no-store")])
        ));
        assert!(!storable(
            &c,
            200,
            &headers(&[("cache-control", "Private")])
        ));
        assert!(!storable(&c, 200, &headers(&[("vary", "Accept, *")])));
    }

    #[test]
    fn a_copy_is_found_only_for_the_same_vary_values() {
        let c = config();
        let cache = StaleCache::new(1 << 20, Duration::from_secs(60));
        let request = headers(&[("accept-language", "zh-CN")]);
        let key = key_for(&c, &Method::GET, "shop", "/p/1", &request).expect("key");
        let mut recording = Recording::new(
            key.clone(),
            200,
            &headers(&[("vary", "Accept-Language"), ("content-type", "text/html")]),
            &request,
            1024,
        );
        recording.push(&Bytes::from_static(b"<h1>tea</h1>"));
        let (key, copy) = recording.finish("r1").expect("kept");
        cache.keep(key.clone(), copy);
        let found = cache.find(&key, &request).expect("found");
        assert_eq!(found.answer.body, Bytes::from_static(b"<h1>tea</h1>"));
        assert!(cache
            .find(&key, &headers(&[("accept-language", "en")]))
            .is_none());
        assert!(cache.size_bytes() > 0);
    }

    #[test]
    fn a_body_over_the_limit_is_not_kept() {
        let c = config();
        let key = key_for(&c, &Method::GET, "shop", "/big", &HeaderMap::new()).expect("key");
        let mut recording = Recording::new(key, 200, &HeaderMap::new(), &HeaderMap::new(), 4);
        recording.push(&Bytes::from_static(b"too long"));
        assert!(recording.finish("r").is_none());
    }
}
