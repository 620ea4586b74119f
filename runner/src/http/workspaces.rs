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
    error::{ApiError, ApiResult, ErrorBody},
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

const LEARNER: &str = "The learner as the web app knows them";
const EXERCISE: &str = "The exercise's slug";

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SnapshotList {
    /// Newest first.
    snapshots: Vec<SnapshotView>,
}

/// List a learner's files of an exercise
///
/// Read inside a sandbox as the learner (their live one, or a short-lived reader), with or
/// without a live session. Symbolic links are listed as links, never followed.
#[utoipa::path(
    get, path = "/v1/workspaces/{learner}/{exercise}", operation_id = "list_workspace", tag = "workspaces",
    params(("learner" = String, Path, description = LEARNER), ("exercise" = String, Path, description = EXERCISE)),
    responses(
        (status = 200, description = "The files, by path", body = Listing),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 413, description = "`workspace_too_large`: over `RUNNER_WORKSPACE_READ_MAX_BYTES`", body = ErrorBody),
        (status = 422, description = "`invalid_learner`, `invalid_slug`", body = ErrorBody),
        (status = 503, description = "`workspace_reads_busy`", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn list(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Json<Listing>> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    Ok(Json(app.files.list(learner.as_str(), exercise.as_str()).await?))
}

/// Read one of a learner's files
#[utoipa::path(
    get, path = "/v1/workspaces/{learner}/{exercise}/files/{path}", operation_id = "get_workspace_file", tag = "workspaces",
    params(
        ("learner" = String, Path, description = LEARNER), ("exercise" = String, Path, description = EXERCISE),
        ("path" = String, Path, description = "The file's path in the workspace (relative, no `..`)"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "`workspace_not_found`, `file_not_found`", body = ErrorBody),
        (status = 413, description = "`file_too_large`, `workspace_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_learner`, `invalid_slug`, `invalid_path`, `not_a_regular_file` (a link, FIFO or directory)", body = ErrorBody),
        (status = 503, description = "`workspace_reads_busy`", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
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

/// A learner's whole workspace as a `.tar.gz`
#[utoipa::path(
    get, path = "/v1/workspaces/{learner}/{exercise}/archive", operation_id = "get_workspace_archive", tag = "workspaces",
    params(("learner" = String, Path, description = LEARNER), ("exercise" = String, Path, description = EXERCISE)),
    responses(
        (status = 200, description = "The files as a gzipped tar (links as links)", content_type = "application/gzip", body = Vec<u8>),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 413, description = "`workspace_too_large`", body = ErrorBody),
        (status = 422, description = "`invalid_learner`, `invalid_slug`", body = ErrorBody),
        (status = 503, description = "`workspace_reads_busy`", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn archive(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Response> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    let gz = app.files.archive(learner.as_str(), exercise.as_str()).await?;
    Ok(download(gz, "application/gzip", &format!("{exercise}.tar.gz")))
}

/// Start the exercise over
///
/// The old files are kept as a snapshot, then the starting files come back: in the live sandbox
/// at once, or, without one, on the next session.
#[utoipa::path(
    post, path = "/v1/workspaces/{learner}/{exercise}/reset", operation_id = "reset_workspace", tag = "workspaces",
    params(("learner" = String, Path, description = LEARNER), ("exercise" = String, Path, description = EXERCISE)),
    responses(
        (status = 200, description = "Started over", body = Reset),
        (status = 404, description = "`workspace_not_found`", body = ErrorBody),
        (status = 409, description = "`workspace_busy`: the session is starting or stopping", body = ErrorBody),
        (status = 413, description = "`workspace_too_large`: the old files cannot be kept, so nothing was reset", body = ErrorBody),
        (status = 422, description = "`invalid_learner`, `invalid_slug`", body = ErrorBody),
        (status = 503, description = "`workspace_reads_busy`", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn reset(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Json<Reset>> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    Ok(Json(app.files.reset(learner.as_str(), exercise.as_str()).await?))
}

/// List a learner's snapshots of an exercise, newest first
#[utoipa::path(
    get, path = "/v1/workspaces/{learner}/{exercise}/snapshots", operation_id = "list_snapshots", tag = "workspaces",
    params(("learner" = String, Path, description = LEARNER), ("exercise" = String, Path, description = EXERCISE)),
    responses(
        (status = 200, description = "The snapshots", body = SnapshotList),
        (status = 422, description = "`invalid_learner`, `invalid_slug`", body = ErrorBody),
    )
)]
pub async fn snapshots(
    State(app): State<Arc<App>>,
    Path((learner, exercise)): Path<(String, String)>,
) -> ApiResult<Json<SnapshotList>> {
    let (learner, exercise) = owner(&learner, &exercise)?;
    let snapshots =
        app.files.snapshots_of(learner.as_str(), exercise.as_str()).await?.iter().map(SnapshotView::from).collect();
    Ok(Json(SnapshotList { snapshots }))
}

fn snapshot_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("snapshot_not_found", format!("no snapshot {id:?}")))
}

/// A snapshot's files as a `.tar.gz`
#[utoipa::path(
    get, path = "/v1/snapshots/{id}", operation_id = "get_snapshot", tag = "workspaces",
    params(("id" = String, Path, description = "The snapshot's id (a UUID)")),
    responses(
        (status = 200, description = "The files as they were", content_type = "application/gzip", body = Vec<u8>),
        (status = 404, description = "`snapshot_not_found`", body = ErrorBody),
    )
)]
pub async fn snapshot(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Response> {
    let (record, gz) = app.files.snapshot(&snapshot_id(&id)?).await?;
    Ok(download(gz, "application/gzip", &format!("{}-{}.tar.gz", record.exercise, record.id)))
}

/// The learner's files as they were when a check passed, as a `.tar.gz`
#[utoipa::path(
    get, path = "/v1/sessions/{id}/checks/{check}/snapshot", operation_id = "get_check_snapshot", tag = "checks",
    params(("id" = String, Path, description = "The session's id (a UUID)"), ("check" = String, Path, description = "The check's id")),
    responses(
        (status = 200, description = "The files", content_type = "application/gzip", body = Vec<u8>),
        (status = 404, description = "`session_not_found`, `snapshot_not_found` (no such check, or it did not pass)", body = ErrorBody),
    )
)]
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
