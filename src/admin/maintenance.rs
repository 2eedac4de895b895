//! `/maintenance` on the admin API: open a window for a route or for
//! everything (`POST` with `{"route": NAME, "until": RFC 3339, "message": text}`,
//! the route omitted for everything), end one (`DELETE /maintenance?route=NAME`,
//! no route for everything), list the open ones (`GET`).

use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, reply};
use crate::config::parse_time;
use crate::maintenance::Window;
use crate::state::State;

/// Largest request body the endpoint reads.
const MAX_BODY: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenRequest {
    route: Option<String>,
    until: Option<String>,
    message: Option<String>,
}

/// `GET /maintenance`: the windows opened here, and the configured ones.
pub(super) fn list(state: &State) -> Response<Full<Bytes>> {
    reply(StatusCode::OK, json!({ "windows": windows(state) }))
}

/// The open windows, for `/maintenance` and `/status`.
pub(super) fn windows(state: &State) -> Vec<Value> {
    let now = SystemTime::now();
    let snapshot = state.snapshot();
    let live = state
        .maintenance
        .list(now)
        .into_iter()
        .map(|(route, window)| describe(route.as_deref(), "admin", &window));
    let configured = snapshot
        .routes
        .iter()
        .filter_map(|route| {
            Some((
                Some(route.config.name.as_str()),
                route.config.maintenance.as_ref()?,
            ))
        })
        .chain(snapshot.maintenance.as_ref().map(|m| (None, m)))
        .filter_map(|(route, config)| Some((route, config.window()?)))
        .filter(|(_, window)| window.is_open(now))
        .map(|(route, window)| describe(route, "config", &window));
    live.chain(configured).collect()
}

fn rfc3339(time: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn describe(route: Option<&str>, source: &str, window: &Window) -> Value {
    json!({
        "route": route,
        "source": source,
        "until": window.until.map(rfc3339),
        "message": window.message,
    })
}

/// `POST /maintenance`.
pub(super) async fn open(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
    };
    let open: OpenRequest = match serde_json::from_slice(&body) {
        Ok(open) => open,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"route\": NAME, \"until\": RFC 3339 time, \"message\": text}} (route and message optional): {e}"),
            )
        }
    };
    if let Some(route) = &open.route {
        if !state
            .snapshot()
            .routes
            .iter()
            .any(|r| &r.config.name == route)
        {
            return error(StatusCode::NOT_FOUND, format!("no route {route:?}"));
        }
    }
    let until = match open.until.as_deref().map(parse_time).transpose() {
        Ok(until) => until,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    if until.is_some_and(|until| until <= SystemTime::now()) {
        return error(StatusCode::BAD_REQUEST, "until is in the past");
    }
    let window = Window {
        until,
        message: open.message,
    };
    let scope = open.route.as_deref().unwrap_or("every route");
    log::warn!(
        "maintenance opened from the admin API for {scope} until {}",
        window
            .until
            .map_or_else(|| "it is deleted".to_string(), rfc3339)
    );
    let described = describe(open.route.as_deref(), "admin", &window);
    state.maintenance.open(open.route, window);
    reply(StatusCode::OK, described)
}

/// `DELETE /maintenance?route=NAME`.
pub(super) fn close(state: &State, query: &str) -> Response<Full<Bytes>> {
    let route = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "route")
        .map(|(_, value)| value.to_string());
    if state.maintenance.close(route.as_deref()) {
        log::warn!(
            "maintenance ended from the admin API for {}",
            route.as_deref().unwrap_or("every route")
        );
        reply(StatusCode::OK, json!({ "route": route, "ended": true }))
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!(
                "no maintenance window opened from the admin API for {}",
                route.as_deref().unwrap_or("every route")
            ),
        )
    }
}
