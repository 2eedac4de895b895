//! The waiting room: when a flash sale brings more shoppers than the order
//! servers can take, those beyond capacity get a fair place in line, with their
//! position and an estimated wait, instead of a 503 to retry by luck. Shoppers
//! are let in strictly in ticket order as capacity frees, and an admitted
//! shopper keeps a pass for `session` after their last request, so a checkout
//! under way is never sent back to the line.
//!
//! A request on a room's route goes through [`Room::decide`]:
//!
//! | the shopper has… | the room… |
//! |---|---|
//! | a bypass (path, method, header) | lets it through, never counts it |
//! | a valid pass | lets it through; the session extends |
//! | a valid ticket, called | lets it through with a pass cookie |
//! | a valid ticket, not yet called | shows the waiting page (position, estimate); the place is kept |
//! | nothing, or a forged, tampered, other-room or expired cookie (counted) | a new shopper: let in at once when nobody waits and there is room, otherwise a ticket at the back (a random draw before `opens_at`) |
//!
//! Capacity: at most `max_active` shoppers on the site (passes in use plus
//! calls not picked up) and/or `admit_per_minute` new ones, and only while the
//! pool has headroom (some backend takes traffic and its queue's expected wait
//! is under half the queue timeout — see [`Pressure::of`]). In `on_overload` mode the
//! room forms only when the pool would queue; until then newcomers pass (with a
//! pass, so they are not sent back once it forms). The estimate is the tickets
//! ahead (less the measured share of abandoned ones) divided by the admission
//! rate measured while the line was not empty, so it follows the pool.

pub mod cookie;
pub mod metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method};
use ring::hmac;
use tokio::time::Instant;

use crate::admission::AdmissionStatus;
pub use crate::config::{Bypass, RoomConfig, RoomMode, Secret};
use crate::live::LiveState;
use crate::store::room::{Arrival, CheckIn, Control, Limits, LineStats, RoomLine};
use crate::telemetry::Metrics;
use cookie::{Invalid, Token};
pub use metrics::{RoomMetrics, RoomVecs};

impl Bypass {
    fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.methods.contains(method)
            || self
                .paths
                .iter()
                .any(|prefix| crate::route::prefix_matches(prefix, path))
            || self.header.as_ref().is_some_and(|(name, want)| {
                headers.get_all(name).iter().any(|value| {
                    want.as_ref()
                        .is_none_or(|want| crate::secret::same(value.as_bytes(), want.as_bytes()))
                })
            })
    }
}

/// How loaded the room's pool is, from its admission state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    /// The pool would queue a request now (or no backend can take traffic):
    /// an `on_overload` room forms.
    pub would_queue: bool,
    /// The pool can take more shoppers: some backend takes traffic and the
    /// pool is not overloaded (see [`Pressure::of`]).
    pub headroom: bool,
    /// The wait the pool's queue promises now (its length over the drain rate).
    pub queue_wait: Duration,
    /// Requests the pool turned away (shed, queue full, queue timeout) since
    /// it started: what steers the room's [`Pace`].
    pub rejected: u64,
}

/// The room stops calling shoppers while the pool's queue promises a wait of
/// this share of the queue timeout: well before the pool sheds (at the
/// timeout, half of it for a queue standing longer than the timeout). It is
/// the brake for a sudden drop of capacity; the [`Pace`] keeps the queue far
/// below it otherwise. A standing queue is no signal here: a pool the room
/// keeps busy always has a few requests waiting, and a gate on it (or on the
/// queue of this instant) would stop the calls, then leave the backends idle
/// a second later, when the shoppers not called would have come.
const OVERLOAD_SHARE_OF_TIMEOUT: u32 = 2;

