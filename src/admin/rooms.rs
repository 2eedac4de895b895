//! `GET /rooms` and `POST /rooms/{name}/open|close|pause`: the waiting rooms'
//! lines and the operator's hand on them. The setting is live state: it
//! outlives reloads (the line's store keeps it).

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{error, reply};
use crate::room::{Pressure, Room};
use crate::state::{Snapshot, State};
use crate::store::room::Control;

/// The pool behind a room: the pool of the first of its routes.
fn pressure(snapshot: &Snapshot, room: &Room) -> Pressure {
    snapshot
        .routes
        .iter()
        .find(|route| room.settings.routes.contains(&route.config.name))
        .and_then(|route| snapshot.pools.get(route.config.pool))
        .map_or(Pressure::IDLE, Pressure::of_pool)
}

async fn describe(snapshot: &Snapshot, room: &Room) -> Value {
    let status = room.status(pressure(snapshot, room), Instant::now()).await;
    let settings = &room.settings;
    json!({
        "name": settings.name,
        "routes": settings.routes,
        "mode": settings.mode.as_str(),
        "control": status.control.as_str(),
        "before_open": status.before_open,
        "length": status.stats.waiting + status.stats.drawn,
        "drawn": status.stats.drawn,
        "active": status.stats.active + status.stats.called,
        "called": status.stats.called,
        "max_active": settings.max_active,
        "admit_per_minute": settings.admit_per_minute,
        "admitted_per_minute": (status.admitted_per_minute * 10.0).round() / 10.0,
        "pace": (status.pace * 1000.0).round() / 1000.0,
        "pool_queue_wait_ms": status.queue_wait.as_millis() as u64,
        "estimated_wait_s": status.estimated_wait,
        "admitted_from_line": status.stats.admitted_from_line,
        "admitted_direct": status.stats.admitted_direct,
        "abandoned": status.stats.abandoned,
    })
}

/// `GET /rooms`.
pub(super) async fn list(state: &State) -> Response<Full<Bytes>> {
    let snapshot = state.snapshot();
    let mut rooms = Vec::new();
    for room in snapshot.rooms.iter() {
        rooms.push(describe(&snapshot, room).await);
    }
    reply(StatusCode::OK, json!({ "rooms": rooms }))
}

/// `POST /rooms/{name}/open|close|pause`.
pub(super) async fn action(state: &State, name: &str, action: &str) -> Response<Full<Bytes>> {
    let snapshot = state.snapshot();
    let Some(room) = snapshot.rooms.get(name) else {
        let names: Vec<&str> = snapshot
            .rooms
            .iter()
            .map(|r| r.settings.name.as_str())
            .collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no room {name:?} (rooms: {})", names.join(", ")),
        );
    };
    let control = match action {
        "open" => Control::Open,
        "close" => Control::Closed,
        "pause" => Control::Paused,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no room action {other:?}; use open, close or pause"),
            )
        }
    };
    room.line().set_control(control).await;
    log::warn!("room {name}: {} through the admin API", control.as_str());
    reply(StatusCode::OK, describe(&snapshot, room).await)
}

/// Sets the rooms' gauges before a scrape.
pub(super) async fn update_gauges(state: &State) {
    let snapshot = state.snapshot();
    for room in snapshot.rooms.iter() {
        room.status(pressure(&snapshot, room), Instant::now()).await;
    }
}
