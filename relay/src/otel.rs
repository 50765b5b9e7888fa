//! Trace export: the `tracing-opentelemetry` layer, the OpenTelemetry SDK's batch processor and the OTLP/HTTP
//! exporter, installed only when `[otel]` (or the standard `OTEL_*` variables) name a collector
//! ([`crate::config::OtelConfig`]). Spans themselves are made by the trace stage ([`crate::trace`]).
//!
//! Off the hot path: a span that ends is handed to the batch processor's bounded queue (2,048 spans unless
//! `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise) and exported from the processor's own thread, with the exporter's
//! blocking HTTP client; nothing waits for the collector. A collector that is down or slow costs dropped spans,
//! counted: `ssegate_trace_spans_total{result}` counts spans `ended`, `exported` and `export_failed`; the
//! difference between the first and the other two is what the full queue dropped (or still holds). Only the
//! relay's own spans (targets `relay::*`) and its warnings and errors (as span events) reach the layer.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData, SpanExporter as Export,
    SpanProcessor, Tracer,
};
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::OtelConfig;
use crate::metrics::TRACE_SPANS;

/// Exporting traces; [`Traces::shutdown`] exports what is still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// The trace exporter could not be built (`main` exits 64).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the trace exporter for {endpoint}")]
pub struct OtelError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

impl Traces {
    /// Builds the exporter and the batch processor (no connection is made until the first export).
    pub fn start(config: &OtelConfig) -> Result<Self, OtelError> {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(config.endpoint.to_string())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|source| OtelError {
                endpoint: config.endpoint.to_string(),
                source,
            })?;
        let processor = Counted(BatchSpanProcessor::builder(CountedExport(exporter)).build());
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The layer that turns the relay's `tracing` spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer: Tracer = self.provider.tracer("ssegate");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_level(false)
            .with_target(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target().starts_with("relay")
                    && (meta.is_span() || *meta.level() <= tracing::Level::WARN)
            }))
    }

    /// Exports what is queued (up to the exporter's timeout) and stops the processor's thread. Blocks.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not finish cleanly");
        }
    }
}

/// Shuts `traces` down (if any) on a blocking thread: the exporter's HTTP client must not block the runtime.
pub async fn finish(traces: Option<Traces>) {
    if let Some(t) = traces {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
}

/// The batch processor, counting what it is given and what its exporter managed.
#[derive(Debug)]
struct Counted(BatchSpanProcessor);

impl SpanProcessor for Counted {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        metrics::counter!(TRACE_SPANS, "result" => "ended").increment(1);
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans of each export by how it went.
#[derive(Debug)]
struct CountedExport(SpanExporter);

impl Export for CountedExport {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.0.export(batch).await;
        let outcome = if result.is_ok() {
            "exported"
        } else {
            "export_failed"
        };
        metrics::counter!(TRACE_SPANS, "result" => outcome).increment(spans);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}
