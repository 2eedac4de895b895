//! What one request's trace records while it runs: a few ids, offsets from
//! its start and `&'static str` labels, written by the phases at a cost of a
//! field store each. Spans are built from it only at the end, and only for a
//! request that is kept ([`Trace::keep`]).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::context::{self, TraceParent, SAMPLED};

/// Which requests are kept by chance (the rest of the rule is in [`Trace::keep`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// A trace whose id's low 64 bits are under this is kept (ratio × 2⁶⁴).
    threshold: u64,
    /// Ratio 1: every trace.
    always: bool,
    /// Keep a trace whose client said `sampled`.
    client_sampled: bool,
}

impl Sampler {
    /// Keeps `ratio` (0 to 1) of traces by their id, the same choice every
    /// service that samples by trace id makes; `client_sampled`: also every
    /// trace the client's `traceparent` marks sampled.
    pub fn new(ratio: f64, client_sampled: bool) -> Sampler {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Sampler {
            // `as` saturates: 1.0 × 2⁶⁴ is u64::MAX, and `always` covers it.
            threshold: (ratio * 18_446_744_073_709_551_616.0) as u64,
            always: ratio >= 1.0,
            client_sampled,
        }
    }

    fn head(&self, trace_id: &[u8; 16], client: Option<&TraceParent>) -> bool {
        if self.always || (self.client_sampled && client.is_some_and(TraceParent::sampled)) {
            return true;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        u64::from_be_bytes(low) < self.threshold
    }
}

/// A part of the request's time before any attempt: the waiting room's
/// decision or the wait for a pool slot.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// From the request's start.
    pub start: Duration,
    /// From the request's start.
    pub end: Duration,
    /// How it ended (`admitted`, `queue_timeout`, `pass`, `wait`, ...).
    pub result: &'static str,
    /// The place in a waiting room's line.
    pub position: Option<u64>,
}

/// One try at a backend.
#[derive(Debug, Clone, Copy)]
pub struct AttemptRecord {
    /// Its own span id, sent to the backend as the parent.
    pub span_id: [u8; 8],
    /// From the request's start.
    pub start: Duration,
    /// When it failed; `None`: it lasted to the end of the request.
    pub end: Option<Duration>,
    /// The backend.
    pub backend: SocketAddr,
    /// The pool it was picked from (index into the snapshot's pools).
    pub pool: usize,
    /// The backend's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed (`connect_failed`, `reset`, `timeout`, `status`).
    pub failure: Option<&'static str>,
    /// What was decided after the failure (`retry`, `failover`, or why not).
    pub decision: Option<&'static str>,
}

/// The request moved to its pool's backup pool.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// From the request's start.
    pub at: Duration,
    /// Pool indices.
    pub from: usize,
    /// See `from`.
    pub to: usize,
}

/// One request's trace, carried in its context.
#[derive(Debug)]
pub struct Trace {
    /// The trace: the client's, or a new one.
    pub trace_id: [u8; 16],
    /// The edge span: the whole request at ordergate.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// Whether the client's `tracestate` is passed on (else it is removed).
    pub keep_tracestate: bool,
    /// Kept by the ratio (or the client's flag) from the start.
    pub head_sampled: bool,
    /// The request's start on the monotonic clock (the wall clock is read
    /// only for a kept trace, [`Trace::wall_start`]).
    started: Instant,
    /// `trace_id` as 32 lower-case hex digits, written when first asked for.
    hex: OnceLock<[u8; 32]>,
    /// The waiting room's decision.
    pub room: Option<Step>,
    /// The wait for a pool slot.
    pub queue: Option<Step>,
    /// Every try, in order.
    pub attempts: Vec<AttemptRecord>,
    /// Moves to a backup pool.
    pub failovers: Vec<Failover>,
    /// The idempotency result (`first`, `replay`, or the refusal's outcome).
    pub idempotency: Option<&'static str>,
}

