//! A shopper's HTTP/1 connection between requests. pingora reads each request
//! head itself; this thin layer around pingora's proxy app bounds how long the
//! head may take (`server.header_timeout`, so slow-header clients cannot hold
//! connections), how long a keep-alive connection may idle
//! (`server.keepalive_timeout`), and counts the connections it closes for
//! either. What a shopper may send (`server.max_request_header_bytes`) is
//! checked by [`head_too_large`] once the head is parsed.
//!
//! Between two requests on a keep-alive connection it waits for the next
//! request itself ([`next_request`]), after pingora's request future, its
//! session and its head buffer are freed: an idle shopper then costs the
//! connection's socket buffers and a small task, not a whole request state
//! machine (about 18 KiB less per idle connection). What arrived is handed to
//! pingora as the start of the next request (the way pingora hands on a
//! pipelined request), so pingora parses it without reading again, and the
//! header deadline runs from that first byte. Where pingora already holds a
//! pipelined request, it goes back to pingora at once, and the header
//! deadline on that reused connection is `keepalive_timeout + header_timeout`.
//!
//! Both waits are on every request's path, so they cost little: the header
//! deadline's timer starts only when a head is not already there, and the
//! mark that the head arrived is a thread-local flag around each poll of
//! pingora's future.

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use http::HeaderMap;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::config::ServerConfig;
use crate::telemetry::ConnectionsClosed;

/// The limits of one config snapshot on a shopper's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes.
    pub max_request_header_bytes: usize,
    /// Time to receive a whole request head.
    pub header_timeout: Duration,
    /// Idle time allowed between requests; zero turns keep-alive off.
    pub keepalive_timeout: Duration,
    /// How request paths are normalised.
    pub path: crate::config::PathPolicy,
}

impl From<&ServerConfig> for Limits {
    fn from(server: &ServerConfig) -> Limits {
        Limits {
            max_request_header_bytes: server.max_request_header_bytes,
            header_timeout: server.header_timeout,
            keepalive_timeout: server.keepalive_timeout,
            path: server.path,
        }
    }
}

impl Limits {
    /// The keep-alive setting for pingora: whole seconds (at least 1), or
    /// `None` for keep-alive off.
    fn keepalive_seconds(&self) -> Option<u64> {
        (!self.keepalive_timeout.is_zero())
            .then(|| self.keepalive_timeout.as_millis().div_ceil(1000) as u64)
    }
}

/// The size of a request head as the shopper sent it (request line and
/// headers with their separators), give or take whitespace.
pub fn head_len(request: &RequestHeader) -> usize {
    let line = request.method.as_str().len() + request.raw_path().len() + 12;
    request.headers.iter().fold(line, |total, (name, value)| {
        total + name.as_str().len() + value.len() + 4
    })
}

/// Whether a request head is over the limit: it gets the 431 page and the
/// connection closes.
pub fn head_too_large(request: &RequestHeader, limits: &Limits) -> bool {
    head_len(request) > limits.max_request_header_bytes
}

/// Whether the request declares a body (`Content-Length`) larger than `max`:
/// it gets the 413 page before any backend is contacted. A chunked body is
/// counted as it streams (the proxy's `request_body_filter`).
pub fn declared_body_too_large(headers: &HeaderMap, max: u64) -> bool {
    declared_length(headers).is_some_and(|len| len > max)
}

/// The body length a request declares in `Content-Length`, when it is one
/// valid number (pingora refuses a request whose `Content-Length` is not).
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

thread_local! {
    /// Set by [`head_received`] while pingora's request future is polled.
    static HEAD_RECEIVED: Cell<bool> = const { Cell::new(false) };
}

/// Marks that the current request's head arrived (called from the proxy's
/// `new_ctx`, which pingora runs right after it parsed the head). A
/// [`Connections`] task clears the mark before each poll of pingora's future
/// and reads it after (polls do not nest on a thread, so the mark is its
/// own); elsewhere (HTTP/2 streams) it is never read.
pub fn head_received() {
    HEAD_RECEIVED.set(true);
}

/// In the user context of a reused connection: [`next_request`] saw the first
/// byte of its next request, so the header deadline runs from now.
struct FirstByteSeen;

/// The buffer pingora starts a request head in (its `INIT_HEADER_BUF_SIZE`).
const HEAD_BUFFER: usize = 4096;

