//! Prometheus metrics. Counters and histograms are updated where things happen; gauges that
//! mirror the database (sessions by state) are read from it at scrape time.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub sessions: IntGaugeVec,
    pub session_start_seconds: HistogramVec,
    pub sessions_reaped: IntCounterVec,
    pub docker_errors: IntCounterVec,
    pub reconcile_actions: IntCounterVec,
    pub reconcile_rounds: IntCounter,
    pub supervise_rounds: IntCounter,
    pub rejected_requests: IntCounterVec,
    pub checks: IntCounterVec,
    pub builds: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let sessions = IntGaugeVec::new(Opts::new("runner_sessions", "Sessions by state"), &["state"]).unwrap();
        let session_start_seconds = HistogramVec::new(
            HistogramOpts::new("runner_session_start_duration_seconds", "Time from session request to running sandbox")
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            &["runtime"],
        )
        .unwrap();
        let sessions_reaped = IntCounterVec::new(
            Opts::new("runner_sessions_reaped_total", "Sessions stopped by the reaper"),
            &["reason"],
        )
        .unwrap();
        let docker_errors =
            IntCounterVec::new(Opts::new("runner_docker_errors_total", "Docker API calls that failed"), &["operation"])
                .unwrap();
        let reconcile_actions = IntCounterVec::new(
            Opts::new("runner_reconcile_actions_total", "What reconciliation did to make Docker match the database"),
            &["action"],
        )
        .unwrap();
        let reconcile_rounds = IntCounter::new(
            "runner_reconcile_rounds_total",
            "Reconciliation rounds completed (a stalled count means reconciliation is failing)",
        )
        .unwrap();
        let supervise_rounds =
            IntCounter::new("runner_app_supervise_rounds_total", "Rounds of the managed apps' supervisor").unwrap();
        let rejected_requests = IntCounterVec::new(
            Opts::new("runner_rejected_requests_total", "Requests refused by back-pressure or rate limits"),
            &["reason"],
        )
        .unwrap();
        let checks =
            IntCounterVec::new(Opts::new("runner_checks_total", "Checks of learners' work by verdict"), &["verdict"])
                .unwrap();
        let builds =
            IntCounterVec::new(Opts::new("runner_builds_total", "Finished exercise builds by outcome"), &["outcome"])
                .unwrap();
        for c in [
            Box::new(checks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(builds.clone()),
            Box::new(sessions.clone()),
            Box::new(session_start_seconds.clone()),
            Box::new(sessions_reaped.clone()),
            Box::new(docker_errors.clone()),
            Box::new(reconcile_actions.clone()),
            Box::new(reconcile_rounds.clone()),
            Box::new(supervise_rounds.clone()),
            Box::new(rejected_requests.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Metrics {
            registry,
            sessions,
            session_start_seconds,
            sessions_reaped,
            docker_errors,
            reconcile_actions,
            reconcile_rounds,
            supervise_rounds,
            rejected_requests,
            checks,
            builds,
        }
    }

    /// Adds a collector whose series are built at scrape time (the usage figures).
    pub fn register_collector(&self, c: Box<dyn prometheus::core::Collector>) -> prometheus::Result<()> {
        self.registry.register(c)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
