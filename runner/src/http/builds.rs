//! `/v1/exercises/{slug}/builds`, `/v1/builds/{id}`, versions, push hooks.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, StatusCode},
    response::Response,
    Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::ApiBytes;
use crate::{
    app::App,
    builds::{self, hooks, log, Build, BuildError},
    domain::Slug,
    error::{ApiError, ApiResult, ErrorBody},
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

/// A build from a git repository: `{"git": {"url", "ref"}}`, or `{}` for the exercise's own source.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitBuild {
    #[serde(default)]
    git: Option<GitSource>,
}

#[derive(Serialize, ToSchema)]
pub struct BuildList {
    /// Newest first, at most 100.
    builds: Vec<Build>,
}

/// A published (or publishable) version of an exercise.
#[derive(Serialize, ToSchema)]
pub struct VersionView {
    /// The digest of the repository's content.
    version: String,
    image: String,
    build_id: String,
    /// New sessions get this version.
    current: bool,
    /// The check was required to pass on the starting files too (a refactoring exercise).
    starting_files_pass: bool,
    created_at: String,
    published_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    versions: Vec<VersionView>,
    current_version: Option<String>,
}

/// What a push hook started.
#[derive(Serialize, ToSchema)]
pub struct PushOutcome {
    builds: Vec<Build>,
    /// Why nothing was built, when nothing was (another branch, an unknown repository, ...).
    ignored: Option<&'static str>,
}

const SLUG: &str = "The exercise's slug";

fn build_id(id: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::not_found("build_not_found", format!("build {id:?} does not exist")))
}

/// Build an exercise from a repository: a tar or tar.gz body, or a git source
///
/// JSON `{"git": {"url", "ref"}}`, or `{}` for the exercise's configured git source. A body
/// without a `Content-Type` is read as an archive.
#[utoipa::path(
    post, path = "/v1/exercises/{slug}/builds", operation_id = "create_build", tag = "builds",
    params(("slug" = String, Path, description = SLUG)),
    request_body(content(
        (Vec<u8> = "application/x-tar"),
        (Vec<u8> = "application/gzip"),
        (GitBuild = "application/json"),
    )),
    responses(
        (status = 202, description = "The build, queued", body = Build),
        (status = 404, description = "`exercise_not_found` (a git build of an exercise without a source)", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over `RUNNER_MAX_ARCHIVE_BYTES`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`invalid_slug`, `invalid_archive`, `invalid_manifest`, `invalid_repository`, \
            `invalid_dockerfile`, `invalid_git_url`, `invalid_git_ref`, ...: the message says what", body = ErrorBody),
        (status = 503, description = "`build_queue_full`, `intake_busy`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
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

/// An exercise's builds, newest first
#[utoipa::path(
    get, path = "/v1/exercises/{slug}/builds", operation_id = "list_builds", tag = "builds",
    params(("slug" = String, Path, description = SLUG)),
    responses(
        (status = 200, description = "The builds", body = BuildList),
        (status = 422, description = "`invalid_slug`", body = ErrorBody),
    )
)]
pub async fn list(State(app): State<Arc<App>>, Path(slug): Path<String>) -> ApiResult<Json<BuildList>> {
    let slug = Slug::parse(&slug)?;
    let builds: Vec<Build> = app.store.builds_of(slug.as_str(), 100).await?.iter().map(builds::to_view).collect();
    Ok(Json(BuildList { builds }))
}

/// Read a build
#[utoipa::path(
    get, path = "/v1/builds/{id}", operation_id = "get_build", tag = "builds",
    params(("id" = String, Path, description = "The build's id (a UUID)")),
    responses(
        (status = 200, description = "The build", body = Build),
        (status = 404, description = "`build_not_found`", body = ErrorBody),
    )
)]
pub async fn get(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Build>> {
    let id = build_id(&id)?;
    let b = app.store.build(&id).await?.ok_or_else(|| ApiError::from(BuildError::NotFound(id)))?;
    Ok(Json(builds::to_view(&b)))
}

/// Cancel a queued or running build
#[utoipa::path(
    post, path = "/v1/builds/{id}/cancel", operation_id = "cancel_build", tag = "builds",
    params(("id" = String, Path, description = "The build's id (a UUID)")),
    responses(
        (status = 200, description = "The build, cancelled", body = Build),
        (status = 404, description = "`build_not_found`", body = ErrorBody),
        (status = 409, description = "`build_finished`", body = ErrorBody),
    )
)]
pub async fn cancel(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Build>> {
    let b = builds::cancel(&app.builds, &build_id(&id)?).await?;
    Ok(Json(builds::to_view(&b)))
}

/// A build's log: plain text, streamed live while the build runs
///
/// The Docker build output and the self-test; once the build has ended, the whole log at once.
#[utoipa::path(
    get, path = "/v1/builds/{id}/logs", operation_id = "build_logs", tag = "builds",
    params(("id" = String, Path, description = "The build's id (a UUID)")),
    responses(
        (status = 200, description = "The log, streamed", content_type = "text/plain; charset=utf-8", body = String),
        (status = 404, description = "`build_not_found`", body = ErrorBody),
    )
)]
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

