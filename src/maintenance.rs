//! Planned maintenance: while a window is open for a route (or for everything),
//! shoppers get the maintenance page with `Retry-After` up to its end, and
//! nothing reaches a backend; staff (allowed client addresses, or a header
//! carrying the configured secret) pass through to test before reopening.
//!
//! Windows come from the config (`[maintenance]`, `[routes.maintenance]`) or
//! live from the admin API; a live window wins over the config's for the same
//! scope, survives reloads, and ends at its `until` or when deleted.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;

pub use crate::config::{Cidr, MaintenanceConfig};

/// One maintenance window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// When it ends; `None`: until it is deleted (or the config changes).
    pub until: Option<SystemTime>,
    /// Shown to shoppers on the page, beside the page's own text.
    pub message: Option<String>,
}

impl Window {
    /// Whether the window is open at `now`.
    pub fn is_open(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|until| now < until)
    }

    /// Seconds a shopper should wait: up to the window's end (at least 1, at
    /// most a day); 5 minutes when the end is unknown.
    pub fn retry_after(&self, now: SystemTime) -> u32 {
        let left = match self.until {
            Some(until) => until.duration_since(now).unwrap_or_default(),
            None => Duration::from_secs(300),
        };
        left.as_secs().clamp(1, 86_400) as u32
    }
}

impl MaintenanceConfig {
    /// The configured window, unless the table only holds allow rules.
    pub fn window(&self) -> Option<Window> {
        self.active.then(|| Window {
            until: self.until,
            message: self.message.clone(),
        })
    }

    /// Whether a client passes through during maintenance: its address is in
    /// `allow_cidrs`, or it sends `allow_header` with the secret token.
    pub fn allows(&self, headers: &HeaderMap, client_ip: Option<IpAddr>) -> bool {
        let by_address =
            client_ip.is_some_and(|ip| self.allow_cidrs.iter().any(|c| c.contains(ip)));
        let by_header = match (&self.allow_header, &self.allow_token) {
            (Some(name), Some(token)) => headers
                .get(name)
                .is_some_and(|value| crate::secret::same(value.as_bytes(), token.as_bytes())),
            _ => false,
        };
        by_address || by_header
    }
}

/// What maintenance says about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No open window, or an allowed client: go on.
    Pass,
    /// Answer with the maintenance page.
    Closed(Window),
}

/// Windows opened from the admin API: live state, outliving snapshots.
#[derive(Debug, Default)]
pub struct LiveWindows {
    /// By route name; `None` for everything.
    windows: Mutex<HashMap<Option<String>, Window>>,
    /// Whether any window was opened: lets every request skip the lock while
    /// there is none (the usual case).
    any: AtomicBool,
}

impl LiveWindows {
    /// Opens (or replaces) the window of a route, or of everything.
    pub fn open(&self, route: Option<String>, window: Window) {
        self.windows.lock().insert(route, window);
        self.any.store(true, Ordering::Release);
    }

    /// Ends the window of a route, or of everything; whether there was one.
    pub fn close(&self, route: Option<&str>) -> bool {
        self.windows
            .lock()
            .remove(&route.map(str::to_owned))
            .is_some()
    }

    /// The open windows, ended ones dropped.
    pub fn list(&self, now: SystemTime) -> Vec<(Option<String>, Window)> {
        let mut windows = self.windows.lock();
        windows.retain(|_, window| window.is_open(now));
        let mut list: Vec<_> = windows
            .iter()
            .map(|(r, w)| (r.clone(), w.clone()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    fn get(&self, route: Option<&str>) -> Option<Window> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.windows.lock().get(&route.map(str::to_owned)).cloned()
    }
}

/// The maintenance rules a request meets: its route's, then everything's.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The route's name.
    pub route: &'a str,
    /// `[routes.maintenance]`.
    pub route_config: Option<&'a MaintenanceConfig>,
    /// `[maintenance]`.
    pub global_config: Option<&'a MaintenanceConfig>,
}

impl Rules<'_> {
    /// Whether any window could apply (configured or opened live); when not,
    /// the request needs no clock read or lock.
    pub fn may_apply(&self, live: &LiveWindows) -> bool {
        let configured = |config: Option<&MaintenanceConfig>| config.is_some_and(|c| c.active);
        configured(self.route_config)
            || configured(self.global_config)
            || live.any.load(Ordering::Acquire)
    }

