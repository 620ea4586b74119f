//! Health, readiness and metrics: for load balancers and Prometheus, no token needed.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use crate::{app::App, domain::SessionState, error::ApiResult};

/// The process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The service can do its work: the database and the Docker engine answer (503 when not).
///
/// `checks.build_network` says whether `RUN` steps are isolated from the host (issue 15). It is
/// reported, not part of the status code: sessions and checks work without it, and taking the
/// runner out of a load balancer for it would stop every learner's session over a build-only
/// fault. Builds themselves fail closed while it is not in place.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    let limit = Duration::from_secs(3);
    let db = tokio::time::timeout(limit, app.store.ping()).await;
    let docker = tokio::time::timeout(limit, app.engine.ping()).await;
    let check = |r: Result<anyhow::Result<()>, _>| match r {
        Ok(Ok(())) => json!({"ok": true}),
        Ok(Err(e)) => json!({"ok": false, "error": format!("{e:#}")}),
        Err(_) => json!({"ok": false, "error": "timed out"}),
    };
    let (db, docker) = (check(db), check(docker));
    let ready = db["ok"] == true && docker["ok"] == true;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let events = json!({"ok": app.metrics.engine_events_connected.get() == 1});
    let isolation = app.builds.isolation.lock().expect("lock").clone();
    let build_network = match isolation {
        Some(r) => serde_json::to_value(r).unwrap_or_default(),
        None => json!({"ok": false, "error": "not checked yet"}),
    };
    (
        status,
        Json(json!({
            "status": if ready {"ready"} else {"unavailable"},
            "checks": {"database": db, "docker": docker, "build_network": build_network, "engine_events": events},
        })),
    )
        .into_response()
}

/// Prometheus text format.
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
