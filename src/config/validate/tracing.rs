//! `[tracing]`: the OTLP collector, the sampling ratio and the export timing.

use std::time::Duration;

use super::values::duration_or;
use super::Problems;
use crate::config::file::FileTracing;
use crate::config::tracing::{DEFAULT_INTERVAL, DEFAULT_RATIO, DEFAULT_TIMEOUT};
use crate::config::{OtlpEndpoint, TracingConfig};

/// Shorter than this, the exporter would wake for nearly every span.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Validates `[tracing]`; no table is tracing off.
pub(super) fn tracing(
    file: Option<&FileTracing>,
    problems: &mut Problems,
) -> Option<TracingConfig> {
    let file = file?;
    let otlp = match file.otlp.as_deref() {
        Some(text) => match OtlpEndpoint::parse(text) {
            Ok(endpoint) => Some(endpoint),
            Err(message) => {
                problems.add("tracing.otlp", message);
                None
            }
        },
        None => {
            problems.add(
                "tracing.otlp",
                "is required: the OTLP/HTTP collector spans go to, e.g. \"http://127.0.0.1:4318\" (Jaeger, Tempo, the OpenTelemetry Collector); remove [tracing] to turn tracing off",
            );
            None
        }
    };
    let ratio = match file.ratio.map(|n| n.as_f64()) {
        None => DEFAULT_RATIO,
        Some(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
        Some(ratio) => {
            problems.add(
                "tracing.ratio",
                format!("{ratio} is not a share of requests; write a number from 0 to 1, e.g. 0.01 for 1%"),
            );
            DEFAULT_RATIO
        }
    };
    let service_name = file
        .service_name
        .clone()
        .unwrap_or_else(|| "ordergate".to_string());
    if service_name.is_empty()
        || service_name.len() > 255
        || !service_name.bytes().all(|b| b.is_ascii_graphic())
    {
        problems.add(
            "tracing.service_name",
            format!("{service_name:?}: write 1 to 255 printable characters without spaces, e.g. \"ordergate-eu1\""),
        );
    }
    let timeout = duration_or(
        &"tracing.timeout",
        file.timeout.as_deref(),
        DEFAULT_TIMEOUT,
        false,
        problems,
    );
    let interval = duration_or(
        &"tracing.interval",
        file.interval.as_deref(),
        DEFAULT_INTERVAL,
        false,
        problems,
    );
    if interval < MIN_INTERVAL {
        problems.add(
            "tracing.interval",
            format!("{interval:?} is too short; use at least {MIN_INTERVAL:?}, e.g. \"1s\""),
        );
    }
    Some(TracingConfig {
        otlp: otlp?,
        ratio,
        client_sampled: file.client_sampled.unwrap_or(false),
        service_name,
        timeout,
        interval,
    })
}
