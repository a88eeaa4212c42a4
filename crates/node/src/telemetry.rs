//! OpenTelemetry export of `serve`'s spans, compiled only with the `otel` feature.
//!
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the
//! spans that pass the `RUST_LOG` filter go to that collector over OTLP HTTP/protobuf, in
//! batches sent by the SDK's own thread; the other standard variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`) are read by the SDK.
//! The requests go out through ureq, the blocking client the CLI already uses, rather than an
//! HTTP stack of the exporter's own: the SDK's batch thread runs no async runtime and expects
//! exports to block, and the feature then adds no HTTP or TLS crates. Plain HTTP only: the
//! common collector is an agent on loopback.
//!
//! [`Exporter`] flushes the spans not sent yet when it is dropped, after the node stopped.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, Value};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// The service name, unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` gives one.
const SERVICE_NAME: &str = "perennial";

/// How long one export request may take: the OTLP exporters' default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest collector answer read (it is a few bytes; this bounds a misbehaving one).
const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// The span pipeline: keep it for as long as spans may be made, then drop it to flush them.
#[derive(Debug)]
pub(crate) struct Exporter {
    provider: SdkTracerProvider,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // Exports what the batch still holds (waiting at most 5 s for the collector).
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "cannot flush the last spans to the collector");
        }
    }
}

/// The layer that turns `tracing` spans into OpenTelemetry spans, and the [`Exporter`] that
/// sends them; `None` if no collector is configured.
pub(crate) fn layer<S>() -> anyhow::Result<Option<(OpenTelemetryLayer<S, SdkTracer>, Exporter)>>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    // The exporter reads the same variables, the traces one first.
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|variable| {
        std::env::var(variable)
            .ok()
            .filter(|v| !v.trim().is_empty())
    });
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    // Said now, rather than as a "network error" at each export.
    anyhow::ensure!(
        !endpoint.trim().to_ascii_lowercase().starts_with("https:"),
        "{endpoint}: spans are sent over plain HTTP only (this build has no TLS); \
         use a collector on loopback or a private network (http://...)"
    );
    let agent = ureq::Agent::config_builder()
        // The exporter reads the status itself, and retries what a collector asks it to.
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .new_agent();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(Ureq(agent))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok(Some((layer, Exporter { provider })))
}

/// What the spans come from: the SDK's resource (which reads `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES`), named `perennial` if neither names the service.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder()
            .with_service_name(Value::from(SERVICE_NAME))
            .build()
    }
}

/// The exporter's HTTP client: ureq, blocking on the batch thread.
#[derive(Debug)]
struct Ureq(ureq::Agent);

#[async_trait::async_trait]
impl HttpClient for Ureq {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self.0.run(Request::from_parts(parts, &body[..]))?;
        let (parts, mut body) = response.into_parts();
        let answer = body.with_config().limit(MAX_ANSWER_BYTES).read_to_vec()?;
        Ok(Response::from_parts(parts, Bytes::from(answer)))
    }
}
