//! The pingora `ProxyHttp` implementation. Each phase only wires: the decisions
//! live in `connection`, `route`, `maintenance`, `room`, `idempotency`,
//! `admission`, `upstream`, `retry`, `stale`, `forward` and `respond`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyWarnLogContext};
use pingora::ErrorSource;
use tokio::time::Instant;

use crate::admission::{Permit, Priority, Reject};
use crate::connection;
use crate::ctx::{Ctx, RequestCtx};
use crate::forward::{self, request_host};
use crate::idempotency::{self, KeyedRequest, Verdict};
use crate::kept::StoredAnswer;
use crate::maintenance;
use crate::outcome::{INTERCEPTED_STATUS, RETRYABLE_STATUS};
use crate::path;
use crate::respond::{self, Kept, Outcome, PageContext, Sent, BODY_TOO_LARGE};
use crate::retry::{self, Attempt, Failure, ProxyError};
use crate::rewrite::{self, Https};
use crate::stale::{self, Need};
use crate::state::State;
use crate::stream;
use crate::telemetry::{AccessLogger, AccessRecord, UpstreamResult};
use crate::upstream::outlier::Signal;
use crate::upstream::{InFlight, Pick};

/// The proxy service: holds the served state.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
    access_log: AccessLogger,
}

impl Proxy {
    /// A proxy serving the given state, writing access records to `access_log`.
    pub fn new(state: Arc<State>, access_log: AccessLogger) -> Proxy {
        Proxy { state, access_log }
    }

    /// Whether the connection closes after ordergate's own answer, whatever
    /// the request was ([`respond::forced_close`]).
    fn forced_close(&self, ctx: &RequestCtx) -> bool {
        respond::forced_close(self.state.is_shutting_down(), ctx.proxying)
    }

