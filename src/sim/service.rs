//! Request handling of a simulated backend: applies the listener's mode
//! (faults, capacity, latency, forced status) to the order-service endpoints,
//! and serves the `/__sim/*` control endpoints, which no mode affects.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::body::{Hold, SimBody};
use super::control::{Abort, ConnControl};
use super::fleet::{Fleet, Listener};
use super::mode::{Fault, ModePatch};
use super::orders::{self, Outcome};

/// Largest request body accepted, in bytes.
const MAX_BODY: usize = 1024 * 1024;
/// Prefix of the control endpoints.
pub(crate) const SIM_PREFIX: &str = "/__sim/";

/// Header naming the listen address that answered.
const X_SIM_BACKEND: HeaderName = HeaderName::from_static("x-sim-backend");
/// Header echoing the `traceparent` the backend received (tests of tracing
/// see which span a proxy named as the parent of the attempt that answered).
const X_SIM_TRACEPARENT: HeaderName = HeaderName::from_static("x-sim-traceparent");
/// Header marking the answer to a repeated idempotency key.
const IDEMPOTENT_REPLAY: HeaderName = HeaderName::from_static("idempotent-replay");
/// Request header carrying the idempotency key of an order.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Handles one request received by `listener`.
pub(crate) async fn handle(
    request: Request<Incoming>,
    listener: Arc<Listener>,
    fleet: Arc<Fleet>,
    control: Arc<ConnControl>,
) -> Result<Response<SimBody>, Infallible> {
    let path = request.uri().path();
    if path == "/__sim/events" {
        return Ok(super::streams::events(&request));
    }
    if path == "/__sim/ws" {
        return Ok(super::streams::websocket_echo(request));
    }
    let response = if request.uri().path().starts_with(SIM_PREFIX) {
        control_endpoint(request, &listener, &fleet)
            .await
            .into_response(&listener, false, Hold::default())
    } else {
        order_service(request, &listener, &fleet, &control).await
    };
    Ok(response)
}

/// An order-service request, subject to the listener's mode.
async fn order_service(
    request: Request<Incoming>,
    listener: &Listener,
    fleet: &Fleet,
    control: &ConnControl,
) -> Response<SimBody> {
    listener.count_request();
    let in_flight = fleet.start_request();
    let (mode, limit) = listener.mode_and_limit();

    match mode.fault {
        Fault::Refuse => return abort(control, Abort::Close).await,
        Fault::Reset => return abort(control, Abort::Reset).await,
        _ => {}
    }
    // Wait for a free slot like a saturated server; the permit stays with the
    // request (and its body) even if the capacity changes meanwhile.
    let permit = match limit {
        Some(semaphore) => semaphore.acquire_owned().await.ok(),
        None => None,
    };
    let (parts, body) = request.into_parts();
    let traceparent = parts.headers.get("traceparent").cloned();
    let body = read_body(body).await;
    if mode.fault == Fault::Hang {
        // hyper drops this future when the client goes away.
        return std::future::pending().await;
    }
    let delay = mode.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut reply = match (mode.status, body) {
        (Some(status), _) => forced_status(status),
        (None, Ok(body)) => route(&parts, &body, listener, fleet),
        (None, Err(reply)) => reply,
    };
    if let Some(traceparent) = traceparent {
        reply = reply.header(X_SIM_TRACEPARENT, traceparent);
    }
    if mode.fault == Fault::ResetAfterBody {
        // The effect (e.g. a new order) has happened; the answer is lost.
        return abort(control, Abort::Reset).await;
    }
    let hold = Hold::new(in_flight, permit);
    reply.into_response(listener, mode.fault == Fault::SlowBody, hold)
}

/// Has the connection broken and never answers.
async fn abort(control: &ConnControl, how: Abort) -> Response<SimBody> {
    control.abort(how);
    std::future::pending().await
}

/// Dispatches an order-service request by path and method.
fn route(parts: &Parts, body: &Bytes, listener: &Listener, fleet: &Fleet) -> Reply {
    let path = parts.uri.path();
    let method = &parts.method;
    if path == "/health" {
        return only(method, &Method::GET, || {
            Reply::new(StatusCode::OK, json!({"status": "ok"}))
        });
    }
    if path == "/api/orders" {
        return only(method, &Method::POST, || {
            create_order(&parts.headers, body, listener, fleet)
        });
    }
    if let Some(id) = path.strip_prefix("/api/orders/") {
        if orders::valid_id(id) {
            return only(method, &Method::GET, || match fleet.book().get(id) {
                Some(order) => Reply::new(StatusCode::OK, order.clone()),
                None => Reply::error(StatusCode::NOT_FOUND, "order not found"),
            });
        }
    }
    if let Some(id) = path.strip_prefix("/api/products/") {
        if orders::valid_id(id) {
            return only(method, &Method::GET, || {
                Reply::new(StatusCode::OK, orders::product(id))
            });
        }
    }
    Reply::not_found()
}

