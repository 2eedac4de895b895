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

use crate::admission::{Priority, Reject};
use crate::connection;
use crate::ctx::RequestCtx;
use crate::forward;
use crate::idempotency::{self, KeyCheck, KeyedRequest, Verdict};
use crate::maintenance;
use crate::respond::{self, Outcome, PageContext, Sent, BODY_TOO_LARGE};
use crate::retry::{self, Attempt, Failure};
use crate::stale;
use crate::state::State;
use crate::telemetry::{AccessLogger, AccessRecord, IdempotencyResult, UpstreamResult};
use crate::upstream::outlier::Signal;

/// The error that turns a backend's retryable status (e.g. 503) into another try.
const RETRYABLE_STATUS: ErrorType = ErrorType::new("RetryableUpstreamStatus");
/// The error that replaces a backend's 5xx answer with ordergate's page.
const INTERCEPTED_STATUS: ErrorType = ErrorType::new("InterceptedUpstreamStatus");

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

    /// Answers the request with ordergate's own page for `outcome`.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        outcome: Outcome,
    ) -> Result<Sent> {
        if outcome.backends_failed() {
            if let Some(sent) = self.serve_stale(session, ctx, false).await? {
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
            link: match outcome {
                Outcome::OrderOutcomeUnknown | Outcome::AlreadyProcessed => ctx
                    .route_and_pool()
                    .and_then(|(route, _)| route.idempotency.as_ref())
                    .and_then(|i| i.settings.orders_url.as_deref()),
                _ => None,
            },
            notice: ctx.notice.as_deref(),
        };
        // pingora 0.9 drops the shopper's connection after any failure in its
        // proxy loop (once upstream_peer ran), whatever fail_to_proxy says.
        let forced_close = self.state.is_shutting_down() || ctx.proxying;
        let sent = respond::send(session, ctx.pages(), outcome, &context, forced_close).await?;
        ctx.bytes_sent += sent.bytes;
        Ok(sent)
    }

    /// Maintenance, in `request_filter`: `Some(true)` when the shopper got the
    /// maintenance page, `None` to go on.
    async fn maintenance(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some(route) = ctx.route.and_then(|index| snapshot.routes.get(index)) else {
            return Ok(None);
        };
        let rules = maintenance::Rules {
            route: &route.name,
            route_config: route.maintenance.as_ref(),
            global_config: snapshot.maintenance.as_ref(),
        };
        if !rules.may_apply(&self.state.maintenance) {
            return Ok(None);
        }
        let now = SystemTime::now();
        let request = session.req_header();
        match rules.decide(
            &self.state.maintenance,
            &request.headers,
            ctx.client_ip,
            now,
        ) {
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
        let Some((route, pool)) = ctx.route_and_pool() else {
            return Ok(None);
        };
        let Some(room) = snapshot.rooms.for_route(&route.name) else {
            return Ok(None);
        };
        let pressure = crate::room::Pressure::of_pool(pool);
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        let header = session.req_header();
        let request = crate::room::Request {
            method: &header.method,
            path: header.uri.path(),
            headers: &header.headers,
            tls,
        };
        match room.decide(&request, pressure, Instant::now()).await {
            crate::room::Decision::Pass(cookie) => {
                ctx.room_cookie = cookie;
                Ok(None)
            }
            crate::room::Decision::Wait(view, cookie) => {
                let outcome = Outcome::WaitingRoom;
                ctx.outcome = Some(outcome);
                ctx.retry_after = Some(view.refresh);
                self.state
                    .metrics
                    .rejection(ctx.route_name(), outcome.reason());
                let page = respond::RoomPage {
                    request_id: &ctx.request_id,
                    room: &room.settings.name,
                    view,
                    set_cookie: cookie.as_deref(),
                };
                let forced_close = self.state.is_shutting_down();
                let sent = respond::send_room(session, ctx.pages(), &page, forced_close).await?;
                ctx.bytes_sent += sent.bytes;
                Ok(Some(true))
            }
        }
    }

    /// Idempotency at the edge, in `request_filter`: `Some(true)` when the
    /// request was answered (a replay or a page), `None` to go on.
    async fn idempotency(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some(route) = ctx.route.and_then(|index| snapshot.routes.get(index)) else {
            return Ok(None);
        };
        let Some(idempotency) = &route.idempotency else {
            return Ok(None);
        };
        let request = session.req_header();
        let key = match idempotency.settings.check(
            &route.name,
            &request.method,
            &request.headers,
            ctx.client_ip,
        ) {
            KeyCheck::NotKeyed | KeyCheck::Absent => return Ok(None),
            KeyCheck::Missing => {
                idempotency.metrics.count(IdempotencyResult::Missing);
                return self
                    .reject(session, ctx, Outcome::IdempotencyKeyMissing)
                    .await
                    .map(Some);
            }
            KeyCheck::Invalid => {
                idempotency.metrics.count(IdempotencyResult::Invalid);
                return self
                    .reject(session, ctx, Outcome::IdempotencyKeyInvalid)
                    .await
                    .map(Some);
            }
            KeyCheck::Key(key) => key,
        };
        let body = read_small_body(session).await?;
        let request = session.req_header();
        let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let fingerprint = idempotency::fingerprint(&request.method, target, &body);
        match idempotency.begin(&key, &fingerprint).await {
            Verdict::Forward => {
                ctx.keyed = Some(Box::new(KeyedRequest::new(key)));
                Ok(None)
            }
            Verdict::Replay(answer) => {
                let forced_close = self.state.is_shutting_down();
                let sent = respond::send_kept(
                    session,
                    &answer,
                    respond::Kept::Replay,
                    &ctx.request_id,
                    forced_close,
                )
                .await?;
                ctx.bytes_sent += sent.bytes;
                Ok(Some(true))
            }
            Verdict::Refuse(outcome) => self.reject(session, ctx, outcome).await.map(Some),
        }
    }

    /// Admission, the last step of `request_filter`: a slot in the serving
    /// pool (waiting in its queue by priority), or its page. A pool whose queue
    /// is full hands the request to its backup pool, if it has one.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        priority: Priority,
        deadline: Instant,
        arrived: Instant,
    ) -> Result<bool> {
        loop {
            let Some((_, pool)) = ctx.route_and_pool() else {
                return self.reject(session, ctx, Outcome::Internal).await;
            };
            let capacity = pool.capacity();
            let backup = pool.backup();
            let admission = Arc::clone(&pool.state.admission);
            if capacity == 0 {
                // Nothing can take the request: say so now rather than queue it.
                return self.reject(session, ctx, Outcome::NoHealthyBackend).await;
            }
            admission.set_capacity(capacity);
            let stale_on_overload = ctx
                .route_and_pool()
                .and_then(|(route, _)| route.stale.as_ref())
                .is_some_and(|(config, _)| config.on_overload);
            if stale_on_overload {
                let status = admission.snapshot();
                if status.in_use >= status.limit
                    && self.serve_stale(session, ctx, true).await?.is_some()
                {
                    // A kept copy now rather than a wait in the queue.
                    return Ok(true);
                }
            }

            // Biased: a free slot is taken without ever starting the client watch
            // (which would cost a read and an epoll registration per request).
            let admitted = tokio::select! {
                biased;
                admitted = admission.admit(priority, deadline) => Some(admitted),
                () = client_closed(session) => None,
            };
            // Only a request that waited (or was turned away) has a queue wait; a
            // free slot is not a wait of a few nanoseconds.
            let waited = !matches!(&admitted, Some(Ok(permit)) if !permit.queued());
            if waited {
                ctx.queue_wait = arrived.elapsed();
            }
            return match admitted {
                Some(Ok(permit)) => {
                    ctx.permit = Some(permit);
                    if waited {
                        let pool = ctx
                            .route_and_pool()
                            .map_or("", |(_, pool)| pool.name.as_str());
                        self.state.metrics.queue_wait(
                            pool,
                            priority.as_str(),
                            ctx.queue_wait.as_secs_f64(),
                        );
                    }
                    Ok(false)
                }
                Some(Err(Reject::QueueFull { .. })) if backup.is_some() => {
                    ctx.pool = backup;
                    continue;
                }
                Some(Err(reject)) => {
                    let outcome = match reject {
                        Reject::QueueFull { .. } => Outcome::QueueFull,
                        Reject::QueueTimeout { .. } => Outcome::QueueTimeout,
                        Reject::Shed { .. } => Outcome::Shed,
                    };
                    ctx.retry_after = Some(whole_seconds(reject.retry_after()));
                    self.reject(session, ctx, outcome).await
                }
                None => {
                    ctx.outcome = Some(Outcome::ClientGone);
                    Err(Error::explain(
                        ConnectionClosed,
                        "the client left while waiting in the queue",
                    )
                    .into_down())
                }
            };
        }
    }

    /// Serves the route's kept copy of this read instead of a page, when the
    /// route keeps copies for this case (`overload`: instead of queueing) and
    /// one matches; `None` otherwise.
    async fn serve_stale(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        overload: bool,
    ) -> Result<Option<Sent>> {
        let snapshot = Arc::clone(&ctx.snapshot);
        let Some((route, _)) = ctx.route_and_pool_in(&snapshot) else {
            return Ok(None);
        };
        let Some((config, cache)) = &route.stale else {
            return Ok(None);
        };
        if !(if overload {
            config.on_overload
        } else {
            config.on_error
        }) || answer_started(session)
        {
            return Ok(None);
        }
        let request = session.req_header();
        let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let host = request_host(request).unwrap_or_default();
        let Some(copy) = stale::key_for(config, &request.method, host, target, &request.headers)
            .and_then(|key| cache.find(&key, &request.headers))
        else {
            return Ok(None);
        };
        let kept = respond::Kept::Stale {
            age: copy.age(std::time::Instant::now()),
        };
        let forced_close = self.state.is_shutting_down() || ctx.proxying;
        let sent =
            respond::send_kept(session, &copy.answer, kept, &ctx.request_id, forced_close).await?;
        ctx.bytes_sent += sent.bytes;
        ctx.outcome = None;
        ctx.served_stale = true;
        self.state.metrics.stale_served(&route.name);
        Ok(Some(sent))
    }

    /// Keeps the read's whole answer as the route's stale copy.
    fn keep_stale_copy(&self, ctx: &mut RequestCtx) {
        let Some(recording) = ctx.stale_recording.take() else {
            return;
        };
        let Some((route, _)) = ctx.route_and_pool() else {
            return;
        };
        if let (Some((_, cache)), Some((key, copy))) =
            (&route.stale, recording.finish(&ctx.request_id))
        {
            cache.keep(key, copy);
        }
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
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip())
}

