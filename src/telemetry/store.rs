//! The shared store's metrics: whether Redis answers, and what fell back to
//! this process's memory because it did not.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use strum::{EnumCount, VariantArray};

/// What used the store: the `feature` label of the fallback counter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::EnumCount, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum StoreFeature {
    /// Idempotency records.
    Idempotency,
    /// Shared rate limits.
    RateLimit,
    /// Waiting-room lines.
    Room,
}

impl StoreFeature {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// `ordergate_store_*`.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// 1 while the store answers (always 1 for memory), 0 while Redis is
    /// unreachable and operations fall back to memory.
    pub up: IntGauge,
    fallbacks: [IntCounter; StoreFeature::COUNT],
    /// Redis operations that failed or took longer than `timeout`.
    pub errors: IntCounter,
}

impl StoreMetrics {
    pub(super) fn new(r: &Registry) -> StoreMetrics {
        let up = IntGauge::new(
            "ordergate_store_up",
            "1 while the shared store answers (always 1 for memory); 0 while operations fall back to this instance's memory.",
        )
        .expect("static metric definition");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "ordergate_store_fallbacks_total",
                "Operations served by this instance's memory because Redis did not answer in time, by feature.",
            ),
            &["feature"],
        )
        .expect("static metric definition");
        let errors = IntCounter::new(
            "ordergate_store_errors_total",
            "Redis operations that failed or timed out.",
        )
        .expect("static metric definition");
        for metric in [
            Box::new(up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fallbacks.clone()),
            Box::new(errors.clone()),
        ] {
            r.register(metric).expect("metric names are unique");
        }
        up.set(1);
        StoreMetrics {
            up,
            fallbacks: std::array::from_fn(|i| {
                fallbacks.with_label_values(&[StoreFeature::VARIANTS[i].as_str()])
            }),
            errors,
        }
    }

    /// Counts an operation served from memory instead of Redis.
    pub fn fallback(&self, feature: StoreFeature) {
        self.fallbacks[feature as usize].inc();
    }

    /// Fallbacks since start, all features.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.iter().map(IntCounter::get).sum()
    }
}
