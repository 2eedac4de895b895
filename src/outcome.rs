//! The closed set of outcomes: every way a request can end other than with a
//! backend's own answer or a kept one. `respond` renders each as a page,
//! `telemetry` uses [`Outcome::reason`] as its bounded label, `retry` and
//! `stale` decide on it. Adding a way to fail means adding a variant here: the
//! page kinds and the zero-valued series follow from the list of variants.

use std::sync::LazyLock;

use pingora::{Error, ErrorSource, ErrorType};
use strum::IntoEnumIterator;

/// Every way a request can end other than with a backend's own answer.
/// The `reason` of each is a bounded label for logs and metrics, and the name
/// of its page kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumIter, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// No route matches the request's host, path and method.
    NoRoute,
    /// The route's pool has no backend that can take the request.
    NoHealthyBackend,
    /// The TCP connection to the backend failed (refused, timed out, unreachable).
    ConnectFailed,
    /// The backend took longer than the pool's request timeout to answer.
    UpstreamTimeout,
    /// The backend closed or reset the connection before its answer was complete.
    UpstreamReset,
    /// The backend sent something that is not a valid HTTP answer.
    UpstreamError,
    /// The backend answered with this 5xx status and the route replaces its
    /// body (a stack trace, say) with a page. The status is kept; anything
    /// outside 500..=599 is shown as 502.
    UpstreamStatus(u16),
    /// The client sent too many requests; nothing reached a backend.
    RateLimited,
    /// The waiting queue in front of the pool is full; nothing reached a backend.
    QueueFull,
    /// The request waited in the queue longer than allowed; nothing reached a backend.
    QueueTimeout,
    /// Predictive shedding: the expected wait is longer than the shopper's
    /// timeout, so the request was not queued; nothing reached a backend.
    Shed,
    /// The request head (request line and headers) is larger than
    /// `server.max_request_header_bytes`; nothing reached a backend.
    HeaderTooLarge,
    /// The request body is larger than the route's `max_body_bytes` (declared,
    /// or grown past it while streaming); no backend got it whole.
    BodyTooLarge,
    /// A keyed method without an idempotency key, on a route that requires one.
    IdempotencyKeyMissing,
    /// An idempotency key that is not 1-255 printable ASCII characters (or
    /// two keys on one request).
    IdempotencyKeyInvalid,
    /// The first request with this key is still in flight after
    /// `wait_for_first`: nothing forwarded.
    IdempotencyInProgress,
    /// The key was used before for a different request: nothing forwarded.
    IdempotencyKeyReused,
    /// The first request with this key reached a backend and its answer was
    /// lost: an order may exist; nothing forwarded.
    OrderOutcomeUnknown,
    /// The first request with this key was processed, but its answer was too
    /// large to keep for replays: nothing forwarded.
    AlreadyProcessed,
    /// A maintenance window is open for the route (or everything); nothing
    /// reached a backend.
    Maintenance,
    /// The route's waiting room holds the shopper in line (position and
    /// estimated wait in [`RoomPage`]); nothing reached a backend.
    WaitingRoom,
    /// The waiting room's line holds `max_waiting` shoppers: no place was
    /// given; nothing reached a backend.
    LineFull,
    /// The client's request was malformed.
    BadRequest,
    /// The client went away; nothing can be sent (this outcome has no page).
    ClientGone,
    /// A bug or an unexpected state in ordergate.
    Internal,
}

impl Outcome {
    /// The HTTP status shown to the shopper (499 for a client that left: never sent).
    pub fn status(self) -> u16 {
        match self {
            Outcome::NoRoute => 404,
            Outcome::NoHealthyBackend
            | Outcome::Maintenance
            | Outcome::WaitingRoom
            | Outcome::LineFull
            | Outcome::QueueFull
            | Outcome::QueueTimeout
            | Outcome::Shed => 503,
            Outcome::ConnectFailed | Outcome::UpstreamReset | Outcome::UpstreamError => 502,
            Outcome::UpstreamTimeout => 504,
            Outcome::UpstreamStatus(code) if (500..=599).contains(&code) => code,
            Outcome::UpstreamStatus(_) => 502,
            Outcome::RateLimited => 429,
            Outcome::HeaderTooLarge => 431,
            Outcome::BodyTooLarge => 413,
            Outcome::IdempotencyKeyMissing | Outcome::IdempotencyKeyInvalid => 400,
            Outcome::IdempotencyInProgress
            | Outcome::OrderOutcomeUnknown
            | Outcome::AlreadyProcessed => 409,
            Outcome::IdempotencyKeyReused => 422,
            Outcome::BadRequest => 400,
            Outcome::ClientGone => 499,
            Outcome::Internal => 500,
        }
    }