/// Reads a keyed request's body before forwarding when it is small (declared
/// up to [`idempotency::FINGERPRINTED_BODY`]): pingora keeps it and sends it
/// upstream as it sends a retry. A larger or chunked body stays unread and is
/// fingerprinted by its declared length only.
async fn read_small_body(session: &mut Session) -> Result<Bytes> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let Some(len) = declared.filter(|len| *len <= idempotency::FINGERPRINTED_BODY) else {
        return Ok(Bytes::from(format!("length:{declared:?}")));
    };
    session.as_mut().enable_retry_buffering();
    let mut body = Vec::with_capacity(len as usize);
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// The host the request names: the Host header, or the authority of an
/// absolute-form request line.
fn request_host(request: &RequestHeader) -> Option<&str> {
    request
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri.host())
}

/// A backend's `Retry-After`, in seconds (the HTTP-date form is not honoured).
fn retry_after(response: &ResponseHeader) -> Option<Duration> {
    let seconds = response
        .headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    seconds.trim().parse().ok().map(Duration::from_secs)
}

/// Whole seconds for a Retry-After header: rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u32 {
    (wait.as_millis().div_ceil(1000)).clamp(1, 3600) as u32
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

/// Whether a connect failed because the process could not open a socket (out
/// of file descriptors), as opposed to the backend refusing or not answering.
fn out_of_descriptors(error: &Error) -> bool {
    error
        .root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(crate::telemetry::is_out_of_descriptors)
}