/// `POST /api/orders`.
fn create_order(headers: &HeaderMap, body: &Bytes, listener: &Listener, fleet: &Fleet) -> Reply {
    let item: Value = match serde_json::from_slice(body) {
        Ok(item @ Value::Object(_)) => item,
        Ok(_) => return Reply::error(StatusCode::BAD_REQUEST, "order must be a JSON object"),
        Err(e) => return Reply::error(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")),
    };
    let key = headers
        .get(&IDEMPOTENCY_KEY)
        .filter(|_| !listener.mode().ignore_idempotency)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let (outcome, order) = fleet.book().create(item, listener.name(), key.as_deref());
    let location = order
        .get("order_id")
        .and_then(Value::as_str)
        .and_then(|id| HeaderValue::try_from(format!("/api/orders/{id}")).ok());
    // A guest checkout starts a session, as shops do: the answer to a
    // shopper without one sets it.
    let has_session = crate::forward::cookies(headers, "session").next().is_some();
    let session = order
        .get("order_id")
        .and_then(Value::as_str)
        .and_then(|id| HeaderValue::try_from(format!("session=guest-{id}; Path=/; HttpOnly")).ok());
    let mut reply = match outcome {
        Outcome::Created => Reply::new(StatusCode::CREATED, order),
        Outcome::Replayed => Reply::new(StatusCode::OK, order)
            .header(IDEMPOTENT_REPLAY, HeaderValue::from_static("true")),
    };
    if let Some(location) = location {
        reply = reply.header(LOCATION, location);
    }
    if let (false, Some(session)) = (has_session, session) {
        reply = reply.header(SET_COOKIE, session);
    }
    reply
}

/// The answer to every request while a status is forced.
fn forced_status(status: u16) -> Reply {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Reply::new(code, json!({"error": "forced status", "status": status}))
}

/// A `/__sim/*` control endpoint; never affected by the mode.
async fn control_endpoint(request: Request<Incoming>, listener: &Listener, fleet: &Fleet) -> Reply {
    let (parts, body) = request.into_parts();
    let method = &parts.method;
    match parts
        .uri
        .path()
        .strip_prefix(SIM_PREFIX)
        .unwrap_or_default()
    {
        "echo" => match read_body(body).await {
            Ok(body) => Reply::new(StatusCode::OK, echo(&parts, &body)),
            Err(reply) => reply,
        },
        "stats" => only(method, &Method::GET, || {
            Reply::new(StatusCode::OK, fleet.stats())
        }),
        "mode" if method == Method::GET => Reply::new(StatusCode::OK, listener.mode().to_json()),
        "mode" if method == Method::PUT => {
            let body = match read_body(body).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            match ModePatch::from_json(&body) {
                Ok(patch) => Reply::new(StatusCode::OK, fleet.patch_mode(listener, &patch)),
                Err(message) => Reply::error(StatusCode::BAD_REQUEST, &message),
            }
        }
        "mode" => Reply::method_not_allowed("GET, PUT"),
        "reset" => only(method, &Method::POST, || {
            fleet.reset();
            Reply::new(StatusCode::OK, json!({"status": "reset"}))
        }),
        _ => Reply::not_found(),
    }
}

/// `/__sim/echo`: what the backend received, for checking what a proxy forwarded.
fn echo(parts: &Parts, body: &Bytes) -> Value {
    let mut headers = Map::new();
    for name in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    })
}

/// Reads a whole request body, up to [`MAX_BODY`] bytes.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
        )),
        Err(e) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read request body: {e}"),
        )),
    }
}

/// Answers with `answer` if the method is `allowed`, with 405 otherwise.
fn only(method: &Method, allowed: &Method, answer: impl FnOnce() -> Reply) -> Reply {
    if method == allowed {
        answer()
    } else {
        Reply::method_not_allowed(allowed.as_str())
    }
}

/// A JSON answer before the common headers are added.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    json: Value,
    headers: HeaderMap,
}

impl Reply {
    fn new(status: StatusCode, json: Value) -> Self {
        Reply {
            status,
            json,
            headers: HeaderMap::new(),
        }
    }

    fn error(status: StatusCode, message: &str) -> Self {
        Reply::new(status, json!({"error": message}))
    }

    fn not_found() -> Self {
        Reply::error(StatusCode::NOT_FOUND, "not found")
    }

    fn method_not_allowed(allow: &str) -> Self {
        let reply = Reply::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        match HeaderValue::from_str(allow) {
            Ok(allow) => reply.header(ALLOW, allow),
            Err(_) => reply,
        }
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The response, with `Content-Type` and `x-sim-backend`; hyper adds
    /// `Content-Length` from the body's exact size.
    fn into_response(self, listener: &Listener, slow: bool, hold: Hold) -> Response<SimBody> {
        let bytes = Bytes::from(self.json.to_string());
        let body = if slow {
            SimBody::slow(bytes)
        } else {
            SimBody::full(bytes)
        };
        let mut response = Response::new(body.holding(hold));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.extend(self.headers);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(backend) = HeaderValue::from_str(listener.name()) {
            headers.insert(X_SIM_BACKEND, backend);
        }
        response
    }
}
