//! Per-request context: what one request carries from phase to phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use pingora::http::RequestHeader;
use tokio::time::Instant;

use crate::admission::Permit;
use crate::client::Client;
use crate::idempotency::KeyedRequest;
use crate::kept::KeptKind;
use crate::outcome::Outcome;
use crate::retry::{Attempt, Failure};
use crate::route::Route;
use crate::state::Snapshot;
use crate::stream::{OpenStream, StreamKind};
use crate::trace::Trace;
use crate::upstream::{InFlight, Pool};

/// The context as pingora holds it: boxed. pingora keeps the context inline
/// in its request future (in more than one place), and that future is copied
/// to the heap byte by byte at the start of every request; a box keeps it the
/// size of a pointer there (about 1.1 KiB less to copy per request).
pub type Ctx = Box<RequestCtx>;

/// Backends a request tried, in order. Nearly every request tries one: that
/// one is kept inline, so a request allocates nothing for it.
#[derive(Debug, Default)]
pub enum Tried {
    /// None yet.
    #[default]
    None,
    /// The first.
    One([SocketAddr; 1]),
    /// Two or more.
    Many(Vec<SocketAddr>),
}

impl Tried {
    /// Notes `backend` as tried after the others.
    pub fn push(&mut self, backend: SocketAddr) {
        *self = match std::mem::take(self) {
            Tried::None => Tried::One([backend]),
            Tried::One([first]) => Tried::Many(vec![first, backend]),
            Tried::Many(mut all) => {
                all.push(backend);
                Tried::Many(all)
            }
        };
    }
}

impl std::ops::Deref for Tried {
    type Target = [SocketAddr];

    fn deref(&self) -> &[SocketAddr] {
        match self {
            Tried::None => &[],
            Tried::One(one) => one,
            Tried::Many(all) => all,
        }
    }
}

/// State of one request through the proxy phases.
#[derive(Debug)]
pub struct RequestCtx {
    /// The config snapshot this request uses from start to end.
    pub snapshot: Arc<Snapshot>,
    /// When the request arrived.
    pub started: Instant,
    /// The request id, sent upstream and back to the client.
    pub request_id: String,
    /// The shopper's address (the connection's peer, or the client a trusted
    /// proxy names) and scheme, found once ([`crate::client`]).
    pub client: Client,
    /// The matched route, as an index into `snapshot.routes`.
    pub route: Option<usize>,
    /// The pool serving the request, as an index into `snapshot.pools`: the
    /// route's pool, or a backup of it ([`RequestCtx::choose_pool`]).
    pub pool: Option<usize>,
    /// When the route's overall deadline passes.
    pub deadline: Option<Instant>,
    /// The pool slot this request holds, released when the context drops.
    pub permit: Option<Permit>,
    /// Time spent waiting for the permit.
    pub queue_wait: Duration,
    /// The attempt now in flight at a backend, counted until this drops.
    pub in_flight: Option<InFlight>,
    /// Backends tried so far, in order.
    pub tried: Tried,
    /// The wait before the next attempt, when a retry was decided.
    pub backoff: Option<Duration>,
    /// Time from the last attempt's start to its response header.
    pub upstream_time: Option<Duration>,
    /// How the request ended, when ordergate rather than a backend decided.
    pub outcome: Option<Outcome>,
    /// The failure of an earlier attempt that may have reached a backend: the
    /// shopper must then hear that an order may exist, whatever failed last.
    pub reached_backend: Option<Outcome>,
    /// Retry-After to show on the page, when known better than the default
    /// (shedding estimate, a backend's own Retry-After).
    pub retry_after: Option<u32>,
    /// Response body bytes sent to the client.
    pub bytes_sent: usize,
    /// Request body bytes read from the client so far.
    pub body_bytes: u64,
    /// Whether pingora's proxy loop started (`upstream_peer` ran): a failure
    /// from then on closes the shopper's connection (pingora 0.9 does not
    /// reuse it), so the page must say `Connection: close`.
    pub proxying: bool,
    /// Whether a connection to a backend was open for the current attempt:
    /// from then on the request may have reached it.
    pub connected: bool,
    /// The first request with an idempotency key: what its record will say.
    pub keyed: Option<Box<KeyedRequest>>,
    /// A waiting room's new pass, set on the answer (`Set-Cookie` value).
    pub room_cookie: Option<String>,
    /// The operator's words for the page (a maintenance window's message).
    pub notice: Option<String>,
    /// A backend's answer to a read, being collected as the route's stale copy.
    pub stale_recording: Option<Box<crate::stale::Recording>>,
    /// The kept answer sent instead of a backend's (a replay, a stale copy).
    pub kept: Option<KeptKind>,
    /// The stream the request asks for: it waits by the route's
    /// `stream_idle_timeout` rather than its pool's `request_timeout`.
    pub stream: Option<StreamKind>,
    /// The stream the backend opened, counted open while it lasts.
    pub open_stream: Option<OpenStream>,
    /// The request's trace, when `[tracing]` is on.
    pub trace: Option<Box<Trace>>,
}

