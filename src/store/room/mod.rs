//! The waiting room's line: who waits, in which order, who was called, who is
//! on the site. One [`RoomLine`] per room, kept in this process's memory by
//! [`MemoryLine`] or shared by every instance in Redis by
//! [`RedisLine`](crate::store::redis::RedisLine). Every operation is atomic,
//! so two check-ins never take one place or one freed slot.
//!
//! Places are dense sequence numbers in arrival order; the line is called from
//! its head only, strictly in that order. A ticket whose holder stopped checking
//! in for `ticket_timeout` is skipped when the head reaches it (or lost when
//! its holder comes back too late), and a called ticket not picked up within
//! `ticket_timeout` frees its slot. Before a room opens (`opens_at`), arrivals
//! draw a random number instead; at the opening instant the draws are sorted
//! into the line ahead of everyone who comes later.
//!
//! These rules are written once, as cases, in [`spec`]: the memory line runs
//! them in the unit tests, the Redis line in the integration suite, so the
//! two implementations cannot drift apart unnoticed.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

mod memory;
pub mod spec;

pub use memory::{BusyRate, MemoryLine};

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
/// Places one operation looks at for abandoned ones, and abandoned places
/// it removes from the head at most: every operation does bounded work (the
/// rest go with the next ones).
pub(crate) const SWEEP_LINE_BATCH: usize = 2_000;
/// Passes a memory line's sweep looks at, at least (all of them below it).
pub(crate) const SWEEP_PASSES_BATCH: usize = 4_096;
/// How often a pass (or a called ticket, once picked up) may move to another
/// network. A pass serves one network at a time: a request from another one
/// moves it there and the previous one loses it. A shopper whose phone goes
/// from Wi-Fi to mobile data and back keeps it; a pass posted on social
/// media serves one copier at a time and is spent after this many moves.
pub const MAX_PASS_MOVES: u8 = 2;

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
    /// How long a pass stays valid at all, however busy its holder: then the
    /// holder queues again, so passes cannot be hoarded by keeping them warm.
    pub max_session: Duration,
    /// Most tickets waiting (or drawn) at once; beyond it a newcomer is told
    /// the line is full. `None`: no bound.
    pub max_waiting: Option<u64>,
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
    /// `max_waiting` tickets wait already: no place was given.
    Full,
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

    /// A new shopper from `client` (a [`client_tag`]). `direct` (a room that
    /// has not formed): admit at once when nobody waits and `max_active`
    /// allows. Otherwise join the line (a draw before the opening), called at
    /// once only if nobody waits ahead and the limits allow; or, with
    /// `max_waiting` tickets waiting, [`Arrival::Full`].
    async fn arrive(
        &self,
        client: u64,
        now: Instant,
        limits: &Limits,
        direct: bool,
    ) -> (Arrival, Outcome);

    /// The holder of ticket `seq` checks in from `client`. A ticket already
    /// called and picked up answers as its pass would ([`RoomLine::touch`]).
    async fn check_in(
        &self,
        seq: u64,
        client: u64,
        now: Instant,
        limits: &Limits,
    ) -> (CheckIn, Outcome);

    /// The holder of pass `pass` makes a request from `client`: true (and the
    /// session extends) while the pass is in use — within `session` of its
    /// last request and `max_session` of its admission — and `client` is
    /// the network it serves, or it may still move there
    /// ([`MAX_PASS_MOVES`]).
    async fn touch(&self, pass: u64, client: u64, now: Instant, limits: &Limits) -> bool;

    /// The line now (after calling whoever the limits allow).
    async fn stats(&self, now: Instant, limits: &Limits) -> LineStats;

    /// The operator's setting.
    async fn control(&self) -> Control;

    /// Sets the operator's setting.
    async fn set_control(&self, control: Control);
}

/// Who uses a pass, as a line tells its users apart: a digest of the
/// client's IPv4 address or IPv6 /64 (privacy addresses rotate within it),
/// the same in every instance and build, never 0. No address: one tag.
pub fn client_tag(ip: Option<std::net::IpAddr>) -> u64 {
    let network: Vec<u8> = match ip {
        Some(std::net::IpAddr::V4(v4)) => [&[4u8][..], &v4.octets()].concat(),
        Some(std::net::IpAddr::V6(v6)) => [&[6u8][..], &v6.octets()[..8]].concat(),
        None => vec![0],
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &network);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    // Lua numbers are doubles: 52 bits stay exact.
    (u64::from_be_bytes(first) >> 12) | 1
}

/// What else an operation did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Tickets skipped (their holders stopped checking in) or calls not picked up.
    pub abandoned: u32,
}
