//! The waiting room's line: who waits, in which order, who was called, who is
//! on the site. One [`RoomLine`] per room, kept in memory by [`MemoryLine`]
//! now; a later store shares it across instances (Redis). Every operation is
//! atomic, so two check-ins never take one place or one freed slot.
//!
//! Places are dense sequence numbers in arrival order; the line is called from
//! its head only, strictly in that order. A ticket whose holder stopped checking
//! in for `ticket_timeout` is skipped when the head reaches it (or lost when
//! its holder comes back too late), and a called ticket not picked up within
//! `ticket_timeout` frees its slot. Before a room opens (`opens_at`), arrivals
//! draw a random number instead; at the opening instant the draws are sorted
//! into the line ahead of everyone who comes later.
//!
//! Memory: a place in line takes about 40 bytes, a pass or a call about 48
//! (hash map entries); abandoned places leave from the head once they are a
//! `ticket_timeout` old, so the line holds at most the arrivals of that long
//! beyond the shoppers really waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

/// Ticket numbers with this bit set are pre-opening draws, not places.
pub const DRAW_BIT: u64 = 1 << 63;
/// Pass ids with this bit set were admitted without a place in line.
pub(crate) const DIRECT_BIT: u64 = 1 << 62;

/// Time constant of the measured admission rate, in seconds: long enough that a
/// few bursts of calls average out, short enough that a slowing pool shows in
/// the estimates within seconds.
pub(crate) const RATE_TAU: f64 = 5.0;
/// Weight of one popped ticket in the share of skipped (abandoned) tickets.
pub(crate) const SKIP_WEIGHT: f64 = 0.02;
/// The token bucket of `per_second` holds this many seconds' worth of calls.
pub(crate) const BURST_SECONDS: f64 = 0.25;
/// Most passes a line tracks: about 40 bytes each, so 48 MiB. Beyond it, a
/// room that has not formed lets shoppers in without tracking them (clients
/// that keep no cookie make a new shopper per request).
pub(crate) const MAX_PASSES: usize = 1_200_000;
/// Expired passes and uncollected calls are swept at most this often.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// What the policy allows the line to do in one operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Whether anyone may be called now (false: paused, before opening, or the
    /// pool has no headroom).
    pub may_call: bool,
    /// Whether the operator paused the room: nobody is called and no
    /// estimate is promised.
    pub paused: bool,
    /// Whether the room is open (at or after `opens_at`): the draws join the line.
    pub open: bool,
    /// Most shoppers on the site at once (passes in use plus calls not yet
    /// picked up); `None`: no bound.
    pub max_active: Option<u64>,
    /// Calls per second (a token bucket holding a quarter second's worth);
    /// `None`: no bound.
    pub per_second: Option<f64>,
    /// How long a pass stays valid after its holder's last request.
    pub session: Duration,
    /// How long a waiting shopper may go without checking in (and a called one
    /// without coming) before the place is lost.
    pub ticket_timeout: Duration,
}

/// What a new shopper gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Called at once (the line was empty and there was room): a pass.
    Admitted(Admission),
    /// A place in line: `seq`, with `ahead` tickets before it.
    Waiting {
        /// The ticket number.
        seq: u64,
        /// Tickets ahead (some may belong to shoppers who left).
        ahead: u64,
    },
    /// Before the opening: a draw (`seq` has [`DRAW_BIT`]); `drawn` arrivals so far.
    Drawn {
        /// The ticket number (a draw).
        seq: u64,
        /// Draws so far, this one included.
        drawn: u64,
    },
}

/// What a ticket holder's check-in finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckIn {
    /// The ticket was called (now, or earlier): a pass.
    Admitted(Admission),
    /// Still waiting, with `ahead` tickets before it.
    Waiting {
        /// Tickets ahead (some may belong to shoppers who left).
        ahead: u64,
    },
    /// Before the opening: the place is drawn at the opening instant.
    Drawn {
        /// Draws so far.
        drawn: u64,
    },
    /// The line does not know the ticket (skipped after `ticket_timeout`, or
    /// from before a restart): the holder is a new shopper.
    Unknown,
}

/// A shopper let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The pass id (the ticket number for shoppers who waited).
    pub pass: u64,
    /// Order of calling, from 1: strictly increasing with the ticket number.
    pub number: u64,
    /// Time from the ticket to this admission; `None` for a shopper who never waited.
    pub waited: Option<Duration>,
    /// Whether this check-in is the one that turned the ticket into a pass (a
    /// repeat after that is `false`).
    pub first: bool,
}

