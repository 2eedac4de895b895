//! The one place that turns a failure into a response: every answer ordergate
//! makes itself (404, 429, 502, 503, 504, 500, ...) is an [`Outcome`] rendered
//! here from the [`Pages`] — HTML or JSON by the client's `Accept`, in the
//! language of its `Accept-Language` — with `X-Request-Id`, `Cache-Control:
//! no-store`, `x-ordergate-page` and, where waiting helps, `Retry-After`.
//!
//! The pages are templates and per-language texts under `conf/pages/` (layout:
//! `conf/pages/README.md`), checked and bound once when loaded ([`Pages::load`]),
//! or the same files built into the binary ([`Pages::builtin`]). Nothing
//! internal (error text, backend address) ever reaches a page.

mod negotiate;
mod pages;
mod template;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};
use serde::Serialize;

pub use pages::Pages;

use crate::store::StoredAnswer;

/// Every way a request can end other than with a backend's own answer.
/// The `reason` of each is a bounded label for logs and metrics, and the name
/// of its page kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The client's request was malformed.
    BadRequest,
    /// The client went away; nothing can be sent (this outcome has no page).
    ClientGone,
    /// A bug or an unexpected state in ordergate.
    Internal,
}

/// The page kinds: the [`Outcome::reason`] of every outcome that has a page
/// (all but `client_gone`). Each language file has one table per kind.
pub const PAGE_KINDS: [&str; 23] = [
    "no_route",
    "no_healthy_backend",
    "connect_failed",
    "upstream_timeout",
    "upstream_reset",
    "upstream_error",
    "upstream_status",
    "rate_limited",
    "queue_full",
    "queue_timeout",
    "shed",
    "header_too_large",
    "body_too_large",
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "idempotency_in_progress",
    "idempotency_key_reused",
    "order_outcome_unknown",
    "already_processed",
    "maintenance",
    "waiting_room",
    "bad_request",
    "internal",
];

impl Outcome {
    /// The HTTP status shown to the shopper (499 for a client that left: never sent).
    pub fn status(self) -> u16 {
        match self {
            Outcome::NoRoute => 404,
            Outcome::NoHealthyBackend
            | Outcome::Maintenance
            | Outcome::WaitingRoom
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
    /// `x-ordergate-page` header and the reason label of logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::NoRoute => "no_route",
            Outcome::NoHealthyBackend => "no_healthy_backend",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamStatus(_) => "upstream_status",
            Outcome::RateLimited => "rate_limited",
            Outcome::QueueFull => "queue_full",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::Shed => "shed",
            Outcome::HeaderTooLarge => "header_too_large",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::IdempotencyKeyMissing => "idempotency_key_missing",
            Outcome::IdempotencyKeyInvalid => "idempotency_key_invalid",
            Outcome::IdempotencyInProgress => "idempotency_in_progress",
            Outcome::IdempotencyKeyReused => "idempotency_key_reused",
            Outcome::OrderOutcomeUnknown => "order_outcome_unknown",
            Outcome::AlreadyProcessed => "already_processed",
            Outcome::Maintenance => "maintenance",
            Outcome::WaitingRoom => "waiting_room",
            Outcome::BadRequest => "bad_request",
            Outcome::ClientGone => "client_gone",
            Outcome::Internal => "internal",
        }
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

    /// The index of this outcome's page kind in [`PAGE_KINDS`]; `None` for
    /// `ClientGone`.
    fn page_kind(self) -> Option<usize> {
        PAGE_KINDS.iter().position(|k| *k == self.reason())
    }
}

/// The error that cuts a request body grown past the route's `max_body_bytes`.
pub const BODY_TOO_LARGE: ErrorType = ErrorType::new("RequestBodyTooLarge");

/// Whether the shopper's connection stays open for the next request after
/// ordergate's own answer (RFC 9112 §9.6): only when the request was read to
/// its end, so the next bytes are the next request, and nothing else closes it
/// (`forced_close`: the process is shutting down, or pingora drops the
/// connection after a failure in its proxy loop). Otherwise the answer says
/// `Connection: close` and the connection closes after it.
pub fn keeps_connection(outcome: Outcome, body_read: bool, forced_close: bool) -> bool {
    body_read && !forced_close && !outcome.closes_connection()
}

/// A request body up to this size that is still unread is read (and dropped)
/// before a page, so the connection can carry the next request.
const DRAIN_BEFORE_PAGE: u64 = 64 * 1024;

/// The longest ordergate reads a request body it will not use: before a page
/// (to keep the connection) or after a closing page, so that closing with
/// unread bytes does not reset the connection under the page (a lingering
/// close, as nginx's `lingering_timeout`).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What an answer of ordergate's own sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Body bytes written.
    pub bytes: usize,
    /// Whether the connection stays open for the next request.
    pub keep_alive: bool,
}

