//! State shared by every listener of one simulated fleet: the order book,
//! counters, and each listener's mode and capacity limit.

use parking_lot::{Mutex, MutexGuard};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::mode::{Mode, ModePatch};
use super::orders::OrderBook;

/// Everything the listeners of one process share.
#[derive(Debug)]
pub(crate) struct Fleet {
    /// Mode given on the command line, restored by `POST /__sim/reset`.
    defaults: Mode,
    /// One entry per listen address, in command-line order.
    listeners: Vec<Arc<Listener>>,
    /// Orders and idempotency keys.
    book: Mutex<OrderBook>,
    /// Non-`/__sim/` requests being handled right now, on all listeners.
    in_flight: Arc<AtomicU64>,
}

impl Fleet {
    /// A fleet with one listener per bound address, all in mode `defaults`.
    pub(crate) fn new(defaults: Mode, addrs: &[SocketAddr]) -> Arc<Self> {
        let listeners = addrs
            .iter()
            .map(|addr| Arc::new(Listener::new(*addr, defaults)))
            .collect();
        Arc::new(Fleet {
            defaults,
            listeners,
            book: Mutex::new(OrderBook::default()),
            in_flight: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The listeners, in command-line order.
    pub(crate) fn listeners(&self) -> &[Arc<Listener>] {
        &self.listeners
    }

    /// The shared order book, locked.
    pub(crate) fn book(&self) -> MutexGuard<'_, OrderBook> {
        self.book.lock()
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub(crate) fn start_request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// The body of `GET /__sim/stats`.
    pub(crate) fn stats(&self) -> Value {
        let listeners: BTreeMap<&str, Value> = self
            .listeners
            .iter()
            .map(|l| {
                let connections = l.connections.load(Ordering::Relaxed);
                (
                    l.name(),
                    json!({ "requests": l.requests(), "connections": connections }),
                )
            })
            .collect();
        let (orders_created, idempotent_replays) = {
            let book = self.book();
            (book.created(), book.replays())
        };
        json!({
            "listeners": listeners,
            "orders_created": orders_created,
            "idempotent_replays": idempotent_replays,
            "in_flight": self.in_flight.load(Ordering::Relaxed),
        })
    }

    /// Applies a mode patch to `target`, or to every listener when the patch
    /// says `"all": true`; returns the body of the answer.
    pub(crate) fn patch_mode(&self, target: &Listener, patch: &ModePatch) -> Value {
        if patch.all {
            let modes: BTreeMap<&str, Value> = self
                .listeners
                .iter()
                .map(|l| (l.name(), l.update(|mode| patch.apply(mode)).to_json()))
                .collect();
            json!({ "listeners": modes })
        } else {
            target.update(|mode| patch.apply(mode)).to_json()
        }
    }

    /// `POST /__sim/reset`: forgets orders and counters and puts every
    /// listener back in the command-line mode. Requests in flight keep counting.
    pub(crate) fn reset(&self) {
        self.book().clear();
        for listener in &self.listeners {
            listener.requests.store(0, Ordering::Relaxed);
            listener.connections.store(0, Ordering::Relaxed);
            listener.set_mode(self.defaults);
        }
    }
}

/// One listen address of the fleet.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The bound address, as shown in `x-sim-backend` and in stats.
    name: String,
    /// Current mode and the semaphore enforcing its capacity.
    state: Mutex<ListenerState>,
    /// Non-`/__sim/` requests received since the last reset.
    requests: AtomicU64,
    /// Connections accepted since the last reset.
    connections: AtomicU64,
}

#[derive(Debug)]
struct ListenerState {
    mode: Mode,
    /// `Some` when the mode has a capacity; replaced when the capacity changes,
    /// so requests holding a permit of the old one finish undisturbed.
    limit: Option<Arc<Semaphore>>,
}

impl Listener {
    fn new(addr: SocketAddr, mode: Mode) -> Self {
        Listener {
            name: addr.to_string(),
            state: Mutex::new(ListenerState {
                mode,
                limit: semaphore(mode.capacity),
            }),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    /// The bound address as text, e.g. `127.0.0.1:9001`.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The current mode.
    pub(crate) fn mode(&self) -> Mode {
        self.state.lock().mode
    }

    /// The current mode and the semaphore a new request must get a permit from.
    pub(crate) fn mode_and_limit(&self) -> (Mode, Option<Arc<Semaphore>>) {
        let state = self.state.lock();
        (state.mode, state.limit.clone())
    }

    /// Counts one accepted connection.
    pub(crate) fn count_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one non-`/__sim/` request.
    pub(crate) fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Changes the mode with `change` and returns the new mode; a new capacity
    /// takes effect for requests that arrive from now on.
    fn update(&self, change: impl FnOnce(&mut Mode)) -> Mode {
        let mut state = self.state.lock();
        let before = state.mode.capacity;
        change(&mut state.mode);
        if state.mode.capacity != before {
            state.limit = semaphore(state.mode.capacity);
        }
        state.mode
    }

    fn set_mode(&self, mode: Mode) {
        let mut state = self.state.lock();
        state.mode = mode;
        state.limit = semaphore(mode.capacity);
    }
}

fn semaphore(capacity: Option<u32>) -> Option<Arc<Semaphore>> {
    capacity.map(|n| {
        let permits = usize::try_from(n).unwrap_or(Semaphore::MAX_PERMITS);
        Arc::new(Semaphore::new(permits.min(Semaphore::MAX_PERMITS)))
    })
}

/// Keeps a request counted as in flight; the count drops with the guard.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_changes_replace_the_semaphore() {
        let addr: SocketAddr = "127.0.0.1:9001".parse().expect("address");
        let defaults = Mode {
            capacity: Some(2),
            ..Mode::default()
        };
        let fleet = Fleet::new(defaults, &[addr]);
        let listener = Arc::clone(&fleet.listeners()[0]);
        assert_eq!(listener.name(), "127.0.0.1:9001");
        let (_, first) = listener.mode_and_limit();
        let first = first.expect("limited");
        assert_eq!(first.available_permits(), 2);

        let latency = ModePatch::from_json(br#"{"latency_ms":5}"#).expect("patch");
        fleet.patch_mode(&listener, &latency);
        let (_, same) = listener.mode_and_limit();
        assert!(Arc::ptr_eq(&first, &same.expect("limited")));

        let wider = ModePatch::from_json(br#"{"capacity":5}"#).expect("patch");
        fleet.patch_mode(&listener, &wider);
        let (mode, wider) = listener.mode_and_limit();
        assert_eq!(mode.capacity, Some(5));
        assert_eq!(wider.expect("limited").available_permits(), 5);

        let unlimited = ModePatch::from_json(br#"{"capacity":null}"#).expect("patch");
        fleet.patch_mode(&listener, &unlimited);
        assert!(listener.mode_and_limit().1.is_none());

        listener.count_request();
        fleet.reset();
        assert_eq!(listener.mode(), defaults);
        assert_eq!(listener.requests(), 0);
        assert!(listener.mode_and_limit().1.is_some());
    }

    #[test]
    fn in_flight_follows_the_guards() {
        let fleet = Fleet::new(Mode::default(), &[]);
        let one = fleet.start_request();
        let two = fleet.start_request();
        assert_eq!(fleet.stats()["in_flight"], 2);
        drop(one);
        drop(two);
        assert_eq!(fleet.stats()["in_flight"], 0);
    }
}
