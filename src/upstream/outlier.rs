//! Passive outlier detection: eject a backend that keeps failing real requests,
//! for longer each time it is ejected again, and let it back after its time (and,
//! when the pool has active checks, a passing probe).

use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierConfig;

/// What one finished attempt tells about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An answer below 500.
    Success,
    /// Refused, reset, timed out, or a 502/503/504 answer.
    GatewayFailure,
    /// Any other 5xx answer.
    ServerError,
}

impl Signal {
    /// The signal of an answer with this status.
    pub fn from_status(status: u16) -> Signal {
        match status {
            502..=504 => Signal::GatewayFailure,
            500..=599 => Signal::ServerError,
            _ => Signal::Success,
        }
    }
}

/// One backend's ejection state.
#[derive(Debug, Clone, Default)]
pub struct OutlierState {
    gateway_failures: u32,
    server_errors: u32,
    ejected_until: Option<Instant>,
    /// Ejections that still count towards the next ejection's length.
    ejections: u32,
    /// Set while an ejected backend waits for a passing probe to return.
    awaiting_probe: bool,
}

impl OutlierState {
    /// Counts a signal; returns true when the backend should now be ejected.
    pub fn record(&mut self, signal: Signal, config: &OutlierConfig) -> bool {
        match signal {
            Signal::Success => {
                self.gateway_failures = 0;
                self.server_errors = 0;
                return false;
            }
            Signal::GatewayFailure => {
                self.gateway_failures += 1;
                self.server_errors += 1;
            }
            Signal::ServerError => {
                self.gateway_failures = 0;
                self.server_errors += 1;
            }
        }
        let over = |count: u32, limit: u32| limit > 0 && count >= limit;
        over(self.gateway_failures, config.consecutive_gateway_failures)
            || over(self.server_errors, config.consecutive_5xx)
    }

    /// Ejects the backend: `base_ejection` times the number of recent ejections,
    /// capped at `max_ejection`. Each quiet `base_ejection` since the last return
    /// forgives one earlier ejection. Returns the ejection time.
    pub fn eject(&mut self, now: Instant, config: &OutlierConfig) -> Duration {
        if let Some(until) = self.ejected_until {
            let quiet = now.saturating_duration_since(until);
            let forgiven = quiet.as_nanos() / config.base_ejection.as_nanos().max(1);
            self.ejections = self
                .ejections
                .saturating_sub(forgiven.min(u128::from(u32::MAX)) as u32);
        }
        self.ejections = self.ejections.saturating_add(1);
        let time = config
            .base_ejection
            .saturating_mul(self.ejections)
            .min(config.max_ejection);
        self.ejected_until = Some(now + time);
        self.awaiting_probe = true;
        self.gateway_failures = 0;
        self.server_errors = 0;
        time
    }

    /// Whether the backend is ejected now. With active probes, an ejected backend
    /// stays out after its time until a probe passes.
    pub fn is_ejected(&self, now: Instant, probed: bool) -> bool {
        match self.ejected_until {
            Some(until) if now < until => true,
            Some(_) => probed && self.awaiting_probe,
            None => false,
        }
    }

    /// When the current or last ejection ended (or ends).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// A probe passed: an ejected backend whose time is up may return.
    /// Returns true when this ends its wait for a probe.
    pub fn probe_passed(&mut self, now: Instant) -> bool {
        if self.awaiting_probe && self.ejected_until.is_some_and(|until| now >= until) {
            self.awaiting_probe = false;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutlierConfig {
        OutlierConfig {
            consecutive_gateway_failures: 3,
            consecutive_5xx: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_gateway_failures_eject_and_a_success_resets_the_count() {
        let mut state = OutlierState::default();
        let config = config();
        assert!(!state.record(Signal::GatewayFailure, &config));
        assert!(!state.record(Signal::GatewayFailure, &config));
        assert!(!state.record(Signal::Success, &config));
        assert!(!state.record(Signal::GatewayFailure, &config));
        assert!(!state.record(Signal::GatewayFailure, &config));
        assert!(state.record(Signal::GatewayFailure, &config));
    }

    #[test]
    fn consecutive_5xx_of_any_kind_eject() {
        let mut state = OutlierState::default();
        let config = config();
        for _ in 0..4 {
            assert!(!state.record(Signal::ServerError, &config));
        }
        assert!(state.record(Signal::ServerError, &config));
        assert_eq!(Signal::from_status(503), Signal::GatewayFailure);
        assert_eq!(Signal::from_status(500), Signal::ServerError);
        assert_eq!(Signal::from_status(404), Signal::Success);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_with_each_ejection_up_to_the_cap_and_is_forgiven_over_time() {
        let mut state = OutlierState::default();
        let config = config();
        let now = Instant::now();
        assert_eq!(state.eject(now, &config), Duration::from_secs(5));
        assert!(state.is_ejected(now + Duration::from_secs(4), false));
        assert!(!state.is_ejected(now + Duration::from_secs(5), false));

        let again = now + Duration::from_secs(5);
        assert_eq!(state.eject(again, &config), Duration::from_secs(10));
        let third = again + Duration::from_secs(10);
        assert_eq!(
            state.eject(third, &config),
            Duration::from_secs(12),
            "capped"
        );

        // Two quiet base periods after the last return forgive two ejections.
        let later = third + Duration::from_secs(12) + Duration::from_secs(10);
        assert_eq!(state.eject(later, &config), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn with_probes_an_ejected_backend_waits_for_a_passing_probe_after_its_time() {
        let mut state = OutlierState::default();
        let now = Instant::now();
        state.eject(now, &config());
        state.probe_passed(now + Duration::from_secs(1));
        let after = now + Duration::from_secs(6);
        assert!(
            state.is_ejected(after, true),
            "a probe during the ejection does not count"
        );
        state.probe_passed(after);
        assert!(!state.is_ejected(after, true));
    }
}