    /// Answers the request with ordergate's own page for `outcome`, or with a
    /// kept copy of the read where the backends failed and the route keeps one.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        outcome: Outcome,
    ) -> Result<Sent> {
        if outcome.backends_failed() {
            if let Some(sent) = self.serve_stale(session, ctx, Need::Error).await? {
                return Ok(sent);
            }
        }
        ctx.outcome = Some(outcome);
        self.state
            .metrics
            .rejection(ctx.route_name(), outcome.reason());
        let context = PageContext {
            request_id: &ctx.request_id,
            retry_after: ctx.retry_after,
            wait_seconds: ctx.retry_after,
            link: ctx.orders_link(outcome),
            notice: ctx.notice.as_deref(),
            trace_id: ctx.trace_id(),
        };
        let forced_close = self.forced_close(ctx);
        let sent = respond::send(session, ctx.pages(), outcome, &context, forced_close).await?;
        ctx.bytes_sent += sent.bytes;
        Ok(sent)
    }

    /// Ends the request in `request_filter` with ordergate's page for `outcome`.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        outcome: Outcome,
    ) -> Result<bool> {
        self.answer(session, ctx, outcome).await.map(|_| true)
    }

    /// Sends a kept answer (a replay or a stale copy) instead of a backend's.
    async fn send_kept(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        answer: &StoredAnswer,
        kept: Kept,
    ) -> Result<Sent> {
        let forced_close = self.forced_close(ctx);
        let sent = respond::send_kept(session, answer, kept, &ctx.request_id, forced_close).await?;
        ctx.bytes_sent += sent.bytes;
        ctx.outcome = None;
        ctx.kept = Some(kept.kind());
        Ok(sent)
    }

    /// The first steps of `request_filter`: the request id, the normal path,
    /// the route and its serving pool, and the limits on what the shopper
    /// sent; the page to answer with when one of them fails.
    fn classify(&self, session: &mut Session, ctx: &mut RequestCtx) -> Option<Outcome> {
        ctx.client = crate::client::identify(
            peer_ip(session),
            is_tls(session),
            &session.req_header().headers,
            &ctx.snapshot.trust,
        );
        ctx.request_id = forward::request_id(
            session
                .req_header()
                .headers
                .get(&forward::X_REQUEST_ID)
                .map(|v| v.as_bytes()),
        );
        ctx.start_trace(&session.req_header().headers);
        if path::normalize_request(session.req_header_mut(), ctx.snapshot.limits.path).is_err() {
            return Some(Outcome::BadRequest);
        }
        let request = session.req_header();
        ctx.route = ctx.snapshot.routes.classify(
            request_host(request),
            request.uri.path(),
            &request.method,
        );
        if connection::head_too_large(request, &ctx.snapshot.limits) {
            return Some(Outcome::HeaderTooLarge);
        }
        let now = Instant::now();
        ctx.choose_pool(now);
        let Some((route, pool)) = ctx.route_and_pool() else {
            return Some(Outcome::NoRoute);
        };
        if connection::declared_body_too_large(&request.headers, route.config.max_body_bytes) {
            return Some(Outcome::BodyTooLarge);
        }
        pool.state.retry_budget.record_request(now);
        let deadline = now + route.config.timeout;
        let stream = stream::requested(&request.method, &request.headers, route.config.long_poll);
        let idle = route.config.stream_idle_timeout;
        ctx.deadline = Some(deadline);
        ctx.stream = stream;
        if stream.is_some() {
            // The shopper's side of a stream may be quiet as long as the backend's.
            session.set_read_timeout(Some(idle));
        }
        None
    }

    /// A plain-HTTP request on a route that wants HTTPS: `Some(true)` when it
    /// got its redirect (or the `bad_request` page), `None` to go on.
    async fn https_redirect(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
        let Some((route, _)) = ctx.route_and_pool() else {
            return Ok(None);
        };
        let port = ctx.snapshot.https_port;
        match rewrite::https_redirect(&route.config, ctx.client.https, session.req_header(), port) {
            Https::Serve => Ok(None),
            Https::BadHost => self
                .reject(session, ctx, Outcome::BadRequest)
                .await
                .map(Some),
            Https::Redirect { status, location } => {
                let forced_close = self.forced_close(ctx);
                let sent = respond::send_redirect(
                    session,
                    status,
                    &location,
                    &ctx.request_id,
                    forced_close,
                )
                .await?;
                ctx.bytes_sent += sent.bytes;
                Ok(Some(true))
            }
        }
    }

    /// Counts the request against its route's rate limit; whether it is over.
    async fn over_rate_limit(&self, session: &Session, ctx: &RequestCtx) -> bool {
        let Some((route, _)) = ctx.route_and_pool() else {
            return false;
        };
        route
            .over_rate_limit(&session.req_header().headers, ctx.client.ip)
            .await
    }

    /// Maintenance, in `request_filter`: `Some(true)` when the shopper got the
    /// maintenance page, `None` to go on.
    async fn maintenance(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some((route, _)) = ctx.route_and_pool_in(&snapshot) else {
            return Ok(None);
        };
        let rules = maintenance::Rules {
            route: &route.config.name,
            route_config: route.config.maintenance.as_ref(),
            global_config: snapshot.maintenance.as_ref(),
        };
        if !rules.may_apply(&self.state.maintenance) {
            return Ok(None);
        }
        let now = SystemTime::now();
        let headers = &session.req_header().headers;
        match rules.decide(&self.state.maintenance, headers, ctx.client.ip, now) {
            maintenance::Decision::Pass => Ok(None),
            maintenance::Decision::Closed(window) => {
                ctx.retry_after = Some(window.retry_after(now));
                ctx.notice = window.message;
                self.reject(session, ctx, Outcome::Maintenance)
                    .await
                    .map(Some)
            }
        }
    }

    /// The waiting room of the request's route, in `request_filter`:
    /// `Some(true)` when the shopper was answered (the waiting page), `None` to
    /// go on (admitted, holding a pass, bypassed, or no room).
    async fn waiting_room(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some((route, pool)) = ctx.route_and_pool_in(&snapshot) else {
            return Ok(None);
        };
        let Some(room) = snapshot.rooms.for_route(&route.config.name) else {
            return Ok(None);
        };
        let header = session.req_header();
        let request = crate::room::Request {
            method: &header.method,
            path: header.uri.path(),
            headers: &header.headers,
            tls: ctx.client.https,
            client_ip: ctx.client.ip,
        };
        let pressure = crate::room::Pressure::of_pool(pool);
        let since = ctx.trace_mark();
        let decision = room.decide(&request, pressure, Instant::now()).await;
        if let (Some(trace), Some(since)) = (ctx.trace.as_deref_mut(), since) {
            trace.room_decided(since, decision.as_str(), decision.position());
        }
        let (view, cookie) = match decision {
            crate::room::Decision::Pass(cookie) => {
                ctx.room_cookie = cookie;
                return Ok(None);
            }
            crate::room::Decision::Wait(view, cookie) => (view, cookie),
            crate::room::Decision::Full => {
                return self.reject(session, ctx, Outcome::LineFull).await.map(Some);
            }
            crate::room::Decision::TooManyArrivals => {
                return self
                    .reject(session, ctx, Outcome::RateLimited)
                    .await
                    .map(Some);
            }
        };
        self.send_room_page(session, ctx, &room.settings.name, view, cookie.as_deref())
            .await?;
        Ok(Some(true))
    }

    /// The waiting page: the shopper's place in `room`'s line.
    async fn send_room_page(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        room: &str,
        view: crate::room::View,
        set_cookie: Option<&str>,
    ) -> Result<()> {
        ctx.outcome = Some(Outcome::WaitingRoom);
        ctx.retry_after = Some(view.refresh);
        self.state
            .metrics
            .rejection(ctx.route_name(), Outcome::WaitingRoom.reason());
        let page = respond::RoomPage {
            request_id: &ctx.request_id,
            trace_id: ctx.trace_id(),
            room,
            view,
            set_cookie,
        };
        let forced_close = self.forced_close(ctx);
        let sent = respond::send_room(session, ctx.pages(), &page, forced_close).await?;
        ctx.bytes_sent += sent.bytes;
        Ok(())
    }

    /// Idempotency at the edge, in `request_filter`: `Some(true)` when the
    /// request was answered (a replay or a page), `None` to go on.
    async fn idempotency(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some((route, _)) = ctx.route_and_pool_in(&snapshot) else {
            return Ok(None);
        };
        let Some(edge) = &route.idempotency else {
            return Ok(None);
        };
        let request = session.req_header();
        let key = match edge.key_of(
            &route.config.name,
            &request.method,
            &request.headers,
            ctx.client.ip,
        ) {
            Ok(Some(key)) => key,
            Ok(None) => return Ok(None),
            Err(outcome) => return self.reject(session, ctx, outcome).await.map(Some),
        };
        let body = read_small_body(session).await?;
        let request = session.req_header();
        let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let fingerprint = idempotency::fingerprint(&request.method, target, &body);
        let verdict = edge.begin(&key, &fingerprint).await;
        if let Some(trace) = ctx.trace.as_deref_mut() {
            trace.idempotency = Some(match &verdict {
                Verdict::Forward => "first",
                Verdict::Replay(_) => "replay",
                Verdict::Refuse(outcome) => outcome.reason(),
            });
        }
        match verdict {
            Verdict::Forward => {
                ctx.keyed = Some(Box::new(KeyedRequest::new(key)));
                Ok(None)
            }
            Verdict::Replay(answer) => {
                self.send_kept(session, ctx, &answer, Kept::Replay).await?;
                Ok(Some(true))
            }
            Verdict::Refuse(outcome) => self.reject(session, ctx, outcome).await.map(Some),
        }
    }

    /// Admission, the last step of `request_filter`: a slot in the serving
    /// pool (waiting in its queue by priority), a kept copy instead of the
    /// wait, or its page. A pool whose queue is full hands the request to its
    /// backup pool, if it has one.
    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let since = ctx.trace_mark();
        loop {
            let Some((route, pool)) = ctx.route_and_pool() else {
                return self.reject(session, ctx, Outcome::Internal).await;
            };
            let capacity = pool.capacity();
            if capacity == 0 {
                // Nothing can take the request: say so now rather than queue it.
                return self.reject(session, ctx, Outcome::NoHealthyBackend).await;
            }
            let (backup, priority) = (pool.backup(), route.config.priority);
            let stale_first = route.config.stale.as_ref().is_some_and(|c| c.on_overload);
            let admission = Arc::clone(&pool.state.admission);
            admission.set_capacity(capacity);
            // A kept copy now rather than a wait in the queue.
            if stale_first
                && admission.snapshot().is_full()
                && self.stale_for_wait(session, ctx).await?
            {
                return Ok(true);
            }
            let deadline = ctx.deadline.unwrap_or_else(Instant::now);
            // Biased: a free slot is taken without ever starting the client watch
            // (which would cost a read and an epoll registration per request).
            let admitted = tokio::select! {
                biased;
                admitted = admission.admit(priority, deadline) => admitted,
                () = client_closed(session) => return Err(client_left(ctx)),
            };
            if let (Some(trace), Some(since)) = (ctx.trace.as_deref_mut(), since) {
                match &admitted {
                    Ok(permit) if permit.queued() => trace.queued(since, "admitted"),
                    Ok(_) => {}
                    Err(reject) => trace.queued(since, reject.outcome().reason()),
                }
            }
            match admitted {
                Ok(permit) => return Ok(self.admitted(ctx, permit, priority)),
                Err(reject) if reject.falls_back(backup.is_some()) => {
                    ctx.queue_wait = ctx.started.elapsed();
                    if let Some(backup) = backup {
                        ctx.move_to_pool(backup);
                    }
                }
                Err(reject) => return self.turned_away(session, ctx, reject).await,
            }
        }
    }

    /// Serves a kept copy instead of a wait in the full pool's queue, if the
    /// route has one; whether it did.
    async fn stale_for_wait(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let served = self.serve_stale(session, ctx, Need::Overload).await?;
        Ok(served.is_some())
    }

    /// The request holds a slot: its queue wait, if it waited, is measured.
    fn admitted(&self, ctx: &mut RequestCtx, permit: Permit, priority: Priority) -> bool {
        // A free slot is not a wait of a few nanoseconds.
        if permit.queued() {
            ctx.queue_wait = ctx.started.elapsed();
            let pool = ctx
                .route_and_pool()
                .map_or("", |(_, pool)| pool.name.as_str());
            self.state
                .metrics
                .queue_wait(pool, priority.as_str(), ctx.queue_wait.as_secs_f64());
        }
        ctx.permit = Some(permit);
        false
    }

    /// The pool turned the request away: its page, with the estimate's Retry-After.
    async fn turned_away(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reject: Reject,
    ) -> Result<bool> {
        ctx.queue_wait = ctx.started.elapsed();
        ctx.retry_after = Some(respond::retry_after_seconds(reject.retry_after()));
        self.reject(session, ctx, reject.outcome()).await
    }

    /// Serves the route's kept copy of this read instead of a page, when the
    /// route keeps copies for this `need` and one matches; `None` otherwise.
    async fn serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        need: Need,
    ) -> Result<Option<Sent>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some((route, _)) = ctx.route_and_pool_in(&snapshot) else {
            return Ok(None);
        };
        let Some((config, cache)) = route.stale() else {
            return Ok(None);
        };
        if answer_started(session) {
            return Ok(None);
        }
        let Some(copy) = stale::stand_in(config, cache, session.req_header(), need) else {
            return Ok(None);
        };
        let kept = Kept::Stale {
            age: copy.age(std::time::Instant::now()),
        };
        let sent = self.send_kept(session, ctx, &copy.answer, kept).await?;
        self.state.metrics.stale_served(&route.config.name);
        Ok(Some(sent))
    }

    /// The backend of the next attempt: from the serving pool, or, when none
    /// of it can take the request and nothing reached one yet, from its
    /// backup pools in turn.
    fn pick(&self, session: &Session, ctx: &mut RequestCtx, timeout: Duration) -> Option<Pick> {
        let headers = &session.req_header().headers;
        let stream_idle = ctx
            .route_and_pool()
            .and_then(|(route, _)| ctx.stream.map(|_| route.config.stream_idle_timeout));
        loop {
            let (_, pool) = ctx.route_and_pool()?;
            let timeout = stream::read_timeout(stream_idle, timeout.min(pool.request_timeout()));
            if let Some(pick) = pool.pick(headers, ctx.client.ip, &ctx.tried, timeout) {
                return Some(pick);
            }
            // Asked only here: nearly every pick succeeds.
            let may_replay = ctx
                .route_and_pool()
                .is_some_and(|(route, _)| replay_safe(session, route));
            if !ctx.move_to_backup(may_replay) {
                return None;
            }
        }
    }
}

