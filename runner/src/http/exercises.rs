//! `/v1/exercises`

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use serde_json::json;

use super::extract::ApiJson;
use crate::{
    app::App,
    domain::Slug,
    error::{ApiError, ApiResult},
    exercises::{self, Exercise, ExerciseInput},
};

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

pub async fn get(State(app): State<Arc<App>>, Path(slug): Path<String>) -> ApiResult<Json<Exercise>> {
    let slug = Slug::parse(&slug)?;
    let record = app.store.exercise(slug.as_str()).await?.ok_or_else(|| {
        ApiError::not_found("exercise_not_found", format!("exercise {:?} does not exist", slug.as_str()))
    })?;
    Ok(Json(exercises::to_view(&app.settings, &record)?))
}

pub async fn list(State(app): State<Arc<App>>) -> ApiResult<Json<serde_json::Value>> {
    let list = app
        .store
        .exercises()
        .await?
        .iter()
        .map(|r| exercises::to_view(&app.settings, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Json(json!({ "exercises": list })))
}
