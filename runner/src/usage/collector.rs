//! The usage figures as Prometheus metrics, built from the service's state at scrape time (so
//! a scrape never sees half a round, and series of ended sessions simply stop).
//!
//! Names follow cAdvisor's (`container_cpu_usage_seconds_total`,
//! `container_memory_working_set_bytes`, `container_oom_events_total`, ...) with the runner's
//! prefix. Per-exercise (and per-app) series always: their number is bounded by the exercises
//! an operator registered. Per-session series only with `RUNNER_METRICS_PER_SESSION=true`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

use super::{groups_of, now_of, Capacity, Kind, State};

use MetricType::{COUNTER, GAUGE};

/// Every family: name, help, type, labels.
const FAMILIES: &[(&str, &str, MetricType, &[&str])] = &[
    (
        "runner_sandboxes",
        "Live sandboxes sampled, by exercise and kind (session, self_test)",
        GAUGE,
        &["exercise", "kind"],
    ),
    ("runner_sandbox_cpu_seconds_total", "CPU time used by the exercise's sandboxes", COUNTER, &["exercise"]),
    (
        "runner_sandbox_cpu_throttled_seconds_total",
        "Time the exercise's sandboxes were held back by their CPU quota",
        COUNTER,
        &["exercise"],
    ),
    (
        "runner_sandbox_memory_working_set_bytes",
        "Memory working set (usage minus inactive page cache) of the exercise's sandboxes, summed",
        GAUGE,
        &["exercise"],
    ),
    (
        "runner_sandbox_memory_working_set_max_bytes",
        "Largest memory working set among the exercise's sandboxes",
        GAUGE,
        &["exercise"],
    ),
    ("runner_sandbox_memory_limit_bytes", "Memory limits of the exercise's sandboxes, summed", GAUGE, &["exercise"]),
    ("runner_sandbox_pids", "Host processes and threads in the exercise's sandboxes", GAUGE, &["exercise"]),
    ("runner_sandbox_oom_events_total", "OOM kills in the exercise's sandboxes", COUNTER, &["exercise"]),
    ("runner_app_cpu_seconds_total", "CPU time used by the managed app's containers", COUNTER, &["app"]),
    (
        "runner_app_memory_working_set_bytes",
        "Memory working set of the managed app's containers, summed",
        GAUGE,
        &["app"],
    ),
    ("runner_app_oom_events_total", "OOM kills in the managed app's containers", COUNTER, &["app"]),
    ("runner_usage_rounds_total", "Usage sampling rounds completed", COUNTER, &[]),
    (
        "runner_usage_round_cpu_seconds",
        "CPU time the last sampling round spent reading cgroup files (thread CPU time)",
        GAUGE,
        &[],
    ),
    ("runner_usage_sandboxes_unreadable", "Sandboxes whose cgroup the last round could not read", GAUGE, &[]),
    ("runner_session_cpu_seconds_total", "CPU time used by the session's sandbox", COUNTER, &["session", "exercise"]),
    (
        "runner_session_cpu_throttled_seconds_total",
        "Time the session's sandbox was held back by its CPU quota",
        COUNTER,
        &["session", "exercise"],
    ),
    (
        "runner_session_memory_working_set_bytes",
        "Memory working set of the session's sandbox",
        GAUGE,
        &["session", "exercise"],
    ),
    ("runner_session_memory_limit_bytes", "Memory limit of the session's sandbox", GAUGE, &["session", "exercise"]),
    ("runner_session_pids", "Host processes and threads in the session's sandbox", GAUGE, &["session", "exercise"]),
    ("runner_session_oom_events_total", "OOM kills in the session's sandbox", COUNTER, &["session", "exercise"]),
    ("runner_session_workspace_used_bytes", "Disk used in the session's workspace", GAUGE, &["session", "exercise"]),
    (
        "runner_session_workspace_quota_bytes",
        "Size of the session's workspace filesystem",
        GAUGE,
        &["session", "exercise"],
    ),
    ("runner_capacity_sessions_live", "Live (starting or running) sessions", GAUGE, &[]),
    ("runner_capacity_sessions_max", "The live-session cap (RUNNER_MAX_LIVE_SESSIONS)", GAUGE, &[]),
    (
        "runner_capacity_memory_committed_bytes",
        "Memory committed by the limits of live sandboxes and running builds",
        GAUGE,
        &[],
    ),
    ("runner_capacity_cpu_committed_cores", "CPU quotas of live sandboxes, summed", GAUGE, &[]),
    ("runner_host_memory_bytes", "The host's memory (MemTotal)", GAUGE, &[]),
    ("runner_host_memory_available_bytes", "The host's available memory (MemAvailable)", GAUGE, &[]),
    ("runner_host_cpus", "CPUs this runner may use", GAUGE, &[]),
    ("runner_data_dir_free_bytes", "Free disk of the data directory's filesystem", GAUGE, &[]),
    ("runner_data_dir_size_bytes", "Size of the data directory's filesystem", GAUGE, &[]),
    ("runner_start_slots_in_use", "Sandbox starts in progress", GAUGE, &[]),
    ("runner_start_slots", "Sandbox starts allowed at once (RUNNER_MAX_CONCURRENT_STARTS)", GAUGE, &[]),
    ("runner_builds_queued", "Builds waiting for a slot", GAUGE, &[]),
    ("runner_builds_running", "Builds building or self-testing", GAUGE, &[]),
];