/// What varies per response.
#[derive(Debug, Clone, Copy, Default)]
pub struct PageContext<'a> {
    /// The request id, printed on the page and sent as `X-Request-Id`.
    pub request_id: &'a str,
    /// Overrides the outcome's default Retry-After (e.g. from the shedding
    /// estimate or a backend's Retry-After), in seconds. 0 is sent as 1, so a
    /// waiting page never reloads in a tight loop.
    pub retry_after: Option<u32>,
    /// Estimated wait in seconds shown on the waiting page (defaults to the
    /// Retry-After).
    pub wait_seconds: Option<u32>,
    /// Where the shopper sees their orders, linked from pages that say an
    /// order may exist (a route's `idempotency.orders_url`).
    pub link: Option<&'a str>,
    /// The operator's own words for this page (a maintenance window's message).
    pub notice: Option<&'a str>,
}

impl<'a> PageContext<'a> {
    /// A context with only the request id: the outcome's default Retry-After.
    pub fn new(request_id: &'a str) -> PageContext<'a> {
        PageContext {
            request_id,
            retry_after: None,
            wait_seconds: None,
            link: None,
            notice: None,
        }
    }
}

/// The stable JSON shape of a page (documented in `conf/pages/README.md`).
#[derive(Serialize)]
struct JsonPage<'a> {
    error: JsonError<'a>,
    retry_after: Option<u32>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    orders_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<&'a str>,
}

/// The waiting room's JSON for apps (documented in `conf/pages/README.md`).
#[derive(Serialize)]
struct JsonRoom<'a> {
    state: &'static str,
    room: &'a str,
    position: Option<u64>,
    ahead: Option<u64>,
    estimated_wait_s: Option<u32>,
    refresh_s: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    opens_in_s: Option<u32>,
    title: &'a str,
    message: &'a str,
    retry_after: Option<u32>,
    request_id: &'a str,
}

/// What the waiting room's page shows, beside the request id.
#[derive(Debug, Clone, Copy)]
pub struct RoomPage<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The room's name.
    pub room: &'a str,
    /// Position, estimate, refresh.
    pub view: crate::room::View,
    /// A new ticket to set (`Set-Cookie` value).
    pub set_cookie: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonError<'a> {
    code: &'a str,
    status: u16,
    title: &'a str,
    message: &'a str,
    advice: &'a str,
}

/// Renders the page for an outcome as the client wants it: HTML when its
/// `Accept` prefers `text/html` over `application/json`, JSON otherwise; in the
/// best language of its `Accept-Language` (default `en`). Fails only for
/// `ClientGone`, which has no page.
pub fn render(
    pages: &Pages,
    outcome: Outcome,
    request: &HeaderMap,
    context: &PageContext<'_>,
) -> Result<(ResponseHeader, Bytes)> {
    render_with(pages, outcome, request, context, None)
}

/// Renders the waiting room's page (`waiting_room`, 503): the place in line
/// and the estimate in HTML, or the room's JSON shape for apps; it refreshes
/// after `view.refresh` seconds (also its Retry-After) and sets the ticket.
pub fn render_room(
    pages: &Pages,
    request: &HeaderMap,
    room: &RoomPage<'_>,
) -> Result<(ResponseHeader, Bytes)> {
    let context = PageContext {
        retry_after: Some(room.view.refresh),
        wait_seconds: room.view.estimated_wait,
        ..PageContext::new(room.request_id)
    };
    let (mut header, body) =
        render_with(pages, Outcome::WaitingRoom, request, &context, Some(room))?;
    if let Some(cookie) = room.set_cookie {
        header.append_header(http::header::SET_COOKIE, cookie)?;
    }
    Ok((header, body))
}