/// An exercise's versions and which one is current
#[utoipa::path(
    get, path = "/v1/exercises/{slug}/versions", operation_id = "list_versions", tag = "builds",
    params(("slug" = String, Path, description = SLUG)),
    responses(
        (status = 200, description = "The versions", body = VersionList),
        (status = 422, description = "`invalid_slug`", body = ErrorBody),
    )
)]
pub async fn versions(State(app): State<Arc<App>>, Path(slug): Path<String>) -> ApiResult<Json<VersionList>> {
    let slug = Slug::parse(&slug)?;
    let current = match app.store.exercise(slug.as_str()).await? {
        Some(r) => {
            serde_json::from_str::<crate::exercises::ExerciseSpec>(&r.spec)
                .map_err(anyhow::Error::from)?
                .current_version
        }
        None => None,
    };
    let mut versions = vec![];
    for v in app.store.versions(slug.as_str()).await? {
        // What the version's build proved: a refactoring exercise passes on its starting files.
        let self_test: Option<builds::SelfTestReport> =
            app.store.build(&v.build_id).await?.and_then(|b| b.self_test).and_then(|s| serde_json::from_str(&s).ok());
        let ts = crate::domain::rfc3339;
        versions.push(VersionView {
            current: current.as_deref() == Some(v.version.as_str()),
            starting_files_pass: self_test.is_some_and(|r| r.starting_files_pass),
            created_at: ts(v.created_at),
            published_at: v.published_at.map(ts),
            version: v.version,
            image: v.image,
            build_id: v.build_id,
        });
    }
    Ok(Json(VersionList { versions, current_version: current }))
}

/// Publish a version: new sessions get its image
#[utoipa::path(
    post, path = "/v1/exercises/{slug}/versions/{version}/publish", operation_id = "publish_version", tag = "builds",
    params(("slug" = String, Path, description = SLUG), ("version" = String, Path, description = "The version")),
    responses(
        (status = 200, description = "The exercise, with this version current", body = Exercise),
        (status = 404, description = "`exercise_not_found`, `version_not_found`", body = ErrorBody),
        (status = 409, description = "`version_image_removed`: build it again", body = ErrorBody),
        (status = 422, description = "`invalid_slug`", body = ErrorBody),
    )
)]
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

/// A git push hook (GitHub's format): builds the exercises whose source was pushed
///
/// Authenticated by its signature (`X-Hub-Signature-256`, HMAC-SHA256 of the body with the
/// exercise's hook secret or `RUNNER_GIT_HOOK_SECRET`), not by the bearer token.
#[utoipa::path(
    post, path = "/v1/hooks/git", operation_id = "git_push_hook", tag = "builds", security(()),
    params(
        ("X-GitHub-Event" = String, Header, description = "`push` (or `ping`)"),
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=<hex HMAC of the body>`"),
    ),
    request_body(content = serde_json::Value, description = "GitHub's push event", content_type = "application/json"),
    responses(
        (status = 202, description = "What the push started", body = PushOutcome),
        (status = 400, description = "`invalid_push_event`", body = ErrorBody),
        (status = 401, description = "`invalid_signature`", body = ErrorBody),
        (status = 413, description = "`body_too_large`: over 1 MiB", body = ErrorBody),
        (status = 422, description = "`invalid_slug`, ...", body = ErrorBody),
        (status = 503, description = "`build_queue_full`, `intake_busy`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "seconds"))),
    )
)]
pub async fn git_hook(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<(StatusCode, Json<PushOutcome>)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match hooks::handle(&app.builds, header("x-github-event"), header("x-hub-signature-256"), &body).await {
        Ok(outcome) => {
            let builds: Vec<Build> = outcome.builds.iter().map(builds::to_view).collect();
            Ok((StatusCode::ACCEPTED, Json(PushOutcome { builds, ignored: outcome.ignored })))
        }
        Err(hooks::HookError::BadSignature) => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", "missing or invalid X-Hub-Signature-256"))
        }
        Err(hooks::HookError::BadPayload(m)) => Err(ApiError::bad_request("invalid_push_event", m)),
        Err(hooks::HookError::Build(e)) => Err(e.into()),
    }
}
