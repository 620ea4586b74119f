//! Alerts: the conditions an operator wants to be woken for, evaluated every
//! `RUNNER_ALERT_INTERVAL_SECS`, each firing once per episode and saying when it clears, through
//! the webhook of `RUNNER_ALERT_WEBHOOK_URL` (Slack-compatible or signed JSON, `webhooks.rs`),
//! listed by `GET /v1/alerts` and counted in `runner_alerts_firing{kind}`.
//!
//! Conditions (thresholds are settings, `config::AlertSettings`):
//! - `oom_repeated`: a live session's sandbox OOM-killed `oom_kills` times within `oom_window`
//!   (from its events, so every replica sees the same count);
//! - `cpu_pinned`: a sandbox at 90 % or more of its CPU quota for `cpu_pinned` (usage figures);
//! - `memory_committed`: memory committed by sandbox limits above a share of the host's;
//! - `disk_full`: the data directory's disk fuller than a share;
//! - `reconcile_failing`: reconciliation rounds failing and none succeeding since the last
//!   evaluation;
//! - `engine_unreachable`: the engine not answering a ping, twice in a row.
//!
//! The episode bookkeeping ([`Episodes`]) and the evaluation ([`evaluate`]) are pure and
//! unit-tested; [`run`] gathers what they need and delivers what changed. Alerts are this
//! runner's: replicas each evaluate, and name their instance in every message.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    config::AlertSettings,
    domain::rfc3339,
    engine::Engine,
    lifecycle::SessionEvent,
    metrics::Metrics,
    sessions::Sessions,
    store::{now_ms, Store},
    usage::{capacity::Slots, TopBy, Usage},
};

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    OomRepeated,
    CpuPinned,
    MemoryCommitted,
    DiskFull,
    ReconcileFailing,
    EngineUnreachable,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::OomRepeated,
        AlertKind::CpuPinned,
        AlertKind::MemoryCommitted,
        AlertKind::DiskFull,
        AlertKind::ReconcileFailing,
        AlertKind::EngineUnreachable,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::OomRepeated => "oom_repeated",
            AlertKind::CpuPinned => "cpu_pinned",
            AlertKind::MemoryCommitted => "memory_committed",
            AlertKind::DiskFull => "disk_full",
            AlertKind::ReconcileFailing => "reconcile_failing",
            AlertKind::EngineUnreachable => "engine_unreachable",
        }
    }
}

/// One condition that holds now: its kind, what it is about (a session id, `host`), and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub kind: AlertKind,
    pub subject: String,
    pub message: String,
}

/// A change to tell the operator about.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Fired(Firing),
    Cleared { kind: AlertKind, subject: String, message: String, since_ms: i64 },
}

#[derive(Debug, Clone)]
struct Episode {
    message: String,
    since_ms: i64,
}

/// The alerts that are firing, by kind and subject. An episode starts when a condition first
/// holds and ends at the first evaluation where it does not: one message each way.
#[derive(Debug, Default)]
pub struct Episodes {
    active: BTreeMap<(AlertKind, String), Episode>,
}

impl Episodes {
    /// Applies one evaluation (every condition that holds now); what started and what ended.
    pub fn apply(&mut self, firing: Vec<Firing>, now_ms: i64) -> Vec<Transition> {
        let mut out = vec![];
        let holding: std::collections::BTreeSet<(AlertKind, String)> =
            firing.iter().map(|f| (f.kind, f.subject.clone())).collect();
        let ended: Vec<(AlertKind, String)> = self.active.keys().filter(|k| !holding.contains(*k)).cloned().collect();
        for key in ended {
            let e = self.active.remove(&key).expect("listed");
            out.push(Transition::Cleared { kind: key.0, subject: key.1, message: e.message, since_ms: e.since_ms });
        }
        for f in firing {
            let key = (f.kind, f.subject.clone());
            match self.active.get_mut(&key) {
                // Still the same episode: the latest wording, no new message.
                Some(e) => e.message = f.message,
                None => {
                    self.active.insert(key, Episode { message: f.message.clone(), since_ms: now_ms });
                    out.push(Transition::Fired(f));
                }
            }
        }
        out
    }
}