/// How often the pace moves, at most.
const PACE_TICK: Duration = Duration::from_millis(100);
/// The share of the pace taken off when the pool turned requests away...
const PACE_CUT: f64 = 0.05;
/// ...at most once in this long: what a cut changes shows only once the
/// shoppers called before it have come and made their requests.
const PACE_HOLD: Duration = Duration::from_secs(1);
/// Share of the configured rate the pace gains back per second while the
/// pool turns nobody away.
const PACE_RECOVERY: f64 = 0.02;
/// The pace never goes below this share of the configured rate: the line
/// always moves a little, so the estimate keeps being measured.
const PACE_FLOOR: f64 = 0.05;

/// The share of `admit_per_minute` a room calls at.
///
/// A called shopper comes at their next check-in, a second or more later, and
/// then makes requests for a while. A room calling at the configured rate while
/// the pool has headroom overfills the pool whenever that rate is more than the
/// backends take; a gate on the pool's queue opens and closes on noise and
/// leaves the backends idle between waves. The pace follows the pool's sure
/// signal of too many shoppers instead, as TCP's congestion window follows
/// losses: a small cut when the pool turned requests away (shed, queue full,
/// queue timeout), at most once per second, and a slow climb back while it
/// turns nobody away. The backends stay just below the point where the pool
/// sheds.
///
/// Cutting it while the brake holds as well was measured: the backends then
/// ran at 91% of what they can serve instead of 97%, for admitted requests'
/// p50 of 140 ms instead of 216 ms and no shed request.
///
/// It is this instance's view of its pool; a reload starts it again at the
/// configured rate.
#[derive(Debug)]
pub struct Pace {
    share: f64,
    rejected: Option<u64>,
    last_cut: Option<Instant>,
    at: Option<Instant>,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            share: 1.0,
            rejected: None,
            last_cut: None,
            at: None,
        }
    }
}

impl Pace {
    /// Moves the pace by what the pool shows at `now`; the share it calls at.
    pub fn steer(&mut self, pressure: &Pressure, now: Instant) -> f64 {
        let (Some(at), Some(seen)) = (self.at, self.rejected) else {
            self.at = Some(now);
            self.rejected = Some(pressure.rejected);
            return self.share;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed < PACE_TICK {
            return self.share;
        }
        self.at = Some(now);
        self.rejected = Some(pressure.rejected);
        // (A pool removed and added again counts from zero: no rejection.)
        let turned_away = pressure.rejected > seen;
        let held = self
            .last_cut
            .is_some_and(|cut| now.saturating_duration_since(cut) < PACE_HOLD);
        if !held {
            if turned_away {
                self.share *= 1.0 - PACE_CUT;
                self.last_cut = Some(now);
            } else {
                self.share += PACE_RECOVERY * elapsed.as_secs_f64().min(1.0);
            }
        }
        self.share = self.share.clamp(PACE_FLOOR, 1.0);
        self.share
    }
}

impl Pressure {
    /// From the pool's admission state and capacity (sum of in-flight caps of
    /// the backends that can take traffic). Headroom: some backend takes
    /// traffic and the queue's wait (its length over the measured drain rate;
    /// before any drain is measured, a queue of the limit counts as long) is
    /// under half the queue timeout.
    pub fn of(status: &AdmissionStatus, capacity: usize) -> Pressure {
        let limit = status.limit.min(capacity);
        let waiting: usize = status.waiting.iter().sum();
        let overload = status.queue_timeout / OVERLOAD_SHARE_OF_TIMEOUT;
        let queue_wait = if waiting == 0 {
            Duration::ZERO
        } else if status.drain_per_second > 0.0 {
            Duration::try_from_secs_f64(waiting as f64 / status.drain_per_second)
                .unwrap_or(Duration::MAX)
        } else if waiting >= limit.max(1) {
            // Nothing drained yet: a queue of the limit counts as long.
            overload
        } else {
            Duration::ZERO
        };
        Pressure {
            would_queue: capacity == 0 || waiting > 0 || status.in_use >= limit,
            headroom: capacity > 0 && queue_wait < overload,
            queue_wait,
            rejected: status.rejected,
        }
    }

