//! The HTTP edge: routing, auth, limits, JSON in and out. Handlers are thin: parse and
//! authorize, call the domain, map the result. Nothing here knows bollard or SQL.

pub mod apps;
pub mod builds;
pub mod dashboard;
pub mod events;
pub mod exercises;
pub mod extract;
pub mod fleet;
pub mod follow;
pub mod middleware;
pub mod openapi;
pub mod operators;
pub mod ops;
pub mod router;
pub mod runs;
pub mod sessions;
pub mod usage;
pub mod workspaces;

use crate::{domain::Invalid, error::ApiError, exercises::ExerciseError, sessions::SessionError};

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::invalid(e.code, e.message)
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let msg = e.to_string();
        match e {
            SessionError::ExerciseNotFound(_) => ApiError::not_found("exercise_not_found", msg),
            SessionError::NotFound(_) => ApiError::not_found("session_not_found", msg),
            SessionError::NotLive(_) => ApiError::conflict("session_not_live", msg),
            SessionError::NotRunning(_) => ApiError::conflict("session_not_running", msg),
            SessionError::NotPublished(_) => ApiError::conflict("exercise_not_published", msg),
            SessionError::AtCapacity(_) => ApiError::unavailable("session_capacity", msg, 30),
            SessionError::StartQueueFull => ApiError::unavailable("start_queue_full", msg, 5),
            SessionError::Draining => ApiError::unavailable("runner_draining", msg, 30),
            SessionError::ImageNotOnNode(_) => ApiError::unavailable("image_not_on_node", msg, 5),
            SessionError::Busy(_) => ApiError::conflict("learner_busy", msg),
            SessionError::StartFailed { .. } => ApiError::unavailable("sandbox_start_failed", msg, 5),
            SessionError::Internal(e) => ApiError::internal(e),
        }
    }
}

impl From<crate::checks::CheckError> for ApiError {
    fn from(e: crate::checks::CheckError) -> Self {
        use crate::checks::CheckError;
        let msg = e.to_string();
        match e {
            CheckError::NotFound(_) => ApiError::not_found("session_not_found", msg),
            CheckError::NotRunning(_) => ApiError::conflict("session_not_running", msg),
            CheckError::QueueFull => ApiError::unavailable("check_queue_full", msg, 5),
            CheckError::Internal(e) => ApiError::internal(e),
        }
    }
}

impl From<ExerciseError> for ApiError {
    fn from(e: ExerciseError) -> Self {
        match e {
            ExerciseError::Invalid(i) => i.into(),
            ExerciseError::Internal(e) => ApiError::internal(e),
        }
    }
}
