//! The rules of a room's line, stated once: [`CASES`], each a few operations
//! on a fresh line and what every one must answer. [`run_all`] runs them
//! against any [`RoomLine`]: the memory line in the unit tests, the Redis line
//! in the integration suite (`tests/it/room_line.rs`), so the two keep one set
//! of rules.
//!
//! A step happens `at` milliseconds after the case starts; the line is given
//! that instant as `now` (a line in Redis must then run on the caller's clock,
//! `RedisLine::on_callers_clock`). Tickets and passes are named (`"c"`,
//! `"draws"`); their ids, which each line numbers its own way, are never
//! compared: positions, admission numbers, waits and counts are.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Arrival, CheckIn, Control, Limits, LineStats, RoomLine};

/// One rule: steps on a fresh line.
#[derive(Debug)]
pub struct Case {
    /// What the rule says; failures name it.
    pub name: &'static str,
    /// In order.
    pub steps: &'static [Step],
}

/// An operation on the line and what it must answer.
#[derive(Debug)]
pub enum Step {
    /// `count` shoppers arrive, `every` ms apart from `at`; their tickets (or
    /// passes) are `name`. The i-th (from 0) must answer `expect` with its
    /// `ahead`, `drawn` or `number` i more: each arrival is one further back.
    Arrive {
        /// Milliseconds after the start.
        at: u64,
        /// The policy's limits.
        limits: Limits,
        /// A room that has not formed: admit at once when nobody waits.
        direct: bool,
        /// The name of the tickets or passes.
        name: &'static str,
        /// How many arrive.
        count: u32,
        /// Milliseconds between two arrivals.
        every: u64,
        /// The first one's answer.
        expect: Expect,
    },
    /// Every holder of `name` checks in, in order of arrival; each must
    /// answer `expect`.
    CheckIn {
        /// Milliseconds after the start.
        at: u64,
        /// The policy's limits.
        limits: Limits,
        /// Whose tickets.
        name: &'static str,
        /// Every holder's answer.
        expect: Expect,
    },
    /// The holder of pass `name` makes a request.
    Touch {
        /// Milliseconds after the start.
        at: u64,
        /// Whose pass.
        name: &'static str,
        /// The policy's limits (`session`, `max_session`).
        limits: Limits,
        /// Whether the pass is in use.
        expect: bool,
    },
    /// The last pass (or, `ticket`, the called ticket) of `name` is used
    /// from `clients` other clients, one request each: `admitted` of them
    /// are let in.
    Shared {
        /// Milliseconds after the start.
        at: u64,
        /// The policy's limits.
        limits: Limits,
        /// Whose pass or ticket.
        name: &'static str,
        /// Check in with the ticket instead of using a pass.
        ticket: bool,
        /// How many other clients.
        clients: u64,
        /// How many of them get in.
        admitted: u64,
    },
    /// A pass the line never gave out makes a request: not in use.
    TouchNeverIssued {
        /// Milliseconds after the start.
        at: u64,
    },
    /// The line's numbers.
    Stats {
        /// Milliseconds after the start.
        at: u64,
        /// The policy's limits.
        limits: Limits,
        /// What they must be.
        expect: Stats,
    },
    /// Every holder of `name` checks in and finds them waiting: their places
    /// are `0..n`, not in the order they came.
    Shuffled {
        /// Milliseconds after the start.
        at: u64,
        /// The policy's limits.
        limits: Limits,
        /// Whose tickets.
        name: &'static str,
    },
    /// The operator sets the room.
    SetControl(Control),
    /// The operator's setting must be this.
    Control(Control),
}

/// An arrival's or a check-in's answer, without ids.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    /// Let in.
    Admitted {
        /// Order of calling, from 1.
        number: u64,
        /// Milliseconds from the ticket to the admission; `None`: never waited.
        waited: Option<u64>,
        /// Whether this answer turned the ticket into the pass.
        first: bool,
    },
    /// In line with `ahead` tickets before.
    Waiting {
        /// Tickets ahead.
        ahead: u64,
    },
    /// A draw before the opening, with `drawn` draws so far.
    Drawn {
        /// Draws so far.
        drawn: u64,
    },
    /// No place: the line holds `max_waiting` (arrivals only).
    Full,
    /// The line does not know the ticket (check-ins only).
    Unknown,
    /// Anything (a step that only makes the line move).
    Any,
}