    /// The pressure of a pool now.
    pub fn of_pool(pool: &crate::upstream::Pool) -> Pressure {
        Pressure::of(&pool.state.admission.snapshot(), pool.capacity())
    }

    /// A pool with room to spare (for tests and rooms without a pool view).
    pub const IDLE: Pressure = Pressure {
        would_queue: false,
        headroom: true,
        queue_wait: Duration::ZERO,
        rejected: 0,
    };
}

/// What the waiting page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Place in line, from 1; `None` before the opening (drawn then).
    pub position: Option<u64>,
    /// Tickets ahead; `None` before the opening.
    pub ahead: Option<u64>,
    /// Estimated wait, whole seconds; `None` when nobody is being admitted
    /// (paused, or the pool admits nobody).
    pub estimated_wait: Option<u32>,
    /// When to check again, whole seconds (Retry-After and the page's refresh).
    pub refresh: u32,
    /// Seconds until the room opens, before `opens_at`.
    pub opens_in: Option<u32>,
}

/// What to do with a request on a room's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through; set this cookie (a new pass) on the answer.
    Pass(Option<String>),
    /// Answer with the waiting page; set this cookie (a new ticket) on it.
    Wait(View, Option<String>),
    /// The line holds `max_waiting` shoppers: the `line_full` page.
    Full,
    /// The client's address got `ticket_rate_per_address` new tickets this
    /// second already: the 429 page.
    TooManyArrivals,
}

impl Decision {
    /// A bounded label for traces: `pass`, `wait`, `full`, `too_many_arrivals`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Pass(_) => "pass",
            Decision::Wait(..) => "wait",
            Decision::Full => "full",
            Decision::TooManyArrivals => "too_many_arrivals",
        }
    }

    /// The place in line, when the shopper waits.
    pub fn position(&self) -> Option<u64> {
        match self {
            Decision::Wait(view, _) => view.position,
            _ => None,
        }
    }
}

/// A request as the room sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Method.
    pub method: &'a Method,
    /// Path.
    pub path: &'a str,
    /// Headers (cookies, bypass header).
    pub headers: &'a HeaderMap,
    /// Whether it came over TLS (cookies get `Secure`).
    pub tls: bool,
    /// The client's address (a pass serves at most a few).
    pub client_ip: Option<std::net::IpAddr>,
}

/// The longest estimate said, in seconds (11 days): beyond it a number means nothing.
const MAX_ESTIMATE: f64 = 1e6;
/// `opens_at` further ahead than this (10 years) counts as this far.
const FAR_FUTURE: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Weight, in seconds of measurement, of the configured rate before the line
/// has been measured: the first estimates use the configuration, later ones
/// what the line does.
const PRIOR_SECONDS: f64 = 2.0;

