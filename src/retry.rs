//! The only place that decides whether a failed attempt may be tried again.
//!
//! Order safety comes first: a request that may create an order (POST, PATCH, or a
//! method the route marks unsafe) is replayed only when it provably never reached
//! a backend (the connection could not be opened), or when it carries an
//! idempotency key and the route allows key-based retries. Then the route's
//! conditions, its attempt limit and deadline, and the pool's retry budget.

use std::time::Duration;

use http::{HeaderMap, Method};

use pingora::{Error, ErrorSource};

use crate::config::{IdempotencyConfig, RetryConfig};
use crate::outcome::{Outcome, BODY_TOO_LARGE, INTERCEPTED_STATUS, RETRYABLE_STATUS};

/// The least time a retry needs to have a chance, when no per-try timeout is set.
const MIN_TRY: Duration = Duration::from_millis(50);

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Failure {
    /// The connection could not be opened: nothing reached the backend.
    #[strum(serialize = "connect_failure")]
    ConnectFailed,
    /// The connection closed or reset after the request was (perhaps) sent.
    Reset,
    /// The backend did not answer in time.
    Timeout,
    /// The backend answered with this status.
    Status(u16),
}

impl Failure {
    /// Lower-case name for metrics: `connect_failure`, `reset`, `timeout` or `status`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the request may have reached the backend.
    fn reached_backend(self) -> bool {
        self != Failure::ConnectFailed
    }
}

/// Why a failure is not retried: a bounded label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Stop {
    /// The route does not retry on this failure.
    NotListed,
    /// The request may have created an order and carries no usable idempotency key.
    UnsafeToReplay,
    /// The route's attempts are used up.
    Attempts,
    /// Not enough of the route's deadline is left for another try.
    Deadline,
    /// The pool's retry budget is exhausted.
    Budget,
}

impl Stop {
    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the pool's backup pool may take the request instead: the pool
    /// is out of tries for it (attempts or budget), not the request out of
    /// time or safety.
    pub fn tries_backup(self) -> bool {
        matches!(self, Stop::Attempts | Stop::Budget)
    }
}

/// What decides whether a request may be sent again after it reached a backend.
#[derive(Debug, Clone, Copy)]
pub struct Replay<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The request's headers (an idempotency key among them).
    pub headers: &'a HeaderMap,
    /// The route's retry policy.
    pub policy: &'a RetryConfig,
    /// The route's idempotency at the edge, when on.
    pub idempotency: Option<&'a IdempotencyConfig>,
    /// Whether the body outgrew pingora's retry buffer: it cannot be sent again.
    pub body_truncated: bool,
}

/// Whether this request may be sent again after it reached a backend: the one
/// place this is decided. A body larger than the retry buffer cannot be; an
/// order only with an idempotency key the route trusts; and a keyed order on
/// a route with idempotency at the edge only when its backends dedupe keys
/// themselves (otherwise it follows the rule of unkeyed orders, whatever the
/// retry section says).
pub fn replay_safe(replay: &Replay<'_>) -> bool {
    !replay.body_truncated
        && retry_rules_allow(replay.method, replay.headers, replay.policy)
        && replay
            .idempotency
            .is_none_or(|edge| edge.backend_dedupes || !edge.keys(replay.method))
}

/// The retry section's rule: a method that creates no orders, or an order
/// with a non-blank idempotency key when `retry_with_idempotency_key` is on.
fn retry_rules_allow(method: &Method, headers: &HeaderMap, policy: &RetryConfig) -> bool {
    let creates_orders = policy.unsafe_methods.contains(method) || !method.is_idempotent();
    if !creates_orders {
        return true;
    }
    policy.retry_with_idempotency_key
        && headers
            .get(&policy.idempotency_key_header)
            .is_some_and(|key| !key.as_bytes().iter().all(u8::is_ascii_whitespace))
}

/// One failed attempt, as the policy needs to see it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// What went wrong.
    pub failure: Failure,
    /// Tries made so far, this one included.
    pub tries: u32,
    /// Whether the request may be replayed after reaching a backend ([`replay_safe`]).
    pub replay_safe: bool,
    /// Time left before the route's deadline.
    pub remaining: Duration,
    /// The backend's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

/// Decides whether to try again (the pool's budget is checked by the caller, last,
/// so a refused retry costs no budget). `Ok` carries the backoff to wait first.
pub fn decide(policy: &RetryConfig, attempt: &Attempt) -> Result<Duration, Stop> {
    let listed = match attempt.failure {
        Failure::ConnectFailed => policy.on.connect_failure,
        Failure::Reset => policy.on.reset,
        Failure::Timeout => policy.on.timeout,
        Failure::Status(code) => policy.on.statuses.contains(&code),
    };
    if !listed {
        return Err(Stop::NotListed);
    }
    if attempt.failure.reached_backend() && !attempt.replay_safe {
        return Err(Stop::UnsafeToReplay);
    }
    if attempt.tries >= policy.attempts {
        return Err(Stop::Attempts);
    }
    let wait = backoff(policy, attempt.tries).max(attempt.retry_after.unwrap_or_default());
    let needed = wait.saturating_add(policy.per_try_timeout.unwrap_or(MIN_TRY));
    if attempt.remaining < needed {
        return Err(Stop::Deadline);
    }
    Ok(wait)
}

