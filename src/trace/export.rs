//! The span exporter: requests hand their finished spans to a bounded queue
//! without waiting ([`Exporter::submit`]); one background task takes them in
//! batches and posts each batch to the collector as OTLP/HTTP protobuf. When
//! the queue is full (the collector is slow or down), spans are dropped and
//! counted, never waited for; a batch the collector refuses or does not take
//! within `tracing.timeout` is dropped and counted too. The collector and the
//! timing are read from the current config before each batch, so a reload
//! moves the export to a new endpoint at the next batch.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{OtlpEndpoint, TracingConfig};
use crate::telemetry::{SpansDropped, TracingMetrics};

/// Requests' span lists that may wait for export; more are dropped.
pub const QUEUE: usize = 4096;
/// Most spans in one export.
pub const BATCH: usize = 512;
/// The least time between two warnings about a failing collector.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The queue between requests and the export task, and the export settings.
#[derive(Debug)]
pub struct Exporter {
    sender: mpsc::Sender<Vec<Span>>,
    receiver: Mutex<Option<mpsc::Receiver<Vec<Span>>>>,
    settings: ArcSwapOption<TracingConfig>,
    metrics: Arc<TracingMetrics>,
}

impl Exporter {
    /// An exporter with an empty queue, exporting as `settings` say (none: off).
    pub fn new(settings: Option<TracingConfig>, metrics: Arc<TracingMetrics>) -> Exporter {
        let (sender, receiver) = mpsc::channel(QUEUE);
        Exporter {
            sender,
            receiver: Mutex::new(Some(receiver)),
            settings: ArcSwapOption::from(settings.map(Arc::new)),
            metrics,
        }
    }

    /// Follows a reloaded config: the next batch goes where it says.
    pub fn configure(&self, settings: Option<TracingConfig>) {
        let changed = self.settings.load().as_deref() != settings.as_ref();
        if changed {
            match &settings {
                Some(s) => log::info!("tracing: spans go to {} from the next batch", s.otlp),
                None => log::info!("tracing: off"),
            }
            self.settings.store(settings.map(Arc::new));
        }
    }

    /// The metrics of tracing.
    pub fn metrics(&self) -> &TracingMetrics {
        &self.metrics
    }

    /// Whether the queue can take another request's spans now (the caller
    /// skips building them otherwise, and counts them dropped).
    pub fn has_room(&self) -> bool {
        self.sender.capacity() > 0
    }

    /// Queues one request's spans for export without waiting; when the queue
    /// is full they are dropped and counted.
    pub fn submit(&self, spans: Vec<Span>) {
        if let Err(e) = self.sender.try_send(spans) {
            let spans = match e {
                mpsc::error::TrySendError::Full(spans)
                | mpsc::error::TrySendError::Closed(spans) => spans,
            };
            self.metrics.dropped(SpansDropped::QueueFull, spans.len());
        }
    }

    /// Counts `spans` dropped because the queue was full, without building them.
    pub fn drop_unbuilt(&self, spans: usize) {
        self.metrics.dropped(SpansDropped::QueueFull, spans);
    }
}

/// The background task that sends queued spans to the collector.
#[derive(Debug)]
pub struct ExportService {
    exporter: Arc<Exporter>,
}

impl ExportService {
    /// The task of `exporter` (start it once).
    pub fn new(exporter: Arc<Exporter>) -> ExportService {
        ExportService { exporter }
    }
}

#[async_trait]
impl BackgroundService for ExportService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut receiver) = self.exporter.receiver.lock().take() else {
            return;
        };
        let mut task = Task {
            exporter: &self.exporter,
            connection: None,
            warned: None,
        };
        let mut batch: Vec<Span> = Vec::new();
        loop {
            tokio::select! {
                received = receiver.recv() => match received {
                    Some(spans) => batch.extend(spans),
                    None => return,
                },
                _ = shutdown.changed() => {
                    while let Ok(spans) = receiver.try_recv() {
                        batch.extend(spans);
                    }
                    task.send(&mut batch).await;
                    return;
                }
            }
            let interval = self
                .exporter
                .settings
                .load()
                .as_ref()
                .map_or(Duration::from_secs(1), |s| s.interval);
            let deadline = Instant::now() + interval;
            while batch.len() < BATCH {
                tokio::select! {
                    received = receiver.recv() => match received {
                        Some(spans) => batch.extend(spans),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            task.send(&mut batch).await;
        }
    }
}

/// The export task's connection to the collector.
struct Task<'a> {
    exporter: &'a Exporter,
    connection: Option<(OtlpEndpoint, SendRequest<Full<Bytes>>)>,
    warned: Option<Instant>,
}

impl Task<'_> {
    /// Sends `batch` (emptied) to the current collector; counts what became of it.
    async fn send(&mut self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let count = spans.len();
        let metrics = &self.exporter.metrics;
        let Some(settings) = self.exporter.settings.load_full() else {
            metrics.dropped(SpansDropped::Disabled, count);
            return;
        };
        let body = encode(&settings, spans);
        let result = tokio::time::timeout(settings.timeout, self.post(&settings.otlp, body)).await;
        let error = match result {
            Ok(Ok(())) => {
                metrics.exported.inc_by(count as u64);
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", settings.timeout),
        };
        // The connection may be in any state now: start afresh next time.
        self.connection = None;
        metrics.dropped(SpansDropped::ExportFailed, count);
        let now = Instant::now();
        if self
            .warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            self.warned = Some(now);
            log::warn!(
                "tracing: {count} spans to {} dropped: {error} (ordergate_tracing_spans_dropped_total counts them)",
                settings.otlp
            );
        }
    }

    /// Posts one encoded batch; `Ok` when the collector answered 2xx.
    async fn post(&mut self, endpoint: &OtlpEndpoint, body: Vec<u8>) -> Result<(), String> {
        let reusable = self
            .connection
            .as_ref()
            .is_some_and(|(to, sender)| to == endpoint && !sender.is_closed());
        if !reusable {
            self.connection = Some((endpoint.clone(), connect(endpoint).await?));
        }
        let Some((_, sender)) = self.connection.as_mut() else {
            return Err("no connection".to_string());
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::post(endpoint.path.as_str())
            .header(http::header::HOST, endpoint.authority())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        // Read the answer to its end, so the connection can carry the next batch.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the collector answered {status}"))
        }
    }
}

/// Opens an HTTP/1.1 connection to the collector.
async fn connect(endpoint: &OtlpEndpoint) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One OTLP export request: the spans under ordergate's resource and scope.
pub fn encode(settings: &TracingConfig, spans: Vec<Span>) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    super::spans::string("service.name", &settings.service_name),
                    super::spans::string("service.version", env!("CARGO_PKG_VERSION")),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "ordergate".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}
