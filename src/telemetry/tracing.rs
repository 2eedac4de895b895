//! Spans sent over OTLP, and spans lost: `ordergate_tracing_*`.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Why spans were dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpansDropped {
    /// The export queue was full: the collector is slow or down.
    QueueFull,
    /// The collector refused the batch, or could not be reached in time.
    ExportFailed,
    /// Tracing was turned off by a reload while spans waited.
    Disabled,
}

impl SpansDropped {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SpansDropped::QueueFull => "queue_full",
            SpansDropped::ExportFailed => "export_failed",
            SpansDropped::Disabled => "disabled",
        }
    }
}

/// `ordergate_tracing_*`.
#[derive(Debug, Clone)]
pub struct TracingMetrics {
    /// Spans the collector accepted.
    pub exported: IntCounter,
    /// Spans lost, by reason.
    pub dropped: IntCounterVec,
    /// Traces kept for export, by why (`ratio`, `page`, `retry`).
    pub kept: IntCounterVec,
}

impl TracingMetrics {
    /// Registers the families on `r` (once: see `Metrics::registered`).
    pub fn new(r: &Registry) -> TracingMetrics {
        let exported = IntCounter::new(
            "ordergate_tracing_spans_exported_total",
            "Spans the OTLP collector accepted.",
        )
        .expect("static metric definition");
        let dropped = IntCounterVec::new(
            Opts::new(
                "ordergate_tracing_spans_dropped_total",
                "Spans lost instead of exported: queue_full (the collector is slow or down and the export queue is full), export_failed (the collector refused the batch or did not answer in time), disabled (tracing was turned off while they waited).",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let kept = IntCounterVec::new(
            Opts::new(
                "ordergate_tracing_traces_kept_total",
                "Requests whose trace was kept for export: ratio (sampled by chance or the client's flag), page (ended in one of ordergate's pages), retry (took more than one attempt).",
            ),
            &["why"],
        )
        .expect("static metric definition");
        for reason in [
            SpansDropped::QueueFull,
            SpansDropped::ExportFailed,
            SpansDropped::Disabled,
        ] {
            dropped.with_label_values(&[reason.as_str()]);
        }
        for why in ["ratio", "page", "retry"] {
            kept.with_label_values(&[why]);
        }
        for metric in [
            Box::new(exported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dropped.clone()),
            Box::new(kept.clone()),
        ] {
            if let Err(e) = r.register(metric) {
                log::error!("cannot register the tracing metrics: {e}");
            }
        }
        TracingMetrics {
            exported,
            dropped,
            kept,
        }
    }

    /// Counts `spans` lost for `reason`.
    pub fn dropped(&self, reason: SpansDropped, spans: usize) {
        self.dropped
            .with_label_values(&[reason.as_str()])
            .inc_by(spans as u64);
    }
}