impl RequestCtx {
    /// A fresh context holding the current snapshot.
    pub fn new(snapshot: Arc<Snapshot>) -> RequestCtx {
        RequestCtx {
            snapshot,
            started: Instant::now(),
            request_id: String::new(),
            client: Client::default(),
            route: None,
            pool: None,
            deadline: None,
            permit: None,
            queue_wait: Duration::ZERO,
            in_flight: None,
            tried: Tried::default(),
            backoff: None,
            upstream_time: None,
            outcome: None,
            reached_backend: None,
            retry_after: None,
            bytes_sent: 0,
            body_bytes: 0,
            proxying: false,
            connected: false,
            keyed: None,
            room_cookie: None,
            notice: None,
            stale_recording: None,
            kept: None,
            stream: None,
            open_stream: None,
            trace: None,
        }
    }

    /// Starts the request's trace from the client's headers, when the
    /// snapshot has tracing on.
    pub fn start_trace(&mut self, headers: &HeaderMap) {
        if let Some(sampler) = &self.snapshot.tracing {
            self.trace = Some(Box::new(Trace::start(headers, sampler, self.started)));
        }
    }

    /// The trace id, as 32 hex digits, when the request is traced.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace.as_deref().map(Trace::trace_id_hex)
    }

    /// Time since the request's start, when it is traced (the start of a
    /// step the trace records when it ends).
    pub fn trace_mark(&self) -> Option<Duration> {
        self.trace.as_deref().map(Trace::now)
    }

    /// The matched route and the pool serving it, once the request was classified.
    pub fn route_and_pool(&self) -> Option<(&Route, &Pool)> {
        self.route_and_pool_in(&self.snapshot)
    }

    /// [`RequestCtx::route_and_pool`] in `snapshot` (the request's own, held
    /// apart so that the context can change meanwhile).
    pub fn route_and_pool_in<'s>(&self, snapshot: &'s Snapshot) -> Option<(&'s Route, &'s Pool)> {
        let route = snapshot.routes.get(self.route?)?;
        let pool = snapshot.pools.get(self.pool.unwrap_or(route.config.pool))?;
        Some((route, pool))
    }

    /// The backend's answer opened a stream of `kind`: it is counted open
    /// while it lasts, and gives back its pool slot and its backend's
    /// in-flight count now (a stream's quiet minutes are no load to admit by).
    pub fn stream_opened(&mut self, kind: StreamKind) {
        let snapshot = Arc::clone(&self.snapshot);
        if let Some((route, _)) = self.route_and_pool_in(&snapshot) {
            self.open_stream = Some(route.streams.open(kind));
        }
        self.in_flight = None;
        self.permit = None;
    }

    /// Chooses the pool that serves the request: the route's pool, or, while
    /// no backend of it can take traffic, its backup (and so on down the chain).
    pub fn choose_pool(&mut self, now: Instant) {
        let Some(route) = self.route.and_then(|index| self.snapshot.routes.get(index)) else {
            return;
        };
        let mut index = route.config.pool;
        // Backups are checked for cycles, so the chain is at most this long.
        for _ in 0..self.snapshot.pools.len() {
            match self.snapshot.pools.get(index) {
                Some(pool) if pool.serves_backup(now) => match pool.backup() {
                    Some(backup) => index = backup,
                    None => break,
                },
                _ => break,
            }
        }
        self.pool = Some(index);
    }

    /// Moves the request to the serving pool's backup when the pool has no
    /// more tries for it: allowed when nothing reached a backend (safe for
    /// orders too) or when the request may be sent again anyway
    /// (`replay_safe`); whether it moved.
    pub fn move_to_backup(&mut self, replay_safe: bool) -> bool {
        if self.reached_backend.is_some() && !replay_safe {
            return false;
        }
        let Some((_, pool)) = self.route_and_pool() else {
            return false;
        };
        let Some(backup) = pool.backup() else {
            return false;
        };
        pool.fail_over();
        log::debug!(
            "request {}: pool {} has no more tries for it, moved to its backup pool",
            self.request_id,
            pool.name
        );
        self.move_to_pool(backup);
        true
    }

    /// The request goes on in pool `to`, its pool's backup (a failover, or a
    /// queue too full to wait in); a traced request records the move.
    pub fn move_to_pool(&mut self, to: usize) {
        let from = self
            .route_and_pool_in(&self.snapshot)
            .map(|(route, _)| self.pool.unwrap_or(route.config.pool));
        if let (Some(trace), Some(from)) = (self.trace.as_deref_mut(), from) {
            trace.failed_over(from, to);
        }
        self.pool = Some(to);
    }

    /// The pages for this request: the route's own, or the server's.
    pub fn pages(&self) -> &crate::config::Pages {
        self.route_and_pool()
            .and_then(|(route, _)| route.config.pages.as_ref())
            .unwrap_or(&self.snapshot.pages)
    }

    /// The route's name for labels and logs, `(none)` when no route matched.
    pub fn route_name(&self) -> &str {
        self.route_and_pool()
            .map_or("(none)", |(route, _)| route.config.name.as_str())
    }

    /// Records a failure that happened before the request reached a backend
    /// (connect failed, nothing to pick) — unless an earlier attempt did reach one.
    pub fn fail_before_backend(&mut self, outcome: Outcome) {
        self.outcome = Some(self.reached_backend.unwrap_or(outcome));
    }

    /// How the request ended when ordergate answered it itself: the kept
    /// answer's kind or the outcome's reason (the access log's `outcome`).
    pub fn ending(&self) -> Option<&'static str> {
        self.kept
            .map(KeptKind::as_str)
            .or_else(|| self.outcome.map(Outcome::reason))
    }

    /// The link to the shopper's orders on pages that say an order may exist
    /// (the route's `idempotency.orders_url`).
    pub fn orders_link(&self, outcome: Outcome) -> Option<&str> {
        match outcome {
            Outcome::OrderOutcomeUnknown | Outcome::AlreadyProcessed => self
                .route_and_pool()
                .and_then(|(route, _)| route.idempotency.as_ref())
                .and_then(|edge| edge.settings.orders_url.as_deref()),
            _ => None,
        }
    }

    /// One failed attempt, as the retry policy sees it.
    pub fn attempt(
        &self,
        failure: Failure,
        replay_safe: bool,
        retry_after: Option<Duration>,
    ) -> Attempt {
        Attempt {
            failure,
            tries: self.tries(),
            replay_safe,
            remaining: self.remaining(),
            retry_after,
        }
    }

    /// Starts recording the backend's answer head for the keyed request's
    /// record and, when the read may be kept, the route's stale copy.
    pub fn record_head(&mut self, request: &RequestHeader, status: u16, answer: &HeaderMap) {
        let per_shopper = self
            .route
            .and_then(|route| self.snapshot.routes.get(route))
            .and_then(|route| route.config.idempotency.as_ref())
            .map_or(&[][..], |settings| &settings.per_shopper_headers[..]);
        if let Some(keyed) = self.keyed.as_mut() {
            keyed.answer_head(status, answer, per_shopper);
        }
        self.stale_recording = self.route_and_pool().and_then(|(route, _)| {
            let config = route.config.stale.as_ref()?;
            crate::stale::record(config, request, status, answer)
        });
    }

    /// Records a chunk of the backend's answer for the keyed request's record
    /// and the route's stale copy; at the end of the answer, the copy is kept.
    pub fn record_body(&mut self, chunk: Option<&Bytes>, end_of_stream: bool) {
        let snapshot = Arc::clone(&self.snapshot);
        let route = self.route.and_then(|index| snapshot.routes.get(index));
        if let Some(keyed) = self.keyed.as_mut() {
            let max = route
                .and_then(|route| route.idempotency.as_ref())
                .map_or(0, |edge| edge.settings.max_response_bytes);
            keyed.answer_body(chunk, end_of_stream, max);
        }
        let Some(recording) = self.stale_recording.as_mut() else {
            return;
        };
        if let Some(chunk) = chunk {
            recording.push(chunk);
        }
        if !end_of_stream {
            return;
        }
        let finished = self
            .stale_recording
            .take()
            .and_then(|recording| recording.finish(&self.request_id));
        if let (Some((_, cache)), Some((key, copy))) =
            (route.and_then(|route| route.stale()), finished)
        {
            cache.keep(key, copy);
        }
    }

    /// Tries made so far.
    pub fn tries(&self) -> u32 {
        self.tried.len() as u32
    }

    /// Time left before the route's deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tried_backends_keep_their_order() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut tried = Tried::default();
        assert!(tried.is_empty());
        tried.push(addr(1));
        assert_eq!(&tried[..], [addr(1)]);
        tried.push(addr(2));
        tried.push(addr(3));
        assert_eq!(&tried[..], [addr(1), addr(2), addr(3)]);
        assert_eq!(tried.last(), Some(&addr(3)));
    }
}
