//! The line in this process's memory: a deque of places from the head, the
//! draws before the opening, the calls and passes in hash maps, all under one
//! lock, so each operation is atomic.
//!
//! Memory: a place in line takes about 40 bytes, a pass or a call about 48
//! (hash map entries); abandoned places leave from the head once they are a
//! `ticket_timeout` old, so the line holds at most the arrivals of that long
//! beyond the shoppers really waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    Admission, Arrival, CheckIn, Control, Limits, LineStats, Outcome, RoomLine, BURST_SECONDS,
    DIRECT_BIT, DRAW_BIT, MAX_PASSES, MAX_PASS_MOVES, RATE_TAU, SKIP_WEIGHT, SWEEP_EVERY,
    SWEEP_LINE_BATCH, SWEEP_PASSES_BATCH,
};

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The ticket number (set when the place joins the line).
    seq: u64,
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
    /// When the pass was given.
    since: Instant,
    /// The tag of the client (network) it serves now.
    client: u64,
    /// How often it moved to another network.
    moves: u8,
}

impl Active {
    fn new(now: Instant, number: u64, client: u64) -> Active {
        Active {
            last_seen: now,
            number,
            since: now,
            client,
            moves: 0,
        }
    }

    /// Whether the pass has expired: idle past `session`, or older than
    /// `max_session`.
    fn expired(&self, now: Instant, limits: &Limits) -> bool {
        now.saturating_duration_since(self.last_seen) > limits.session
            || now.saturating_duration_since(self.since) > limits.max_session
    }

    /// Takes a request from `client`: whether the pass serves it (its
    /// network, or one it may still move to; then the session extends).
    fn used_by(&mut self, client: u64, now: Instant) -> bool {
        if client != self.client {
            if self.moves >= MAX_PASS_MOVES {
                return false;
            }
            self.client = client;
            self.moves += 1;
        }
        self.last_seen = now;
        true
    }
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
    /// The places, by ticket number (gaps where abandoned ones were removed).
    line: VecDeque<Slot>,
    /// The ticket number the next place gets.
    next_seq: u64,
    /// Where the next sweep of the line looks for abandoned places.
    cursor: usize,
    /// Tickets in `line` marked gone.
    gone: u64,
    /// Draws before the opening, by draw.
    draws: BTreeMap<u64, Slot>,
    /// Draw → ticket number, once drawn into the line.
    drawn: HashMap<u64, u64>,
    called: HashMap<u64, Called>,
    active: HashMap<u64, Active>,
    /// The passes of `active` (and some removed since), oldest first: each
    /// sweep looks at a batch from the front and puts the live ones back.
    passes: VecDeque<u64>,
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
            line: VecDeque::new(),
            next_seq: 0,
            cursor: 0,
            gone: 0,
            draws: BTreeMap::new(),
            drawn: HashMap::new(),
            called: HashMap::new(),
            active: HashMap::new(),
            passes: VecDeque::new(),
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

    /// Where ticket `seq` is in the line: its index, the places ahead of it.
    fn index_of(&self, seq: u64) -> Option<usize> {
        self.line.binary_search_by_key(&seq, |slot| slot.seq).ok()
    }

    /// A new place at the back; its ticket number.
    fn push(&mut self, mut slot: Slot) -> u64 {
        slot.seq = self.next_seq;
        self.next_seq += 1;
        self.line.push_back(slot);
        slot.seq
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
        self.sweep_passes(now, limits);
        let before = self.called.len();
        self.called
            .retain(|_, c| now.saturating_duration_since(c.at) <= limits.ticket_timeout);
        let lost = (before - self.called.len()) as u64;
        self.abandoned += lost;
        outcome.abandoned += lost as u32;
        self.sweep_line(now, limits, outcome);
    }