/// Bounds on [`LineStats`]; `None`: not checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// [`LineStats::waiting`].
    pub waiting: Option<u64>,
    /// [`LineStats::drawn`].
    pub drawn: Option<u64>,
    /// [`LineStats::called`].
    pub called: Option<u64>,
    /// [`LineStats::active`].
    pub active: Option<u64>,
    /// [`LineStats::abandoned`].
    pub abandoned: Option<u64>,
    /// [`LineStats::admitted_from_line`].
    pub from_line: Option<u64>,
    /// [`LineStats::admitted_direct`].
    pub direct: Option<u64>,
    /// Everyone called since the start (admitted, or called and not yet
    /// come), between these (inclusive).
    pub calls: Option<(u64, u64)>,
    /// The measured rate (`rate_admissions / rate_busy_seconds`), between these.
    pub rate: Option<(f64, f64)>,
}

/// Nothing checked: the base of a [`Stats`] (`..ANY`).
pub const ANY: Stats = Stats {
    waiting: None,
    drawn: None,
    called: None,
    active: None,
    abandoned: None,
    from_line: None,
    direct: None,
    calls: None,
    rate: None,
};

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Two on the site at once, a 5 s session, a minute to check in.
const TWO: Limits = Limits {
    may_call: true,
    paused: false,
    open: true,
    max_active: Some(2),
    per_second: None,
    session: secs(5),
    max_session: secs(3600),
    max_waiting: None,
    ticket_timeout: secs(60),
};
/// A 5-minute session.
const LONG: Limits = Limits {
    session: secs(300),
    ..TWO
};
/// Passes last 20 s at most, however busy.
const BRIEF: Limits = Limits {
    max_session: secs(20),
    ..LONG
};
/// At most three waiting.
const THREE_WAIT: Limits = Limits {
    max_waiting: Some(3),
    ..NONE
};
/// Nobody may be called (the site is full).
const NONE: Limits = Limits {
    max_active: Some(0),
    ..TWO
};
/// One on the site at once.
const ONE: Limits = Limits {
    max_active: Some(1),
    ..TWO
};
/// The operator paused the room.
const PAUSED: Limits = Limits {
    may_call: false,
    paused: true,
    ..TWO
};
/// Before the opening.
const CLOSED: Limits = Limits {
    may_call: false,
    open: false,
    max_active: None,
    ..TWO
};
/// Open, nobody called yet.
const OPENED: Limits = Limits {
    open: true,
    ..CLOSED
};
/// Ten calls a second, no bound on the site.
const RATE: Limits = Limits {
    max_active: None,
    per_second: Some(10.0),
    ..TWO
};
/// One on the site, calls not picked up lost after 10 s.
const SHORT: Limits = Limits {
    ticket_timeout: secs(10),
    ..ONE
};

const fn arrive(at: u64, limits: Limits, name: &'static str, expect: Expect) -> Step {
    Step::Arrive {
        at,
        limits,
        direct: false,
        name,
        count: 1,
        every: 0,
        expect,
    }
}

const fn direct(at: u64, limits: Limits, name: &'static str, expect: Expect) -> Step {
    Step::Arrive {
        at,
        limits,
        direct: true,
        name,
        count: 1,
        every: 0,
        expect,
    }
}

const fn check_in(at: u64, limits: Limits, name: &'static str, expect: Expect) -> Step {
    Step::CheckIn {
        at,
        limits,
        name,
        expect,
    }
}

const fn stats(at: u64, limits: Limits, expect: Stats) -> Step {
    Step::Stats { at, limits, expect }
}

const fn waiting(ahead: u64) -> Expect {
    Expect::Waiting { ahead }
}

/// Admitted for the first time after waiting `waited` ms.
const fn called(number: u64, waited: u64) -> Expect {
    Expect::Admitted {
        number,
        waited: Some(waited),
        first: true,
    }
}

/// Admitted at once, without waiting.
const fn at_once(number: u64) -> Expect {
    Expect::Admitted {
        number,
        waited: None,
        first: true,
    }
}