/// What the line looks like now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LineStats {
    /// Tickets in line, abandoned ones the head has not reached yet included.
    pub waiting: u64,
    /// Draws waiting for the opening.
    pub drawn: u64,
    /// Called tickets not yet picked up.
    pub called: u64,
    /// Passes in use.
    pub active: u64,
    /// Admissions from the line, decayed (time constant [`RATE_TAU`]).
    pub rate_admissions: f64,
    /// Seconds the line was not empty, decayed alike: the rate is
    /// `rate_admissions / rate_busy_seconds`.
    pub rate_busy_seconds: f64,
    /// Share of tickets reaching the head that were abandoned (moving average).
    pub skipped_share: f64,
    /// Admitted since start, from the line.
    pub admitted_from_line: u64,
    /// Admitted since start without waiting.
    pub admitted_direct: u64,
    /// Tickets skipped or lost since start.
    pub abandoned: u64,
}

/// The operator's hand on a room (admin API); it outlives reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Control {
    /// As configured (`mode`, `opens_at`).
    #[default]
    Auto,
    /// Opened by the operator: admits now, even before `opens_at`.
    Open,
    /// The room steps aside: everyone passes, as with `mode = "off"`; the line
    /// is kept for when it is opened again.
    Closed,
    /// Nobody is admitted; everybody keeps their place (and keeps checking in).
    Paused,
}

impl Control {
    /// The name in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Control::Auto => "auto",
            Control::Open => "open",
            Control::Closed => "closed",
            Control::Paused => "paused",
        }
    }
}

/// Operations on one room's line, each atomic.
///
/// `now` is this process's clock (a paused one in tests): the memory line
/// keeps its times on it. A line shared by several instances keeps its own
/// (the store server's) time instead and takes `now` only as "the same
/// instant" within one operation. The epoch and the operator's setting are
/// then the shared ones, so every instance takes every other's tickets.
#[async_trait]
pub trait RoomLine: Send + Sync + Debug {
    /// A number that changes when the line's state is lost (a restart): tickets
    /// and passes carry it, so old ones are not mistaken for new places.
    fn epoch(&self) -> u64;

    /// A new shopper. `direct` (a room that has not formed): admit at once,
    /// whatever the limits, when nobody waits. Otherwise join the line (a draw
    /// before the opening), called at once only if nobody waits ahead and the
    /// limits allow.
    async fn arrive(&self, now: Instant, limits: &Limits, direct: bool) -> (Arrival, Outcome);

    /// The holder of ticket `seq` checks in.
    async fn check_in(&self, seq: u64, now: Instant, limits: &Limits) -> (CheckIn, Outcome);

    /// The holder of pass `pass` makes a request: true (and the session
    /// extends) while the pass is in use.
    async fn touch(&self, pass: u64, now: Instant, session: Duration) -> bool;

    /// The line now (after calling whoever the limits allow).
    async fn stats(&self, now: Instant, limits: &Limits) -> LineStats;

    /// The operator's setting.
    async fn control(&self) -> Control;

    /// Sets the operator's setting.
    async fn set_control(&self, control: Control);
}

/// What else an operation did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Tickets skipped (their holders stopped checking in) or calls not picked up.
    pub abandoned: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    joined: Instant,
    last_seen: Instant,
    gone: bool,
}

#[derive(Debug, Clone, Copy)]
struct Called {
    at: Instant,
    number: u64,
    joined: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    last_seen: Instant,
    number: u64,
}

/// The admission rate measured while the line was not empty (a line that is
/// empty admits as fast as shoppers come, which says nothing about how fast it
/// moves): decayed admissions over decayed busy time.
#[derive(Debug, Clone, Copy)]
pub struct BusyRate {
    admissions: f64,
    busy_seconds: f64,
    at: Instant,
    busy: bool,
}

impl BusyRate {
    /// An estimator with nothing measured.
    pub fn new(now: Instant) -> BusyRate {
        BusyRate {
            admissions: 0.0,
            busy_seconds: 0.0,
            at: now,
            busy: false,
        }
    }

    /// Moves the estimator to `now` (decay, busy time).
    pub fn advance(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let decay = (-dt / RATE_TAU).exp();
        self.admissions *= decay;
        self.busy_seconds *= decay;
        if self.busy {
            self.busy_seconds += RATE_TAU * (1.0 - decay);
        }
        self.at = now;
    }