/// Waits, on a connection pingora would reuse, for the next request, up to
/// `keepalive`: `None` (close) when it does not come, the client closes, or
/// the server shuts down. Otherwise the connection goes back to pingora with
/// what arrived as the start of its next request. A pipelined request pingora
/// already read goes back at once.
async fn next_request(
    reusable: ReusedHttpStream,
    keepalive: Duration,
    shutdown: &ShutdownWatch,
    closed: &ConnectionsClosed,
) -> Option<ReusedHttpStream> {
    let (mut stream, settings) = reusable.consume();
    let Some(mut settings) = settings else {
        return Some(ReusedHttpStream::new(stream, None));
    };
    // The previous request's context goes first: the check below then reads
    // `user_context: None` rather than formatting it.
    let previous = settings.take_user_context();
    if has_pipelined_request(&settings) {
        if let Some(previous) = previous {
            settings.set_user_context(previous);
        }
        return Some(ReusedHttpStream::new(stream, Some(settings)));
    }
    let mut shutdown = shutdown.clone();
    if *shutdown.borrow_and_update() {
        return None;
    }
    // One byte on the stack: while idle, the connection holds no head buffer.
    let mut first = [0u8; 1];
    let read = tokio::select! {
        biased;
        read = stream.read(&mut first) => read,
        () = tokio::time::sleep(keepalive) => {
            closed.keepalive_timeout.inc();
            return None;
        }
        _ = shutdown.changed() => return None,
    };
    if !matches!(read, Ok(1)) {
        // Closed by the client (or broken) while idle.
        return None;
    }
    let mut head = BytesMut::with_capacity(HEAD_BUFFER);
    head.put_u8(first[0]);
    // The rest of what came with that byte is in the stream's read buffer;
    // more is left for pingora to wait for.
    let rest = stream.read_buf(&mut head);
    tokio::pin!(rest);
    poll_fn(|cx| {
        let _ = rest.as_mut().poll(cx);
        Poll::Ready(())
    })
    .await;
    settings.set_user_context(Box::new(FirstByteSeen));
    settings.set_pipelined_prefix(head);
    Some(ReusedHttpStream::new(stream, Some(settings)))
}

/// Whether pingora already read (part of) a pipelined request for the
/// connection's next session. pingora 0.9 keeps that prefix private; its
/// `Debug` output is the one public view of it. It is read as it is written,
/// piece by piece, without copying, and the formatting stops at the first
/// piece of that field's value (this runs on every keep-alive request). When
/// the output does not have the expected shape (another pingora or std), the
/// answer is "yes": the connection then goes straight back to pingora, which
/// is always correct, only without the lean idle wait.
fn has_pipelined_request(settings: &HttpPersistentSettings) -> bool {
    use std::fmt::Write as _;

    /// Where the writer is in `pipelined_prefix: <value>`.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Seen {
        Nothing,
        Name,
        Colon,
        Value(bool),
    }
    struct Watch(Seen);
    impl std::fmt::Write for Watch {
        fn write_str(&mut self, piece: &str) -> std::fmt::Result {
            self.0 = match (self.0, piece) {
                (_, "pipelined_prefix") => Seen::Name,
                (Seen::Name, ": ") => Seen::Colon,
                (Seen::Colon, value) => Seen::Value(value != "None"),
                _ => Seen::Nothing,
            };
            if matches!(self.0, Seen::Value(_)) {
                // Decided: the rest of the output is not needed.
                return Err(std::fmt::Error);
            }
            Ok(())
        }
    }
    let mut watch = Watch(Seen::Nothing);
    let _ = write!(watch, "{settings:?}");
    match watch.0 {
        Seen::Value(pipelined) => pipelined,
        _ => true,
    }
}

/// pingora's proxy app with ordergate's connection limits around it.
pub struct Connections<A> {
    app: Arc<A>,
    limits: Box<dyn Fn() -> Limits + Send + Sync>,
    closed: ConnectionsClosed,
}

impl<A> Connections<A> {
    /// Wraps `app`; `limits` gives the limits of the current config snapshot,
    /// read at the start of every request so a reload applies to the next one.
    pub fn new(
        app: A,
        limits: impl Fn() -> Limits + Send + Sync + 'static,
        closed: ConnectionsClosed,
    ) -> Connections<A> {
        Connections {
            app: Arc::new(app),
            limits: Box::new(limits),
            closed,
        }
    }
}