/// The connection's peer (after a PROXY protocol header, the address it named).
fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip())
}

fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some()
}

/// Reads a keyed request's body before forwarding when it is small
/// ([`idempotency::body_to_read`]): pingora keeps it and sends it upstream as
/// it sends a retry. A larger or chunked body stays unread and is
/// fingerprinted by its declared length only.
async fn read_small_body(session: &mut Session) -> Result<Bytes> {
    let headers = &session.req_header().headers;
    let Some(len) = idempotency::body_to_read(headers) else {
        return Ok(idempotency::declared_only(headers));
    };
    session.as_mut().enable_retry_buffering();
    let mut body = Vec::with_capacity(len);
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// Resolves when the client closes its connection while the request waits in a
/// queue. Requests whose body is still unread are not watched (reading would
/// consume the body).
async fn client_closed(session: &mut Session) {
    if session.as_mut().is_body_done() && session.as_mut().read_body_or_idle(true).await.is_err() {
        return;
    }
    std::future::pending::<()>().await
}

/// The error that ends a request whose client left while it waited.
fn client_left(ctx: &mut RequestCtx) -> Box<Error> {
    ctx.queue_wait = ctx.started.elapsed();
    ctx.outcome = Some(Outcome::ClientGone);
    Error::explain(
        ConnectionClosed,
        "the client left while waiting in the queue",
    )
    .into_down()
}

/// Whether a connect failed because the process could not open a socket (out
/// of file descriptors), as opposed to the backend refusing or not answering.
fn out_of_descriptors(error: &Error) -> bool {
    error
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(crate::telemetry::is_out_of_descriptors)
}

/// Whether a final (non-1xx) response header, or a protocol switch, already
/// went to the client: then nothing else can be sent, neither a page nor
/// another backend's answer.
fn answer_started(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|r| is_final(r.status))
}