    /// Whether the request passes: the first open window among the route's
    /// live one, the route's configured one, everything's live one and
    /// everything's configured one closes it, unless the client is allowed
    /// by the route's (else everything's) allow rules.
    pub fn decide(
        &self,
        live: &LiveWindows,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
        now: SystemTime,
    ) -> Decision {
        if !self.may_apply(live) {
            return Decision::Pass;
        }
        let open = [
            live.get(Some(self.route)),
            self.route_config.and_then(MaintenanceConfig::window),
            live.get(None),
            self.global_config.and_then(MaintenanceConfig::window),
        ]
        .into_iter()
        .flatten()
        .find(|window| window.is_open(now));
        let Some(window) = open else {
            return Decision::Pass;
        };
        let allowed = self
            .route_config
            .or(self.global_config)
            .is_some_and(|config| config.allows(headers, client_ip));
        if allowed {
            Decision::Pass
        } else {
            Decision::Closed(window)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn config(until: Option<SystemTime>) -> MaintenanceConfig {
        MaintenanceConfig {
            active: true,
            until,
            message: Some("Back at 02:00".into()),
            allow_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
            allow_header: Some(HeaderName::from_static("x-staff")),
            allow_token: Some("s3cret".into()),
        }
    }

    #[test]
    fn an_open_window_closes_the_route_but_lets_staff_through() {
        let now = SystemTime::now();
        let live = LiveWindows::default();
        let route = config(Some(now + Duration::from_secs(600)));
        let rules = Rules {
            route: "checkout",
            route_config: Some(&route),
            global_config: None,
        };
        let shopper: Option<IpAddr> = "192.0.2.1".parse().ok();
        let Decision::Closed(window) = rules.decide(&live, &HeaderMap::new(), shopper, now) else {
            panic!("closed");
        };
        assert_eq!(window.retry_after(now), 600);
        let staff: Option<IpAddr> = "10.1.2.3".parse().ok();
        assert_eq!(
            rules.decide(&live, &HeaderMap::new(), staff, now),
            Decision::Pass
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-staff", "s3cret".parse().expect("value"));
        assert_eq!(rules.decide(&live, &headers, shopper, now), Decision::Pass);
        headers.insert("x-staff", "guess".parse().expect("value"));
        assert!(matches!(
            rules.decide(&live, &headers, shopper, now),
            Decision::Closed(_)
        ));
        // After its end, the window no longer applies.
        let later = now + Duration::from_secs(601);
        assert_eq!(
            rules.decide(&live, &HeaderMap::new(), shopper, later),
            Decision::Pass
        );
    }

    #[test]
    fn live_windows_open_and_close_for_a_route_or_everything() {
        let now = SystemTime::now();
        let live = LiveWindows::default();
        let rules = Rules {
            route: "checkout",
            route_config: None,
            global_config: None,
        };
        assert_eq!(
            rules.decide(&live, &HeaderMap::new(), None, now),
            Decision::Pass
        );
        live.open(
            None,
            Window {
                until: None,
                message: None,
            },
        );
        let Decision::Closed(window) = rules.decide(&live, &HeaderMap::new(), None, now) else {
            panic!("everything is closed");
        };
        assert_eq!(window.retry_after(now), 300);
        assert!(live.close(None));
        assert!(!live.close(None));
        live.open(
            Some("checkout".into()),
            Window {
                until: Some(now - Duration::from_secs(1)),
                message: None,
            },
        );
        assert_eq!(
            rules.decide(&live, &HeaderMap::new(), None, now),
            Decision::Pass
        );
        assert!(live.list(now).is_empty(), "ended windows are dropped");
    }
}