/// A sandbox's CPU now, for the pinned check.
#[derive(Debug, Clone)]
pub struct CpuNow {
    pub session: String,
    pub who: String,
    pub cores: f64,
    pub limit: f64,
}

/// What one evaluation looks at.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Live sessions OOM-killed within the window, with the count and who they are.
    pub oom_kills: Vec<(String, String, i64)>,
    pub cpu: Vec<CpuNow>,
    /// Committed and total memory, in bytes.
    pub memory: Option<(u64, u64)>,
    /// Free and total bytes of the data directory's disk.
    pub disk: Option<(u64, u64)>,
    /// Reconciliation failed since the last evaluation and did not succeed.
    pub reconcile_failing: bool,
    /// Consecutive failed pings of the engine, and the last error.
    pub engine_failures: (u32, String),
}

/// Which conditions hold. `pinned_since` carries, per session, since when its CPU has been at
/// its quota (kept between evaluations).
pub fn evaluate(
    o: &Observed,
    t: &AlertSettings,
    pinned_since: &mut HashMap<String, i64>,
    now_ms: i64,
    instance: &str,
) -> Vec<Firing> {
    let mut out = vec![];
    for (session, who, n) in &o.oom_kills {
        if *n as u64 >= t.oom_kills {
            out.push(Firing {
                kind: AlertKind::OomRepeated,
                subject: session.clone(),
                message: format!(
                    "[{instance}] session {session} ({who}) was OOM-killed {n} times in the last {} min",
                    t.oom_window.as_secs().div_ceil(60)
                ),
            });
        }
    }
    let mut still = HashMap::new();
    for c in &o.cpu {
        if c.limit > 0.0 && c.cores >= 0.9 * c.limit {
            let since = *pinned_since.get(&c.session).unwrap_or(&now_ms);
            still.insert(c.session.clone(), since);
            if now_ms - since >= t.cpu_pinned.as_millis() as i64 {
                out.push(Firing {
                    kind: AlertKind::CpuPinned,
                    subject: c.session.clone(),
                    message: format!(
                        "[{instance}] session {} ({}) has used its whole CPU quota ({:.2} of {:.2} cores) for {} min",
                        c.session,
                        c.who,
                        c.cores,
                        c.limit,
                        (now_ms - since) / 60_000
                    ),
                });
            }
        }
    }
    *pinned_since = still;
    if let Some((committed, total)) = o.memory.filter(|(_, total)| *total > 0) {
        let pct = committed as f64 * 100.0 / total as f64;
        if pct > f64::from(t.memory_committed_percent) {
            out.push(Firing {
                kind: AlertKind::MemoryCommitted,
                subject: "host".into(),
                message: format!(
                    "[{instance}] sandbox limits commit {pct:.0} % of the host's memory ({} of {} MiB; threshold {} %)",
                    committed >> 20,
                    total >> 20,
                    t.memory_committed_percent
                ),
            });
        }
    }
    if let Some((free, total)) = o.disk.filter(|(_, total)| *total > 0) {
        let pct = (total - free.min(total)) as f64 * 100.0 / total as f64;
        if pct > f64::from(t.disk_percent) {
            out.push(Firing {
                kind: AlertKind::DiskFull,
                subject: "host".into(),
                message: format!(
                    "[{instance}] the data directory's disk is {pct:.0} % full ({} MiB free; threshold {} %)",
                    free >> 20,
                    t.disk_percent
                ),
            });
        }
    }
    if o.reconcile_failing {
        out.push(Firing {
            kind: AlertKind::ReconcileFailing,
            subject: "host".into(),
            message: format!("[{instance}] reconciliation is failing: sandboxes that die are not restarted"),
        });
    }
    if o.engine_failures.0 >= 2 {
        out.push(Firing {
            kind: AlertKind::EngineUnreachable,
            subject: "host".into(),
            message: format!("[{instance}] the Docker engine does not answer: {}", o.engine_failures.1),
        });
    }
    out
}