/// A final answer, or `101 Switching Protocols` (after which the connection
/// carries another protocol).
fn is_final(status: http::StatusCode) -> bool {
    !status.is_informational() || status == http::StatusCode::SWITCHING_PROTOCOLS
}

/// Feeds a failed attempt into passive health, the attempt metrics and the trace.
fn record_failure(ctx: &mut RequestCtx, failure: Failure) {
    trace_failure(ctx, failure);
    let (signal, result) = match failure {
        Failure::Status(code) => (Signal::from_status(code), UpstreamResult::ServerError),
        Failure::ConnectFailed => (Signal::GatewayFailure, UpstreamResult::ConnectFailed),
        Failure::Reset => (Signal::GatewayFailure, UpstreamResult::Reset),
        Failure::Timeout => (Signal::GatewayFailure, UpstreamResult::Timeout),
    };
    if let (Some((_, pool)), Some(in_flight)) = (ctx.route_and_pool(), &ctx.in_flight) {
        pool.record_attempt(in_flight, result, signal, in_flight.elapsed());
    }
}

/// Ends the current attempt's span with `failure`, when the request is traced.
fn trace_failure(ctx: &mut RequestCtx, failure: Failure) {
    if let Some(trace) = ctx.trace.as_deref_mut() {
        let status = match failure {
            Failure::Status(code) => Some(code),
            _ => None,
        };
        trace.attempt_failed(failure.as_str(), status);
    }
}

