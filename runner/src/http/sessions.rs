//! `/v1/sessions`

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Extension, Json,
};
use serde::Deserialize;
use serde_json::json;

use super::{
    extract::{ApiJson, ApiQuery},
    middleware::Actor,
    operators,
};
use crate::{
    app::App,
    domain::{LearnerId, SessionState, Slug},
    error::{ApiError, ApiResult},
    lifecycle::EndReason,
    sessions::{self, Session},
    store::SessionFilter,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    learner: String,
    exercise: String,
}

/// Session ids are UUIDs; anything else cannot name a session.
pub(super) fn session_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("session_not_found", format!("session {id:?} does not exist")))
}

pub async fn create(
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<CreateSession>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let learner = LearnerId::parse(&body.learner)?;
    let exercise = Slug::parse(&body.exercise)?;
    let created = sessions::create(&app.sessions, &learner, &exercise).await?;
    let status = if created.new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(sessions::to_view(&app.sessions, &created.session))))
}

pub async fn get(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Session>> {
    let s = sessions::get(&app.sessions, &session_id(&id)?).await?;
    Ok(Json(sessions::to_view(&app.sessions, &s)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    learner: Option<String>,
    exercise: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
}

pub async fn list(State(app): State<Arc<App>>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<serde_json::Value>> {
    // One state or several, comma-separated (`state=starting,running,stopping`: every live one).
    let states = match q.state.as_deref() {
        None | Some("") => vec![],
        Some(list) => list
            .split(',')
            .map(|s| {
                SessionState::parse(s.trim()).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("state {s:?} is not one of {}", SessionState::ALL.map(SessionState::as_str).join(", ")),
                    )
                })
            })
            .collect::<ApiResult<Vec<_>>>()?,
    };
    let filter = SessionFilter {
        learner: q.learner.filter(|s| !s.is_empty()),
        exercise: q.exercise.filter(|s| !s.is_empty()),
        states,
        limit: q.limit.unwrap_or(100).clamp(1, 1000) as i64,
    };
    let list: Vec<Session> =
        sessions::list(&app.sessions, &filter).await?.iter().map(|s| sessions::to_view(&app.sessions, s)).collect();
    Ok(Json(json!({ "sessions": list })))
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<Json<Session>> {
    let id = session_id(&id)?;
    let result = sessions::stop(&app.sessions, &id, EndReason::Deleted, Some("deleted through the API"))
        .await
        .map_err(ApiError::from);
    let outcome = match &result {
        Ok(s) => format!("ok: {}", s.state),
        Err(e) => operators::outcome_of(e),
    };
    operators::audit(&app, actor, "session.stop", &id, &outcome, None).await;
    Ok(Json(sessions::to_view(&app.sessions, &result?)))
}

/// `GET /v1/sessions/{id}/events`: what happened to the session's sandbox, oldest first.
pub async fn events(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let id = session_id(&id)?;
    sessions::get(&app.sessions, &id).await?;
    let list: Vec<_> = app
        .store
        .session_events(&id)
        .await?
        .iter()
        .map(|e| json!({"at": crate::domain::rfc3339(e.at), "kind": e.kind, "detail": e.detail}))
        .collect();
    Ok(Json(json!({ "events": list })))
}

pub async fn activity(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    sessions::touch(&app.sessions, &session_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_check(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<crate::checks::Check>)> {
    let record = app.checks.check_session(&session_id(&id)?).await?;
    Ok((StatusCode::CREATED, Json(crate::checks::to_view(&record))))
}

pub async fn list_checks(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let id = session_id(&id)?;
    sessions::get(&app.sessions, &id).await?;
    let list: Vec<_> = app.store.checks_of(&id, 100).await?.iter().map(crate::checks::to_view).collect();
    Ok(Json(json!({ "checks": list })))
}

/// `GET /v1/sessions/{id}/checks/{check}`: one check with its output (where `check.completed`
/// says it can be read).
pub async fn get_check(
    State(app): State<Arc<App>>,
    Path((id, check)): Path<(String, String)>,
) -> ApiResult<Json<crate::checks::Check>> {
    let id = session_id(&id)?;
    sessions::get(&app.sessions, &id).await?;
    let record = app
        .store
        .check(&id, &check)
        .await?
        .ok_or_else(|| ApiError::not_found("check_not_found", format!("session {id} has no check {check:?}")))?;
    Ok(Json(crate::checks::to_view(&record)))
}

/// `DELETE /v1/learners/{learner}`: erases a learner (live sandboxes, workspaces, sessions,
/// checks, events) and says what was removed. The audit log names the learner only by a digest.
pub async fn erase_learner(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    Path(learner): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let learner = LearnerId::parse(&learner)?;
    let result = sessions::erasure::erase_learner(&app.sessions, &learner).await.map_err(ApiError::from);
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(learner.as_str().as_bytes()))[..16].to_string()
    };
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(e) => operators::outcome_of(e),
    };
    operators::audit(&app, actor, "learner.erase", &format!("learner-sha256:{digest}"), &outcome, None).await;
    let erased = result?;
    let snapshots = app.files.erase_learner(learner.as_str()).await.map_err(anyhow::Error::from)?;
    let mut removed = serde_json::to_value(&erased).map_err(anyhow::Error::from)?;
    removed["snapshots"] = json!(snapshots);
    Ok(Json(json!({ "learner": learner.as_str(), "removed": removed })))
}
