//! OpenTelemetry export of the agents' spans (cargo feature `otel`).
//!
//! [`OtlpTracing`] sends the `run` → `task`/`compensate` → `context`/`tool_call`/`review` spans to
//! an OpenTelemetry collector over OTLP/HTTP, protobuf by default or JSON. The endpoint, protocol,
//! headers and timeout follow the standard `OTEL_EXPORTER_OTLP_*` environment variables (the
//! generic endpoint gets `/v1/traces` appended, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is used as
//! given); an endpoint passed in code wins and is used as given.
//!
//! Decisions:
//! - Only tetrarch's own spans and events (targets under `tetrarch`, INFO and above) are exported:
//!   the exporter's HTTP client and the SDK log through `tracing` too, and exporting those would
//!   feed the exporter its own traffic.
//! - Spans are batched on the SDK's own thread with a blocking HTTP client, so exporting never
//!   runs on the runtime's workers and a slow collector cannot stall an agent. An unreachable
//!   collector costs warnings from the SDK (target `opentelemetry*`), never the run.
//! - Plain HTTP only (no TLS stack compiled in): the expected deployment is a collector on the
//!   same host or a sidecar, which forwards with TLS if it must.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

use super::TelemetryError;

/// The wire format of the OTLP/HTTP export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf` (the OTLP default).
    Protobuf,
    /// `http/json`.
    Json,
}

/// Where and how to export; [`OtlpConfig::from_env`] fills it like any OpenTelemetry SDK.
#[derive(Debug, Clone, Default)]
pub struct OtlpConfig {
    /// The traces URL, used as given (`http://127.0.0.1:4318/v1/traces`); `None`: from the
    /// environment, else the OTLP default `http://localhost:4318/v1/traces`.
    pub endpoint: Option<String>,
    /// `None`: `OTEL_EXPORTER_OTLP_PROTOCOL`, else protobuf.
    pub protocol: Option<OtlpProtocol>,
    /// The `service.name` resource attribute (default `tetrarch`).
    pub service_name: Option<String>,
}

impl OtlpConfig {
    /// Whether the environment asks for an export: `OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and not empty.
    pub fn requested_by_env() -> bool {
        [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
    }
}

/// An installed span exporter. Add [`OtlpTracing::layer`] to the process's subscriber; call
/// [`OtlpTracing::shutdown`] before exiting so the spans still batched are sent.
pub struct OtlpTracing {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for OtlpTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpTracing").finish_non_exhaustive()
    }
}

impl OtlpTracing {
    /// Builds the exporter and its batch processor. Nothing is sent until spans close.
    pub fn new(config: &OtlpConfig) -> Result<Self, TelemetryError> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
        let http_only = |endpoint: &str, from: &str| -> Result<(), TelemetryError> {
            let url = url::Url::parse(endpoint).map_err(|e| TelemetryError::Otlp {
                detail: format!("endpoint {endpoint:?}{from} is not a URL: {e}"),
            })?;
            if url.scheme() != "http" {
                return Err(TelemetryError::Otlp {
                    detail: format!(
                        "endpoint {endpoint:?}{from}: only http:// is supported (send to a local collector)"
                    ),
                });
            }
            Ok(())
        };
        if let Some(endpoint) = &config.endpoint {
            http_only(endpoint, "")?;
            builder = builder.with_endpoint(endpoint.clone());
        } else {
            // The exporter reads these itself: an https:// one would fail on every export.
            for name in [
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ] {
                if let Some(endpoint) = std::env::var(name).ok().filter(|v| !v.is_empty()) {
                    http_only(&endpoint, &format!(" (from {name})"))?;
                }
            }
        }
        if let Some(protocol) = config.protocol {
            builder = builder.with_protocol(match protocol {
                OtlpProtocol::Protobuf => opentelemetry_otlp::Protocol::HttpBinary,
                OtlpProtocol::Json => opentelemetry_otlp::Protocol::HttpJson,
            });
        }
        let exporter = builder.build().map_err(|e| TelemetryError::Otlp {
            detail: e.to_string(),
        })?;
        let service = config
            .service_name
            .clone()
            .unwrap_or_else(|| "tetrarch".to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        Ok(OtlpTracing { provider })
    }

    /// The `tracing` layer that feeds the exporter, filtered to tetrarch's own spans and events
    /// (INFO and above).
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.tracer("tetrarch");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("tetrarch", LevelFilter::INFO))
    }

    /// Sends the spans still batched and stops the exporter (bounded by the export timeout).
    pub fn shutdown(self) -> Result<(), TelemetryError> {
        self.provider.shutdown().map_err(|e| TelemetryError::Otlp {
            detail: format!("flushing spans: {e}"),
        })
    }
}