fn render_with(
    pages: &Pages,
    outcome: Outcome,
    request: &HeaderMap,
    context: &PageContext<'_>,
    room: Option<&RoomPage<'_>>,
) -> Result<(ResponseHeader, Bytes)> {
    let Some(kind) = outcome.page_kind() else {
        return Error::e_explain(
            ErrorType::InternalError,
            "client_gone has no page: the client left",
        );
    };
    let language = pages.language_for(request);
    let Some(page) = language.kind(kind) else {
        return Error::e_explain(ErrorType::InternalError, "page kind missing");
    };
    let status = outcome.status();
    let retry_after = context
        .retry_after
        .or(outcome.retry_after())
        .map(|s| s.max(1));
    let values = template::Values {
        status,
        request_id: context.request_id,
        retry_after,
        wait_seconds: context.wait_seconds.or(retry_after),
        link: context.link,
        notice: context.notice,
        position: room.and_then(|r| r.view.position),
        ahead: room.and_then(|r| r.view.ahead),
        opens_in: room.and_then(|r| r.view.opens_in),
    };

    let (content_type, body) = if negotiate::prefers_html(request) {
        let mut html = String::with_capacity(4096);
        template::render(&page.html, &values, &mut html);
        ("text/html; charset=utf-8", html.into_bytes())
    } else if let Some(room) = room {
        let json = JsonRoom {
            state: "waiting",
            room: room.room,
            position: room.view.position,
            ahead: room.view.ahead,
            estimated_wait_s: room.view.estimated_wait,
            refresh_s: room.view.refresh,
            opens_in_s: room.view.opens_in,
            title: &page.title,
            message: &page.message,
            retry_after,
            request_id: context.request_id,
        };
        let body = serde_json::to_vec(&json)
            .or_else(|e| Error::e_because(ErrorType::InternalError, "encoding a page", e))?;
        ("application/json; charset=utf-8", body)
    } else {
        let json = JsonPage {
            error: JsonError {
                code: outcome.reason(),
                status,
                title: &page.title,
                message: &page.message,
                advice: &page.advice,
            },
            retry_after,
            request_id: context.request_id,
            orders_url: context.link,
            notice: context.notice,
        };
        let body = serde_json::to_vec(&json)
            .or_else(|e| Error::e_because(ErrorType::InternalError, "encoding a page", e))?;
        ("application/json; charset=utf-8", body)
    };

    let mut header = ResponseHeader::build(status, Some(10))?;
    header.insert_header(http::header::CONTENT_TYPE, content_type)?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    header.insert_header(http::header::CONTENT_LANGUAGE, language.tag.as_str())?;
    header.insert_header(http::header::VARY, "Accept, Accept-Language")?;
    header.insert_header("x-ordergate-page", outcome.reason())?;
    // The caller sanitizes request ids; one that is still no valid header
    // value is left out of the header rather than losing the whole page.
    if let Ok(id) = http::HeaderValue::from_str(context.request_id) {
        header.insert_header("x-request-id", id)?;
    }
    if let Some(seconds) = retry_after {
        header.insert_header(http::header::RETRY_AFTER, seconds)?;
    }
    Ok((header, Bytes::from(body)))
}

/// Writes the page for an outcome to the client, and decides whether the
/// connection stays open after it ([`keeps_connection`]); when it does not, the
/// page says `Connection: close`. An HTTP/2 page ends only its own stream.
pub async fn send(
    session: &mut Session,
    pages: &Pages,
    outcome: Outcome,
    context: &PageContext<'_>,
    forced_close: bool,
) -> Result<Sent> {
    let (header, body) = render(pages, outcome, &session.req_header().headers, context)?;
    send_rendered(session, outcome, header, body, forced_close).await
}