/// An alert as `GET /v1/alerts` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AlertView {
    pub kind: AlertKind,
    pub subject: String,
    pub message: String,
    pub firing: bool,
    pub since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<String>,
    /// The same moments in ms, for views that sort by time.
    #[serde(skip)]
    pub since_ms: i64,
    #[serde(skip)]
    pub cleared_ms: Option<i64>,
}

/// How many ended alerts `GET /v1/alerts` keeps showing.
const RECENT: usize = 100;

/// The alerts service: its episodes, what it has said, and where it says it.
pub struct Alerts {
    settings: AlertSettings,
    instance: String,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    episodes: Episodes,
    pinned_since: HashMap<String, i64>,
    recent: VecDeque<AlertView>,
    engine_failures: (u32, String),
    reconcile: Option<(u64, u64)>,
}

impl Alerts {
    pub fn new(settings: &AlertSettings, instance: &str, metrics: Arc<Metrics>) -> Arc<Alerts> {
        Arc::new(Alerts {
            settings: settings.clone(),
            instance: instance.to_string(),
            metrics,
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
            state: Mutex::default(),
        })
    }

    /// Firing alerts first (oldest first), then the recently cleared ones (newest first).
    pub fn list(&self) -> (Vec<AlertView>, Vec<AlertView>) {
        let state = self.state.lock().expect("lock");
        let mut active: Vec<AlertView> = state
            .episodes
            .active
            .iter()
            .map(|((kind, subject), e)| AlertView {
                kind: *kind,
                subject: subject.clone(),
                message: e.message.clone(),
                firing: true,
                since: rfc3339(e.since_ms),
                cleared_at: None,
                since_ms: e.since_ms,
                cleared_ms: None,
            })
            .collect();
        active.sort_by(|a, b| a.since.cmp(&b.since));
        (active, state.recent.iter().cloned().collect())
    }

    /// Applies one evaluation and tells the operator what changed.
    pub fn observe(&self, observed: &Observed, now_ms: i64) -> Vec<Transition> {
        let transitions = {
            let mut state = self.state.lock().expect("lock");
            let state = &mut *state;
            let firing = evaluate(observed, &self.settings, &mut state.pinned_since, now_ms, &self.instance);
            let transitions = state.episodes.apply(firing, now_ms);
            for t in &transitions {
                if let Transition::Cleared { kind, subject, message, since_ms } = t {
                    state.recent.push_front(AlertView {
                        kind: *kind,
                        subject: subject.clone(),
                        message: message.clone(),
                        firing: false,
                        since: rfc3339(*since_ms),
                        cleared_at: Some(rfc3339(now_ms)),
                        since_ms: *since_ms,
                        cleared_ms: Some(now_ms),
                    });
                    state.recent.truncate(RECENT);
                }
            }
            let mut counts: HashMap<AlertKind, i64> = HashMap::new();
            for (kind, _) in state.episodes.active.keys() {
                *counts.entry(*kind).or_default() += 1;
            }
            for kind in AlertKind::ALL {
                self.metrics.alerts_firing.with_label_values(&[kind.as_str()]).set(*counts.get(&kind).unwrap_or(&0));
            }
            transitions
        };
        for t in &transitions {
            self.deliver(t, now_ms);
        }
        transitions
    }

