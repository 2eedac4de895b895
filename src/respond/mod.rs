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

#[cfg(test)]
mod tests;

use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::ErrorType;
use serde::Serialize;

pub use crate::kept::{KeptKind, StoredAnswer};
pub use crate::outcome::{Outcome, BODY_TOO_LARGE, PAGE_KINDS};
pub use crate::pages::Pages;
use crate::pages::{negotiate, template};

/// Whether the shopper's connection stays open for the next request after
/// ordergate's own answer (RFC 9112 §9.6): only when the request was read to
/// its end, so the next bytes are the next request, and nothing else closes it
/// (`forced_close`: the process is shutting down, or pingora drops the
/// connection after a failure in its proxy loop). Otherwise the answer says
/// `Connection: close` and the connection closes after it.
pub fn keeps_connection(outcome: Outcome, body_read: bool, forced_close: bool) -> bool {
    stays_open(outcome.closes_connection(), body_read, forced_close)
}

/// [`keeps_connection`] for any answer of ordergate's own: a page
/// (`answer_closes` from its outcome) or a kept answer (never closes by itself).
fn stays_open(answer_closes: bool, body_read: bool, forced_close: bool) -> bool {
    body_read && !forced_close && !answer_closes
}

/// Whether the connection closes after ordergate's answer whatever the
/// request was: the process is shutting down (its listeners are closing), or
/// pingora's proxy loop started (`upstream_peer` ran) — pingora 0.9 drops the
/// shopper's connection after any failure in that loop, whatever
/// `fail_to_proxy` says, so the answer must say `Connection: close`.
pub fn forced_close(shutting_down: bool, proxying: bool) -> bool {
    shutting_down || proxying
}

/// Whole seconds for a Retry-After header: rounded up, at least 1, at most an hour.
pub fn retry_after_seconds(wait: std::time::Duration) -> u32 {
    (wait.as_millis().div_ceil(1000)).clamp(1, 3600) as u32
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
    /// The W3C trace id (32 lower-case hex digits, ordergate's own or a
    /// validated client's), in the JSON only; `None` when tracing is off.
    pub trace_id: Option<&'a str>,
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
            trace_id: None,
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
    trace_id: Option<&'a str>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

/// What the waiting room's page shows, beside the request id.
#[derive(Debug, Clone, Copy)]
pub struct RoomPage<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The trace id, when tracing is on (JSON only).
    pub trace_id: Option<&'a str>,
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
        trace_id: room.trace_id,
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
            trace_id: context.trace_id,
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
            trace_id: context.trace_id,
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
    let closes = outcome.closes_connection();
    send_rendered(session, closes, header, body, forced_close).await
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
    let closes = Outcome::WaitingRoom.closes_connection();
    send_rendered(session, closes, header, body, forced_close).await
}

/// Writes an answer of ordergate's own, deciding the connection's fate: a
/// small unread request body is read first so the connection can carry the
/// next request; when it cannot, the answer says `Connection: close`.
async fn send_rendered(
    session: &mut Session,
    answer_closes: bool,
    header: ResponseHeader,
    body: Bytes,
    forced_close: bool,
) -> Result<Sent> {
    let mut body_read = session.as_mut().is_body_done();
    if !body_read && !forced_close && !answer_closes && small_body(session) {
        body_read = drain(session).await;
    }
    let keep = stays_open(answer_closes, body_read, forced_close);
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

impl Kept {
    /// Which kind of kept answer this is.
    pub fn kind(&self) -> KeptKind {
        match self {
            Kept::Replay => KeptKind::Replay,
            Kept::Stale { .. } => KeptKind::Stale,
        }
    }
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
    send_rendered(session, false, header, answer.body.clone(), forced_close).await
}

/// Sends a redirect of ordergate's own (`rewrite::https_redirect`): no
/// body, this request's `X-Request-Id`; the connection follows the rule of
/// every answer of ordergate's.
pub async fn send_redirect(
    session: &mut Session,
    status: u16,
    location: &str,
    request_id: &str,
    forced_close: bool,
) -> Result<Sent> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header(http::header::LOCATION, location)?;
    header.insert_header(http::header::CONTENT_LENGTH, 0)?;
    if let Ok(id) = http::HeaderValue::from_str(request_id) {
        header.insert_header("x-request-id", id)?;
    }
    send_rendered(session, false, header, Bytes::new(), forced_close).await
}

/// Whether the request declares a body small enough to read before a page.
fn small_body(session: &Session) -> bool {
    crate::connection::declared_length(&session.req_header().headers)
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