    /// An admission of a shopper who waited in line.
    pub fn admitted(&mut self) {
        self.admissions += 1.0;
    }

    /// Whether the line is busy (not empty) from now on.
    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    /// (decayed admissions, decayed busy seconds).
    pub fn parts(&self) -> (f64, f64) {
        (self.admissions, self.busy_seconds)
    }
}

#[derive(Debug)]
struct Line {
    /// Ticket number of `line[0]`.
    head: u64,
    line: VecDeque<Slot>,
    /// Tickets in `line` marked gone.
    gone: u64,
    /// Draws before the opening, by draw.
    draws: BTreeMap<u64, Slot>,
    /// Draw → ticket number, once drawn into the line.
    drawn: HashMap<u64, u64>,
    called: HashMap<u64, Called>,
    active: HashMap<u64, Active>,
    next_number: u64,
    next_direct: u64,
    tokens: f64,
    tokens_at: Instant,
    rate: BusyRate,
    skipped_share: f64,
    last_sweep: Instant,
    admitted_from_line: u64,
    admitted_direct: u64,
    abandoned: u64,
}

impl Line {
    fn new(now: Instant) -> Line {
        Line {
            head: 0,
            line: VecDeque::new(),
            gone: 0,
            draws: BTreeMap::new(),
            drawn: HashMap::new(),
            called: HashMap::new(),
            active: HashMap::new(),
            next_number: 1,
            next_direct: 0,
            // A new room lets its first burst in at once.
            tokens: f64::INFINITY,
            tokens_at: now,
            rate: BusyRate::new(now),
            skipped_share: 0.0,
            last_sweep: now,
            admitted_from_line: 0,
            admitted_direct: 0,
            abandoned: 0,
        }
    }

    fn tail(&self) -> u64 {
        self.head + self.line.len() as u64
    }

    fn waiting(&self) -> u64 {
        self.line.len() as u64 - self.gone
    }

    /// Expires passes past their session and calls nobody came for.
    fn sweep(&mut self, now: Instant, limits: &Limits, outcome: &mut Outcome) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.active
            .retain(|_, a| now.saturating_duration_since(a.last_seen) <= limits.session);
        let before = self.called.len();
        self.called
            .retain(|_, c| now.saturating_duration_since(c.at) <= limits.ticket_timeout);
        let lost = (before - self.called.len()) as u64;
        self.abandoned += lost;
        outcome.abandoned += lost as u32;
    }

    /// Sorts the draws into the line at the opening.
    fn open(&mut self) {
        if self.draws.is_empty() {
            return;
        }
        for (draw, slot) in std::mem::take(&mut self.draws) {
            self.drawn.insert(draw, self.tail());
            self.line.push_back(slot);
        }
    }

    /// Calls tickets from the head while the limits allow.
    fn advance(&mut self, now: Instant, limits: &Limits, outcome: &mut Outcome) {
        self.rate.advance(now);
        self.sweep(now, limits, outcome);
        if limits.open {
            self.open();
        }
        if let Some(rate) = limits.per_second {
            let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
            // A quarter second's worth at most: calls come in small steps
            // (each called shopper brings their requests), not in bursts.
            self.tokens = (self.tokens + elapsed * rate).min((rate * BURST_SECONDS).max(1.0));
        }
        self.tokens_at = now;
        while let Some(slot) = self.line.front().copied() {
            // Abandoned tickets at the head go whether or not anyone may be
            // called, so positions do not count them.
            let stale = now.saturating_duration_since(slot.last_seen) > limits.ticket_timeout;
            if slot.gone || stale {
                self.line.pop_front();
                self.head += 1;
                if slot.gone {
                    self.gone -= 1;
                } else {
                    self.abandoned += 1;
                    outcome.abandoned += 1;
                }
                self.skipped_share += (1.0 - self.skipped_share) * SKIP_WEIGHT;
                continue;
            }
            if !limits.may_call {
                break;
            }
            let on_site = (self.active.len() + self.called.len()) as u64;
            if limits.max_active.is_some_and(|max| on_site >= max) {
                break;
            }
            if limits.per_second.is_some() && self.tokens < 1.0 {
                break;
            }
            self.line.pop_front();
            let seq = self.head;
            self.head += 1;
            self.skipped_share -= self.skipped_share * SKIP_WEIGHT;
            if limits.per_second.is_some() {
                self.tokens -= 1.0;
            }
            let number = self.next_number;
            self.next_number += 1;
            self.called.insert(
                seq,
                Called {
                    at: now,
                    number,
                    joined: slot.joined,
                },
            );
            if slot.joined < now {
                self.rate.admitted();
            }
        }
        self.rate.set_busy(self.waiting() > 0);
    }

    /// Turns a called ticket into a pass.
    fn pick_up(&mut self, seq: u64, now: Instant) -> Option<Admission> {
        let called = self.called.remove(&seq)?;
        self.active.insert(
            seq,
            Active {
                last_seen: now,
                number: called.number,
            },
        );
        let waited = now.saturating_duration_since(called.joined);
        if waited.is_zero() {
            self.admitted_direct += 1;
        } else {
            self.admitted_from_line += 1;
        }
        Some(Admission {
            pass: seq,
            number: called.number,
            waited: (!waited.is_zero()).then_some(waited),
            first: true,
        })
    }

    fn stats(&self) -> LineStats {
        let (rate_admissions, rate_busy_seconds) = self.rate.parts();
        LineStats {
            waiting: self.waiting(),
            drawn: self.draws.len() as u64,
            called: self.called.len() as u64,
            active: self.active.len() as u64,
            rate_admissions,
            rate_busy_seconds,
            skipped_share: self.skipped_share,
            admitted_from_line: self.admitted_from_line,
            admitted_direct: self.admitted_direct,
            abandoned: self.abandoned,
        }
    }
}