    /// Expires passes past their session, a bounded batch a sweep (all of
    /// them up to [`SWEEP_PASSES_BATCH`], every one within 200 sweeps, 50 s,
    /// above it: only a room without `max_active` has that many): a room of a
    /// million passes does not hold its lock for a scan of them all. A pass
    /// used after its session is refused at once anyway.
    fn sweep_passes(&mut self, now: Instant, limits: &Limits) {
        let batch = SWEEP_PASSES_BATCH.max(self.passes.len() / 200);
        for _ in 0..batch.min(self.passes.len()) {
            let Some(pass) = self.passes.pop_front() else {
                break;
            };
            match self.active.get(&pass) {
                Some(active) if active.expired(now, limits) => {
                    self.active.remove(&pass);
                }
                Some(_) => self.passes.push_back(pass),
                None => {}
            }
        }
    }

    /// A new pass.
    fn admit(&mut self, pass: u64, active: Active) {
        if self.active.insert(pass, active).is_none() {
            self.passes.push_back(pass);
        }
    }

    /// Marks abandoned places anywhere in the line as gone, a bounded batch
    /// from where the last sweep stopped, so they leave within
    /// `ticket_timeout` (and a sweep) even behind a head that waits; once
    /// half the line is gone, it is compacted and the memory returns.
    fn sweep_line(&mut self, now: Instant, limits: &Limits, outcome: &mut Outcome) {
        let len = self.line.len();
        if len == 0 {
            return;
        }
        // A hundredth of the line at least: a million places are all looked
        // at within 25 s of sweeps.
        for _ in 0..SWEEP_LINE_BATCH.max(len / 100).min(len) {
            let index = self.cursor % len;
            self.cursor = index + 1;
            let slot = &mut self.line[index];
            if !slot.gone && now.saturating_duration_since(slot.last_seen) > limits.ticket_timeout {
                slot.gone = true;
                self.gone += 1;
                self.abandoned += 1;
                outcome.abandoned += 1;
            }
        }
        if self.gone * 2 > len as u64 && len > 64 {
            self.line.retain(|slot| !slot.gone);
            self.line.shrink_to_fit();
            self.gone = 0;
            self.cursor = 0;
        }
    }

