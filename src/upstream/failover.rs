//! Backup pools: when no backend of a pool can take traffic, its requests go
//! to the pool's `backup` (a DR site, a degraded read-only fleet); they come
//! back only after the primary could serve for `failback_after` without a
//! break, so a flapping primary moves traffic at most once per that time.
//!
//! The state is live (it outlives snapshots) and kept per primary pool; a
//! switch is logged once, with its reason.

use parking_lot::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Where a pool's traffic goes, and since when the primary could serve.
#[derive(Debug, Default)]
pub struct Failover {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    on_backup: bool,
    /// While on the backup: since when the primary could serve, unbroken.
    primary_ok_since: Option<Instant>,
}

/// A change of where traffic goes, to log once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The primary has no backend that can take traffic.
    ToBackup,
    /// The primary could serve for `failback_after`.
    ToPrimary,
}

impl Failover {
    /// Whether the pool's traffic goes to its backup now, given whether the
    /// primary can serve; also the switch this decision made, if any.
    pub fn serve_backup(
        &self,
        primary_can_serve: bool,
        now: Instant,
        failback_after: Duration,
    ) -> (bool, Option<Switch>) {
        let mut state = self.state.lock();
        match (state.on_backup, primary_can_serve) {
            (false, true) => (false, None),
            (false, false) => {
                *state = State {
                    on_backup: true,
                    primary_ok_since: None,
                };
                (true, Some(Switch::ToBackup))
            }
            (true, false) => {
                state.primary_ok_since = None;
                (true, None)
            }
            (true, true) => {
                let since = *state.primary_ok_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= failback_after {
                    *state = State::default();
                    (false, Some(Switch::ToPrimary))
                } else {
                    (true, None)
                }
            }
        }
    }

    /// Moves traffic to the backup at once (the primary failed every
    /// connection of a request), unless it is there already.
    pub fn fail_over(&self) -> Option<Switch> {
        let mut state = self.state.lock();
        if state.on_backup {
            state.primary_ok_since = None;
            return None;
        }
        *state = State {
            on_backup: true,
            primary_ok_since: None,
        };
        Some(Switch::ToBackup)
    }

    /// Whether traffic goes to the backup now (for status and metrics).
    pub fn on_backup(&self) -> bool {
        self.state.lock().on_backup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILBACK: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn fails_over_at_once_and_back_after_the_primary_held_up() {
        let failover = Failover::default();
        let t0 = Instant::now();
        assert_eq!(failover.serve_backup(true, t0, FAILBACK), (false, None));
        assert_eq!(
            failover.serve_backup(false, t0, FAILBACK),
            (true, Some(Switch::ToBackup))
        );
        assert_eq!(failover.serve_backup(false, t0, FAILBACK), (true, None));
        // The primary is back, but not for long enough yet.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(failover.serve_backup(true, t1, FAILBACK), (true, None));
        assert_eq!(
            failover.serve_backup(true, t1 + Duration::from_secs(9), FAILBACK),
            (true, None)
        );
        assert_eq!(
            failover.serve_backup(true, t1 + Duration::from_secs(10), FAILBACK),
            (false, Some(Switch::ToPrimary))
        );
        assert!(!failover.on_backup());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_primary_moves_traffic_once_per_failback_time() {
        let failover = Failover::default();
        let mut now = Instant::now();
        let mut switches = 0;
        // Up 3 s, down 1 s, for a minute.
        for second in 0..60 {
            let up = second % 4 != 3;
            if failover.serve_backup(up, now, FAILBACK).1.is_some() {
                switches += 1;
            }
            now += Duration::from_secs(1);
        }
        assert_eq!(switches, 1, "once to the backup, never back while it flaps");
    }

    #[tokio::test(start_paused = true)]
    async fn connect_failures_fail_over_within_the_request() {
        let failover = Failover::default();
        assert_eq!(failover.fail_over(), Some(Switch::ToBackup));
        assert_eq!(failover.fail_over(), None);
        assert!(failover.on_backup());
    }
}