    fn deliver(&self, t: &Transition, now_ms: i64) {
        let (event, kind, subject, message, since) = match t {
            Transition::Fired(f) => {
                self.metrics.alerts.with_label_values(&[f.kind.as_str()]).inc();
                tracing::warn!(alert = f.kind.as_str(), subject = %f.subject, message = %f.message, "alert firing");
                ("alert_firing", f.kind, &f.subject, f.message.clone(), now_ms)
            }
            Transition::Cleared { kind, subject, message, since_ms } => {
                tracing::info!(alert = kind.as_str(), %subject, "alert cleared");
                ("alert_cleared", *kind, subject, message.clone(), *since_ms)
            }
        };
        let Some(url) = &self.settings.webhook_url else { return };
        let (body, signature) = if self.settings.webhook_json {
            let body = json!({
                "event": event, "alert": kind.as_str(), "subject": subject, "message": message,
                "instance": self.instance, "since": rfc3339(since), "at": rfc3339(now_ms),
            })
            .to_string();
            let sig = self.settings.webhook_secret.as_ref().map(|s| crate::webhooks::sign(s.expose(), &body));
            (body, sig)
        } else {
            let text = match t {
                Transition::Fired(_) => format!(":rotating_light: FIRING {}: {message}", kind.as_str()),
                Transition::Cleared { .. } => format!(":white_check_mark: CLEARED {}: {message}", kind.as_str()),
            };
            (json!({ "text": text }).to_string(), None)
        };
        crate::webhooks::post(&self.client, url, body, signature);
    }

    /// Gathers what one evaluation looks at, from the running services.
    async fn gather(&self, sources: &Sources) -> Observed {
        let now = now_ms();
        let window = self.settings.oom_window.as_millis() as i64;
        let mut o = Observed::default();
        match sources.store.live_sessions_with_events(SessionEvent::OomKilled, now - window).await {
            Ok(list) => {
                o.oom_kills = list
                    .into_iter()
                    .map(|(s, learner, exercise, n)| (s, format!("{learner} on {exercise}"), n))
                    .collect()
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "alerts: could not count OOM kills"),
        }
        o.cpu = sources
            .usage
            .top(TopBy::Cpu, usize::MAX)
            .into_iter()
            .filter_map(|s| {
                Some(CpuNow {
                    who: format!("{} on {}", s.learner.as_deref()?, s.exercise.as_deref()?),
                    session: s.session?,
                    cores: s.now.cpu_cores?,
                    limit: s.now.cpu_limit_cores?,
                })
            })
            .collect();
        let total = sources.sessions.settings.max_concurrent_starts;
        let in_use = total.saturating_sub(sources.sessions.start_slots.available_permits());
        match sources.usage.capacity(Slots { in_use, total }).await {
            Ok(c) => {
                o.memory = Some((c.memory.committed_bytes, c.memory.host_total_bytes));
                o.disk = c.disk.free_bytes.zip(c.disk.total_bytes);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "alerts: could not read the host's capacity"),
        }
        let rounds = (self.metrics.reconcile_rounds.get(), self.metrics.reconcile_failures.get());
        let ping = tokio::time::timeout(Duration::from_secs(3), sources.engine.ping()).await;
        let mut state = self.state.lock().expect("lock");
        if let Some((r0, f0)) = state.reconcile {
            o.reconcile_failing = rounds.1 > f0 && rounds.0 == r0;
        }
        state.reconcile = Some(rounds);
        state.engine_failures = match ping {
            Ok(Ok(())) => (0, String::new()),
            Ok(Err(e)) => (state.engine_failures.0 + 1, format!("{e:#}")),
            Err(_) => (state.engine_failures.0 + 1, "no answer within 3 s".into()),
        };
        o.engine_failures = state.engine_failures.clone();
        o
    }
}

/// What the alerts loop reads.
pub struct Sources {
    pub usage: Arc<Usage>,
    pub sessions: Arc<Sessions>,
    pub store: Store,
    pub engine: Engine,
}