/// Whether a final (non-1xx) response header already went to the client: then
/// nothing else can be sent, neither a page nor another backend's answer.
fn answer_started(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|r| !r.status.is_informational())
}

/// Feeds a failed attempt into passive health and the attempt metrics.
fn record_failure(ctx: &RequestCtx, failure: Failure) {
    let (signal, result) = match failure {
        Failure::Status(code) => (Signal::from_status(code), UpstreamResult::ServerError),
        Failure::ConnectFailed => (Signal::GatewayFailure, UpstreamResult::ConnectFailed),
        Failure::Reset => (Signal::GatewayFailure, UpstreamResult::Reset),
        Failure::Timeout => (Signal::GatewayFailure, UpstreamResult::Timeout),
    };
    if let (Some((_, pool)), Some(in_flight)) = (ctx.route_and_pool(), &ctx.in_flight) {
        pool.record_result(in_flight.backend(), result, signal, in_flight.elapsed());
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
/// again, and the backoff.
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
    let attempt = Attempt {
        failure,
        tries: ctx.tries(),
        replay_safe,
        remaining: ctx.remaining(),
        retry_after,
    };
    let verdict = retry::decide(&route.retry, &attempt).and_then(|backoff| {
        if pool
            .state
            .retry_budget
            .try_retry(Instant::now(), pool.retry_budget())
        {
            Ok(backoff)
        } else {
            Err(retry::Stop::Budget)
        }
    });
    match verdict {
        Ok(backoff) => {
            state.metrics.retry(&route.name, failure.as_str());
            ctx.backoff = Some(backoff);
            true
        }
        Err(stop @ (retry::Stop::Attempts | retry::Stop::Budget))
            if ctx.move_to_backup(replay_safe) =>
        {
            // Out of tries on this pool: its backup pool takes the request
            // (only where the request may be sent again at all).
            state.metrics.retry(&route.name, failure.as_str());
            log::debug!(
                "request {}: {} on its pool, moved to the backup pool",
                ctx.request_id,
                stop.as_str()
            );
            true
        }
        Err(stop) => {
            state.metrics.retry_denied(&route.name, stop.as_str());
            if let Some(wait) = retry_after {
                ctx.retry_after = Some(whole_seconds(wait));
            }
            false
        }
    }
}

/// Whether this request may be sent again after it reached a backend.
fn replay_safe(session: &Session, route: &crate::route::Route) -> bool {
    let request = session.req_header();
    // A body larger than pingora's retry buffer cannot be sent again.
    // A keyed order on a route whose backends ignore keys is replayed only
    // when it never reached a backend, as an unkeyed one.
    retry::replay_safe(&request.method, &request.headers, &route.retry)
        && !session.as_ref().retry_buffer_truncated()
        && route
            .idempotency
            .as_ref()
            .is_none_or(|i| i.settings.allows_replay(&request.method))
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // pingora calls this right after it parsed the request head.
        crate::connection::head_received();
        RequestCtx::new(self.state.snapshot())
    }

    // A marker that the connection carried a request before: the next request's
    // header deadline then starts after the keep-alive idle wait (see `connection`).
    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        Some(Box::new(()))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.client_ip = client_ip(session);
        let request = session.req_header();
        ctx.request_id =
            forward::request_id(request.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.route = ctx.snapshot.routes.classify(
            request_host(request),
            request.uri.path(),
            &request.method,
        );
        if connection::head_too_large(request, &ctx.snapshot.limits) {
            return self.reject(session, ctx, Outcome::HeaderTooLarge).await;
        }
        ctx.choose_pool(Instant::now());
        let Some((route, pool)) = ctx.route_and_pool() else {
            return self.reject(session, ctx, Outcome::NoRoute).await;
        };
        if connection::declared_body_too_large(&request.headers, route.max_body_bytes) {
            return self.reject(session, ctx, Outcome::BodyTooLarge).await;
        }
        let now = Instant::now();
        let deadline = now + route.timeout;
        let priority = route.priority;
        pool.state.retry_budget.record_request(now);
        // Counted in Redis for every instance with `[store] kind = "redis"`.
        let over_rate_limit = if route.shares_rate_limit() {
            route
                .over_shared_rate_limit(&session.req_header().headers, ctx.client_ip)
                .await
        } else {
            route.over_rate_limit(&session.req_header().headers, ctx.client_ip)
        };
        if over_rate_limit {
            ctx.retry_after = Some(1);
            return self.reject(session, ctx, Outcome::RateLimited).await;
        }
        ctx.deadline = Some(deadline);
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
        self.admit(session, ctx, priority, deadline, now).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.proxying = true;
        if let Some(backoff) = ctx.backoff.take() {
            tokio::time::sleep(backoff).await;
        }
        // The previous attempt, if any, is over.
        ctx.in_flight = None;
        let remaining = ctx.remaining();
        let (route, pool) = ctx.route_and_pool().ok_or_else(|| {
            Error::explain(InternalError, "no route was set before upstream_peer")
        })?;
        let timeout = route
            .retry
            .per_try_timeout
            .unwrap_or(pool.request_timeout())
            .min(pool.request_timeout())
            .min(remaining);
        if timeout.is_zero() {
            ctx.outcome = Some(ctx.reached_backend.unwrap_or(Outcome::UpstreamTimeout));
            return Err(
                Error::explain(ReadTimedout, "the route's deadline passed before a try").into_up(),
            );
        }
        let mut picked = pool.pick(
            &session.req_header().headers,
            ctx.client_ip,
            &ctx.tried,
            timeout,
        );
        // No backend of the pool can take it and nothing reached one yet: its
        // backup pools, in turn.
        let may_replay = ctx
            .route_and_pool()
            .is_some_and(|(route, _)| replay_safe(session, route));
        while picked.is_none() && ctx.move_to_backup(may_replay) {
            if let Some((_, backup)) = ctx.route_and_pool() {
                picked = backup.pick(
                    &session.req_header().headers,
                    ctx.client_ip,
                    &ctx.tried,
                    timeout.min(backup.request_timeout()),
                );
            }
        }
        match picked {
            Some(pick) => {
                ctx.tried.push(pick.in_flight.backend().addr);
                ctx.in_flight = Some(pick.in_flight);
                Ok(Box::new(pick.peer))
            }
            None => {
                let pool = ctx
                    .route_and_pool()
                    .map_or("", |(_, pool)| pool.name.as_str());
                let error = Error::explain(
                    ConnectNoRoute,
                    format!("pool {pool} has no backend that can take the request"),
                );
                ctx.fail_before_backend(Outcome::NoHealthyBackend);
                Err(error)
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
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
        _ctx: &RequestCtx,
        _error: &Error,
        context: ProxyWarnLogContext,
    ) -> bool {
        matches!(context, ProxyWarnLogContext::UpstreamRetry)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.fail_before_backend(Outcome::ConnectFailed);
        let retry = if out_of_descriptors(&e) {
            // ordergate's own limit, not the backend's fault: no health
            // signal; a later try may find a descriptor free.
            crate::telemetry::out_of_descriptors("connecting to backends");
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
        ctx: &mut RequestCtx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if e.etype() == &RETRYABLE_STATUS {
            // Decided in upstream_response_filter, before anything reached the client.
            e.set_retry(true);
            return e;
        }
        if e.etype() == &INTERCEPTED_STATUS {
            // The backend's 5xx, recorded; fail_to_proxy sends the page instead.
            e.set_retry(false);
            return e;
        }
        if e.etype() == &BODY_TOO_LARGE || e.esource() == &ErrorSource::Downstream {
            // The client's side failed: nothing to hold against the backend.
            ctx.outcome = Some(Outcome::from_error(&e));
            e.set_retry(false);
            return e;
        }
        // The connection was open, so the request may have reached the backend.
        let outcome = match Outcome::from_error(&e) {
            Outcome::UpstreamTimeout => Outcome::UpstreamTimeout,
            Outcome::UpstreamError => Outcome::UpstreamError,
            _ => Outcome::UpstreamReset,
        };
        ctx.outcome = Some(outcome);
        ctx.reached_backend = Some(outcome);
        let failure = if outcome == Outcome::UpstreamTimeout {
            Failure::Timeout
        } else {
            Failure::Reset
        };
        // Once part of an answer went out, another backend's answer cannot follow.
        let retry = if answer_started(session) {
            record_failure(ctx, failure);
            false
        } else {
            after_failure(&self.state, session, ctx, failure, None)
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        forward::add_headers(upstream_request, ctx.client_ip, tls, &ctx.request_id)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if upstream_response.status.is_informational() {
            // 100 Continue and friends: the final answer is still to come.
            return Ok(());
        }
        if let Some(keyed) = ctx.keyed.as_mut() {
            keyed.answer_head(status, &upstream_response.headers);
        }
        ctx.stale_recording = ctx.route_and_pool().and_then(|(route, _)| {
            let (config, _) = route.stale.as_ref()?;
            if !stale::storable(config, status, &upstream_response.headers) {
                return None;
            }
            let request = session.req_header();
            let target = request.uri.path_and_query().map_or("/", |p| p.as_str());
            let key = stale::key_for(
                config,
                &request.method,
                request_host(request).unwrap_or_default(),
                target,
                &request.headers,
            )?;
            let limit = usize::try_from(config.max_bytes / 16).unwrap_or(usize::MAX);
            Some(Box::new(stale::Recording::new(
                key,
                status,
                &upstream_response.headers,
                &request.headers,
                limit,
            )))
        });
        let Some((retryable, intercept)) = ctx.route_and_pool().map(|(route, _)| {
            (
                route.retry.on.statuses.contains(&status),
                route.intercept_errors && status >= 500,
            )
        }) else {
            return Ok(());
        };
        let backend_retry_after = retry_after(upstream_response);
        if retryable
            && after_failure(
                &self.state,
                session,
                ctx,
                Failure::Status(status),
                backend_retry_after,
            )
        {
            ctx.reached_backend = Some(Outcome::UpstreamStatus(status));
            return Err(
                Error::explain(RETRYABLE_STATUS, format!("backend answered {status}")).into_up(),
            );
        }
        if let (Some(in_flight), Some((_, pool))) = (&ctx.in_flight, ctx.route_and_pool()) {
            let latency = in_flight.elapsed();
            if !retryable {
                let result = if status >= 500 {
                    UpstreamResult::ServerError
                } else {
                    UpstreamResult::Success
                };
                pool.record_result(
                    in_flight.backend(),
                    result,
                    Signal::from_status(status),
                    latency,
                );
            }
            ctx.upstream_time = Some(latency);
            if let Some(permit) = ctx.permit.as_mut() {
                permit.record(latency, status >= 500);
            }
        }
        ctx.outcome = None;
        if intercept {
            // The backend's body (perhaps a stack trace) never reaches the client:
            // fail_to_proxy answers with the page, keeping the status.
            if ctx.retry_after.is_none() {
                ctx.retry_after = backend_retry_after.map(whole_seconds);
            }
            ctx.outcome = Some(Outcome::UpstreamStatus(status));
            return Err(
                Error::explain(INTERCEPTED_STATUS, format!("backend answered {status}")).into_up(),
            );
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chunk) = body else {
            return Ok(());
        };
        ctx.body_bytes += chunk.len() as u64;
        let limit = ctx
            .route_and_pool()
            .map_or(u64::MAX, |(route, _)| route.max_body_bytes);
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
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
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
        ctx: &mut RequestCtx,
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
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(keyed) = ctx.keyed.as_mut() {
            let max = ctx
                .snapshot
                .routes
                .get(ctx.route.unwrap_or(usize::MAX))
                .and_then(|route| route.idempotency.as_ref())
                .map_or(0, |i| i.settings.max_response_bytes);
            keyed.answer_body(body.as_ref(), end_of_stream, max);
        }
        if let Some(recording) = ctx.stale_recording.as_mut() {
            if let Some(chunk) = body.as_ref() {
                recording.push(chunk);
            }
            if end_of_stream {
                self.keep_stale_copy(ctx);
            }
        }
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
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // Running out of descriptors is logged once per episode (telemetry).
        error.etype() == &INTERCEPTED_STATUS
            || out_of_descriptors(error)
            || (error.esource() == &ErrorSource::Downstream && error.etype() == &ConnectionClosed)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        error: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let outcome = *ctx
            .outcome
            .get_or_insert_with(|| Outcome::from_error(error));
        if ctx.request_id.is_empty() {
            ctx.request_id = forward::request_id(None);
        }
        // Once the backend's header went out, the only honest signal left is to
        // cut the connection: the shopper's client then sees a truncated answer.
        let can_answer = outcome != Outcome::ClientGone && !answer_started(session);
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

    async fn logging(&self, session: &mut Session, _error: Option<&Error>, ctx: &mut RequestCtx) {
        // The backend's in-flight count ends before the pool slot is handed to
        // the next waiter, so that waiter finds the backend under its cap.
        ctx.in_flight = None;
        ctx.permit = None;
        if let Some(keyed) = ctx.keyed.take() {
            if let Some(idempotency) = ctx
                .route_and_pool()
                .and_then(|(route, _)| route.idempotency.as_ref())
            {
                let may_have_reached = ctx.connected || ctx.reached_backend.is_some();
                idempotency
                    .settle(*keyed, may_have_reached, &ctx.request_id)
                    .await;
            }
        }
        let backend = ctx.tried.last().copied();
        let status = session
            .response_written()
            .filter(|r| !r.status.is_informational())
            .map_or_else(
                || ctx.outcome.map_or(0, Outcome::status),
                |r| r.status.as_u16(),
            );
        let total = ctx.started.elapsed();
        if let Some((route, _)) = ctx.route_and_pool() {
            route.metrics.observe(status, total.as_secs_f64());
        } else {
            self.state.metrics.unrouted(status, total.as_secs_f64());
        }
        if self.access_log.enabled() {
            let request = session.req_header();
            let route = ctx.route_and_pool();
            self.access_log.write(&AccessRecord {
                time: crate::telemetry::now_rfc3339(),
                request_id: &ctx.request_id,
                route: route.map(|(r, _)| r.name.as_str()),
                pool: route.map(|(_, p)| p.name.as_str()),
                backend: backend.map(|addr| addr.to_string()),
                method: request.method.as_str(),
                path: request.uri.path(),
                status,
                attempts: ctx.tries(),
                queue_wait: ctx.queue_wait.as_secs_f64(),
                upstream_time: ctx.upstream_time.map(|t| t.as_secs_f64()),
                total_time: total.as_secs_f64(),
                bytes: ctx.bytes_sent,
                outcome: if ctx.served_stale {
                    Some("stale")
                } else {
                    ctx.outcome.map(Outcome::reason)
                },
            });
        }
        if log::log_enabled!(target: "access", log::Level::Info) {
            let tried: Vec<String> = ctx.tried.iter().map(ToString::to_string).collect();
            log::info!(
                target: "access",
                "{} {} {} status={} tried={} outcome={}",
                ctx.request_id,
                session.req_header().method,
                session.req_header().uri,
                status,
                if tried.is_empty() { "-".to_string() } else { tried.join(",") },
                ctx.outcome.map_or("-", Outcome::reason),
            );
        }
    }
}
