//! `/v1/exercises`

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::ApiJson;
use crate::{
    app::App,
    domain::Slug,
    error::{ApiError, ApiResult, ErrorBody},
    exercises::{self, Exercise, ExerciseInput},
};

#[derive(Serialize, ToSchema)]
pub struct ExerciseList {
    exercises: Vec<Exercise>,
}

/// Create or change an exercise
///
/// With `image`, the exercise runs that local image; without it only its settings change and
/// the image comes from published builds.
#[utoipa::path(
    put, path = "/v1/exercises/{slug}", operation_id = "put_exercise", tag = "exercises",
    params(("slug" = String, Path, description = "The exercise's slug: `[a-z0-9][a-z0-9-]{0,63}`")),
    request_body = ExerciseInput,
    responses(
        (status = 200, description = "The exercise, changed", body = Exercise),
        (status = 201, description = "The exercise, created", body = Exercise),
        (status = 422, description = "`invalid_slug`, `invalid_image`, `image_not_found`, `invalid_title`, `invalid_limit`, \
            `limit_exceeds_cap`, `limit_too_small`, `invalid_workdir`, `invalid_check`, `invalid_pool`, `invalid_git_url`, \
            `invalid_git_ref`, `invalid_hook_secret`, `network_not_allowed`: the message names the field", body = ErrorBody),
    )
)]
pub async fn put(
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    ApiJson(input): ApiJson<ExerciseInput>,
) -> ApiResult<(StatusCode, Json<Exercise>)> {
    let slug = Slug::parse(&slug)?;
    let (exercise, created) = exercises::put(&app.settings, &app.store, &app.engine, &slug, input).await?;
    app.sessions.pools.changed.notify_one(); // the pool may have changed: fill or drain it now
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(exercise)))
}

/// Read an exercise
#[utoipa::path(
    get, path = "/v1/exercises/{slug}", operation_id = "get_exercise", tag = "exercises",
    params(("slug" = String, Path, description = "The exercise's slug")),
    responses(
        (status = 200, description = "The exercise", body = Exercise),
        (status = 404, description = "`exercise_not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_slug`", body = ErrorBody),
    )
)]
pub async fn get(State(app): State<Arc<App>>, Path(slug): Path<String>) -> ApiResult<Json<Exercise>> {
    let slug = Slug::parse(&slug)?;
    let record = app.store.exercise(slug.as_str()).await?.ok_or_else(|| {
        ApiError::not_found("exercise_not_found", format!("exercise {:?} does not exist", slug.as_str()))
    })?;
    Ok(Json(exercises::to_view(&app.settings, &record)?))
}

/// List the exercises
#[utoipa::path(
    get, path = "/v1/exercises", operation_id = "list_exercises", tag = "exercises",
    responses((status = 200, description = "Every exercise", body = ExerciseList))
)]
pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<ExerciseList>> {
    let list = app
        .store
        .exercises()
        .await?
        .iter()
        .map(|r| exercises::to_view(&app.settings, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Json(ExerciseList { exercises: list }))
}