/// A room, compiled for a snapshot; its line is live state shared by snapshots.
pub struct Room {
    /// The room's settings.
    pub settings: RoomConfig,
    key: hmac::Key,
    cookie_name: String,
    line: Arc<dyn RoomLine>,
    metrics: RoomMetrics,
    opens_at: Option<Instant>,
    pace: std::sync::Mutex<Pace>,
    /// New arrivals per client address (this instance's count).
    arrivals: crate::ratelimit::MemoryRateLimiter,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("name", &self.settings.name)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl Room {
    /// A room on `line`, with its metric handles.
    pub fn new(settings: RoomConfig, line: Arc<dyn RoomLine>, metrics: RoomMetrics) -> Room {
        let opens_at = settings.opens_at.map(|at| {
            let now = Instant::now();
            match at.duration_since(SystemTime::now()) {
                // An instant centuries away (a typo) must not overflow.
                Ok(ahead) => now.checked_add(ahead.min(FAR_FUTURE)).unwrap_or(now),
                Err(past) => now.checked_sub(past.duration()).unwrap_or(now),
            }
        });
        Room {
            key: hmac::Key::new(hmac::HMAC_SHA256, &settings.secret.0),
            cookie_name: format!("ordergate_room_{}", settings.name),
            line,
            metrics,
            opens_at,
            pace: std::sync::Mutex::new(Pace::default()),
            arrivals: crate::ratelimit::MemoryRateLimiter::new(),
            settings,
        }
    }

    /// The cookie holding this room's ticket or pass.
    pub fn cookie_name(&self) -> &str {
        &self.cookie_name
    }

    /// The room's line.
    pub fn line(&self) -> &Arc<dyn RoomLine> {
        &self.line
    }

    fn before_open(&self, control: Control, now: Instant) -> bool {
        control != Control::Open && self.opens_at.is_some_and(|at| now < at)
    }

    /// The share of `admit_per_minute` the room calls at now.
    pub fn pace_share(&self) -> f64 {
        self.pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .share
    }

    /// What the line may do now, given the operator's control and the pool
    /// (which also steers the pace).
    pub fn limits(&self, control: Control, pressure: Pressure, now: Instant) -> Limits {
        let before_open = self.before_open(control, now);
        let share = self
            .pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .steer(&pressure, now);
        Limits {
            may_call: !before_open && control != Control::Paused && pressure.headroom,
            paused: control == Control::Paused,
            open: !before_open,
            max_active: self.settings.max_active.map(u64::from),
            per_second: self
                .settings
                .admit_per_minute
                .map(|n| f64::from(n) / 60.0 * share),
            session: self.settings.session,
            max_session: self.settings.max_session,
            max_waiting: Some(u64::from(self.settings.max_waiting)),
            ticket_timeout: self.settings.ticket_timeout,
        }
    }

    /// The admission rate the line is expected to move at, per second: what
    /// was measured while shoppers waited, blended with the configured rate
    /// until measurements accumulate; 0 while the operator paused the room.
    /// A pool without headroom stops calls but not the estimate: the measured
    /// rate already counts such stalls.
    pub fn rate(&self, stats: &LineStats, limits: &Limits) -> f64 {
        if limits.paused {
            return 0.0;
        }
        let configured = limits.per_second;
        let prior = configured.unwrap_or_else(|| {
            // Every pass frees its slot within a session at the latest.
            let max = self.settings.max_active.map_or(1.0, f64::from);
            max / self.settings.session.as_secs_f64().max(1.0)
        });
        let measured = (stats.rate_admissions + prior * PRIOR_SECONDS)
            / (stats.rate_busy_seconds + PRIOR_SECONDS);
        configured.map_or(measured, |c| measured.min(c))
    }

    /// The waiting page's numbers for a shopper with `ahead` tickets before them.
    pub fn view(
        &self,
        ahead: Option<u64>,
        stats: &LineStats,
        limits: &Limits,
        now: Instant,
    ) -> View {
        let rate = self.rate(stats, limits);
        let refresh = whole_seconds(self.settings.refresh);
        let opens_in = (!limits.open)
            .then(|| self.opens_at.map(|at| at.saturating_duration_since(now)))
            .flatten();
        let estimate = match (ahead, opens_in) {
            (Some(ahead), _) if rate > 0.0 => {
                let live = ahead as f64 * (1.0 - stats.skipped_share.clamp(0.0, 1.0));
                Some(Duration::from_secs_f64(
                    ((live + 1.0) / rate).min(MAX_ESTIMATE),
                ))
            }
            // Before the opening: the wait until it, then half of the draws.
            (None, Some(until)) if rate > 0.0 => {
                Some(until.saturating_add(Duration::from_secs_f64(
                    ((stats.drawn as f64 / 2.0 + 1.0) / rate).min(MAX_ESTIMATE),
                )))
            }
            _ => None,
        };
        // Near the front, check again at half the estimate: a called shopper
        // holds a slot until they come, so they should not come late.
        let refresh = match (opens_in, estimate) {
            (Some(until), _) => refresh.min(whole_seconds(until).max(1)),
            (None, Some(wait)) => refresh.min(whole_seconds(wait / 2)),
            (None, None) => refresh,
        };
        View {
            position: ahead.map(|a| a + 1),
            ahead,
            estimated_wait: estimate.map(|wait| wait.as_secs_f64().round() as u32),
            refresh,
            opens_in: opens_in.map(whole_seconds),
        }
    }

    /// Decides for one request on a route this room covers.
    pub async fn decide(
        &self,
        request: &Request<'_>,
        pressure: Pressure,
        now: Instant,
    ) -> Decision {
        let control = self.line.control().await;
        if self.settings.mode == RoomMode::Off
            || control == Control::Closed
            || self
                .settings
                .bypass
                .matches(request.method, request.path, request.headers)
        {
            return Decision::Pass(None);
        }
        let limits = self.limits(control, pressure, now);
        let client = crate::store::room::client_tag(request.client_ip);
        let epoch = self.line.epoch();
        // The first of the room's cookies that is valid (a browser may hold an
        // old one beside it); otherwise why the first was not.
        let mut token = Err(None);
        for value in crate::forward::cookies(request.headers, &self.cookie_name) {
            match cookie::decode(&self.key, &self.settings.name, epoch, value) {
                Ok(found) => {
                    token = Ok(found);
                    break;
                }
                Err(reason) => token = token.or(Err(Some(reason))),
            }
        }
        let rejected = match token {
            Ok(Token::Pass { id, .. }) => {
                if self.line.touch(id, client, now, &limits).await {
                    return Decision::Pass(None);
                }
                Some(Invalid::Expired)
            }
            Ok(Token::Ticket { seq, eta, .. }) => {
                let (found, outcome) = self.line.check_in(seq, client, now, &limits).await;
                self.metrics.abandoned(outcome.abandoned);
                match found {
                    CheckIn::Admitted(admission) => {
                        if admission.first {
                            self.metrics.admitted(admission.waited, eta);
                        }
                        return Decision::Pass(Some(self.pass_cookie(admission, request.tls)));
                    }
                    CheckIn::Waiting { ahead } => {
                        let stats = self.line.stats(now, &limits).await;
                        let view = self.view(Some(ahead), &stats, &limits, now);
                        return Decision::Wait(view, None);
                    }
                    CheckIn::Drawn { .. } => {
                        let stats = self.line.stats(now, &limits).await;
                        return Decision::Wait(self.view(None, &stats, &limits, now), None);
                    }
                    CheckIn::Unknown => Some(Invalid::Expired),
                }
            }
            Err(reason) => reason,
        };
        if let Some(reason) = rejected {
            self.metrics.rejected(reason);
        }
        // A new shopper.
        if !self.may_arrive(request.client_ip).await {
            return Decision::TooManyArrivals;
        }
        let direct = self.settings.mode == RoomMode::OnOverload
            && limits.open
            && control != Control::Paused
            && !pressure.would_queue;
        let (arrival, outcome) = self.line.arrive(client, now, &limits, direct).await;
        self.metrics.abandoned(outcome.abandoned);
        let (seq, ahead) = match arrival {
            Arrival::Admitted(admission) => {
                self.metrics.admitted(admission.waited, None);
                return Decision::Pass(Some(self.pass_cookie(admission, request.tls)));
            }
            Arrival::Waiting { seq, ahead } => (seq, Some(ahead)),
            Arrival::Drawn { seq, .. } => (seq, None),
            Arrival::Full => return Decision::Full,
        };
        let stats = self.line.stats(now, &limits).await;
        self.metrics
            .observe_line(&stats, self.rate(&stats, &limits));
        let view = self.view(ahead, &stats, &limits, now);
        self.metrics.estimated_wait(view.estimated_wait);
        let ticket = Token::Ticket {
            seq,
            issued: unix_now(),
            eta: view.estimated_wait,
        };
        let value = cookie::encode(&self.key, &self.settings.name, epoch, ticket);
        Decision::Wait(view, Some(self.set_cookie(&value, request.tls)))
    }

    /// Counts a new arrival of the client's address: whether it is within
    /// `ticket_rate_per_address` (with as many again at once).
    async fn may_arrive(&self, client_ip: Option<std::net::IpAddr>) -> bool {
        use crate::ratelimit::{Quota, RateLimiter};
        let rate = self.settings.ticket_rate_per_address;
        let quota = Quota {
            per_second: rate,
            burst: rate,
            max_clients: 100_000,
        };
        let address = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        self.arrivals.admit(address.as_bytes(), quota).await
    }

    fn pass_cookie(&self, admission: crate::store::room::Admission, tls: bool) -> String {
        let token = Token::Pass {
            id: admission.pass,
            number: admission.number,
            issued: unix_now(),
        };
        let value = cookie::encode(&self.key, &self.settings.name, self.line.epoch(), token);
        self.set_cookie(&value, tls)
    }

    /// A `Set-Cookie` value: for the whole site (a room covers several
    /// routes), not readable by scripts, sent on top-level navigation.
    fn set_cookie(&self, value: &str, tls: bool) -> String {
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax{}",
            self.cookie_name,
            if tls { "; Secure" } else { "" }
        )
    }

