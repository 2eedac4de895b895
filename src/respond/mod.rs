//! The one place that turns a failure into a response: every answer ordergate
//! makes itself (404, 502, 503, 504, 500, ...) is an [`Outcome`] rendered here, as
//! JSON or HTML, with `X-Request-Id` and, where waiting helps, `Retry-After`.

use bytes::Bytes;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

/// Every way a request can end other than with a backend's own answer.
/// The `reason` of each is a bounded label for logs and metrics.
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
    /// The client's request was malformed.
    BadRequest,
    /// The client went away; nothing can be sent.
    ClientGone,
    /// A bug or an unexpected state in ordergate.
    Internal,
}

impl Outcome {
    /// The HTTP status shown to the shopper (499 for a client that left: never sent).
    pub fn status(self) -> u16 {
        match self {
            Outcome::NoRoute => 404,
            Outcome::NoHealthyBackend => 503,
            Outcome::ConnectFailed | Outcome::UpstreamReset | Outcome::UpstreamError => 502,
            Outcome::UpstreamTimeout => 504,
            Outcome::BadRequest => 400,
            Outcome::ClientGone => 499,
            Outcome::Internal => 500,
        }
    }

    /// A short, stable name: the `error` field of pages and the reason label.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::NoRoute => "no_route",
            Outcome::NoHealthyBackend => "no_healthy_backend",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::UpstreamError => "upstream_error",
            Outcome::BadRequest => "bad_request",
            Outcome::ClientGone => "client_gone",
            Outcome::Internal => "internal",
        }
    }

    /// Seconds a shopper should wait before trying again, where waiting helps.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Outcome::NoHealthyBackend => Some(5),
            Outcome::ConnectFailed
            | Outcome::UpstreamTimeout
            | Outcome::UpstreamReset
            | Outcome::UpstreamError => Some(2),
            _ => None,
        }
    }

    /// What the shopper reads. Failures after the request reached a backend say
    /// that an order may exist, so nobody blindly orders twice.
    fn message(self) -> &'static str {
        match self {
            Outcome::NoRoute => "We could not find what you asked for.",
            Outcome::NoHealthyBackend | Outcome::ConnectFailed => {
                "Our order service is very busy right now. Nothing was ordered; please try again in a few seconds."
            }
            Outcome::UpstreamTimeout | Outcome::UpstreamReset | Outcome::UpstreamError => {
                "Our order service did not answer in time. If you were placing an order, please check your orders before trying again."
            }
            Outcome::BadRequest => "Your browser sent a request we could not understand.",
            Outcome::ClientGone | Outcome::Internal => {
                "Something went wrong on our side. Please try again in a few seconds."
            }
        }
    }

    /// Classifies a pingora error by where it came from and what happened.
    pub fn from_error(error: &Error) -> Outcome {
        use ErrorType::*;
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
}

/// Renders the page for an outcome: JSON unless the client prefers HTML.
pub fn render(
    outcome: Outcome,
    request_id: &str,
    request: &HeaderMap,
) -> Result<(ResponseHeader, Bytes)> {
    let wants_html = request
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let (content_type, body) = if wants_html {
        ("text/html; charset=utf-8", html(outcome, request_id))
    } else {
        ("application/json", json(outcome, request_id))
    };
    let mut header = ResponseHeader::build(outcome.status(), Some(5))?;
    header.insert_header(http::header::CONTENT_TYPE, content_type)?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    header.insert_header("x-request-id", request_id)?;
    if let Some(seconds) = outcome.retry_after() {
        header.insert_header(http::header::RETRY_AFTER, seconds)?;
    }
    Ok((header, Bytes::from(body)))
}

/// Writes the page for an outcome to the client.
pub async fn send(session: &mut Session, outcome: Outcome, request_id: &str) -> Result<()> {
    let (header, body) = render(outcome, request_id, &session.req_header().headers)?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

fn json(outcome: Outcome, request_id: &str) -> String {
    serde_json::json!({
        "error": outcome.reason(),
        "status": outcome.status(),
        "message": outcome.message(),
        "request_id": request_id,
        "retry_after": outcome.retry_after(),
    })
    .to_string()
}

fn html(outcome: Outcome, request_id: &str) -> String {
    let retry = outcome
        .retry_after()
        .map(|s| format!("<p>Please try again in {s} seconds.</p>"))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{status}</title></head>\n\
         <body><h1>Sorry</h1><p>{message}</p>{retry}<p><small>Request id: {id}</small></p></body></html>\n",
        status = outcome.status(),
        message = outcome.message(),
        id = escape_html(request_id),
    )
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(http::header::ACCEPT, http::HeaderValue::from_static(accept));
        map
    }

    #[test]
    fn json_page_carries_status_reason_id_and_retry_after() {
        let (header, body) =
            render(Outcome::NoHealthyBackend, "abc", &HeaderMap::new()).expect("page");
        assert_eq!(header.status.as_u16(), 503);
        assert_eq!(header.headers["retry-after"], "5");
        assert_eq!(header.headers["x-request-id"], "abc");
        assert_eq!(
            header.headers["content-length"],
            body.len().to_string().as_str()
        );
        let page: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(page["error"], "no_healthy_backend");
        assert_eq!(page["request_id"], "abc");
    }

    #[test]
    fn html_page_when_the_browser_asks_for_it() {
        let (header, body) =
            render(Outcome::NoRoute, "<id>", &headers("text/html,*/*")).expect("page");
        assert_eq!(header.status.as_u16(), 404);
        assert!(header.headers.get("retry-after").is_none());
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(
            text.contains("&lt;id&gt;") && !text.contains("<id>"),
            "{text}"
        );
    }

    #[test]
    fn classifies_errors_by_source_and_kind() {
        let upstream = |t| Error::new(t).into_up();
        let downstream = |t| Error::new(t).into_down();
        assert_eq!(
            Outcome::from_error(&Error::new(ErrorType::ConnectRefused)),
            Outcome::ConnectFailed
        );
        assert_eq!(
            Outcome::from_error(&upstream(ErrorType::ReadTimedout)),
            Outcome::UpstreamTimeout
        );
        assert_eq!(
            Outcome::from_error(&upstream(ErrorType::ConnectionClosed)),
            Outcome::UpstreamReset
        );
        assert_eq!(
            Outcome::from_error(&upstream(ErrorType::InvalidHTTPHeader)),
            Outcome::UpstreamError
        );
        assert_eq!(
            Outcome::from_error(&downstream(ErrorType::ConnectionClosed)),
            Outcome::ClientGone
        );
        assert_eq!(
            Outcome::from_error(&downstream(ErrorType::InvalidHTTPHeader)),
            Outcome::BadRequest
        );
        assert_eq!(
            Outcome::from_error(&Error::new(ErrorType::InternalError)),
            Outcome::Internal
        );
    }
}
