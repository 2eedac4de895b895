//! Live per-backend state, shared by every snapshot that names the backend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// How fast old latency samples fade from the EWMA. Default: 10s, as linkerd.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for a backend before its first answer. Default: 10ms.
const EWMA_START: Duration = Duration::from_millis(10);

/// One backend's live state: what balancing and (later) health decisions read.
#[derive(Debug)]
pub struct Backend {
    /// Name of the pool this entry belongs to.
    pub pool: String,
    /// Where the backend listens.
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    ewma: Mutex<Ewma>,
}

#[derive(Debug)]
struct Ewma {
    /// Smoothed latency in nanoseconds.
    nanos: f64,
    updated: Instant,
}

impl Backend {
    fn new(pool: &str, addr: SocketAddr) -> Backend {
        Backend {
            pool: pool.to_string(),
            addr,
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma {
                nanos: EWMA_START.as_nanos() as f64,
                updated: Instant::now(),
            }),
        }
    }

    /// Requests sent to this backend that have not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
            started: Instant::now(),
        }
    }

    /// Feeds one observed latency into the peak EWMA: a slower sample replaces the
    /// average at once, a faster one pulls it down gradually.
    pub fn observe_latency(&self, latency: Duration) {
        let now = Instant::now();
        let sample = latency.as_nanos() as f64;
        let Ok(mut ewma) = self.ewma.lock() else {
            return;
        };
        if sample > ewma.nanos {
            ewma.nanos = sample;
        } else {
            let elapsed = now.saturating_duration_since(ewma.updated).as_secs_f64();
            let keep = (-elapsed / EWMA_DECAY.as_secs_f64()).exp();
            ewma.nanos = ewma.nanos * keep + sample * (1.0 - keep);
        }
        ewma.updated = now;
    }

    /// The peak-EWMA load estimate: smoothed latency times (requests in flight + 1).
    pub fn ewma_cost(&self) -> f64 {
        let nanos = self.ewma.lock().map_or(EWMA_START.as_nanos() as f64, |e| e.nanos);
        nanos * (self.in_flight() + 1) as f64
    }
}

/// A request in flight to a backend; dropping it ends the count on every path.
#[derive(Debug)]
pub struct InFlight {
    backend: Arc<Backend>,
    started: Instant,
}

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Time since the request was sent to the backend.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Live state of every backend, keyed by (pool name, address). Entries are held by
/// snapshots and requests; once none holds one, the next lookup forgets it.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<HashMap<(String, SocketAddr), Weak<Backend>>>,
}

impl Registry {
    /// The live entry for a backend of a pool, created if it is new.
    pub fn backend(&self, pool: &str, addr: SocketAddr) -> Arc<Backend> {
        let mut entries = match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.retain(|_, weak| weak.strong_count() > 0);
        let key = (pool.to_string(), addr);
        if let Some(backend) = entries.get(&key).and_then(Weak::upgrade) {
            return backend;
        }
        let backend = Arc::new(Backend::new(pool, addr));
        entries.insert(key, Arc::downgrade(&backend));
        backend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn registry_shares_live_entries_and_forgets_dropped_ones() {
        let registry = Registry::default();
        let a = registry.backend("orders", addr(1));
        let _guard = a.start_request();
        let again = registry.backend("orders", addr(1));
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(again.in_flight(), 1);
        assert!(!Arc::ptr_eq(&a, &registry.backend("catalog", addr(1))));
        drop((a, again, _guard));
        assert_eq!(registry.backend("orders", addr(1)).in_flight(), 0);
    }

    #[test]
    fn in_flight_guard_counts_until_dropped() {
        let backend = Arc::new(Backend::new("p", addr(1)));
        let first = backend.start_request();
        let second = backend.start_request();
        assert_eq!(backend.in_flight(), 2);
        drop(first);
        assert_eq!(backend.in_flight(), 1);
        drop(second);
        assert_eq!(backend.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_jumps_up_and_decays_down() {
        let backend = Backend::new("p", addr(1));
        backend.observe_latency(Duration::from_millis(500));
        assert!((backend.ewma_cost() - 500e6).abs() < 1.0);
        tokio::time::advance(Duration::from_secs(10)).await;
        backend.observe_latency(Duration::from_millis(10));
        // One decay period keeps e^-1 of the old value.
        let expected = 500e6 * (-1.0f64).exp() + 10e6 * (1.0 - (-1.0f64).exp());
        assert!((backend.ewma_cost() - expected).abs() < 1e3, "{}", backend.ewma_cost());
    }
}
