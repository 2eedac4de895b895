//! The pingora `ProxyHttp` implementation. Each phase only wires: the decisions
//! live in `route`, `upstream`, `retry`, `forward` and `respond`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use tokio::time::Instant;

use crate::ctx::RequestCtx;
use crate::forward;
use crate::respond::{self, Outcome};
use crate::retry::{self, Attempt, Failure};
use crate::state::State;
use crate::upstream::outlier::Signal;

/// The error that turns a backend's retryable status (e.g. 503) into another try.
const RETRYABLE_STATUS: ErrorType = ErrorType::new("RetryableUpstreamStatus");

/// The proxy service: holds the served state.
#[derive(Debug)]
pub struct Proxy {
    state: Arc<State>,
}

impl Proxy {
    /// A proxy serving the given state.
    pub fn new(state: Arc<State>) -> Proxy {
        Proxy { state }
    }
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip())
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

/// Passive health and the retry decision for a failed attempt. Returns whether
/// to try again; sets the backoff and the outcome the shopper sees otherwise.
fn after_failure(
    session: &Session,
    ctx: &mut RequestCtx,
    failure: Failure,
    retry_after: Option<Duration>,
) -> bool {
    let signal = match failure {
        Failure::Status(code) => Signal::from_status(code),
        _ => Signal::GatewayFailure,
    };
    let Some((route, pool)) = ctx.route_and_pool() else {
        return false;
    };
    if let Some(in_flight) = &ctx.in_flight {
        pool.record_result(in_flight.backend(), signal, in_flight.elapsed());
    }
    let request = session.req_header();
    // A body larger than pingora's retry buffer cannot be sent again.
    let replay_safe = retry::replay_safe(&request.method, &request.headers, &route.retry)
        && !session.as_ref().retry_buffer_truncated();
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
            ctx.backoff = Some(backoff);
            true
        }
        Err(stop) => {
            log::debug!(
                "request {}: no retry after {failure:?}: {}",
                ctx.request_id,
                stop.as_str()
            );
            false
        }
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.state.snapshot())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let request = session.req_header();
        ctx.request_id =
            forward::request_id(request.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.route = ctx.snapshot.routes.classify(
            request_host(request),
            request.uri.path(),
            &request.method,
        );
        let now = Instant::now();
        let deadline = ctx.route_and_pool().map(|(route, pool)| {
            pool.state.retry_budget.record_request(now);
            now + route.timeout
        });
        if deadline.is_some() {
            ctx.deadline = deadline;
            return Ok(false);
        }
        ctx.outcome = Some(Outcome::NoRoute);
        respond::send(session, Outcome::NoRoute, &ctx.request_id).await?;
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
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
            ctx.outcome = Some(Outcome::UpstreamTimeout);
            return Err(
                Error::explain(ReadTimedout, "the route's deadline passed before a try").into_up(),
            );
        }
        match pool.pick(
            &session.req_header().headers,
            client_ip(session),
            &ctx.tried,
            timeout,
        ) {
            Some(pick) => {
                ctx.tried.push(pick.in_flight.backend().addr);
                ctx.in_flight = Some(pick.in_flight);
                Ok(Box::new(pick.peer))
            }
            None => {
                let error = Error::explain(
                    ConnectNoRoute,
                    format!(
                        "pool {} has no backend that can take the request",
                        pool.name
                    ),
                );
                ctx.outcome = Some(Outcome::NoHealthyBackend);
                Err(error)
            }
        }
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.outcome = Some(Outcome::ConnectFailed);
        let retry = after_failure(session, ctx, Failure::ConnectFailed, None);
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
        let outcome = Outcome::from_error(&e);
        ctx.outcome = Some(outcome);
        let failure = match outcome {
            Outcome::UpstreamTimeout => Failure::Timeout,
            Outcome::ConnectFailed => Failure::ConnectFailed,
            Outcome::UpstreamReset | Outcome::UpstreamError => Failure::Reset,
            // The client's side failed: nothing to hold against the backend.
            _ => {
                e.set_retry(false);
                return e;
            }
        };
        let retry = after_failure(session, ctx, failure, None);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chain) = forward::forwarded_for(&upstream_request.headers, client_ip(session)) {
            upstream_request.insert_header("x-forwarded-for", chain)?;
        }
        upstream_request.insert_header("x-forwarded-proto", "http")?;
        upstream_request.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        let retryable = ctx
            .route_and_pool()
            .is_some_and(|(route, _)| route.retry.on.statuses.contains(&status));
        if retryable
            && after_failure(
                session,
                ctx,
                Failure::Status(status),
                retry_after(upstream_response),
            )
        {
            return Err(
                Error::explain(RETRYABLE_STATUS, format!("backend answered {status}")).into_up(),
            );
        }
        if !retryable {
            if let (Some((_, pool)), Some(in_flight)) = (ctx.route_and_pool(), &ctx.in_flight) {
                pool.record_result(
                    in_flight.backend(),
                    Signal::from_status(status),
                    in_flight.elapsed(),
                );
            }
        }
        ctx.outcome = None;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
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
        let can_answer = outcome != Outcome::ClientGone && session.response_written().is_none();
        if can_answer {
            if let Err(e) = respond::send(session, outcome, &ctx.request_id).await {
                log::debug!(
                    "request {}: could not send the {} page: {e}",
                    ctx.request_id,
                    outcome.reason()
                );
            }
        }
        FailToProxy {
            error_code: outcome.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let backend = ctx.in_flight.take();
        if log::log_enabled!(target: "access", log::Level::Info) {
            let request = session.req_header();
            let status = session.response_written().map_or(0, |r| r.status.as_u16());
            let tried: Vec<String> = ctx.tried.iter().map(ToString::to_string).collect();
            log::info!(
                target: "access",
                "{} {} {} status={} backend={} tried={} outcome={} error={}",
                ctx.request_id,
                request.method,
                request.uri,
                status,
                backend.as_ref().map_or_else(|| "-".to_string(), |b| b.backend().addr.to_string()),
                if tried.is_empty() { "-".to_string() } else { tried.join(",") },
                ctx.outcome.map_or("-", Outcome::reason),
                error.map_or_else(|| "-".to_string(), |e| e.etype().as_str().to_string()),
            );
        }
    }
}
