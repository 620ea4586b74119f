//! `/v1/workspaces/{learner}/{exercise}`: a learner's files of an exercise, with or without a
//! live session — a listing, one file, the whole workspace as a `.tar.gz`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};

use crate::{
    app::App,
    domain::{LearnerId, Slug},
    error::{ApiError, ApiResult},
    learner_files::{tar::WorkspacePath, FilesError, Listing, Reset, SnapshotView},
};

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        use axum::http::StatusCode;
        let msg = e.to_string();
        match e {
            FilesError::WorkspaceNotFound { .. } => ApiError::not_found("workspace_not_found", msg),
            FilesError::FileNotFound(_) => ApiError::not_found("file_not_found", msg),
            FilesError::NotAFile { .. } => ApiError::invalid("not_a_regular_file", msg),
            FilesError::FileTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", msg),
            FilesError::TooLarge(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "workspace_too_large", msg),
            FilesError::Busy => ApiError::unavailable("workspace_reads_busy", msg, 5),
            FilesError::SnapshotNotFound(_) => ApiError::not_found("snapshot_not_found", msg),
            FilesError::SessionBusy(_) => ApiError::conflict("workspace_busy", msg),
            FilesError::Internal(e) => ApiError::internal(e),
        }
    }
}

/// The learner and exercise of a workspace route, validated before anything is looked up.
pub(super) fn owner(learner: &str, exercise: &str) -> ApiResult<(LearnerId, Slug)> {
    Ok((LearnerId::parse(learner)?, Slug::parse(exercise)?))
}

/// Bytes with a content type, as a download named `filename`.
pub(super) fn download(bytes: Vec<u8>, content_type: &'static str, filename: &str) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", filename.replace(['"', '\\', '\r', '\n'], "_"));
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff"));
    resp
}

pub async fn list(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Json<Listing>> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    Ok(Json(app.files.list(learner.as_str(), exercise.as_str()).await?))
}

pub async fn file(
    State(app): State<Arc<App>>,
    Path((learner, exercise, path)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    let path = WorkspacePath::parse(&path)?;
    let bytes = app.files.file(learner.as_str(), exercise.as_str(), &path).await?;
    let name = path.as_str().rsplit('/').next().unwrap_or("file").to_string();
    Ok(download(bytes, "application/octet-stream", &name))
}

pub async fn archive(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    let gz = app.files.archive(learner.as_str(), exercise.as_str()).await?;
    Ok(download(gz, "application/gzip", &format!("{exercise}.tar.gz")))
}

/// `POST …/reset`: start over (the old files kept as a snapshot).
pub async fn reset(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Json<Reset>> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    Ok(Json(app.files.reset(learner.as_str(), exercise.as_str()).await?))
}

/// `GET …/snapshots`: the learner's snapshots of the exercise, newest first.
pub async fn snapshots(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    let list: Vec<_> =
        app.files.snapshots_of(learner.as_str(), exercise.as_str()).await?.iter().map(SnapshotView::from).collect();
    Ok(Json(serde_json::json!({ "snapshots": list })))
}

fn snapshot_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("snapshot_not_found", format!("no snapshot {id:?}")))
}

/// `GET /v1/snapshots/{id}`: its `.tar.gz`.
pub async fn snapshot(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Response> {
    let (record, gz) = app.files.snapshot(&snapshot_id(&id)?).await?;
    Ok(download(gz, "application/gzip", &format!("{}-{}.tar.gz", record.exercise, record.id)))
}

/// `GET /v1/sessions/{id}/checks/{check}/snapshot`: the files as they were when that check passed.
pub async fn check_snapshot(
    State(app): State<Arc<App>>,
    Path((session, check)): Path<(String, String)>,
) -> ApiResult<Response> {
    let session = super::sessions::session_id(&session)?;
    let check = uuid::Uuid::parse_str(&check)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("snapshot_not_found", format!("no check {check:?}")))?;
    let (record, gz) = app.files.snapshot_of_check(&session, &check).await?;
    Ok(download(gz, "application/gzip", &format!("{}-{}.tar.gz", record.exercise, check)))
}
