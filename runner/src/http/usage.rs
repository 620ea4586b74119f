//! `/v1/sessions/{id}/usage`, `/v1/usage/*`, `/v1/capacity`, `/v1/pools`: the usage figures, the
//! host's capacity and the warm pools.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{extract::ApiQuery, sessions::session_id};
use crate::{
    app::App,
    error::{ApiError, ApiResult},
    sessions,
    usage::{Capacity, SessionUsage, Slots, TopBy},
};

/// A session's figures now and its last hour (404 `session_not_found` for an unknown session;
/// an ended one has no figures and no history).
pub async fn session(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let s = sessions::get(&app.sessions, &session_id(&id)?).await?;
    let usage: SessionUsage = app.usage.session(&s.id);
    let mut v = serde_json::to_value(usage).map_err(anyhow::Error::from)?;
    v["state"] = json!(s.state);
    v["exercise"] = json!(s.exercise);
    v["runtime"] = json!(app.settings.runtime.as_str());
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopQuery {
    by: Option<String>,
    limit: Option<usize>,
}

pub async fn top(State(app): State<Arc<App>>, ApiQuery(q): ApiQuery<TopQuery>) -> ApiResult<Json<serde_json::Value>> {
    let by = match q.by.as_deref().unwrap_or("cpu") {
        "cpu" => TopBy::Cpu,
        "memory" => TopBy::Memory,
        other => return Err(ApiError::bad_request("invalid_query", format!("by {other:?} is not one of cpu, memory"))),
    };
    let limit = q.limit.unwrap_or(10).clamp(1, 100);
    let sandboxes = app.usage.top(by, limit);
    Ok(Json(json!({
        "by": if by == TopBy::Cpu { "cpu" } else { "memory" },
        "sampled_at": app.usage.last_round().map(|r| crate::domain::rfc3339(r.at_ms)),
        "sandboxes": sandboxes,
    })))
}

pub async fn exercises(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let (exercises, apps) = app.usage.groups();
    Json(json!({
        "sampled_at": app.usage.last_round().map(|r| crate::domain::rfc3339(r.at_ms)),
        "exercises": exercises,
        "apps": apps,
    }))
}

/// The capacity figures, shared by `GET /v1/capacity` and the gauges of `/metrics`.
pub async fn capacity_of(app: &App) -> anyhow::Result<Capacity> {
    let total = app.settings.max_concurrent_starts;
    let in_use = total.saturating_sub(app.sessions.start_slots.available_permits());
    app.usage.capacity(Slots { in_use, total }).await
}

pub async fn capacity(State(app): State<Arc<App>>) -> ApiResult<Json<Capacity>> {
    Ok(Json(capacity_of(&app).await?))
}

/// `GET /v1/pools`: every exercise's warm pool (min, max, target, ready, starting, recent claims).
pub async fn pools(State(app): State<Arc<App>>) -> ApiResult<Json<serde_json::Value>> {
    let pools = sessions::pool::status(&app.sessions).await?;
    Ok(Json(json!({ "pools": pools })))
}
