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
    learner_files::{tar::WorkspacePath, FilesError, Listing},
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
