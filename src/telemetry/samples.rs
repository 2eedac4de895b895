//! The last requests that ended in an error, for `/status`: what an SRE
//! needs to find one in the access log and in the traces (the request id and
//! the trace id), kept in a small ring. At most one sample is taken per
//! [`EVERY`], so a flood of errors costs a clock read each, not a lock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// Samples kept.
pub(crate) const KEEP: usize = 20;
/// The least time between two samples.
pub(crate) const EVERY: Duration = Duration::from_millis(50);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// One request that ended in an error.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorSample {
    /// RFC 3339 time it ended, UTC.
    pub time: String,
    /// The request id (on the page and in the access log).
    pub request_id: String,
    /// The trace id, when tracing is on.
    pub trace_id: Option<String>,
    /// The route, when one matched.
    pub route: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// ordergate's outcome, when it answered itself.
    pub outcome: Option<&'static str>,
}

/// The ring of recent error samples.
#[derive(Debug, Default)]
pub struct ErrorSamples {
    /// Milliseconds since [`EPOCH`] of the last sample, plus one (0: none yet).
    last: AtomicU64,
    samples: Mutex<VecDeque<ErrorSample>>,
}

impl ErrorSamples {
    /// Takes a sample made by `make`, unless one was taken within [`EVERY`].
    pub fn offer(&self, make: impl FnOnce() -> ErrorSample) {
        self.offer_at(EPOCH.elapsed(), make);
    }

    /// [`ErrorSamples::offer`] at `since_epoch` after the process's first
    /// sample clock reading.
    fn offer_at(&self, since_epoch: Duration, make: impl FnOnce() -> ErrorSample) {
        let now = since_epoch.as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < EVERY.as_millis() as u64 {
            return;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            // Another request took this turn.
            return;
        }
        let sample = make();
        let mut samples = self.samples.lock();
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples, newest first.
    pub fn list(&self) -> Vec<ErrorSample> {
        self.samples.lock().iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> ErrorSample {
        ErrorSample {
            time: String::new(),
            request_id: id.to_string(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_string()),
            route: None,
            status: 503,
            outcome: Some("shed"),
        }
    }

    #[test]
    fn samples_are_spaced_and_bounded() {
        let samples = ErrorSamples::default();
        let mut at = Duration::from_secs(1);
        samples.offer_at(at, || sample("a"));
        samples.offer_at(at + EVERY / 2, || sample("b"));
        assert_eq!(samples.list().len(), 1, "the second came too soon");
        for i in 0..KEEP + 2 {
            at += EVERY + Duration::from_millis(2);
            samples.offer_at(at, || sample(&format!("n{i}")));
        }
        let list = samples.list();
        assert_eq!(list.len(), KEEP);
        assert_eq!(list[0].request_id, format!("n{}", KEEP + 1));
    }
}