/// How long one attempt may take: the route's per-try timeout, at most the
/// pool's request timeout and what is left of the route's deadline.
pub fn attempt_timeout(
    per_try: Option<Duration>,
    request_timeout: Duration,
    remaining: Duration,
) -> Duration {
    per_try
        .unwrap_or(request_timeout)
        .min(request_timeout)
        .min(remaining)
}

/// A backend's `Retry-After`, in seconds (the HTTP-date form is not honoured).
pub fn backend_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    seconds.trim().parse().ok().map(Duration::from_secs)
}

/// What a failure while proxying (after the connection to a backend opened)
/// means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// A retryable status, already decided in the response phase.
    RetryDecided,
    /// A backend's 5xx answered with the page instead: not retried.
    Intercepted,
    /// The client's side failed: nothing to hold against the backend.
    Client(Outcome),
    /// The attempt failed at the backend: the request may have reached it.
    Backend(Outcome, Failure),
}

/// Classifies an error pingora reports while proxying.
pub fn classify(error: &Error) -> ProxyError {
    if error.etype() == &RETRYABLE_STATUS {
        return ProxyError::RetryDecided;
    }
    if error.etype() == &INTERCEPTED_STATUS {
        return ProxyError::Intercepted;
    }
    if error.etype() == &BODY_TOO_LARGE || error.esource() == &ErrorSource::Downstream {
        return ProxyError::Client(Outcome::from_error(error));
    }
    match Outcome::from_error(error) {
        Outcome::UpstreamTimeout => ProxyError::Backend(Outcome::UpstreamTimeout, Failure::Timeout),
        Outcome::UpstreamError => ProxyError::Backend(Outcome::UpstreamError, Failure::Reset),
        _ => ProxyError::Backend(Outcome::UpstreamReset, Failure::Reset),
    }
}

