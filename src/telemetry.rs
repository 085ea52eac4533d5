//! Logging: `tracing` with JSON (default) or pretty output, and a capture helper for tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{Config, LogFormat};

/// What [`init`] needs.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Filter directives (`info`, `infragpt=debug`); `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
    /// Write to stderr instead of stdout (CLI commands whose stdout is their output).
    pub to_stderr: bool,
}

impl From<&Config> for TelemetryConfig {
    fn from(c: &Config) -> Self {
        Self {
            level: c.log_level.clone(),
            format: c.log_format,
            to_stderr: false,
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
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInstalled(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Keeps telemetry alive; hold it until the process ends.
#[derive(Debug)]
#[must_use = "dropping the guard may stop log output"]
pub struct TelemetryGuard {
    _private: (),
}

fn filter(level: &str) -> Result<EnvFilter, TelemetryError> {
    let text = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => level.to_owned(),
    };
    EnvFilter::try_new(&text).map_err(|source| TelemetryError::Filter {
        filter: text,
        source,
    })
}

/// Installs the global subscriber, writing to stdout (or stderr).
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = filter(&config.level)?;
    let to_stderr = config.to_stderr;
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        // One line per event, coloured only on a terminal.
        LogFormat::Pretty => builder.with_ansi(is_terminal).try_init(),
    };
    result.map_err(TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { _private: () })
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
