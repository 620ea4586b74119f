//! The routes, built separately from binding a socket so tests can serve them on port 0.

use std::sync::Arc;

use axum::{
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware,
    routing::{delete, get, post, put},
    Extension, Router,
};

use super::extract::BodyLimit;
use super::{
    apps, builds, dashboard, events, exercises, fleet, middleware as mw, openapi, operators, ops, runs, sessions,
    usage, workspaces,
};

/// Push events carry commit lists; GitHub caps them at 25 MB, ours at 1 MiB.
const HOOK_BODY_LIMIT: usize = 1024 * 1024;
use crate::{app::App, error::ApiError};

pub fn build_axum_router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/exercises", get(exercises::list))
        .route("/exercises/{slug}", get(exercises::get).put(exercises::put))
        .route("/sessions", post(sessions::create).get(sessions::list))
        .route("/sessions/{id}", get(sessions::get).delete(sessions::delete))
        .route("/sessions/{id}/activity", post(sessions::activity))
        .route("/sessions/{id}/checks", post(sessions::create_check).get(sessions::list_checks))
        .route("/sessions/{id}/checks/{check}", get(sessions::get_check))
        .route("/sessions/{id}/events", get(sessions::events))
        .route("/learners/{learner}", delete(sessions::erase_learner))
        .route("/events", get(events::stream))
        .route("/webhooks", get(events::list))
        .route("/webhooks/{name}", get(events::get).put(events::put).delete(events::delete))
        .route("/webhooks/{name}/deliveries", get(events::deliveries))
        .route("/webhooks/{name}/deliveries/{id}/redeliver", post(events::redeliver))
        .route("/workspaces/{learner}/{exercise}", get(workspaces::list))
        .route("/workspaces/{learner}/{exercise}/files/{*path}", get(workspaces::file))
        .route("/workspaces/{learner}/{exercise}/archive", get(workspaces::archive))
        .route("/workspaces/{learner}/{exercise}/reset", post(workspaces::reset))
        .route("/workspaces/{learner}/{exercise}/snapshots", get(workspaces::snapshots))
        .route("/snapshots/{id}", get(workspaces::snapshot))
        .route("/sessions/{id}/checks/{check}/snapshot", get(workspaces::check_snapshot))
        .route("/exercises/{slug}/stop-sessions", post(operators::stop_exercise_sessions))
        .route("/runner", get(operators::runner))
        .route("/runner/drain", post(operators::drain))
        .route("/runner/undrain", post(operators::undrain))
        .route("/audit", get(operators::audit_log))
        .route("/nodes", get(fleet::list))
        .route("/nodes/{name}", get(fleet::get))
        .route("/nodes/{name}/availability", put(fleet::set_availability))
        .route("/alerts", get(operators::alerts))
        .route("/sessions/{id}/usage", get(usage::session))
        .route("/usage/top", get(usage::top))
        .route("/usage/exercises", get(usage::exercises))
        .route("/capacity", get(usage::capacity))
        .route("/pools", get(usage::pools))
        .route(
            "/exercises/{slug}/builds",
            post(builds::create).get(builds::list).layer((
                DefaultBodyLimit::max(app.settings.max_archive_bytes),
                Extension(BodyLimit(app.settings.max_archive_bytes, "RUNNER_MAX_ARCHIVE_BYTES")),
            )),
        )
        .route("/exercises/{slug}/versions", get(builds::versions))
        .route("/exercises/{slug}/versions/{version}/publish", post(builds::publish))
        .route("/builds/{id}", get(builds::get))
        .route("/builds/{id}/logs", get(builds::logs))
        .route("/builds/{id}/cancel", post(builds::cancel))
        .route(
            "/runs",
            // A run's body carries its files (JSON-escaped, so up to 6 bytes per byte) and its
            // test cases' input: more than other requests.
            get(runs::list_runs).post(runs::create_run).layer((
                DefaultBodyLimit::max(run_body_limit(&app.settings)),
                Extension(BodyLimit(run_body_limit(&app.settings), "RUNNER_RUN_MAX_FILES_BYTES (×8)")),
            )),
        )
        .route("/runs/{id}", get(runs::get_run))
        .route("/runs/{id}/stream", get(runs::stream_run))
        .route("/runtimes", get(runs::list_runtimes))
        .route("/runtimes/{name}", get(runs::get_runtime).put(runs::put_runtime).delete(runs::delete_runtime))
        .route("/apps", get(apps::list))
        .route("/apps/{app}", get(apps::get).put(apps::put))
        .route("/apps/{app}/deploys", post(apps::create_deploy).get(apps::list_deploys))
        .route("/apps/{app}/rollback", post(apps::rollback))
        .route("/apps/{app}/commands", post(apps::command))
        .route("/apps/{app}/console", get(apps::console))
        .route("/deploys/{id}", get(apps::get_deploy))
        .route("/deploys/{id}/logs", get(apps::deploy_logs))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(app.clone(), mw::require_token))
        // Push hooks authenticate by signature (the sender cannot hold our bearer token); the
        // API's description is public.
        .merge(
            Router::new()
                .route(
                    "/hooks/git",
                    post(builds::git_hook).layer((
                        DefaultBodyLimit::max(HOOK_BODY_LIMIT),
                        Extension(BodyLimit(HOOK_BODY_LIMIT, "the push-hook limit")),
                    )),
                )
                .route("/openapi.json", get(openapi::serve)),
        );

    let ide = app.ide.router();
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app.clone())
        .merge(ide)
        .merge(dashboard::router(app.clone()))
        .layer(DefaultBodyLimit::max(app.settings.max_body_bytes))
        .layer(Extension(BodyLimit(app.settings.max_body_bytes, "RUNNER_MAX_BODY_BYTES")))
        // What another node of a fleet must answer is relayed to its runner before anything here.
        .layer(middleware::from_fn_with_state(app.clone(), fleet::route))
        .layer(middleware::from_fn_with_state(app.metrics.clone(), mw::observe))
        .layer(middleware::from_fn(mw::request_id))
}

fn run_body_limit(s: &crate::config::Settings) -> usize {
    s.max_body_bytes.max(s.runs.max_files_bytes.saturating_mul(8))
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
}
