//! A sandbox's health check when the runner runs it instead of the engine: the base image's
//! `HEALTHCHECK` (`ide-agent health`) taken over with its own timing, probed over the sandbox's
//! network namespace (`GET /api/health` on the agent's abstract socket) rather than by an exec
//! per probe (docs/ARCHITECTURE.md, "Health"). Recorded in a label at creation, since labels
//! never change: the label is how a restarted runner knows which sandboxes are its to probe.

use std::time::Duration;

/// The base image's check, as the engine stores it in the image's config.
pub const AGENT_HEALTHCHECK: [&str; 3] = ["CMD", "/usr/local/bin/ide-agent", "health"];

/// When and how often to probe, and how many failures in a row make a sandbox unhealthy: the
/// image's `HEALTHCHECK` options, with the engine's defaults where the image set none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthProbe {
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

impl HealthProbe {
    /// From an image's `Healthcheck` (durations in nanoseconds, 0 for "not set"): `Some` only for
    /// the base image's own check, which the runner knows how to run without an exec.
    pub fn from_image(test: &[String], interval_ns: i64, timeout_ns: i64, start_ns: i64, retries: i64) -> Option<Self> {
        if test.iter().map(String::as_str).ne(AGENT_HEALTHCHECK) {
            return None;
        }
        let or = |ns: i64, default: Duration| if ns > 0 { Duration::from_nanos(ns as u64) } else { default };
        Some(HealthProbe {
            interval: or(interval_ns, Duration::from_secs(30)),
            timeout: or(timeout_ns, Duration::from_secs(30)),
            start_period: or(start_ns, Duration::ZERO),
            retries: if retries > 0 { retries as u32 } else { 3 },
        })
    }

    /// The label value: `interval=30000ms,timeout=5000ms,start=20000ms,retries=3`.
    pub fn to_label(&self) -> String {
        format!(
            "interval={}ms,timeout={}ms,start={}ms,retries={}",
            self.interval.as_millis(),
            self.timeout.as_millis(),
            self.start_period.as_millis(),
            self.retries
        )
    }

    /// The label's value read back; `None` for anything else (a label from an image, say, which
    /// makes no sandbox the runner's to probe: the engine's own check, if any, still runs).
    pub fn from_label(value: &str) -> Option<Self> {
        let mut probe =
            HealthProbe { interval: Duration::ZERO, timeout: Duration::ZERO, start_period: Duration::ZERO, retries: 0 };
        let mut seen = 0;
        for part in value.split(',') {
            let (key, v) = part.split_once('=')?;
            let ms = || v.strip_suffix("ms")?.parse::<u64>().ok().map(Duration::from_millis);
            match key {
                "interval" => probe.interval = ms().filter(|d| !d.is_zero())?,
                "timeout" => probe.timeout = ms().filter(|d| !d.is_zero())?,
                "start" => probe.start_period = ms()?,
                "retries" => probe.retries = v.parse().ok().filter(|r| *r > 0)?,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 4).then_some(probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(cmd: &[&str]) -> Vec<String> {
        cmd.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_the_base_images_check_is_taken_over_with_its_timing_or_the_engines_defaults() {
        let base = test(&AGENT_HEALTHCHECK);
        assert_eq!(
            HealthProbe::from_image(&base, 30_000_000_000, 5_000_000_000, 20_000_000_000, 3),
            Some(HealthProbe {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(5),
                start_period: Duration::from_secs(20),
                retries: 3
            })
        );
        assert_eq!(
            HealthProbe::from_image(&base, 0, 0, 0, 0),
            Some(HealthProbe {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(30),
                start_period: Duration::ZERO,
                retries: 3
            })
        );
        for other in [
            test(&["CMD", "/usr/local/bin/ide-agent", "health", "--wait-ms", "1"]),
            test(&["CMD-SHELL", "/usr/local/bin/ide-agent health"]),
            test(&["CMD", "curl", "-f", "http://localhost/"]),
            test(&["NONE"]),
            vec![],
        ] {
            assert_eq!(HealthProbe::from_image(&other, 1, 1, 1, 1), None, "{other:?}");
        }
    }

    #[test]
    fn the_label_reads_back_and_nothing_else_does() {
        let p = HealthProbe::from_image(&test(&AGENT_HEALTHCHECK), 1_000_000_000, 3_000_000_000, 0, 2).unwrap();
        assert_eq!(p.to_label(), "interval=1000ms,timeout=3000ms,start=0ms,retries=2");
        assert_eq!(HealthProbe::from_label(&p.to_label()), Some(p));
        for bad in [
            "",
            "true",
            "interval=1000ms,timeout=3000ms,start=0ms",
            "interval=0ms,timeout=3000ms,start=0ms,retries=2",
            "interval=1000ms,timeout=3000ms,start=0ms,retries=0",
            "interval=1s,timeout=3000ms,start=0ms,retries=2",
            "interval=1000ms,timeout=3000ms,start=0ms,retries=2,extra=1",
        ] {
            assert_eq!(HealthProbe::from_label(bad), None, "{bad:?}");
        }
    }
}