    /// Sorts the draws into the line at the opening.
    fn open(&mut self) {
        if self.draws.is_empty() {
            return;
        }
        for (draw, slot) in std::mem::take(&mut self.draws) {
            let seq = self.push(slot);
            self.drawn.insert(draw, seq);
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
        let mut skipped = 0;
        while let Some(slot) = self.line.front().copied() {
            // Abandoned tickets at the head go whether or not anyone may be
            // called, so positions do not count them (a batch at a time:
            // the sweep marks the rest).
            let stale = now.saturating_duration_since(slot.last_seen) > limits.ticket_timeout;
            if slot.gone || stale {
                if skipped == SWEEP_LINE_BATCH {
                    break;
                }
                skipped += 1;
                self.line.pop_front();
                self.cursor = self.cursor.saturating_sub(1);
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
            if !self.has_room(limits) {
                break;
            }
            if limits.per_second.is_some() && self.tokens < 1.0 {
                break;
            }
            self.line.pop_front();
            self.cursor = self.cursor.saturating_sub(1);
            let seq = slot.seq;
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

    /// Whether the site has room for one more (passes in use plus calls).
    fn has_room(&self, limits: &Limits) -> bool {
        let on_site = (self.active.len() + self.called.len()) as u64;
        limits.max_active.is_none_or(|max| on_site < max)
    }

    /// Turns a called ticket into a pass for `client`.
    fn pick_up(&mut self, seq: u64, client: u64, now: Instant) -> Option<Admission> {
        let called = self.called.remove(&seq)?;
        self.admit(seq, Active::new(now, called.number, client));
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

    /// A request on pass `pass` from `client` ([`RoomLine::touch`]); an
    /// expired pass leaves the site.
    fn touch(&mut self, pass: u64, client: u64, now: Instant, limits: &Limits) -> bool {
        let Some(active) = self.active.get_mut(&pass) else {
            return false;
        };
        if active.expired(now, limits) {
            self.active.remove(&pass);
            return false;
        }
        active.used_by(client, now)
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

    async fn arrive(
        &self,
        client: u64,
        now: Instant,
        limits: &Limits,
        direct: bool,
    ) -> (Arrival, Outcome) {
        let mut line = self.line.lock();
        let mut outcome = Outcome::default();
        line.advance(now, limits, &mut outcome);
        if direct && line.waiting() == 0 && line.draws.is_empty() && line.has_room(limits) {
            let pass = DIRECT_BIT | line.next_direct;
            line.next_direct += 1;
            let number = line.next_number;
            line.next_number += 1;
            if line.active.len() < MAX_PASSES {
                line.admit(pass, Active::new(now, number, client));
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
        let waiting = if limits.open {
            line.waiting()
        } else {
            line.draws.len() as u64
        };
        if limits.max_waiting.is_some_and(|max| waiting >= max) {
            return (Arrival::Full, outcome);
        }
        let slot = Slot {
            seq: 0,
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
        let seq = line.push(slot);
        line.advance(now, limits, &mut outcome);
        if let Some(admission) = line.pick_up(seq, client, now) {
            return (Arrival::Admitted(admission), outcome);
        }
        let ahead = line.index_of(seq).unwrap_or_default() as u64;
        (Arrival::Waiting { seq, ahead }, outcome)
    }

    async fn check_in(
        &self,
        seq: u64,
        client: u64,
        now: Instant,
        limits: &Limits,
    ) -> (CheckIn, Outcome) {
        let mut line = self.line.lock();
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
        if let Some(index) = line.index_of(seq) {
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
        if let Some(active) = line.active.get(&seq).copied() {
            // Picked up before (the pass cookie may not have reached the
            // shopper): the pass's rules hold, so a called ticket shared with
            // others lets no more in than a pass would.
            if !line.touch(seq, client, now, limits) {
                return (CheckIn::Unknown, outcome);
            }
            let admission = Admission {
                pass: seq,
                number: active.number,
                waited: None,
                first: false,
            };
            return (CheckIn::Admitted(admission), outcome);
        }
        if let Some(admission) = line.pick_up(seq, client, now) {
            return (CheckIn::Admitted(admission), outcome);
        }
        if let Some(ahead) = line.index_of(seq) {
            return (
                CheckIn::Waiting {
                    ahead: ahead as u64,
                },
                outcome,
            );
        }
        (CheckIn::Unknown, outcome)
    }

    async fn touch(&self, pass: u64, client: u64, now: Instant, limits: &Limits) -> bool {
        self.line.lock().touch(pass, client, now, limits)
    }

    async fn stats(&self, now: Instant, limits: &Limits) -> LineStats {
        let mut line = self.line.lock();
        let mut outcome = Outcome::default();
        line.advance(now, limits, &mut outcome);
        line.stats()
    }

    async fn control(&self) -> Control {
        *self.control.lock()
    }

    async fn set_control(&self, control: Control) {
        *self.control.lock() = control;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_memory_line_keeps_the_rules_of_the_spec() {
        crate::store::room::spec::run_all(|| Arc::new(MemoryLine::new())).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_expires_a_bounded_batch_of_passes_and_keeps_the_live_ones() {
        let limits = Limits {
            may_call: true,
            paused: false,
            open: true,
            max_active: None,
            per_second: None,
            session: Duration::from_secs(5),
            max_session: Duration::from_secs(3600),
            max_waiting: None,
            ticket_timeout: Duration::from_secs(60),
        };
        let start = Instant::now();
        let mut line = Line::new(start);
        let stale = 3 * SWEEP_PASSES_BATCH as u64;
        for pass in 0..stale {
            line.admit(pass, Active::new(start, pass, 1));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        line.admit(stale, Active::new(now, stale, 1));
        line.sweep_passes(now, &limits);
        assert_eq!(
            line.active.len() as u64,
            stale + 1 - SWEEP_PASSES_BATCH as u64
        );
        for _ in 0..3 {
            line.sweep_passes(now, &limits);
        }
        assert_eq!(line.active.len(), 1, "every expired pass is gone");
        assert!(line.active.contains_key(&stale), "the live pass stays");
        assert_eq!(line.passes.len(), 1);
    }
}
