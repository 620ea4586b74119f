//! Prometheus metrics. Counters and histograms are updated where things happen; gauges that
//! mirror the database (sessions by state) are read from it at scrape time.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets for HTTP requests (seconds): an API call is milliseconds; a session create
/// waits for its sandbox (up to the start queue timeout).
const HTTP_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

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
    /// Fleet nodes by name and availability: 1 while heartbeating (set every heartbeat).
    pub node_up: IntGaugeVec,
    /// Live sessions per fleet node (set every heartbeat).
    pub node_sessions: IntGaugeVec,
    /// Nodes this runner declared lost.
    pub nodes_lost: IntCounter,
    /// Placement decisions of new sessions by outcome (`placed`, `nowhere`).
    pub placements: IntCounterVec,
    pub node_images: IntCounterVec,
    /// Requests this runner relayed to another node's runner, by outcome.
    pub forwarded: IntCounterVec,
    pub checks: IntCounterVec,
    pub builds: IntCounterVec,
    /// Requests by route template (bounded: the router's routes plus `unmatched`), method, status.
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub build_seconds: HistogramVec,
    pub check_seconds: HistogramVec,
    /// Set at scrape time from the IDE proxy.
    pub ide_open_connections: IntGauge,
    pub build_info: IntGaugeVec,
    pub session_events: IntCounterVec,
    /// 1 while the runner follows the engine's event stream.
    pub engine_events_connected: IntGauge,
    pub engine_event_stream_losses: IntCounter,
    pub reconcile_failures: IntCounter,
    pub alerts_firing: IntGaugeVec,
    pub alerts: IntCounterVec,
    /// From the request to the sandbox's IDE agent answering, by runtime and `source` (`cold`:
    /// a container started for the request; `pool`: a claimed pooled sandbox).
    pub session_ready_seconds: HistogramVec,
    /// Pooled sandboxes by exercise and state (`starting`, `ready`), set every pool round.
    pub pool_sandboxes: IntGaugeVec,
    /// New sessions by exercise and pool outcome: `hit` (claimed a pooled sandbox), `miss` (the
    /// pool was empty: a cold start), `returning` (the learner has a workspace: a cold start on it).
    pub pool_claims: IntCounterVec,
    pub pool_claim_seconds: HistogramVec,
    /// Pooled sandboxes removed unclaimed, by reason.
    pub pool_discarded: IntCounterVec,
    /// The runner's own health probes of sandboxes (runc, crun), by result.
    pub health_probes: IntCounterVec,
    /// Webhook delivery attempts by webhook and result (`delivered`, `retried`, `failed`).
    pub webhook_attempts: IntCounterVec,
    /// Events not yet delivered to a webhook (its cursor behind the newest event), by webhook.
    pub webhook_backlog: IntGaugeVec,
    /// One-shot runs by runtime and overall status.
    pub runs: IntCounterVec,
    pub run_seconds: HistogramVec,
    /// Runs waiting for a slot.
    pub runs_queued: prometheus::IntGauge,
    /// Run sandboxes handed to runs: `prepared` ahead of time or `made` for the run.
    pub run_sandboxes: IntCounterVec,
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
        let node_up = IntGaugeVec::new(
            Opts::new("runner_node_up", "Fleet nodes: 1 while heartbeating, by node and availability"),
            &["node", "availability"],
        )
        .unwrap();
        let node_sessions =
            IntGaugeVec::new(Opts::new("runner_node_sessions", "Live sessions per fleet node"), &["node"]).unwrap();
        let nodes_lost = IntCounter::new("runner_nodes_lost_total", "Fleet nodes this runner declared lost").unwrap();
        let placements = IntCounterVec::new(
            Opts::new("runner_placements_total", "Placement decisions of new sessions by outcome"),
            &["outcome"],
        )
        .unwrap();
        let node_images = IntCounterVec::new(
            Opts::new(
                "runner_node_images_total",
                "Exercise images this node pulled from the fleet's registry or removed, by action",
            ),
            &["action"],
        )
        .unwrap();
        let forwarded = IntCounterVec::new(
            Opts::new("runner_forwarded_requests_total", "Requests relayed to another node's runner, by outcome"),
            &["outcome"],
        )
        .unwrap();
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
        let http_requests = IntCounterVec::new(
            Opts::new("runner_http_requests_total", "HTTP requests answered, by route template, method and status"),
            &["route", "method", "status"],
        )
        .unwrap();
        let http_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "runner_http_request_duration_seconds",
                "Time to answer an HTTP request (to its headers)",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .unwrap();
        let build_seconds = HistogramVec::new(
            HistogramOpts::new(
                "runner_build_duration_seconds",
                "Exercise builds from start to outcome (self-test included)",
            )
            .buckets(vec![1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0]),
            &["outcome"],
        )
        .unwrap();
        let check_seconds = HistogramVec::new(
            HistogramOpts::new("runner_check_duration_seconds", "Checks of learners' work, run time by verdict")
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            &["verdict"],
        )
        .unwrap();
        let ide_open_connections = IntGauge::new(
            "runner_ide_open_connections",
            "Connections the IDE proxy holds open to sandboxes (WebSockets and requests in flight)",
        )
        .unwrap();
        let build_info =
            IntGaugeVec::new(Opts::new("runner_build_info", "The runner's version (value is always 1)"), &["version"])
                .unwrap();
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let session_events = IntCounterVec::new(
            Opts::new(
                "runner_session_events_total",
                "What happened to sessions' sandboxes (started, oom_killed, exited, …)",
            ),
            &["kind"],
        )
        .unwrap();
        let engine_events_connected = IntGauge::new(
            "runner_engine_events_connected",
            "1 while the runner follows the engine's event stream (OOM kills, exits)",
        )
        .unwrap();
        let engine_event_stream_losses = IntCounter::new(
            "runner_engine_event_stream_losses_total",
            "Times the engine's event stream ended or failed (an engine restart); the runner reconnects",
        )
        .unwrap();
        let reconcile_failures = IntCounter::new(
            "runner_reconcile_failures_total",
            "Reconciliation rounds that failed (and will be retried)",
        )
        .unwrap();
        let alerts_firing =
            IntGaugeVec::new(Opts::new("runner_alerts_firing", "Alerts firing now, by kind"), &["kind"]).unwrap();
        let alerts =
            IntCounterVec::new(Opts::new("runner_alerts_total", "Alert episodes that started, by kind"), &["kind"])
                .unwrap();
        let session_ready_seconds = HistogramVec::new(
            HistogramOpts::new(
                "runner_session_ready_duration_seconds",
                "Time from session request to the sandbox's IDE agent answering",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0]),
            &["runtime", "source"],
        )
        .unwrap();
        let pool_sandboxes = IntGaugeVec::new(
            Opts::new("runner_pool_sandboxes", "Pooled sandboxes by exercise and state"),
            &["exercise", "state"],
        )
        .unwrap();
        let pool_claims = IntCounterVec::new(
            Opts::new("runner_pool_claims_total", "New sessions by pool outcome (hit, miss, returning)"),
            &["exercise", "outcome"],
        )
        .unwrap();
        let pool_claim_seconds = HistogramVec::new(
            HistogramOpts::new(
                "runner_pool_claim_duration_seconds",
                "Time to claim a pooled sandbox for a new session",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            &["exercise"],
        )
        .unwrap();
        let pool_discarded = IntCounterVec::new(
            Opts::new("runner_pool_discarded_total", "Pooled sandboxes removed unclaimed, by reason"),
            &["reason"],
        )
        .unwrap();
        let health_probes = IntCounterVec::new(
            Opts::new(
                "runner_health_probes_total",
                "The runner's health probes of sandboxes under runc and crun, by result (healthy, unhealthy)",
            ),
            &["result"],
        )
        .unwrap();
        let webhook_attempts = IntCounterVec::new(
            Opts::new("runner_webhook_attempts_total", "Webhook delivery attempts, by webhook and result"),
            &["webhook", "result"],
        )
        .unwrap();
        let runs = IntCounterVec::new(
            Opts::new("runner_runs_total", "One-shot runs (POST /v1/runs), by runtime and status"),
            &["runtime", "status"],
        )
        .unwrap();
        let run_seconds = HistogramVec::new(
            HistogramOpts::new("runner_run_duration_seconds", "One-shot runs from their slot to their result")
                .buckets(vec![0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["runtime"],
        )
        .unwrap();
        let runs_queued = prometheus::IntGauge::new("runner_runs_queued", "One-shot runs waiting for a slot").unwrap();
        let run_sandboxes = IntCounterVec::new(
            Opts::new(
                "runner_run_sandboxes_total",
                "Run sandboxes handed to runs: prepared ahead of time, or made for the run",
            ),
            &["source"],
        )
        .unwrap();
        let webhook_backlog = IntGaugeVec::new(
            Opts::new("runner_webhook_backlog_events", "Events a webhook has not been told yet"),
            &["webhook"],
        )
        .unwrap();
        for c in [
            Box::new(session_ready_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(webhook_attempts.clone()),
            Box::new(webhook_backlog.clone()),
            Box::new(runs.clone()),
            Box::new(run_seconds.clone()),
            Box::new(runs_queued.clone()),
            Box::new(run_sandboxes.clone()),
            Box::new(health_probes.clone()),
            Box::new(pool_sandboxes.clone()),
            Box::new(pool_claims.clone()),
            Box::new(pool_claim_seconds.clone()),
            Box::new(pool_discarded.clone()),
            Box::new(checks.clone()),
            Box::new(reconcile_failures.clone()),
            Box::new(alerts_firing.clone()),
            Box::new(alerts.clone()),
            Box::new(engine_events_connected.clone()),
            Box::new(engine_event_stream_losses.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_request_seconds.clone()),
            Box::new(build_seconds.clone()),
            Box::new(check_seconds.clone()),
            Box::new(ide_open_connections.clone()),
            Box::new(build_info.clone()),
            Box::new(session_events.clone()),
            Box::new(builds.clone()),
            Box::new(sessions.clone()),
            Box::new(session_start_seconds.clone()),
            Box::new(sessions_reaped.clone()),
            Box::new(docker_errors.clone()),
            Box::new(reconcile_actions.clone()),
            Box::new(reconcile_rounds.clone()),
            Box::new(supervise_rounds.clone()),
            Box::new(rejected_requests.clone()),
            Box::new(node_up.clone()),
            Box::new(node_sessions.clone()),
            Box::new(nodes_lost.clone()),
            Box::new(placements.clone()),
            Box::new(node_images.clone()),
            Box::new(forwarded.clone()),
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
            node_up,
            node_sessions,
            nodes_lost,
            placements,
            node_images,
            forwarded,
            checks,
            builds,
            http_requests,
            http_request_seconds,
            build_seconds,
            check_seconds,
            ide_open_connections,
            build_info,
            session_events,
            engine_events_connected,
            engine_event_stream_losses,
            reconcile_failures,
            alerts_firing,
            alerts,
            session_ready_seconds,
            pool_sandboxes,
            pool_claims,
            pool_claim_seconds,
            pool_discarded,
            health_probes,
            webhook_attempts,
            webhook_backlog,
            runs,
            run_seconds,
            runs_queued,
            run_sandboxes,
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