/// Passive health, metrics and the retry decision for a failed attempt. Returns
/// whether to try again (and sets the backoff).
fn after_failure(
    state: &State,
    session: &Session,
    ctx: &mut RequestCtx,
    failure: Failure,
    retry_after: Option<Duration>,
) -> bool {
    record_failure(ctx, failure);
    decide_retry(state, session, ctx, failure, retry_after)
}

/// The retry decision for a failed attempt (with its metrics): whether to try
/// again on this pool (with a backoff) or on its backup pool.
fn decide_retry(
    state: &State,
    session: &Session,
    ctx: &mut RequestCtx,
    failure: Failure,
    retry_after: Option<Duration>,
) -> bool {
    // The snapshot outlives the borrows of ctx below (which may move the
    // request to a backup pool).
    let snapshot = Arc::clone(&ctx.snapshot);
    let Some((route, pool)) = ctx.route_and_pool_in(&snapshot) else {
        return false;
    };
    let replay_safe = replay_safe(session, route);
    let attempt = ctx.attempt(failure, replay_safe, retry_after);
    let (retried, decision) = match retry_verdict(route, pool, &attempt) {
        Ok(backoff) => {
            ctx.backoff = Some(backoff);
            (true, "retry")
        }
        // Out of tries on this pool: its backup pool takes the request (only
        // where the request may be sent again at all; ctx logs the move).
        Err(stop) if stop.tries_backup() && ctx.move_to_backup(replay_safe) => (true, "failover"),
        Err(stop) => {
            state
                .metrics
                .retry_denied(&route.config.name, stop.as_str());
            // The shopper hears the backend's own estimate.
            ctx.retry_after = retry_after
                .map(respond::retry_after_seconds)
                .or(ctx.retry_after);
            (false, stop.as_str())
        }
    };
    if let Some(trace) = ctx.trace.as_deref_mut() {
        trace.attempt_decided(decision);
    }
    if retried {
        state.metrics.retry(&route.config.name, failure.as_str());
    }
    retried
}

/// The route's retry policy, then the pool's budget: the backoff before the
/// next try, or why there is none. The budget is asked last, so a refused
/// retry costs none of it.
fn retry_verdict(
    route: &crate::route::Route,
    pool: &crate::upstream::Pool,
    attempt: &Attempt,
) -> std::result::Result<Duration, retry::Stop> {
    let backoff = retry::decide(&route.config.retry, attempt)?;
    if pool.spend_retry(Instant::now()) {
        Ok(backoff)
    } else {
        Err(retry::Stop::Budget)
    }
}

/// Whether this request may be sent again after it reached a backend
/// ([`retry::replay_safe`]).
fn replay_safe(session: &Session, route: &crate::route::Route) -> bool {
    let request = session.req_header();
    retry::replay_safe(&retry::Replay {
        method: &request.method,
        headers: &request.headers,
        policy: &route.config.retry,
        idempotency: route.idempotency.as_ref().map(|edge| &edge.settings),
        body_truncated: session.as_ref().retry_buffer_truncated(),
    })
}

