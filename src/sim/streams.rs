//! The simulated order server's streams: `GET /__sim/events` (an order's
//! status as server-sent events) and `GET /__sim/ws` (a WebSocket that
//! echoes every message), for testing what a proxy does with long-lived,
//! mostly quiet connections. Neither is affected by the listener's mode.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::body::SimBody;
use super::websocket;

/// Events sent when the query does not say.
const DEFAULT_EVENTS: usize = 3;
/// Gap between events when the query does not say.
const DEFAULT_GAP: Duration = Duration::from_secs(1);

/// `GET /__sim/events?count=N&gap_ms=M`: `count` events (`data: 1` ...), the
/// first at once, then one every `gap_ms`, sent chunked as
/// `text/event-stream`; the answer ends after the last.
pub(crate) fn events(request: &Request<Incoming>) -> Response<SimBody> {
    let query = request.uri().query().unwrap_or_default();
    let count = query_number(query, "count").map_or(DEFAULT_EVENTS, |n| n as usize);
    let gap = query_number(query, "gap_ms").map_or(DEFAULT_GAP, Duration::from_millis);
    let events: VecDeque<Bytes> = (1..=count.min(10_000))
        .map(|n| Bytes::from(format!("id: {n}\ndata: {n}\n\n")))
        .collect();
    let mut response = Response::new(SimBody::events(events, gap));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// `GET /__sim/ws`: accepts a WebSocket upgrade and echoes each text or
/// binary message, answers pings, and closes when the client does.
pub(crate) fn websocket_echo(mut request: Request<Incoming>) -> Response<SimBody> {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(websocket::accept_key);
    let upgrade = request
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(accept) = key.filter(|_| upgrade) else {
        let mut response = Response::new(SimBody::full("a WebSocket upgrade is expected\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(upgraded) => echo(TokioIo::new(upgraded)).await,
            Err(e) => log::debug!("sim: WebSocket upgrade failed: {e}"),
        }
    });
    let mut response = Response::new(SimBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}

async fn echo<S>(mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = match websocket::read(&mut stream).await {
            Ok(frame) => frame,
            Err(e) => {
                log::debug!("sim: WebSocket read ended: {e}");
                return;
            }
        };
        let (opcode, last) = match frame.opcode {
            websocket::PING => (websocket::PONG, false),
            websocket::CLOSE => (websocket::CLOSE, true),
            websocket::PONG => continue,
            other => (other, false),
        };
        let reply = websocket::encode(opcode, &frame.payload, None);
        if stream.write_all(&reply).await.is_err() || last {
            return;
        }
    }
}

fn query_number(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}
