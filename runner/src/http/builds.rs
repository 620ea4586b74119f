//! `/v1/exercises/{slug}/builds`, `/v1/builds/{id}`, versions, push hooks.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode},
    response::Response,
    Json,
};
use serde::Deserialize;
use serde_json::json;

use super::extract::ApiBytes;
use crate::{
    app::App,
    builds::{self, hooks, log, Build, BuildError},
    domain::Slug,
    error::{ApiError, ApiResult},
    exercises::{Exercise, GitSource},
};

impl From<BuildError> for ApiError {
    fn from(e: BuildError) -> Self {
        let msg = e.to_string();
        match e {
            BuildError::Invalid(i) => i.into(),
            BuildError::NotFound(_) => ApiError::not_found("build_not_found", msg),
            BuildError::ExerciseNotFound(_) => ApiError::not_found("exercise_not_found", msg),
            BuildError::VersionNotFound(..) => ApiError::not_found("version_not_found", msg),
            BuildError::VersionImageRemoved(..) => ApiError::conflict("version_image_removed", msg),
            BuildError::Finished(_) => ApiError::conflict("build_finished", msg),
            BuildError::QueueFull(_) => ApiError::unavailable("build_queue_full", msg, 30),
            BuildError::IntakeBusy => ApiError::unavailable("intake_busy", msg, 5),
            BuildError::Internal(e) => ApiError::internal(e),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GitBuild {
    #[serde(default)]
    git: Option<GitSource>,
}

fn build_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("build_not_found", format!("build {id:?} does not exist")))
}

/// `POST /v1/exercises/{slug}/builds`: a tar or tar.gz body, or JSON `{"git": {"url", "ref"}}`
/// (or `{}` for the exercise's configured git source).
pub async fn create(
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<Build>)> {
    let slug = Slug::parse(&slug)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    const ARCHIVES: [&str; 5] =
        ["application/x-tar", "application/tar", "application/gzip", "application/x-gzip", "application/octet-stream"];
    // A body without a Content-Type is read as an archive; a wrong Content-Type is refused.
    if !media.is_empty() && media != "application/json" && !ARCHIVES.contains(&media.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the repository as a tar or tar.gz body (Content-Type: application/x-tar or application/gzip), \
             or JSON {\"git\": {\"url\", \"ref\"}} with Content-Type: application/json",
        ));
    }
    let record = if media == "application/json" {
        let req: GitBuild = super::extract::json_from_bytes(&body)?;
        builds::submit_git(&app.builds, &slug, req.git, None).await?
    } else {
        if body.is_empty() {
            return Err(ApiError::invalid("invalid_archive", "send the repository as a tar or tar.gz body"));
        }
        builds::submit_archive(&app.builds, &slug, body).await?
    };
    Ok((StatusCode::ACCEPTED, Json(builds::to_view(&record))))
}

pub async fn list(State(app): State<Arc<App>>, Path(slug): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let slug = Slug::parse(&slug)?;
    let list: Vec<Build> = app.store.builds_of(slug.as_str(), 100).await?.iter().map(builds::to_view).collect();
    Ok(Json(json!({ "builds": list })))
}

pub async fn get(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Build>> {
    let id = build_id(&id)?;
    let b = app.store.build(&id).await?.ok_or_else(|| ApiError::from(BuildError::NotFound(id)))?;
    Ok(Json(builds::to_view(&b)))
}

pub async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Build>> {
    let b = builds::cancel(&app.builds, &build_id(&id)?).await?;
    Ok(Json(builds::to_view(&b)))
}

/// `GET /v1/builds/{id}/logs`: plain text, streamed live while the build runs (the Docker build
/// output and the self-test), then the whole log replayed once it has ended.
pub async fn logs(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = build_id(&id)?;
    app.store.build(&id).await?.ok_or_else(|| ApiError::from(BuildError::NotFound(id.clone())))?;
    let path = log::path(&app.settings.builds_dir(), &id);
    let give_up = app.settings.build_timeout + Duration::from_secs(120);
    Ok(super::follow::follow_file(path, give_up, move || {
        let (app, id) = (app.clone(), id.clone());
        async move {
            match app.store.build(&id).await {
                Ok(Some(b)) => b.state.is_active(),
                _ => false,
            }
        }
    }))
}

pub async fn versions(State(app): State<Arc<App>>, Path(slug): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let slug = Slug::parse(&slug)?;
    let current = match app.store.exercise(slug.as_str()).await? {
        Some(r) => {
            serde_json::from_str::<crate::exercises::ExerciseSpec>(&r.spec)
                .map_err(anyhow::Error::from)?
                .current_version
        }
        None => None,
    };
    let mut list: Vec<serde_json::Value> = vec![];
    for v in app.store.versions(slug.as_str()).await? {
        // What the version's build proved: a refactoring exercise passes on its starting files.
        let self_test: Option<builds::SelfTestReport> =
            app.store.build(&v.build_id).await?.and_then(|b| b.self_test).and_then(|s| serde_json::from_str(&s).ok());
        let ts = crate::domain::rfc3339;
        list.push(json!({
            "version": v.version,
            "image": v.image,
            "build_id": v.build_id,
            "current": current.as_deref() == Some(v.version.as_str()),
            "starting_files_pass": self_test.is_some_and(|r| r.starting_files_pass),
            "created_at": ts(v.created_at),
            "published_at": v.published_at.map(ts),
        }));
    }
    Ok(Json(json!({ "versions": list, "current_version": current })))
}

pub async fn publish(
    State(app): State<Arc<App>>,
    Path((slug, version)): Path<(String, String)>,
) -> ApiResult<Json<Exercise>> {
    let slug = Slug::parse(&slug)?;
    let exercise = builds::versions::publish(&app.builds, &slug, &version).await?;
    app.sessions.pools.changed.notify_one(); // drain the old version's pool now
    let _ = builds::versions::collect_garbage(&app.builds, &slug).await;
    Ok(Json(exercise))
}

/// `POST /v1/hooks/git`: authenticated by its signature, not by the bearer token.
pub async fn git_hook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match hooks::handle(&app.builds, header("x-github-event"), header("x-hub-signature-256"), &body).await {
        Ok(outcome) => {
            let list: Vec<Build> = outcome.builds.iter().map(builds::to_view).collect();
            Ok((StatusCode::ACCEPTED, Json(json!({"builds": list, "ignored": outcome.ignored}))))
        }
        Err(hooks::HookError::BadSignature) => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", "missing or invalid X-Hub-Signature-256"))
        }
        Err(hooks::HookError::BadPayload(m)) => Err(ApiError::bad_request("invalid_push_event", m)),
        Err(hooks::HookError::Build(e)) => Err(e.into()),
    }
}
