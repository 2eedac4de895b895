//! The pingora `ProxyHttp` implementation. Each phase only wires: the decisions
//! live in `route`, `upstream`, `forward` and `respond`.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use crate::ctx::RequestCtx;
use crate::forward;
use crate::respond::{self, Outcome};
use crate::state::State;

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

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.state.snapshot())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let request = session.req_header();
        ctx.request_id = forward::request_id(
            request.headers.get("x-request-id").map(|v| v.as_bytes()),
        );
        ctx.route = ctx.snapshot.routes.classify(
            request_host(request),
            request.uri.path(),
            &request.method,
        );
        if ctx.route.is_some() {
            return Ok(false);
        }
        ctx.outcome = Some(Outcome::NoRoute);
        respond::send(session, Outcome::NoRoute, &ctx.request_id).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let snapshot = &ctx.snapshot;
        let pool = ctx
            .route
            .and_then(|index| snapshot.routes.get(index))
            .and_then(|route| snapshot.pools.get(route.pool))
            .ok_or_else(|| Error::explain(InternalError, "no route was set before upstream_peer"))?;
        match pool.pick(&session.req_header().headers, client_ip(session)) {
            Some((peer, in_flight)) => {
                ctx.in_flight = Some(in_flight);
                Ok(Box::new(peer))
            }
            None => {
                let error = Error::explain(
                    ConnectNoRoute,
                    format!("pool {} has no backend that can take the request", pool.name),
                );
                ctx.outcome = Some(Outcome::NoHealthyBackend);
                Err(error)
            }
        }
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
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(in_flight) = &ctx.in_flight {
            in_flight.backend().observe_latency(in_flight.elapsed());
        }
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

    async fn fail_to_proxy(&self, session: &mut Session, error: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let outcome = *ctx.outcome.get_or_insert_with(|| Outcome::from_error(error));
        if ctx.request_id.is_empty() {
            ctx.request_id = forward::request_id(None);
        }
        // Once the backend's header went out, the only honest signal left is to
        // cut the connection: the shopper's client then sees a truncated answer.
        let can_answer = outcome != Outcome::ClientGone && session.response_written().is_none();
        if can_answer {
            if let Err(e) = respond::send(session, outcome, &ctx.request_id).await {
                log::debug!("request {}: could not send the {} page: {e}", ctx.request_id, outcome.reason());
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
            log::info!(
                target: "access",
                "{} {} {} status={} backend={} outcome={} error={}",
                ctx.request_id,
                request.method,
                request.uri,
                status,
                backend.as_ref().map_or_else(|| "-".to_string(), |b| b.backend().addr.to_string()),
                ctx.outcome.map_or("-", Outcome::reason),
                error.map_or_else(|| "-".to_string(), |e| e.etype().as_str().to_string()),
            );
        }
    }
}