    /// Updates the room's gauges from its line (at scrape time and on the admin API).
    pub async fn status(&self, pressure: Pressure, now: Instant) -> RoomStatus {
        let control = self.line.control().await;
        let limits = self.limits(control, pressure, now);
        let stats = self.line.stats(now, &limits).await;
        let rate = self.rate(&stats, &limits);
        self.metrics.observe_line(&stats, rate);
        let view = self.view(Some(stats.waiting), &stats, &limits, now);
        self.metrics.estimated_wait(view.estimated_wait);
        RoomStatus {
            control,
            pace: self.pace_share(),
            queue_wait: pressure.queue_wait,
            stats,
            admitted_per_minute: rate * 60.0,
            estimated_wait: view.estimated_wait,
            before_open: !limits.open,
        }
    }
}

/// A room's state for the admin API.
#[derive(Debug, Clone, Copy)]
pub struct RoomStatus {
    /// The operator's setting.
    pub control: Control,
    /// The share of `admit_per_minute` the room calls at now (see [`Pace`]).
    pub pace: f64,
    /// The wait the pool's queue promises now.
    pub queue_wait: Duration,
    /// The line.
    pub stats: LineStats,
    /// The admission rate estimates use, per minute.
    pub admitted_per_minute: f64,
    /// The estimated wait of a shopper arriving now, seconds.
    pub estimated_wait: Option<u32>,
    /// Whether `opens_at` is still ahead.
    pub before_open: bool,
}