/// The status the shopper got: the answer written, else the outcome's page.
fn final_status(session: &Session, ctx: &RequestCtx) -> u16 {
    session
        .response_written()
        .filter(|r| is_final(r.status))
        .map_or_else(
            || ctx.outcome.map_or(0, Outcome::status),
            |r| r.status.as_u16(),
        )
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        // pingora calls this right after it parsed the request head.
        crate::connection::head_received();
        Box::new(RequestCtx::new(self.state.snapshot()))
    }

    // A marker that the connection carried a request before: the next request's
    // header deadline then starts after the keep-alive idle wait (see `connection`).
    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &Ctx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(()))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(outcome) = self.classify(session, ctx) {
            return self.reject(session, ctx, outcome).await;
        }
        if let Some(answered) = self.https_redirect(session, ctx).await? {
            return Ok(answered);
        }
        if self.over_rate_limit(session, ctx).await {
            return self.reject(session, ctx, Outcome::RateLimited).await;
        }
        if let Some(answered) = self.maintenance(session, ctx).await? {
            return Ok(answered);
        }
        // A shopper waiting in a room's line never takes a pool slot.
        if let Some(answered) = self.waiting_room(session, ctx).await? {
            return Ok(answered);
        }
        // A replay or a conflict is answered here, before any pool slot.
        if let Some(answered) = self.idempotency(session, ctx).await? {
            return Ok(answered);
        }
        self.admit(session, ctx).await
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.proxying = true;
        if let Some(backoff) = ctx.backoff.take() {
            tokio::time::sleep(backoff).await;
        }
        // The previous attempt, if any, is over.
        ctx.in_flight = None;
        let (route, pool) = ctx.route_and_pool().ok_or_else(|| {
            Error::explain(InternalError, "no route was set before upstream_peer")
        })?;
        let timeout = retry::attempt_timeout(
            route.config.retry.per_try_timeout,
            pool.request_timeout(),
            ctx.remaining(),
        );
        if timeout.is_zero() {
            ctx.outcome = Some(ctx.reached_backend.unwrap_or(Outcome::UpstreamTimeout));
            return Err(
                Error::explain(ReadTimedout, "the route's deadline passed before a try").into_up(),
            );
        }
        let Some(pick) = self.pick(session, ctx, timeout) else {
            ctx.fail_before_backend(Outcome::NoHealthyBackend);
            let pool = ctx
                .route_and_pool()
                .map_or("", |(_, pool)| pool.name.as_str());
            return Err(Error::explain(
                ConnectNoRoute,
                format!("pool {pool} has no backend that can take the request"),
            ));
        };
        let backend = pick.in_flight.backend().addr;
        ctx.tried.push(backend);
        if let (Some(trace), Some(pool)) = (ctx.trace.as_deref_mut(), ctx.pool) {
            trace.attempt_started(backend, pool);
        }
        ctx.in_flight = Some(pick.in_flight);
        Ok(pick.peer)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // From here on the request may reach the backend.
        ctx.connected = true;
        Ok(())
    }

    // A retried attempt is counted (ordergate_retries_total) and logged at debug;
    // a warning for each would flood the log in an outage.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Ctx,
        _error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        matches!(context, ProxyWarnLogContext::UpstreamRetry)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.fail_before_backend(Outcome::ConnectFailed);
        let retry = if out_of_descriptors(&e) {
            // ordergate's own limit, not the backend's fault: no health
            // signal; a later try may find a descriptor free.
            crate::telemetry::out_of_descriptors("connecting to backends");
            trace_failure(ctx, Failure::ConnectFailed);
            decide_retry(&self.state, session, ctx, Failure::ConnectFailed, None)
        } else {
            after_failure(&self.state, session, ctx, Failure::ConnectFailed, None)
        };
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let retry = match retry::classify(&e) {
            ProxyError::RetryDecided => true,
            ProxyError::Intercepted => false,
            ProxyError::Client(outcome) => {
                ctx.outcome = Some(outcome);
                false
            }
            ProxyError::Backend(outcome, failure) => {
                ctx.outcome = Some(outcome);
                ctx.reached_backend = Some(outcome);
                // Once part of an answer went out, another backend's answer
                // cannot follow.
                if answer_started(session) {
                    record_failure(ctx, failure);
                    false
                } else {
                    after_failure(&self.state, session, ctx, failure, None)
                }
            }
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forward::add_headers(upstream_request, &ctx.client, &ctx.request_id)?;
        if let Some(trace) = ctx.trace.as_deref() {
            crate::trace::set_upstream_headers(trace, upstream_request)?;
        }
        match ctx.route_and_pool() {
            Some((route, _)) => rewrite::upstream_request(&route.config, upstream_request),
            None => Ok(()),
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if !is_final(upstream_response.status) {
            // 100 Continue and friends: the final answer is still to come.
            return Ok(());
        }
        let status = upstream_response.status.as_u16();
        ctx.record_head(session.req_header(), status, &upstream_response.headers);
        let Some((route, _)) = ctx.route_and_pool() else {
            return Ok(());
        };
        let retryable = route.config.retry.on.statuses.contains(&status);
        let intercept = route.config.intercept_errors && status >= 500;
        // Read only where it is used: most answers are neither.
        let backend_retry_after = (retryable || intercept)
            .then(|| retry::backend_retry_after(&upstream_response.headers))
            .flatten();
        let failure = Failure::Status(status);
        if retryable && after_failure(&self.state, session, ctx, failure, backend_retry_after) {
            ctx.reached_backend = Some(Outcome::UpstreamStatus(status));
            let why = format!("backend answered {status}");
            return Err(Error::explain(RETRYABLE_STATUS, why).into_up());
        }
        if let Some(trace) = ctx.trace.as_deref_mut() {
            trace.attempt_answered(status);
        }
        record_answer(ctx, status, !retryable);
        if intercept {
            return Err(intercept_answer(ctx, status, backend_retry_after));
        }
        if let Some(kind) = stream::opened(status, &upstream_response.headers) {
            ctx.stream_opened(kind);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(chunk) = body else {
            return Ok(());
        };
        ctx.body_bytes += chunk.len() as u64;
        let limit = ctx
            .route_and_pool()
            .map_or(u64::MAX, |(route, _)| route.config.max_body_bytes);
        if ctx.body_bytes > limit {
            // Cut before this chunk goes out: the backend never gets the whole
            // request, and its connection is dropped with the error.
            *body = None;
            ctx.outcome = Some(Outcome::BodyTooLarge);
            return Err(Error::explain(
                BODY_TOO_LARGE,
                format!("request body over the route's {limit} bytes"),
            )
            .into_down());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some((route, _)) = ctx.route_and_pool() {
            let hsts = ctx.snapshot.hsts.as_ref();
            rewrite::response(
                &route.config.response_headers,
                hsts,
                ctx.client.https,
                response,
            )?;
        }
        if let Some(cookie) = ctx.room_cookie.take() {
            // A waiting room's new pass, on the admitted shopper's first answer.
            response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        if self.state.is_shutting_down() {
            // The listeners are closing: say so rather than leave the shopper
            // a connection that dies under its next request.
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(chunk) = body {
            ctx.bytes_sent += chunk.len();
        }
        Ok(None)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        ctx.record_body(body.as_ref(), end_of_stream);
        if end_of_stream {
            // The backend is done: its slot and in-flight count are free even if
            // the shopper is still downloading. In-flight first, so the next
            // waiter finds the backend under its cap.
            ctx.in_flight = None;
            ctx.permit = None;
        }
        Ok(None)
    }

    // An intercepted 5xx is answered with a page; logging it as an error too
    // would double every backend error in the log. A shopper who closed the
    // connection is no error of the proxy's either (the access log has it).
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, error: &Error) -> bool {
        // Running out of descriptors is logged once per episode (telemetry).
        error.etype() == &INTERCEPTED_STATUS
            || out_of_descriptors(error)
            // A stream that idled out ended as configured; it is counted.
            || (ctx.open_stream.is_some() && error.etype() == &ReadTimedout)
            || (error.esource() == &ErrorSource::Downstream && error.etype() == &ConnectionClosed)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        let outcome = *ctx
            .outcome
            .get_or_insert_with(|| Outcome::from_error(error));
        if ctx.request_id.is_empty() {
            ctx.request_id = forward::request_id(None);
        }
        // Once the backend's header went out, the only honest signal left is to
        // cut the connection: the shopper's client then sees a truncated answer.
        let can_answer = outcome.has_page() && !answer_started(session);
        let mut keep_alive = false;
        if can_answer {
            match self.answer(session, ctx, outcome).await {
                Ok(sent) => keep_alive = sent.keep_alive,
                Err(e) => log::debug!(
                    "request {}: could not send the {} page: {e}",
                    ctx.request_id,
                    outcome.reason()
                ),
            }
        }
        FailToProxy {
            error_code: outcome.status(),
            // The page said keep-alive only if the connection can carry the
            // next request (see respond::keeps_connection). pingora honours
            // this only for failures before its proxy loop.
            can_reuse_downstream: keep_alive,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Ctx) {
        // The backend's in-flight count ends before the pool slot is handed to
        // the next waiter, so that waiter finds the backend under its cap.
        ctx.in_flight = None;
        ctx.permit = None;
        if let Some(open) = ctx.open_stream.take() {
            if error.is_some_and(|e| e.etype() == &ReadTimedout) {
                open.idled_out();
            }
        }
        if let Some(keyed) = ctx.keyed.take() {
            if let Some((route, _)) = ctx.route_and_pool() {
                if let Some(edge) = &route.idempotency {
                    let may_have_reached = ctx.connected || ctx.reached_backend.is_some();
                    edge.settle(*keyed, may_have_reached, &ctx.request_id).await;
                }
            }
        }
        let status = final_status(session, ctx);
        let total = ctx.started.elapsed();
        match ctx.route_and_pool() {
            Some((route, _)) => route.metrics.observe(status, total.as_secs_f64()),
            None => self.state.metrics.unrouted(status, total.as_secs_f64()),
        }
        let page = ctx.outcome.is_some_and(Outcome::has_page);
        if let Some(trace) = ctx.trace.as_deref() {
            finish_trace(&self.state, session.req_header(), ctx, trace, status, page);
        }
        if status >= 500 || page {
            self.state.error_samples.offer(|| error_sample(ctx, status));
        }
        if self.access_log.enabled() {
            self.access_log
                .write(&access_record(session.req_header(), ctx, status, total));
        }
        if log::log_enabled!(target: "access", log::Level::Info) {
            debug_access_line(session.req_header(), ctx, status);
        }
    }
}

/// Latency, passive health and the adaptive limit's sample for an answer the
/// shopper gets (`record_health`: false for a retryable status, already
/// counted as a failure).
fn record_answer(ctx: &mut RequestCtx, status: u16, record_health: bool) {
    ctx.outcome = None;
    // One reading of the clock: the upstream time is the latency sample.
    let latency = ctx.in_flight.as_ref().map(InFlight::elapsed);
    ctx.upstream_time = latency;
    if ctx.stream == Some(stream::StreamKind::LongPoll) {
        // A long poll's answer is slow by design: no latency sample.
        return;
    }
    if let (Some(in_flight), Some(latency), Some((_, pool))) =
        (&ctx.in_flight, latency, ctx.route_and_pool())
    {
        if record_health {
            let result = if status >= 500 {
                UpstreamResult::ServerError
            } else {
                UpstreamResult::Success
            };
            pool.record_attempt(in_flight, result, Signal::from_status(status), latency);
        }
        if let Some(permit) = ctx.permit.as_mut() {
            permit.record(latency, status >= 500);
        }
    }
}

/// Replaces a backend's 5xx answer with the page: its body (perhaps a stack
/// trace) never reaches the client; `fail_to_proxy` answers, keeping the status.
fn intercept_answer(
    ctx: &mut RequestCtx,
    status: u16,
    backend_retry_after: Option<Duration>,
) -> Box<Error> {
    if ctx.retry_after.is_none() {
        ctx.retry_after = backend_retry_after.map(respond::retry_after_seconds);
    }
    ctx.outcome = Some(Outcome::UpstreamStatus(status));
    Error::explain(INTERCEPTED_STATUS, format!("backend answered {status}")).into_up()
}

/// The access log's record of a finished request.
fn access_record<'a>(
    request: &'a RequestHeader,
    ctx: &'a RequestCtx,
    status: u16,
    total: Duration,
) -> AccessRecord<'a> {
    let route = ctx.route_and_pool();
    AccessRecord {
        time: crate::telemetry::now_rfc3339(),
        request_id: &ctx.request_id,
        trace_id: ctx.trace_id(),
        client: ctx.client.ip,
        route: route.map(|(r, _)| r.config.name.as_str()),
        pool: route.map(|(_, p)| p.name.as_str()),
        backend: ctx.tried.last().map(|addr| addr.to_string()),
        method: request.method.as_str(),
        path: request.uri.path(),
        status,
        attempts: ctx.tries(),
        queue_wait: ctx.queue_wait.as_secs_f64(),
        upstream_time: ctx.upstream_time.map(|t| t.as_secs_f64()),
        total_time: total.as_secs_f64(),
        bytes: ctx.bytes_sent,
        outcome: ctx.ending(),
    }
}

/// The one-line access record of the `access` log target (debugging aid).
fn debug_access_line(request: &RequestHeader, ctx: &RequestCtx, status: u16) {
    let tried: Vec<String> = ctx.tried.iter().map(ToString::to_string).collect();
    log::info!(
        target: "access",
        "{} {} {} status={} tried={} outcome={} trace={}",
        ctx.request_id,
        request.method,
        request.uri,
        status,
        if tried.is_empty() { "-".to_string() } else { tried.join(",") },
        ctx.outcome.map_or("-", Outcome::reason),
        ctx.trace_id().unwrap_or("-"),
    );
}

/// The end of a traced request (`page`: it ended in one of ordergate's
/// pages): its spans go to the export queue when it is kept
/// ([`crate::trace::finish`]).
fn finish_trace(
    state: &State,
    request: &RequestHeader,
    ctx: &RequestCtx,
    trace: &crate::trace::Trace,
    status: u16,
    page: bool,
) {
    if !trace.keep(page) {
        return;
    }
    let route = ctx.route_and_pool();
    let ending = crate::trace::Ending {
        request_id: &ctx.request_id,
        method: request.method.as_str(),
        path: request.uri.path(),
        status,
        route: route.map(|(r, _)| r.config.name.as_str()),
        pool: route.map(|(_, p)| p.name.as_str()),
        outcome: ctx.ending(),
        page,
        room: route
            .and_then(|(r, _)| ctx.snapshot.rooms.for_route(&r.config.name))
            .map(|room| room.settings.name.as_str()),
        tracestate: None,
    };
    let pools = &ctx.snapshot.pools;
    crate::trace::finish(trace, &state.tracer, &request.headers, ending, |i| {
        pools.get(i).map_or("", |p| p.name.as_str())
    });
}

/// What `/status` shows of a request that ended in an error.
fn error_sample(ctx: &RequestCtx, status: u16) -> crate::telemetry::ErrorSample {
    crate::telemetry::ErrorSample {
        time: crate::telemetry::now_rfc3339(),
        request_id: ctx.request_id.clone(),
        trace_id: ctx.trace_id().map(str::to_string),
        route: ctx
            .route_and_pool()
            .map(|(route, _)| route.config.name.clone()),
        status,
        outcome: ctx.ending(),
    }
}
