//! Logging: human-readable by default, JSON lines with `RUNNER_LOG_FORMAT=json`; the filter comes
//! from `RUNNER_LOG` (default `info`).

use tracing_subscriber::{fmt, EnvFilter};

/// `filter`: a `RUNNER_LOG` directive (`Settings::log_filter`); `None` or an invalid one: `info`.
pub fn init(json: bool, filter: Option<&str>) {
    let filter = filter.and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| EnvFilter::new("info"));
    // bollard's debug output dumps whole Docker API bodies, container environments (app secrets)
    // among them: it stays at info whatever RUNNER_LOG asks, so no secret reaches a log line.
    let filter = filter.add_directive("bollard=info".parse().expect("a valid directive"));
    // Colours only for a person at a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