/// The rooms of a snapshot, and which covers each route.
#[derive(Debug, Default)]
pub struct Rooms {
    rooms: Vec<Room>,
    by_route: HashMap<String, usize>,
}

impl Rooms {
    /// Compiles the configured rooms onto their live lines.
    pub fn new(configs: &[RoomConfig], live: &LiveState, metrics: &Metrics) -> Rooms {
        let mut rooms = Rooms::default();
        for config in configs {
            let index = rooms.rooms.len();
            for route in &config.routes {
                rooms.by_route.insert(route.clone(), index);
            }
            rooms.rooms.push(Room::new(
                config.clone(),
                live.room_line(&config.name),
                metrics.registered(RoomVecs::new).room(&config.name),
            ));
        }
        rooms
    }

    /// The room covering a route, if any.
    pub fn for_route(&self, route: &str) -> Option<&Room> {
        self.rooms.get(*self.by_route.get(route)?)
    }

    /// A room by name.
    pub fn get(&self, name: &str) -> Option<&Room> {
        self.rooms.iter().find(|r| r.settings.name == name)
    }

    /// Every room, in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Room> {
        self.rooms.iter()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whole seconds, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u32 {
    u32::try_from(d.as_millis().div_ceil(1000))
        .unwrap_or(u32::MAX)
        .max(1)
}

#[cfg(test)]
mod tests;
