//! `[pools.queue]` and a route's `priority`, validated: what admission runs on.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Priority class of a route. Higher classes are served first and shed last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Browsing and other traffic that can wait or be turned away first.
    Low,
    /// The default class.
    Normal,
    /// Traffic that should rather not wait.
    High,
    /// Checkout and payment: served first, shed last.
    Critical,
}

impl Priority {
    /// Every class, lowest first (the index of a class is `priority as usize`).
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// The name used in the config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|priority| priority.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Priority::ALL.iter().map(|p| p.as_str()).collect();
                format!("{s:?} is not a priority; use one of: {}", names.join(", "))
            })
    }
}

/// Settings (validated by the config module, which builds this).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    /// Most requests waiting at once (all classes). 0 = no queue: reject when full.
    pub max_waiting: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// Share of capacity (percent, 0-100) guaranteed to each class; sum ≤ 100.
    /// Indexed by `Priority as usize` (Low = 0 .. Critical = 3). E.g. Critical: 50.
    pub reserved: [u8; 4],
    /// The concurrency limit.
    pub limit: LimitConfig,
}

/// How the number of slots of a pool is set.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitConfig {
    /// Exactly the sum of the available backends' in-flight caps (the proxy passes capacity in).
    Capacity,
    /// A fixed number of concurrent requests for the pool (at most the capacity).
    Fixed(usize),
    /// Discovered from latency, between min and max (and at most the capacity).
    Adaptive {
        /// Lowest limit (at least 1).
        min: usize,
        /// Highest limit.
        max: usize,
        /// Limit before anything is learned; should be one the servers take without queueing.
        initial: usize,
    },
}