/// Exponential backoff with full jitter: a random wait up to `backoff_base × 2^(n-1)`,
/// capped at `backoff_max`, before retry `n`.
fn backoff(policy: &RetryConfig, retry: u32) -> Duration {
    let doubling = 2u32.saturating_pow(retry.saturating_sub(1));
    let ceiling = policy
        .backoff_base
        .saturating_mul(doubling)
        .min(policy.backoff_max);
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn policy(retry: &str) -> RetryConfig {
        let text = format!(
            "[[pools]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n[routes.retry]\n{retry}\n"
        );
        Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .routes[0]
            .retry
            .clone()
    }

    fn attempt(failure: Failure, replay_safe: bool) -> Attempt {
        Attempt {
            failure,
            tries: 1,
            replay_safe,
            remaining: Duration::from_secs(10),
            retry_after: None,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn orders_are_replayed_only_with_an_idempotency_key() {
        let default = policy("");
        let none = HeaderMap::new();
        let keyed = headers(&[("idempotency-key", "k-1")]);
        assert!(retry_rules_allow(&Method::GET, &none, &default));
        assert!(retry_rules_allow(&Method::PUT, &none, &default));
        assert!(!retry_rules_allow(&Method::POST, &none, &default));
        assert!(!retry_rules_allow(&Method::PATCH, &none, &default));
        assert!(!retry_rules_allow(
            &Method::POST,
            &headers(&[("idempotency-key", " ")]),
            &default
        ));
        assert!(retry_rules_allow(&Method::POST, &keyed, &default));

        let strict = policy("retry_with_idempotency_key = false\nunsafe_methods = [\"PUT\"]");
        assert!(!retry_rules_allow(&Method::POST, &keyed, &strict));
        assert!(!retry_rules_allow(&Method::PUT, &none, &strict));

        let custom = policy("idempotency_key_header = \"x-order-key\"");
        assert!(!retry_rules_allow(&Method::POST, &keyed, &custom));
        assert!(retry_rules_allow(
            &Method::POST,
            &headers(&[("x-order-key", "k")]),
            &custom
        ));
    }

    #[test]
    fn a_keyed_order_on_an_edge_route_is_replayed_only_when_backends_dedupe() {
        let edge = |dedupes: bool| {
            let text = format!(
                "[[pools]]\nname = \"p\"\nbackends = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nname = \"r\"\npool = \"p\"\n[routes.idempotency]\nscope = \"global\"\nbackend_dedupes = {dedupes}\n"
            );
            let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e:?}"));
            let route = &config.routes[0];
            let edge = route.idempotency.clone().expect("idempotency on");
            (route.retry.clone(), edge)
        };
        let keyed = headers(&[("idempotency-key", "k-1")]);
        let replay = |method: &Method, policy: &RetryConfig, edge: Option<&IdempotencyConfig>| {
            replay_safe(&Replay {
                method,
                headers: &keyed,
                policy,
                idempotency: edge,
                body_truncated: false,
            })
        };
        let (policy, trusting) = edge(true);
        let (_, guarding) = edge(false);
        assert!(replay(&Method::POST, &policy, None));
        assert!(replay(&Method::POST, &policy, Some(&trusting)));
        assert!(!replay(&Method::POST, &policy, Some(&guarding)));
        assert!(replay(&Method::GET, &policy, Some(&guarding)));
        assert!(!replay_safe(&Replay {
            method: &Method::GET,
            headers: &keyed,
            policy: &policy,
            idempotency: None,
            body_truncated: true,
        }));
    }

    #[test]
    fn an_unkeyed_order_is_retried_only_when_it_never_reached_a_backend() {
        let policy = policy("");
        assert!(decide(&policy, &attempt(Failure::ConnectFailed, false)).is_ok());
        for failure in [Failure::Reset, Failure::Timeout, Failure::Status(503)] {
            assert_eq!(
                decide(&policy, &attempt(failure, false)),
                Err(Stop::UnsafeToReplay)
            );
            assert!(decide(&policy, &attempt(failure, true)).is_ok());
        }
    }

    #[test]
    fn only_listed_conditions_are_retried() {
        let policy = policy("on = [\"connect_failure\", \"503\"]");
        assert!(decide(&policy, &attempt(Failure::Status(503), true)).is_ok());
        assert_eq!(
            decide(&policy, &attempt(Failure::Status(500), true)),
            Err(Stop::NotListed)
        );
        assert_eq!(
            decide(&policy, &attempt(Failure::Reset, true)),
            Err(Stop::NotListed)
        );
        assert_eq!(
            decide(&policy, &attempt(Failure::Timeout, true)),
            Err(Stop::NotListed)
        );
    }

    #[test]
    fn attempts_and_deadline_bound_retries() {
        let policy = policy("attempts = 3\nper_try_timeout = \"1s\"\nbackoff_base = \"10ms\"\nbackoff_max = \"40ms\"");
        let mut third = attempt(Failure::Reset, true);
        third.tries = 3;
        assert_eq!(decide(&policy, &third), Err(Stop::Attempts));
        let mut late = attempt(Failure::Reset, true);
        late.remaining = Duration::from_millis(900);
        assert_eq!(
            decide(&policy, &late),
            Err(Stop::Deadline),
            "a 1s try cannot finish in 900ms"
        );
        let mut told_to_wait = attempt(Failure::Status(503), true);
        told_to_wait.retry_after = Some(Duration::from_secs(30));
        assert_eq!(
            decide(&policy, &told_to_wait),
            Err(Stop::Deadline),
            "Retry-After is honoured"
        );
        told_to_wait.retry_after = Some(Duration::from_secs(2));
        assert_eq!(decide(&policy, &told_to_wait), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn backoff_doubles_with_full_jitter_up_to_the_cap() {
        let policy = policy("backoff_base = \"10ms\"\nbackoff_max = \"40ms\"");
        for retry in 1..6 {
            let ceiling = Duration::from_millis((10u64 << (retry - 1)).min(40));
            let waits: Vec<Duration> = (0..500).map(|_| backoff(&policy, retry)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "retry {retry}");
            assert!(
                waits.iter().any(|w| *w > ceiling / 2),
                "retry {retry}: jitter reaches up"
            );
            assert!(
                waits.iter().any(|w| *w < ceiling / 2),
                "retry {retry}: jitter reaches down"
            );
        }
    }

    #[test]
    fn proxy_errors_are_classified_by_where_they_came_from() {
        use pingora::ErrorType;
        let up = |kind: ErrorType| Error::explain(kind, "test").into_up();
        assert_eq!(
            classify(&Error::explain(RETRYABLE_STATUS, "503")),
            ProxyError::RetryDecided
        );
        assert_eq!(
            classify(&Error::explain(INTERCEPTED_STATUS, "500")),
            ProxyError::Intercepted
        );
        assert_eq!(
            classify(&Error::explain(ErrorType::ConnectionClosed, "gone").into_down()),
            ProxyError::Client(Outcome::ClientGone)
        );
        assert_eq!(
            classify(&up(ErrorType::ReadTimedout)),
            ProxyError::Backend(Outcome::UpstreamTimeout, Failure::Timeout)
        );
        assert_eq!(
            classify(&up(ErrorType::ConnectionClosed)),
            ProxyError::Backend(Outcome::UpstreamReset, Failure::Reset)
        );
        assert_eq!(
            classify(&up(ErrorType::InvalidHTTPHeader)),
            ProxyError::Backend(Outcome::UpstreamError, Failure::Reset)
        );
    }

    #[test]
    fn an_attempt_gets_the_tightest_of_its_timeouts() {
        let s = Duration::from_secs;
        assert_eq!(attempt_timeout(None, s(10), s(30)), s(10));
        assert_eq!(attempt_timeout(Some(s(2)), s(10), s(30)), s(2));
        assert_eq!(attempt_timeout(Some(s(20)), s(10), s(30)), s(10));
        assert_eq!(attempt_timeout(Some(s(2)), s(10), s(1)), s(1));
        let mut answer = HeaderMap::new();
        answer.insert(http::header::RETRY_AFTER, "3".parse().expect("value"));
        assert_eq!(backend_retry_after(&answer), Some(s(3)));
    }
}
