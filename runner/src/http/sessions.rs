//! `/v1/sessions`

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Extension, Json,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    extract::{ApiJson, ApiQuery},
    middleware::Actor,
    operators,
};
use crate::{
    app::App,
    checks::Check,
    domain::{LearnerId, SessionState, Slug},
    error::{ApiError, ApiResult, ErrorBody},
    lifecycle::EndReason,
    sessions::{self, Session},
    store::SessionFilter,
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// The learner as the web app knows them: 1-128 letters, digits and `-_.@:+`.
    #[schema(example = "learner-42")]
    learner: String,
    /// The exercise's slug.
    #[schema(example = "hello-shell")]
    exercise: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    sessions: Vec<Session>,
}

/// Something that happened to a session's sandbox.
#[derive(Serialize, ToSchema)]
pub struct SessionEventView {
    at: String,
    kind: crate::lifecycle::SessionEvent,
    detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SessionEvents {
    /// Oldest first.
    events: Vec<SessionEventView>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckList {
    /// Newest first, at most 100.
    checks: Vec<Check>,
}

/// Session ids are UUIDs; anything else cannot name a session.
pub(super) fn session_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("session_not_found", format!("session {id:?} does not exist")))
}

/// Start a learner's session, or find the live one they have
///
/// Answers the learner's live session of the exercise when there is one (200), else starts a
/// sandbox (201). With a warm pool, a new learner gets a ready sandbox at once.
#[utoipa::path(
    post, path = "/v1/sessions", operation_id = "create_session", tag = "sessions",
    request_body = CreateSession,
    responses(
        (status = 200, description = "The learner's live session of this exercise", body = Session),
        (status = 201, description = "A new session", body = Session),
        (status = 404, description = "`exercise_not_found`", body = ErrorBody),
        (status = 409, description = "`exercise_not_published`: the exercise has no image yet", body = ErrorBody),
        (status = 422, description = "`invalid_learner`, `invalid_slug`", body = ErrorBody),
        (status = 503, description = "`session_capacity`, `start_queue_full`, `runner_draining`, `sandbox_start_failed`",
            body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn create(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    relayed: Option<Extension<super::fleet::Relayed>>,
    ApiJson(body): ApiJson<CreateSession>,
) -> ApiResult<axum::response::Response> {
    let learner = LearnerId::parse(&body.learner)?;
    let exercise = Slug::parse(&body.exercise)?;
    // In a fleet, the best node with room starts it (perhaps this one).
    super::fleet::create_session(&app, &headers, relayed.is_some(), &learner, &exercise).await
}

/// Starts (or finds) the learner's session on this node: 201 for a new one, 200 for the live one.
pub(super) async fn create_here(
    app: &App,
    learner: &LearnerId,
    exercise: &Slug,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let created = match sessions::create(&app.sessions, learner, exercise).await {
        Err(e @ sessions::SessionError::ImageNotOnNode(_)) => {
            app.fleet.want_images();
            return Err(e.into());
        }
        r => r?,
    };
    let status = if created.new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(sessions::to_view(&app.sessions, &created.session))).into_response())
}

