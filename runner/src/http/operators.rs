//! Operators' actions and their audit log: stop every session of an exercise, drain this runner
//! (new sessions get 503 with `Retry-After`, live ones keep running) and undrain; `GET
//! /v1/audit` reads who did what, when, and how it ended. A session stop through
//! `DELETE /v1/sessions/{id}` is recorded here too.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{ApiJson, ApiQuery},
    middleware::Actor,
};
use crate::{
    alerts::AlertView,
    app::App,
    domain::{rfc3339, Slug},
    error::{ApiError, ApiResult, ErrorBody, REQUEST_ID},
    sessions,
    store::AuditEntry,
};

/// Appends to the audit log. The action has happened already: a failed write is logged loudly
/// rather than turned into an error that would hide the outcome from the caller.
pub(super) async fn audit(app: &App, actor: Actor, action: &str, target: &str, outcome: &str, detail: Option<&str>) {
    let request_id = REQUEST_ID.try_with(|id| id.clone()).ok();
    if let Err(e) = app.store.insert_audit(actor.0, action, target, outcome, detail, request_id.as_deref()).await {
        tracing::error!(actor = actor.0, action, target, outcome, error = %format!("{e:#}"), "could not write the audit log");
    } else {
        tracing::info!(target: "audit", actor = actor.0, action, target, outcome, "operator action");
    }
}

/// What an error says in the audit log's `outcome`.
pub(super) fn outcome_of(e: &ApiError) -> String {
    format!("{}: {}", e.code, e.message)
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopSessions {
    /// Recorded as each session's stop reason and in the audit log (at most 200 characters kept).
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct StoppedSessions {
    exercise: String,
    /// How many live sessions were stopped.
    stopped: usize,
}

/// End every live session of an exercise (after a broken publish, say)
#[utoipa::path(
    post, path = "/v1/exercises/{slug}/stop-sessions", operation_id = "stop_exercise_sessions", tag = "operators",
    params(("slug" = String, Path, description = "The exercise's slug")),
    request_body(content = Option<StopSessions>, description = "Optional: without a body the reason is \"stopped by an operator\""),
    responses(
        (status = 200, description = "How many sessions were stopped", body = StoppedSessions),
        (status = 404, description = "`exercise_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_slug`", body = ErrorBody),
    )
)]
pub async fn stop_exercise_sessions(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    relayed: Option<Extension<super::fleet::Relayed>>,
    headers: axum::http::HeaderMap,
    Path(slug): Path<String>,
    body: Option<ApiJson<StopSessions>>,
) -> ApiResult<Json<StoppedSessions>> {
    let slug = Slug::parse(&slug)?;
    if app.store.exercise(slug.as_str()).await?.is_none() {
        return Err(ApiError::not_found("exercise_not_found", format!("exercise {:?} does not exist", slug.as_str())));
    }
    let reason = body.and_then(|b| b.0.reason).filter(|r| !r.trim().is_empty());
    let reason: String = reason.unwrap_or_else(|| "stopped by an operator".into()).chars().take(200).collect();
    // Each node stops its own sandboxes: in a fleet the others are asked first.
    let mut elsewhere = 0;
    if relayed.is_none() {
        let path = format!("/v1/exercises/{}/stop-sessions", slug.as_str());
        let body = serde_json::json!({ "reason": reason });
        for v in super::fleet::on_other_nodes(&app, &headers, axum::http::Method::POST, &path, Some(&body)).await? {
            elsewhere += v["stopped"].as_u64().unwrap_or(0) as usize;
        }
    }
    let result = sessions::stop_exercise(&app.sessions, slug.as_str(), &reason).await.map(|n| n + elsewhere);
    let outcome = match &result {
        Ok(n) => format!("ok: {n} stopped"),
        Err(e) => e.to_string(),
    };
    audit(&app, actor, "exercise.stop_sessions", slug.as_str(), &outcome, Some(&reason)).await;
    let stopped = result?;
    Ok(Json(StoppedSessions { exercise: slug.as_str().to_string(), stopped }))
}

/// This runner's state.
#[derive(Serialize, ToSchema)]
pub struct RunnerView {
    /// `RUNNER_INSTANCE`.
    instance: String,
    version: &'static str,
    /// New sessions are refused (503 `runner_draining`); live ones keep running.
    draining: bool,
    draining_since: Option<String>,
}

