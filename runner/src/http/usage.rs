//! `/v1/sessions/{id}/usage`, `/v1/usage/*`, `/v1/capacity`, `/v1/pools`: the usage figures, the
//! host's capacity and the warm pools.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    Json,
};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{extract::ApiQuery, sessions::session_id};
use crate::{
    app::App,
    domain::SessionState,
    error::{ApiError, ApiResult, ErrorBody},
    sessions::{self, pool::PoolStatus},
    usage::{Capacity, GroupUsage, SandboxUsage, SessionUsage, Slots, TopBy},
};

/// `GET /v1/sessions/{id}/usage`: the usage figures with the session's state, exercise and runtime.
#[derive(Serialize, ToSchema)]
pub struct SessionUsageView {
    #[serde(flatten)]
    usage: SessionUsage,
    state: SessionState,
    exercise: String,
    /// `runc`, `crun` or `runsc`.
    runtime: &'static str,
}

/// A session's usage now and over its last hour
///
/// An ended session has no figures and no history.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/usage", operation_id = "get_session_usage", tag = "usage",
    params(("id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 200, description = "The session's figures", body = SessionUsageView),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    )
)]
pub async fn session(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<SessionUsageView>> {
    let s = sessions::get(&app.sessions, &session_id(&id)?).await?;
    let usage = app.usage.session(&s.id);
    Ok(Json(SessionUsageView { usage, state: s.state, exercise: s.exercise, runtime: app.settings.runtime.as_str() }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// `cpu` (default) or `memory`.
    #[param(pattern = "^(cpu|memory)$")]
    by: Option<String>,
    /// At most this many (default 10).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct TopUsage {
    /// `cpu` or `memory`.
    by: &'static str,
    /// The last sampling round; `null` before the first.
    sampled_at: Option<String>,
    sandboxes: Vec<SandboxUsage>,
}

/// The sandboxes using the most CPU or memory
#[utoipa::path(
    get, path = "/v1/usage/top", operation_id = "top_usage", tag = "usage",
    params(TopQuery),
    responses((status = 200, description = "The top sandboxes", body = TopUsage))
)]
pub async fn top(State(app): State<Arc<App>>, ApiQuery(q): ApiQuery<TopQuery>) -> ApiResult<Json<TopUsage>> {
    let by = match q.by.as_deref().unwrap_or("cpu") {
        "cpu" => TopBy::Cpu,
        "memory" => TopBy::Memory,
        other => return Err(ApiError::bad_request("invalid_query", format!("by {other:?} is not one of cpu, memory"))),
    };
    let limit = super::extract::limit_param(q.limit, 10, 100)? as usize;
    let sandboxes = app.usage.top(by, limit);
    Ok(Json(TopUsage {
        by: if by == TopBy::Cpu { "cpu" } else { "memory" },
        sampled_at: app.usage.last_round().map(|r| crate::domain::rfc3339(r.at_ms)),
        sandboxes,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct UsageGroups {
    /// The last sampling round; `null` before the first.
    sampled_at: Option<String>,
    /// By exercise slug.
    exercises: BTreeMap<String, GroupUsage>,
    /// By managed app.
    apps: BTreeMap<String, GroupUsage>,
}

/// Usage summed per exercise and per managed app
#[utoipa::path(
    get, path = "/v1/usage/exercises", operation_id = "usage_by_exercise", tag = "usage",
    responses((status = 200, description = "The figures of each exercise and app", body = UsageGroups))
)]
pub async fn exercises(State(app): State<Arc<App>>) -> Json<UsageGroups> {
    let (exercises, apps) = app.usage.groups();
    Json(UsageGroups { sampled_at: app.usage.last_round().map(|r| crate::domain::rfc3339(r.at_ms)), exercises, apps })
}

/// The capacity figures, shared by `GET /v1/capacity` and the gauges of `/metrics`.
pub async fn capacity_of(app: &App) -> anyhow::Result<Capacity> {
    let total = app.settings.max_concurrent_starts;
    let in_use = total.saturating_sub(app.sessions.start_slots.available_permits());
    app.usage.capacity(Slots { in_use, total }).await
}

/// The host's capacity against what is committed to sandboxes
#[utoipa::path(
    get, path = "/v1/capacity", operation_id = "get_capacity", tag = "usage",
    responses((status = 200, description = "Sessions, memory, CPU, disk, start slots and builds", body = Capacity))
)]
pub async fn capacity(State(app): State<Arc<App>>) -> ApiResult<Json<Capacity>> {
    Ok(Json(capacity_of(&app).await?))
}

#[derive(Serialize, ToSchema)]
pub struct PoolList {
    pools: Vec<PoolStatus>,
}

/// Every exercise's warm pool (min, max, target, ready, starting, recent claims)
#[utoipa::path(
    get, path = "/v1/pools", operation_id = "list_pools", tag = "usage",
    responses((status = 200, description = "The warm pools", body = PoolList))
)]
pub async fn pools(State(app): State<Arc<App>>) -> ApiResult<Json<PoolList>> {
    let pools = sessions::pool::status(&app.sessions).await?;
    Ok(Json(PoolList { pools }))
}