#[async_trait]
impl<A> HttpServerApp for Connections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    // Written out rather than `async fn`: pingora's own future (which holds
    // the session) is created here, and the future returned holds only it and
    // the timer. An `async fn` would also keep room for the session in its
    // own state, on every idle keep-alive connection.
    fn process_new_http<'life0, 'life1, 'async_trait>(
        self: &'life0 Arc<Self>,
        mut session: ServerSession,
        shutdown: &'life1 ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = Option<ReusedHttpStream>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if session.is_http2() {
            // h2 streams arrive with whole heads; the h2 layer has its own limits.
            return self.app.process_new_http(session, shutdown);
        }
        let limits = (self.limits)();
        // pingora hands the previous request's context to the next one on a
        // reused connection (see `Proxy::persist_connection_context`), or
        // `next_request` its marker that the first byte is already here.
        let (reused, first_byte_seen) = match session.take_connection_user_context() {
            Some(previous) => {
                let seen = previous.is::<FirstByteSeen>();
                session.set_connection_user_context(Some(previous));
                (true, seen)
            }
            None => (false, false),
        };
        if !*shutdown.borrow() {
            session.set_keepalive(limits.keepalive_seconds());
        }
        // A client that pipelines gets every answer, in order (RFC 9112
        // §9.3.2), rather than a close after the first.
        session.set_pipelining_enabled(true);
        let idle = if reused && !first_byte_seen {
            limits.keepalive_timeout
        } else {
            Duration::ZERO
        };
        let mut serve = self.app.process_new_http(session, shutdown);
        let closed = &self.closed;
        Box::pin(async move {
            // The deadline's timer starts (with its clock read) only if the
            // first poll finds no head yet; a reused connection's head is
            // usually here already.
            let mut started = None;
            let mut deadline = None;
            let mut head_seen = false;
            let served = poll_fn(|cx| {
                HEAD_RECEIVED.set(false);
                let polled = serve.as_mut().poll(cx);
                head_seen |= HEAD_RECEIVED.get();
                if let Poll::Ready(reusable) = polled {
                    return Poll::Ready(Some(reusable));
                }
                if head_seen {
                    return Poll::Pending;
                }
                let timer = deadline.get_or_insert_with(|| {
                    let now = *started.insert(Instant::now());
                    Box::pin(tokio::time::sleep_until(now + idle + limits.header_timeout))
                });
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await;
            let Some(reusable) = served else {
                closed.header_timeout.inc();
                return None;
            };
            if reusable.is_none()
                && reused
                && !head_seen
                && started.is_some_and(|s: Instant| s.elapsed() >= limits.keepalive_timeout)
            {
                closed.keepalive_timeout.inc();
            }
            // pingora's request future (with its session and head buffer)
            // goes before the idle wait.
            drop(serve);
            next_request(reusable?, limits.keepalive_timeout, shutdown, closed).await
        })
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.app.h2_options()
    }

    async fn http_cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pipelined_request_pingora_holds_is_seen_through_its_debug_output() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = pingora::protocols::l4::stream::Stream::from(client);
        let session = ServerSession::new_http1(Box::new(stream));
        let mut settings = HttpPersistentSettings::for_session(&session);
        settings.set_user_context(Box::new(FirstByteSeen));
        assert!(!has_pipelined_request(&settings));
        settings.set_pipelined_prefix(bytes::BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
        assert!(has_pipelined_request(&settings));
        // As `next_request` asks: with the user context taken out first.
        let _ = settings.take_user_context();
        assert!(has_pipelined_request(&settings));
        let fresh = HttpPersistentSettings::for_session(&session);
        assert!(!has_pipelined_request(&fresh));
    }

    fn limits() -> Limits {
        Limits {
            max_request_header_bytes: 200,
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_millis(1500),
            path: crate::config::PathPolicy::default(),
        }
    }

    #[test]
    fn keepalive_rounds_up_to_whole_seconds_and_zero_is_off() {
        assert_eq!(limits().keepalive_seconds(), Some(2));
        let off = Limits {
            keepalive_timeout: Duration::ZERO,
            ..limits()
        };
        assert_eq!(off.keepalive_seconds(), None);
    }

    #[test]
    fn head_size_counts_line_and_headers() {
        let mut request = RequestHeader::build("GET", b"/a", None).expect("request");
        let small = head_len(&request);
        assert!((14..40).contains(&small), "{small}");
        assert!(!head_too_large(&request, &limits()));
        request
            .insert_header("x-big", "v".repeat(300))
            .expect("header");
        assert!(head_len(&request) >= small + 300);
        assert!(head_too_large(&request, &limits()));
    }

    #[test]
    fn declared_body_over_the_limit() {
        let mut headers = HeaderMap::new();
        assert!(!declared_body_too_large(&headers, 10));
        headers.insert(http::header::CONTENT_LENGTH, "11".parse().expect("value"));
        assert!(declared_body_too_large(&headers, 10));
        assert!(!declared_body_too_large(&headers, 11));
        headers.insert(http::header::CONTENT_LENGTH, "-1".parse().expect("value"));
        assert!(!declared_body_too_large(&headers, 10), "pingora rejects it");
    }
}
