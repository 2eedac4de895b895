//! Backends by name: failed lookups and how many addresses each name serves.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// `ordergate_dns_*`, labelled by pool and the name as written
/// (`orders.internal:8080`, `srv _http._tcp.orders.internal`).
#[derive(Debug, Clone)]
pub struct DnsMetrics {
    /// Lookups that failed or came back empty (the last good answer kept serving).
    pub failures: IntCounterVec,
    /// Addresses a name resolves to now (the last good answer).
    pub addresses: IntGaugeVec,
    /// Times an answer changed the addresses served.
    pub changes: IntCounterVec,
}

impl DnsMetrics {
    /// Registers the families on `r` (once: see `Metrics::registered`).
    pub fn new(r: &Registry) -> DnsMetrics {
        let labels = ["pool", "name"];
        let failures = IntCounterVec::new(
            Opts::new(
                "ordergate_dns_failures_total",
                "Lookups of a backend name that failed or came back empty; the last good addresses kept serving.",
            ),
            &labels,
        )
        .expect("static metric definition");
        let addresses = IntGaugeVec::new(
            Opts::new(
                "ordergate_dns_addresses",
                "Addresses a backend name resolves to now, each served as a backend.",
            ),
            &labels,
        )
        .expect("static metric definition");
        let changes = IntCounterVec::new(
            Opts::new(
                "ordergate_dns_changes_total",
                "Answers that changed the addresses a backend name serves.",
            ),
            &labels,
        )
        .expect("static metric definition");
        for metric in [
            Box::new(failures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(addresses.clone()),
            Box::new(changes.clone()),
        ] {
            if let Err(e) = r.register(metric) {
                log::error!("cannot register the DNS metrics: {e}");
            }
        }
        DnsMetrics {
            failures,
            addresses,
            changes,
        }
    }
}