pub(super) struct UsageCollector {
    state: Arc<Mutex<State>>,
    capacity: Arc<Mutex<Option<Capacity>>>,
    per_session: bool,
    descs: Vec<Desc>,
}

impl UsageCollector {
    pub(super) fn new(state: Arc<Mutex<State>>, capacity: Arc<Mutex<Option<Capacity>>>, per_session: bool) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, labels)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .expect("valid metric names")
            })
            .collect();
        UsageCollector { state, capacity, per_session, descs }
    }
}

/// Metric families being filled, by name.
struct Families(HashMap<&'static str, Vec<Metric>>);

impl Families {
    fn add(&mut self, name: &'static str, labels: &[&str], value: f64) {
        let (_, _, ty, names) = FAMILIES.iter().find(|f| f.0 == name).expect("a declared family");
        debug_assert_eq!(names.len(), labels.len(), "{name}");
        let pairs = names
            .iter()
            .zip(labels)
            .map(|(n, v)| {
                let mut p = LabelPair::default();
                p.set_name(n.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect();
        let mut m = Metric::default();
        m.set_label(pairs);
        if *ty == COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.0.entry(name).or_default().push(m);
    }
}

impl Collector for UsageCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut f = Families(HashMap::new());
        {
            let state = self.state.lock().expect("lock");
            let (exercises, apps) = groups_of(&state);
            for (ex, g) in &exercises {
                let e = [ex.as_str()];
                f.add("runner_sandboxes", &[ex, Kind::Session.as_str()], g.sessions as f64);
                f.add("runner_sandboxes", &[ex, Kind::SelfTest.as_str()], g.self_tests as f64);
                f.add("runner_sandbox_cpu_seconds_total", &e, g.cpu_seconds_total);
                f.add("runner_sandbox_cpu_throttled_seconds_total", &e, g.cpu_throttled_seconds_total);
                f.add("runner_sandbox_memory_working_set_bytes", &e, g.memory_working_set_bytes as f64);
                f.add("runner_sandbox_memory_working_set_max_bytes", &e, g.memory_working_set_max_bytes as f64);
                f.add("runner_sandbox_memory_limit_bytes", &e, g.memory_limit_bytes as f64);
                f.add("runner_sandbox_pids", &e, g.pids as f64);
                f.add("runner_sandbox_oom_events_total", &e, g.oom_kills_total as f64);
            }
            for (app, g) in &apps {
                let a = [app.as_str()];
                f.add("runner_app_cpu_seconds_total", &a, g.cpu_seconds_total);
                f.add("runner_app_memory_working_set_bytes", &a, g.memory_working_set_bytes as f64);
                f.add("runner_app_oom_events_total", &a, g.oom_kills_total as f64);
            }
            f.add("runner_usage_rounds_total", &[], state.rounds as f64);
            if let Some(r) = state.last_round {
                f.add("runner_usage_round_cpu_seconds", &[], r.read_cpu_ns as f64 / 1e9);
                f.add("runner_usage_sandboxes_unreadable", &[], r.unreadable as f64);
            }
            if self.per_session {
                for t in state.sandboxes.values().filter(|t| t.target.kind == Kind::Session) {
                    let Some(now) = now_of(t) else { continue };
                    let l = [t.target.key.as_str(), t.target.group.as_str()];
                    f.add("runner_session_cpu_seconds_total", &l, now.cpu_seconds_total);
                    f.add("runner_session_cpu_throttled_seconds_total", &l, now.cpu_throttled_seconds_total);
                    f.add("runner_session_memory_working_set_bytes", &l, now.memory_working_set_bytes as f64);
                    if let Some(v) = now.memory_limit_bytes {
                        f.add("runner_session_memory_limit_bytes", &l, v as f64);
                    }
                    f.add("runner_session_pids", &l, now.pids as f64);
                    if let Some(v) = now.oom_kills_total {
                        f.add("runner_session_oom_events_total", &l, v as f64);
                    }
                    if let (Some(used), Some(quota)) = (now.workspace_used_bytes, now.workspace_quota_bytes) {
                        f.add("runner_session_workspace_used_bytes", &l, used as f64);
                        f.add("runner_session_workspace_quota_bytes", &l, quota as f64);
                    }
                }
            }
        }
        if let Some(c) = self.capacity.lock().expect("lock").as_ref() {
            f.add("runner_capacity_sessions_live", &[], c.sessions.live as f64);
            f.add("runner_capacity_sessions_max", &[], c.sessions.max as f64);
            f.add("runner_capacity_memory_committed_bytes", &[], c.memory.committed_bytes as f64);
            f.add("runner_capacity_cpu_committed_cores", &[], c.cpu.committed_cores);
            f.add("runner_host_memory_bytes", &[], c.memory.host_total_bytes as f64);
            f.add("runner_host_memory_available_bytes", &[], c.memory.host_available_bytes as f64);
            f.add("runner_host_cpus", &[], c.cpu.host_cores as f64);
            if let (Some(free), Some(total)) = (c.disk.free_bytes, c.disk.total_bytes) {
                f.add("runner_data_dir_free_bytes", &[], free as f64);
                f.add("runner_data_dir_size_bytes", &[], total as f64);
            }
            f.add("runner_start_slots_in_use", &[], c.start_slots.in_use as f64);
            f.add("runner_start_slots", &[], c.start_slots.total as f64);
            f.add("runner_builds_queued", &[], c.builds.queued as f64);
            f.add("runner_builds_running", &[], c.builds.running as f64);
        }
        FAMILIES
            .iter()
            .filter_map(|(name, help, ty, _)| {
                let metrics = f.0.remove(name)?;
                let mut mf = MetricFamily::default();
                mf.set_name(name.to_string());
                mf.set_help(help.to_string());
                mf.set_field_type(*ty);
                mf.set_metric(metrics);
                Some(mf)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{cgroup::Limits, cgroup::Reading, Observed, Target};

    fn render(c: UsageCollector) -> String {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(c)).unwrap();
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    fn state_with_one_session() -> Arc<Mutex<State>> {
        let mut s = State::default();
        let target = Target {
            key: "0b6c7e1e-0000-4000-8000-000000000001".into(),
            kind: Kind::Session,
            group: "hello".into(),
            container: "c1".into(),
            learner: Some("ada".into()),
            detail: None,
            network: false,
            workspace: None,
        };
        let seen = Observed {
            reading: Some(Reading {
                cpu_usage_ns: 2_000_000_000,
                memory_usage_bytes: 64 << 20,
                pids: 4,
                oom_kills: Some(1),
                ..Default::default()
            }),
            limits: Limits { memory_bytes: Some(128 << 20), pids: Some(256), cpu_cores: Some(1.0) },
            net: None,
            disk: None,
        };
        s.apply(1_700_000_000_000, vec![target], vec![seen], 1000, &Default::default());
        Arc::new(Mutex::new(s))
    }

    #[test]
    fn per_exercise_series_always_per_session_series_only_when_asked() {
        let text = render(UsageCollector::new(state_with_one_session(), Default::default(), false));
        assert!(text.contains("# TYPE runner_sandbox_cpu_seconds_total counter"), "{text}");
        assert!(text.contains("runner_sandbox_cpu_seconds_total{exercise=\"hello\"} 2"), "{text}");
        assert!(text.contains("runner_sandbox_memory_working_set_bytes{exercise=\"hello\"} 67108864"), "{text}");
        assert!(text.contains("runner_sandbox_oom_events_total{exercise=\"hello\"} 1"), "{text}");
        assert!(text.contains("runner_sandboxes{exercise=\"hello\",kind=\"session\"} 1"), "{text}");
        assert!(!text.contains("runner_session_"), "{text}");

        let text = render(UsageCollector::new(state_with_one_session(), Default::default(), true));
        assert!(
            text.contains(
                "runner_session_memory_limit_bytes{session=\"0b6c7e1e-0000-4000-8000-000000000001\",exercise=\"hello\"} 134217728"
            ),
            "{text}"
        );
    }
}
