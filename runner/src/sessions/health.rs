//! The runner's own health checks of sandboxes under runc and crun (docs/ARCHITECTURE.md,
//! "Health"): the base image's `HEALTHCHECK` with its own timing, probed as
//! `GET /api/health` on the agent's abstract socket in the sandbox's network namespace instead of
//! an `exec` every interval in every sandbox (an exec costs the engine tens of milliseconds of
//! CPU; at 300 sandboxes and 30 s that was a third of a core). Results are kept in memory, as the
//! engine keeps its own: a restarted runner starts counting again.
//!
//! The [`Tracker`] is pure (when each sandbox is due, what a result does, which sandboxes are
//! unhealthy); [`run`] lists sandboxes, probes those due and hands the verdicts to the
//! reconciler and the pools through [`Tracker::mark`], the way the engine's `(unhealthy)`
//! reaches them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::Sessions;
use crate::{
    domain::HealthProbe,
    engine::{ExecRequest, FoundSandbox},
};

/// How often the prober looks for sandboxes it has not seen yet (a new one waits at most this
/// long for its first probe, on top of its start period).
const DISCOVER_EVERY: Duration = Duration::from_secs(10);
/// Probes at once.
const CONCURRENCY: usize = 16;
/// The longest a probe waits for its answer, whatever the image's timeout: the agent answers in
/// milliseconds, and a peer that never answers must not hold a slot for long.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Entry {
    probe: HealthProbe,
    first_seen: Instant,
    next_due: Instant,
    /// Failures in a row that count (not inside the start period before a first success).
    failures: u32,
    started: bool,
    in_flight: bool,
    last_error: Option<String>,
}

/// Each probed sandbox's schedule and recent results.
#[derive(Debug, Default)]
pub struct Tracker {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Tracker {
    /// The running sandboxes the runner probes, as just listed: new ones are scheduled (their
    /// first probe spread over one interval, so that sandboxes started together are not probed
    /// together), ones no longer listed are forgotten.
    pub fn observe(&self, sandboxes: &[FoundSandbox], now: Instant) {
        let mut entries = self.entries.lock().unwrap();
        entries.retain(|id, _| sandboxes.iter().any(|c| c.running && c.probe.is_some() && c.id == *id));
        for c in sandboxes.iter().filter(|c| c.running) {
            let Some(probe) = c.probe else { continue };
            entries.entry(c.id.clone()).or_insert_with(|| Entry {
                probe,
                first_seen: now,
                next_due: now + probe.start_period.min(probe.interval) + spread(&c.id, probe.interval),
                failures: 0,
                started: false,
                in_flight: false,
                last_error: None,
            });
        }
    }

    /// The sandboxes whose probe is due now (marked in flight until their result).
    pub fn due(&self, now: Instant) -> Vec<(String, Duration)> {
        let mut entries = self.entries.lock().unwrap();
        entries
            .iter_mut()
            .filter(|(_, e)| !e.in_flight && e.next_due <= now)
            .map(|(id, e)| {
                e.in_flight = true;
                (id.clone(), e.probe.timeout)
            })
            .collect()
    }

    /// A probe's result: a success resets the count and ends the start period; a failure counts
    /// once the start period is over or the sandbox has been healthy (the engine's rules).
    pub fn record(&self, id: &str, result: Result<(), String>, now: Instant) {
        let mut entries = self.entries.lock().unwrap();
        let Some(e) = entries.get_mut(id) else { return };
        e.in_flight = false;
        e.next_due = now + e.probe.interval;
        match result {
            Ok(()) => {
                e.failures = 0;
                e.started = true;
                e.last_error = None;
            }
            Err(reason) => {
                if e.started || now >= e.first_seen + e.probe.start_period {
                    e.failures += 1;
                }
                e.last_error = Some(reason);
            }
        }
    }

    /// Whether a sandbox has failed its retries, and the last failure's reason.
    pub fn unhealthy(&self, id: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap();
        let e = entries.get(id)?;
        (e.failures >= e.probe.retries).then(|| e.last_error.clone().unwrap_or_default())
    }

    /// Sets `unhealthy` on the listed sandboxes the runner's probes found unhealthy.
    pub fn mark(&self, observed: &mut [FoundSandbox]) {
        for c in observed.iter_mut().filter(|c| c.probe.is_some()) {
            c.unhealthy |= self.unhealthy(&c.id).is_some();
        }
    }

    /// How many sandboxes are probed, and how many of them are unhealthy.
    pub fn counts(&self) -> (usize, usize) {
        let entries = self.entries.lock().unwrap();
        (entries.len(), entries.values().filter(|e| e.failures >= e.probe.retries).count())
    }
}

/// A sandbox's phase within the interval, from its id: stable, and spread.
fn spread(id: &str, interval: Duration) -> Duration {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    interval.mul_f64((h % 10_000) as f64 / 10_000.0)
}

/// Probes sandboxes as they fall due, until cancelled.
pub async fn run(sessions: Arc<Sessions>, cancel: CancellationToken) {
    let mut last_list: Option<Instant> = None;
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    crate::rounds::every(Duration::from_millis(500), crate::rounds::First::Now, cancel, || {
        let (sessions, slots) = (sessions.clone(), slots.clone());
        let listed = last_list.is_some_and(|t| t.elapsed() < DISCOVER_EVERY);
        if !listed {
            last_list = Some(Instant::now());
        }
        async move {
            if !listed {
                match sessions.engine.list_sandboxes().await {
                    Ok(list) => sessions.health.observe(&list, Instant::now()),
                    Err(e) => tracing::debug!(error = %format!("{e:#}"), "health: listing sandboxes failed"),
                }
            }
            // Each probe on its own task, bounded together: a sandbox whose peer never answers
            // (the learner's own listener) holds one slot for at most `MAX_TIMEOUT`, and the
            // rounds go on.
            for (id, timeout) in sessions.health.due(Instant::now()) {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let sessions = sessions.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let timeout = timeout.min(MAX_TIMEOUT);
                    let result = match tokio::time::timeout(timeout, probe(&sessions, &id)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {timeout:?}")),
                    };
                    let healthy = if result.is_ok() { "healthy" } else { "unhealthy" };
                    sessions.metrics.health_probes.with_label_values(&[healthy]).inc();
                    if let Err(reason) = &result {
                        tracing::debug!(container = %id, reason, "health probe failed");
                    }
                    sessions.health.record(&id, result, Instant::now());
                });
            }
        }
    })
    .await
}

