//! Logging: `tracing` with JSON (default) or pretty output, optionally exporting the spans
//! over OTLP/gRPC (`telemetry.otlp_endpoint`), and a capture helper for tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{Config, LogFormat, TelemetryExportConfig};

/// What [`init`] needs.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Filter directives (`info`, `infragpt=debug`); `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
    /// Write to stderr instead of stdout (CLI commands whose stdout is their output).
    pub to_stderr: bool,
    /// Span export; `otlp_endpoint: None` exports nothing.
    pub export: TelemetryExportConfig,
}

impl From<&Config> for TelemetryConfig {
    fn from(c: &Config) -> Self {
        Self {
            level: c.log_level.clone(),
            format: c.log_format,
            to_stderr: false,
            export: c.telemetry.clone(),
        }
    }
}

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter (from `RUST_LOG` or `log_level`) does not parse.
    #[error("invalid log filter `{filter}`: {source}")]
    Filter {
        filter: String,
        #[source]
        source: crate::config::FilterError,
    },
    /// A global subscriber is already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The OTLP exporter could not be built (endpoint, runtime).
    #[error("OTLP span export to {endpoint}: {reason}")]
    Export { endpoint: String, reason: String },
}

/// Keeps telemetry alive; hold it until the process ends. Dropping it flushes the spans
/// not exported yet.
#[derive(Debug)]
#[must_use = "dropping the guard may stop log output"]
pub struct TelemetryGuard {
    export: Option<SpanExport>,
}

/// The OTLP pipeline: the provider (its batch processor runs on a thread of its own) and the
/// tokio runtime the tonic exporter needs, owned here so that export does not depend on
/// which runtime a command runs.
#[derive(Debug)]
struct SpanExport {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(mut export) = self.export.take() {
            // Flushes what is buffered; a collector that is down must not hold the exit.
            if let Err(e) = export.provider.shutdown() {
                eprintln!("telemetry: flushing the spans failed: {e}");
            }
            if let Some(runtime) = export.runtime.take() {
                runtime.shutdown_background();
            }
        }
    }
}

/// Builds the OTLP/gRPC exporter and its provider on a runtime of their own (tonic needs a
/// runtime when the channel is created and while it exports; the batch processor exports
/// from its own thread).
fn span_export(
    config: &TelemetryExportConfig,
    endpoint: &str,
) -> Result<SpanExport, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let failed = |reason: String| TelemetryError::Export {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| failed(format!("its runtime: {e}")))?;
    let provider = {
        let _entered = runtime.enter();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_millis(config.export_timeout_ms))
            .build()
            .map_err(|e| failed(e.to_string()))?;
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build()
    };
    Ok(SpanExport {
        provider,
        runtime: Some(runtime),
    })
}

fn filter(level: &str) -> Result<EnvFilter, TelemetryError> {
    let text = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => level.to_owned(),
    };
    crate::config::parse_filter(&text).map_err(|source| TelemetryError::Filter {
        filter: text,
        source,
    })
}

/// The log lines: JSON or pretty, to stdout or stderr.
fn log_layer<S>(
    format: LogFormat,
    to_stderr: bool,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let writer = move || -> Box<dyn Write> {
        if to_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        }
    };
    let is_terminal = if to_stderr {
        std::io::IsTerminal::is_terminal(&std::io::stderr())
    } else {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        // One line per event, coloured only on a terminal.
        LogFormat::Pretty => fmt.with_ansi(is_terminal).boxed(),
    }
}

/// Installs the global subscriber, writing to stdout (or stderr), and exporting spans when
/// `config.export` names an endpoint.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = filter(&config.level)?;
    let export = match config.export.otlp_endpoint.as_deref() {
        Some(endpoint) => Some((span_export(&config.export, endpoint)?, endpoint)),
        None => None,
    };
    // Without export the log filter is global, as it always was (callsites it disables cost
    // nothing); with export each layer has its own filter, so spans below `log_level` can
    // still be exported. A per-layer filter alone made large webhook deliveries cost more
    // memory at once (edge::memory).
    let installed =
        match &export {
            Some((export, _)) => {
                let logs = log_layer(config.format, config.to_stderr);
                use opentelemetry::trace::TracerProvider as _;
                let spans_filter = crate::config::parse_filter(&config.export.otlp_filter)
                    .map_err(|source| TelemetryError::Filter {
                        filter: config.export.otlp_filter.clone(),
                        source,
                    })?;
                let spans = tracing_opentelemetry::layer()
                    .with_tracer(export.provider.tracer("infragpt"))
                    .with_filter(spans_filter);
                tracing_subscriber::registry()
                    .with(logs.with_filter(filter))
                    .with(spans)
                    .try_init()
            }
            None => tracing_subscriber::registry()
                .with(filter)
                .with(log_layer(config.format, config.to_stderr))
                .try_init(),
        };
    installed.map_err(|e| TelemetryError::AlreadyInstalled(Box::new(e)))?;
    if let Some((_, endpoint)) = &export {
        tracing::info!(endpoint, service_name = %config.export.service_name, "exporting spans over OTLP/gRPC");
    }
    Ok(TelemetryGuard {
        export: export.map(|(e, _)| e),
    })
}

/// Log lines captured in memory (JSON, one object per line).
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl CapturedLogs {
    /// Everything written so far.
    pub fn contents(&self) -> String {
        let buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The captured lines parsed as JSON objects (lines that are not JSON are skipped).
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.contents()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Writer handed to the fmt layer.
#[derive(Debug, Clone)]
pub struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CaptureWriter;
    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter(self.buf.clone())
    }
}

/// A capture installed as the current thread's default subscriber (the actix test harness runs
/// handlers on the test's thread). Dropping it uninstalls it.
#[derive(Debug)]
pub struct LogCapture {
    logs: CapturedLogs,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    /// Everything logged so far.
    pub fn contents(&self) -> String {
        self.logs.contents()
    }

    /// The captured lines as JSON objects.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.logs.lines()
    }

    /// A handle to the buffer (cloneable, `Send`).
    pub fn logs(&self) -> CapturedLogs {
        self.logs.clone()
    }
}

/// A subscriber that writes JSON lines (level `debug` and up) into `logs`; use it with
/// `tracing::subscriber::with_default` or `WithSubscriber` on other threads/futures.
pub(crate) fn capture_dispatch(logs: &CapturedLogs) -> tracing::Dispatch {
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("debug"))
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(logs.clone())
        .finish();
    tracing::Dispatch::new(subscriber)
}

/// Captures this thread's logs until the returned handle is dropped.
pub fn capture() -> LogCapture {
    let logs = CapturedLogs::default();
    let guard = tracing::dispatcher::set_default(&capture_dispatch(&logs));
    LogCapture {
        logs,
        _guard: guard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_sees_structured_fields() {
        let cap = capture();
        tracing::info!(team_id = "T1", "event recorded");
        let lines = cap.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["team_id"], "T1");
        assert_eq!(lines[0]["message"], "event recorded");
    }
}
