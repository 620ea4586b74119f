//! Health, readiness and metrics: for load balancers and Prometheus, no token needed.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{
    app::App,
    domain::SessionState,
    error::{ApiResult, ErrorBody},
};

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// The process is up
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "ops", security(()),
    responses((status = 200, description = "Up", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    checks: ReadinessChecks,
}

#[derive(Serialize, ToSchema)]
pub struct ReadinessChecks {
    database: Probe,
    docker: Probe,
    /// Whether `RUN` steps are isolated from the host: `ok`, and what was checked or repaired.
    build_network: serde_json::Value,
    /// Whether the runner follows the engine's event stream.
    engine_events: Probe,
}

#[derive(Serialize, ToSchema)]
pub struct Probe {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Probe {
    fn of(r: Result<anyhow::Result<()>, tokio::time::error::Elapsed>) -> Probe {
        match r {
            Ok(Ok(())) => Probe { ok: true, error: None },
            Ok(Err(e)) => Probe { ok: false, error: Some(format!("{e:#}")) },
            Err(_) => Probe { ok: false, error: Some("timed out".into()) },
        }
    }
}

/// The service can do its work: the database and the Docker engine answer
///
/// `checks.build_network` says whether `RUN` steps are isolated from the host (issue 15). It is
/// reported, not part of the status code: sessions and checks work without it, and taking the
/// runner out of a load balancer for it would stop every learner's session over a build-only
/// fault. Builds themselves fail closed while it is not in place.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "ops", security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "The database or the engine does not answer", body = Readiness),
    )
)]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let limit = Duration::from_secs(3);
    let db = tokio::time::timeout(limit, app.store.ping()).await;
    let docker = tokio::time::timeout(limit, app.engine.ping()).await;
    let (database, docker) = (Probe::of(db), Probe::of(docker));
    let ready = database.ok && docker.ok;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let engine_events = Probe { ok: app.metrics.engine_events_connected.get() == 1, error: None };
    let isolation = app.builds.isolation.lock().expect("lock").clone();
    let build_network = match isolation {
        Some(r) => serde_json::to_value(r).unwrap_or_default(),
        None => serde_json::json!({"ok": false, "error": "not checked yet"}),
    };
    let checks = ReadinessChecks { database, docker, build_network, engine_events };
    (status, Json(Readiness { status: if ready { "ready" } else { "unavailable" }, checks })).into_response()
}

/// Prometheus metrics, in the text format
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "ops", security(()),
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4", body = String),
        (status = 500, description = "`internal`", body = ErrorBody),
    )
)]
pub async fn metrics(State(app): State<Arc<App>>) -> ApiResult<Response> {
    let counts = app.store.count_sessions_by_state().await?;
    for state in SessionState::ALL {
        let n = counts.iter().find(|(s, _)| s == state.as_str()).map(|(_, n)| *n).unwrap_or(0);
        app.metrics.sessions.with_label_values(&[state.as_str()]).set(n);
    }
    app.metrics.ide_open_connections.set(app.ide.open_connections() as i64);
    super::usage::capacity_of(&app).await?; // the capacity gauges (the usage collector renders them)
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()).into_response())
}