/// Writes the waiting room's page ([`render_room`]); the connection follows
/// the rule of every page.
pub async fn send_room(
    session: &mut Session,
    pages: &Pages,
    room: &RoomPage<'_>,
    forced_close: bool,
) -> Result<Sent> {
    let (header, body) = render_room(pages, &session.req_header().headers, room)?;
    send_rendered(session, Outcome::WaitingRoom, header, body, forced_close).await
}

async fn send_rendered(
    session: &mut Session,
    outcome: Outcome,
    header: ResponseHeader,
    body: Bytes,
    forced_close: bool,
) -> Result<Sent> {
    let mut body_read = session.as_mut().is_body_done();
    if !body_read && !forced_close && !outcome.closes_connection() && small_body(session) {
        body_read = drain(session).await;
    }
    let keep = keeps_connection(outcome, body_read, forced_close);
    if !keep {
        session.set_keepalive(None);
    }
    let bytes = body.len();
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    if !keep && !session.as_mut().is_body_done() {
        drain(session).await;
    }
    // pingora may have turned keep-alive off itself: ask it.
    let keep_alive = session.as_ref().is_http2() || session.get_keepalive().is_some();
    Ok(Sent { bytes, keep_alive })
}

/// How a kept answer is sent again: an idempotency replay, or a stale copy.
#[derive(Debug, Clone, Copy)]
pub enum Kept {
    /// The first request's answer to a repeated idempotency key: marked
    /// `idempotency-replayed: true`, with the first request's id in
    /// `X-Original-Request-Id`.
    Replay,
    /// The last good answer to a read, served because the backends failed:
    /// `Age` (seconds since it was kept), `x-ordergate-stale: true` and
    /// `Warning: 110 - "Response is Stale"`.
    Stale {
        /// Seconds since the copy was kept.
        age: u64,
    },
}

/// Sends a kept answer byte for byte (status, headers, body), marked as
/// [`Kept`] says, with this request's own `X-Request-Id`. The connection
/// follows the same rule as a page.
pub async fn send_kept(
    session: &mut Session,
    answer: &StoredAnswer,
    kept: Kept,
    request_id: &str,
    forced_close: bool,
) -> Result<Sent> {
    let mut header = ResponseHeader::build(answer.status, Some(answer.headers.len() + 5))?;
    for (name, value) in &answer.headers {
        let value = http::HeaderValue::from_maybe_shared(value.clone())
            .or_err(ErrorType::InternalError, "a kept header value")?;
        header.append_header(name.clone(), value)?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, answer.body.len())?;
    match kept {
        Kept::Replay => {
            header.insert_header("idempotency-replayed", "true")?;
            if let Ok(id) = http::HeaderValue::from_str(&answer.request_id) {
                header.insert_header("x-original-request-id", id)?;
            }
        }
        Kept::Stale { age } => {
            header.insert_header(http::header::AGE, age)?;
            header.insert_header("x-ordergate-stale", "true")?;
            header.insert_header(http::header::WARNING, "110 - \"Response is Stale\"")?;
        }
    }
    if let Ok(id) = http::HeaderValue::from_str(request_id) {
        header.insert_header("x-request-id", id)?;
    }
    let body_read = session.as_mut().is_body_done();
    if !body_read || forced_close {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(answer.body.clone()), true)
        .await?;
    let keep_alive = session.as_ref().is_http2() || session.get_keepalive().is_some();
    Ok(Sent {
        bytes: answer.body.len(),
        keep_alive,
    })
}

/// Whether the request declares a body small enough to read before a page.
fn small_body(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .is_some_and(|len| len <= DRAIN_BEFORE_PAGE)
}

/// Reads and drops the rest of the request body, for at most [`DRAIN_TIMEOUT`];
/// whether it was read to its end.
async fn drain(session: &mut Session) -> bool {
    matches!(
        tokio::time::timeout(DRAIN_TIMEOUT, session.as_mut().drain_request_body()).await,
        Ok(Ok(()))
    )
}
