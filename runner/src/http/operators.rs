//! Operators' actions and their audit log: stop every session of an exercise, drain this runner
//! (new sessions get 503 with `Retry-After`, live ones keep running) and undrain; `GET
//! /v1/audit` reads who did what, when, and how it ended. A session stop through
//! `DELETE /v1/sessions/{id}` is recorded here too.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    Extension, Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    extract::{ApiJson, ApiQuery},
    middleware::Actor,
};
use crate::{
    app::App,
    domain::{rfc3339, Slug},
    error::{ApiError, ApiResult, REQUEST_ID},
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StopSessions {
    reason: Option<String>,
}

/// `POST /v1/exercises/{slug}/stop-sessions`: ends every live session of the exercise.
pub async fn stop_exercise_sessions(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(slug): Path<String>,
    body: Option<ApiJson<StopSessions>>,
) -> ApiResult<Json<serde_json::Value>> {
    let slug = Slug::parse(&slug)?;
    if app.store.exercise(slug.as_str()).await?.is_none() {
        return Err(ApiError::not_found("exercise_not_found", format!("exercise {:?} does not exist", slug.as_str())));
    }
    let reason = body.and_then(|b| b.0.reason).filter(|r| !r.trim().is_empty());
    let reason: String = reason.unwrap_or_else(|| "stopped by an operator".into()).chars().take(200).collect();
    let result = sessions::stop_exercise(&app.sessions, slug.as_str(), &reason).await;
    let outcome = match &result {
        Ok(n) => format!("ok: {n} stopped"),
        Err(e) => e.to_string(),
    };
    audit(&app, actor, "exercise.stop_sessions", slug.as_str(), &outcome, Some(&reason)).await;
    let stopped = result?;
    Ok(Json(json!({ "exercise": slug.as_str(), "stopped": stopped })))
}

pub(super) fn runner_view(app: &App) -> serde_json::Value {
    let since = *app.sessions.draining.lock().expect("lock");
    json!({
        "instance": app.settings.instance,
        "version": env!("CARGO_PKG_VERSION"),
        "draining": since.is_some(),
        "draining_since": since.map(rfc3339),
    })
}

/// `GET /v1/runner`: this runner's state.
pub async fn runner(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(runner_view(&app))
}

/// `POST /v1/runner/drain`: refuse new sessions on this runner; live ones keep running.
/// Idempotent: draining a drained runner keeps its first `draining_since`.
pub async fn drain(State(app): State<Arc<App>>, Extension(actor): Extension<Actor>) -> Json<serde_json::Value> {
    app.sessions.draining.lock().expect("lock").get_or_insert_with(crate::store::now_ms);
    audit(&app, actor, "runner.drain", &app.settings.instance, "ok", None).await;
    Json(runner_view(&app))
}

/// `POST /v1/runner/undrain`: take new sessions again.
pub async fn undrain(State(app): State<Arc<App>>, Extension(actor): Extension<Actor>) -> Json<serde_json::Value> {
    *app.sessions.draining.lock().expect("lock") = None;
    audit(&app, actor, "runner.undrain", &app.settings.instance, "ok", None).await;
    Json(runner_view(&app))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<u32>,
}

fn audit_view(e: &AuditEntry) -> serde_json::Value {
    json!({
        "id": e.id, "at": rfc3339(e.at), "actor": e.actor, "action": e.action, "target": e.target,
        "outcome": e.outcome, "detail": e.detail, "request_id": e.request_id,
    })
}

/// `GET /v1/audit?limit=N`: the newest entries first.
pub async fn audit_log(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as i64;
    let list: Vec<_> = app.store.audit(limit).await?.iter().map(audit_view).collect();
    Ok(Json(json!({ "entries": list })))
}

/// `GET /v1/alerts`: what is firing now (oldest first) and what cleared lately (newest first).
pub async fn alerts(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let (firing, recent) = app.alerts.list();
    Json(json!({ "firing": firing, "recent": recent }))
}