/// One probe: the agent's `/api/health` over its abstract socket; where that socket does not
/// answer or the agent does not know the route (an agent older than either), the image's own
/// check as an exec, as the engine would run it. The peer is the learner's: its answer is read
/// bounded and only its status line is believed.
async fn probe(sessions: &Sessions, container: &str) -> Result<(), String> {
    if let Ok(Some(mut io)) = sessions.engine.connect_in_netns(container, crate::ide::AGENT_NETNS_SOCKET).await {
        let asked = io.write_all(b"GET /api/health HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").await;
        let mut answer = Vec::new();
        if asked.is_ok() && (&mut io).take(16 * 1024).read_to_end(&mut answer).await.is_ok() {
            let text = String::from_utf8_lossy(&answer);
            let status = text.lines().next().unwrap_or("");
            if status.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
            if !status.starts_with("HTTP/1.1 404") && !status.is_empty() {
                let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
                let reason = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or_else(|| status.to_string());
                return Err(reason.chars().take(200).collect());
            }
        }
    }
    let cmd = vec![crate::ide::AGENT_BIN.to_string(), "health".to_string()];
    let mut req = ExecRequest::new(cmd, &sessions.settings.sandbox_user);
    req.max_output = 4096;
    match sessions.engine.exec(container, req).await {
        Ok(o) if o.exit_code == 0 => Ok(()),
        Ok(o) => Err(o.output.trim().chars().take(200).collect()),
        Err(e) => Err(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> HealthProbe {
        HealthProbe {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            start_period: Duration::from_secs(20),
            retries: 3,
        }
    }

    fn sandbox(id: &str, running: bool, probed: bool) -> FoundSandbox {
        FoundSandbox {
            id: id.into(),
            session_id: Some(format!("s-{id}")),
            pool_id: None,
            running,
            unhealthy: false,
            probe: probed.then(probe),
        }
    }

    #[test]
    fn only_running_sandboxes_with_the_label_are_probed_and_first_probes_are_spread() {
        let t = Tracker::default();
        let now = Instant::now();
        let list: Vec<_> = (0..50).map(|i| sandbox(&format!("c{i}"), true, true)).collect();
        t.observe(&[list.clone(), vec![sandbox("stopped", false, true), sandbox("engine", true, false)]].concat(), now);
        assert_eq!(t.counts(), (50, 0));
        assert!(t.due(now).is_empty(), "nothing inside the start period");
        let first = t.due(now + Duration::from_secs(25));
        assert!(!first.is_empty() && first.len() < 50, "spread over the interval: {}", first.len());
        assert_eq!(t.due(now + Duration::from_secs(51)).len(), 50 - first.len(), "the rest within one interval");
        assert!(t.due(now + Duration::from_secs(60)).is_empty(), "in flight until their result");
        // One is gone: forgotten.
        t.observe(&list[1..], now);
        assert_eq!(t.counts().0, 49);
    }

    #[test]
    fn failures_inside_the_start_period_do_not_count_until_a_first_success() {
        let t = Tracker::default();
        let now = Instant::now();
        t.observe(&[sandbox("c", true, true)], now);
        for s in [1, 5, 10] {
            t.record("c", Err("agent starting".into()), now + Duration::from_secs(s));
        }
        assert_eq!(t.unhealthy("c"), None, "still in its start period");
        t.record("c", Ok(()), now + Duration::from_secs(12));
        for s in [13, 14] {
            t.record("c", Err("down".into()), now + Duration::from_secs(s));
        }
        assert_eq!(t.unhealthy("c"), None, "two failures of three");
        t.record("c", Err("services not running: redis FATAL".into()), now + Duration::from_secs(15));
        assert_eq!(t.unhealthy("c").as_deref(), Some("services not running: redis FATAL"));
        let mut observed = [sandbox("c", true, true), sandbox("other", true, true)];
        t.mark(&mut observed);
        assert!(observed[0].unhealthy && !observed[1].unhealthy);
        assert_eq!(t.counts(), (1, 1));
        // A success makes it healthy again, as the engine's check would.
        t.record("c", Ok(()), now + Duration::from_secs(16));
        assert_eq!(t.unhealthy("c"), None);
    }

    #[test]
    fn after_the_start_period_failures_count_without_a_success() {
        let t = Tracker::default();
        let now = Instant::now();
        t.observe(&[sandbox("c", true, true)], now);
        for s in [21, 22, 23] {
            t.record("c", Err("no agent".into()), now + Duration::from_secs(s));
        }
        assert!(t.unhealthy("c").is_some());
        let (id, timeout) = {
            t.record("c", Ok(()), now + Duration::from_secs(24));
            t.due(now + Duration::from_secs(54)).pop().unwrap()
        };
        assert_eq!((id.as_str(), timeout), ("c", Duration::from_secs(5)), "due again one interval later");
    }
}