pub(super) fn runner_view(app: &App) -> RunnerView {
    let since = *app.sessions.draining.lock().expect("lock");
    RunnerView {
        instance: app.settings.instance.clone(),
        version: env!("CARGO_PKG_VERSION"),
        draining: since.is_some(),
        draining_since: since.map(rfc3339),
    }
}

/// This runner's state
#[utoipa::path(
    get, path = "/v1/runner", operation_id = "get_runner", tag = "operators",
    responses((status = 200, description = "The runner", body = RunnerView))
)]
pub async fn runner(State(app): State<Arc<App>>) -> Json<RunnerView> {
    Json(runner_view(&app))
}

/// Refuse new sessions on this runner; live ones keep running
///
/// Idempotent: draining a drained runner keeps its first `draining_since`.
#[utoipa::path(
    post, path = "/v1/runner/drain", operation_id = "drain_runner", tag = "operators",
    responses((status = 200, description = "The runner, draining", body = RunnerView))
)]
pub async fn drain(State(app): State<Arc<App>>, Extension(actor): Extension<Actor>) -> Json<RunnerView> {
    app.sessions.draining.lock().expect("lock").get_or_insert_with(crate::store::now_ms);
    audit(&app, actor, "runner.drain", &app.settings.instance, "ok", None).await;
    Json(runner_view(&app))
}

/// Take new sessions again
#[utoipa::path(
    post, path = "/v1/runner/undrain", operation_id = "undrain_runner", tag = "operators",
    responses((status = 200, description = "The runner, taking sessions", body = RunnerView))
)]
pub async fn undrain(State(app): State<Arc<App>>, Extension(actor): Extension<Actor>) -> Json<RunnerView> {
    *app.sessions.draining.lock().expect("lock") = None;
    audit(&app, actor, "runner.undrain", &app.settings.instance, "ok", None).await;
    Json(runner_view(&app))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Who did what, when, and how it ended.
#[derive(Serialize, ToSchema)]
pub struct AuditView {
    id: String,
    at: String,
    /// The kind of credential that acted: `api-token` or `operator-token`.
    actor: String,
    /// `session.stop`, `exercise.stop_sessions`, `runner.drain`, `runner.undrain`, `app.rollback`.
    action: String,
    target: String,
    /// `ok...`, or the error's code and message.
    outcome: String,
    detail: Option<String>,
    request_id: Option<String>,
}

fn audit_view(e: &AuditEntry) -> AuditView {
    AuditView {
        id: e.id.clone(),
        at: rfc3339(e.at),
        actor: e.actor.clone(),
        action: e.action.clone(),
        target: e.target.clone(),
        outcome: e.outcome.clone(),
        detail: e.detail.clone(),
        request_id: e.request_id.clone(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditLog {
    /// Newest first.
    entries: Vec<AuditView>,
}

/// The audit log, newest entries first
#[utoipa::path(
    get, path = "/v1/audit", operation_id = "audit_log", tag = "operators",
    params(AuditQuery),
    responses((status = 200, description = "The entries", body = AuditLog))
)]
pub async fn audit_log(State(app): State<Arc<App>>, ApiQuery(q): ApiQuery<AuditQuery>) -> ApiResult<Json<AuditLog>> {
    let limit = super::extract::limit_param(q.limit, 100, 1000)? as i64;
    let entries: Vec<_> = app.store.audit(limit).await?.iter().map(audit_view).collect();
    Ok(Json(AuditLog { entries }))
}

#[derive(Serialize, ToSchema)]
pub struct AlertList {
    /// Firing now, oldest first.
    firing: Vec<AlertView>,
    /// Cleared lately, newest first.
    recent: Vec<AlertView>,
}

/// What is firing now and what cleared lately
#[utoipa::path(
    get, path = "/v1/alerts", operation_id = "list_alerts", tag = "operators",
    responses((status = 200, description = "The alerts", body = AlertList))
)]
pub async fn alerts(State(app): State<Arc<App>>) -> Json<AlertList> {
    let (firing, recent) = app.alerts.list();
    Json(AlertList { firing, recent })
}