/// Read a session (a fresh `ide_url` token on every read)
#[utoipa::path(
    get, path = "/v1/sessions/{id}", operation_id = "get_session", tag = "sessions",
    params(("id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 200, description = "The session", body = Session),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    )
)]
pub async fn get(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Session>> {
    let s = sessions::get(&app.sessions, &session_id(&id)?).await?;
    Ok(Json(sessions::to_view(&app.sessions, &s)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this learner's sessions.
    learner: Option<String>,
    /// Only this exercise's sessions.
    exercise: Option<String>,
    /// One state or several, comma-separated (`starting,running,stopping`: every live one).
    state: Option<String>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// List sessions, newest first
#[utoipa::path(
    get, path = "/v1/sessions", operation_id = "list_sessions", tag = "sessions",
    params(ListQuery),
    responses((status = 200, description = "The sessions", body = SessionList))
)]
pub async fn list(State(app): State<Arc<App>>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<SessionList>> {
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
        limit: super::extract::limit_param(q.limit, 100, 1000)? as i64,
    };
    let list: Vec<Session> =
        sessions::list(&app.sessions, &filter).await?.iter().map(|s| sessions::to_view(&app.sessions, s)).collect();
    Ok(Json(SessionList { sessions: list }))
}

/// End a session: its sandbox is removed, its workspace kept (idempotent)
#[utoipa::path(
    delete, path = "/v1/sessions/{id}", operation_id = "stop_session", tag = "sessions",
    params(("id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 200, description = "The ended session", body = Session),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    )
)]
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

/// What happened to the session's sandbox, oldest first
#[utoipa::path(
    get, path = "/v1/sessions/{id}/events", operation_id = "list_session_events", tag = "events",
    params(("id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 200, description = "The session's events", body = SessionEvents),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    )
)]
pub async fn events(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<SessionEvents>> {
    let id = session_id(&id)?;
    sessions::get(&app.sessions, &id).await?;
    let list: Vec<_> = app
        .store
        .session_events(&id)
        .await?
        .iter()
        .map(|e| SessionEventView { at: crate::domain::rfc3339(e.at), kind: e.kind, detail: e.detail.clone() })
        .collect();
    Ok(Json(SessionEvents { events: list }))
}

/// Record the learner's activity: pushes the idle deadline
#[utoipa::path(
    post, path = "/v1/sessions/{id}/activity", operation_id = "touch_session", tag = "sessions",
    params(("id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 204, description = "The idle deadline moved"),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`session_not_live`: it has ended", body = ErrorBody),
    )
)]
pub async fn activity(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    sessions::touch(&app.sessions, &session_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Check the learner's work: runs the exercise's check in the sandbox
///
/// One check runs per session at a time: a request made while one runs joins it.
#[utoipa::path(
    post, path = "/v1/sessions/{id}/checks", operation_id = "create_check", tag = "checks",
    params(("id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 201, description = "The check's result", body = Check),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
        (status = 409, description = "`session_not_running`", body = ErrorBody),
        (status = 503, description = "`check_queue_full`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn create_check(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<(StatusCode, Json<Check>)> {
    let record = app.checks.check_session(&session_id(&id)?).await?;
    Ok((StatusCode::CREATED, Json(crate::checks::to_view(&record))))
}

/// A session's checks, newest first
#[utoipa::path(
    get, path = "/v1/sessions/{id}/checks", operation_id = "list_checks", tag = "checks",
    params(("id" = String, Path, description = "The session's id (a UUID)")),
    responses(
        (status = 200, description = "The session's checks", body = CheckList),
        (status = 404, description = "`session_not_found`", body = ErrorBody),
    )
)]
pub async fn list_checks(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<CheckList>> {
    let id = session_id(&id)?;
    sessions::get(&app.sessions, &id).await?;
    let list: Vec<_> = app.store.checks_of(&id, 100).await?.iter().map(crate::checks::to_view).collect();
    Ok(Json(CheckList { checks: list }))
}

/// Read one check with its output
///
/// Where `check.completed` says the output can be read.
#[utoipa::path(
    get, path = "/v1/sessions/{id}/checks/{check}", operation_id = "get_check", tag = "checks",
    params(("id" = String, Path, description = "The session's id (a UUID)"), ("check" = String, Path, description = "The check's id")),
    responses(
        (status = 200, description = "The check", body = Check),
        (status = 404, description = "`session_not_found`, `check_not_found`", body = ErrorBody),
    )
)]
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

/// What an erasure removed.
#[derive(Serialize, ToSchema)]
pub struct Removed {
    /// Live sessions whose sandbox was stopped first.
    stopped_sessions: u64,
    /// Workspaces whose files were deleted.
    workspace_files: u64,
    /// Snapshots of their files deleted.
    snapshots: u64,
    records: RemovedRecords,
}

/// Database records deleted, by kind.
#[derive(Serialize, ToSchema, Default)]
pub struct RemovedRecords {
    sessions: u64,
    checks: u64,
    session_events: u64,
    events: u64,
    workspaces: u64,
    /// One-shot runs made for the learner.
    runs: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Erasure {
    learner: String,
    removed: Removed,
}

/// Erase a learner
///
/// Their live sandboxes are stopped, their workspaces and snapshots deleted, and their sessions,
/// checks (with outputs), sandbox events and events deleted. The audit log names them only by a
/// digest. Events already delivered to webhooks cannot be recalled.
#[utoipa::path(
    delete, path = "/v1/learners/{learner}", operation_id = "erase_learner", tag = "sessions",
    params(("learner" = String, Path, description = "The learner as the web app knows them")),
    responses(
        (status = 200, description = "What was removed (all zero for a learner the runner never saw)", body = Erasure),
        (status = 409, description = "`learner_busy`: the learner kept starting sessions; try again", body = ErrorBody),
        (status = 422, description = "`invalid_learner`", body = ErrorBody),
    )
)]
pub async fn erase_learner(
    State(app): State<Arc<App>>,
    Extension(actor): Extension<Actor>,
    relayed: Option<Extension<super::fleet::Relayed>>,
    headers: axum::http::HeaderMap,
    Path(learner): Path<String>,
) -> ApiResult<Json<Erasure>> {
    let learner = LearnerId::parse(&learner)?;
    if relayed.is_some() {
        // Another runner's erasure: this node's part only (it deletes the records after).
        let part = sessions::erasure::erase_on_this_node(&app.sessions, &learner).await?;
        return Ok(Json(Erasure {
            learner: learner.as_str().to_string(),
            removed: Removed {
                stopped_sessions: part.stopped_sessions,
                workspace_files: part.workspace_files,
                snapshots: 0,
                records: RemovedRecords::default(),
            },
        }));
    }
    // In a fleet, every other node first stops its sandboxes of the learner and deletes its
    // files; then this runner does its own part and deletes the records.
    let others = super::fleet::erase_on_other_nodes(&app, &headers, learner.as_str()).await?;
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
    let mut erased = result?;
    erased.stopped_sessions += others.stopped_sessions;
    erased.workspace_files += others.workspace_files;
    let snapshots = app.files.erase_learner(learner.as_str()).await?;
    app.store.forget_deleted().await?;
    let r = erased.records;
    Ok(Json(Erasure {
        learner: learner.as_str().to_string(),
        removed: Removed {
            stopped_sessions: erased.stopped_sessions,
            workspace_files: erased.workspace_files,
            snapshots,
            records: RemovedRecords {
                sessions: r.sessions,
                checks: r.checks,
                session_events: r.session_events,
                events: r.events,
                workspaces: r.workspaces,
                runs: r.runs,
            },
        },
    }))
}
