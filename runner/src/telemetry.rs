//! Logging: human-readable by default, JSON lines with `RUNNER_LOG_FORMAT=json`; the filter comes
//! from `RUNNER_LOG` (default `info`).

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env("RUNNER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // bollard's debug output dumps whole Docker API bodies, container environments (app secrets)
    // among them: it stays at info whatever RUNNER_LOG asks, so no secret reaches a log line.
    let filter = filter.add_directive("bollard=info".parse().expect("a valid directive"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
