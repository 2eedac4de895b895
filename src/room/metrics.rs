//! The waiting rooms' metrics, labelled by room name (from the config):
//! line length, shoppers on the site, admissions, abandoned tickets, refused
//! cookies (a closed set of reasons), the admitted shoppers' waits and how far
//! their first estimate was off, and the admission rate estimates use.
//!
//! The families are the room feature's own: [`RoomVecs::new`] registers them
//! on the one registry through [`Metrics::registered`], once per process
//! however many snapshots and reloads build rooms.
//!
//! [`Metrics::registered`]: crate::telemetry::Metrics::registered

use std::time::Duration;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use strum::{EnumCount, VariantArray};

use super::cookie::Invalid;
use crate::store::room::LineStats;

/// Wait buckets, in seconds: 1 s to 1 h.
const WAIT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];
/// Estimate error buckets, in seconds.
const ERROR_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// The rooms' metric families, registered once.
#[derive(Debug, Clone)]
pub struct RoomVecs {
    waiting: IntGaugeVec,
    active: IntGaugeVec,
    rate: GaugeVec,
    estimated_wait: GaugeVec,
    admitted: IntCounterVec,
    abandoned: IntCounterVec,
    rejected: IntCounterVec,
    wait: HistogramVec,
    eta_error: HistogramVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl RoomVecs {
    /// The definitions are static: failing to create one is a bug caught by
    /// the first test run.
    pub fn new(r: &Registry) -> RoomVecs {
        let room = &["room"];
        let int_gauge = |name: &str, help: &str| {
            register(
                r,
                IntGaugeVec::new(Opts::new(name, help), room).expect("static metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                r,
                GaugeVec::new(Opts::new(name, help), room).expect("static metric"),
            )
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("static metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(r, HistogramVec::new(opts, room).expect("static metric"))
        };
        RoomVecs {
            waiting: int_gauge(
                "ordergate_room_waiting",
                "Tickets in the room's line (abandoned ones not yet skipped included).",
            ),
            active: int_gauge(
                "ordergate_room_active",
                "Shoppers on the site through the room: passes in use and calls not yet picked up.",
            ),
            rate: gauge(
                "ordergate_room_admission_rate",
                "Admissions per second the room's estimates use (measured while shoppers waited).",
            ),
            estimated_wait: gauge(
                "ordergate_room_estimated_wait_seconds",
                "Estimated wait of a shopper joining the line now.",
            ),
            admitted: counter(
                "ordergate_room_admitted_total",
                "Shoppers let in, by how: from the line, or direct (nobody waited).",
                &["room", "via"],
            ),
            abandoned: counter(
                "ordergate_room_abandoned_total",
                "Tickets skipped or lost because their holder stopped checking in, and calls nobody came for.",
                room,
            ),
            rejected: counter(
                "ordergate_room_rejected_cookies_total",
                "Tickets and passes not taken (the shopper was treated as new), by reason: malformed, bad_signature (forged or tampered), other_room, expired.",
                &["room", "reason"],
            ),
            wait: histogram(
                "ordergate_room_wait_seconds",
                "Time admitted shoppers waited in line, from ticket to admission.",
                WAIT_BUCKETS,
            ),
            eta_error: histogram(
                "ordergate_room_eta_error_seconds",
                "How far an admitted shopper's actual wait was from the first estimate shown (absolute).",
                ERROR_BUCKETS,
            ),
        }
    }

    /// Handles for a room, every series at zero from the start.
    pub fn room(&self, name: &str) -> RoomMetrics {
        RoomMetrics {
            waiting: self.waiting.with_label_values(&[name]),
            active: self.active.with_label_values(&[name]),
            rate: self.rate.with_label_values(&[name]),
            estimated_wait: self.estimated_wait.with_label_values(&[name]),
            admitted: ["line", "direct"].map(|via| self.admitted.with_label_values(&[name, via])),
            abandoned: self.abandoned.with_label_values(&[name]),
            rejected: std::array::from_fn(|i| {
                let reason = Invalid::VARIANTS[i];
                self.rejected.with_label_values(&[name, reason.as_str()])
            }),
            wait: self.wait.with_label_values(&[name]),
            eta_error: self.eta_error.with_label_values(&[name]),
        }
    }
}

/// One room's metric handles, resolved when a snapshot is built.
#[derive(Debug, Clone)]
pub struct RoomMetrics {
    waiting: IntGauge,
    active: IntGauge,
    rate: prometheus::Gauge,
    estimated_wait: prometheus::Gauge,
    admitted: [IntCounter; 2],
    abandoned: IntCounter,
    rejected: [IntCounter; Invalid::COUNT],
    wait: Histogram,
    eta_error: Histogram,
}

impl RoomMetrics {
    /// A shopper let in: `waited` in line (`None`: nobody waited), with the
    /// first estimate shown (seconds) when known.
    pub fn admitted(&self, waited: Option<Duration>, first_estimate: Option<u32>) {
        match waited {
            Some(waited) => {
                self.admitted[0].inc();
                self.wait.observe(waited.as_secs_f64());
                if let Some(estimate) = first_estimate {
                    self.eta_error
                        .observe((waited.as_secs_f64() - f64::from(estimate)).abs());
                }
            }
            None => self.admitted[1].inc(),
        }
    }

    /// Tickets skipped or lost.
    pub fn abandoned(&self, n: u32) {
        if n > 0 {
            self.abandoned.inc_by(u64::from(n));
        }
    }

    /// A ticket or pass not taken.
    pub fn rejected(&self, reason: Invalid) {
        self.rejected[reason as usize].inc();
    }

    /// The line's gauges.
    pub fn observe_line(&self, stats: &LineStats, rate: f64) {
        self.waiting
            .set(i64::try_from(stats.waiting + stats.drawn).unwrap_or(i64::MAX));
        self.active
            .set(i64::try_from(stats.active + stats.called).unwrap_or(i64::MAX));
        self.rate.set(rate);
    }

    /// The estimated wait of a newcomer, seconds.
    pub fn estimated_wait(&self, seconds: Option<u32>) {
        self.estimated_wait.set(seconds.map_or(f64::NAN, f64::from));
    }
}
