//! Logs and traces.
//!
//! Logs go to stderr through `tracing`; `RUST_LOG` wins when set, else
//! `DEBUG=true` turns on debug logs for prscd itself. Third-party QUIC, TLS
//! and zenoh crates stay at `warn` so a debug log is about our own decisions.
//!
//! Traces are OpenTelemetry spans exported over OTLP/gRPC with a batch
//! exporter (off the message path). They are off unless an OTLP endpoint is
//! configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, or the original's
//! `YOMO_TRACE_JAEGER_ENDPOINT`, mapped to Jaeger's OTLP port with a warning).
//! Spans that belong in traces use the target `otel`: they never reach the
//! log, and with tracing off they are disabled at their call site, so they
//! cost next to nothing. The W3C trace context crosses the zenoh hop in the
//! sample's attachment ([`traceparent`] / [`set_parent`]).

use std::collections::HashMap;
use std::io::IsTerminal as _;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// Sampling ratio when tracing is on and `OTEL_TRACES_SAMPLER` is unset:
/// parent-based, so a trace started on one node is kept on every node.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;

/// What [`init`] needs to know about the node.
pub struct Identity<'a> {
    pub mesh_id: &'a str,
    pub debug: bool,
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    pub notes: Vec<String>,
}

impl Telemetry {
    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still batched. Blocking: call off the async threads.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Sets up logging, and tracing when an OTLP endpoint is configured.
/// Must run inside the tokio runtime (the gRPC exporter lives on it).
pub fn init(node: Identity<'_>) -> Telemetry {
    let default = if node.debug {
        "info,prscd=debug,quinn=warn,wtransport=warn,rustls=warn,zenoh=warn"
    } else {
        "info,quinn=warn,wtransport=warn,rustls=warn,zenoh=warn"
    };
    let directives = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.trim().is_empty() => filter,
        _ => default.to_owned(),
    };
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(EnvFilter::new(format!("{directives},otel=off")));

    let (provider, notes) = tracer_provider(&node);
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("prscd"))
            // No busy/idle time bookkeeping on every poll of every connection.
            .with_tracked_inactivity(false)
            // Only INFO spans are traced: without the hint, installing this
            // layer would raise the global max level and route every
            // TRACE/DEBUG record of every crate through the filters.
            .with_filter(
                filter_fn(|meta| meta.target() == "otel" || meta.name() == "connection")
                    .with_max_level_hint(tracing::level_filters::LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    Telemetry { provider, notes }
}

fn tracer_provider(node: &Identity<'_>) -> (Option<SdkTracerProvider>, Vec<String>) {
    let mut notes = Vec::new();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
    {
        return (None, notes);
    }
    let mut endpoint =
        env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if let Some(jaeger) = env("YOMO_TRACE_JAEGER_ENDPOINT") {
        let host = jaeger
            .split("://")
            .nth(1)
            .unwrap_or(&jaeger)
            .split(['/', ':'])
            .next()
            .unwrap_or("localhost")
            .to_owned();
        let mapped = format!("http://{host}:4317");
        notes.push(format!(
            "YOMO_TRACE_JAEGER_ENDPOINT is deprecated: Jaeger ingests OTLP; exporting to {} (set OTEL_EXPORTER_OTLP_ENDPOINT instead)",
            endpoint.as_deref().unwrap_or(&mapped)
        ));
        endpoint.get_or_insert(mapped);
    }
    let Some(endpoint) = endpoint else {
        return (None, notes);
    };

    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            notes.push(format!(
                "tracing off: cannot build the OTLP exporter for {endpoint}: {e}"
            ));
            return (None, notes);
        }
    };
    let mut resource = Resource::builder().with_attributes([
        opentelemetry::KeyValue::new("mesh_id", node.mesh_id.to_owned()),
        opentelemetry::KeyValue::new(
            "region",
            env("REGION").unwrap_or_else(|| node.mesh_id.to_owned()),
        ),
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ]);
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("prscd");
    }
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build());
    let sampler = env("OTEL_TRACES_SAMPLER");
    if sampler.is_none() {
        // Otherwise the SDK reads OTEL_TRACES_SAMPLER / _ARG itself.
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            DEFAULT_SAMPLE_RATIO,
        ))));
    }
    notes.push(format!(
        "tracing on: OTLP/gRPC to {endpoint}, sampler {}",
        sampler.map_or(
            format!("parentbased_traceidratio {DEFAULT_SAMPLE_RATIO}"),
            |s| format!("{s} {}", env("OTEL_TRACES_SAMPLER_ARG").unwrap_or_default())
        )
    ));
    (Some(builder.build()), notes)
}

/// The W3C `traceparent` of a span, if it is being traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span a `traceparent` names.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}