/// Every rule of the line.
pub static CASES: &[Case] = &[
    Case {
        name: "a pass serves one network at a time and moves at most twice",
        steps: &[
            direct(0, LONG, "pass", at_once(1)),
            Step::Touch {
                at: 500,
                name: "pass",
                limits: LONG,
                expect: true,
            },
            Step::Shared {
                at: 1_000,
                limits: LONG,
                name: "pass",
                ticket: false,
                clients: 50,
                // Two copiers take it in turn; the rest are refused.
                admitted: 2,
            },
            // It moved away from its holder, for good.
            Step::Touch {
                at: 2_000,
                name: "pass",
                limits: LONG,
                expect: false,
            },
        ],
    },
    Case {
        name: "a called ticket shared with many clients moves like a pass",
        steps: &[
            arrive(0, NONE, "t", waiting(0)),
            check_in(1_000, ONE, "t", called(1, 1_000)),
            Step::Shared {
                at: 2_000,
                limits: ONE,
                name: "t",
                ticket: true,
                clients: 50,
                admitted: 2,
            },
            check_in(3_000, ONE, "t", Expect::Unknown),
        ],
    },
    Case {
        name: "a pass ends at max_session however busy its holder",
        steps: &[
            direct(0, BRIEF, "pass", at_once(1)),
            Step::Touch {
                at: 10_000,
                name: "pass",
                limits: BRIEF,
                expect: true,
            },
            Step::Touch {
                at: 19_000,
                name: "pass",
                limits: BRIEF,
                expect: true,
            },
            Step::Touch {
                at: 21_000,
                name: "pass",
                limits: BRIEF,
                expect: false,
            },
            stats(
                21_000,
                BRIEF,
                Stats {
                    active: Some(0),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "direct passes count against max_active",
        steps: &[
            direct(0, ONE, "first", at_once(1)),
            direct(10, ONE, "second", waiting(0)),
            stats(
                20,
                ONE,
                Stats {
                    active: Some(1),
                    waiting: Some(1),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "abandoned tickets behind a live head leave within ticket_timeout",
        steps: &[
            arrive(0, NONE, "head", waiting(0)),
            Step::Arrive {
                at: 0,
                limits: NONE,
                direct: false,
                name: "quitters",
                count: 3,
                every: 0,
                expect: waiting(1),
            },
            check_in(30_000, NONE, "head", waiting(0)),
            check_in(61_000, NONE, "head", waiting(0)),
            stats(
                61_000,
                NONE,
                Stats {
                    waiting: Some(1),
                    abandoned: Some(3),
                    ..ANY
                },
            ),
            check_in(62_000, NONE, "quitters", Expect::Unknown),
            stats(
                62_000,
                NONE,
                Stats {
                    waiting: Some(1),
                    abandoned: Some(3),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "past max_waiting a newcomer gets no place",
        steps: &[
            Step::Arrive {
                at: 0,
                limits: THREE_WAIT,
                direct: false,
                name: "w",
                count: 3,
                every: 10,
                expect: waiting(0),
            },
            arrive(100, THREE_WAIT, "late", Expect::Full),
            stats(
                100,
                THREE_WAIT,
                Stats {
                    waiting: Some(3),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "the line is called strictly in order as slots free",
        steps: &[
            arrive(0, TWO, "a", at_once(1)),
            arrive(0, TWO, "b", at_once(2)),
            arrive(0, TWO, "c", waiting(0)),
            arrive(0, TWO, "d", waiting(1)),
            check_in(0, TWO, "d", waiting(1)),
            // Both passes expire (session 5 s): two slots free; d checks in
            // first but c is called first, and stays called until it comes.
            check_in(6_000, TWO, "d", called(4, 6_000)),
            check_in(6_000, TWO, "c", called(3, 6_000)),
            // A repeat check-in with the old ticket finds the pass.
            check_in(
                6_000,
                TWO,
                "c",
                Expect::Admitted {
                    number: 3,
                    waited: None,
                    first: false,
                },
            ),
            stats(
                6_000,
                TWO,
                Stats {
                    waiting: Some(0),
                    called: Some(0),
                    active: Some(2),
                    from_line: Some(2),
                    direct: Some(2),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "abandoned tickets are skipped at the head and refreshers keep their place",
        steps: &[
            arrive(0, NONE, "quitter", waiting(0)),
            arrive(0, NONE, "stayer", waiting(1)),
            check_in(10_000, NONE, "stayer", waiting(1)),
            check_in(30_000, NONE, "stayer", waiting(1)),
            // The quitter counts until it is more than a ticket_timeout late,
            // then the head skips it, though nobody may be called.
            check_in(60_000, NONE, "stayer", waiting(1)),
            check_in(70_000, NONE, "stayer", waiting(0)),
            check_in(90_000, NONE, "stayer", waiting(0)),
            check_in(100_000, ONE, "stayer", called(1, 100_000)),
            check_in(100_000, ONE, "quitter", Expect::Unknown),
            stats(
                100_000,
                ONE,
                Stats {
                    abandoned: Some(1),
                    waiting: Some(0),
                    active: Some(1),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "a late check-in loses the place",
        steps: &[
            arrive(0, NONE, "late", waiting(0)),
            check_in(61_000, NONE, "late", Expect::Unknown),
            stats(
                61_000,
                NONE,
                Stats {
                    waiting: Some(0),
                    abandoned: Some(1),
                    ..ANY
                },
            ),
            // The lost place is nobody's: the next shopper is first.
            arrive(61_000, NONE, "next", waiting(0)),
        ],
    },
    Case {
        name: "the rate bounds calls and is measured while the line waits",
        steps: &[
            // 20 arrivals a second for 10 s, the line called at 10 a second.
            Step::Arrive {
                at: 0,
                limits: RATE,
                direct: false,
                name: "crowd",
                count: 200,
                every: 50,
                expect: Expect::Any,
            },
            stats(
                10_000,
                RATE,
                Stats {
                    calls: Some((95, 111)),
                    rate: Some((9.0, 11.0)),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "draws before the opening take random places ahead of later arrivals",
        steps: &[
            Step::Arrive {
                at: 0,
                limits: CLOSED,
                direct: false,
                name: "draws",
                count: 50,
                every: 0,
                expect: Expect::Drawn { drawn: 1 },
            },
            check_in(0, CLOSED, "draws", Expect::Drawn { drawn: 50 }),
            stats(
                0,
                CLOSED,
                Stats {
                    drawn: Some(50),
                    waiting: Some(0),
                    ..ANY
                },
            ),
            arrive(1_000, OPENED, "late", waiting(50)),
            Step::Shuffled {
                at: 1_000,
                limits: OPENED,
                name: "draws",
            },
            stats(
                1_000,
                OPENED,
                Stats {
                    drawn: Some(0),
                    waiting: Some(51),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        // The Redis line writes the draws into the line a batch at a time
        // (so that no operation places a million): the places are the
        // same.
        name: "an opening of more draws than one operation writes in keeps every place",
        steps: &[
            Step::Arrive {
                at: 0,
                limits: CLOSED,
                direct: false,
                name: "draws",
                count: 1_000,
                every: 0,
                expect: Expect::Drawn { drawn: 1 },
            },
            arrive(1_000, OPENED, "late", waiting(1_000)),
            Step::Shuffled {
                at: 1_000,
                limits: OPENED,
                name: "draws",
            },
            arrive(1_000, OPENED, "later", waiting(1_001)),
            stats(
                1_000,
                OPENED,
                Stats {
                    drawn: Some(0),
                    waiting: Some(1_002),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "a draw whose holder stopped checking in before the opening is lost",
        steps: &[
            arrive(0, CLOSED, "draw", Expect::Drawn { drawn: 1 }),
            arrive(0, CLOSED, "other", Expect::Drawn { drawn: 2 }),
            check_in(61_000, CLOSED, "draw", Expect::Unknown),
            stats(
                61_000,
                CLOSED,
                Stats {
                    drawn: Some(1),
                    abandoned: Some(1),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "passes extend with use and expire after the session",
        steps: &[
            direct(0, TWO, "pass", at_once(1)),
            Step::Touch {
                at: 300_000,
                name: "pass",
                limits: LONG,
                expect: true,
            },
            Step::Touch {
                at: 600_000,
                name: "pass",
                limits: LONG,
                expect: true,
            },
            Step::Touch {
                at: 901_000,
                name: "pass",
                limits: LONG,
                expect: false,
            },
            // Once expired, it stays so.
            Step::Touch {
                at: 901_000,
                name: "pass",
                limits: LONG,
                expect: false,
            },
            Step::TouchNeverIssued { at: 0 },
        ],
    },
    Case {
        name: "direct arrivals pass at once while nobody waits and the site has room",
        steps: &[
            direct(0, TWO, "a", at_once(1)),
            direct(0, TWO, "b", at_once(2)),
            stats(
                0,
                NONE,
                Stats {
                    active: Some(2),
                    direct: Some(2),
                    ..ANY
                },
            ),
            arrive(0, NONE, "c", waiting(0)),
            // Somebody waits: a direct arrival joins the line behind them.
            direct(0, NONE, "d", waiting(1)),
            Step::Touch {
                at: 1_000,
                name: "a",
                limits: TWO,
                expect: true,
            },
            stats(
                1_000,
                NONE,
                Stats {
                    waiting: Some(2),
                    direct: Some(2),
                    active: Some(2),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "max_active bounds passes in use plus calls not picked up",
        steps: &[
            arrive(0, ONE, "a", at_once(1)),
            arrive(0, ONE, "b", waiting(0)),
            arrive(0, ONE, "c", waiting(1)),
            stats(
                0,
                ONE,
                Stats {
                    active: Some(1),
                    waiting: Some(2),
                    ..ANY
                },
            ),
            Step::Touch {
                at: 4_000,
                name: "a",
                limits: TWO,
                expect: true,
            },
            // a's pass is still in use (last request 4 s ago).
            check_in(8_000, ONE, "b", waiting(0)),
            // Now it expired: b is called.
            check_in(9_500, ONE, "b", called(2, 9_500)),
            check_in(9_500, ONE, "c", waiting(0)),
            stats(
                9_500,
                ONE,
                Stats {
                    active: Some(1),
                    called: Some(0),
                    waiting: Some(1),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "a call nobody comes for frees its slot after ticket_timeout",
        steps: &[
            arrive(0, SHORT, "a", at_once(1)),
            arrive(0, SHORT, "b", waiting(0)),
            arrive(0, SHORT, "c", waiting(1)),
            // a's pass expired: b is called (and never comes), c is next.
            check_in(6_000, SHORT, "c", waiting(0)),
            stats(
                6_000,
                SHORT,
                Stats {
                    called: Some(1),
                    active: Some(0),
                    waiting: Some(1),
                    ..ANY
                },
            ),
            check_in(12_000, SHORT, "c", waiting(0)),
            check_in(16_500, SHORT, "c", called(3, 16_500)),
            check_in(16_500, SHORT, "b", Expect::Unknown),
            stats(
                16_500,
                SHORT,
                Stats {
                    called: Some(0),
                    active: Some(1),
                    abandoned: Some(1),
                    ..ANY
                },
            ),
        ],
    },
    Case {
        name: "while paused nobody is called and everybody keeps their place",
        steps: &[
            arrive(0, PAUSED, "a", waiting(0)),
            arrive(0, PAUSED, "b", waiting(1)),
            check_in(30_000, PAUSED, "a", waiting(0)),
            check_in(30_000, PAUSED, "b", waiting(1)),
            stats(
                30_000,
                PAUSED,
                Stats {
                    waiting: Some(2),
                    active: Some(0),
                    called: Some(0),
                    ..ANY
                },
            ),
            // Resumed: both are called, in order.
            check_in(50_000, TWO, "b", called(2, 50_000)),
            check_in(50_000, TWO, "a", called(1, 50_000)),
        ],
    },
    Case {
        name: "the operator's setting is auto until set, then what was set",
        steps: &[
            Step::Control(Control::Auto),
            Step::SetControl(Control::Paused),
            Step::Control(Control::Paused),
            Step::SetControl(Control::Open),
            Step::Control(Control::Open),
            Step::SetControl(Control::Closed),
            Step::Control(Control::Closed),
            Step::SetControl(Control::Auto),
            Step::Control(Control::Auto),
        ],
    },
];

/// Runs every case, each on a fresh line from `make`, and panics listing
/// every case that failed with its first mismatch.
pub async fn run_all(make: impl Fn() -> Arc<dyn RoomLine>) {
    let mut failures = String::new();
    for case in CASES {
        if let Err(why) = run(case, make()).await {
            let _ = writeln!(failures, "{}: {why}", case.name);
        }
    }
    assert!(
        failures.is_empty(),
        "the line breaks its rules:\n{failures}"
    );
}

/// Runs one case on `line`: the first mismatch, if any.
pub async fn run(case: &Case, line: Arc<dyn RoomLine>) -> Result<(), String> {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut held: HashMap<&'static str, Vec<u64>> = HashMap::new();
    for (i, step) in case.steps.iter().enumerate() {
        let fail = |what: String| -> Result<(), String> {
            Err(format!("step {} ({step:?}): {what}", i + 1))
        };
        match *step {
            Step::Arrive {
                at: first,
                limits,
                direct,
                name,
                count,
                every,
                expect,
            } => {
                for n in 0..u64::from(count) {
                    let client = holder(name, n);
                    let when = at(first + n * every);
                    let (arrival, _) = line.arrive(client, when, &limits, direct).await;
                    let id = match arrival {
                        Arrival::Admitted(a) => a.pass,
                        Arrival::Waiting { seq, .. } | Arrival::Drawn { seq, .. } => seq,
                        Arrival::Full => 0,
                    };
                    held.entry(name).or_default().push(id);
                    let want = expect.further(n);
                    if !want.matches_arrival(&arrival) {
                        return fail(format!("arrival {n}: {arrival:?}, expected {want:?}"));
                    }
                }
            }
            Step::CheckIn {
                at: when,
                limits,
                name,
                expect,
            } => {
                for (n, id) in tickets(&held, name)?.iter().enumerate() {
                    let client = holder(name, n as u64);
                    let (found, _) = line.check_in(*id, client, at(when), &limits).await;
                    if !expect.matches_check_in(&found) {
                        return fail(format!("holder {n}: {found:?}, expected {expect:?}"));
                    }
                }
            }
            Step::Touch {
                at: when,
                name,
                limits,
                expect,
            } => {
                let ids = tickets(&held, name)?;
                let id = *ids.last().ok_or_else(|| format!("no pass named {name}"))?;
                let client = holder(name, ids.len() as u64 - 1);
                let in_use = line.touch(id, client, at(when), &limits).await;
                if in_use != expect {
                    return fail(format!("in use: {in_use}"));
                }
            }
            Step::Shared {
                at: when,
                limits,
                name,
                ticket,
                clients,
                admitted,
            } => {
                let id = *tickets(&held, name)?
                    .last()
                    .ok_or_else(|| format!("nobody named {name}"))?;
                let mut let_in = 0;
                for other in 0..clients {
                    let client = holder("someone else", other);
                    let_in += u64::from(if ticket {
                        let (found, _) = line.check_in(id, client, at(when), &limits).await;
                        matches!(found, CheckIn::Admitted(_))
                    } else {
                        line.touch(id, client, at(when), &limits).await
                    });
                }
                if let_in != admitted {
                    return fail(format!("{let_in} of {clients} other clients let in"));
                }
            }
            Step::TouchNeverIssued { at: when } => {
                if line.touch(12_345, 1, at(when), &LONG).await {
                    return fail("a pass never given out is in use".to_owned());
                }
            }
            Step::Stats {
                at: when,
                limits,
                expect,
            } => {
                let stats = line.stats(at(when), &limits).await;
                if let Err(what) = expect.check(&stats) {
                    return fail(format!("{what} in {stats:?}"));
                }
            }
            Step::Shuffled {
                at: when,
                limits,
                name,
            } => {
                let mut places = Vec::new();
                for (n, id) in tickets(&held, name)?.iter().enumerate() {
                    let client = holder(name, n as u64);
                    match line.check_in(*id, client, at(when), &limits).await.0 {
                        CheckIn::Waiting { ahead } => places.push(ahead),
                        other => return fail(format!("{other:?}, expected waiting")),
                    }
                }
                let mut sorted = places.clone();
                sorted.sort_unstable();
                if sorted != (0..places.len() as u64).collect::<Vec<_>>() {
                    return fail(format!("places {places:?} are not 0..{}", places.len()));
                }
                if places == sorted {
                    return fail("the places keep the order of arrival".to_owned());
                }
            }
            Step::SetControl(control) => line.set_control(control).await,
            Step::Control(want) => {
                let control = line.control().await;
                if control != want {
                    return fail(format!("{control:?}"));
                }
            }
        }
    }
    Ok(())
}

/// The client tag of the `n`-th holder of `name`: the same in every step,
/// never another holder's, within 52 bits (Redis numbers are doubles).
fn holder(name: &str, n: u64) -> u64 {
    let named = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (named >> 34) << 20 | ((n + 1) & 0xf_ffff)
}

fn tickets<'a>(
    held: &'a HashMap<&'static str, Vec<u64>>,
    name: &str,
) -> Result<&'a Vec<u64>, String> {
    held.get(name)
        .ok_or_else(|| format!("nobody named {name} arrived"))
}

impl Expect {
    /// The answer of the `n`-th of a group arriving together.
    fn further(self, n: u64) -> Expect {
        match self {
            Expect::Admitted {
                number,
                waited,
                first,
            } => Expect::Admitted {
                number: number + n,
                waited,
                first,
            },
            Expect::Waiting { ahead } => Expect::Waiting { ahead: ahead + n },
            Expect::Drawn { drawn } => Expect::Drawn { drawn: drawn + n },
            other => other,
        }
    }

    fn matches_admission(self, admission: &super::Admission) -> bool {
        match self {
            Expect::Admitted {
                number,
                waited,
                first,
            } => {
                admission.number == number
                    && admission.waited == waited.map(Duration::from_millis)
                    && admission.first == first
            }
            Expect::Any => true,
            _ => false,
        }
    }

    fn matches_arrival(self, arrival: &Arrival) -> bool {
        match (self, arrival) {
            (Expect::Any, _) => true,
            (_, Arrival::Admitted(admission)) => self.matches_admission(admission),
            (Expect::Waiting { ahead }, Arrival::Waiting { ahead: got, .. }) => ahead == *got,
            (Expect::Drawn { drawn }, Arrival::Drawn { drawn: got, .. }) => drawn == *got,
            (Expect::Full, Arrival::Full) => true,
            _ => false,
        }
    }

    fn matches_check_in(self, found: &CheckIn) -> bool {
        match (self, found) {
            (Expect::Any, _) => true,
            (_, CheckIn::Admitted(admission)) => self.matches_admission(admission),
            (Expect::Waiting { ahead }, CheckIn::Waiting { ahead: got }) => ahead == *got,
            (Expect::Drawn { drawn }, CheckIn::Drawn { drawn: got }) => drawn == *got,
            (Expect::Unknown, CheckIn::Unknown) => true,
            _ => false,
        }
    }
}

impl Stats {
    fn check(&self, stats: &LineStats) -> Result<(), String> {
        let exact = [
            ("waiting", self.waiting, stats.waiting),
            ("drawn", self.drawn, stats.drawn),
            ("called", self.called, stats.called),
            ("active", self.active, stats.active),
            ("abandoned", self.abandoned, stats.abandoned),
            (
                "admitted_from_line",
                self.from_line,
                stats.admitted_from_line,
            ),
            ("admitted_direct", self.direct, stats.admitted_direct),
        ];
        for (field, want, got) in exact {
            if want.is_some_and(|want| want != got) {
                return Err(format!("{field} {got}, expected {want:?}"));
            }
        }
        let calls = stats.called + stats.admitted_from_line + stats.admitted_direct;
        if let Some((low, high)) = self.calls {
            if !(low..=high).contains(&calls) {
                return Err(format!("{calls} called, expected {low}..={high}"));
            }
        }
        if let Some((low, high)) = self.rate {
            let rate = stats.rate_admissions / stats.rate_busy_seconds;
            if !(low..=high).contains(&rate) {
                return Err(format!("rate {rate}, expected {low}..={high}"));
            }
        }
        Ok(())
    }
}
