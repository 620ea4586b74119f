//! The routes, built separately from binding a socket so tests can serve them on port 0.

use std::sync::Arc;

use axum::{
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware,
    routing::{get, post},
    Router,
};

use super::{exercises, middleware as mw, ops, sessions};
use crate::{app::App, error::ApiError};

pub fn build_axum_router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/exercises", get(exercises::list))
        .route("/exercises/{slug}", get(exercises::get).put(exercises::put))
        .route("/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/sessions/{id}/activity", post(sessions::activity))
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            mw::require_token,
        ));

    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .nest("/v1", v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.settings.max_body_bytes))
        .layer(middleware::from_fn(mw::request_id))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
