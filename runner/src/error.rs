//! The one error type at the HTTP edge.
//!
//! When to use which:
//! - [`ApiError::bad_request`] (400): the body is not JSON or not the right shape to read at all.
//! - [`ApiError::invalid`] (422): well-formed input that breaks a rule (a bad slug, a limit over
//!   the cap, an image that does not exist). Name the field in the message.
//! - [`ApiError::not_found`] (404), [`ApiError::conflict`] (409): the resource, or its state.
//! - [`ApiError::unavailable`] (503, with `Retry-After`): back-pressure; the caller should retry.
//! - Anything else is an internal error (500): convert any `anyhow::Error` with `?`. Its cause is
//!   logged with the request id and never shown to the caller.
//!
//! Every error body is `{"error": {"code": "...", "message": "...", "request_id": "..."}}`; the
//! `code` is stable and machine-readable, the message is for people.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

/// Every error's body: `{"error": {"code", "message", "request_id"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable (`session_not_found`); each operation lists its codes.
    #[schema(example = "session_not_found")]
    pub code: String,
    /// For people; it may change.
    pub message: String,
    /// The request's id, also in the `X-Request-Id` header and the runner's logs.
    pub request_id: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// The hidden cause of an internal error, logged and never sent.
    pub internal: Option<anyhow::Error>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after_secs: None, internal: None }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests for this token");
        e.retry_after_secs = Some(retry_after_secs.max(1));
        e
    }
    pub fn internal(cause: anyhow::Error) -> Self {
        let mut e = Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error");
        e.internal = Some(cause);
        e
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(e)
    }
}

// The request id of the request being answered, set by the request-id middleware.
tokio::task_local! {
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(|id| id.clone()).ok();
        if let Some(cause) = &self.internal {
            tracing::error!(request_id = request_id.as_deref().unwrap_or("-"), error = ?cause, "internal error");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message, request_id } };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