impl Trace {
    /// Starts the request's trace at `started`: the client's trace when its
    /// `traceparent` is valid (with its `tracestate` when that is valid too),
    /// a new one otherwise.
    pub fn start(headers: &HeaderMap, sampler: &Sampler, started: Instant) -> Trace {
        let client = context::client_traceparent(headers);
        let trace_id = client.map_or_else(new_trace_id, |c| c.trace_id);
        Trace {
            trace_id,
            span_id: new_span_id(),
            parent_id: client.map(|c| c.parent_id),
            keep_tracestate: client.is_some() && context::client_tracestate_is_valid(headers),
            head_sampled: sampler.head(&trace_id, client.as_ref()),
            started,
            hex: OnceLock::new(),
            room: None,
            queue: None,
            attempts: Vec::new(),
            failovers: Vec::new(),
            idempotency: None,
        }
    }

    /// The trace id as 32 lower-case hex digits (for logs and pages).
    pub fn trace_id_hex(&self) -> &str {
        let hex = self.hex.get_or_init(|| {
            let mut hex = [0u8; 32];
            context::write_hex(&self.trace_id, &mut hex);
            hex
        });
        std::str::from_utf8(hex).unwrap_or_default()
    }

    /// The wall-clock time of the request's start.
    pub fn wall_start(&self) -> SystemTime {
        SystemTime::now()
            .checked_sub(self.started.elapsed())
            .unwrap_or_else(SystemTime::now)
    }

    /// Time since the request's start.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the trace is exported: kept by chance, or because the request
    /// ended in one of ordergate's pages or needed more than one attempt.
    pub fn keep(&self, ended_in_page: bool) -> bool {
        self.head_sampled || ended_in_page || self.attempts.len() > 1 || !self.failovers.is_empty()
    }

    /// A new attempt at `backend` of pool `pool` begins, with a span of its own.
    pub fn attempt_started(&mut self, backend: SocketAddr, pool: usize) {
        let start = self.now();
        self.attempts.push(AttemptRecord {
            span_id: new_span_id(),
            start,
            end: None,
            backend,
            pool,
            status: None,
            failure: None,
            decision: None,
        });
    }

    /// The current attempt failed (`why`, a bounded label).
    pub fn attempt_failed(&mut self, why: &'static str, status: Option<u16>) {
        let now = self.now();
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.end.get_or_insert(now);
            attempt.failure.get_or_insert(why);
            if status.is_some() {
                attempt.status = status;
            }
        }
    }

    /// What was decided after the current attempt failed.
    pub fn attempt_decided(&mut self, decision: &'static str) {
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.decision = Some(decision);
        }
    }

    /// The current attempt's backend answered with `status`.
    pub fn attempt_answered(&mut self, status: u16) {
        if let Some(attempt) = self.attempts.last_mut() {
            attempt.status = Some(status);
        }
    }

    /// The request moved from pool `from` to its backup `to`.
    pub fn failed_over(&mut self, from: usize, to: usize) {
        let at = self.now();
        self.failovers.push(Failover { at, from, to });
    }

    /// The request waited for a pool slot from `since` (from its start) until
    /// now, and `result` says how that ended.
    pub fn queued(&mut self, since: Duration, result: &'static str) {
        let end = self.now();
        self.queue = Some(Step {
            start: since.min(end),
            end,
            result,
            position: None,
        });
    }

    /// The waiting room decided from `since` until now.
    pub fn room_decided(&mut self, since: Duration, result: &'static str, position: Option<u64>) {
        let end = self.now();
        self.room = Some(Step {
            start: since.min(end),
            end,
            result,
            position,
        });
    }

    /// The `traceparent` for the current attempt: this trace, the attempt's
    /// span as parent, and `sampled` when the trace is sure to be kept (kept
    /// by chance, or a retry, which is always kept).
    pub fn upstream_traceparent(&self) -> Option<HeaderValue> {
        let attempt = self.attempts.last()?;
        let sampled = self.keep(false);
        let text = context::format_traceparent(
            &self.trace_id,
            &attempt.span_id,
            if sampled { SAMPLED } else { 0 },
        );
        HeaderValue::from_bytes(&text).ok()
    }
}