pub async fn run(alerts: Arc<Alerts>, sources: Sources, cancel: CancellationToken) {
    let period = alerts.settings.interval;
    crate::rounds::every(period, crate::rounds::First::AfterPeriod, cancel, || async {
        let observed = alerts.gather(&sources).await;
        alerts.observe(&observed, now_ms());
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AlertSettings {
        AlertSettings { oom_kills: 2, cpu_pinned: Duration::from_secs(60), ..AlertSettings::defaults() }
    }

    fn kinds(t: &[Transition]) -> Vec<String> {
        t.iter()
            .map(|t| match t {
                Transition::Fired(f) => format!("+{}:{}", f.kind.as_str(), f.subject),
                Transition::Cleared { kind, subject, .. } => format!("-{}:{subject}", kind.as_str()),
            })
            .collect()
    }

    #[test]
    fn an_alert_fires_once_per_episode_and_says_when_it_clears() {
        let mut e = Episodes::default();
        let f = |kind, subject: &str| Firing { kind, subject: subject.into(), message: "m".into() };
        assert_eq!(kinds(&e.apply(vec![f(AlertKind::DiskFull, "host")], 0)), ["+disk_full:host"]);
        // Still holding: nothing new to say.
        assert!(e.apply(vec![f(AlertKind::DiskFull, "host")], 10).is_empty());
        let both = vec![f(AlertKind::DiskFull, "host"), f(AlertKind::OomRepeated, "s1")];
        assert_eq!(kinds(&e.apply(both, 20)), ["+oom_repeated:s1"]);
        let t = e.apply(vec![f(AlertKind::OomRepeated, "s1")], 30);
        assert_eq!(kinds(&t), ["-disk_full:host"]);
        assert!(matches!(&t[0], Transition::Cleared { since_ms: 0, .. }), "it says since when: {t:?}");
        assert_eq!(kinds(&e.apply(vec![], 40)), ["-oom_repeated:s1"]);
        // A new episode of the same condition is told again.
        assert_eq!(kinds(&e.apply(vec![f(AlertKind::DiskFull, "host")], 50)), ["+disk_full:host"]);
    }

    #[test]
    fn conditions_hold_at_their_thresholds() {
        let t = settings();
        let mut pinned = HashMap::new();
        let cpu = |cores| CpuNow { session: "s1".into(), who: "ada on ex".into(), cores, limit: 1.0 };
        let mut o = Observed {
            oom_kills: vec![("s1".into(), "ada on ex".into(), 1), ("s2".into(), "bo on ex".into(), 2)],
            cpu: vec![cpu(0.95)],
            memory: Some((95, 100)),
            disk: Some((20, 100)),
            reconcile_failing: true,
            engine_failures: (1, "refused".into()),
        };
        let fired = |f: &[Firing]| f.iter().map(|f| format!("{}:{}", f.kind.as_str(), f.subject)).collect::<Vec<_>>();
        // At 0 the CPU has only just reached its quota; the engine failed once (a blip).
        assert_eq!(
            fired(&evaluate(&o, &t, &mut pinned, 0, "i")),
            ["oom_repeated:s2", "memory_committed:host", "reconcile_failing:host"]
        );
        // A minute at the quota: pinned. Disk at 95 % full; the engine failed twice.
        o.disk = Some((5, 100));
        o.engine_failures = (2, "refused".into());
        let now = evaluate(&o, &t, &mut pinned, 60_000, "i");
        assert_eq!(
            fired(&now),
            [
                "oom_repeated:s2",
                "cpu_pinned:s1",
                "memory_committed:host",
                "disk_full:host",
                "reconcile_failing:host",
                "engine_unreachable:host"
            ]
        );
        assert!(now[1].message.contains("ada on ex") && now[1].message.starts_with("[i]"), "{}", now[1].message);
        // Below 90 % of the quota resets the clock.
        o.cpu = vec![cpu(0.5)];
        assert!(!fired(&evaluate(&o, &t, &mut pinned, 61_000, "i")).contains(&"cpu_pinned:s1".to_string()));
        o.cpu = vec![cpu(1.0)];
        assert!(!fired(&evaluate(&o, &t, &mut pinned, 62_000, "i")).contains(&"cpu_pinned:s1".to_string()));
    }
}