/// One room's line in this process's memory.
#[derive(Debug)]
pub struct MemoryLine {
    epoch: u64,
    line: Mutex<Line>,
    control: Mutex<Control>,
}

impl MemoryLine {
    /// An empty line.
    pub fn new() -> MemoryLine {
        MemoryLine {
            // Never 0, so a forged "0" never matches.
            epoch: fastrand::u64(1..),
            line: Mutex::new(Line::new(Instant::now())),
            control: Mutex::new(Control::Auto),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryLine {
    fn default() -> Self {
        MemoryLine::new()
    }
}

#[async_trait]
impl RoomLine for MemoryLine {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    async fn arrive(&self, now: Instant, limits: &Limits, direct: bool) -> (Arrival, Outcome) {
        let mut line = self.lock();
        let mut outcome = Outcome::default();
        line.advance(now, limits, &mut outcome);
        if direct && line.waiting() == 0 && line.draws.is_empty() {
            let pass = DIRECT_BIT | line.next_direct;
            line.next_direct += 1;
            let number = line.next_number;
            line.next_number += 1;
            if line.active.len() < MAX_PASSES {
                line.active.insert(
                    pass,
                    Active {
                        last_seen: now,
                        number,
                    },
                );
            }
            line.admitted_direct += 1;
            let admission = Admission {
                pass,
                number,
                waited: None,
                first: true,
            };
            return (Arrival::Admitted(admission), outcome);
        }
        let slot = Slot {
            joined: now,
            last_seen: now,
            gone: false,
        };
        if !limits.open {
            let mut draw = fastrand::u64(..DIRECT_BIT);
            while line.draws.contains_key(&draw) || line.drawn.contains_key(&draw) {
                draw = fastrand::u64(..DIRECT_BIT);
            }
            line.draws.insert(draw, slot);
            let drawn = line.draws.len() as u64;
            return (
                Arrival::Drawn {
                    seq: DRAW_BIT | draw,
                    drawn,
                },
                outcome,
            );
        }
        let seq = line.tail();
        line.line.push_back(slot);
        line.advance(now, limits, &mut outcome);
        if let Some(admission) = line.pick_up(seq, now) {
            return (Arrival::Admitted(admission), outcome);
        }
        let ahead = seq.saturating_sub(line.head);
        (Arrival::Waiting { seq, ahead }, outcome)
    }

    async fn check_in(&self, seq: u64, now: Instant, limits: &Limits) -> (CheckIn, Outcome) {
        let mut line = self.lock();
        let mut outcome = Outcome::default();
        let mut seq = seq;
        if seq & DRAW_BIT != 0 {
            let draw = seq & !DRAW_BIT;
            if let Some(slot) = line.draws.get_mut(&draw) {
                if now.saturating_duration_since(slot.last_seen) > limits.ticket_timeout {
                    line.draws.remove(&draw);
                    line.abandoned += 1;
                    outcome.abandoned += 1;
                    return (CheckIn::Unknown, outcome);
                }
                slot.last_seen = now;
                line.advance(now, limits, &mut outcome);
                if let Some(&placed) = line.drawn.get(&draw) {
                    seq = placed;
                } else {
                    let drawn = line.draws.len() as u64;
                    return (CheckIn::Drawn { drawn }, outcome);
                }
            } else {
                match line.drawn.get(&draw) {
                    Some(&placed) => seq = placed,
                    None => return (CheckIn::Unknown, outcome),
                }
            }
        }
        // Refresh the place first (unless it is already lost), so the holder
        // checking in is not taken for one who left.
        if seq >= line.head && seq < line.tail() {
            let index = (seq - line.head) as usize;
            let timeout = limits.ticket_timeout;
            let mut lost = false;
            if let Some(slot) = line.line.get_mut(index) {
                if slot.gone {
                    return (CheckIn::Unknown, outcome);
                }
                if now.saturating_duration_since(slot.last_seen) > timeout {
                    slot.gone = true;
                    lost = true;
                } else {
                    slot.last_seen = now;
                }
            }
            if lost {
                line.gone += 1;
                line.abandoned += 1;
                outcome.abandoned += 1;
                return (CheckIn::Unknown, outcome);
            }
        }
        line.advance(now, limits, &mut outcome);
        if let Some(active) = line.active.get_mut(&seq) {
            // Picked up before (the pass cookie may not have reached the shopper).
            active.last_seen = now;
            let admission = Admission {
                pass: seq,
                number: active.number,
                waited: None,
                first: false,
            };
            return (CheckIn::Admitted(admission), outcome);
        }
        if let Some(admission) = line.pick_up(seq, now) {
            return (CheckIn::Admitted(admission), outcome);
        }
        if seq >= line.head && seq < line.tail() {
            let ahead = seq - line.head;
            return (CheckIn::Waiting { ahead }, outcome);
        }
        (CheckIn::Unknown, outcome)
    }

    async fn touch(&self, pass: u64, now: Instant, session: Duration) -> bool {
        let mut line = self.lock();
        match line.active.get_mut(&pass) {
            Some(active) if now.saturating_duration_since(active.last_seen) <= session => {
                active.last_seen = now;
                true
            }
            Some(_) => {
                line.active.remove(&pass);
                false
            }
            None => false,
        }
    }

    async fn stats(&self, now: Instant, limits: &Limits) -> LineStats {
        let mut line = self.lock();
        let mut outcome = Outcome::default();
        line.advance(now, limits, &mut outcome);
        line.stats()
    }

    async fn control(&self) -> Control {
        *self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn set_control(&self, control: Control) {
        *self.control.lock().unwrap_or_else(PoisonError::into_inner) = control;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            may_call: true,
            paused: false,
            open: true,
            max_active: Some(2),
            per_second: None,
            session: Duration::from_secs(5),
            ticket_timeout: Duration::from_secs(60),
        }
    }

    fn seq(arrival: Arrival) -> u64 {
        match arrival {
            Arrival::Waiting { seq, .. } | Arrival::Drawn { seq, .. } => seq,
            Arrival::Admitted(a) => panic!("admitted: {a:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_line_is_called_strictly_in_order_as_slots_free() {
        let line = MemoryLine::new();
        let l = limits();
        let now = Instant::now();
        let (a, _) = line.arrive(now, &l, false).await;
        let (b, _) = line.arrive(now, &l, false).await;
        assert!(matches!(a, Arrival::Admitted(Admission { number: 1, .. })));
        assert!(matches!(b, Arrival::Admitted(Admission { number: 2, .. })));
        let c = seq(line.arrive(now, &l, false).await.0);
        let d = seq(line.arrive(now, &l, false).await.0);
        assert_eq!(
            line.check_in(d, now, &l).await.0,
            CheckIn::Waiting { ahead: 1 }
        );
        // Both passes expire (session 5 s): two slots free; d checks in first
        // but c is called first (and stays called until it comes).
        let later = now + Duration::from_secs(6);
        match line.check_in(d, later, &l).await.0 {
            CheckIn::Admitted(admission) => assert_eq!(admission.number, 4),
            other => panic!("{other:?}"),
        }
        match line.check_in(c, later, &l).await.0 {
            CheckIn::Admitted(admission) => {
                assert_eq!(admission.number, 3);
                assert_eq!(admission.waited, Some(Duration::from_secs(6)));
                assert!(admission.first);
            }
            other => panic!("{other:?}"),
        }
        // A repeat check-in with the old ticket finds the pass.
        match line.check_in(c, later, &l).await.0 {
            CheckIn::Admitted(admission) => assert!(!admission.first),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_tickets_are_skipped_and_refreshers_keep_their_place() {
        let line = MemoryLine::new();
        let l = Limits {
            max_active: Some(0),
            ..limits()
        };
        let now = Instant::now();
        let quitter = seq(line.arrive(now, &l, false).await.0);
        let stayer = seq(line.arrive(now, &l, false).await.0);
        for s in 1..=9 {
            let t = now + Duration::from_secs(10 * s);
            // The quitter counts until it is a ticket_timeout late, then the
            // head skips it, even though nobody may be called.
            let ahead = if 10 * s > 60 { 0 } else { 1 };
            assert_eq!(
                line.check_in(stayer, t, &l).await.0,
                CheckIn::Waiting { ahead }
            );
        }
        let t = now + Duration::from_secs(100);
        let open = Limits {
            max_active: Some(1),
            ..l
        };
        let (result, _) = line.check_in(stayer, t, &open).await;
        assert!(matches!(
            result,
            CheckIn::Admitted(Admission { number: 1, .. })
        ));
        assert_eq!(line.check_in(quitter, t, &open).await.0, CheckIn::Unknown);
        assert_eq!(line.stats(t, &open).await.abandoned, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_check_in_loses_the_place() {
        let line = MemoryLine::new();
        let l = Limits {
            max_active: Some(0),
            ..limits()
        };
        let now = Instant::now();
        let s = seq(line.arrive(now, &l, false).await.0);
        let late = now + Duration::from_secs(61);
        assert_eq!(line.check_in(s, late, &l).await.0, CheckIn::Unknown);
        assert_eq!(line.stats(late, &l).await.waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_bounds_calls_and_is_measured_while_the_line_waits() {
        let line = MemoryLine::new();
        let l = Limits {
            max_active: None,
            per_second: Some(10.0),
            ..limits()
        };
        let start = Instant::now();
        let mut admitted = 0;
        // 20 arrivals per second for 10 s, the line called at 10 per second.
        for i in 0..200u64 {
            let now = start + Duration::from_millis(50 * i);
            if let (Arrival::Admitted(_), _) = line.arrive(now, &l, false).await {
                admitted += 1;
            }
        }
        let end = start + Duration::from_secs(10);
        let stats = line.stats(end, &l).await;
        let called = admitted + stats.called;
        assert!((95..=111).contains(&called), "{called}");
        let rate = stats.rate_admissions / stats.rate_busy_seconds;
        assert!((9.0..=11.0).contains(&rate), "{rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn draws_before_the_opening_take_random_places_ahead_of_later_arrivals() {
        let line = MemoryLine::new();
        let closed = Limits {
            may_call: false,
            open: false,
            max_active: None,
            ..limits()
        };
        let now = Instant::now();
        let mut draws = Vec::new();
        for _ in 0..50 {
            let s = seq(line.arrive(now, &closed, false).await.0);
            assert!(s & DRAW_BIT != 0);
            assert_eq!(
                line.check_in(s, now, &closed).await.0,
                CheckIn::Drawn {
                    drawn: 50.min(draws.len() as u64 + 1)
                }
            );
            draws.push(s);
        }
        let opened = Limits {
            may_call: false,
            open: true,
            ..closed
        };
        let after = now + Duration::from_secs(1);
        let late = seq(line.arrive(after, &opened, false).await.0);
        assert_eq!(late, 50, "after every draw");
        let mut places = Vec::new();
        for s in &draws {
            match line.check_in(*s, after, &opened).await.0 {
                CheckIn::Waiting { ahead } => places.push(ahead),
                other => panic!("{other:?}"),
            }
        }
        let mut sorted = places.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(places, sorted, "the order of arrival is not kept");
    }

    #[tokio::test(start_paused = true)]
    async fn passes_extend_with_use_and_expire_after_the_session() {
        let line = MemoryLine::new();
        let l = limits();
        let now = Instant::now();
        let Arrival::Admitted(admission) = line.arrive(now, &l, true).await.0 else {
            panic!("direct")
        };
        let session = Duration::from_secs(300);
        assert!(line.touch(admission.pass, now + session, session).await);
        assert!(line.touch(admission.pass, now + session * 2, session).await);
        assert!(
            !line
                .touch(
                    admission.pass,
                    now + session * 3 + Duration::from_secs(1),
                    session
                )
                .await
        );
        assert!(!line.touch(12345, now, session).await);
    }
}
