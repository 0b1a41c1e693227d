//! Logging and tracing set-up, and the W3C `traceparent` carrier for AMQP message headers.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;

use lapin::types::{AMQPValue, FieldTable, ShortString};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogFormat, TelemetryArgs};

/// Keeps the trace exporter alive; dropping it flushes the spans still buffered.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops the exporter from a blocking thread, so the runtime (single-threaded or
    /// not) keeps driving the export while it waits. Call it before leaving the runtime.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: JSON logs unless stdout is a terminal (or as configured), and an
/// OTLP/gRPC exporter when an endpoint is configured. Must run inside the Tokio runtime.
pub fn init(service: &'static str, args: &TelemetryArgs) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let json = match args.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed()
    };

    let provider = match &args.otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        _ => None,
    };
    // Spans are exported whatever the log level: the log filter applies to the logs only. The
    // exporter's own stack (tonic, hyper, h2) is left out, lest exporting make spans to export.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(EnvFilter::new(
                "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,lapin=off,reqwest=off",
            ))
            .boxed()
    });

    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

struct HeaderInjector<'a>(&'a mut BTreeMap<ShortString, AMQPValue>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

struct HeaderExtractor<'a>(&'a FieldTable);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key) {
            Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|k| k.as_str()).collect()
    }
}

/// AMQP headers carrying the current span's `traceparent` (empty when tracing is off).
pub fn current_trace_headers() -> FieldTable {
    let cx = tracing::Span::current().context();
    let mut headers = BTreeMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(&mut headers));
    });
    FieldTable::from(headers)
}

/// Makes `span` a child of the trace named in a message's headers, if any.
pub fn adopt_trace_parent(span: &tracing::Span, headers: Option<&FieldTable>) {
    let Some(headers) = headers else { return };
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
}

/// Makes `span` a child of the trace an inbound HTTP request names in `traceparent`, if any.
pub fn adopt_http_parent(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    struct Headers<'a>(&'a axum::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(axum::http::HeaderName::as_str).collect()
        }
    }
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// The current span as a W3C `traceparent`, or `None` when tracing is off.
pub fn current_traceparent() -> Option<String> {
    let mut headers = std::collections::HashMap::new();
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers.remove("traceparent")
}

/// AMQP headers naming `traceparent` as the parent of what reads them.
pub fn amqp_headers_of(traceparent: &str) -> FieldTable {
    let mut headers = BTreeMap::new();
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(traceparent.into()),
    );
    FieldTable::from(headers)
}

/// The current span's trace id (32 hex digits), or `None` when tracing is off.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

/// HTTP headers (`traceparent`, `tracestate`) carrying the current span, for outbound requests.
pub fn current_trace_http_headers() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut headers = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    #[test]
    fn trace_context_travels_through_amqp_headers() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let producer = tracing::info_span!("publish");
            let headers = producer.in_scope(current_trace_headers);
            let sent_trace = producer.context().span().span_context().trace_id();
            let traceparent = match headers.inner().get("traceparent") {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                other => panic!("no traceparent header: {other:?}"),
            };
            assert!(traceparent.starts_with("00-"), "{traceparent}");
            assert!(traceparent.contains(&sent_trace.to_string()));

            let consumer = tracing::info_span!("process");
            adopt_trace_parent(&consumer, Some(&headers));
            let received_trace = consumer.context().span().span_context().trace_id();
            assert_eq!(
                received_trace, sent_trace,
                "the consumer joins the producer's trace"
            );

            let http = producer.in_scope(current_trace_http_headers);
            assert!(
                http.iter()
                    .any(|(k, v)| k == "traceparent" && v.contains(&sent_trace.to_string()))
            );
        });
    }

    #[test]
    fn no_headers_leave_the_span_alone() {
        let span = tracing::info_span!("orphan");
        adopt_trace_parent(&span, None);
        assert!(current_trace_headers().inner().get("traceparent").is_none());
    }
}