/// A random trace id, never all zeros.
fn new_trace_id() -> [u8; 16] {
    fastrand::u128(1..).to_be_bytes()
}

/// A random span id, never all zeros.
pub(super) fn new_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn a_valid_client_trace_is_joined_and_an_invalid_one_restarted() {
        let never = Sampler::new(0.0, false);
        let joined = Trace::start(
            &headers(&[("traceparent", CLIENT), ("tracestate", "congo=t61")]),
            &never,
            Instant::now(),
        );
        assert_eq!(joined.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            joined.parent_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert!(joined.keep_tracestate);
        assert!(
            !joined.head_sampled,
            "the client's flag is not followed unless asked"
        );

        let forged = CLIENT.to_ascii_uppercase();
        let restarted = Trace::start(
            &headers(&[("traceparent", &forged), ("tracestate", "congo=t61")]),
            &never,
            Instant::now(),
        );
        assert_ne!(restarted.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(restarted.parent_id, None);
        assert!(
            !restarted.keep_tracestate,
            "tracestate goes with an invalid traceparent"
        );
        assert!(restarted
            .trace_id_hex()
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));

        let bad_state = Trace::start(
            &headers(&[("traceparent", CLIENT), ("tracestate", "A=1")]),
            &never,
            Instant::now(),
        );
        assert_eq!(bad_state.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!bad_state.keep_tracestate);
    }

    #[test]
    fn each_attempt_gets_its_own_span_and_retries_are_sent_sampled() {
        let mut trace = Trace::start(&HeaderMap::new(), &Sampler::new(0.0, false), Instant::now());
        assert!(trace.upstream_traceparent().is_none(), "no attempt yet");
        let backend = SocketAddr::from(([127, 0, 0, 1], 8080));
        trace.attempt_started(backend, 0);
        let first = trace.upstream_traceparent().expect("header");
        let first = context::parse_traceparent(first.as_bytes()).expect("valid");
        assert_eq!(first.trace_id, trace.trace_id);
        assert_eq!(first.parent_id, trace.attempts[0].span_id);
        assert!(!first.sampled());
        assert!(!trace.keep(false));
        trace.attempt_failed("reset", None);
        trace.attempt_decided("retry");
        trace.attempt_started(backend, 0);
        let second = trace.upstream_traceparent().expect("header");
        let second = context::parse_traceparent(second.as_bytes()).expect("valid");
        assert_ne!(second.parent_id, first.parent_id);
        assert_ne!(second.parent_id, trace.span_id);
        assert!(second.sampled(), "a retried request is always kept");
        assert!(trace.keep(false));
        assert!(trace.attempts[0].end.is_some() && trace.attempts[1].end.is_none());
    }

    #[test]
    fn the_ratio_and_the_clients_flag_decide_the_head() {
        let all = Sampler::new(1.0, false);
        let none = Sampler::new(0.0, false);
        let half = Sampler::new(0.5, false);
        let mut kept = 0;
        for _ in 0..2000 {
            let id = new_trace_id();
            assert!(all.head(&id, None));
            assert!(!none.head(&id, None));
            kept += usize::from(half.head(&id, None));
        }
        assert!((800..1200).contains(&kept), "{kept}");
        let client = context::parse_traceparent(CLIENT.as_bytes());
        let follow = Sampler::new(0.0, true);
        assert!(follow.head(&[1; 16], client.as_ref()));
        assert!(!none.head(&[1; 16], client.as_ref()));
        assert!(Trace::start(&HeaderMap::new(), &none, Instant::now()).keep(true));
    }
}