    /// A short, stable name: the page kind, the `code` of JSON pages, the
    /// `x-ordergate-page` header and the reason label of logs and metrics
    /// (the variant's name in snake case).
    pub fn reason(self) -> &'static str {
        self.into()
    }

    /// Seconds a shopper should wait before trying again, where waiting helps
    /// (the default; [`PageContext::retry_after`] overrides it).
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Outcome::RateLimited | Outcome::IdempotencyInProgress => Some(1),
            Outcome::NoHealthyBackend
            | Outcome::Maintenance
            | Outcome::QueueFull
            | Outcome::QueueTimeout
            | Outcome::Shed => Some(5),
            Outcome::WaitingRoom => Some(10),
            Outcome::LineFull => Some(60),
            Outcome::ConnectFailed
            | Outcome::UpstreamTimeout
            | Outcome::UpstreamReset
            | Outcome::UpstreamError => Some(2),
            Outcome::UpstreamStatus(502..=504) => Some(2),
            _ => None,
        }
    }

    /// Whether a kept copy of a read may stand in for this outcome's page
    /// (`stale-if-error`): the backends failed, were unreachable, or the
    /// request was shed.
    pub fn backends_failed(self) -> bool {
        matches!(
            self,
            Outcome::NoHealthyBackend
                | Outcome::ConnectFailed
                | Outcome::UpstreamTimeout
                | Outcome::UpstreamReset
                | Outcome::UpstreamError
                | Outcome::UpstreamStatus(_)
                | Outcome::QueueFull
                | Outcome::QueueTimeout
                | Outcome::Shed
        )
    }

    /// Whether the shopper's connection must close after this answer, whatever
    /// else holds: the request's framing or size is not to be trusted, so the
    /// rest of what the client sent cannot be read as a next request.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Outcome::HeaderTooLarge | Outcome::BodyTooLarge | Outcome::BadRequest
        )
    }

    /// Classifies a pingora error by where it came from and what happened.
    pub fn from_error(error: &Error) -> Outcome {
        use ErrorType::*;
        if error.etype() == &BODY_TOO_LARGE {
            return Outcome::BodyTooLarge;
        }
        match (error.esource(), error.etype()) {
            (_, HTTPStatus(code)) if (400..500).contains(code) => Outcome::BadRequest,
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => {
                Outcome::ClientGone
            }
            (ErrorSource::Downstream, _) => Outcome::BadRequest,
            (
                _,
                ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | BindError
                | SocketError | TLSHandshakeFailure | TLSHandshakeTimedout,
            ) => Outcome::ConnectFailed,
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => Outcome::UpstreamTimeout,
            (ErrorSource::Upstream, ReadError | WriteError | ConnectionClosed) => {
                Outcome::UpstreamReset
            }
            (ErrorSource::Upstream, _) => Outcome::UpstreamError,
            _ => Outcome::Internal,
        }
    }

    /// Whether the shopper is answered with one of ordergate's pages: every
    /// outcome but a shopper who left.
    pub fn has_page(self) -> bool {
        self != Outcome::ClientGone
    }

    /// The index of this outcome's page kind in [`PAGE_KINDS`]; `None` for
    /// `ClientGone`.
    pub fn page_kind(self) -> Option<usize> {
        PAGE_KINDS.iter().position(|k| *k == self.reason())
    }
}

/// The error that turns a backend's retryable status (e.g. 503) into another try.
pub const RETRYABLE_STATUS: ErrorType = ErrorType::new("RetryableUpstreamStatus");
/// The error that replaces a backend's 5xx answer with ordergate's page.
pub const INTERCEPTED_STATUS: ErrorType = ErrorType::new("InterceptedUpstreamStatus");

/// The error that cuts a request body grown past the route's `max_body_bytes`.
pub const BODY_TOO_LARGE: ErrorType = ErrorType::new("RequestBodyTooLarge");

/// The page kinds: the [`Outcome::reason`] of every outcome that has a page
/// (all but `client_gone`), in declaration order. Each language file has one
/// table per kind.
pub static PAGE_KINDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    Outcome::iter()
        .filter(|outcome| outcome.has_page())
        .map(Outcome::reason)
        .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_but_a_gone_client_has_a_page_kind_of_its_own() {
        assert_eq!(PAGE_KINDS.len(), Outcome::iter().count() - 1);
        assert_eq!(PAGE_KINDS[0], "no_route");
        assert!(PAGE_KINDS.contains(&"upstream_status"));
        assert_eq!(Outcome::ClientGone.page_kind(), None);
        assert_eq!(Outcome::UpstreamStatus(503).reason(), "upstream_status");
        let mut unique = PAGE_KINDS.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), PAGE_KINDS.len());
    }
}
